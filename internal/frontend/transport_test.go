package frontend_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

var _ frontend.Master = (*master.Local)(nil)

// transportStack is a frontend in front of a master service over a real database and storage, reaching
// the master over HTTP or in-process (master.Local), with the master's worker side in-process to finish
// tasks.
type transportStack struct {
	*stack
	worker *master.Local
}

func newTransportStack(t *testing.T, local bool) *transportStack {
	t.Helper()
	ids, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	st := servicetest.NewStack(t, servicetest.Options{})
	svc, err := master.NewService(master.Config{Database: st.Database, Storage: st.Storage,
		Limits: master.Limits{MaxUpload: maxUpload, MaxQueued: master.NoLimit}})
	if err != nil {
		t.Fatal(err)
	}
	var m frontend.Master = svc.Local()
	if !local {
		m = client.NewMaster(st.HTTP, client.Static(servicetest.Addr(servicetest.Serve(t, svc.Handler()).URL)))
	}
	s := &stack{Stack: st, ids: ids}
	s.frontendURL = servicetest.Serve(t, frontend.NewServer(m, ids, frontend.Limits{MaxUpload: 4 * maxUpload})).URL
	return &transportStack{stack: s, worker: svc.Local()}
}

// finishNext claims the next task through the master's worker side, which must be id, stores result
// for it and finishes it.
func (s *transportStack) finishNext(t *testing.T, id int64, result []byte) {
	t.Helper()
	task, err := s.worker.GetNewTask(t.Context(), 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim = %+v, %v: want task %d", task, err, id)
	}
	if err := s.Storage.SendResult(t.Context(), id, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.worker.FinishTask(t.Context(), id, task.Token); err != nil {
		t.Fatal(err)
	}
}

// times are the timestamps in a reply, which differ from run to run.
var times = regexp.MustCompile(`"\d{4}-\d\d-\d\dT[^"]*"`)

// transportReply is what of a reply must not depend on the way to the master.
func transportReply(r servicetest.Reply) string {
	var b strings.Builder
	body := times.ReplaceAllString(r.Body, `"TIME"`)
	if r.Header.Get("Content-Type") == "application/zip" {
		body = zipEntries(r.Body) // the entries' times are the tasks'
	}
	fmt.Fprintf(&b, "%d %s\n", r.Status, body)
	for _, h := range []string{"Content-Type", "Content-Length", "Content-Disposition", "Retry-After", wire.ReplayedHeader, "Location"} {
		if h == "Content-Length" && times.MatchString(r.Body) {
			continue // a time's fraction of a second is written in as few digits as it takes
		}
		if v := r.Header.Get(h); v != "" {
			fmt.Fprintf(&b, "%s: %s\n", h, v)
		}
	}
	return b.String()
}

// zipEntries names the files in a zip archive and their contents.
func zipEntries(archive string) string {
	zr, err := zip.NewReader(strings.NewReader(archive), int64(len(archive)))
	if err != nil {
		return "not a zip: " + err.Error()
	}
	var b strings.Builder
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			return "unreadable entry: " + err.Error()
		}
		content, err := io.ReadAll(rc)
		rc.Close()
		fmt.Fprintf(&b, "%s: %x, %v; ", f.Name, sha256.Sum256(content), err)
	}
	return b.String()
}

