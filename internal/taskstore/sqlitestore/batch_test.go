package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// holdWriter runs a write that keeps the writer's transaction open until release is called, so that
// the writes a test queues meanwhile go into the next transaction together.
func holdWriter(t *testing.T, s *Store) (release func()) {
	t.Helper()
	started, held, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- s.writes.do(context.Background(), func(context.Context, *sql.Tx) error {
			close(started)
			<-held
			return nil
		})
	}()
	<-started
	return func() {
		close(held)
		if err := <-done; err != nil {
			t.Errorf("holding write: %v", err)
		}
	}
}

// waitQueued waits until n writes wait for the writer.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s.writes.mu.Lock()
		queued := len(s.writes.queue)
		s.writes.mu.Unlock()
		if queued == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", queued, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// queue starts a write in the background after those already queued, and returns its outcome's channel.
func queue(t *testing.T, s *Store, ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) <-chan error {
	t.Helper()
	s.writes.mu.Lock()
	n := len(s.writes.queue)
	s.writes.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- s.writes.do(ctx, fn) }()
	waitQueued(t, s, n+1)
	return done
}

// createNamed is a write that creates a task named name.
func createNamed(s *Store, name string) func(ctx context.Context, tx *sql.Tx) error {
	return func(ctx context.Context, tx *sql.Tx) error {
		var id int64
		return stmt(ctx, tx, s.create).QueryRowContext(ctx, sql.Named("pending", false), sql.Named("max_attempts", 3),
			sql.Named("now", nanos(time.Now())), sql.Named("op", ""), sql.Named("owner", ""), sql.Named("name", name)).Scan(&id)
	}
}

// wantTasks checks that the store holds tasks named want, in id order.
func wantTasks(t *testing.T, s *Store, want ...string) {
	t.Helper()
	var got []string
	for task, err := range s.List(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, task.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("tasks %q, want %q", got, want)
	}
}

// Writes that queue while a transaction runs share the next one, and each gets its own answer.
func TestBatchSharesTransactions(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	release := holdWriter(t, s)
	const n = 20
	var wg sync.WaitGroup
	ids := make([]int64, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { ids[i], errs[i] = s.Create(t.Context(), taskstore.CreateParams{Name: fmt.Sprint(i)}) })
	}
	waitQueued(t, s, n)
	batches, written := s.writes.batches.Load(), s.writes.written.Load()
	release()
	wg.Wait()
	seen := map[int64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("create %d: %v", i, errs[i])
		}
		got, err := s.Get(t.Context(), ids[i])
		if err != nil || got.Name != fmt.Sprint(i) {
			t.Fatalf("create %d answered id %d, which holds %+v (%v)", i, ids[i], got, err)
		}
		seen[ids[i]] = true
	}
	if len(seen) != n {
		t.Fatalf("%d creates answered %d distinct ids", n, len(seen))
	}
	if b, w := s.writes.batches.Load()-batches, s.writes.written.Load()-written; b != 1 || w != n {
		t.Fatalf("the %d queued creates ran as %d writes in %d transactions, want %d in 1", n, w, b, n)
	}
}

// A write that fails inside a shared transaction is rolled back alone: those before and after it commit.
func TestBatchFailedWriteRollsBackAlone(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	release := holdWriter(t, s)
	boom := errors.New("boom")
	a := queue(t, s, t.Context(), createNamed(s, "a"))
	b := queue(t, s, t.Context(), func(ctx context.Context, tx *sql.Tx) error {
		if err := createNamed(s, "b")(ctx, tx); err != nil {
			return err
		}
		return boom // after its insert
	})
	c := queue(t, s, t.Context(), createNamed(s, "c"))
	release()
	if err := <-a; err != nil {
		t.Fatalf("a: %v", err)
	}
	if err := <-b; !errors.Is(err, boom) {
		t.Fatalf("b: %v, want its own failure", err)
	}
	if err := <-c; err != nil {
		t.Fatalf("c: %v", err)
	}
	wantTasks(t, s, "a", "c")
}

// A write that ends the transaction itself (as SQLite does on some failures) fails the whole batch:
// nothing of it commits, every write hears so, and the store goes on working.
func TestBatchLostTransactionFailsEveryWrite(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	release := holdWriter(t, s)
	a := queue(t, s, t.Context(), createNamed(s, "a"))
	b := queue(t, s, t.Context(), func(ctx context.Context, tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `ROLLBACK`); err != nil {
			return err
		}
		return errors.New("the transaction is gone")
	})
	c := queue(t, s, t.Context(), createNamed(s, "c"))
	release()
	for name, ch := range map[string]<-chan error{"a": a, "b": b, "c": c} {
		if err := <-ch; err == nil {
			t.Errorf("%s: no error, though its transaction was rolled back", name)
		}
	}
	wantTasks(t, s) // none: the batch was rolled back
	if _, err := s.Create(t.Context(), taskstore.CreateParams{Name: "d"}); err != nil {
		t.Fatalf("create after a lost transaction: %v", err)
	}
	wantTasks(t, s, "d")
}

// A caller that gives up while its write waits takes the write back: it never runs.
func TestBatchCancelledWriteNeverRuns(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	release := holdWriter(t, s)
	ctx, cancel := context.WithCancel(t.Context())
	a := queue(t, s, ctx, createNamed(s, "a"))
	b := queue(t, s, t.Context(), createNamed(s, "b"))
	cancel()
	if err := <-a; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled write: %v, want context.Canceled", err)
	}
	release()
	if err := <-b; err != nil {
		t.Fatalf("b: %v", err)
	}
	wantTasks(t, s, "b")
}

// The reads a write makes see the writes before it in the same transaction: a retried Finish queued
// behind the first one answers the finished task, not the state before the transaction.
func TestBatchReadsSeeEarlierWrites(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil {
		t.Fatal(err)
	}
	task, err := s.Claim(t.Context(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	release := holdWriter(t, s)
	finished := make([]taskstore.Task, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		waitQueued(t, s, i)
		wg.Go(func() { finished[i], errs[i] = s.Finish(t.Context(), task.ID, task.Token) })
		waitQueued(t, s, i+1)
	}
	release()
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil || finished[i].State != wire.Finished {
			t.Fatalf("finish %d: %+v, %v; want the finished task", i, finished[i], errs[i])
		}
	}
}

// After Close, a write is refused rather than left waiting.
func TestBatchRefusesWritesAfterClose(t *testing.T) {
	s, _ := openTemp(t, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err == nil {
		t.Fatal("create after Close succeeded")
	}
}

// A transaction that outlives its own deadline (a disk that stopped answering) fails its writes as the
// database's transient failure, not as their callers' deadline: their contexts are still live.
func TestBatchPastItsDeadlineIsTransient(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	s.writes.timeout = 50 * time.Millisecond
	err := s.writes.do(t.Context(), func(ctx context.Context, _ *sql.Tx) error {
		<-ctx.Done() // the transaction's deadline, as a stuck statement would meet it
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) || !fault.IsTransient(err) {
		t.Fatalf("a transaction past its deadline: %v (transient %v), want a transient deadline", err, fault.IsTransient(err))
	}
	if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil {
		t.Fatalf("create after a transaction past its deadline: %v", err)
	}
}
