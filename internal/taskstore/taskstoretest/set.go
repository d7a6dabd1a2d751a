package taskstoretest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testSet(t *testing.T, h *harness) {
	h.createN(t, 2)

	// NotStarted -> InProgress is a claim: a lease from the clock, an attempt, a token.
	now := h.clk.Advance(time.Second)
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, wire.InProgress, 5*lease))
	got := h.get(t, 0)
	if got.Token <= 0 {
		t.Fatalf("Set InProgress issued token %d", got.Token)
	}
	want := taskstore.Task{
		ID: 0, State: wire.InProgress, Attempts: 1, MaxAttempts: defMax, Token: got.Token,
		CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(5 * lease),
	}
	checkTask(t, "after Set InProgress", got, want)
	h.claimID(t, 1) // task 0 is in progress, so not claimable
	h.noTask(t, "both in progress")
	noErr(t, "Finish with the token Set issued", h.finish(t, 0, want.Token))

	// Finished -> NotStarted makes it claimable again and clears FinishedAt; the holder's claim is
	// over.
	noErr(t, "Set NotStarted", h.s.Set(h.ctx, 0, wire.NotStarted, 0))
	want.State, want.LeaseUntil = wire.NotStarted, time.Time{}
	checkTask(t, "after Set NotStarted", h.get(t, 0), want)
	wantErr(t, "Finish after Set NotStarted", h.finish(t, 0, want.Token), taskstore.ErrNotInProgress)
	c := h.claimID(t, 0)

	// InProgress -> Finished sets FinishedAt and ends the lease.
	now = h.clk.Advance(time.Second)
	noErr(t, "Set Finished", h.s.Set(h.ctx, 0, wire.Finished, 0))
	want = c
	want.State, want.FinishedAt, want.LeaseUntil = wire.Finished, now, time.Time{}
	checkTask(t, "after Set Finished", h.get(t, 0), want)
	h.clk.Advance(10 * lease)
	checkTask(t, "finished task later", h.get(t, 0), want)
	wantErr(t, "Finish with token 0 after Set Finished", h.finish(t, 0, 0), taskstore.ErrNotInProgress)
	// Finished while the holder's token was current: its Finish is a repeat.
	noErr(t, "Finish by the holder after Set Finished", h.finish(t, 0, c.Token))
	checkTask(t, "after the holder's Finish", h.get(t, 0), want)

	// InProgress -> NotStarted releases the lease at once.
	c = h.claimID(t, 1) // task 1's lease had lapsed
	noErr(t, "Set NotStarted on in-progress", h.s.Set(h.ctx, 1, wire.NotStarted, 0))
	if got := h.get(t, 1); got.State != wire.NotStarted || !got.LeaseUntil.IsZero() || got.Attempts != 2 {
		t.Fatalf("after Set NotStarted on in-progress: %s", format(got))
	}
	wantErr(t, "Finish with token 0 after Set NotStarted", h.finish(t, 1, 0), taskstore.ErrNotInProgress)
	wantErr(t, "Finish by the holder after Set NotStarted", h.finish(t, 1, c.Token), taskstore.ErrNotInProgress)

	// A lease started by Set lapses like a claimed one, and counted as the third attempt.
	now = h.clk.Now()
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 1, wire.InProgress, lease))
	got = h.get(t, 1)
	if got.State != wire.InProgress || !got.LeaseUntil.Equal(now.Add(lease)) || got.Attempts != 3 {
		t.Fatalf("after Set InProgress: %s", format(got))
	}
	h.clk.Advance(past)
	if got := h.get(t, 1); got.State != wire.Failed || got.Error != lapsed(3, defMax) {
		t.Fatalf("Set lease lapsed on the last attempt: %s", format(got))
	}
	h.noTask(t, "task 1 failed")
	// Set NotStarted gives a failed task one more claim.
	noErr(t, "Set NotStarted on failed", h.s.Set(h.ctx, 1, wire.NotStarted, 0))
	if got := h.get(t, 1); got.State != wire.NotStarted || !got.FinishedAt.IsZero() {
		t.Fatalf("after Set NotStarted on failed: %s", format(got))
	}
	h.claimID(t, 1)

	// Setting the state it already has is fine.
	noErr(t, "Set Finished", h.s.Set(h.ctx, 1, wire.Finished, 0))
	noErr(t, "Set Finished again", h.s.Set(h.ctx, 1, wire.Finished, 0))
	if got := h.get(t, 1); got.State != wire.Finished || got.Error != "" {
		t.Fatalf("after Set Finished twice: %s", format(got))
	}
}

