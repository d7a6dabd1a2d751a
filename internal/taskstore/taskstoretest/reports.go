package taskstoretest

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testFinish(t *testing.T, h *harness) {
	h.createN(t, 2)
	wantErr(t, "Finish of not-started task", h.finish(t, 0, 0), taskstore.ErrNotInProgress)
	wantErr(t, "Finish of unknown task", h.finish(t, 42, 0), taskstore.ErrNotFound)
	wantErr(t, "Finish of unknown task with a token", h.finish(t, 42, 1), taskstore.ErrNotFound)
	wantErr(t, "Finish of negative id", h.finish(t, -1, 0), taskstore.ErrNotFound)

	claimedAt := h.clk.Advance(time.Second)
	c := h.claimID(t, 0)
	finishedAt := h.clk.Advance(lease / 2)
	noErr(t, "Finish(0)", h.finish(t, 0, c.Token))
	checkTask(t, "Get after Finish", h.get(t, 0), taskstore.Task{
		ID: 0, State: wire.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		CreatedAt: start, StartedAt: claimedAt, FinishedAt: finishedAt,
	})
	wantErr(t, "Finish of finished task without a token", h.finish(t, 0, 0), taskstore.ErrNotInProgress)

	h.claimID(t, 1) // finished task 0 is not handed out again
	h.noTask(t, "all claimed")
	h.clk.Advance(lease / 2)
	noErr(t, "Finish(1) by a reference worker (token 0)", h.finish(t, 1, 0))
	if got := h.get(t, 1); got.State != wire.Finished {
		t.Fatalf("Finish with token 0 did not finish: %s", format(got))
	}
	if got := h.get(t, 0); got.State != wire.Finished || !got.FinishedAt.Equal(finishedAt) {
		t.Fatalf("finishing task 1 changed task 0: %s", format(got))
	}
}