// transportScenario makes the requests of a task's life through the frontend of s and returns what
// each answered, in order.
func transportScenario(t *testing.T, s *transportStack) []string {
	var out []string
	record := func(what string, r servicetest.Reply) servicetest.Reply {
		out = append(out, what+": "+transportReply(r))
		return r
	}
	img := servicetest.PatternPNG(t, 8, 1)
	r := record("submit", s.submit(t, part{field: frontend.UploadField, filename: "cat.png", data: img}))
	if r.Status != http.StatusOK {
		t.Fatalf("POST /submitTask: %d %q", r.Status, r.Body)
	}
	pub := s.parsePublicID(t, r.Body)
	id := s.internal(t, pub)
	record("isReady", s.call(t, http.MethodGet, "/isReady?id="+pub, "", nil))
	record("status", s.call(t, http.MethodGet, "/status?id="+pub, "", nil))
	record("api task", s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil))
	record("getImage unfinished", s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil))
	record("source", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/source", "", nil))
	s.finishNext(t, id, servicetest.PatternPNG(t, 8, 2))
	record("isReady finished", s.call(t, http.MethodGet, "/isReady?id="+pub, "", nil))
	record("getImage", s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil))
	record("api result", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil))
	record("zip", s.call(t, http.MethodGet, "/api/tasks.zip?ids="+pub, "", nil))
	record("cancel finished", s.call(t, http.MethodPost, "/api/tasks/"+pub+"/cancel", "", nil))
	record("retry finished", s.call(t, http.MethodPost, "/api/tasks/"+pub+"/retry", "", nil))

	// Refusals by the master, passed on in the frontend's words.
	record("too large for the master", s.createRaw(t, "", paddedPNG(t, 2*maxUpload)))
	record("too large for the master, streamed", s.call(t, http.MethodPost, "/api/tasks", "image/png",
		io.MultiReader(bytes.NewReader(paddedPNG(t, 2*maxUpload)))))
	record("not an image", s.createRaw(t, "", []byte("hello, this is not an image at all")))
	record("empty", s.createRaw(t, "", nil))
	record("pixels over", s.createRaw(t, "", servicetest.PaddedPNG(20000, 10, 100)))
	record("bad op", s.createRaw(t, "?op=explode", img))

	// Idempotency keys: the same task, said to be replayed.
	key := http.Header{wire.IdempotencyKeyHeader: {"k-1"}}
	first := record("keyed", s.callWith(t, http.MethodPost, "/api/tasks", "image/png", bytes.NewReader(img), key))
	record("keyed again", s.callWith(t, http.MethodPost, "/api/tasks", "image/png", bytes.NewReader(img), key))
	queued := s.created(t, first)

	// Cancel, retry, delete.
	record("cancel", s.call(t, http.MethodPost, "/api/tasks/"+queued+"/cancel", "", nil))
	record("cancel again", s.call(t, http.MethodPost, "/api/tasks/"+queued+"/cancel", "", nil))
	record("getImage cancelled", s.call(t, http.MethodGet, "/getImage?id="+queued, "", nil))
	record("retry", s.call(t, http.MethodPost, "/api/tasks/"+queued+"/retry", "", nil))
	record("retry queued", s.call(t, http.MethodPost, "/api/tasks/"+queued+"/retry", "", nil))
	record("delete", s.call(t, http.MethodDelete, "/api/tasks/"+queued, "", nil))
	record("delete again", s.call(t, http.MethodDelete, "/api/tasks/"+queued, "", nil))
	record("status deleted", s.call(t, http.MethodGet, "/status?id="+queued, "", nil))
	record("unknown", s.call(t, http.MethodGet, "/isReady?id="+s.ids.Encode(999), "", nil))
	return out
}

// TestMasterTransportsAnswerAlike: the frontend answers every step of a task's life, and every
// refusal, the same whether it calls the master over HTTP or in-process. (The queue cap is left to the
// master's contract suite: the master's count of the queue is a second old or less, so where it refuses
// depends on timing.)
func TestMasterTransportsAnswerAlike(t *testing.T) {
	overHTTP := transportScenario(t, newTransportStack(t, false))
	inProcess := transportScenario(t, newTransportStack(t, true))
	if len(overHTTP) != len(inProcess) {
		t.Fatalf("%d replies over HTTP, %d in-process", len(overHTTP), len(inProcess))
	}
	for i := range overHTTP {
		if overHTTP[i] != inProcess[i] {
			t.Errorf("over HTTP:\n%s\nin-process:\n%s", overHTTP[i], inProcess[i])
		}
	}
	// The scenario's refusals are the master's, not the frontend's own.
	for _, want := range []string{"too large for the master: 413", "too large for the master, streamed: 413", "not an image: 415", "empty: 400", "bad op: 400",
		"retry queued: 409", "cancel finished: 409", "keyed again: 201"} {
		found := false
		for _, r := range inProcess {
			found = found || strings.HasPrefix(r, want)
		}
		if !found {
			t.Errorf("no reply %q in-process:\n%s", want, strings.Join(inProcess, ""))
		}
	}
}

// TestRunWithMasterInProcess: a frontend given its master (Config.Master) calls it, never looking for
// one in the kv store, which here answers nothing.
func TestRunWithMasterInProcess(t *testing.T) {
	s := newTransportStack(t, true)
	addr := enginetest.FreeAddr(t)
	hc := servicetest.NewHTTPClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- frontend.Run(ctx, frontend.Config{
			Options: service.Options{Addr: addr, Logger: servicetest.Discard},
			KV:      client.NewKV(hc, enginetest.FreeAddr(t)), // nothing listens there
			HTTP:    hc,
			Secret:  testSecret,
			DataDir: t.TempDir(),
			Master:  s.worker, // the master's Local, client side and worker side alike
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("frontend at %s: %v", addr, err)
		}
	})
	s.frontendURL = "http://" + addr
	var r servicetest.Reply
	var err error
	if !servicetest.PollFor(time.Minute, func() bool {
		r, err = servicetest.Send(t.Context(), hc, http.MethodPost, s.frontendURL+"/api/tasks", bytes.NewReader(servicetest.PatternPNG(t, 8, 1)))
		return err == nil
	}) {
		t.Fatalf("the frontend did not answer: %v", err)
	}
	pub := s.created(t, r)
	if st, err := s.Database.GetByID(t.Context(), s.internal(t, pub)); err != nil || st.State != wire.NotStarted {
		t.Errorf("task of the upload = %+v, %v: want it queued", st, err)
	}
}
