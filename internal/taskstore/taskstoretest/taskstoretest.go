// Package taskstoretest is the contract suite every taskstore.Store implementation must pass, in the
// style of River's riverdrivertest: an implementation's test calls Run with a function that opens a
// fresh, empty store.
package taskstoretest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// OpenFunc opens a fresh, empty store whose notion of "now" is clock. The suite closes the store
// when the subtest ends, so OpenFunc must not register its own Close.
type OpenFunc func(t *testing.T, clock func() time.Time) taskstore.Store

// Run runs the contract suite. Every subtest opens its own store.
func Run(t *testing.T, open OpenFunc) {
	t.Helper()
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, h *harness)
	}{
		{"CreateIDsConsecutive", testCreateIDsConsecutive},
		{"GetUnknown", testGetUnknown},
		{"ClaimFIFO", testClaimFIFO},
		{"ClaimEmpty", testClaimEmpty},
		{"PendingAndActivate", testPendingAndActivate},
		{"Finish", testFinish},
		{"LeaseExpiry", testLeaseExpiry},
		{"LapsedLeaseInIDOrder", testLapsedLeaseInIDOrder},
		{"Set", testSet},
		{"SetErrors", testSetErrors},
		{"List", testList},
		{"ListEarlyStop", testListEarlyStop},
		{"ListCanceledContext", testListCanceledContext},
		{"ConcurrentCreate", testConcurrentCreate},
		{"ConcurrentClaim", testConcurrentClaim},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			s := open(t, clk.Now)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, &harness{s: s, clk: clk, ctx: t.Context()})
		})
	}
}

// lease is the default lease; whole seconds keep every time representable at microsecond
// precision (PostgreSQL's), so stores need not round-trip nanoseconds.
const lease = time.Minute

// start is the fake clock's initial time: whole seconds, far from any zero value.
var start = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

// fakeClock is a mutex-guarded time the suite advances by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: start} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

type harness struct {
	s   taskstore.Store
	clk *fakeClock
	ctx context.Context
}

func (h *harness) create(t *testing.T, pending bool) int64 {
	t.Helper()
	id, err := h.s.Create(h.ctx, pending)
	if err != nil {
		t.Fatalf("Create(pending=%v): %v", pending, err)
	}
	return id
}

// createN creates n active tasks and checks they got the next n ids.
func (h *harness) createN(t *testing.T, n int) {
	t.Helper()
	first := h.create(t, false)
	for i := 1; i < n; i++ {
		if id := h.create(t, false); id != first+int64(i) {
			t.Fatalf("Create returned id %d, want %d", id, first+int64(i))
		}
	}
}

func (h *harness) get(t *testing.T, id int64) taskstore.Task {
	t.Helper()
	task, err := h.s.Get(h.ctx, id)
	if err != nil {
		t.Fatalf("Get(%d): %v", id, err)
	}
	return task
}

func (h *harness) claim(t *testing.T) taskstore.Task {
	t.Helper()
	task, err := h.s.Claim(h.ctx, lease)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return task
}

// claimID claims and checks the claimed task's id.
func (h *harness) claimID(t *testing.T, want int64) taskstore.Task {
	t.Helper()
	task := h.claim(t)
	if task.ID != want {
		t.Fatalf("Claim got task %d, want %d", task.ID, want)
	}
	return task
}