func testSetFailed(t *testing.T, h *harness) {
	h.createN(t, 3)

	// In progress -> Failed: final, the claim is over, and the task says why.
	c := h.claimID(t, 0)
	failedAt := h.clk.Advance(time.Second)
	noErr(t, "Set Failed", h.s.Set(h.ctx, 0, wire.Failed, 0))
	got := h.get(t, 0)
	if got.Error == "" {
		t.Fatalf("Set Failed left no reason: %s", format(got))
	}
	want := c
	want.State, want.FinishedAt, want.LeaseUntil, want.Error = wire.Failed, failedAt, time.Time{}, got.Error
	checkTask(t, "after Set Failed", got, want)
	h.claimID(t, 1) // task 0 is not claimable
	wantErr(t, "Finish by the holder after Set Failed", h.finish(t, 0, c.Token), taskstore.ErrNotInProgress)
	wantErr(t, "Finish with token 0 after Set Failed", h.finish(t, 0, 0), taskstore.ErrNotInProgress)
	h.clk.Advance(10 * lease)
	checkTask(t, "failed task later", h.get(t, 0), want)

	// A task that failed an attempt keeps that reason.
	c = h.claimID(t, 1) // its lease lapsed, so it is claimable again
	h.fail(t, 1, c.Token, "flaky", false)
	noErr(t, "Set Failed after a failed attempt", h.s.Set(h.ctx, 1, wire.Failed, 0))
	if got := h.get(t, 1); got.State != wire.Failed || got.Error != "flaky" {
		t.Fatalf("Set Failed after a failed attempt: %s", format(got))
	}

	// A never-claimed task can be failed too.
	failedAt = h.clk.Advance(time.Second)
	noErr(t, "Set Failed on not started", h.s.Set(h.ctx, 2, wire.Failed, 0))
	if got := h.get(t, 2); got.State != wire.Failed || got.Attempts != 0 || got.Token != 0 ||
		!got.FinishedAt.Equal(failedAt) || got.Error == "" {
		t.Fatalf("Set Failed on not started: %s", format(got))
	}
	h.noTask(t, "all failed")

	// Failed -> NotStarted retries it, keeping the last error until the retry ends.
	noErr(t, "Set NotStarted on failed", h.s.Set(h.ctx, 0, wire.NotStarted, 0))
	want.State, want.FinishedAt = wire.NotStarted, time.Time{}
	checkTask(t, "after Set NotStarted on failed", h.get(t, 0), want)
	if c := h.claimID(t, 0); c.Attempts != 2 || c.Error != want.Error {
		t.Fatalf("claim after Set NotStarted on failed: %s", format(c))
	}
}

func testSetErrors(t *testing.T, h *harness) {
	h.create(t, false)
	for _, st := range []wire.State{-1, 4, 100} {
		wantErr(t, fmt.Sprintf("Set invalid state %d", int(st)), h.s.Set(h.ctx, 0, st, lease), taskstore.ErrInvalidState)
	}
	checkTask(t, "after invalid Sets", h.get(t, 0), taskstore.Task{
		ID: 0, State: wire.NotStarted, MaxAttempts: defMax, CreatedAt: start,
	})
	for _, st := range []wire.State{wire.NotStarted, wire.InProgress, wire.Finished, wire.Failed} {
		wantErr(t, "Set unknown id to "+st.String(), h.s.Set(h.ctx, 1, st, lease), taskstore.ErrNotFound)
	}
	if _, err := h.s.Get(h.ctx, 1); !errors.Is(err, taskstore.ErrNotFound) {
		t.Fatalf("Set of unknown id created it: Get error %v", err)
	}
}
