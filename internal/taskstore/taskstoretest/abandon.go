package taskstoretest

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// testAbandon: a pending upload that broke off fails at once; abandoning it again, or after it expired,
// changes nothing; an activated task cannot be abandoned.
func testAbandon(t *testing.T, h *harness) {
	h.create(t, true)  // 0: abandoned
	h.create(t, false) // 1: active
	h.create(t, true)  // 2: activated
	h.create(t, true)  // 3: set in progress by hand, then abandoned
	h.create(t, true)  // 4: expired
	h.checkCounts(t, "created", taskstore.Counts{Queued: 1, Pending: 4})

	abandonedAt := h.clk.Advance(time.Second)
	noErr(t, "Abandon(0)", h.s.Abandon(h.ctx, 0, "upload refused: too large"))
	want := taskstore.Task{
		ID: 0, State: wire.Failed, Pending: true, MaxAttempts: defMax, Error: "upload refused: too large",
		CreatedAt: start, FinishedAt: abandonedAt,
	}
	checkTask(t, "after Abandon", h.get(t, 0), want)
	h.checkCounts(t, "abandoned", taskstore.Counts{Queued: 1, Pending: 3, Failed: 1})
	h.clk.Advance(time.Second)
	noErr(t, "Abandon(0) again", h.s.Abandon(h.ctx, 0, "again"))
	checkTask(t, "after Abandon again", h.get(t, 0), want)
	wantErr(t, "Activate of an abandoned task", h.s.Activate(h.ctx, 0, 0), taskstore.ErrNotPending)

	wantErr(t, "Abandon of an active task", h.s.Abandon(h.ctx, 1, "x"), taskstore.ErrNotPending)
	wantErr(t, "Abandon of an unknown task", h.s.Abandon(h.ctx, 99, "x"), taskstore.ErrNotFound)
	noErr(t, "Activate(2)", h.s.Activate(h.ctx, 2, 0))
	wantErr(t, "Abandon of an activated task", h.s.Abandon(h.ctx, 2, "x"), taskstore.ErrNotPending)
	for _, id := range []int64{1, 2} {
		if got := h.get(t, id); got.State != wire.NotStarted || got.Pending || got.Error != "" {
			t.Fatalf("refused Abandon changed task %d: %s", id, format(got))
		}
	}

	// A pending task that someone works on fails too, without a reason given: the claim is over.
	noErr(t, "Set(3, InProgress)", h.s.Set(h.ctx, 3, wire.InProgress, lease))
	holder := h.get(t, 3)
	abandonedAt = h.clk.Advance(time.Second)
	noErr(t, "Abandon(3)", h.s.Abandon(h.ctx, 3, ""))
	want3 := holder
	want3.State, want3.Error, want3.FinishedAt, want3.LeaseUntil = wire.Failed, wire.AbandonedError,
		abandonedAt, time.Time{}
	checkTask(t, "after Abandon of a task in progress", h.get(t, 3), want3)
	wantErr(t, "Finish by the holder of an abandoned task", h.finish(t, 3, holder.Token), taskstore.ErrNotInProgress)

	// Expired already: nothing to do.
	h.clk.Advance(time.Hour)
	if n, err := h.s.ExpirePending(h.ctx, time.Minute); err != nil || n != 1 {
		t.Fatalf("ExpirePending = %d, %v; want 1", n, err)
	}
	expiredTask := h.get(t, 4)
	noErr(t, "Abandon of an expired task", h.s.Abandon(h.ctx, 4, "x"))
	checkTask(t, "after Abandon of an expired task", h.get(t, 4), expiredTask)

	h.checkCounts(t, "end", taskstore.Counts{Queued: 2, Failed: 3})
	h.claimID(t, 1)
	h.claimID(t, 2)
	h.noTask(t, "abandoned and expired tasks are not claimable")
}