func (h *harness) list(t *testing.T) []taskstore.Task {
	t.Helper()
	var out []taskstore.Task
	for task, err := range h.s.List(h.ctx) {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		out = append(out, task)
	}
	return out
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// checkTask compares every field; times with Equal, so location and monotonic readings don't matter.
func checkTask(t *testing.T, what string, got, want taskstore.Task) {
	t.Helper()
	if got.ID != want.ID || got.State != want.State || got.Pending != want.Pending || got.Attempts != want.Attempts ||
		!got.CreatedAt.Equal(want.CreatedAt) || !got.StartedAt.Equal(want.StartedAt) ||
		!got.FinishedAt.Equal(want.FinishedAt) || !got.LeaseUntil.Equal(want.LeaseUntil) {
		t.Fatalf("%s:\n got  %s\n want %s", what, format(got), format(want))
	}
}

func format(x taskstore.Task) string {
	tf := func(tm time.Time) string {
		if tm.IsZero() {
			return "zero"
		}
		return tm.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("{ID:%d State:%v Pending:%v Attempts:%d Created:%s Started:%s Finished:%s LeaseUntil:%s}",
		x.ID, x.State, x.Pending, x.Attempts, tf(x.CreatedAt), tf(x.StartedAt), tf(x.FinishedAt), tf(x.LeaseUntil))
}

func testCreateIDsConsecutive(t *testing.T, h *harness) {
	var want []taskstore.Task
	for i := range 5 {
		now := h.clk.Advance(time.Second)
		pending := i%2 == 1
		id := h.create(t, pending)
		if id != int64(i) {
			t.Fatalf("Create #%d returned id %d, want %d", i, id, i)
		}
		want = append(want, taskstore.Task{ID: id, State: taskstore.NotStarted, Pending: pending, CreatedAt: now})
	}
	h.clk.Advance(time.Hour) // CreatedAt must be the creation time, not the read time
	for _, w := range want {
		checkTask(t, "Get after Create", h.get(t, w.ID), w)
	}
}

func testGetUnknown(t *testing.T, h *harness) {
	_, err := h.s.Get(h.ctx, 0)
	wantErr(t, "Get(0) on empty store", err, taskstore.ErrNotFound)
	h.create(t, false)
	for _, id := range []int64{-1, 1, 1 << 40} {
		_, err := h.s.Get(h.ctx, id)
		wantErr(t, fmt.Sprintf("Get(%d)", id), err, taskstore.ErrNotFound)
	}
}

func testClaimFIFO(t *testing.T, h *harness) {
	h.createN(t, 3)
	created := start
	for i := range int64(3) {
		now := h.clk.Advance(time.Second)
		got := h.claimID(t, i)
		want := taskstore.Task{
			ID: i, State: taskstore.InProgress, Attempts: 1,
			CreatedAt: created, StartedAt: now, LeaseUntil: now.Add(lease),
		}
		checkTask(t, "Claim result", got, want)
		checkTask(t, "Get after Claim", h.get(t, i), want)
	}
	_, err := h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim with everything in progress", err, taskstore.ErrNoTask)

	// Tasks created after claims continue the queue.
	h.createN(t, 2)
	h.claimID(t, 3)
	h.claimID(t, 4)
}

func testClaimEmpty(t *testing.T, h *harness) {
	_, err := h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim on empty store", err, taskstore.ErrNoTask)

	h.create(t, false)
	h.claimID(t, 0)
	noErr(t, "Finish(0)", h.s.Finish(h.ctx, 0))
	h.clk.Advance(10 * lease) // a finished task never comes back, lease or not
	_, err = h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim with only finished tasks", err, taskstore.ErrNoTask)
}

func testPendingAndActivate(t *testing.T, h *harness) {
	if id := h.create(t, true); id != 0 {
		t.Fatalf("pending task got id %d, want 0", id)
	}
	h.create(t, false)
	h.create(t, true)

	h.claimID(t, 1) // 0 is older but pending
	_, err := h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim with only pending tasks", err, taskstore.ErrNoTask)
	if got := h.get(t, 0); !got.Pending || got.State != taskstore.NotStarted {
		t.Fatalf("pending task reads %s", format(got))
	}

	wantErr(t, "Activate(99)", h.s.Activate(h.ctx, 99), taskstore.ErrNotFound)
	noErr(t, "Activate(2)", h.s.Activate(h.ctx, 2))
	noErr(t, "Activate(2) again", h.s.Activate(h.ctx, 2))
	noErr(t, "Activate(1) on an active in-progress task", h.s.Activate(h.ctx, 1))
	if got := h.get(t, 1); got.State != taskstore.InProgress || got.Pending {
		t.Fatalf("Activate changed an in-progress task: %s", format(got))
	}
	if got := h.get(t, 2); got.Pending || got.State != taskstore.NotStarted {
		t.Fatalf("activated task reads %s", format(got))
	}
	h.claimID(t, 2)
	_, err = h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim with task 0 still pending", err, taskstore.ErrNoTask)

	noErr(t, "Activate(0)", h.s.Activate(h.ctx, 0))
	got := h.claimID(t, 0)
	if got.Pending || got.Attempts != 1 {
		t.Fatalf("claimed formerly pending task: %s", format(got))
	}
}

func testFinish(t *testing.T, h *harness) {
	h.createN(t, 2)
	wantErr(t, "Finish of not-started task", h.s.Finish(h.ctx, 0), taskstore.ErrNotInProgress)
	wantErr(t, "Finish of unknown task", h.s.Finish(h.ctx, 42), taskstore.ErrNotFound)
	wantErr(t, "Finish of negative id", h.s.Finish(h.ctx, -1), taskstore.ErrNotFound)

	claimedAt := h.clk.Advance(time.Second)
	h.claimID(t, 0)
	finishedAt := h.clk.Advance(lease / 2)
	noErr(t, "Finish(0)", h.s.Finish(h.ctx, 0))
	checkTask(t, "Get after Finish", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.Finished, Attempts: 1,
		CreatedAt: start, StartedAt: claimedAt, FinishedAt: finishedAt,
	})
	wantErr(t, "Finish of finished task", h.s.Finish(h.ctx, 0), taskstore.ErrNotInProgress)

	h.claimID(t, 1) // finished task 0 is not handed out again
	_, err := h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim after all claimed", err, taskstore.ErrNoTask)
	h.clk.Advance(lease / 2)
	noErr(t, "Finish(1)", h.s.Finish(h.ctx, 1))
	if got := h.get(t, 0); got.State != taskstore.Finished || !got.FinishedAt.Equal(finishedAt) {
		t.Fatalf("finishing task 1 changed task 0: %s", format(got))
	}
}

func testLeaseExpiry(t *testing.T, h *harness) {
	h.createN(t, 3)
	t0 := h.clk.Now()
	h.claimID(t, 0) // lease until t0+lease
	long, err := h.s.Claim(h.ctx, 10*lease)
	noErr(t, "Claim with long lease", err)
	if long.ID != 1 || !long.LeaseUntil.Equal(t0.Add(10*lease)) {
		t.Fatalf("long claim: %s", format(long))
	}

	h.clk.Advance(lease - time.Second)
	if got := h.get(t, 0); got.State != taskstore.InProgress {
		t.Fatalf("task 0 before its lease lapsed: %s", format(got))
	}

	h.clk.Advance(2 * time.Second) // now past task 0's lease
	checkTask(t, "Get of lapsed task", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.NotStarted, Attempts: 1, CreatedAt: start, StartedAt: t0,
	})
	if got := h.get(t, 1); got.State != taskstore.InProgress {
		t.Fatalf("task 1 with a long lease: %s", format(got))
	}
	var states []taskstore.State
	for _, task := range h.list(t) {
		states = append(states, task.State)
	}
	if want := []taskstore.State{taskstore.NotStarted, taskstore.InProgress, taskstore.NotStarted}; !slices.Equal(states, want) {
		t.Fatalf("List states after lapse = %v, want %v", states, want)
	}
	wantErr(t, "Finish of lapsed task", h.s.Finish(h.ctx, 0), taskstore.ErrNotInProgress)

	// The lapsed task is handed out again, before never-claimed task 2 because its id is lower.
	now := h.clk.Advance(time.Second)
	checkTask(t, "reclaim of lapsed task", h.claimID(t, 0), taskstore.Task{
		ID: 0, State: taskstore.InProgress, Attempts: 2, CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease),
	})
	checkTask(t, "Get after reclaim", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.InProgress, Attempts: 2, CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease),
	})
	h.claimID(t, 2)
	_, err = h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim with all leases live", err, taskstore.ErrNoTask)

	// The second holder can finish; the first one's lease is gone for good.
	noErr(t, "Finish(0) by the second holder", h.s.Finish(h.ctx, 0))

	// Both remaining leases lapse; they come back in id order, each on its second attempt.
	h.clk.Advance(10 * lease)
	for _, id := range []int64{1, 2} {
		if got := h.claimID(t, id); got.Attempts != 2 {
			t.Fatalf("reclaimed task %d has %d attempts, want 2", id, got.Attempts)
		}
	}
	_, err = h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim after reclaiming everything", err, taskstore.ErrNoTask)
}

