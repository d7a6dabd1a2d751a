package taskstoretest

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// lifecycleTasks makes tasks 0..5 of a fresh store: queued, pending, processing, finished, failed, and one
// whose lease lapsed out of attempts (reported failed).
func (h *harness) lifecycleTasks(t *testing.T) (processing taskstore.Task) {
	t.Helper()
	h.createWith(t, taskstore.CreateParams{MaxAttempts: 1}) // 0: claimed, lapses out of attempts
	h.createN(t, 3)                                         // 1, 2, 3
	lapsing := h.claimID(t, 0)
	h.clk.Advance(past)
	if got := h.get(t, lapsing.ID); got.State != wire.Failed {
		t.Fatalf("lapsed task out of attempts: %s", format(got))
	}
	fin := h.claimID(t, 1)
	noErr(t, "Finish", h.finish(t, 1, fin.Token))
	failed := h.claimID(t, 2)
	h.fail(t, 2, failed.Token, "bad input", true)
	processing = h.claimID(t, 3)
	h.create(t, false) // 4: queued
	h.create(t, true)  // 5: pending
	return processing
}

func testCancelStates(t *testing.T, h *harness) {
	h.lifecycleTasks(t)
	now := h.clk.Advance(time.Second)
	for _, id := range []int64{3, 4, 5} { // processing, queued, pending
		before := h.get(t, id)
		got, err := h.s.Cancel(h.ctx, id)
		noErr(t, "Cancel", err)
		want := before
		want.State, want.Error, want.FinishedAt, want.LeaseUntil = wire.Cancelled, wire.CancelledError, now, time.Time{}
		checkTask(t, "Cancel result", got, want)
		checkTask(t, "Get after Cancel", h.get(t, id), want)
		again, err := h.s.Cancel(h.ctx, id)
		noErr(t, "Cancel again", err)
		checkTask(t, "Cancel of a cancelled task", again, want)
	}
	for _, id := range []int64{0, 1, 2} { // lapsed out of attempts, finished, failed
		before := h.get(t, id)
		_, err := h.s.Cancel(h.ctx, id)
		wantErr(t, "Cancel of a settled task", err, taskstore.ErrSettled)
		checkTask(t, "settled task after a refused Cancel", h.get(t, id), before)
	}
	_, err := h.s.Cancel(h.ctx, 99)
	wantErr(t, "Cancel of an unknown id", err, taskstore.ErrNotFound)

	// Cancelled tasks are never claimed, not even after their lease would have lapsed, and a cancelled
	// upload cannot be activated.
	h.clk.Advance(10 * past)
	h.noTask(t, "only cancelled and settled tasks")
	wantErr(t, "Activate of a cancelled pending task", h.s.Activate(h.ctx, 5, 0), taskstore.ErrNotPending)
	noErr(t, "Abandon of a cancelled pending task", h.s.Abandon(h.ctx, 5, "gone"))
	if got := h.get(t, 5); got.State != wire.Cancelled {
		t.Fatalf("Abandon changed a cancelled task: %s", format(got))
	}
	if n, err := h.s.ExpirePending(h.ctx, 0); err != nil || n != 0 {
		t.Fatalf("ExpirePending = %d, %v; want 0 (the pending task was cancelled)", n, err)
	}
	h.checkCounts(t, "after cancels", taskstore.Counts{Finished: 1, Failed: 2, Cancelled: 3})
}

func testCancelHolder(t *testing.T, h *harness) {
	h.createN(t, 2)
	c := h.claimID(t, 0)
	_, err := h.s.Cancel(h.ctx, 0)
	noErr(t, "Cancel", err)
	want := h.get(t, 0)
	for _, token := range []int64{c.Token, 0} {
		_, err = h.s.Extend(h.ctx, 0, token, lease)
		wantErr(t, "Extend of a cancelled task", err, taskstore.ErrCancelled)
		wantErr(t, "Finish of a cancelled task", h.finish(t, 0, token), taskstore.ErrCancelled)
		_, err = h.s.Fail(h.ctx, 0, token, "boom", false)
		wantErr(t, "Fail of a cancelled task", err, taskstore.ErrCancelled)
		_, err = h.s.Retry(h.ctx, 0, token, "away", taskstore.RetryBackoff{Min: time.Second, Max: time.Second})
		wantErr(t, "Retry of a cancelled task", err, taskstore.ErrCancelled)
		wantErr(t, "Release of a cancelled task", h.s.Release(h.ctx, 0, token), taskstore.ErrCancelled)
	}
	checkTask(t, "cancelled task after its holder's refused calls", h.get(t, 0), want)
	h.claimID(t, 1)
	h.noTask(t, "the cancelled task is not handed out again")

	// An operator may still set a cancelled task (to requeue it, say).
	noErr(t, "Set", h.s.Set(h.ctx, 0, wire.NotStarted, lease))
	h.claimID(t, 0)
}

