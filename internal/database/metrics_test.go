package database_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
	"github.com/imgmill/imgmill/internal/wire"
)

// newMeteredDB serves the database with its metrics in reg, its requests observed as service.Run
// observes them.
func newMeteredDB(t *testing.T, reg *metrics.Registry) *dbServer {
	t.Helper()
	store, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "tasks.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "task store", store)
	done := make(chan struct{})
	stop := sync.OnceFunc(func() { close(done) })
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(database.NewServer(store, database.Policy{Lease: longLease}, done, database.WithMetrics(reg)),
		servicetest.Discard, httpapi.WithObserver(reg))
	srv.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(stop) // end long polls before the server waits for them
	return &dbServer{t: t, url: srv.URL, c: servicetest.NewHTTPClient(t), closeDone: stop}
}

// The tasks gauges are the store's counts at every scrape, the latency histogram counts each finished
// task once, and requests are counted by route.
func TestDatabaseMetrics(t *testing.T) {
	reg := metrics.New("database")
	s := newMeteredDB(t, reg)
	gather := func() metricstest.Families { return metricstest.Gather(t, reg.Gatherer()) }
	checkTasks := func(what string) {
		t.Helper()
		var stats wire.Stats
		if err := json.Unmarshal([]byte(s.call("GET", "/stats", nil, "").Body), &stats); err != nil {
			t.Fatal(err)
		}
		f := gather()
		for state, want := range map[string]int64{"queued": stats.Queued, "pending": stats.Pending, "processing": stats.Processing,
			"finished": stats.Finished, "failed": stats.Failed, "cancelled": stats.Cancelled} {
			if got := f.Value("imgmill_tasks", "service", "database", "state", state); got != float64(want) {
				t.Errorf("%s: imgmill_tasks{state=%q} = %v, the store counts %d", what, state, got, want)
			}
		}
	}
	latency := func() float64 { return gather().Value("imgmill_task_latency_seconds") }

	checkTasks("empty")
	// The store's writes and their transactions: these calls come one at a time, so each write has a
	// transaction of its own.
	checkWrites := func(what string, want float64) {
		t.Helper()
		f := gather()
		if w, tx := f.Value("imgmill_taskstore_writes_total"), f.Value("imgmill_taskstore_transactions_total"); w != want || tx != want {
			t.Errorf("%s: %v writes in %v transactions, want %v in %v", what, w, tx, want, want)
		}
	}
	checkWrites("empty", 0)
	first := s.newTask(false)
	for range 2 {
		s.newTask(false)
	}
	s.newTask(true) // pending: an upload not complete yet
	checkTasks("created")
	if got := gather().Value("imgmill_tasks", "service", "database", "state", "pending"); got != 1 {
		t.Errorf("imgmill_tasks{state=pending} = %v, want 1", got)
	}
	if got := gather().Value("imgmill_http_requests_total", "route", "POST /newTask", "method", "POST", "code", "200"); got != 4 {
		t.Errorf("POST /newTask counted %v times, want 4", got)
	}
	checkWrites("created", 4)
	claimed := s.claim(first)
	second := s.claim(first + 1)
	checkTasks("claimed")
	checkWrites("claimed", 6)
	if latency() != 0 {
		t.Fatalf("latency observed before any finish")
	}

	time.Sleep(10 * time.Millisecond) // a latency the histogram's sum can see
	s.expect("POST", "/finishTask", tokenQuery(first, claimed.Token), "", 200, "success")
	checkTasks("finished")
	if got := latency(); got != 1 {
		t.Errorf("latency observations after a finish: %v, want 1", got)
	}
	if sum := gather().Sum("imgmill_task_latency_seconds"); sum < 0.01 || sum > 60 {
		t.Errorf("latency sum %vs, want the task's age (at least 10ms)", sum)
	}
	// A worker retrying its finish (a lost reply) is not a second finished task.
	time.Sleep(5 * time.Millisecond)
	s.expect("POST", "/finishTask", tokenQuery(first, claimed.Token), "", 200, "success")
	if got := latency(); got != 1 {
		t.Errorf("latency observations after a retried finish: %v, want 1", got)
	}
	// Refused finishes observe nothing.
	s.expect("POST", "/finishTask", tokenQuery(first+2, 0), "", 400, notInProgress(first+2))
	if got := latency(); got != 1 {
		t.Errorf("latency observations after a refused finish: %v, want 1", got)
	}
	s.call("POST", "/failTask", failQuery(second, "bad input", true), "")
	checkTasks("failed")
	if got := latency(); got != 1 {
		t.Errorf("latency observations after a failure: %v, want 1", got)
	}
}

// In process a finish and its retry come microseconds apart: the latency is observed from what the
// store's Finish returns, once for the finish and not again for the retry, whose task carries the first
// finish's time.
func TestFinishLatencyInProcess(t *testing.T) {
	ctx := t.Context()
	store, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "tasks.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "task store", store)
	svc, err := database.NewService(database.Config{Store: store, Policy: database.Policy{Lease: longLease}})
	if err != nil {
		t.Fatal(err)
	}
	db := svc.Local()
	latency := func() (count, sum float64) {
		f := metricstest.Gather(t, svc.Gatherer())
		return f.Value("imgmill_task_latency_seconds"), f.Sum("imgmill_task_latency_seconds")
	}
	id, err := db.NewTask(ctx, client.NewTaskParams{})
	if err != nil {
		t.Fatal(err)
	}
	task, err := db.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("GetNewTask = %+v, %v; want task %d", task, err, id)
	}
	time.Sleep(10 * time.Millisecond) // a latency the histogram's sum can see
	for i := range 3 {
		if err := db.FinishTask(ctx, id, task.Token); err != nil {
			t.Fatalf("FinishTask %d: %v", i, err)
		}
		if count, sum := latency(); count != 1 || sum < 0.01 || sum > 60 {
			t.Fatalf("after finish %d (a retry after the first): %v observations summing to %vs; want 1, of the task's age (at least 10ms)",
				i, count, sum)
		}
	}
	// A finish refused observes nothing either.
	if err := db.FinishTask(ctx, id, task.Token+1); err == nil {
		t.Fatal("FinishTask with a token never issued succeeded")
	}
	if count, _ := latency(); count != 1 {
		t.Fatalf("after a refused finish: %v observations, want 1", count)
	}
}