// testLapsedLeaseInIDOrder checks that a lapsed task with a higher id waits behind older
// never-claimed tasks and jumps ahead of newer ones.
func testLapsedLeaseInIDOrder(t *testing.T, h *harness) {
	h.createN(t, 2)
	h.claimID(t, 0)
	h.claimID(t, 1)
	h.createN(t, 2)                                                            // tasks 2, 3
	noErr(t, "Set(0, NotStarted)", h.s.Set(h.ctx, 0, taskstore.NotStarted, 0)) // task 0 requeued by hand
	h.clk.Advance(lease + time.Second)                                         // task 1 lapses
	h.claimID(t, 0)
	h.claimID(t, 1)
	h.claimID(t, 2)
	h.claimID(t, 3)
}

func testSet(t *testing.T, h *harness) {
	h.createN(t, 2)

	// NotStarted -> InProgress starts a lease from the clock.
	now := h.clk.Advance(time.Second)
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, taskstore.InProgress, 5*lease))
	got := h.get(t, 0)
	if got.State != taskstore.InProgress || !got.LeaseUntil.Equal(now.Add(5*lease)) || !got.FinishedAt.IsZero() {
		t.Fatalf("after Set InProgress: %s", format(got))
	}
	h.claimID(t, 1) // task 0 is in progress, so not claimable
	_, err := h.s.Claim(h.ctx, lease)
	wantErr(t, "Claim with both in progress", err, taskstore.ErrNoTask)
	noErr(t, "Finish after Set InProgress", h.s.Finish(h.ctx, 0))

	// Finished -> NotStarted makes it claimable again and clears FinishedAt.
	noErr(t, "Set NotStarted", h.s.Set(h.ctx, 0, taskstore.NotStarted, 0))
	got = h.get(t, 0)
	if got.State != taskstore.NotStarted || !got.FinishedAt.IsZero() || !got.LeaseUntil.IsZero() {
		t.Fatalf("after Set NotStarted: %s", format(got))
	}
	h.claimID(t, 0)

	// InProgress -> Finished sets FinishedAt and ends the lease.
	now = h.clk.Advance(time.Second)
	noErr(t, "Set Finished", h.s.Set(h.ctx, 0, taskstore.Finished, 0))
	got = h.get(t, 0)
	if got.State != taskstore.Finished || !got.FinishedAt.Equal(now) || !got.LeaseUntil.IsZero() {
		t.Fatalf("after Set Finished: %s", format(got))
	}
	h.clk.Advance(10 * lease)
	if got := h.get(t, 0); got.State != taskstore.Finished {
		t.Fatalf("finished task changed with time: %s", format(got))
	}
	wantErr(t, "Finish after Set Finished", h.s.Finish(h.ctx, 0), taskstore.ErrNotInProgress)

	// InProgress -> NotStarted releases the lease at once.
	h.claimID(t, 1) // task 1's lease had lapsed
	noErr(t, "Set NotStarted on in-progress", h.s.Set(h.ctx, 1, taskstore.NotStarted, 0))
	if got := h.get(t, 1); got.State != taskstore.NotStarted || !got.LeaseUntil.IsZero() {
		t.Fatalf("after Set NotStarted on in-progress: %s", format(got))
	}
	wantErr(t, "Finish after Set NotStarted", h.s.Finish(h.ctx, 1), taskstore.ErrNotInProgress)

	// A lease started by Set lapses like a claimed one.
	now = h.clk.Now()
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 1, taskstore.InProgress, lease))
	if got := h.get(t, 1); got.State != taskstore.InProgress || !got.LeaseUntil.Equal(now.Add(lease)) {
		t.Fatalf("after Set InProgress: %s", format(got))
	}
	h.clk.Advance(lease + time.Second)
	if got := h.get(t, 1); got.State != taskstore.NotStarted {
		t.Fatalf("Set lease did not lapse: %s", format(got))
	}
	h.claimID(t, 1)

	// Setting the state it already has is fine.
	noErr(t, "Set Finished", h.s.Set(h.ctx, 1, taskstore.Finished, 0))
	noErr(t, "Set Finished again", h.s.Set(h.ctx, 1, taskstore.Finished, 0))
	if got := h.get(t, 1); got.State != taskstore.Finished {
		t.Fatalf("after Set Finished twice: %s", format(got))
	}
}

