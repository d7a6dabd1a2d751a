// Package taskstoretest is the contract suite every taskstore.Store implementation must pass, in the
// style of River's riverdrivertest: an implementation's test calls Run with a function that opens a
// fresh, empty store.
//
// Tokens are compared only with each other (0 before any claim, larger with every claim), never with
// literals, so a store may number them per task or from one global counter.
package taskstoretest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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
		{"MaxAttempts", testMaxAttempts},
		{"Op", testOp},
		{"GetUnknown", testGetUnknown},
		{"ClaimFIFO", testClaimFIFO},
		{"ClaimEmpty", testClaimEmpty},
		{"PendingAndActivate", testPendingAndActivate},
		{"TokensGrow", testTokensGrow},
		{"Finish", testFinish},
		{"FinishTokens", testFinishTokens},
		{"Extend", testExtend},
		{"FailTransient", testFailTransient},
		{"FailPermanent", testFailPermanent},
		{"FailAfterLapse", testFailAfterLapse},
		{"Release", testRelease},
		{"LeaseExpiry", testLeaseExpiry},
		{"LapseExhausted", testLapseExhausted},
		{"LapsedLeaseInIDOrder", testLapsedLeaseInIDOrder},
		{"ExpirePending", testExpirePending},
		{"Set", testSet},
		{"SetFailed", testSetFailed},
		{"SetErrors", testSetErrors},
		{"List", testList},
		{"ListEarlyStop", testListEarlyStop},
		{"ListCanceledContext", testListCanceledContext},
		{"Counts", testCounts},
		{"CountsPendingSetByHand", testCountsPendingSetByHand},
		{"ConcurrentCreate", testConcurrentCreate},
		{"ConcurrentClaim", testConcurrentClaim},
		{"ConcurrentFinishVsReclaim", testConcurrentFinishVsReclaim},
		{"Retry", testRetry},
		{"RetryWho", testRetryWho},
		{"RetryBackoff", testRetryBackoff},
		{"RetryCleared", testRetryCleared},
		{"CountsRetryAndPending", testCountsRetryAndPending},
		{"CreateOnce", testCreateOnce},
		{"CreateOncePending", testCreateOncePending},
		{"ConcurrentCreateOnce", testConcurrentCreateOnce},
		{"Abandon", testAbandon},
		{"CanceledContext", testCanceledContext},
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

// past is how far to advance the clock to make a lease of length lease lapse.
const past = lease + time.Second

// defMax is the attempt limit of a task created without one.
const defMax = taskstore.DefaultMaxAttempts

// start is the fake clock's initial time: whole seconds, far from any zero value.
var start = time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

// lapsed is the Error of a task whose lease lapsed on attempt n of max.
func lapsed(n, max int) string { return fmt.Sprintf("lease lapsed on attempt %d of %d", n, max) }

// expired is the Error of a pending task that ExpirePending failed.
const expired = "upload never completed"

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
	return h.createWith(t, taskstore.CreateParams{Pending: pending})
}

func (h *harness) createWith(t *testing.T, p taskstore.CreateParams) int64 {
	t.Helper()
	id, err := h.s.Create(h.ctx, p)
	if err != nil {
		t.Fatalf("Create(%+v): %v", p, err)
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

// claimID claims, checks the claimed task's id, and checks that the claim result agrees with Get and
// issued a token larger than the task had.
func (h *harness) claimID(t *testing.T, want int64) taskstore.Task {
	t.Helper()
	before, err := h.s.Get(h.ctx, want)
	if err != nil {
		t.Fatalf("Get(%d) before Claim: %v", want, err)
	}
	task := h.claim(t)
	if task.ID != want {
		t.Fatalf("Claim got task %d, want %d", task.ID, want)
	}
	if task.Token <= before.Token {
		t.Fatalf("Claim of task %d issued token %d, not above its previous %d", want, task.Token, before.Token)
	}
	checkTask(t, "Get after Claim", h.get(t, want), task)
	return task
}

// noTask checks that nothing is claimable.
func (h *harness) noTask(t *testing.T, what string) {
	t.Helper()
	task, err := h.s.Claim(h.ctx, lease)
	if !errors.Is(err, taskstore.ErrNoTask) {
		t.Fatalf("%s: Claim = %s, %v; want ErrNoTask", what, format(task), err)
	}
}

func (h *harness) fail(t *testing.T, id, token int64, reason string, permanent bool) taskstore.Task {
	t.Helper()
	task, err := h.s.Fail(h.ctx, id, token, reason, permanent)
	if err != nil {
		t.Fatalf("Fail(%d, token %d, %q, permanent=%v): %v", id, token, reason, permanent, err)
	}
	checkTask(t, "Get after Fail vs Fail's result", h.get(t, id), task)
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
	if !sameTask(got, want) {
		t.Fatalf("%s:\n got  %s\n want %s", what, format(got), format(want))
	}
}

func sameTask(got, want taskstore.Task) bool {
	return got.ID == want.ID && got.State == want.State && got.Pending == want.Pending &&
		got.Attempts == want.Attempts && got.MaxAttempts == want.MaxAttempts && got.Token == want.Token &&
		got.Error == want.Error && got.Op == want.Op && got.CreatedAt.Equal(want.CreatedAt) &&
		got.StartedAt.Equal(want.StartedAt) && got.FinishedAt.Equal(want.FinishedAt) &&
		got.LeaseUntil.Equal(want.LeaseUntil) && got.RetryAt.Equal(want.RetryAt) && got.Retries == want.Retries
}

// checkTasks compares two task lists with checkTask.
func checkTasks(t *testing.T, what string, got, want []taskstore.Task) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tasks, want %d", what, len(got), len(want))
	}
	for i := range want {
		checkTask(t, fmt.Sprintf("%s: task %d", what, i), got[i], want[i])
	}
}

func format(x taskstore.Task) string {
	tf := func(tm time.Time) string {
		if tm.IsZero() {
			return "zero"
		}
		return tm.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("{ID:%d State:%v Pending:%v Attempts:%d/%d Token:%d Op:%q Error:%q Created:%s Started:%s Finished:%s LeaseUntil:%s RetryAt:%s Retries:%d}",
		x.ID, x.State, x.Pending, x.Attempts, x.MaxAttempts, x.Token, x.Op, x.Error,
		tf(x.CreatedAt), tf(x.StartedAt), tf(x.FinishedAt), tf(x.LeaseUntil), tf(x.RetryAt), x.Retries)
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
		want = append(want, taskstore.Task{
			ID: id, State: taskstore.NotStarted, Pending: pending, MaxAttempts: defMax, CreatedAt: now,
		})
	}
	h.clk.Advance(time.Hour) // CreatedAt must be the creation time, not the read time
	for _, w := range want {
		checkTask(t, "Get after Create", h.get(t, w.ID), w)
	}
}

// testOp checks that a task's operation chain is kept verbatim through every read and write path.
func testOp(t *testing.T, h *harness) {
	ops := []string{"", "swap", "resize:800x600,grayscale,sharpen:1.5", strings.Repeat("x", 2000), "ünïcode,'quote\"--"}
	for i, op := range ops {
		id := h.createWith(t, taskstore.CreateParams{Op: op, Pending: i%2 == 1})
		if got := h.get(t, id).Op; got != op {
			t.Fatalf("Get(%d).Op = %q, want %q", id, got, op)
		}
		if i%2 == 1 {
			noErr(t, "Activate", h.s.Activate(h.ctx, id))
		}
	}
	for i := range ops {
		task, err := h.s.Claim(h.ctx, lease)
		noErr(t, "Claim", err)
		if task.ID != int64(i) || task.Op != ops[i] {
			t.Fatalf("Claim = %s, want id %d with op %q", format(task), i, ops[i])
		}
		if i == 0 {
			task, err = h.s.Fail(h.ctx, task.ID, task.Token, "boom", true)
			noErr(t, "Fail", err)
			if task.Op != ops[0] {
				t.Fatalf("Fail returned op %q, want %q", task.Op, ops[0])
			}
		}
	}
	for task, err := range h.s.List(h.ctx) {
		noErr(t, "List", err)
		if task.Op != ops[task.ID] {
			t.Fatalf("List: task %d op %q, want %q", task.ID, task.Op, ops[task.ID])
		}
	}
}