func testDeleteStates(t *testing.T, h *harness) {
	h.lifecycleTasks(t)
	h.create(t, false) // 6: cancelled, then deleted
	_, err := h.s.Cancel(h.ctx, 6)
	noErr(t, "Cancel", err)
	before := h.list(t)
	for id := range int64(7) {
		noErr(t, "Delete", h.s.Delete(h.ctx, id))
		_, err := h.s.Get(h.ctx, id)
		wantErr(t, "Get of a deleted task", err, taskstore.ErrNotFound)
		noErr(t, "Delete again", h.s.Delete(h.ctx, id))
		_, err = h.s.Cancel(h.ctx, id)
		wantErr(t, "Cancel of a deleted task", err, taskstore.ErrNotFound)
		wantErr(t, "Set of a deleted task", h.s.Set(h.ctx, id, wire.NotStarted, lease), taskstore.ErrNotFound)
		checkTasks(t, "List after a Delete", h.list(t), before[id+1:])
		h.checkCounts(t, "after a Delete", countsOf(before[id+1:]))
	}
	wantErr(t, "Delete of an unknown id", h.s.Delete(h.ctx, 7), taskstore.ErrNotFound)
	wantErr(t, "Activate of a deleted pending task", h.s.Activate(h.ctx, 5, 0), taskstore.ErrNotPending)
	h.clk.Advance(10 * past)
	h.noTask(t, "every task deleted")
	if n, err := h.s.ExpirePending(h.ctx, 0); err != nil || n != 0 {
		t.Fatalf("ExpirePending = %d, %v; want 0 (the pending task was deleted)", n, err)
	}
	// Ids stay consecutive after tombstones.
	id, err := h.s.Create(h.ctx, taskstore.CreateParams{})
	noErr(t, "Create after deletes", err)
	if id != 7 {
		t.Fatalf("Create after deletes = id %d, want 7", id)
	}
	h.checkCounts(t, "one new task", taskstore.Counts{Queued: 1})
}

func testDeleteHolder(t *testing.T, h *harness) {
	h.createN(t, 1)
	c := h.claimID(t, 0)
	noErr(t, "Delete of a task in progress", h.s.Delete(h.ctx, 0))
	for _, token := range []int64{c.Token, 0} {
		_, err := h.s.Extend(h.ctx, 0, token, lease)
		wantErr(t, "Extend of a deleted task", err, taskstore.ErrCancelled)
		wantErr(t, "Finish of a deleted task", h.finish(t, 0, token), taskstore.ErrCancelled)
		_, err = h.s.Fail(h.ctx, 0, token, "boom", true)
		wantErr(t, "Fail of a deleted task", err, taskstore.ErrCancelled)
	}
	// A repeated idempotency key after a delete creates a new task rather than answer the deleted one.
	p := taskstore.CreateParams{Op: "swap"}
	first, replayed, err := h.s.CreateOnce(h.ctx, p, "key-1", time.Hour)
	noErr(t, "CreateOnce", err)
	if replayed {
		t.Fatal("first CreateOnce replayed")
	}
	noErr(t, "Delete", h.s.Delete(h.ctx, first.ID))
	second, replayed, err := h.s.CreateOnce(h.ctx, p, "key-1", time.Hour)
	noErr(t, "CreateOnce after Delete", err)
	if replayed || second.ID == first.ID {
		t.Fatalf("CreateOnce after the task was deleted answered task %d (replayed %v), want a new one", second.ID, replayed)
	}
}