func testSetErrors(t *testing.T, h *harness) {
	h.create(t, false)
	for _, st := range []taskstore.State{-1, 3, 100} {
		wantErr(t, fmt.Sprintf("Set invalid state %d", int(st)), h.s.Set(h.ctx, 0, st, lease), taskstore.ErrInvalidState)
	}
	if got := h.get(t, 0); got.State != taskstore.NotStarted {
		t.Fatalf("invalid Set changed the task: %s", format(got))
	}
	for _, st := range []taskstore.State{taskstore.NotStarted, taskstore.InProgress, taskstore.Finished} {
		wantErr(t, "Set unknown id to "+st.String(), h.s.Set(h.ctx, 1, st, lease), taskstore.ErrNotFound)
	}
	if _, err := h.s.Get(h.ctx, 1); !errors.Is(err, taskstore.ErrNotFound) {
		t.Fatalf("Set of unknown id created it: Get error %v", err)
	}
}

func testList(t *testing.T, h *harness) {
	if got := h.list(t); len(got) != 0 {
		t.Fatalf("List of empty store yielded %d tasks", len(got))
	}
	h.createN(t, 3)
	h.create(t, true)
	h.create(t, false)
	h.claimID(t, 0)
	h.claimID(t, 1)
	noErr(t, "Finish(1)", h.s.Finish(h.ctx, 1))

	got := h.list(t)
	want := []struct {
		state   taskstore.State
		pending bool
	}{
		{taskstore.InProgress, false},
		{taskstore.Finished, false},
		{taskstore.NotStarted, false},
		{taskstore.NotStarted, true},
		{taskstore.NotStarted, false},
	}
	if len(got) != len(want) {
		t.Fatalf("List yielded %d tasks, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].ID != int64(i) || got[i].State != w.state || got[i].Pending != w.pending {
			t.Fatalf("List[%d] = %s, want id %d %s pending=%v", i, format(got[i]), i, w.state, w.pending)
		}
		// List and Get agree field for field.
		checkTask(t, "List vs Get", got[i], h.get(t, int64(i)))
	}
}