// testMaxAttempts checks the attempt limit, defaulted and custom, and that a task fails exactly when
// it has used it up.
func testMaxAttempts(t *testing.T, h *harness) {
	if defMax != 3 {
		t.Fatalf("DefaultMaxAttempts = %d, want 3", defMax)
	}
	limits := []struct {
		p    taskstore.CreateParams
		want int
	}{
		{taskstore.CreateParams{}, defMax},
		{taskstore.CreateParams{MaxAttempts: 5}, 5},
		{taskstore.CreateParams{MaxAttempts: -2}, defMax},
		{taskstore.CreateParams{MaxAttempts: 1}, 1},
		{taskstore.CreateParams{Pending: true, MaxAttempts: 2}, 2},
	}
	for i, l := range limits {
		id := h.createWith(t, l.p)
		if id != int64(i) {
			t.Fatalf("Create #%d returned id %d", i, id)
		}
		checkTask(t, fmt.Sprintf("Get after Create(%+v)", l.p), h.get(t, id), taskstore.Task{
			ID: id, State: taskstore.NotStarted, Pending: l.p.Pending, MaxAttempts: l.want, CreatedAt: start,
		})
	}
	for i, task := range h.list(t) {
		if task.MaxAttempts != limits[i].want {
			t.Fatalf("List[%d] = %s, want MaxAttempts %d", i, format(task), limits[i].want)
		}
	}

	// Let every active task's lease lapse round after round; each fails after exactly its limit.
	for round := 1; round <= 6; round++ {
		for {
			task, err := h.s.Claim(h.ctx, lease)
			if errors.Is(err, taskstore.ErrNoTask) {
				break
			}
			noErr(t, "Claim", err)
			if task.Attempts != round || task.Attempts > limits[task.ID].want {
				t.Fatalf("round %d claimed %s", round, format(task))
			}
		}
		h.clk.Advance(past)
	}
	for i, task := range h.list(t) {
		l := limits[i]
		if l.p.Pending {
			if task.State != taskstore.NotStarted || task.Attempts != 0 {
				t.Fatalf("pending task %d: %s", i, format(task))
			}
			continue
		}
		if task.State != taskstore.Failed || task.Attempts != l.want || task.Error != lapsed(l.want, l.want) {
			t.Fatalf("task %d with limit %d after 6 lapses: %s", i, l.want, format(task))
		}
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
	for i := range int64(3) {
		now := h.clk.Advance(time.Second)
		got := h.claimID(t, i)
		if got.Token <= 0 {
			t.Fatalf("first claim issued token %d", got.Token)
		}
		checkTask(t, "Claim result", got, taskstore.Task{
			ID: i, State: taskstore.InProgress, Attempts: 1, MaxAttempts: defMax, Token: got.Token,
			CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease),
		})
	}
	h.noTask(t, "everything in progress")

	// Tasks created after claims continue the queue.
	h.createN(t, 2)
	h.claimID(t, 3)
	h.claimID(t, 4)
}

func testClaimEmpty(t *testing.T, h *harness) {
	h.noTask(t, "empty store")

	h.create(t, false)
	c := h.claimID(t, 0)
	noErr(t, "Finish(0)", h.s.Finish(h.ctx, 0, c.Token))
	h.clk.Advance(10 * lease) // a finished task never comes back, lease or not
	h.noTask(t, "only finished tasks")
}

func testPendingAndActivate(t *testing.T, h *harness) {
	if id := h.create(t, true); id != 0 {
		t.Fatalf("pending task got id %d, want 0", id)
	}
	h.create(t, false)
	h.create(t, true)

	h.claimID(t, 1) // 0 is older but pending
	h.noTask(t, "only pending tasks left")
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
	h.noTask(t, "task 0 still pending")

	noErr(t, "Activate(0)", h.s.Activate(h.ctx, 0))
	got := h.claimID(t, 0)
	if got.Pending || got.Attempts != 1 {
		t.Fatalf("claimed formerly pending task: %s", format(got))
	}
}

// testTokensGrow checks that every claim, by Claim or by Set(InProgress), issues a larger token, and
// that nothing else changes it.
func testTokensGrow(t *testing.T, h *harness) {
	h.createN(t, 2)
	if tok := h.get(t, 0).Token; tok != 0 {
		t.Fatalf("never-claimed task has token %d, want 0", tok)
	}
	var tokens []int64
	same := func(what string) {
		t.Helper()
		if got := h.get(t, 0).Token; got != tokens[len(tokens)-1] {
			t.Fatalf("%s changed the token from %d to %d", what, tokens[len(tokens)-1], got)
		}
	}
	grew := func(what string) {
		t.Helper()
		got := h.get(t, 0).Token
		if len(tokens) > 0 && got <= tokens[len(tokens)-1] {
			t.Fatalf("%s: token %d, not above the previous %d", what, got, tokens[len(tokens)-1])
		}
		tokens = append(tokens, got)
	}

	h.claimID(t, 0) // claimID checks the growth itself, and that Get agrees with Claim
	grew("Claim")
	h.fail(t, 0, tokens[len(tokens)-1], "transient", false)
	same("Fail")
	h.claimID(t, 0)
	grew("Claim after Fail")
	h.clk.Advance(past)
	same("a lapse")
	h.claimID(t, 0)
	grew("Claim after a lapse")
	noErr(t, "Release", h.s.Release(h.ctx, 0, tokens[len(tokens)-1]))
	same("Release")
	h.claimID(t, 0)
	grew("Claim after Release")
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, taskstore.InProgress, lease))
	grew("Set InProgress on an in-progress task")
	noErr(t, "Set NotStarted", h.s.Set(h.ctx, 0, taskstore.NotStarted, 0))
	same("Set NotStarted")
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, taskstore.InProgress, lease))
	grew("Set InProgress on a not-started task")
	noErr(t, "Finish", h.s.Finish(h.ctx, 0, tokens[len(tokens)-1]))
	same("Finish")
	noErr(t, "Set Failed", h.s.Set(h.ctx, 0, taskstore.Failed, 0))
	same("Set Failed")
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, taskstore.InProgress, lease))
	grew("Set InProgress on a failed task")

	// Only the most recent token is current.
	for _, old := range tokens[:len(tokens)-1] {
		wantErr(t, fmt.Sprintf("Finish with old token %d", old), h.s.Finish(h.ctx, 0, old), taskstore.ErrStaleToken)
	}
	noErr(t, "Finish with the newest token", h.s.Finish(h.ctx, 0, tokens[len(tokens)-1]))

	// Task 1 was never touched.
	if got := h.get(t, 1); got.Token != 0 || got.Attempts != 0 {
		t.Fatalf("claims of task 0 changed task 1: %s", format(got))
	}
}

