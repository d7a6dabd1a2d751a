package database

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
	"github.com/imgmill/imgmill/internal/wire"
)

// DB is what the master and the workers call on the database: the methods the HTTP client
// (*client.Database) and the in-process API (*Local) share. The contract below runs on both.
type DB interface {
	Reference(ctx context.Context) (bool, error)
	NewTask(ctx context.Context, p client.NewTaskParams) (int64, error)
	CreateTask(ctx context.Context, p client.NewTaskParams) (client.NewTaskResult, error)
	AbandonTask(ctx context.Context, id int64, reason string) error
	ActivateTask(ctx context.Context, id, size int64) error
	Usage(ctx context.Context, owner string) (wire.Usage, error)
	CancelTask(ctx context.Context, id int64) (wire.Task, error)
	RequeueTask(ctx context.Context, id int64) (wire.Task, error)
	DeleteTask(ctx context.Context, id int64) error
	ClaimExpired(ctx context.Context, limit int) ([]int64, error)
	GetByID(ctx context.Context, id int64) (wire.Task, error)
	GetByIDs(ctx context.Context, ids []int64) (wire.Tasks, error)
	SetByID(ctx context.Context, t wire.Task) error
	Stats(ctx context.Context) (wire.Stats, error)
	GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error)
	GetNewTasks(ctx context.Context, wait time.Duration, n int) ([]wire.Task, bool, error)
	FinishTask(ctx context.Context, id, token int64) error
	ExtendLease(ctx context.Context, id, token int64) (wire.Task, error)
	WatchLease(ctx context.Context, id, token int64, wait time.Duration) (wire.Task, error)
	FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error)
	RetryTask(ctx context.Context, id, token int64, reason string) (wire.Task, error)
	ReleaseTask(ctx context.Context, id, token int64) error
	Tasks(ctx context.Context) iter.Seq2[wire.Task, error]
}

var (
	_ DB = (*client.Database)(nil)
	_ DB = (*Local)(nil)
)

// transport reaches a Service through one of its two APIs.
type transport struct {
	name string
	open func(t *testing.T, svc *Service) DB
}

var transports = []transport{
	{"http", openHTTP},
	{"local", func(_ *testing.T, svc *Service) DB { return svc.Local() }},
}

// openHTTP serves svc's routes as production does (httpapi.NewHTTPServer) on a loopback port and
// returns imgmill's HTTP client of it.
func openHTTP(t *testing.T, svc *Service) DB {
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(svc.Handler(), slog.New(slog.DiscardHandler))
	srv.Start()
	t.Cleanup(srv.Close)
	hc := httpapi.NewClient()
	t.Cleanup(hc.CloseIdleConnections)
	return client.NewDatabase(hc, client.Static(strings.TrimPrefix(srv.URL, "http://")))
}

// newService builds a database service over a fresh SQLite store, wrapped by wrap when given; its
// long polls end when the test does, before the HTTP server closes and then the store.
func newService(t *testing.T, policy Policy, wrap func(taskstore.Store) taskstore.Store) *Service {
	t.Helper()
	store, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "tasks.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatalf("sqlitestore.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("close the task store: %v", err)
		}
	})
	var s taskstore.Store = store
	if wrap != nil {
		s = wrap(s)
	}
	svc, err := NewService(Config{Store: s, Policy: policy})
	if err != nil {
		t.Fatalf("NewService: %v", err)
	}
	t.Cleanup(svc.stop)
	return svc
}

// TestContract runs the database's contract on both transports: the HTTP client against the
// service's handler, and Local, each over its own SQLite store.
func TestContract(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { runContract(t, tr) })
	}
}

