package taskstoretest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// retry reports a transient failure of the claim with token, and checks that Get agrees with the result.
func (h *harness) retry(t *testing.T, id, token int64, reason string, b taskstore.RetryBackoff) taskstore.Task {
	t.Helper()
	task, err := h.s.Retry(h.ctx, id, token, reason, b)
	if err != nil {
		t.Fatalf("Retry(%d, token %d, %q, %+v): %v", id, token, reason, b, err)
	}
	checkTask(t, "Get after Retry vs Retry's result", h.get(t, id), task)
	return task
}

// checkWait checks that task, handed back at now after its n-th transient failure, waits a time in
// [d/2, d] with d = b.Delay(n), and returns the wait.
func checkWait(t *testing.T, task taskstore.Task, now time.Time, b taskstore.RetryBackoff, n int) time.Duration {
	t.Helper()
	d := b.Delay(n)
	wait := task.RetryAt.Sub(now)
	if task.Retries != n || wait < d/2 || wait > d {
		t.Fatalf("after transient failure %d with %+v: %s; want Retries %d and RetryAt %v to %v after %s",
			n, b, format(task), n, d/2, d, now.Format(time.RFC3339Nano))
	}
	return wait
}

// testRetry: a transient failure hands the task back without counting the attempt; it waits until
// RetryAt while younger tasks are claimed, then goes in id order with the others.
func testRetry(t *testing.T, h *harness) {
	b := taskstore.RetryBackoff{Min: 10 * time.Second, Max: time.Hour}
	h.createN(t, 4)
	c := h.claimID(t, 0)
	now := h.clk.Advance(time.Second)
	got := h.retry(t, 0, c.Token, "storage: unavailable", b)
	wait := checkWait(t, got, now, b, 1)
	want := taskstore.Task{
		ID: 0, State: wire.NotStarted, MaxAttempts: defMax, Token: c.Token, Error: "storage: unavailable",
		CreatedAt: start, StartedAt: c.StartedAt, RetryAt: now.Add(wait), Retries: 1,
	}
	checkTask(t, "after Retry", got, want)
	h.checkCounts(t, "one task waiting to be retried", taskstore.Counts{Queued: 4})
	wantErr(t, "Finish after Retry", h.finish(t, 0, c.Token), taskstore.ErrNotInProgress)

	// Before RetryAt younger tasks go first, and Claim's sweep leaves the waiting task alone.
	h.claimID(t, 1)
	h.clk.Advance(want.RetryAt.Sub(h.clk.Now()) - time.Millisecond)
	checkTask(t, "just before RetryAt", h.get(t, 0), want)
	h.claimID(t, 2)
	checkTask(t, "after a Claim just before RetryAt", h.get(t, 0), want)

	// From RetryAt on, the task is claimable, ahead of younger task 3, and reads as any queued task.
	now = h.clk.Advance(time.Millisecond)
	want.RetryAt = time.Time{}
	checkTask(t, "at RetryAt", h.get(t, 0), want)
	h.checkCounts(t, "retry due", taskstore.Counts{Queued: 2, Processing: 2})
	c2 := h.claimID(t, 0)
	checkTask(t, "Claim of the retried task", c2, taskstore.Task{
		ID: 0, State: wire.InProgress, Attempts: 1, MaxAttempts: defMax, Token: c2.Token,
		Error: "storage: unavailable", CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease), Retries: 1,
	})
	h.claimID(t, 3)
	h.noTask(t, "everything claimed")
}