func testFinish(t *testing.T, h *harness) {
	h.createN(t, 2)
	wantErr(t, "Finish of not-started task", h.s.Finish(h.ctx, 0, 0), taskstore.ErrNotInProgress)
	wantErr(t, "Finish of unknown task", h.s.Finish(h.ctx, 42, 0), taskstore.ErrNotFound)
	wantErr(t, "Finish of unknown task with a token", h.s.Finish(h.ctx, 42, 1), taskstore.ErrNotFound)
	wantErr(t, "Finish of negative id", h.s.Finish(h.ctx, -1, 0), taskstore.ErrNotFound)

	claimedAt := h.clk.Advance(time.Second)
	c := h.claimID(t, 0)
	finishedAt := h.clk.Advance(lease / 2)
	noErr(t, "Finish(0)", h.s.Finish(h.ctx, 0, c.Token))
	checkTask(t, "Get after Finish", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		CreatedAt: start, StartedAt: claimedAt, FinishedAt: finishedAt,
	})
	wantErr(t, "Finish of finished task without a token", h.s.Finish(h.ctx, 0, 0), taskstore.ErrNotInProgress)

	h.claimID(t, 1) // finished task 0 is not handed out again
	h.noTask(t, "all claimed")
	h.clk.Advance(lease / 2)
	noErr(t, "Finish(1) by a reference worker (token 0)", h.s.Finish(h.ctx, 1, 0))
	if got := h.get(t, 1); got.State != taskstore.Finished {
		t.Fatalf("Finish with token 0 did not finish: %s", format(got))
	}
	if got := h.get(t, 0); got.State != taskstore.Finished || !got.FinishedAt.Equal(finishedAt) {
		t.Fatalf("finishing task 1 changed task 0: %s", format(got))
	}
}

// testFinishTokens walks Finish's token rules.
func testFinishTokens(t *testing.T, h *harness) {
	// Task 0: the plain cases.
	h.createN(t, 1)
	wantErr(t, "Finish of a never-claimed task with a token", h.s.Finish(h.ctx, 0, 1), taskstore.ErrStaleToken)
	c := h.claimID(t, 0)
	wantErr(t, "Finish with a token that was never issued", h.s.Finish(h.ctx, 0, c.Token+1000), taskstore.ErrStaleToken)
	if got := h.get(t, 0); got.State != taskstore.InProgress {
		t.Fatalf("refused Finish changed the task: %s", format(got))
	}
	finishedAt := h.clk.Advance(time.Second)
	noErr(t, "Finish with the current token", h.s.Finish(h.ctx, 0, c.Token))
	want := taskstore.Task{
		ID: 0, State: taskstore.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		CreatedAt: start, StartedAt: c.StartedAt, FinishedAt: finishedAt,
	}
	checkTask(t, "after Finish", h.get(t, 0), want)
	h.clk.Advance(time.Second)
	noErr(t, "Finish again with the same token", h.s.Finish(h.ctx, 0, c.Token))
	checkTask(t, "after a repeated Finish (FinishedAt must not move)", h.get(t, 0), want)
	wantErr(t, "Finish of a finished task with token 0", h.s.Finish(h.ctx, 0, 0), taskstore.ErrNotInProgress)
	wantErr(t, "Finish of a finished task with another token", h.s.Finish(h.ctx, 0, c.Token+1000), taskstore.ErrStaleToken)

	// Task 1: the lease lapsed, nobody claimed it since: the holder's result still counts.
	created := h.clk.Now()
	h.createN(t, 1)
	c = h.claimID(t, 1)
	h.clk.Advance(past)
	if got := h.get(t, 1); got.State != taskstore.NotStarted {
		t.Fatalf("lapsed task reads %s", format(got))
	}
	wantErr(t, "Finish of a lapsed task with token 0", h.s.Finish(h.ctx, 1, 0), taskstore.ErrNotInProgress)
	finishedAt = h.clk.Advance(time.Second)
	noErr(t, "Finish of a lapsed, unclaimed task with its token", h.s.Finish(h.ctx, 1, c.Token))
	checkTask(t, "after Finish past the lease", h.get(t, 1), taskstore.Task{
		ID: 1, State: taskstore.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		CreatedAt: created, StartedAt: c.StartedAt, FinishedAt: finishedAt,
	})
	h.noTask(t, "the late-finished task must not be handed out")

	// Task 3: lapsed and already moved back to the queue by another Claim's sweep (which took the
	// older task 2, pending until then), then finished by the holder.
	created = h.clk.Now()
	h.create(t, true) // 2
	h.createN(t, 1)   // 3
	c = h.claimID(t, 3)
	h.clk.Advance(past)
	noErr(t, "Activate(2)", h.s.Activate(h.ctx, 2))
	c2 := h.claimID(t, 2) // sweeps task 3 back to not started
	if got := h.get(t, 3); got.State != taskstore.NotStarted || got.Token != c.Token {
		t.Fatalf("swept task 3: %s", format(got))
	}
	finishedAt = h.clk.Advance(time.Second)
	noErr(t, "Finish of a lapsed, swept, unclaimed task with its token", h.s.Finish(h.ctx, 3, c.Token))
	checkTask(t, "after Finish of a swept task", h.get(t, 3), taskstore.Task{
		ID: 3, State: taskstore.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		CreatedAt: created, StartedAt: c.StartedAt, FinishedAt: finishedAt,
	})
	h.noTask(t, "the swept, finished task must not be handed out")
	noErr(t, "Finish(2)", h.s.Finish(h.ctx, 2, c2.Token))

	// Task 4: lapsed and claimed again: the first holder is stale, whatever happens next.
	h.createN(t, 1)
	c1 := h.claimID(t, 4)
	h.clk.Advance(past)
	c2 = h.claimID(t, 4)
	wantErr(t, "Finish by the superseded holder", h.s.Finish(h.ctx, 4, c1.Token), taskstore.ErrStaleToken)
	if got := h.get(t, 4); got.State != taskstore.InProgress || got.Token != c2.Token {
		t.Fatalf("stale Finish changed the task: %s", format(got))
	}
	noErr(t, "Finish by the current holder", h.s.Finish(h.ctx, 4, c2.Token))
	wantErr(t, "Finish by the superseded holder after the current one", h.s.Finish(h.ctx, 4, c1.Token), taskstore.ErrStaleToken)
}

func testExtend(t *testing.T, h *harness) {
	h.createN(t, 2)
	c := h.claimID(t, 0) // lease until start+lease

	now := h.clk.Advance(lease - time.Second)
	got, err := h.s.Extend(h.ctx, 0, c.Token, 2*lease)
	noErr(t, "Extend", err)
	want := c
	want.LeaseUntil = now.Add(2 * lease)
	checkTask(t, "Extend result", got, want)
	checkTask(t, "Get after Extend", h.get(t, 0), want)

	h.clk.Advance(lease) // past the original lease, within the extended one
	checkTask(t, "Get past the original lease", h.get(t, 0), want)
	h.claimID(t, 1) // and the sweep leaves task 0 alone
	h.noTask(t, "extended lease is live")

	now = h.clk.Now()
	got, err = h.s.Extend(h.ctx, 0, 0, lease/2)
	noErr(t, "Extend with token 0", err)
	want.LeaseUntil = now.Add(lease / 2) // renewed from the clock, even though that is sooner
	checkTask(t, "Extend with token 0", got, want)

	_, err = h.s.Extend(h.ctx, 0, c.Token+1000, lease)
	wantErr(t, "Extend with a wrong token", err, taskstore.ErrStaleToken)
	checkTask(t, "after refused Extend", h.get(t, 0), want)
	_, err = h.s.Extend(h.ctx, 9, 0, lease)
	wantErr(t, "Extend of unknown id", err, taskstore.ErrNotFound)
	_, err = h.s.Extend(h.ctx, 9, c.Token, lease)
	wantErr(t, "Extend of unknown id with a token", err, taskstore.ErrNotFound)
	h.createN(t, 1) // task 2, never claimed
	_, err = h.s.Extend(h.ctx, 2, 0, lease)
	wantErr(t, "Extend of a not-started task", err, taskstore.ErrNotInProgress)
	_, err = h.s.Extend(h.ctx, 2, c.Token, lease)
	wantErr(t, "Extend of a never-claimed task with a token", err, taskstore.ErrStaleToken)

	// A lapsed lease cannot be revived.
	h.clk.Advance(past)
	_, err = h.s.Extend(h.ctx, 0, c.Token, lease)
	wantErr(t, "Extend of a lapsed lease", err, taskstore.ErrNotInProgress)
	_, err = h.s.Extend(h.ctx, 0, 0, lease)
	wantErr(t, "Extend of a lapsed lease with token 0", err, taskstore.ErrNotInProgress)
	if got := h.get(t, 0); got.State != taskstore.NotStarted || !got.LeaseUntil.IsZero() {
		t.Fatalf("refused Extend revived the task: %s", format(got))
	}

	// After a new claim, the old holder is stale and the new one can extend.
	c2 := h.claimID(t, 0)
	_, err = h.s.Extend(h.ctx, 0, c.Token, lease)
	wantErr(t, "Extend by the superseded holder", err, taskstore.ErrStaleToken)
	now = h.clk.Advance(time.Second)
	got, err = h.s.Extend(h.ctx, 0, c2.Token, lease)
	noErr(t, "Extend by the new holder", err)
	if !got.LeaseUntil.Equal(now.Add(lease)) || got.Token != c2.Token || got.Attempts != 2 {
		t.Fatalf("Extend by the new holder: %s", format(got))
	}
	noErr(t, "Finish", h.s.Finish(h.ctx, 0, c2.Token))
	_, err = h.s.Extend(h.ctx, 0, c2.Token, lease)
	wantErr(t, "Extend of a finished task", err, taskstore.ErrNotInProgress)
}