func runContract(t *testing.T, tr transport) {
	ctx := context.Background()
	open := func(t *testing.T, policy Policy) DB {
		if policy.Lease == 0 {
			policy.Lease = time.Minute
		}
		return tr.open(t, newService(t, policy, nil))
	}

	t.Run("round trip", func(t *testing.T) {
		db := open(t, Policy{})
		if ref, err := db.Reference(ctx); err != nil || ref {
			t.Fatalf("Reference = %v, %v; want an imgmill database", ref, err)
		}
		id := mustCreate(t, db, client.NewTaskParams{Pending: true, Owner: "alice", Name: "cat.png", Op: "swap", MaxAttempts: 2})
		if _, err := db.GetNewTask(ctx, 0); !client.IsNoTask(err) {
			t.Fatalf("claim with only a pending task: %v; want no task", err)
		}
		if tk := mustGet(t, db, id); !tk.Pending || tk.State != wire.NotStarted || tk.Owner != "alice" || tk.Name != "cat.png" ||
			tk.Op != "swap" || tk.MaxAttempts != 2 {
			t.Fatalf("pending task = %+v", tk)
		}
		if err := db.ActivateTask(ctx, id, 123); err != nil {
			t.Fatalf("ActivateTask: %v", err)
		}
		if u, err := db.Usage(ctx, "alice"); err != nil || u != (wire.Usage{Tasks: 1, Bytes: 123}) {
			t.Fatalf("Usage(alice) = %+v, %v; want 1 task of 123 bytes", u, err)
		}
		claimed, err := db.GetNewTask(ctx, 0)
		if err != nil || claimed.ID != id || claimed.State != wire.InProgress || claimed.Token == 0 || claimed.Attempts != 1 ||
			claimed.LeaseUntil.IsZero() || claimed.Pending {
			t.Fatalf("claim = %+v, %v; want task %d in progress with a token and a lease", claimed, err, id)
		}
		extended, err := db.ExtendLease(ctx, id, claimed.Token)
		if err != nil || extended.Token != claimed.Token || extended.LeaseUntil.Before(claimed.LeaseUntil) {
			t.Fatalf("ExtendLease = %+v, %v; want the same claim, its lease no shorter", extended, err)
		}
		// The database itself does not hold a watch: it answers at once (the master holds it).
		if watched, err := db.WatchLease(ctx, id, claimed.Token, time.Minute); err != nil || watched.Token != claimed.Token {
			t.Fatalf("WatchLease = %+v, %v", watched, err)
		}
		if err := db.FinishTask(ctx, id, claimed.Token); err != nil {
			t.Fatalf("FinishTask: %v", err)
		}
		if err := db.FinishTask(ctx, id, claimed.Token); err != nil {
			t.Fatalf("FinishTask repeated (a retry): %v", err)
		}
		if tk := mustGet(t, db, id); tk.State != wire.Finished || tk.FinishedAt.IsZero() || !tk.LeaseUntil.IsZero() {
			t.Fatalf("finished task = %+v", tk)
		}
		wantRefusal(t, "finish without a token", db.FinishTask(ctx, id, 0), 400, fmt.Sprintf("task %d is not in progress", id))
	})

	t.Run("idempotent create", func(t *testing.T) {
		db := open(t, Policy{})
		p := client.NewTaskParams{Pending: true, IdempotencyKey: "upload-1"}
		first, err := db.CreateTask(ctx, p)
		if err != nil || first.Replayed || first.Pending {
			t.Fatalf("first CreateTask = %+v, %v; want a new task, not replayed", first, err)
		}
		again, err := db.CreateTask(ctx, p)
		if err != nil || again != (client.NewTaskResult{ID: first.ID, Replayed: true, Pending: true}) {
			t.Fatalf("repeated CreateTask = %+v, %v; want task %d replayed, still pending", again, err, first.ID)
		}
		if err := db.ActivateTask(ctx, first.ID, 1); err != nil {
			t.Fatalf("ActivateTask: %v", err)
		}
		if again, err := db.CreateTask(ctx, p); err != nil || again != (client.NewTaskResult{ID: first.ID, Replayed: true}) {
			t.Fatalf("CreateTask after activation = %+v, %v; want task %d replayed, not pending", again, err, first.ID)
		}
		_, err = db.CreateTask(ctx, client.NewTaskParams{IdempotencyKey: strings.Repeat("k", 1000)})
		wantStatus(t, "an overlong idempotency key", err, 400)
	})

	t.Run("bad input", func(t *testing.T) {
		db := open(t, Policy{})
		_, err := db.NewTask(ctx, client.NewTaskParams{MaxAttempts: 101})
		wantRefusal(t, "101 attempts", err, 400, `maxAttempts must be a whole number from 1 to 100, got "101"`)
		_, err = db.NewTask(ctx, client.NewTaskParams{Name: "a/b.png"})
		wantStatus(t, "a name with a slash", err, 400)
		_, err = db.NewTask(ctx, client.NewTaskParams{Op: "swap\n"})
		wantStatus(t, "an op with a newline", err, 400)
		_, err = db.GetByID(ctx, -1)
		wantRefusal(t, "a negative id", err, 400, `id must be a non-negative decimal integer, got "-1"`)
		wantRefusal(t, "a negative token", db.FinishTask(ctx, 0, -2), 400, `token must be a non-negative decimal integer, got "-2"`)
		_, err = db.GetNewTask(ctx, wire.MaxWait+time.Second)
		wantRefusal(t, "a wait over the cap", err, 400, fmt.Sprintf("wait must be between 0 and %s", wire.MaxWait))
		_, err = db.ClaimExpired(ctx, 0)
		wantRefusal(t, "a limit of 0", err, 400, fmt.Sprintf(`limit must be a whole number from 1 to %d, got "0"`, MaxExpiredBatch))
		_, err = db.GetByIDs(ctx, make([]int64, wire.MaxStatusIDs+1))
		wantRefusal(t, "too many ids", err, 400, fmt.Sprintf("at most %d ids at once, got %d", wire.MaxStatusIDs, wire.MaxStatusIDs+1))
		wantRefusal(t, "an invalid state", db.SetByID(ctx, wire.Task{ID: 0, State: 7}), 400, "task JSON needs a state of 0, 1, 2 or 3")
		wantRefusal(t, "a negative size", db.ActivateTask(ctx, 0, -1), 400, `size: want a number of bytes, got "-1"`)
	})

	t.Run("unknown id", func(t *testing.T) {
		db := open(t, Policy{})
		msg := "no task with id 42"
		_, err := db.GetByID(ctx, 42)
		wantRefusal(t, "GetByID", err, 400, msg)
		wantRefusal(t, "FinishTask", db.FinishTask(ctx, 42, 1), 400, msg)
		_, err = db.ExtendLease(ctx, 42, 1)
		wantRefusal(t, "ExtendLease", err, 400, msg)
		_, err = db.CancelTask(ctx, 42)
		wantRefusal(t, "CancelTask", err, 400, msg)
		_, err = db.RequeueTask(ctx, 42)
		wantRefusal(t, "RequeueTask", err, 400, msg)
		wantRefusal(t, "ActivateTask", db.ActivateTask(ctx, 42, 1), 400, msg)
		wantRefusal(t, "SetByID", db.SetByID(ctx, wire.Task{ID: 42, State: wire.Finished}), 400, msg)
		wantRefusal(t, "DeleteTask", db.DeleteTask(ctx, 42), 404, msg)
	})

	t.Run("claim batch", func(t *testing.T) {
		db := open(t, Policy{})
		var ids []int64
		for range 5 {
			ids = append(ids, mustCreate(t, db, client.NewTaskParams{}))
		}
		first, batched, err := db.GetNewTasks(ctx, 0, 3)
		if err != nil || !batched || len(first) != 3 {
			t.Fatalf("GetNewTasks(3) = %d tasks, batched %v, %v; want 3 in a batch", len(first), batched, err)
		}
		one, batched, err := db.GetNewTasks(ctx, 0, 1)
		if err != nil || batched || len(one) != 1 {
			t.Fatalf("GetNewTasks(1) = %d tasks, batched %v, %v; want 1, not a batch", len(one), batched, err)
		}
		rest, batched, err := db.GetNewTasks(ctx, 0, 100)
		if err != nil || !batched || len(rest) != 1 {
			t.Fatalf("GetNewTasks(100) = %d tasks, batched %v, %v; want the last one in a batch", len(rest), batched, err)
		}
		var got []int64
		for _, tk := range slices.Concat(first, one, rest) {
			if tk.State != wire.InProgress || tk.Token == 0 {
				t.Errorf("claimed task %+v is not in progress with a token", tk)
			}
			got = append(got, tk.ID)
		}
		slices.Sort(got)
		if !slices.Equal(got, ids) {
			t.Fatalf("claimed %v; want each of %v once", got, ids)
		}
		if _, _, err := db.GetNewTasks(ctx, 0, 4); !client.IsNoTask(err) {
			t.Fatalf("GetNewTasks on an empty queue: %v; want no task", err)
		}
	})

	t.Run("long poll woken by a new task", func(t *testing.T) {
		db := open(t, Policy{})
		claimed := make(chan wire.Task, 1)
		go func() {
			tk, err := db.GetNewTask(ctx, wire.MaxWait)
			if err != nil {
				t.Errorf("long poll: %v", err)
			}
			claimed <- tk
		}()
		id := mustCreate(t, db, client.NewTaskParams{})
		if tk := <-claimed; tk.ID != id || tk.State != wire.InProgress {
			t.Fatalf("long poll claimed %+v; want task %d", tk, id)
		}
	})

	t.Run("long poll ends with its caller", func(t *testing.T) {
		db := open(t, Policy{})
		pollCtx, cancel := context.WithCancel(ctx)
		res := make(chan error, 1)
		go func() {
			_, err := db.GetNewTask(pollCtx, wire.MaxWait)
			res <- err
		}()
		cancel()
		if err := <-res; err == nil {
			t.Fatal("a cancelled long poll claimed a task")
		}
		if _, err := db.GetNewTask(ctx, 0); !client.IsNoTask(err) {
			t.Fatalf("claim after the cancelled poll: %v; want no task (none was created)", err)
		}
	})

	t.Run("fencing", func(t *testing.T) {
		db := open(t, Policy{})
		id := mustCreate(t, db, client.NewTaskParams{})
		stale := mustClaim(t, db, id)
		if err := db.ReleaseTask(ctx, id, stale.Token); err != nil {
			t.Fatalf("ReleaseTask: %v", err)
		}
		if tk := mustGet(t, db, id); tk.State != wire.NotStarted || tk.Attempts != 0 {
			t.Fatalf("released task = %+v; want queued, the attempt not counted", tk)
		}
		current := mustClaim(t, db, id)
		if current.Token <= stale.Token {
			t.Fatalf("new claim's token %d is not above the released one's %d", current.Token, stale.Token)
		}
		msg := fmt.Sprintf("stale lease token for task %d", id)
		wantRefusal(t, "finish with a stale token", db.FinishTask(ctx, id, stale.Token), 409, msg)
		_, err := db.ExtendLease(ctx, id, stale.Token)
		wantRefusal(t, "extend with a stale token", err, 409, msg)
		_, err = db.FailTask(ctx, id, stale.Token, "late", true)
		wantRefusal(t, "fail with a stale token", err, 409, msg)
		wantRefusal(t, "release with a stale token", db.ReleaseTask(ctx, id, stale.Token), 409, msg)
		if err := db.FinishTask(ctx, id, current.Token); err != nil {
			t.Fatalf("FinishTask by the current holder: %v", err)
		}

		cancelled := mustCreate(t, db, client.NewTaskParams{})
		holder := mustClaim(t, db, cancelled)
		if tk, err := db.CancelTask(ctx, cancelled); err != nil || tk.State != wire.Cancelled {
			t.Fatalf("CancelTask of a claimed task = %+v, %v", tk, err)
		}
		gone := fmt.Sprintf("task %d was cancelled", cancelled)
		wantRefusal(t, "finish a cancelled task", db.FinishTask(ctx, cancelled, holder.Token), 410, gone)
		_, err = db.WatchLease(ctx, cancelled, holder.Token, time.Second)
		wantRefusal(t, "watch a cancelled task's lease", err, 410, gone)
	})

	t.Run("fail", func(t *testing.T) {
		db := open(t, Policy{Retry: taskstore.RetryBackoff{Min: time.Hour, Max: time.Hour}})
		permanent := mustCreate(t, db, client.NewTaskParams{})
		h := mustClaim(t, db, permanent)
		_, err := db.FailTask(ctx, permanent, h.Token, "  ", true)
		wantRefusal(t, "a blank reason", err, 400, "missing reason parameter")
		tk, err := db.FailTask(ctx, permanent, h.Token, "not an image", true)
		if err != nil || tk.State != wire.Failed || tk.Error != "not an image" || tk.FinishedAt.IsZero() {
			t.Fatalf("permanent FailTask = %+v, %v; want failed with the reason", tk, err)
		}

		again := mustCreate(t, db, client.NewTaskParams{MaxAttempts: 2})
		h = mustClaim(t, db, again)
		if tk, err := db.FailTask(ctx, again, h.Token, "crashed", false); err != nil || tk.State != wire.NotStarted || tk.Attempts != 1 {
			t.Fatalf("FailTask with attempts left = %+v, %v; want queued again after 1 attempt", tk, err)
		}
		h = mustClaim(t, db, again)
		if tk, err := db.FailTask(ctx, again, h.Token, "crashed", false); err != nil || tk.State != wire.Failed || tk.Attempts != 2 {
			t.Fatalf("FailTask on the last attempt = %+v, %v; want failed after 2 attempts", tk, err)
		}

		transient := mustCreate(t, db, client.NewTaskParams{})
		h = mustClaim(t, db, transient)
		tk, err = db.RetryTask(ctx, transient, h.Token, "storage away")
		if err != nil || tk.State != wire.NotStarted || tk.Retries != 1 || tk.Attempts != 0 || !tk.RetryAt.After(time.Now()) {
			t.Fatalf("RetryTask = %+v, %v; want queued for later, the attempt not counted", tk, err)
		}
		if _, err := db.GetNewTask(ctx, 0); !client.IsNoTask(err) {
			t.Fatalf("claim during the retry's wait: %v; want no task", err)
		}
	})

	t.Run("cancel, requeue, delete", func(t *testing.T) {
		db := open(t, Policy{})
		queued := mustCreate(t, db, client.NewTaskParams{})
		for range 2 { // cancelling a cancelled task answers it again
			if tk, err := db.CancelTask(ctx, queued); err != nil || tk.State != wire.Cancelled || tk.ID != queued {
				t.Fatalf("CancelTask = %+v, %v; want task %d cancelled", tk, err, queued)
			}
		}
		_, err := db.RequeueTask(ctx, mustCreate(t, db, client.NewTaskParams{}))
		wantRefusal(t, "requeue a queued task", err, 409, "task 1 is neither failed nor cancelled")
		tk, err := db.RequeueTask(ctx, queued)
		if err != nil || tk.State != wire.NotStarted || tk.Error != "" {
			t.Fatalf("RequeueTask of a cancelled task = %+v, %v; want queued, the error cleared", tk, err)
		}
		pending := mustCreate(t, db, client.NewTaskParams{Pending: true})
		if err := db.AbandonTask(ctx, pending, "upload too large"); err != nil {
			t.Fatalf("AbandonTask: %v", err)
		}
		if tk := mustGet(t, db, pending); tk.State != wire.Failed || tk.Error != "upload too large" {
			t.Fatalf("abandoned task = %+v", tk)
		}
		if err := db.AbandonTask(ctx, pending, "again"); err != nil {
			t.Fatalf("AbandonTask repeated (a retry): %v", err)
		}
		wantRefusal(t, "abandon a queued task", db.AbandonTask(ctx, queued, "late"), 409,
			fmt.Sprintf("task %d is not pending: its upload completed", queued))
		_, err = db.RequeueTask(ctx, pending)
		wantRefusal(t, "requeue a task whose upload never completed", err, 410,
			fmt.Sprintf("task %d has no image: its upload never completed", pending))

		finished := mustCreate(t, db, client.NewTaskParams{})
		// The queue is claimed in order: the requeued task and task 1 come before it.
		for range 2 {
			if _, err := db.GetNewTask(ctx, 0); err != nil {
				t.Fatalf("claim: %v", err)
			}
		}
		h := mustClaim(t, db, finished)
		if err := db.FinishTask(ctx, finished, h.Token); err != nil {
			t.Fatalf("FinishTask: %v", err)
		}
		_, err = db.CancelTask(ctx, finished)
		wantRefusal(t, "cancel a finished task", err, 409, fmt.Sprintf("task %d already finished", finished))

		for range 2 { // deleting a deleted task succeeds again
			if err := db.DeleteTask(ctx, finished); err != nil {
				t.Fatalf("DeleteTask: %v", err)
			}
		}
		_, err = db.GetByID(ctx, finished)
		wantRefusal(t, "get a deleted task", err, 400, fmt.Sprintf("no task with id %d", finished))
	})

	t.Run("set by id", func(t *testing.T) {
		db := open(t, Policy{})
		id := mustCreate(t, db, client.NewTaskParams{})
		if err := db.SetByID(ctx, wire.Task{ID: id, State: wire.InProgress}); err != nil {
			t.Fatalf("SetByID in progress: %v", err)
		}
		if _, err := db.GetNewTask(ctx, 0); !client.IsNoTask(err) {
			t.Fatalf("claim with the only task in progress: %v; want no task", err)
		}
		if err := db.SetByID(ctx, wire.Task{ID: id, State: wire.NotStarted}); err != nil {
			t.Fatalf("SetByID not started: %v", err)
		}
		mustClaim(t, db, id)
	})

	t.Run("get by ids, stats", func(t *testing.T) {
		db := open(t, Policy{})
		queued := mustCreate(t, db, client.NewTaskParams{})
		pending := mustCreate(t, db, client.NewTaskParams{Pending: true})
		got, err := db.GetByIDs(ctx, []int64{pending, 99, queued})
		if err != nil || len(got.Tasks) != 2 || got.Tasks[0].ID != pending || !got.Tasks[0].Pending || got.Tasks[1].ID != queued ||
			!slices.Equal(got.Missing, []int64{99}) {
			t.Fatalf("GetByIDs = %+v, %v; want tasks %d and %d, 99 missing", got, err, pending, queued)
		}
		if got, err := db.GetByIDs(ctx, nil); err != nil || got.Tasks == nil || len(got.Tasks) != 0 || got.Missing != nil {
			t.Fatalf("GetByIDs(none) = %#v, %v; want no tasks, none missing", got, err)
		}
		mustCreate(t, db, client.NewTaskParams{}) // processing, below
		for range 2 {
			if _, err := db.GetNewTask(ctx, 0); err != nil {
				t.Fatalf("claim: %v", err)
			}
		}
		if _, err := db.CancelTask(ctx, queued); err != nil {
			t.Fatalf("CancelTask: %v", err)
		}
		want := wire.Stats{Pending: 1, Processing: 1, Cancelled: 1}
		if st, err := db.Stats(ctx); err != nil || st != want {
			t.Fatalf("Stats = %+v, %v; want %+v", st, err, want)
		}
		var listed []int64
		var states []wire.State
		for tk, err := range db.Tasks(ctx) {
			if err != nil {
				t.Fatalf("Tasks: %v", err)
			}
			if tk.Pending != (tk.ID == pending) {
				t.Errorf("Tasks: task %d pending %v; want only task %d pending", tk.ID, tk.Pending, pending)
			}
			listed, states = append(listed, tk.ID), append(states, tk.State)
		}
		if !slices.Equal(listed, []int64{queued, pending, queued + 2}) ||
			!slices.Equal(states, []wire.State{wire.Cancelled, wire.NotStarted, wire.InProgress}) {
			t.Fatalf("Tasks listed %v in states %v; want %v cancelled, pending (not started), in progress",
				listed, states, []int64{queued, pending, queued + 2})
		}
	})

	t.Run("claim expired", func(t *testing.T) {
		db := open(t, Policy{})
		id := mustCreate(t, db, client.NewTaskParams{})
		if _, err := db.CancelTask(ctx, id); err != nil {
			t.Fatalf("CancelTask: %v", err)
		}
		if ids, err := db.ClaimExpired(ctx, 10); err != nil || ids == nil || len(ids) != 0 {
			t.Fatalf("ClaimExpired without retention = %#v, %v; want none", ids, err)
		}

		db = open(t, Policy{Retention: time.Millisecond})
		settled := mustCreate(t, db, client.NewTaskParams{})
		queued := mustCreate(t, db, client.NewTaskParams{})
		tk, err := db.CancelTask(ctx, settled)
		if err != nil || tk.ExpiresAt.IsZero() {
			t.Fatalf("CancelTask under retention = %+v, %v; want an expiry", tk, err)
		}
		var ids []int64
		if !pollFor(30*time.Second, func() bool {
			ids, err = db.ClaimExpired(ctx, 10)
			return err != nil || len(ids) > 0
		}) || err != nil || !slices.Equal(ids, []int64{settled}) {
			t.Fatalf("ClaimExpired = %v, %v; want [%d] (not the queued %d)", ids, err, settled, queued)
		}
		if ids, err := db.ClaimExpired(ctx, 10); err != nil || len(ids) != 0 {
			t.Fatalf("ClaimExpired again = %v, %v; want none: the first caller holds it", ids, err)
		}
		_, err = db.RequeueTask(ctx, settled)
		wantRefusal(t, "requeue an expired task", err, 410, fmt.Sprintf("task %d expired: it is being removed", settled))
	})

	t.Run("transient store failure", func(t *testing.T) {
		var flaky *flakyStore
		db := tr.open(t, newService(t, Policy{Lease: time.Minute}, func(s taskstore.Store) taskstore.Store {
			flaky = &flakyStore{Store: s}
			return flaky
		}))
		id := mustCreate(t, db, client.NewTaskParams{})

		// An idempotent call is retried until the store is back (after the 503's Retry-After).
		flaky.calls.Store(0)
		flaky.failures.Store(1)
		if tk, err := db.GetByID(ctx, id); err != nil || tk.ID != id {
			t.Fatalf("GetByID across a failure = %+v, %v; want task %d", tk, err, id)
		}
		if n := flaky.calls.Load(); n != 2 {
			t.Errorf("the store was asked %d times; want 2 (a failure, then the answer)", n)
		}

		// One that stays away is answered 503, transient, once the retry budget is spent.
		flaky.failures.Store(1 << 30)
		_, err := db.GetByID(client.RetryFor(ctx, 200*time.Millisecond), id)
		wantTransient(t, "GetByID with the store away", err)
		// A call that is not retried answers the first failure.
		flaky.calls.Store(0)
		_, err = db.GetNewTask(ctx, 0)
		wantTransient(t, "GetNewTask with the store away", err)
		_, err = db.NewTask(ctx, client.NewTaskParams{})
		wantTransient(t, "NewTask with the store away", err)
		if n := flaky.calls.Load(); n != 2 {
			t.Errorf("the store was asked %d times for two calls that are not retried; want 2", n)
		}
		// A listing that fails ends with the store's transient failure as its one error.
		var errs int
		for _, err := range db.Tasks(client.RetryFor(ctx, 200*time.Millisecond)) {
			if err != nil {
				errs++
				wantTransient(t, "Tasks with the store away", err)
			}
		}
		if errs != 1 {
			t.Errorf("Tasks with the store away yielded %d errors; want 1", errs)
		}
		flaky.failures.Store(0)
		mustClaim(t, db, id)
	})
}

