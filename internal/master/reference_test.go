package master_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// referenceDatabase stands in for the reference design's database: /newTask, /getById, /getNewTask,
// /finishTask, /setById and /list over a map, a new task claimable at once, and every other path
// answered by Go's default mux (404 "404 page not found\n").
type referenceDatabase struct {
	mu      sync.Mutex
	states  map[int64]wire.State
	next    int64
	missing map[string]int // requests for paths it lacks, by path
}

// referenceTask is the reference's task JSON.
type referenceTask struct {
	ID    int64      `json:"id"`
	State wire.State `json:"state"`
}

func serveReferenceDatabase(t *testing.T) (*referenceDatabase, string) {
	db := &referenceDatabase{states: map[int64]wire.State{}, missing: map[string]int{}}
	mux := http.NewServeMux()
	fail := func(w http.ResponseWriter, msg string) { http.Error(w, "Error: "+msg, http.StatusBadRequest) }
	id := func(r *http.Request) (int64, bool) {
		n, err := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
		return n, err == nil
	}
	mux.HandleFunc("POST /newTask", func(w http.ResponseWriter, r *http.Request) {
		db.mu.Lock()
		n := db.next
		db.next++
		db.states[n] = wire.NotStarted
		db.mu.Unlock()
		fmt.Fprint(w, n)
	})
	mux.HandleFunc("GET /getById", func(w http.ResponseWriter, r *http.Request) {
		n, ok := id(r)
		db.mu.Lock()
		st, known := db.states[n]
		db.mu.Unlock()
		if !ok || !known {
			fail(w, "no task with this id")
			return
		}
		json.NewEncoder(w).Encode(referenceTask{n, st})
	})
	mux.HandleFunc("POST /getNewTask", func(w http.ResponseWriter, r *http.Request) {
		db.mu.Lock()
		defer db.mu.Unlock()
		for n := range db.next {
			if db.states[n] == wire.NotStarted {
				db.states[n] = wire.InProgress
				json.NewEncoder(w).Encode(referenceTask{n, wire.InProgress})
				return
			}
		}
		fail(w, wire.NoTaskMessage)
	})
	mux.HandleFunc("POST /finishTask", func(w http.ResponseWriter, r *http.Request) {
		n, ok := id(r)
		db.mu.Lock()
		defer db.mu.Unlock()
		if _, known := db.states[n]; !ok || !known {
			fail(w, "no task with this id")
			return
		}
		db.states[n] = wire.Finished
		fmt.Fprint(w, "success")
	})
	mux.HandleFunc("POST /setById", func(w http.ResponseWriter, r *http.Request) {
		var task referenceTask
		if err := json.NewDecoder(r.Body).Decode(&task); err != nil {
			fail(w, err.Error())
			return
		}
		db.mu.Lock()
		defer db.mu.Unlock()
		db.states[task.ID] = task.State
		fmt.Fprint(w, "success")
	})
	mux.HandleFunc("GET /list", func(w http.ResponseWriter, r *http.Request) {
		db.mu.Lock()
		defer db.mu.Unlock()
		for n := range db.next {
			json.NewEncoder(w).Encode(referenceTask{n, db.states[n]})
		}
	})
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern == "" {
			db.mu.Lock()
			db.missing[r.URL.Path]++
			db.mu.Unlock()
		}
		mux.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(counted)
	t.Cleanup(srv.Close)
	return db, srv.URL
}

func (db *referenceDatabase) state(id int64) (wire.State, bool) {
	db.mu.Lock()
	defer db.mu.Unlock()
	st, ok := db.states[id]
	return st, ok
}

func (db *referenceDatabase) count() int64 {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.next
}

// records keeps the log records of a logger, for a test to look at.
type records struct {
	mu   sync.Mutex
	list []slog.Record
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }
func (h *records) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *records) WithGroup(string) slog.Handler            { return h }
func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.list = append(h.list, r.Clone())
	return nil
}

// matching returns the messages at level that contain s.
func (h *records) matching(level slog.Level, s string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.list {
		if r.Level == level && strings.Contains(r.Message, s) {
			out = append(out, r.Message)
		}
	}
	return out
}

// referenceRig is an imgmill master and storage in front of a reference database.
type referenceRig struct {
	db        *referenceDatabase
	dbURL     string
	logs      *records
	hc        *http.Client
	masterURL string
	master    *client.Master
	local     *master.Local // the master's worker side in-process
	storage   *client.Storage
}