func testFailTransient(t *testing.T, h *harness) {
	h.createN(t, 1)
	c1 := h.claimID(t, 0)
	h.clk.Advance(time.Second)
	got := h.fail(t, 0, c1.Token, "decode: unexpected EOF", false)
	checkTask(t, "after a transient Fail", got, taskstore.Task{
		ID: 0, State: taskstore.NotStarted, Attempts: 1, MaxAttempts: defMax, Token: c1.Token,
		Error: "decode: unexpected EOF", CreatedAt: start, StartedAt: c1.StartedAt,
	})
	wantErr(t, "Finish after the holder failed the attempt", h.s.Finish(h.ctx, 0, c1.Token), taskstore.ErrNotInProgress)
	_, err := h.s.Fail(h.ctx, 0, c1.Token, "again", false)
	wantErr(t, "Fail twice", err, taskstore.ErrNotInProgress)

	// The retry keeps the last error while it runs.
	c2 := h.claimID(t, 0)
	if c2.Attempts != 2 || c2.Error != "decode: unexpected EOF" {
		t.Fatalf("retry claim: %s", format(c2))
	}
	_, err = h.s.Fail(h.ctx, 0, c1.Token, "late", true)
	wantErr(t, "Fail by the superseded holder", err, taskstore.ErrStaleToken)
	if got := h.get(t, 0); got.State != taskstore.InProgress || got.Error != "decode: unexpected EOF" {
		t.Fatalf("stale Fail changed the task: %s", format(got))
	}
	if got := h.fail(t, 0, c2.Token, "second", false); got.State != taskstore.NotStarted || got.Attempts != 2 ||
		got.Error != "second" {
		t.Fatalf("second transient Fail: %s", format(got))
	}

	// Out of attempts: the third transient failure is final.
	c3 := h.claimID(t, 0)
	failedAt := h.clk.Advance(time.Second)
	want := taskstore.Task{
		ID: 0, State: taskstore.Failed, Attempts: 3, MaxAttempts: defMax, Token: c3.Token,
		Error: "third", CreatedAt: start, StartedAt: c3.StartedAt, FinishedAt: failedAt,
	}
	checkTask(t, "after the last attempt failed", h.fail(t, 0, c3.Token, "third", false), want)
	h.noTask(t, "the only task failed")
	h.clk.Advance(10 * lease)
	checkTask(t, "failed task later", h.get(t, 0), want)
	wantErr(t, "Finish of a failed task", h.s.Finish(h.ctx, 0, c3.Token), taskstore.ErrNotInProgress)
	_, err = h.s.Fail(h.ctx, 0, c3.Token, "fourth", false)
	wantErr(t, "Fail of a failed task", err, taskstore.ErrNotInProgress)
	checkTask(t, "after refused calls", h.get(t, 0), want)

	_, err = h.s.Fail(h.ctx, 7, 0, "x", false)
	wantErr(t, "Fail of unknown id", err, taskstore.ErrNotFound)
	h.createN(t, 1)
	_, err = h.s.Fail(h.ctx, 1, 0, "x", false)
	wantErr(t, "Fail of a not-started task", err, taskstore.ErrNotInProgress)
}

func testFailPermanent(t *testing.T, h *harness) {
	h.createN(t, 2)
	c := h.claimID(t, 0)
	failedAt := h.clk.Advance(time.Second)
	checkTask(t, "after a permanent Fail", h.fail(t, 0, c.Token, "not an image", true), taskstore.Task{
		ID: 0, State: taskstore.Failed, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		Error: "not an image", CreatedAt: start, StartedAt: c.StartedAt, FinishedAt: failedAt,
	})
	h.claimID(t, 1) // task 0 is not handed out again
	h.noTask(t, "task 0 failed for good")

	// A reference worker (token 0) can fail a live lease too.
	if got := h.fail(t, 1, 0, "flaky", false); got.State != taskstore.NotStarted || got.Attempts != 1 {
		t.Fatalf("transient Fail with token 0: %s", format(got))
	}
	h.claimID(t, 1)
	if got := h.fail(t, 1, 0, "broken", true); got.State != taskstore.Failed || got.Attempts != 2 || got.Error != "broken" {
		t.Fatalf("permanent Fail with token 0: %s", format(got))
	}
	h.noTask(t, "both failed")
}

// testFailAfterLapse: like Finish, Fail with the current token reports the outcome of the latest claim
// even after its lease lapsed, as long as nobody claimed the task since.
func testFailAfterLapse(t *testing.T, h *harness) {
	h.createN(t, 1)
	c := h.claimID(t, 0)
	h.clk.Advance(past)
	_, err := h.s.Fail(h.ctx, 0, 0, "x", false)
	wantErr(t, "Fail of a lapsed lease with token 0", err, taskstore.ErrNotInProgress)
	got := h.fail(t, 0, c.Token, "upstream timeout", false)
	checkTask(t, "transient Fail after the lease lapsed", got, taskstore.Task{
		ID: 0, State: taskstore.NotStarted, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		Error: "upstream timeout", CreatedAt: start, StartedAt: c.StartedAt,
	})

	c2 := h.claimID(t, 0)
	h.clk.Advance(past)
	failedAt := h.clk.Advance(time.Second)
	checkTask(t, "permanent Fail after the lease lapsed", h.fail(t, 0, c2.Token, "corrupt", true), taskstore.Task{
		ID: 0, State: taskstore.Failed, Attempts: 2, MaxAttempts: defMax, Token: c2.Token,
		Error: "corrupt", CreatedAt: start, StartedAt: c2.StartedAt, FinishedAt: failedAt,
	})
	h.noTask(t, "failed for good")

	// Claimed again after the lapse: the old holder is stale.
	h.createN(t, 1)
	c = h.claimID(t, 1)
	h.clk.Advance(past)
	c2 = h.claimID(t, 1)
	_, err = h.s.Fail(h.ctx, 1, c.Token, "late", true)
	wantErr(t, "Fail by the superseded holder", err, taskstore.ErrStaleToken)
	if got := h.get(t, 1); got.State != taskstore.InProgress || got.Token != c2.Token || got.Error != lapsed(1, defMax) {
		t.Fatalf("stale Fail changed the task: %s", format(got))
	}
}