// TestLocalAndHTTPShareLongPolls: one service, both transports. A task queued through one wakes a long
// poll waiting on the other, by the service's own signal: the periodic look at the store is an hour
// away, longer than a poll may wait.
func TestLocalAndHTTPShareLongPolls(t *testing.T) {
	ctx := context.Background()
	svc := newService(t, Policy{Lease: time.Minute}, nil)
	svc.srv.recheck = time.Hour
	local, remote := svc.Local(), openHTTP(t, svc)
	for _, tc := range []struct {
		name         string
		poll, create DB
	}{
		{"http poll, local create", remote, local},
		{"local poll, http create", local, remote},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Only a wake-up answers before the context ends: the poll would look at the store again
			// when its wait is over, after the context.
			ctx, cancel := context.WithTimeout(ctx, wire.MaxWait/2)
			defer cancel()
			claimed := make(chan wire.Task, 1)
			go func() {
				tk, err := tc.poll.GetNewTask(ctx, wire.MaxWait)
				if err != nil {
					t.Errorf("long poll: %v", err)
				}
				claimed <- tk
			}()
			waitForPoller(t, svc.srv)
			id := mustCreate(t, tc.create, client.NewTaskParams{})
			if tk := <-claimed; tk.ID != id {
				t.Fatalf("long poll claimed %+v; want task %d", tk, id)
			}
		})
	}

	// Every Local call that makes a task claimable says so on the signal the HTTP polls wait on.
	for _, tc := range []struct {
		name string
		act  func(id int64, token int64) error
	}{
		{"activate", func(id, _ int64) error { return local.ActivateTask(ctx, id, 1) }},
		{"release", func(id, token int64) error { return local.ReleaseTask(ctx, id, token) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := mustCreate(t, local, client.NewTaskParams{Pending: true})
			var token int64
			if tc.name == "release" {
				if err := local.ActivateTask(ctx, id, 1); err != nil {
					t.Fatalf("ActivateTask: %v", err)
				}
				token = mustClaim(t, local, id).Token
			}
			woken := svc.srv.news.wait()
			if err := tc.act(id, token); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !isClosed(woken) {
				t.Fatalf("%s did not wake the long polls", tc.name)
			}
			mustClaim(t, local, id)
		})
	}
}