func newReferenceRig(t *testing.T) *referenceRig {
	db, dbURL := serveReferenceDatabase(t)
	rig := &referenceRig{db: db, dbURL: dbURL, logs: &records{}, hc: servicetest.NewHTTPClient(t)}
	storageURL := servicetest.ServeStorage(t, filepath.Join(t.TempDir(), "images"), nil)
	rig.storage = client.NewStorage(rig.hc, client.Static(servicetest.Addr(storageURL)))
	svc, err := master.NewService(master.Config{Database: client.NewDatabase(rig.hc, client.Static(servicetest.Addr(dbURL))),
		Storage: rig.storage})
	if err != nil {
		t.Fatal(err)
	}
	rig.local = svc.Local()
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(svc.Handler(), slog.New(rig.logs))
	srv.Start()
	t.Cleanup(srv.Close)
	rig.masterURL = srv.URL
	rig.master = client.NewMaster(rig.hc, client.Static(servicetest.Addr(srv.URL)))
	return rig
}

func (rig *referenceRig) call(t *testing.T, method, path string, body []byte) servicetest.Reply {
	t.Helper()
	return servicetest.Call(t, rig.hc, method, rig.masterURL+path, bytes.NewReader(body))
}

// TestMasterOverReferenceDatabase: an imgmill master and worker in front of the reference design's
// database. Every upload is answered its id (never the database's 404 for /activateTask), each task
// is created once and finishes with the right pixels, and the master says once, at INFO, that it
// falls back.
func TestMasterOverReferenceDatabase(t *testing.T) {
	rig := newReferenceRig(t)
	ctx := t.Context()
	stop := runWorker(t, worker.Config{Master: rig.master, Storage: rig.storage, Concurrency: 2, Wait: time.Second,
		Logger: servicetest.Discard})
	defer stop()

	const uploads = 40
	ids := make(map[int64]int64, uploads) // task id: the pattern's seed
	for seed := range int64(uploads) {
		r := rig.call(t, http.MethodPost, "/new", servicetest.PatternPNG(t, 64, seed))
		if r.Status != http.StatusOK {
			t.Fatalf("upload %d: %d %q, want 200 and an id", seed, r.Status, r.Body)
		}
		id := servicetest.ParseID(t, r.Body)
		if _, dup := ids[id]; dup {
			t.Fatalf("upload %d answered id %d twice", seed, id)
		}
		ids[id] = seed
	}
	if n := rig.db.count(); n != uploads {
		t.Errorf("the database holds %d tasks after %d uploads, want one each", n, uploads)
	}

	for id, seed := range ids {
		finished := servicetest.PollFor(2*time.Minute, func() bool {
			r := rig.call(t, http.MethodGet, fmt.Sprintf("/isReady?id=%d&wait=5s", id), nil)
			return r.Status == http.StatusOK && r.Body == "1"
		})
		if !finished {
			st, _ := rig.db.state(id)
			t.Fatalf("task %d (seed %d) did not finish; the database says state %d", id, seed, st)
		}
		r := rig.call(t, http.MethodGet, fmt.Sprintf("/get?id=%d", id), nil)
		if r.Status != http.StatusOK {
			t.Fatalf("GET /get?id=%d: %d %q", id, r.Status, r.Body)
		}
		result, err := png.Decode(strings.NewReader(r.Body))
		if err != nil {
			t.Fatalf("result of task %d: %v", id, err)
		}
		if err := testimage.CheckSwapped(testimage.Pattern(64, seed), result); err != nil {
			t.Errorf("result of task %d (seed %d): %v", id, seed, err)
		}
	}

	// The counts come from the database's listing; the additive calls without a fallback are 501.
	stats, err := rig.master.Stats(ctx)
	if err != nil || stats.Finished != uploads || stats.Queued != 0 {
		t.Errorf("master /stats = %+v, %v; want %d finished, none queued", stats, err, uploads)
	}
	for _, c := range []struct{ method, path string }{{http.MethodPost, "/cancel?id=0"}, {http.MethodDelete, "/task?id=0"}} {
		if r := rig.call(t, c.method, c.path, nil); r.Status != http.StatusNotImplemented || !strings.HasPrefix(r.Body, "Error: ") {
			t.Errorf("%s %s over a reference database: %d %q, want 501 with an Error: body", c.method, c.path, r.Status, r.Body)
		}
	}
	if r := rig.call(t, http.MethodPost, "/new?op=rotate90", servicetest.PatternPNG(t, 8, 1)); r.Status != http.StatusBadRequest ||
		!strings.HasPrefix(r.Body, "Error: op:") {
		t.Errorf("upload with an operation over a reference database: %d %q, want 400 op: ...", r.Status, r.Body)
	}

	if lines := rig.logs.matching(slog.LevelInfo, "the reference design's database"); len(lines) != 1 {
		t.Errorf("INFO lines about the reference database: %q, want exactly one", lines)
	}
	rig.db.mu.Lock()
	defer rig.db.mu.Unlock()
	if rig.db.missing["/activateTask"] != 0 || rig.db.missing["/newTask"] != 0 {
		t.Errorf("the master called the reference database's missing endpoints %v, want no /activateTask", rig.db.missing)
	}
}