func testListEarlyStop(t *testing.T, h *harness) {
	h.createN(t, 10)
	// Stopping early must not panic (yield called after false), and must release whatever the
	// iteration held: afterwards reads and writes still work, many times over.
	for round := range 20 {
		n := 0
		for task, err := range h.s.List(h.ctx) {
			noErr(t, "List", err)
			if task.ID != int64(n) {
				t.Fatalf("round %d: List yielded id %d at position %d", round, task.ID, n)
			}
			n++
			if n == 3 {
				break
			}
		}
		if n != 3 {
			t.Fatalf("round %d: consumed %d tasks, want 3", round, n)
		}
	}
	h.claimID(t, 0)
	h.create(t, false)
	if got := len(h.list(t)); got != 11 {
		t.Fatalf("full List after early stops yielded %d tasks, want 11", got)
	}
	// Store calls from inside the loop must not deadlock.
	for task, err := range h.s.List(h.ctx) {
		noErr(t, "List", err)
		if _, err := h.s.Get(h.ctx, task.ID); err != nil {
			t.Fatalf("Get inside List: %v", err)
		}
		if task.ID == 5 {
			noErr(t, "Set inside List", h.s.Set(h.ctx, task.ID, taskstore.Finished, 0))
		}
	}
}

func testListCanceledContext(t *testing.T, h *harness) {
	h.createN(t, 3)
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	var gotErr error
	n := 0
	for _, err := range h.s.List(ctx) {
		if err != nil {
			gotErr = err
			break
		}
		n++
	}
	if gotErr == nil {
		t.Fatalf("List with canceled context yielded %d tasks and no error", n)
	}
}

func testConcurrentCreate(t *testing.T, h *harness) {
	const workers, per = 8, 25
	ids := make(chan int64, workers*per)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range per {
				id, err := h.s.Create(h.ctx, false)
				if err != nil {
					t.Errorf("Create: %v", err)
					return
				}
				ids <- id
			}
		})
	}
	wg.Wait()
	close(ids)
	if t.Failed() {
		t.FailNow()
	}
	got := slices.Sorted(func(yield func(int64) bool) {
		for id := range ids {
			if !yield(id) {
				return
			}
		}
	})
	for i, id := range got {
		if id != int64(i) {
			t.Fatalf("concurrent Create ids sorted = %v..., want 0..%d each once", got[:min(len(got), i+1)], workers*per-1)
		}
	}
	if len(got) != workers*per {
		t.Fatalf("got %d ids, want %d", len(got), workers*per)
	}
}

func testConcurrentClaim(t *testing.T, h *harness) {
	const workers, tasks = 8, 200
	h.createN(t, tasks)
	claimed := make([][]int64, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				task, err := h.s.Claim(h.ctx, lease)
				if errors.Is(err, taskstore.ErrNoTask) {
					return
				}
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				if task.Attempts != 1 || task.State != taskstore.InProgress {
					t.Errorf("claimed %s", format(task))
				}
				claimed[w] = append(claimed[w], task.ID)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := make([]int, tasks)
	for w, ids := range claimed {
		// Each worker sees ids increasing: the queue is FIFO even under contention.
		if !slices.IsSorted(ids) {
			t.Errorf("worker %d claimed ids out of order: %v", w, ids)
		}
		for _, id := range ids {
			if id < 0 || id >= tasks {
				t.Fatalf("claimed unknown id %d", id)
			}
			seen[id]++
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("task %d claimed %d times, want once", id, n)
		}
	}
	for _, task := range h.list(t) {
		if task.State != taskstore.InProgress || task.Attempts != 1 {
			t.Fatalf("after concurrent claims: %s", format(task))
		}
	}
}