// TestLocalAndHTTPShareMetrics: a task finished through either transport is observed in the service's
// one latency histogram, once.
func TestLocalAndHTTPShareMetrics(t *testing.T) {
	ctx := context.Background()
	svc := newService(t, Policy{Lease: time.Minute}, nil)
	local, remote := svc.Local(), openHTTP(t, svc)
	for i, db := range []DB{remote, local} {
		id := mustCreate(t, db, client.NewTaskParams{})
		claimed := mustClaim(t, db, id)
		for range 2 { // a retried finish is not observed again
			if err := db.FinishTask(ctx, id, claimed.Token); err != nil {
				t.Fatalf("FinishTask: %v", err)
			}
		}
		if got := metricstest.Gather(t, svc.reg.Gatherer()).Value("imgmill_task_latency_seconds"); got != float64(i+1) {
			t.Fatalf("latency observations after %d finished tasks: %v", i+1, got)
		}
	}
}

// TestLocalPollsEndWithTheService: once the service stops, a Local long poll answers at once, as an HTTP
// one does.
func TestLocalPollsEndWithTheService(t *testing.T) {
	svc := newService(t, Policy{Lease: time.Minute}, nil)
	svc.srv.recheck = time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // well under wire.MaxWait
	defer cancel()
	res := make(chan error, 1)
	go func() {
		_, err := svc.Local().GetNewTask(ctx, wire.MaxWait)
		res <- err
	}()
	waitForPoller(t, svc.srv)
	svc.stop()
	if err := <-res; !client.IsNoTask(err) || ctx.Err() != nil {
		t.Fatalf("long poll at shutdown: %v (context: %v); want no task, before the context ends", err, ctx.Err())
	}
}