// testRetryWho: Retry admits the same callers as Fail and refuses the others in the same words.
func testRetryWho(t *testing.T, h *harness) {
	b := taskstore.RetryBackoff{Min: time.Hour, Max: time.Hour} // waiting tasks stay out of the way

	h.createN(t, 2)   // 0: live lease; 1: lapsed lease
	h.create(t, true) // 2: pending until a Claim of it sweeps task 3
	h.createN(t, 3)   // 3: swept; 4: superseded; 5: finished
	for _, token := range []int64{0, 1} {
		_, err := h.s.Retry(h.ctx, 9, token, "x", b)
		wantErr(t, fmt.Sprintf("Retry of an unknown id with token %d", token), err, taskstore.ErrNotFound)
	}
	_, err := h.s.Retry(h.ctx, 0, 0, "x", b)
	wantErr(t, "Retry of a not-started task", err, taskstore.ErrNotInProgress)
	_, err = h.s.Retry(h.ctx, 0, 1, "x", b)
	wantErr(t, "Retry of a never-claimed task with a token", err, taskstore.ErrStaleToken)

	// A live lease: a wrong token is stale, token 0 is a reference worker.
	c := h.claimID(t, 0)
	_, err = h.s.Retry(h.ctx, 0, c.Token+1000, "x", b)
	wantErr(t, "Retry with a wrong token", err, taskstore.ErrStaleToken)
	checkTask(t, "after a refused Retry", h.get(t, 0), c)
	if got := h.retry(t, 0, 0, "unavailable", b); got.State != wire.NotStarted || got.Attempts != 0 ||
		got.Retries != 1 || got.Error != "unavailable" {
		t.Fatalf("Retry with token 0: %s", format(got))
	}
	// The claim is over: nothing more to report on it.
	want := h.get(t, 0)
	_, err = h.s.Retry(h.ctx, 0, c.Token, "again", b)
	wantErr(t, "Retry twice", err, taskstore.ErrNotInProgress)
	_, err = h.s.Fail(h.ctx, 0, c.Token, "again", true)
	wantErr(t, "Fail after Retry", err, taskstore.ErrNotInProgress)
	checkTask(t, "after refused reports", h.get(t, 0), want)

	// A lapsed lease: token 0 is refused; the holder still reports with its token, and the lapsed
	// attempt does not count.
	c = h.claimID(t, 1)
	h.clk.Advance(past)
	_, err = h.s.Retry(h.ctx, 1, 0, "x", b)
	wantErr(t, "Retry of a lapsed lease with token 0", err, taskstore.ErrNotInProgress)
	now := h.clk.Now()
	got := h.retry(t, 1, c.Token, "late", b)
	checkWait(t, got, now, b, 1)
	checkTask(t, "Retry after the lease lapsed", got, taskstore.Task{
		ID: 1, State: wire.NotStarted, MaxAttempts: defMax, Token: c.Token, Error: "late",
		CreatedAt: start, StartedAt: c.StartedAt, RetryAt: got.RetryAt, Retries: 1,
	})

	// Lapsed and swept back to the queue by a Claim of older task 2, not claimed since: the holder
	// still reports.
	c = h.claimID(t, 3)
	h.clk.Advance(past)
	noErr(t, "Activate(2)", h.s.Activate(h.ctx, 2, 0))
	h.claimID(t, 2)
	if got := h.get(t, 3); got.State != wire.NotStarted || got.Token != c.Token {
		t.Fatalf("swept task 3: %s", format(got))
	}
	if got := h.retry(t, 3, c.Token, "late", b); got.Attempts != 0 || got.Retries != 1 || got.RetryAt.IsZero() {
		t.Fatalf("Retry of a swept task by its holder: %s", format(got))
	}

	// Lapsed and claimed again: the first holder is stale.
	c = h.claimID(t, 4)
	h.clk.Advance(past)
	h.claimID(t, 2) // lapsed too, and older
	c2 := h.claimID(t, 4)
	_, err = h.s.Retry(h.ctx, 4, c.Token, "late", b)
	wantErr(t, "Retry by the superseded holder", err, taskstore.ErrStaleToken)
	checkTask(t, "after a stale Retry", h.get(t, 4), c2)

	// Finished: refused.
	c = h.claimID(t, 5)
	noErr(t, "Finish(5)", h.finish(t, 5, c.Token))
	_, err = h.s.Retry(h.ctx, 5, c.Token, "x", b)
	wantErr(t, "Retry of a finished task", err, taskstore.ErrNotInProgress)
	if got := h.get(t, 5); got.State != wire.Finished || got.Retries != 0 {
		t.Fatalf("refused Retry changed a finished task: %s", format(got))
	}
}

// testRetryBackoff: the waits double from Min up to Max, drawn at random in [d/2, d], and transient
// failures never use up attempts.
func testRetryBackoff(t *testing.T, h *harness) {
	b := taskstore.RetryBackoff{Min: time.Second, Max: 8 * time.Second}
	for n, d := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second,
		5: 8 * time.Second, 40: 8 * time.Second} {
		if got := b.Delay(n); got != d {
			t.Fatalf("%+v.Delay(%d) = %v, want %v", b, n, got, d)
		}
	}

	h.createWith(t, taskstore.CreateParams{MaxAttempts: 1})
	var capped []time.Duration
	for n := 1; n <= 8; n++ {
		c := h.claimID(t, 0)
		if c.Attempts != 1 || c.Retries != n-1 {
			t.Fatalf("claim after %d transient failures: %s", n-1, format(c))
		}
		now := h.clk.Advance(time.Second)
		got := h.retry(t, 0, c.Token, fmt.Sprint("outage ", n), b)
		if got.State != wire.NotStarted || got.Attempts != 0 {
			t.Fatalf("transient failure %d of a task with one attempt: %s", n, format(got))
		}
		wait := checkWait(t, got, now, b, n)
		if b.Delay(n) == b.Max {
			capped = append(capped, wait)
		}
		h.noTask(t, fmt.Sprint("waiting after transient failure ", n))
		h.clk.Advance(wait)
	}
	if len(slices.Compact(slices.Sorted(slices.Values(capped)))) == 1 {
		t.Fatalf("the waits at the cap are all %v: not drawn at random", capped[0])
	}
}