func testRelease(t *testing.T, h *harness) {
	h.createWith(t, taskstore.CreateParams{MaxAttempts: 1}) // 0
	h.createN(t, 1)                                         // 1

	c := h.claimID(t, 0)
	wantErr(t, "Release with a wrong token", h.s.Release(h.ctx, 0, c.Token+1000), taskstore.ErrStaleToken)
	h.clk.Advance(time.Second)
	noErr(t, "Release", h.s.Release(h.ctx, 0, c.Token))
	checkTask(t, "after Release", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.NotStarted, Attempts: 0, MaxAttempts: 1, Token: c.Token,
		CreatedAt: start, StartedAt: c.StartedAt,
	})
	wantErr(t, "Release twice", h.s.Release(h.ctx, 0, c.Token), taskstore.ErrNotInProgress)
	wantErr(t, "Finish after Release", h.s.Finish(h.ctx, 0, c.Token), taskstore.ErrNotInProgress)

	// Claimable at once, and the released attempt did not count: with a limit of 1 it is still the
	// first attempt.
	c2 := h.claimID(t, 0)
	if c2.Attempts != 1 {
		t.Fatalf("claim after Release: %s", format(c2))
	}
	wantErr(t, "Release by the superseded holder", h.s.Release(h.ctx, 0, c.Token), taskstore.ErrStaleToken)
	noErr(t, "Release with token 0", h.s.Release(h.ctx, 0, 0))
	c3 := h.claimID(t, 0)
	if c3.Attempts != 1 {
		t.Fatalf("claim after the second Release: %s", format(c3))
	}

	// A lapsed lease cannot be released; the lapse counts, so with a limit of 1 the task fails.
	h.clk.Advance(past)
	wantErr(t, "Release of a lapsed lease", h.s.Release(h.ctx, 0, c3.Token), taskstore.ErrNotInProgress)
	if got := h.get(t, 0); got.State != taskstore.Failed || got.Attempts != 1 || got.Error != lapsed(1, 1) {
		t.Fatalf("lapse after Releases: %s", format(got))
	}

	wantErr(t, "Release of unknown id", h.s.Release(h.ctx, 5, 0), taskstore.ErrNotFound)
	wantErr(t, "Release of a not-started task", h.s.Release(h.ctx, 1, 0), taskstore.ErrNotInProgress)
	c = h.claimID(t, 1)
	noErr(t, "Finish(1)", h.s.Finish(h.ctx, 1, c.Token))
	wantErr(t, "Release of a finished task", h.s.Release(h.ctx, 1, c.Token), taskstore.ErrNotInProgress)
	if got := h.get(t, 1); got.State != taskstore.Finished || got.Attempts != 1 {
		t.Fatalf("refused Release changed a finished task: %s", format(got))
	}
}

func testLeaseExpiry(t *testing.T, h *harness) {
	h.createN(t, 3)
	t0 := h.clk.Now()
	c := h.claimID(t, 0) // lease until t0+lease
	long, err := h.s.Claim(h.ctx, 10*lease)
	noErr(t, "Claim with long lease", err)
	if long.ID != 1 || !long.LeaseUntil.Equal(t0.Add(10*lease)) {
		t.Fatalf("long claim: %s", format(long))
	}

	h.clk.Advance(lease - time.Second)
	checkTask(t, "task 0 before its lease lapsed", h.get(t, 0), c)

	h.clk.Advance(2 * time.Second) // now past task 0's lease
	checkTask(t, "Get of lapsed task", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.NotStarted, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		Error: lapsed(1, defMax), CreatedAt: start, StartedAt: t0,
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
	wantErr(t, "Finish of lapsed task with token 0", h.s.Finish(h.ctx, 0, 0), taskstore.ErrNotInProgress)

	// The lapsed task is handed out again, before never-claimed task 2 because its id is lower, and
	// keeps the lapse as its last error while it runs.
	now := h.clk.Advance(time.Second)
	c2 := h.claimID(t, 0)
	checkTask(t, "reclaim of lapsed task", c2, taskstore.Task{
		ID: 0, State: taskstore.InProgress, Attempts: 2, MaxAttempts: defMax, Token: c2.Token,
		Error: lapsed(1, defMax), CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease),
	})
	h.claimID(t, 2)
	h.noTask(t, "all leases live")

	// The second holder can finish; the first one's claim is gone for good.
	wantErr(t, "Finish(0) by the first holder", h.s.Finish(h.ctx, 0, c.Token), taskstore.ErrStaleToken)
	noErr(t, "Finish(0) by the second holder", h.s.Finish(h.ctx, 0, c2.Token))
	if got := h.get(t, 0); got.State != taskstore.Finished || got.Error != "" {
		t.Fatalf("Finish must clear the last error: %s", format(got))
	}

	// Both remaining leases lapse; they come back in id order, each on its second attempt.
	h.clk.Advance(10 * lease)
	for _, id := range []int64{1, 2} {
		if got := h.claimID(t, id); got.Attempts != 2 || got.Error != lapsed(1, defMax) {
			t.Fatalf("reclaimed task %d: %s", id, format(got))
		}
	}
	h.noTask(t, "everything reclaimed")
}

// testLapseExhausted: a lapse on the last attempt fails the task, the same whether read through Get
// or List before Claim's sweep or after it.
func testLapseExhausted(t *testing.T, h *harness) {
	h.createWith(t, taskstore.CreateParams{MaxAttempts: 2}) // 0
	h.createN(t, 1)                                         // 1

	c1 := h.claimID(t, 0)
	h.clk.Advance(past)
	if got := h.get(t, 0); got.State != taskstore.NotStarted || got.Error != lapsed(1, 2) || !got.FinishedAt.IsZero() {
		t.Fatalf("first lapse of 2: %s", format(got))
	}
	c2 := h.claimID(t, 0)
	h.clk.Advance(past)
	want := taskstore.Task{
		ID: 0, State: taskstore.Failed, Attempts: 2, MaxAttempts: 2, Token: c2.Token,
		Error: lapsed(2, 2), CreatedAt: start, StartedAt: c2.StartedAt, FinishedAt: c2.LeaseUntil,
	}
	checkTask(t, "Get after the last lease lapsed", h.get(t, 0), want)
	checkTask(t, "List after the last lease lapsed", h.list(t)[0], want)

	h.claimID(t, 1) // Claim's sweep fails task 0 in the table, and does not hand it out
	checkTask(t, "Get after Claim's sweep", h.get(t, 0), want)
	checkTask(t, "List after Claim's sweep", h.list(t)[0], want)
	h.noTask(t, "task 0 failed")
	h.clk.Advance(10 * lease)
	checkTask(t, "Get later", h.get(t, 0), want)

	// The holder of the last claim delivers late: nobody claimed since, so the result counts.
	wantErr(t, "Finish by the first holder", h.s.Finish(h.ctx, 0, c1.Token), taskstore.ErrStaleToken)
	finishedAt := h.clk.Advance(time.Second)
	noErr(t, "Finish by the last holder", h.s.Finish(h.ctx, 0, c2.Token))
	checkTask(t, "after a late Finish", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.Finished, Attempts: 2, MaxAttempts: 2, Token: c2.Token,
		CreatedAt: start, StartedAt: c2.StartedAt, FinishedAt: finishedAt,
	})
}