// runWorker runs a worker until the returned function is called (at the latest when the test ends).
func runWorker(t *testing.T, cfg worker.Config) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan error, 1)
	go func() { returned <- worker.Run(ctx, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-returned; err != nil {
				t.Errorf("worker.Run returned %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestUploadStoredBeforeTaskOverReferenceDatabase: over a reference database, whose new tasks are
// claimable at once, the master creates the task only once it holds the whole upload, and stores the
// image right after: a worker claiming the task then finds its image.
func TestUploadStoredBeforeTaskOverReferenceDatabase(t *testing.T) {
	rig := newReferenceRig(t)
	body := servicetest.PatternPNG(t, 64, 7)
	pr, pw := io.Pipe()
	answer := make(chan servicetest.Reply, 1)
	go func() {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, rig.masterURL+"/new", pr)
		if err != nil {
			panic(err)
		}
		r, err := servicetest.Do(rig.hc, req)
		if err != nil {
			r = servicetest.Reply{Body: err.Error()}
		}
		answer <- r
	}()
	if _, err := pw.Write(body[:len(body)/2]); err != nil {
		t.Fatal(err)
	}
	// Half the upload is in: a master that created the task now would have done so within moments.
	time.Sleep(200 * time.Millisecond)
	if n := rig.db.count(); n != 0 {
		t.Errorf("%d tasks created before the upload was complete, want none", n)
	}
	pw.Write(body[len(body)/2:])
	pw.Close()
	r := <-answer
	if r.Status != http.StatusOK {
		t.Fatalf("upload: %d %q", r.Status, r.Body)
	}
	id := servicetest.ParseID(t, r.Body)
	task, err := rig.master.GetNewTask(t.Context(), 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim = %+v, %v; want task %d", task, err, id)
	}
	img, err := rig.storage.GetImage(t.Context(), id, wire.WorkingImage)
	if err != nil {
		t.Fatalf("the image of the claimed task: %v", err)
	}
	got, err := io.ReadAll(img)
	img.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Errorf("stored upload: %d bytes, %v; want the %d bytes sent", len(got), err, len(body))
	}
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "imgmill-upload-") {
			t.Errorf("spooled upload %s left behind", e.Name())
		}
	}
}

