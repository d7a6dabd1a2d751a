package master_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// workerSide is the master's API for workers: the methods of *client.Master a worker calls, which
// master.Local offers in-process.
type workerSide interface {
	Addr(ctx context.Context) (string, error)
	GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error)
	GetNewTasks(ctx context.Context, wait time.Duration, n int) (tasks []wire.Task, batched bool, err error)
	FinishTask(ctx context.Context, id, token int64) error
	FinishWithResult(ctx context.Context, id, token int64, r io.Reader, size int64) error
	ExtendLease(ctx context.Context, id, token int64) (wire.Task, error)
	WatchLease(ctx context.Context, id, token int64, wait time.Duration) (wire.Task, error)
	FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error)
	RetryTask(ctx context.Context, id, token int64, reason string) (wire.Task, error)
	ReleaseTask(ctx context.Context, id, token int64) error
}

var (
	_ workerSide = (*client.Master)(nil)
	_ workerSide = (*master.Local)(nil)
)

// TestWorkerSideHTTP runs the worker-side contract against the HTTP client of a master server.
func TestWorkerSideHTTP(t *testing.T) {
	testWorkerSide(t, func(f *workerFixture, svc *master.Service, url string) workerSide {
		return client.NewMaster(f.HTTP, client.Static(servicetest.Addr(url)))
	})
}

// TestWorkerSideLocal runs the same contract against master.Local of a master server.
func TestWorkerSideLocal(t *testing.T) {
	testWorkerSide(t, func(_ *workerFixture, svc *master.Service, _ string) workerSide {
		return svc.Local()
	})
}

// workerFixture is a master service over a real database and storage (servicetest.Stack's), served
// over HTTP for its client side (Master), with the worker side under test (Worker) of the same server.
type workerFixture struct {
	*servicetest.Stack
	Master  *client.Master // the client side of the master under test, over HTTP
	Worker  workerSide
	db      *databaseSwitch
	storage *storageSwitch
}

// storageSwitch wraps the storage's handler: it answers POST /sendImage with 503 while down, and counts
// the requests of each method and path.
type storageSwitch struct {
	down  atomic.Bool
	mu    sync.Mutex
	calls map[string]int // "METHOD /path": requests
}

func (s *storageSwitch) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if s.calls == nil {
			s.calls = map[string]int{}
		}
		s.calls[r.Method+" "+r.URL.Path]++
		s.mu.Unlock()
		if s.down.Load() && r.URL.Path == "/sendImage" {
			httpapi.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
				return &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: time.Second, Msg: "the blob store is away"}
			}).ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// count returns the requests of method and path so far.
func (s *storageSwitch) count(method, path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method+" "+path]
}

// databaseSwitch wraps the database's handler: it answers 503 while down, and, once frozen, answers
// GET /getById of one task with the first answer it gave after the freeze (so that only a wake-up, never
// a look at the database, can tell a long poll that the task finished); it tells watch of every request.
type databaseSwitch struct {
	down    atomic.Bool
	frozen1 atomic.Int64 // the frozen task's id + 1 (ids start at 0); 0: none
	mu      sync.Mutex
	frozen  *httptest.ResponseRecorder
	watch   func(path string, id string)
}

func (d *databaseSwitch) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		watch := d.watch
		d.mu.Unlock()
		if watch != nil {
			watch(r.URL.Path, r.URL.Query().Get("id"))
		}
		if d.down.Load() {
			httpapi.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
				return &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: time.Second, Msg: "the task store is away"}
			}).ServeHTTP(w, r)
			return
		}
		if id1 := d.frozen1.Load(); id1 != 0 && r.URL.Path == "/getById" && r.URL.Query().Get("id") == fmt.Sprint(id1-1) {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.frozen == nil {
				d.frozen = httptest.NewRecorder()
				next.ServeHTTP(d.frozen, r)
			}
			for k, v := range d.frozen.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(d.frozen.Code)
			w.Write(d.frozen.Body.Bytes())
			return
		}
		next.ServeHTTP(w, r)
	})
}

// setWatch sets the function told of every request to the database.
func (d *databaseSwitch) setWatch(f func(path, id string)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.watch = f
}

