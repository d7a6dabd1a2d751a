package taskstoretest

import (
	"slices"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

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
	if got := h.get(t, 0); got.State != wire.NotStarted || !got.LeaseUntil.IsZero() {
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
	noErr(t, "Finish", h.finish(t, 0, c2.Token))
	_, err = h.s.Extend(h.ctx, 0, c2.Token, lease)
	wantErr(t, "Extend of a finished task", err, taskstore.ErrNotInProgress)
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
		ID: 0, State: wire.NotStarted, Attempts: 1, MaxAttempts: defMax, Token: c.Token,
		Error: lapsed(1, defMax), CreatedAt: start, StartedAt: t0,
	})
	if got := h.get(t, 1); got.State != wire.InProgress {
		t.Fatalf("task 1 with a long lease: %s", format(got))
	}
	var states []wire.State
	for _, task := range h.list(t) {
		states = append(states, task.State)
	}
	if want := []wire.State{wire.NotStarted, wire.InProgress, wire.NotStarted}; !slices.Equal(states, want) {
		t.Fatalf("List states after lapse = %v, want %v", states, want)
	}
	wantErr(t, "Finish of lapsed task with token 0", h.finish(t, 0, 0), taskstore.ErrNotInProgress)

	// The lapsed task is handed out again, before never-claimed task 2 because its id is lower, and
	// keeps the lapse as its last error while it runs.
	now := h.clk.Advance(time.Second)
	c2 := h.claimID(t, 0)
	checkTask(t, "reclaim of lapsed task", c2, taskstore.Task{
		ID: 0, State: wire.InProgress, Attempts: 2, MaxAttempts: defMax, Token: c2.Token,
		Error: lapsed(1, defMax), CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease),
	})
	h.claimID(t, 2)
	h.noTask(t, "all leases live")

	// The second holder can finish; the first one's claim is gone for good.
	wantErr(t, "Finish(0) by the first holder", h.finish(t, 0, c.Token), taskstore.ErrStaleToken)
	noErr(t, "Finish(0) by the second holder", h.finish(t, 0, c2.Token))
	if got := h.get(t, 0); got.State != wire.Finished || got.Error != "" {
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
	if got := h.get(t, 0); got.State != wire.NotStarted || got.Error != lapsed(1, 2) || !got.FinishedAt.IsZero() {
		t.Fatalf("first lapse of 2: %s", format(got))
	}
	c2 := h.claimID(t, 0)
	h.clk.Advance(past)
	want := taskstore.Task{
		ID: 0, State: wire.Failed, Attempts: 2, MaxAttempts: 2, Token: c2.Token,
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
	wantErr(t, "Finish by the first holder", h.finish(t, 0, c1.Token), taskstore.ErrStaleToken)
	finishedAt := h.clk.Advance(time.Second)
	noErr(t, "Finish by the last holder", h.finish(t, 0, c2.Token))
	checkTask(t, "after a late Finish", h.get(t, 0), taskstore.Task{
		ID: 0, State: wire.Finished, Attempts: 2, MaxAttempts: 2, Token: c2.Token,
		CreatedAt: start, StartedAt: c2.StartedAt, FinishedAt: finishedAt,
	})
}

// testLapsedLeaseInIDOrder checks that a lapsed task with a higher id waits behind older
// never-claimed tasks and jumps ahead of newer ones.
func testLapsedLeaseInIDOrder(t *testing.T, h *harness) {
	h.createN(t, 2)
	h.claimID(t, 0)
	h.claimID(t, 1)
	h.createN(t, 2)                                                       // tasks 2, 3
	noErr(t, "Set(0, NotStarted)", h.s.Set(h.ctx, 0, wire.NotStarted, 0)) // task 0 requeued by hand
	h.clk.Advance(past)                                                   // task 1 lapses
	h.claimID(t, 0)
	h.claimID(t, 1)
	h.claimID(t, 2)
	h.claimID(t, 3)
}