// waitForPoller waits until a long poll took the wake-up channel, and a little more for it to look at
// the store and sleep: a task created before that is claimed without a wake-up, which the test does not
// notice but does not test either.
func waitForPoller(t *testing.T, s *server) {
	t.Helper()
	if !pollFor(30*time.Second, func() bool {
		s.news.mu.Lock()
		defer s.news.mu.Unlock()
		return s.news.ch != nil
	}) {
		t.Fatal("no long poll began to wait")
	}
	time.Sleep(50 * time.Millisecond)
}

// flakyStore fails Get, Claim and Create as an engine that is away does, failures times.
type flakyStore struct {
	taskstore.Store
	failures atomic.Int64 // how many calls are still to fail
	calls    atomic.Int64 // calls to the methods that may fail
}

func (f *flakyStore) fail() error {
	f.calls.Add(1)
	if f.failures.Add(-1) >= 0 {
		return fault.Unavailable("the task database", errors.New("connection refused"))
	}
	f.failures.Store(0)
	return nil
}

func (f *flakyStore) Get(ctx context.Context, id int64) (taskstore.Task, error) {
	if err := f.fail(); err != nil {
		return taskstore.Task{}, err
	}
	return f.Store.Get(ctx, id)
}

func (f *flakyStore) Claim(ctx context.Context, lease time.Duration) (taskstore.Task, error) {
	if err := f.fail(); err != nil {
		return taskstore.Task{}, err
	}
	return f.Store.Claim(ctx, lease)
}