// testRetryCleared: no write but Retry leaves a wait behind: Set in any state, and a Release, Fail or
// Finish of a task set in progress; a zero backoff does not wait at all.
func testRetryCleared(t *testing.T, h *harness) {
	b := taskstore.RetryBackoff{Min: time.Hour, Max: time.Hour}
	h.createN(t, 6)
	for id := range int64(5) {
		c := h.claimID(t, id)
		if got := h.retry(t, id, c.Token, "transient", b); got.RetryAt.IsZero() {
			t.Fatalf("Retry left no wait: %s", format(got))
		}
	}
	noWait := func(what string, id int64) taskstore.Task {
		t.Helper()
		got := h.get(t, id)
		if !got.RetryAt.IsZero() || got.Retries != 1 {
			t.Fatalf("%s: %s, want no wait and the retry counted", what, format(got))
		}
		return got
	}

	// Set NotStarted makes the task claimable at once, ahead of never-claimed task 5.
	noErr(t, "Set NotStarted", h.s.Set(h.ctx, 0, wire.NotStarted, 0))
	noWait("after Set NotStarted", 0)
	c := h.claimID(t, 0)
	noErr(t, "Finish(0)", h.finish(t, 0, c.Token))

	for id, state := range map[int64]wire.State{1: wire.Finished, 2: wire.Failed} {
		noErr(t, "Set "+state.String(), h.s.Set(h.ctx, id, state, 0))
		if got := noWait("after Set "+state.String(), id); got.State != state {
			t.Fatalf("after Set %s: %s", state, format(got))
		}
	}
	// Set InProgress, then hand the task back: it is claimable at once, and finishes for good.
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 3, wire.InProgress, lease))
	tok := noWait("after Set InProgress", 3).Token
	noErr(t, "Release", h.s.Release(h.ctx, 3, tok))
	c = h.claimID(t, 3)
	h.fail(t, 3, c.Token, "flaky", false)
	c = h.claimID(t, 3)
	noErr(t, "Finish(3)", h.finish(t, 3, c.Token))
	noWait("after Finish", 3)

	// A zero backoff: handed back and claimable at once, before task 5.
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 4, wire.InProgress, lease))
	tok = noWait("after Set InProgress", 4).Token
	now := h.clk.Now()
	got := h.retry(t, 4, tok, "blip", taskstore.RetryBackoff{})
	if !got.RetryAt.IsZero() || got.Retries != 2 || got.State != wire.NotStarted {
		t.Fatalf("Retry with a zero backoff at %s: %s", now.Format(time.RFC3339), format(got))
	}
	h.claimID(t, 4)
	h.claimID(t, 5)
	h.noTask(t, "all claimed")
}

// testCountsRetryAndPending: tasks waiting to be retried count as queued (work for the workers, later),
// pending uploads apart, and Counts agrees with List throughout.
func testCountsRetryAndPending(t *testing.T, h *harness) {
	b := taskstore.RetryBackoff{Min: lease, Max: lease}
	h.createN(t, 3)   // 0: retried; 1: lapses; 2: queued
	h.create(t, true) // 3: activated
	h.create(t, true) // 4: abandoned
	h.checkCounts(t, "created", taskstore.Counts{Queued: 3, Pending: 2})

	c := h.claimID(t, 0)
	h.retry(t, 0, c.Token, "transient", b)
	h.claimID(t, 1)
	h.checkCounts(t, "one waiting, one processing", taskstore.Counts{Queued: 2, Pending: 2, Processing: 1})
	noErr(t, "Activate(3)", h.s.Activate(h.ctx, 3, 0))
	h.checkCounts(t, "activated", taskstore.Counts{Queued: 3, Pending: 1, Processing: 1})

	// Task 0's wait ends and task 1's lease lapses; nothing has settled them in the store yet.
	h.clk.Advance(past)
	h.checkCounts(t, "retry due, lease lapsed", taskstore.Counts{Queued: 4, Pending: 1})
	h.claimID(t, 0)
	h.checkCounts(t, "claimed again", taskstore.Counts{Queued: 3, Pending: 1, Processing: 1})

	noErr(t, "Abandon(4)", h.s.Abandon(h.ctx, 4, ""))
	h.checkCounts(t, "abandoned", taskstore.Counts{Queued: 3, Processing: 1, Failed: 1})
}
