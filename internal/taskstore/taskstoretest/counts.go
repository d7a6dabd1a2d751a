package taskstoretest

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// countsOf tallies tasks by state, as Counts must report them.
func countsOf(tasks []taskstore.Task) taskstore.Counts {
	var c taskstore.Counts
	for _, task := range tasks {
		switch task.State {
		case wire.NotStarted:
			if task.Pending {
				c.Pending++
			} else {
				c.Queued++
			}
		case wire.InProgress:
			c.Processing++
		case wire.Finished:
			c.Finished++
		case wire.Failed:
			c.Failed++
		case wire.Cancelled:
			c.Cancelled++
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
	for s, n := range map[wire.State]int64{wire.NotStarted: got.Queued + got.Pending, wire.InProgress: got.Processing,
		wire.Finished: got.Finished, wire.Failed: got.Failed, wire.State(9): 0} {
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
	noErr(t, "Finish(2)", h.finish(t, 2, c2.Token))
	h.fail(t, 3, c3.Token, "cannot decode", true)
	h.checkCounts(t, "finished and failed", taskstore.Counts{Queued: 1, Pending: 1, Processing: 3, Finished: 1, Failed: 1})

	// Tasks 0 and 1 lapse; nothing has settled them in the store yet.
	h.clk.Advance(lease/2 + time.Second)
	h.checkCounts(t, "lapsed", taskstore.Counts{Queued: 2, Pending: 1, Processing: 1, Finished: 1, Failed: 2})

	// A claim settles them and takes task 1 again: the same tasks, one more processing.
	h.claimID(t, 1)
	h.checkCounts(t, "after a claim", taskstore.Counts{Queued: 1, Pending: 1, Processing: 2, Finished: 1, Failed: 2})

	noErr(t, "Activate(4)", h.s.Activate(h.ctx, 4, 0))
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
	noErr(t, "Set(0, InProgress)", h.s.Set(h.ctx, 0, wire.InProgress, lease))
	noErr(t, "Set(1, Finished)", h.s.Set(h.ctx, 1, wire.Finished, 0))
	noErr(t, "Set(2, Failed)", h.s.Set(h.ctx, 2, wire.Failed, 0))
	noErr(t, "Set(5, Finished)", h.s.Set(h.ctx, 5, wire.Finished, 0))
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
