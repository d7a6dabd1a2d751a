package taskstoretest

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testPendingAndActivate(t *testing.T, h *harness) {
	if id := h.create(t, true); id != 0 {
		t.Fatalf("pending task got id %d, want 0", id)
	}
	h.create(t, false)
	h.create(t, true)

	h.claimID(t, 1) // 0 is older but pending
	h.noTask(t, "only pending tasks left")
	if got := h.get(t, 0); !got.Pending || got.State != wire.NotStarted {
		t.Fatalf("pending task reads %s", format(got))
	}

	wantErr(t, "Activate(99)", h.s.Activate(h.ctx, 99, 0), taskstore.ErrNotFound)
	noErr(t, "Activate(2)", h.s.Activate(h.ctx, 2, 0))
	noErr(t, "Activate(2) again", h.s.Activate(h.ctx, 2, 0))
	noErr(t, "Activate(1) on an active in-progress task", h.s.Activate(h.ctx, 1, 0))
	if got := h.get(t, 1); got.State != wire.InProgress || got.Pending {
		t.Fatalf("Activate changed an in-progress task: %s", format(got))
	}
	if got := h.get(t, 2); got.Pending || got.State != wire.NotStarted {
		t.Fatalf("activated task reads %s", format(got))
	}
	h.claimID(t, 2)
	h.noTask(t, "task 0 still pending")

	noErr(t, "Activate(0)", h.s.Activate(h.ctx, 0, 0))
	got := h.claimID(t, 0)
	if got.Pending || got.Attempts != 1 {
		t.Fatalf("claimed formerly pending task: %s", format(got))
	}
}

func testExpirePending(t *testing.T, h *harness) {
	h.create(t, true) // 0, created at start
	now := h.clk.Advance(10 * time.Minute)
	h.create(t, false) // 1, active
	h.create(t, true)  // 2, pending, created 10 minutes later
	h.create(t, true)  // 3, activated below
	noErr(t, "Activate(3)", h.s.Activate(h.ctx, 3, 0))
	h.create(t, true) // 4, pending, set in progress by hand below
	noErr(t, "Set(4, InProgress)", h.s.Set(h.ctx, 4, wire.InProgress, 2*time.Hour))
	before := h.list(t)

	expiredAt := h.clk.Advance(15 * time.Minute) // task 0 is 25 minutes old, the others 15
	n, err := h.s.ExpirePending(h.ctx, 20*time.Minute)
	noErr(t, "ExpirePending", err)
	if n != 1 {
		t.Fatalf("ExpirePending expired %d tasks, want 1", n)
	}
	want0 := taskstore.Task{
		ID: 0, State: wire.Failed, Pending: true, MaxAttempts: defMax,
		Error: expired, CreatedAt: start, FinishedAt: expiredAt,
	}
	checkTask(t, "expired pending task", h.get(t, 0), want0)
	for _, id := range []int64{1, 2, 3, 4} {
		checkTask(t, "task not due for expiry", h.get(t, id), before[id])
	}
	wantErr(t, "Activate of an expired task", h.s.Activate(h.ctx, 0, 0), taskstore.ErrNotPending)
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
		ID: 2, State: wire.Failed, Pending: true, MaxAttempts: defMax,
		Error: expired, CreatedAt: now, FinishedAt: expiredAt,
	})
	for _, id := range []int64{0, 1, 3, 4} {
		checkTask(t, "after the later ExpirePending", h.get(t, id), before[id])
	}
	wantErr(t, "Activate(2) after expiry", h.s.Activate(h.ctx, 2, 0), taskstore.ErrNotPending)

	// A new pending task is safe until it is old enough, and can be activated in time.
	h.create(t, true) // 5
	h.clk.Advance(10 * time.Minute)
	if n, err := h.s.ExpirePending(h.ctx, 20*time.Minute); err != nil || n != 0 {
		t.Fatalf("ExpirePending of a young pending task = %d, %v; want 0", n, err)
	}
	noErr(t, "Activate(5)", h.s.Activate(h.ctx, 5, 0))

	// Once the lease on pending task 4 lapses, nobody works on it any more, and it expires too.
	expiredAt = h.clk.Advance(time.Hour)
	want4 := before[4]
	n, err = h.s.ExpirePending(h.ctx, 20*time.Minute)
	noErr(t, "ExpirePending after task 4 lapsed", err)
	if n != 1 {
		t.Fatalf("ExpirePending after task 4 lapsed expired %d tasks, want 1", n)
	}
	want4.State, want4.Error, want4.FinishedAt, want4.LeaseUntil = wire.Failed, expired, expiredAt, time.Time{}
	checkTask(t, "expired lapsed pending task 4", h.get(t, 4), want4)
	wantErr(t, "Finish of expired task 4 by its holder", h.finish(t, 4, want4.Token), taskstore.ErrNotInProgress)
	if got := h.get(t, 5); got.State != wire.NotStarted || got.Pending {
		t.Fatalf("activated task after ExpirePending: %s", format(got))
	}
}
