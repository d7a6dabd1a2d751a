package fairness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

const (
	backlog = 200
	// heavyOp makes each of A's tasks take a measurable while on a mid-size image.
	heavyOp = "blur:10,blur:10,blur:10"
)

// TestBurstDoesNotStarve: in the split deployment with a token and API keys, client A queues 200 heavy tasks, then client B one small task; B's task
// finishes while A's backlog is still nearly whole. Claims take owners in turn, so B waits for the
// tasks in progress and at most one more of A's, not for A's backlog. The assertion counts tasks, not
// time, so a slow machine only makes the test slower.
func TestBurstDoesNotStarve(t *testing.T) {
	token := strings.Repeat("fairness-test-token-", 3)
	aliceKey, bobKey := strings.Repeat("a", 40), strings.Repeat("b", 40)
	keys := filepath.Join(t.TempDir(), "api-keys")
	if err := os.WriteFile(keys, []byte("alice "+aliceKey+"\nbob "+bobKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The split deployment with a token, so that the master believes the frontend's owner header; one
	// image at a time and none claimed ahead, so that the order of claims is the order of work; no upload rate limit (the
	// deployment's frontend has none), so A's burst is queued whole.
	d := deploytest.New(t)
	d.Token = token
	d.HC = httpapi.NewClient(httpapi.WithToken(token)) // the cleanup closes whichever d.HC is set
	d.StartBackends()
	d.StartWorker("worker", "--concurrency", "1", "--prefetch", "0")
	d.MustStart("frontend", "frontend", "--addr", d.FEAddr, "--kv", d.KVAddr, "--upload-rate", "0",
		"--data", filepath.Join(d.Dir, "frontend"), "--api-keys", keys)
	ctx, cancel := deploytest.Within(t, 10*time.Minute)
	defer cancel()
	deploytest.WaitHealthy(t, ctx, d.HC, d.FEAddr)
	hc, fe := servicetest.NewHTTPClient(t), d.FEAddr // a client of the public frontend: no token

	heavy := servicetest.PatternPNG(t, 1280, 1)
	small := servicetest.PatternPNG(t, 16, 2)
	// A's uploads go four at a time, so that the backlog is queued long before the worker gets through it.
	var wg sync.WaitGroup
	uploads := make(chan int, backlog)
	for i := range backlog {
		uploads <- i
	}
	close(uploads)
	for range 4 {
		wg.Go(func() {
			for i := range uploads {
				if _, err := create(ctx, hc, fe, aliceKey, heavyOp, heavy); err != nil {
					t.Errorf("A's upload %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	bob, err := create(ctx, hc, fe, bobKey, "swap", small)
	if err != nil {
		t.Fatalf("B's upload: %v", err)
	}
	before, err := d.Master().Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var st wire.PublicStatus
	deploytest.WaitFor(t, ctx, "B's task to finish", func() bool {
		st, err = status(ctx, hc, fe, bob)
		if err != nil {
			t.Fatalf("B's status: %v", err)
		}
		return st.State.Settled()
	})
	if st.State != wire.FinishedWord {
		t.Fatalf("B's task: %+v, want finished", st)
	}
	stats, err := d.Master().Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	doneA := stats.Finished + stats.Failed - 1 // B's is finished
	t.Logf("B's task finished after %d of A's %d tasks settled (%+v)", doneA, backlog, stats)
	if left := backlog - doneA; left < 150 {
		t.Errorf("B's task finished when only %d of A's %d tasks were left: it waited for A's backlog", left, backlog)
	}
	// Meanwhile the worker finished the task it held and at most one more of A's: B's turn came next.
	if during := doneA - (before.Finished + before.Failed); during > 2 {
		t.Errorf("%d of A's tasks finished between B's upload and B's task: B's turn did not come next", during)
	}
}

// create uploads img through the frontend's JSON API with an API key and returns the public id.
func create(ctx context.Context, hc *http.Client, fe, key, op string, img []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+fe+"/api/tasks?op="+op, bytes.NewReader(img))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "image/png")
	var c wire.TaskCreated
	if err := do(hc, req, http.StatusCreated, &c); err != nil {
		return "", err
	}
	return c.ID, nil
}

func status(ctx context.Context, hc *http.Client, fe, pub string) (wire.PublicStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+fe+"/api/tasks/"+pub, nil)
	if err != nil {
		return wire.PublicStatus{}, err
	}
	var st wire.PublicStatus
	return st, do(hc, req, http.StatusOK, &st)
}

// do sends req and decodes its JSON answer into v, expecting status want.
func do(hc *http.Client, req *http.Request, want int, v any) error {
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return fmt.Errorf("%s %s: %d %q, want %d", req.Method, req.URL.Path, resp.StatusCode, b.String(), want)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