// testFinishTokens walks Finish's token rules.
func testFinishTokens(t *testing.T, h *harness) {
	// Task 0: the plain cases.
	h.createN(t, 1)
	wantErr(t, "Finish of a never-claimed task with a token", h.finish(t, 0, 1), taskstore.ErrStaleToken)
	c := h.claimID(t, 0)
	wantErr(t, "Finish with a token that was never issued", h.finish(t, 0, c.Token+1000), taskstore.ErrStaleToken)
	if got := h.get(t, 0); got.State != wire.InProgress {
		t.Fatalf("refused Finish changed the task: %s", format(got))
	}
	finishedAt := h.clk.Advance(time.Second)
	finished, err := h.s.Finish(h.ctx, 0, c.Token)
	noErr(t, "Finish with the current token", err)
	want := taskstore.Task{
		ID: 0, State: wire.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		CreatedAt: start, StartedAt: c.StartedAt, FinishedAt: finishedAt,
	}
	checkTask(t, "Finish's result", finished, want)
	checkTask(t, "after Finish", h.get(t, 0), want)
	h.clk.Advance(time.Second)
	// A retry returns the task as the first finish left it: its FinishedAt tells the caller it is one.
	again, err := h.s.Finish(h.ctx, 0, c.Token)
	noErr(t, "Finish again with the same token", err)
	checkTask(t, "a repeated Finish's result (the first finish's time)", again, want)
	checkTask(t, "after a repeated Finish (FinishedAt must not move)", h.get(t, 0), want)
	wantErr(t, "Finish of a finished task with token 0", h.finish(t, 0, 0), taskstore.ErrNotInProgress)
	wantErr(t, "Finish of a finished task with another token", h.finish(t, 0, c.Token+1000), taskstore.ErrStaleToken)

	// Task 1: the lease lapsed, nobody claimed it since: the holder's result still counts.
	created := h.clk.Now()
	h.createN(t, 1)
	c = h.claimID(t, 1)
	h.clk.Advance(past)
	if got := h.get(t, 1); got.State != wire.NotStarted {
		t.Fatalf("lapsed task reads %s", format(got))
	}
	wantErr(t, "Finish of a lapsed task with token 0", h.finish(t, 1, 0), taskstore.ErrNotInProgress)
	finishedAt = h.clk.Advance(time.Second)
	noErr(t, "Finish of a lapsed, unclaimed task with its token", h.finish(t, 1, c.Token))
	checkTask(t, "after Finish past the lease", h.get(t, 1), taskstore.Task{
		ID: 1, State: wire.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
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
	noErr(t, "Activate(2)", h.s.Activate(h.ctx, 2, 0))
	c2 := h.claimID(t, 2) // sweeps task 3 back to not started
	if got := h.get(t, 3); got.State != wire.NotStarted || got.Token != c.Token {
		t.Fatalf("swept task 3: %s", format(got))
	}
	finishedAt = h.clk.Advance(time.Second)
	noErr(t, "Finish of a lapsed, swept, unclaimed task with its token", h.finish(t, 3, c.Token))
	checkTask(t, "after Finish of a swept task", h.get(t, 3), taskstore.Task{
		ID: 3, State: wire.Finished, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		CreatedAt: created, StartedAt: c.StartedAt, FinishedAt: finishedAt,
	})
	h.noTask(t, "the swept, finished task must not be handed out")
	noErr(t, "Finish(2)", h.finish(t, 2, c2.Token))

	// Task 4: lapsed and claimed again: the first holder is stale, whatever happens next.
	h.createN(t, 1)
	c1 := h.claimID(t, 4)
	h.clk.Advance(past)
	c2 = h.claimID(t, 4)
	wantErr(t, "Finish by the superseded holder", h.finish(t, 4, c1.Token), taskstore.ErrStaleToken)
	if got := h.get(t, 4); got.State != wire.InProgress || got.Token != c2.Token {
		t.Fatalf("stale Finish changed the task: %s", format(got))
	}
	noErr(t, "Finish by the current holder", h.finish(t, 4, c2.Token))
	wantErr(t, "Finish by the superseded holder after the current one", h.finish(t, 4, c1.Token), taskstore.ErrStaleToken)
}

func testFailTransient(t *testing.T, h *harness) {
	h.createN(t, 1)
	c1 := h.claimID(t, 0)
	h.clk.Advance(time.Second)
	got := h.fail(t, 0, c1.Token, "decode: unexpected EOF", false)
	checkTask(t, "after a transient Fail", got, taskstore.Task{
		ID: 0, State: wire.NotStarted, Attempts: 1, MaxAttempts: defMax, Token: c1.Token,
		Error: "decode: unexpected EOF", CreatedAt: start, StartedAt: c1.StartedAt,
	})
	wantErr(t, "Finish after the holder failed the attempt", h.finish(t, 0, c1.Token), taskstore.ErrNotInProgress)
	_, err := h.s.Fail(h.ctx, 0, c1.Token, "again", false)
	wantErr(t, "Fail twice", err, taskstore.ErrNotInProgress)

	// The retry keeps the last error while it runs.
	c2 := h.claimID(t, 0)
	if c2.Attempts != 2 || c2.Error != "decode: unexpected EOF" {
		t.Fatalf("retry claim: %s", format(c2))
	}
	_, err = h.s.Fail(h.ctx, 0, c1.Token, "late", true)
	wantErr(t, "Fail by the superseded holder", err, taskstore.ErrStaleToken)
	if got := h.get(t, 0); got.State != wire.InProgress || got.Error != "decode: unexpected EOF" {
		t.Fatalf("stale Fail changed the task: %s", format(got))
	}
	if got := h.fail(t, 0, c2.Token, "second", false); got.State != wire.NotStarted || got.Attempts != 2 ||
		got.Error != "second" {
		t.Fatalf("second transient Fail: %s", format(got))
	}

	// Out of attempts: the third transient failure is final.
	c3 := h.claimID(t, 0)
	failedAt := h.clk.Advance(time.Second)
	want := taskstore.Task{
		ID: 0, State: wire.Failed, Attempts: 3, MaxAttempts: defMax, Token: c3.Token,
		Error: "third", CreatedAt: start, StartedAt: c3.StartedAt, FinishedAt: failedAt,
	}
	checkTask(t, "after the last attempt failed", h.fail(t, 0, c3.Token, "third", false), want)
	h.noTask(t, "the only task failed")
	h.clk.Advance(10 * lease)
	checkTask(t, "failed task later", h.get(t, 0), want)
	wantErr(t, "Finish of a failed task", h.finish(t, 0, c3.Token), taskstore.ErrNotInProgress)
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
		ID: 0, State: wire.Failed, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		Error: "not an image", CreatedAt: start, StartedAt: c.StartedAt, FinishedAt: failedAt,
	})
	h.claimID(t, 1) // task 0 is not handed out again
	h.noTask(t, "task 0 failed for good")

	// A reference worker (token 0) can fail a live lease too.
	if got := h.fail(t, 1, 0, "flaky", false); got.State != wire.NotStarted || got.Attempts != 1 {
		t.Fatalf("transient Fail with token 0: %s", format(got))
	}
	h.claimID(t, 1)
	if got := h.fail(t, 1, 0, "broken", true); got.State != wire.Failed || got.Attempts != 2 || got.Error != "broken" {
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
		ID: 0, State: wire.NotStarted, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		Error: "upstream timeout", CreatedAt: start, StartedAt: c.StartedAt,
	})

	c2 := h.claimID(t, 0)
	h.clk.Advance(past)
	failedAt := h.clk.Advance(time.Second)
	checkTask(t, "permanent Fail after the lease lapsed", h.fail(t, 0, c2.Token, "corrupt", true), taskstore.Task{
		ID: 0, State: wire.Failed, Attempts: 2, MaxAttempts: defMax, Token: c2.Token,
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
	if got := h.get(t, 1); got.State != wire.InProgress || got.Token != c2.Token || got.Error != lapsed(1, defMax) {
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
		ID: 0, State: wire.NotStarted, Attempts: 0, MaxAttempts: 1, Token: c.Token,
		CreatedAt: start, StartedAt: c.StartedAt,
	})
	wantErr(t, "Release twice", h.s.Release(h.ctx, 0, c.Token), taskstore.ErrNotInProgress)
	wantErr(t, "Finish after Release", h.finish(t, 0, c.Token), taskstore.ErrNotInProgress)

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
	if got := h.get(t, 0); got.State != wire.Failed || got.Attempts != 1 || got.Error != lapsed(1, 1) {
		t.Fatalf("lapse after Releases: %s", format(got))
	}

	wantErr(t, "Release of unknown id", h.s.Release(h.ctx, 5, 0), taskstore.ErrNotFound)
	wantErr(t, "Release of a not-started task", h.s.Release(h.ctx, 1, 0), taskstore.ErrNotInProgress)
	c = h.claimID(t, 1)
	noErr(t, "Finish(1)", h.finish(t, 1, c.Token))
	wantErr(t, "Release of a finished task", h.s.Release(h.ctx, 1, c.Token), taskstore.ErrNotInProgress)
	if got := h.get(t, 1); got.State != wire.Finished || got.Attempts != 1 {
		t.Fatalf("refused Release changed a finished task: %s", format(got))
	}
}