// testLapsedLeaseInIDOrder checks that a lapsed task with a higher id waits behind older
// never-claimed tasks and jumps ahead of newer ones.
func testLapsedLeaseInIDOrder(t *testing.T, h *harness) {
	h.createN(t, 2)
	h.claimID(t, 0)
	h.claimID(t, 1)
	h.createN(t, 2)                                                            // tasks 2, 3
	noErr(t, "Set(0, NotStarted)", h.s.Set(h.ctx, 0, taskstore.NotStarted, 0)) // task 0 requeued by hand
	h.clk.Advance(past)                                                        // task 1 lapses
	h.claimID(t, 0)
	h.claimID(t, 1)
	h.claimID(t, 2)
	h.claimID(t, 3)
}

func testExpirePending(t *testing.T, h *harness) {
	h.create(t, true) // 0, created at start
	now := h.clk.Advance(10 * time.Minute)
	h.create(t, false) // 1, active
	h.create(t, true)  // 2, pending, created 10 minutes later
	h.create(t, true)  // 3, activated below
	noErr(t, "Activate(3)", h.s.Activate(h.ctx, 3))
	h.create(t, true) // 4, pending, set in progress by hand below
	noErr(t, "Set(4, InProgress)", h.s.Set(h.ctx, 4, taskstore.InProgress, 2*time.Hour))
	before := h.list(t)

	expiredAt := h.clk.Advance(15 * time.Minute) // task 0 is 25 minutes old, the others 15
	n, err := h.s.ExpirePending(h.ctx, 20*time.Minute)
	noErr(t, "ExpirePending", err)
	if n != 1 {
		t.Fatalf("ExpirePending expired %d tasks, want 1", n)
	}
	want0 := taskstore.Task{
		ID: 0, State: taskstore.Failed, Pending: true, MaxAttempts: defMax,
		Error: expired, CreatedAt: start, FinishedAt: expiredAt,
	}
	checkTask(t, "expired pending task", h.get(t, 0), want0)
	for _, id := range []int64{1, 2, 3, 4} {
		checkTask(t, "task not due for expiry", h.get(t, id), before[id])
	}
	wantErr(t, "Activate of an expired task", h.s.Activate(h.ctx, 0), taskstore.ErrNotPending)
	checkTask(t, "after refused Activate", h.get(t, 0), want0)
	if n, err := h.s.ExpirePending(h.ctx, 20*time.Minute); err != nil || n != 0 {
		t.Fatalf("ExpirePending again = %d, %v; want 0", n, err)
	}

	h.claimID(t, 1)
	h.claimID(t, 3)
	h.noTask(t, "task 0 expired, task 2 pending")

	// Much later: only the still-pending, still-waiting task 2 expires; active tasks, however old,
	// and the pending task someone is working on stay as they are.
	h.clk.Advance(time.Hour)
	before = h.list(t)
	expiredAt = h.clk.Advance(time.Second)
	n, err = h.s.ExpirePending(h.ctx, 20*time.Minute)
	noErr(t, "ExpirePending later", err)
	if n != 1 {
		t.Fatalf("later ExpirePending expired %d tasks, want 1", n)
	}
	checkTask(t, "expired pending task 2", h.get(t, 2), taskstore.Task{
		ID: 2, State: taskstore.Failed, Pending: true, MaxAttempts: defMax,
		Error: expired, CreatedAt: now, FinishedAt: expiredAt,
	})
	for _, id := range []int64{0, 1, 3, 4} {
		checkTask(t, "after the later ExpirePending", h.get(t, id), before[id])
	}
	wantErr(t, "Activate(2) after expiry", h.s.Activate(h.ctx, 2), taskstore.ErrNotPending)

	// A new pending task is safe until it is old enough, and can be activated in time.
	h.create(t, true) // 5
	h.clk.Advance(10 * time.Minute)
	if n, err := h.s.ExpirePending(h.ctx, 20*time.Minute); err != nil || n != 0 {
		t.Fatalf("ExpirePending of a young pending task = %d, %v; want 0", n, err)
	}
	noErr(t, "Activate(5)", h.s.Activate(h.ctx, 5))

	// Once the lease on pending task 4 lapses, nobody works on it any more, and it expires too.
	expiredAt = h.clk.Advance(time.Hour)
	want4 := before[4]
	n, err = h.s.ExpirePending(h.ctx, 20*time.Minute)
	noErr(t, "ExpirePending after task 4 lapsed", err)
	if n != 1 {
		t.Fatalf("ExpirePending after task 4 lapsed expired %d tasks, want 1", n)
	}
	want4.State, want4.Error, want4.FinishedAt, want4.LeaseUntil = taskstore.Failed, expired, expiredAt, time.Time{}
	checkTask(t, "expired lapsed pending task 4", h.get(t, 4), want4)
	wantErr(t, "Finish of expired task 4 by its holder", h.s.Finish(h.ctx, 4, want4.Token), taskstore.ErrNotInProgress)
	if got := h.get(t, 5); got.State != taskstore.NotStarted || got.Pending {
		t.Fatalf("activated task after ExpirePending: %s", format(got))
	}
}

func testSet(t *testing.T, h *harness) {
	h.createN(t, 2)

	// NotStarted -> InProgress is a claim: a lease from the clock, an attempt, a token.
	now := h.clk.Advance(time.Second)
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, taskstore.InProgress, 5*lease))
	got := h.get(t, 0)
	if got.Token <= 0 {
		t.Fatalf("Set InProgress issued token %d", got.Token)
	}
	want := taskstore.Task{
		ID: 0, State: taskstore.InProgress, Attempts: 1, MaxAttempts: defMax, Token: got.Token,
		CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(5 * lease),
	}
	checkTask(t, "after Set InProgress", got, want)
	h.claimID(t, 1) // task 0 is in progress, so not claimable
	h.noTask(t, "both in progress")
	noErr(t, "Finish with the token Set issued", h.s.Finish(h.ctx, 0, want.Token))

	// Finished -> NotStarted makes it claimable again and clears FinishedAt; the holder's claim is
	// over.
	noErr(t, "Set NotStarted", h.s.Set(h.ctx, 0, taskstore.NotStarted, 0))
	want.State, want.LeaseUntil = taskstore.NotStarted, time.Time{}
	checkTask(t, "after Set NotStarted", h.get(t, 0), want)
	wantErr(t, "Finish after Set NotStarted", h.s.Finish(h.ctx, 0, want.Token), taskstore.ErrNotInProgress)
	c := h.claimID(t, 0)

	// InProgress -> Finished sets FinishedAt and ends the lease.
	now = h.clk.Advance(time.Second)
	noErr(t, "Set Finished", h.s.Set(h.ctx, 0, taskstore.Finished, 0))
	want = c
	want.State, want.FinishedAt, want.LeaseUntil = taskstore.Finished, now, time.Time{}
	checkTask(t, "after Set Finished", h.get(t, 0), want)
	h.clk.Advance(10 * lease)
	checkTask(t, "finished task later", h.get(t, 0), want)
	wantErr(t, "Finish with token 0 after Set Finished", h.s.Finish(h.ctx, 0, 0), taskstore.ErrNotInProgress)
	// Finished while the holder's token was current: its Finish is a repeat.
	noErr(t, "Finish by the holder after Set Finished", h.s.Finish(h.ctx, 0, c.Token))
	checkTask(t, "after the holder's Finish", h.get(t, 0), want)

	// InProgress -> NotStarted releases the lease at once.
	c = h.claimID(t, 1) // task 1's lease had lapsed
	noErr(t, "Set NotStarted on in-progress", h.s.Set(h.ctx, 1, taskstore.NotStarted, 0))
	if got := h.get(t, 1); got.State != taskstore.NotStarted || !got.LeaseUntil.IsZero() || got.Attempts != 2 {
		t.Fatalf("after Set NotStarted on in-progress: %s", format(got))
	}
	wantErr(t, "Finish with token 0 after Set NotStarted", h.s.Finish(h.ctx, 1, 0), taskstore.ErrNotInProgress)
	wantErr(t, "Finish by the holder after Set NotStarted", h.s.Finish(h.ctx, 1, c.Token), taskstore.ErrNotInProgress)

	// A lease started by Set lapses like a claimed one, and counted as the third attempt.
	now = h.clk.Now()
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 1, taskstore.InProgress, lease))
	got = h.get(t, 1)
	if got.State != taskstore.InProgress || !got.LeaseUntil.Equal(now.Add(lease)) || got.Attempts != 3 {
		t.Fatalf("after Set InProgress: %s", format(got))
	}
	h.clk.Advance(past)
	if got := h.get(t, 1); got.State != taskstore.Failed || got.Error != lapsed(3, defMax) {
		t.Fatalf("Set lease lapsed on the last attempt: %s", format(got))
	}
	h.noTask(t, "task 1 failed")
	// Set NotStarted gives a failed task one more claim.
	noErr(t, "Set NotStarted on failed", h.s.Set(h.ctx, 1, taskstore.NotStarted, 0))
	if got := h.get(t, 1); got.State != taskstore.NotStarted || !got.FinishedAt.IsZero() {
		t.Fatalf("after Set NotStarted on failed: %s", format(got))
	}
	h.claimID(t, 1)

	// Setting the state it already has is fine.
	noErr(t, "Set Finished", h.s.Set(h.ctx, 1, taskstore.Finished, 0))
	noErr(t, "Set Finished again", h.s.Set(h.ctx, 1, taskstore.Finished, 0))
	if got := h.get(t, 1); got.State != taskstore.Finished || got.Error != "" {
		t.Fatalf("after Set Finished twice: %s", format(got))
	}
}