func (f *flakyStore) Create(ctx context.Context, p taskstore.CreateParams) (int64, error) {
	if err := f.fail(); err != nil {
		return 0, err
	}
	return f.Store.Create(ctx, p)
}

func (f *flakyStore) List(ctx context.Context) iter.Seq2[taskstore.Task, error] {
	if err := f.fail(); err != nil {
		return func(yield func(taskstore.Task, error) bool) { yield(taskstore.Task{}, err) }
	}
	return f.Store.List(ctx)
}

func mustCreate(t *testing.T, db DB, p client.NewTaskParams) int64 {
	t.Helper()
	id, err := db.NewTask(context.Background(), p)
	if err != nil {
		t.Fatalf("NewTask(%+v): %v", p, err)
	}
	return id
}

func mustGet(t *testing.T, db DB, id int64) wire.Task {
	t.Helper()
	tk, err := db.GetByID(context.Background(), id)
	if err != nil {
		t.Fatalf("GetByID(%d): %v", id, err)
	}
	return tk
}

// mustClaim claims the next task, which must be id.
func mustClaim(t *testing.T, db DB, id int64) wire.Task {
	t.Helper()
	tk, err := db.GetNewTask(context.Background(), 0)
	if err != nil || tk.ID != id {
		t.Fatalf("claim = %+v, %v; want task %d", tk, err, id)
	}
	return tk
}

func wantStatus(t *testing.T, what string, err error, status int) {
	t.Helper()
	if !client.IsStatus(err, status) {
		t.Errorf("%s: %v; want status %d", what, err, status)
	}
}

// wantRefusal checks that err is the answer status with the message msg.
func wantRefusal(t *testing.T, what string, err error, status int, msg string) {
	t.Helper()
	if !client.IsStatus(err, status) || httpapi.ErrorMessage(err) != msg {
		t.Errorf("%s: %v; want %d %q", what, err, status, msg)
	}
}

func wantTransient(t *testing.T, what string, err error) {
	t.Helper()
	if !client.IsStatus(err, http.StatusServiceUnavailable) || !fault.IsTransient(err) {
		t.Errorf("%s: %v (transient %v); want a transient 503", what, err, fault.IsTransient(err))
	}
}

// pollFor calls cond until it holds or timeout passes, and says whether it held.
func pollFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