func newWorkerFixture(t *testing.T, worker func(*workerFixture, *master.Service, string) workerSide) *workerFixture {
	t.Helper()
	return newWorkerFixtureWith(t, worker, master.Limits{})
}

// newWorkerFixtureWith is newWorkerFixture with the master's limits.
func newWorkerFixtureWith(t *testing.T, worker func(*workerFixture, *master.Service, string) workerSide, limits master.Limits) *workerFixture {
	t.Helper()
	db, st := &databaseSwitch{}, &storageSwitch{}
	f := &workerFixture{Stack: servicetest.NewStack(t, servicetest.Options{WrapDatabase: db.wrap, WrapStorage: st.wrap}), db: db, storage: st}
	svc, err := master.NewService(master.Config{Database: f.Database, Storage: f.Storage, Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	url := servicetest.Serve(t, svc.Handler()).URL
	f.Master = client.NewMaster(f.HTTP, client.Static(servicetest.Addr(url)))
	f.Worker = worker(f, svc, url)
	return f
}

// queue uploads n images through the master and returns their ids.
func (f *workerFixture) queue(t *testing.T, n int) []int64 {
	t.Helper()
	ids := make([]int64, n)
	for i := range ids {
		img := servicetest.PatternPNG(t, 4, int64(i))
		id, err := f.Master.New(t.Context(), bytes.NewReader(img), int64(len(img)))
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		ids[i] = id
	}
	return ids
}

// claim queues one image and claims it through the worker side.
func (f *workerFixture) claim(t *testing.T) wire.Task {
	t.Helper()
	id := f.queue(t, 1)[0]
	task, err := f.Worker.GetNewTask(t.Context(), 0)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if task.ID != id || task.State != wire.InProgress || task.Token == 0 {
		t.Fatalf("claim = %+v, want task %d in progress with a token", task, id)
	}
	return task
}

// storeResult stores a result of task under its token, as a worker does before it finishes it.
func (f *workerFixture) storeResult(t *testing.T, task wire.Task) {
	t.Helper()
	img := servicetest.PatternPNG(t, 4, task.ID)
	if err := f.Storage.SendResult(t.Context(), task.ID, task.Token, bytes.NewReader(img), int64(len(img))); err != nil {
		t.Fatalf("store the result of task %d: %v", task.ID, err)
	}
}

// record reads task id from the database itself.
func (f *workerFixture) record(t *testing.T, id int64) wire.Task {
	t.Helper()
	task, err := f.Database.GetByID(t.Context(), id)
	if err != nil {
		t.Fatalf("database GetByID(%d): %v", id, err)
	}
	return task
}

// watch starts a WatchLease of the claimed task, of the longest wait, and returns once the master
// renewed the lease (so it is registered for the task's changes); the channel gets the watch's error.
func (f *workerFixture) watch(t *testing.T, task wire.Task) <-chan error {
	t.Helper()
	renewing := make(chan struct{})
	var once sync.Once
	f.db.setWatch(func(path, id string) {
		if path == "/extendLease" && id == fmt.Sprint(task.ID) {
			once.Do(func() { close(renewing) })
		}
	})
	defer f.db.setWatch(nil)
	watched := make(chan error, 1)
	go func() {
		_, err := f.Worker.WatchLease(t.Context(), task.ID, task.Token, wire.MaxLeaseWait)
		watched <- err
	}()
	select {
	case <-renewing:
	case err := <-watched:
		t.Fatalf("the watch of task %d ended before it waited: %v", task.ID, err)
	}
	return watched
}

// expectRefusal checks that err is the master's refusal with status whose message starts with msg.
func expectRefusal(t *testing.T, what string, err error, status int, msg string) {
	t.Helper()
	var e *httpapi.Error
	if !errors.As(err, &e) || e.Status != status || !strings.HasPrefix(e.Msg, msg) {
		t.Errorf("%s: %v, want %d %q...", what, err, status, msg)
	}
}

// testWorkerSide is the contract of the master's worker side, whatever the transport: worker returns
// the API under test of the master service svc, served at url.
func testWorkerSide(t *testing.T, worker func(f *workerFixture, svc *master.Service, url string) workerSide) {
	t.Run("ClaimOne", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		if got := f.record(t, task.ID); got.Token != task.Token || got.State != wire.InProgress {
			t.Errorf("database holds %+v after the claim, want it in progress under token %d", got, task.Token)
		}
		_, err := f.Worker.GetNewTask(t.Context(), 0)
		if !client.IsNoTask(err) {
			t.Errorf("claim with nothing queued: %v, want the reference's %q", err, wire.NoTaskMessage)
		}
		expectRefusal(t, "claim waiting too long", func() error { _, err := f.Worker.GetNewTask(t.Context(), wire.MaxWait+time.Second); return err }(),
			http.StatusBadRequest, "wait must be between 0 and")
		if addr, err := f.Worker.Addr(t.Context()); err != nil || addr == "" {
			t.Errorf("Addr = %q, %v: want the master named", addr, err)
		}
	})

	t.Run("ClaimBatch", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		ids := f.queue(t, 3)
		tasks, batched, err := f.Worker.GetNewTasks(t.Context(), 0, 5)
		if err != nil {
			t.Fatalf("claim a batch: %v", err)
		}
		if !batched || len(tasks) != len(ids) {
			t.Fatalf("claim of up to 5 with 3 queued = %d tasks (batched %t), want all 3 batched", len(tasks), batched)
		}
		for i, task := range tasks {
			if task.ID != ids[i] || task.State != wire.InProgress || task.Token == 0 {
				t.Errorf("batch task %d = %+v, want task %d in progress with a token", i, task, ids[i])
			}
		}
		single := f.queue(t, 1)[0]
		tasks, batched, err = f.Worker.GetNewTasks(t.Context(), 0, 1)
		if err != nil || batched || len(tasks) != 1 || tasks[0].ID != single {
			t.Errorf("claim of 1 = %+v (batched %t), %v: want task %d alone, unbatched", tasks, batched, err, single)
		}
		if _, _, err := f.Worker.GetNewTasks(t.Context(), 0, 4); !client.IsNoTask(err) {
			t.Errorf("batch claim with nothing queued: %v, want the reference's %q", err, wire.NoTaskMessage)
		}
	})

	t.Run("FinishWakesReadyPoll", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		f.storeResult(t, task)
		// The poll's looks at the database all see the task in progress: only the finish's wake-up
		// can answer it 1 within the wait.
		f.db.frozen1.Store(task.ID + 1)
		looked := make(chan struct{})
		var once sync.Once
		f.db.setWatch(func(path, id string) {
			if path == "/getById" && id == fmt.Sprint(task.ID) {
				once.Do(func() { close(looked) })
			}
		})
		ready := make(chan error, 1)
		go func() {
			ok, err := f.Master.WaitReady(t.Context(), task.ID, master.MaxReadyWait)
			if err == nil && !ok {
				err = errors.New("answered 0: not woken by the finish")
			}
			ready <- err
		}()
		select {
		case <-looked: // registered, then looked
		case err := <-ready:
			t.Fatalf("the ready poll ended before it waited: %v", err)
		}
		if err := f.Worker.FinishTask(t.Context(), task.ID, task.Token); err != nil {
			t.Fatalf("finish: %v", err)
		}
		if err := <-ready; err != nil {
			t.Errorf("ready poll: %v", err)
		}
		f.db.frozen1.Store(0)
		if got := f.record(t, task.ID); got.State != wire.Finished {
			t.Errorf("database holds %+v after the finish, want it finished", got)
		}
		// A repeated finish (an answer lost) succeeds again, as the database's does.
		if err := f.Worker.FinishTask(t.Context(), task.ID, task.Token); err != nil {
			t.Errorf("finish repeated: %v", err)
		}
	})

	t.Run("FinishWithResultWakesReadyPoll", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		result := servicetest.PatternPNG(t, 8, task.ID+100)
		f.db.frozen1.Store(task.ID + 1)
		looked := make(chan struct{})
		var once sync.Once
		f.db.setWatch(func(path, id string) {
			if path == "/getById" && id == fmt.Sprint(task.ID) {
				once.Do(func() { close(looked) })
			}
		})
		ready := make(chan error, 1)
		go func() {
			ok, err := f.Master.WaitReady(t.Context(), task.ID, master.MaxReadyWait)
			if err == nil && !ok {
				err = errors.New("answered 0: not woken by the finish")
			}
			ready <- err
		}()
		select {
		case <-looked:
		case err := <-ready:
			t.Fatalf("the ready poll ended before it waited: %v", err)
		}
		sends, looks := f.storage.count(http.MethodPost, "/sendImage"), f.storage.count(http.MethodHead, "/getImage")
		if err := f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
			t.Fatalf("finish with result: %v", err)
		}
		if err := <-ready; err != nil {
			t.Errorf("ready poll: %v", err)
		}
		f.db.frozen1.Store(0)
		if got := f.record(t, task.ID); got.State != wire.Finished {
			t.Errorf("database holds %+v after the finish, want it finished", got)
		}
		if got, ok := f.StoredImage(t, task.ID, wire.FinishedImage); !ok || !bytes.Equal(got, result) {
			t.Errorf("storage holds %d bytes (held %t) as the result, want the %d sent", len(got), ok, len(result))
		}
		// One store, and no look at storage for the result just stored.
		if n := f.storage.count(http.MethodPost, "/sendImage") - sends; n != 1 {
			t.Errorf("the finish stored at storage %d times, want once", n)
		}
		if n := f.storage.count(http.MethodHead, "/getImage") - looks; n != 0 {
			t.Errorf("the finish looked for the result at storage %d times, want none", n)
		}
		// A repeated finish (an answer lost) succeeds again.
		if err := f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
			t.Errorf("finish with result repeated: %v", err)
		}
	})

	t.Run("FinishWithResultStaleToken", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		old := f.claim(t)
		if err := f.Worker.ReleaseTask(t.Context(), old.ID, old.Token); err != nil {
			t.Fatalf("release: %v", err)
		}
		task, err := f.Worker.GetNewTask(t.Context(), 0)
		if err != nil || task.ID != old.ID || task.Token <= old.Token {
			t.Fatalf("claim again = %+v, %v: want task %d under a newer token than %d", task, err, old.ID, old.Token)
		}
		f.storeResult(t, task)
		newer, _ := f.StoredImage(t, task.ID, wire.FinishedImage)
		late := servicetest.PatternPNG(t, 8, 999)
		err = f.Worker.FinishWithResult(t.Context(), old.ID, old.Token, bytes.NewReader(late), int64(len(late)))
		expectRefusal(t, "finish with result under a stale token", err, http.StatusConflict, fmt.Sprintf("stale lease token for task %d", task.ID))
		if got, _ := f.StoredImage(t, task.ID, wire.FinishedImage); !bytes.Equal(got, newer) {
			t.Errorf("the newer claim's result was replaced by the stale one's")
		}
		if got := f.record(t, task.ID); got.State != wire.InProgress || got.Token != task.Token {
			t.Errorf("database holds %+v after the stale finish, want the newer claim untouched", got)
		}
	})

	t.Run("FinishWithResultCancelled", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		if _, err := f.Master.Cancel(t.Context(), task.ID); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		result := servicetest.PatternPNG(t, 8, task.ID)
		err := f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, bytes.NewReader(result), int64(len(result)))
		expectRefusal(t, "finish with result of a cancelled task", err, http.StatusGone, fmt.Sprintf("task %d was cancelled", task.ID))
		if _, held := f.StoredImage(t, task.ID, wire.FinishedImage); held {
			t.Errorf("the result of cancelled task %d is stored after its finish was refused", task.ID)
		}
	})

	t.Run("FinishWithResultStorageAway", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		result := servicetest.PatternPNG(t, 8, task.ID)
		f.storage.down.Store(true)
		// Retried for a moment only: the HTTP client tries once, the master's own retries end within
		// client.DefaultRetryFor (in-process, they end with the caller's).
		ctx := client.RetryFor(t.Context(), time.Millisecond)
		err := f.Worker.FinishWithResult(ctx, task.ID, task.Token, bytes.NewReader(result), int64(len(result)))
		expectRefusal(t, "finish with result with storage away", err, http.StatusServiceUnavailable, "the blob store is away")
		if !fault.IsTransient(err) {
			t.Errorf("finish with result with storage away: %v is not transient", err)
		}
		if got := f.record(t, task.ID); got.State != wire.InProgress || got.Token != task.Token || got.Attempts != task.Attempts {
			t.Errorf("database holds %+v after the store failed, want the claim untouched", got)
		}
		f.storage.down.Store(false)
		if err := f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
			t.Errorf("finish with result with storage back: %v", err)
		}
		if got := f.record(t, task.ID); got.State != wire.Finished {
			t.Errorf("database holds %+v with storage back, want it finished", got)
		}
	})

	t.Run("FinishWithResultBadInput", func(t *testing.T) {
		// Limits whose largest result (1 MiB over 10 bytes a pixel of the pixel limit) is small.
		f := newWorkerFixtureWith(t, worker, master.Limits{MaxPixels: 100, MaxUpload: 1000})
		task := f.claim(t)
		result := servicetest.PatternPNG(t, 4, task.ID)
		expectRefusal(t, "finish with result of a negative id", f.Worker.FinishWithResult(t.Context(), -1, task.Token, bytes.NewReader(result), int64(len(result))),
			http.StatusBadRequest, `id must be a non-negative decimal integer, got "-1"`)
		expectRefusal(t, "finish with result under a negative token", f.Worker.FinishWithResult(t.Context(), task.ID, -2, bytes.NewReader(result), int64(len(result))),
			http.StatusBadRequest, `token must be a non-negative decimal integer, got "-2"`)
		expectRefusal(t, "finish with an empty result", f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, bytes.NewReader(nil), 0),
			http.StatusBadRequest, "empty")
		huge := make([]byte, 2<<20)
		rand.NewChaCha8([32]byte{1}).Read(huge)
		expectRefusal(t, "finish with a result over the bound", f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, bytes.NewReader(huge), int64(len(huge))),
			http.StatusRequestEntityTooLarge, "the result is")
		// Of unknown length: stopped as it passes the bound.
		expectRefusal(t, "finish with a streamed result over the bound", f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, io.MultiReader(bytes.NewReader(huge)), -1),
			http.StatusRequestEntityTooLarge, "the result is")
		if _, held := f.StoredImage(t, task.ID, wire.FinishedImage); held {
			t.Errorf("a refused result of task %d is stored", task.ID)
		}
		if got := f.record(t, task.ID); got.State != wire.InProgress {
			t.Errorf("database holds %+v after refused finishes, want it in progress", got)
		}
		// Within the bound, streamed, it is taken.
		if err := f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, io.MultiReader(bytes.NewReader(result)), -1); err != nil {
			t.Errorf("finish with a streamed result: %v", err)
		}
		if got, _ := f.StoredImage(t, task.ID, wire.FinishedImage); !bytes.Equal(got, result) {
			t.Errorf("storage holds %d bytes as the streamed result, want the %d sent", len(got), len(result))
		}
	})

	t.Run("FinishWithoutResult", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		err := f.Worker.FinishTask(t.Context(), task.ID, task.Token)
		expectRefusal(t, "finish without a stored result", err, http.StatusConflict, fmt.Sprintf("task %d has no result in storage", task.ID))
		if got := f.record(t, task.ID); got.State != wire.NotStarted || got.Attempts != 1 {
			t.Errorf("database holds %+v after the refused finish, want it queued again, its attempt counted", got)
		}
	})

	t.Run("StaleToken", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		f.storeResult(t, task)
		stale := task.Token + 1000
		staleMsg := fmt.Sprintf("stale lease token for task %d", task.ID)
		expectRefusal(t, "finish under a stale token", f.Worker.FinishTask(t.Context(), task.ID, stale), http.StatusConflict, staleMsg)
		_, err := f.Worker.ExtendLease(t.Context(), task.ID, stale)
		expectRefusal(t, "heartbeat under a stale token", err, http.StatusConflict, staleMsg)
		_, err = f.Worker.FailTask(t.Context(), task.ID, stale, "late", false)
		expectRefusal(t, "failure under a stale token", err, http.StatusConflict, staleMsg)
		expectRefusal(t, "release under a stale token", f.Worker.ReleaseTask(t.Context(), task.ID, stale), http.StatusConflict, staleMsg)
		if got := f.record(t, task.ID); got.State != wire.InProgress || got.Token != task.Token {
			t.Errorf("database holds %+v after stale calls, want the claim untouched", got)
		}
	})

	t.Run("Fail", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		got, err := f.Worker.FailTask(t.Context(), task.ID, task.Token, "flaky disk", false)
		if err != nil || got.ID != task.ID || got.State != wire.NotStarted || got.Error != "flaky disk" || got.Attempts != 1 {
			t.Errorf("failure with attempts left = %+v, %v: want task %d queued again with the reason, 1 attempt", got, err, task.ID)
		}
		task, err = f.Worker.GetNewTask(t.Context(), 0)
		if err != nil {
			t.Fatalf("claim again: %v", err)
		}
		got, err = f.Worker.FailTask(t.Context(), task.ID, task.Token, "corrupt", true)
		if err != nil || got.State != wire.Failed || got.Error != "corrupt" {
			t.Errorf("permanent failure = %+v, %v: want failed with the reason", got, err)
		}
		if rec := f.record(t, task.ID); rec.State != wire.Failed {
			t.Errorf("database holds %+v, want it failed", rec)
		}
		_, err = f.Worker.FailTask(t.Context(), task.ID, task.Token, "  ", false)
		expectRefusal(t, "failure without a reason", err, http.StatusBadRequest, "missing reason parameter")
		_, err = f.Worker.FailTask(t.Context(), task.ID, task.Token, "again", false)
		expectRefusal(t, "failure reported twice", err, http.StatusBadRequest, fmt.Sprintf("task %d is not in progress", task.ID))
	})

	t.Run("RetryTransient", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		got, err := f.Worker.RetryTask(t.Context(), task.ID, task.Token, "storage away")
		if err != nil || got.State != wire.NotStarted || got.Attempts != 0 || got.RetryAt.IsZero() {
			t.Errorf("transient failure = %+v, %v: want queued again, no attempt counted, with a retry time", got, err)
		}
	})

	t.Run("Release", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		if err := f.Worker.ReleaseTask(t.Context(), task.ID, task.Token); err != nil {
			t.Fatalf("release: %v", err)
		}
		if got := f.record(t, task.ID); got.State != wire.NotStarted || got.Attempts != 0 {
			t.Errorf("database holds %+v after the release, want it queued, no attempt counted", got)
		}
		again, err := f.Worker.GetNewTask(t.Context(), 0)
		if err != nil || again.ID != task.ID || again.Token == task.Token {
			t.Errorf("claim after the release = %+v, %v: want task %d under a new token", again, err, task.ID)
		}
		expectRefusal(t, "release under the old token", f.Worker.ReleaseTask(t.Context(), task.ID, task.Token),
			http.StatusConflict, fmt.Sprintf("stale lease token for task %d", task.ID))
	})

	t.Run("LeaseAndCancel", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		task := f.claim(t)
		renewed, err := f.Worker.ExtendLease(t.Context(), task.ID, task.Token)
		if err != nil || renewed.ID != task.ID || renewed.Token != task.Token || renewed.LeaseUntil.Before(task.LeaseUntil) {
			t.Errorf("heartbeat = %+v, %v: want the claim with its lease renewed (was until %v)", renewed, err, task.LeaseUntil)
		}
		renewed, err = f.Worker.WatchLease(t.Context(), task.ID, task.Token, 0)
		if err != nil || renewed.Token != task.Token {
			t.Errorf("watch of no wait = %+v, %v: want the renewed claim at once", renewed, err)
		}
		_, err = f.Worker.WatchLease(t.Context(), task.ID, task.Token, wire.MaxLeaseWait+time.Second)
		expectRefusal(t, "watch too long", err, http.StatusBadRequest, "wait must be between 0 and")

		// A cancel through the master ends a watch at once with 410; without the wake-up, the watch
		// would answer the renewed lease when its wait ends.
		watched := f.watch(t, task)
		if _, err := f.Master.Cancel(t.Context(), task.ID); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		expectRefusal(t, "watch of a task cancelled meanwhile", <-watched, http.StatusGone, fmt.Sprintf("task %d was cancelled", task.ID))

		// A finish of the cancelled task is refused alike, and its stored result removed.
		f.storeResult(t, task)
		expectRefusal(t, "finish of a cancelled task", f.Worker.FinishTask(t.Context(), task.ID, task.Token),
			http.StatusGone, fmt.Sprintf("task %d was cancelled", task.ID))
		if _, held := f.StoredImage(t, task.ID, wire.FinishedImage); held {
			t.Errorf("the result of cancelled task %d is still stored after its finish was refused", task.ID)
		}
	})

	t.Run("ChangesWakeWatches", func(t *testing.T) {
		// Every change a worker makes through the master wakes the long polls watching the task (POST
		// /statuses, and a WatchLease of it, which then asks the database again and hears that the
		// task is no longer in progress); without the wake-up, the watch would answer the renewed lease
		// when its wait ends.
		f := newWorkerFixture(t, worker)
		changes := map[string]func(wire.Task) error{
			"finish": func(task wire.Task) error {
				f.storeResult(t, task)
				return f.Worker.FinishTask(t.Context(), task.ID, task.Token)
			},
			"finish with result": func(task wire.Task) error {
				img := servicetest.PatternPNG(t, 4, task.ID)
				return f.Worker.FinishWithResult(t.Context(), task.ID, task.Token, bytes.NewReader(img), int64(len(img)))
			},
			"failure": func(task wire.Task) error {
				_, err := f.Worker.FailTask(t.Context(), task.ID, task.Token, "flaky", false)
				return err
			},
			"transient failure": func(task wire.Task) error {
				_, err := f.Worker.RetryTask(t.Context(), task.ID, task.Token, "away")
				return err
			},
			"release": func(task wire.Task) error { return f.Worker.ReleaseTask(t.Context(), task.ID, task.Token) },
		}
		for what, change := range changes {
			task := f.claim(t)
			watched := f.watch(t, task)
			if err := change(task); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			expectRefusal(t, "watch of a task whose "+what+" came meanwhile", <-watched, http.StatusBadRequest,
				fmt.Sprintf("task %d is not in progress", task.ID))
			if task.State = f.record(t, task.ID).State; task.State == wire.NotStarted {
				// Out of the way of the next claim.
				if _, err := f.Master.Cancel(t.Context(), task.ID); err != nil {
					t.Fatalf("cancel: %v", err)
				}
			}
		}
	})

	t.Run("UnknownTask", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		const id = 4242
		// The database's refusal of an unknown task, passed on: the reference design's 400.
		msg := fmt.Sprintf("no task with id %d", id)
		_, err := f.Worker.ExtendLease(t.Context(), id, 1)
		expectRefusal(t, "heartbeat of an unknown task", err, http.StatusBadRequest, msg)
		expectRefusal(t, "finish of an unknown task", f.Worker.FinishTask(t.Context(), id, 1), http.StatusBadRequest, msg)
		_, err = f.Worker.FailTask(t.Context(), id, 1, "r", false)
		expectRefusal(t, "failure of an unknown task", err, http.StatusBadRequest, msg)
		expectRefusal(t, "release of an unknown task", f.Worker.ReleaseTask(t.Context(), id, 1), http.StatusBadRequest, msg)
		expectRefusal(t, "release of a negative id", f.Worker.ReleaseTask(t.Context(), -1, 1), http.StatusBadRequest,
			`id must be a non-negative decimal integer, got "-1"`)
	})

	t.Run("DatabaseUnavailable", func(t *testing.T) {
		f := newWorkerFixture(t, worker)
		f.queue(t, 1)
		f.db.down.Store(true)
		_, err := f.Worker.GetNewTask(t.Context(), 0)
		expectRefusal(t, "claim with the database away", err, http.StatusServiceUnavailable, "the task store is away")
		if !fault.IsTransient(err) {
			t.Errorf("claim with the database away: %v is not transient", err)
		}
		var e *httpapi.Error
		if errors.As(err, &e) && e.RetryAfter <= 0 {
			t.Errorf("claim with the database away: %+v has no Retry-After", e)
		}
		f.db.down.Store(false)
		if _, err := f.Worker.GetNewTask(t.Context(), 0); err != nil {
			t.Errorf("claim with the database back: %v", err)
		}
	})
}