func testSetFailed(t *testing.T, h *harness) {
	h.createN(t, 3)

	// In progress -> Failed: final, the claim is over, and the task says why.
	c := h.claimID(t, 0)
	failedAt := h.clk.Advance(time.Second)
	noErr(t, "Set Failed", h.s.Set(h.ctx, 0, taskstore.Failed, 0))
	got := h.get(t, 0)
	if got.Error == "" {
		t.Fatalf("Set Failed left no reason: %s", format(got))
	}
	want := c
	want.State, want.FinishedAt, want.LeaseUntil, want.Error = taskstore.Failed, failedAt, time.Time{}, got.Error
	checkTask(t, "after Set Failed", got, want)
	h.claimID(t, 1) // task 0 is not claimable
	wantErr(t, "Finish by the holder after Set Failed", h.s.Finish(h.ctx, 0, c.Token), taskstore.ErrNotInProgress)
	wantErr(t, "Finish with token 0 after Set Failed", h.s.Finish(h.ctx, 0, 0), taskstore.ErrNotInProgress)
	h.clk.Advance(10 * lease)
	checkTask(t, "failed task later", h.get(t, 0), want)

	// A task that failed an attempt keeps that reason.
	c = h.claimID(t, 1) // its lease lapsed, so it is claimable again
	h.fail(t, 1, c.Token, "flaky", false)
	noErr(t, "Set Failed after a failed attempt", h.s.Set(h.ctx, 1, taskstore.Failed, 0))
	if got := h.get(t, 1); got.State != taskstore.Failed || got.Error != "flaky" {
		t.Fatalf("Set Failed after a failed attempt: %s", format(got))
	}

	// A never-claimed task can be failed too.
	failedAt = h.clk.Advance(time.Second)
	noErr(t, "Set Failed on not started", h.s.Set(h.ctx, 2, taskstore.Failed, 0))
	if got := h.get(t, 2); got.State != taskstore.Failed || got.Attempts != 0 || got.Token != 0 ||
		!got.FinishedAt.Equal(failedAt) || got.Error == "" {
		t.Fatalf("Set Failed on not started: %s", format(got))
	}
	h.noTask(t, "all failed")

	// Failed -> NotStarted retries it, keeping the last error until the retry ends.
	noErr(t, "Set NotStarted on failed", h.s.Set(h.ctx, 0, taskstore.NotStarted, 0))
	want.State, want.FinishedAt = taskstore.NotStarted, time.Time{}
	checkTask(t, "after Set NotStarted on failed", h.get(t, 0), want)
	if c := h.claimID(t, 0); c.Attempts != 2 || c.Error != want.Error {
		t.Fatalf("claim after Set NotStarted on failed: %s", format(c))
	}
}

