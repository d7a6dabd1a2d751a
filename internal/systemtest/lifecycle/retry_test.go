package lifecycle

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestRetryThroughTheAPI: in the split deployment, a task cancelled while queued (no worker yet) and
// retried through the frontend's JSON API is processed by the worker that starts later and finishes,
// pixel-correct, its download named after the upload and the chain; an image that does not decode,
// retried, fails again for the same reason with a full set of attempts used anew, and a finished task
// cannot be retried.
func TestRetryThroughTheAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts every service as a process")
	}
	d := deploytest.New(t)
	d.StartBackends()
	d.StartFrontend()
	d.WaitServing(d.FEAddr)
	ctx, cancel := deploytest.Within(t, 4*time.Minute)
	defer cancel()
	r := &rig{t: t, ctx: ctx, d: d, db: d.Database(), master: "http://" + d.RegisteredMaster(),
		storage: filepath.Join(d.Dir, "storage")}
	api := "http://" + d.FEAddr + "/api/tasks"
	create := func(img []byte, query string) string {
		t.Helper()
		reply := r.send(http.MethodPost, api+query, bytes.NewReader(img))
		var created wire.TaskCreated
		if reply.Status != http.StatusCreated || json.Unmarshal([]byte(reply.Body), &created) != nil {
			t.Fatalf("POST /api/tasks%s: %d %q", query, reply.Status, reply.Body)
		}
		return created.ID
	}
	status := func(pub string) wire.PublicStatus {
		t.Helper()
		reply := r.send(http.MethodGet, api+"/"+pub, nil)
		var st wire.PublicStatus
		if reply.Status != http.StatusOK || json.Unmarshal([]byte(reply.Body), &st) != nil {
			t.Fatalf("GET /api/tasks/%s: %d %q", pub, reply.Status, reply.Body)
		}
		return st
	}
	waitState := func(pub string, want wire.Word) wire.PublicStatus {
		t.Helper()
		var st wire.PublicStatus
		deploytest.WaitFor(t, ctx, fmt.Sprintf("task %s %s", pub, want), func() bool {
			st = status(pub)
			return st.State == want
		})
		return st
	}
	retry := func(pub string) string {
		return api + "/" + pub + "/retry"
	}

	img := pattern(21)
	leaf := create(img.png, "?name=leaf.png")
	broken := create(testimage.PaddedPNG(8, 8, 200), "?name=broken.png")
	r.expect(r.send(http.MethodPost, api+"/"+leaf+"/cancel", nil), http.StatusOK, `"state":"cancelled"`)
	r.expect(r.send(http.MethodPost, retry(leaf), nil), http.StatusOK, `"state":"queued"`)

	d.StartWorker("worker")
	done := waitState(leaf, wire.FinishedWord)
	if done.Name != "leaf.png" {
		t.Errorf("the retried task's name is %q, want leaf.png", done.Name)
	}
	reply := r.send(http.MethodGet, api+"/"+leaf+"/result", nil)
	got, err := png.Decode(strings.NewReader(reply.Body))
	if err != nil {
		t.Fatalf("the retried task's result: %d, %v", reply.Status, err)
	}
	if err := testimage.CheckSwapped(img.img, got); err != nil {
		t.Errorf("the retried task's result: %v", err)
	}
	if cd := reply.Header.Get("Content-Disposition"); cd != `attachment; filename="leaf-swap.png"` {
		t.Errorf("the retried task's download: Content-Disposition %q, want leaf-swap.png", cd)
	}
	r.expect(r.send(http.MethodPost, retry(leaf), nil), http.StatusConflict,
		"task is finished: only a failed or cancelled task can be retried")

	first := waitState(broken, wire.FailedWord)
	r.expect(r.send(http.MethodPost, retry(broken), nil), http.StatusOK, `"state":"queued"`)
	again := waitState(broken, wire.FailedWord)
	if again.Error != first.Error || again.Attempts != first.Attempts || !again.FinishedAt.After(first.FinishedAt) {
		t.Errorf("the retried broken image: %+v, want it failed again as before (%+v), later", again, first)
	}
}
