package taskstoretest

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testRequeueStates(t *testing.T, h *harness) {
	h.lifecycleTasks(t) // 0 lapsed out of attempts, 1 finished, 2 failed, 3 processing, 4 queued, 5 pending
	h.create(t, false)  // 6: cancelled while queued
	_, err := h.s.Cancel(h.ctx, 6)
	noErr(t, "Cancel", err)
	h.create(t, true) // 7: pending, cancelled during its upload
	_, err = h.s.Cancel(h.ctx, 7)
	noErr(t, "Cancel", err)
	h.clk.Advance(time.Second)
	usage, err := h.s.Usage(h.ctx, "")
	noErr(t, "Usage", err)

	for _, id := range []int64{0, 2, 6} { // lapsed out of attempts, failed, cancelled
		before := h.get(t, id)
		got, err := h.s.Requeue(h.ctx, id)
		noErr(t, "Requeue", err)
		want := before
		want.State, want.Attempts, want.Retries, want.Error = wire.NotStarted, 0, 0, ""
		want.StartedAt, want.FinishedAt, want.LeaseUntil, want.RetryAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		checkTask(t, "Requeue result", got, want)
		checkTask(t, "Get after Requeue", h.get(t, id), want)
	}
	for _, id := range []int64{1, 3, 4} { // finished, processing, queued
		before := h.get(t, id)
		_, err := h.s.Requeue(h.ctx, id)
		wantErr(t, "Requeue of a task neither failed nor cancelled", err, taskstore.ErrNotRetryable)
		checkTask(t, "task after a refused Requeue", h.get(t, id), before)
	}
	// A requeued task was never deleted: its owner's usage counts it already.
	if got, err := h.s.Usage(h.ctx, ""); err != nil || got != usage {
		t.Errorf("Usage after requeues = %+v, %v; want %+v as before", got, err, usage)
	}
	_, err = h.s.Requeue(h.ctx, 5)
	wantErr(t, "Requeue of a pending task", err, taskstore.ErrNotRetryable)
	_, err = h.s.Requeue(h.ctx, 7)
	wantErr(t, "Requeue of a cancelled upload", err, taskstore.ErrNoUpload)
	_, err = h.s.Requeue(h.ctx, 99)
	wantErr(t, "Requeue of an unknown id", err, taskstore.ErrNotFound)
	noErr(t, "Delete", h.s.Delete(h.ctx, 2))
	_, err = h.s.Requeue(h.ctx, 2)
	wantErr(t, "Requeue of a deleted task", err, taskstore.ErrNotFound)

	// The requeued tasks are claimed in id order with the one that was queued, each with a full set of
	// attempts.
	h.checkCounts(t, "after requeues", taskstore.Counts{Queued: 3, Pending: 1, Processing: 1, Finished: 1, Cancelled: 1})
	for _, id := range []int64{0, 4, 6} {
		if c := h.claimID(t, id); c.Attempts != 1 {
			t.Errorf("claim of requeued task %d: attempts %d, want 1", id, c.Attempts)
		}
	}
	h.noTask(t, "every requeued task claimed")
}

// testRequeueHolder checks that whoever held a task before it was requeued is refused, as a late worker
// of the failed attempt must be: its result is not the new attempt's.
func testRequeueHolder(t *testing.T, h *harness) {
	h.createN(t, 2)
	old := h.claimID(t, 0)
	_, err := h.s.Cancel(h.ctx, 0)
	noErr(t, "Cancel", err)
	_, err = h.s.Requeue(h.ctx, 0)
	noErr(t, "Requeue", err)
	for _, token := range []int64{old.Token, 0} {
		wantErr(t, "Finish by the holder before the requeue", h.finish(t, 0, token), taskstore.ErrNotInProgress)
		_, err = h.s.Fail(h.ctx, 0, token, "late", true)
		wantErr(t, "Fail by the holder before the requeue", err, taskstore.ErrNotInProgress)
	}
	c := h.claimID(t, 0)
	if c.Token <= old.Token {
		t.Fatalf("token after requeue %d, before %d: want it larger", c.Token, old.Token)
	}
	wantErr(t, "Finish by the holder before the requeue", h.finish(t, 0, old.Token), taskstore.ErrStaleToken)
	noErr(t, "Finish", h.finish(t, 0, c.Token))
	if got := h.get(t, 0); got.State != wire.Finished {
		t.Fatalf("requeued task after Finish: %s", format(got))
	}
}

// testName checks that a task keeps the upload's name through its life, on both ways of creating it,
// and that a requeue keeps it.
func testName(t *testing.T, h *harness) {
	const name = "ğüş leaf (1).jpg"
	id := h.createWith(t, taskstore.CreateParams{Pending: true, Name: name})
	noErr(t, "Activate", h.s.Activate(h.ctx, id, 10))
	keyed, _, err := h.s.CreateOnce(h.ctx, taskstore.CreateParams{Name: "b.png"}, "k", time.Hour)
	noErr(t, "CreateOnce", err)
	if keyed.Name != "b.png" {
		t.Errorf("CreateOnce returned name %q, want b.png", keyed.Name)
	}
	plain := h.create(t, false)
	c := h.claimID(t, id)
	if c.Name != name {
		t.Errorf("Claim returned name %q, want %q", c.Name, name)
	}
	failed := h.fail(t, id, c.Token, "bad", true)
	if failed.Name != name {
		t.Errorf("Fail returned name %q, want %q", failed.Name, name)
	}
	r, err := h.s.Requeue(h.ctx, id)
	noErr(t, "Requeue", err)
	if r.Name != name {
		t.Errorf("Requeue returned name %q, want %q", r.Name, name)
	}
	want := map[int64]string{id: name, keyed.ID: "b.png", plain: ""}
	for _, task := range h.list(t) {
		if task.Name != want[task.ID] {
			t.Errorf("List: task %d has name %q, want %q", task.ID, task.Name, want[task.ID])
		}
		if got := h.get(t, task.ID); got.Name != want[task.ID] {
			t.Errorf("Get: task %d has name %q, want %q", task.ID, got.Name, want[task.ID])
		}
	}
}