func testSetErrors(t *testing.T, h *harness) {
	h.create(t, false)
	for _, st := range []taskstore.State{-1, 4, 100} {
		wantErr(t, fmt.Sprintf("Set invalid state %d", int(st)), h.s.Set(h.ctx, 0, st, lease), taskstore.ErrInvalidState)
	}
	checkTask(t, "after invalid Sets", h.get(t, 0), taskstore.Task{
		ID: 0, State: taskstore.NotStarted, MaxAttempts: defMax, CreatedAt: start,
	})
	for _, st := range []taskstore.State{taskstore.NotStarted, taskstore.InProgress, taskstore.Finished, taskstore.Failed} {
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
	h.createWith(t, taskstore.CreateParams{MaxAttempts: 1})
	h.claimID(t, 0)
	c := h.claimID(t, 1)
	noErr(t, "Finish(1)", h.s.Finish(h.ctx, 1, c.Token))
	noErr(t, "Set(4, Failed)", h.s.Set(h.ctx, 4, taskstore.Failed, 0))
	noErr(t, "Set(5, InProgress)", h.s.Set(h.ctx, 5, taskstore.InProgress, lease/2))
	h.clk.Advance(lease/2 + time.Second) // task 5 lapses on its only attempt

	got := h.list(t)
	want := []struct {
		state   taskstore.State
		pending bool
	}{
		{taskstore.InProgress, false},
		{taskstore.Finished, false},
		{taskstore.NotStarted, false},
		{taskstore.NotStarted, true},
		{taskstore.Failed, false},
		{taskstore.Failed, false},
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
	if got := h.get(t, 5); got.State != taskstore.Finished {
		t.Fatalf("Set inside List did not take: %s", format(got))
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
				id, err := h.s.Create(h.ctx, taskstore.CreateParams{})
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
	claimed := make([][]taskstore.Task, workers)
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
				if task.Attempts != 1 || task.State != taskstore.InProgress || task.Token <= 0 {
					t.Errorf("claimed %s", format(task))
				}
				claimed[w] = append(claimed[w], task)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := make([]int, tasks)
	tokens := make([]int64, tasks)
	for w, got := range claimed {
		// Each worker sees ids increasing: the queue is FIFO even under contention.
		if !slices.IsSortedFunc(got, func(a, b taskstore.Task) int { return cmp.Compare(a.ID, b.ID) }) {
			t.Errorf("worker %d claimed ids out of order", w)
		}
		for _, task := range got {
			if task.ID < 0 || task.ID >= tasks {
				t.Fatalf("claimed unknown id %d", task.ID)
			}
			seen[task.ID]++
			tokens[task.ID] = task.Token
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("task %d claimed %d times, want once", id, n)
		}
	}
	for _, task := range h.list(t) {
		if task.State != taskstore.InProgress || task.Attempts != 1 || task.Token != tokens[task.ID] {
			t.Fatalf("after concurrent claims: %s, claimed with token %d", format(task), tokens[task.ID])
		}
	}
}

// testConcurrentFinishVsReclaim races late Finishes by holders whose leases lapsed against workers
// claiming those tasks again: for every task exactly one side must win.
func testConcurrentFinishVsReclaim(t *testing.T, h *harness) {
	const tasks, claimers = 60, 4
	h.createN(t, tasks)
	old := make([]int64, tasks)
	for i := range int64(tasks) {
		old[i] = h.claimID(t, i).Token
	}
	h.clk.Advance(past)

	finishErr := make([]error, tasks)
	reclaimed := make([][]taskstore.Task, claimers)
	var wg sync.WaitGroup
	for i := range tasks {
		wg.Go(func() { finishErr[i] = h.s.Finish(h.ctx, int64(i), old[i]) })
	}
	for w := range claimers {
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
				reclaimed[w] = append(reclaimed[w], task)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	byID := make(map[int64]taskstore.Task)
	for _, got := range reclaimed {
		for _, task := range got {
			if _, dup := byID[task.ID]; dup {
				t.Fatalf("task %d reclaimed twice", task.ID)
			}
			byID[task.ID] = task
		}
	}
	finished := 0
	for i := range int64(tasks) {
		got := h.get(t, i)
		if re, ok := byID[i]; ok {
			if !errors.Is(finishErr[i], taskstore.ErrStaleToken) {
				t.Fatalf("task %d was reclaimed, yet the old holder's Finish returned %v", i, finishErr[i])
			}
			if re.Token <= old[i] || re.Attempts != 2 {
				t.Fatalf("reclaim of task %d: %s, old token %d", i, format(re), old[i])
			}
			checkTask(t, "reclaimed task", got, re)
			continue
		}
		if finishErr[i] != nil {
			t.Fatalf("task %d was not reclaimed, yet the old holder's Finish returned %v", i, finishErr[i])
		}
		if got.State != taskstore.Finished || got.Token != old[i] || got.Attempts != 1 {
			t.Fatalf("task %d finished by its old holder: %s", i, format(got))
		}
		finished++
	}
	t.Logf("%d of %d tasks finished late, %d reclaimed", finished, tasks, tasks-finished)
}

// countsOf tallies tasks by state, as Counts must report them.
func countsOf(tasks []taskstore.Task) taskstore.Counts {
	var c taskstore.Counts
	for _, task := range tasks {
		switch task.State {
		case taskstore.NotStarted:
			if task.Pending {
				c.Pending++
			} else {
				c.Queued++
			}
		case taskstore.InProgress:
			c.Processing++
		case taskstore.Finished:
			c.Finished++
		case taskstore.Failed:
			c.Failed++
		}
	}
	return c
}

// checkCounts checks that Counts is want and agrees with List.
func (h *harness) checkCounts(t *testing.T, what string, want taskstore.Counts) {
	t.Helper()
	got, err := h.s.Counts(h.ctx)
	noErr(t, what+": Counts", err)
	if got != want {
		t.Fatalf("%s: Counts = %+v, want %+v", what, got, want)
	}
	if listed := countsOf(h.list(t)); got != listed {
		t.Fatalf("%s: Counts = %+v, but List holds %+v", what, got, listed)
	}
	if got.Total() != int64(len(h.list(t))) {
		t.Fatalf("%s: Counts.Total() = %d, but List holds %d tasks", what, got.Total(), len(h.list(t)))
	}
	for s, n := range map[taskstore.State]int64{taskstore.NotStarted: got.Queued + got.Pending, taskstore.InProgress: got.Processing,
		taskstore.Finished: got.Finished, taskstore.Failed: got.Failed, taskstore.State(9): 0} {
		if got.Of(s) != n {
			t.Fatalf("%s: Counts.Of(%v) = %d, want %d", what, s, got.Of(s), n)
		}
	}
}

// testCounts checks Counts through every way a task changes state, lapsed leases (not yet settled by a
// Claim) included: they count as what the next Claim makes of them, as Get and List report them. Pending
// tasks count apart from the queue until activated.
func testCounts(t *testing.T, h *harness) {
	h.checkCounts(t, "empty store", taskstore.Counts{})

	h.createWith(t, taskstore.CreateParams{MaxAttempts: 1}) // 0: lapses on its only attempt: failed
	h.createWith(t, taskstore.CreateParams{MaxAttempts: 2}) // 1: lapses with an attempt left: queued
	h.createN(t, 2)                                         // 2: finished; 3: failed for good
	h.create(t, true)                                       // 4: pending
	h.create(t, false)                                      // 5: processing
	h.create(t, false)                                      // 6: never claimed
	h.checkCounts(t, "created", taskstore.Counts{Queued: 6, Pending: 1})

	h.claimID(t, 0)
	h.claimID(t, 1)
	h.clk.Advance(lease / 2)
	c2 := h.claimID(t, 2)
	c3 := h.claimID(t, 3)
	h.claimID(t, 5) // 4 is pending
	h.checkCounts(t, "claimed", taskstore.Counts{Queued: 1, Pending: 1, Processing: 5})
	noErr(t, "Finish(2)", h.s.Finish(h.ctx, 2, c2.Token))
	h.fail(t, 3, c3.Token, "cannot decode", true)
	h.checkCounts(t, "finished and failed", taskstore.Counts{Queued: 1, Pending: 1, Processing: 3, Finished: 1, Failed: 1})

	// Tasks 0 and 1 lapse; nothing has settled them in the store yet.
	h.clk.Advance(lease/2 + time.Second)
	h.checkCounts(t, "lapsed", taskstore.Counts{Queued: 2, Pending: 1, Processing: 1, Finished: 1, Failed: 2})

	// A claim settles them and takes task 1 again: the same tasks, one more processing.
	h.claimID(t, 1)
	h.checkCounts(t, "after a claim", taskstore.Counts{Queued: 1, Pending: 1, Processing: 2, Finished: 1, Failed: 2})

	noErr(t, "Activate(4)", h.s.Activate(h.ctx, 4))
	h.checkCounts(t, "activated", taskstore.Counts{Queued: 2, Processing: 2, Finished: 1, Failed: 2})

	// Everything in progress lapses: 1 on its last attempt (failed), 5 with attempts left (queued).
	h.clk.Advance(past)
	h.checkCounts(t, "all lapsed", taskstore.Counts{Queued: 3, Finished: 1, Failed: 3})
	if _, err := h.s.ExpirePending(h.ctx, 0); err != nil {
		t.Fatalf("ExpirePending: %v", err)
	}
	h.checkCounts(t, "after ExpirePending", taskstore.Counts{Queued: 3, Finished: 1, Failed: 3})
}

// testCountsPendingSetByHand checks Counts for tasks an operator moved by hand (Set), pending ones
// included, and for pending uploads that expired.
func testCountsPendingSetByHand(t *testing.T, h *harness) {
	for range 5 {
		h.create(t, true)
	}
	h.create(t, false)
	h.checkCounts(t, "created", taskstore.Counts{Queued: 1, Pending: 5})
	noErr(t, "Set(0, InProgress)", h.s.Set(h.ctx, 0, taskstore.InProgress, lease))
	noErr(t, "Set(1, Finished)", h.s.Set(h.ctx, 1, taskstore.Finished, 0))
	noErr(t, "Set(2, Failed)", h.s.Set(h.ctx, 2, taskstore.Failed, 0))
	noErr(t, "Set(5, Finished)", h.s.Set(h.ctx, 5, taskstore.Finished, 0))
	h.checkCounts(t, "set by hand", taskstore.Counts{Pending: 2, Processing: 1, Finished: 2, Failed: 1})
	h.clk.Advance(time.Hour)
	// Task 0's lease lapsed with attempts left: it waits again, pending as before.
	h.checkCounts(t, "lapsed pending", taskstore.Counts{Pending: 3, Finished: 2, Failed: 1})
	n, err := h.s.ExpirePending(h.ctx, time.Minute)
	noErr(t, "ExpirePending", err)
	if n != 3 { // 3 and 4 waiting, 0 set in progress and lapsed
		t.Fatalf("ExpirePending = %d, want 3", n)
	}
	h.checkCounts(t, "expired", taskstore.Counts{Finished: 2, Failed: 4})
}