// TestFinishWithoutResultOverReferenceDatabase: a reference worker that registers its task finished
// without storing a result is refused with an Error: body, and its task goes back to not started (a
// reference database has no leases to take it back), never finished without an image.
func TestFinishWithoutResultOverReferenceDatabase(t *testing.T) {
	rig := newReferenceRig(t)
	id := servicetest.ParseID(t, rig.call(t, http.MethodPost, "/new", servicetest.PatternPNG(t, 8, 3)).Body)
	if r := rig.call(t, http.MethodPost, "/getNewTask", nil); r.Status != http.StatusOK {
		t.Fatalf("claim: %d %q", r.Status, r.Body)
	}
	r := rig.call(t, http.MethodPost, fmt.Sprintf("/registerTaskFinished?id=%d", id), nil)
	if r.Status != http.StatusConflict || !strings.HasPrefix(r.Body, "Error: ") {
		t.Errorf("finish without a result: %d %q, want 409 with an Error: body", r.Status, r.Body)
	}
	if st, _ := rig.db.state(id); st != wire.NotStarted {
		t.Errorf("task after a finish without a result: state %d, want %d (not started)", st, wire.NotStarted)
	}
	if r := rig.call(t, http.MethodGet, fmt.Sprintf("/isReady?id=%d", id), nil); r.Body != "0" {
		t.Errorf("isReady after a finish without a result = %q, want 0", r.Body)
	}

	// Stored, then registered: finished.
	if r := rig.call(t, http.MethodPost, "/getNewTask", nil); r.Status != http.StatusOK {
		t.Fatalf("claim again: %d %q", r.Status, r.Body)
	}
	result := servicetest.PatternPNG(t, 8, 4)
	if err := rig.storage.SendImage(t.Context(), id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if r := rig.call(t, http.MethodPost, fmt.Sprintf("/registerTaskFinished?id=%d", id), nil); r.Status != http.StatusOK || r.Body != "success" {
		t.Errorf("finish with a result: %d %q, want 200 success", r.Status, r.Body)
	}
	servicetest.ExpectPNGReply(t, "get", rig.call(t, http.MethodGet, fmt.Sprintf("/get?id=%d", id), nil), result)
}

// TestWorkerCallsOverReferenceDatabase: a worker's heartbeat, failure and release through the master
// work over a database that has none of them: the heartbeat is answered with the task as if renewed,
// a failure or release sets the task back to not started, a permanent failure to failed.
func TestWorkerCallsOverReferenceDatabase(t *testing.T) {
	t.Run("http", func(t *testing.T) {
		rig := newReferenceRig(t)
		testWorkerCallsOverReferenceDatabase(t, rig, rig.master)
	})
	t.Run("local", func(t *testing.T) {
		rig := newReferenceRig(t)
		testWorkerCallsOverReferenceDatabase(t, rig, rig.local)
	})
}

// testWorkerCallsOverReferenceDatabase is TestWorkerCallsOverReferenceDatabase through worker, the
// worker side of rig's master.
func testWorkerCallsOverReferenceDatabase(t *testing.T, rig *referenceRig, worker workerSide) {
	ctx := t.Context()
	id := servicetest.ParseID(t, rig.call(t, http.MethodPost, "/new", servicetest.PatternPNG(t, 8, 5)).Body)
	claim := func() {
		t.Helper()
		if task, err := worker.GetNewTask(ctx, 0); err != nil || task.ID != id {
			t.Fatalf("claim = %+v, %v; want task %d", task, err, id)
		}
	}
	expectState := func(what string, want wire.State) {
		t.Helper()
		if st, _ := rig.db.state(id); st != want {
			t.Errorf("after %s: state %d, want %d", what, st, want)
		}
	}
	claim()
	if task, err := worker.ExtendLease(ctx, id, 0); err != nil || task.ID != id || task.State != wire.InProgress {
		t.Errorf("heartbeat = %+v, %v; want the task in progress", task, err)
	}
	if err := worker.ReleaseTask(ctx, id, 0); err != nil {
		t.Errorf("release: %v", err)
	}
	expectState("a release", wire.NotStarted)
	claim()
	if task, err := worker.FailTask(ctx, id, 0, "broke", false); err != nil || task.State != wire.NotStarted {
		t.Errorf("failure = %+v, %v; want the task not started", task, err)
	}
	expectState("a failure", wire.NotStarted)
	claim()
	if task, err := worker.FailTask(ctx, id, 0, "never decodes", true); err != nil || task.State != wire.Failed {
		t.Errorf("permanent failure = %+v, %v; want the task failed", task, err)
	}
	expectState("a permanent failure", wire.Failed)

	// A task without an upload fails rather than go round for ever.
	if r := servicetest.Call(t, rig.hc, http.MethodPost, rig.dbURL+"/newTask", nil); r.Status != http.StatusOK {
		t.Fatalf("newTask at the database: %d %q", r.Status, r.Body)
	}
	task, err := worker.GetNewTask(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	id = task.ID
	if task, err := worker.FailTask(ctx, id, 0, "fetch working image: 404", false); err != nil || task.State != wire.Failed {
		t.Errorf("failure of a task without an upload = %+v, %v; want the task failed", task, err)
	}
	expectState("a failure without an upload", wire.Failed)
}

// TestFinishWithoutResult: over imgmill's database too, a finish without a stored result is refused and
// the task goes back to the queue as a failed attempt; its client never sees it finished.
func TestFinishWithoutResult(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	id := s.uploadOK(t, servicetest.PatternPNG(t, 8, 6))
	task := s.claim(t, id)
	r := s.post(t, s.MasterURL, "/registerTaskFinished", tokenQuery(id, task.Token))
	if r.Status != http.StatusConflict || !strings.HasPrefix(r.Body, "Error: ") {
		t.Errorf("finish without a result: %d %q, want 409 with an Error: body", r.Status, r.Body)
	}
	if after := s.task(t, id); after.State != wire.NotStarted || after.Attempts != 1 {
		t.Errorf("task after a finish without a result = %+v, want queued after 1 attempt", after)
	}
	if r := s.call(t, http.MethodGet, fmt.Sprintf("%s/isReady?id=%d", s.MasterURL, id), nil); r.Body != "0" {
		t.Errorf("isReady after a finish without a result = %q, want 0", r.Body)
	}
}
