package taskstoretest

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// wantUsage checks what owner keeps stored.
func (h *harness) wantUsage(t *testing.T, owner string, want taskstore.Usage) {
	t.Helper()
	got, err := h.s.Usage(h.ctx, owner)
	if err != nil {
		t.Fatalf("Usage(%q): %v", owner, err)
	}
	if got != want {
		t.Errorf("Usage(%q) = %+v, want %+v", owner, got, want)
	}
}

// Usage counts an owner's tasks from their creation, whatever their state, and the sizes Activate
// records, until they are deleted; owners do not see each other's.
func testUsage(t *testing.T, h *harness) {
	h.wantUsage(t, "alice", taskstore.Usage{})
	a := h.createWith(t, taskstore.CreateParams{Pending: true, Owner: "alice"})
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 1})
	noErr(t, "Activate", h.s.Activate(h.ctx, a, 1000))
	noErr(t, "Activate again", h.s.Activate(h.ctx, a, 5)) // a no-op: the size stays
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 1, Bytes: 1000})

	b := h.createWith(t, taskstore.CreateParams{Pending: true, Owner: "alice"})
	noErr(t, "Activate", h.s.Activate(h.ctx, b, 24))
	c := h.createWith(t, taskstore.CreateParams{Pending: true, Owner: "bob"})
	noErr(t, "Activate", h.s.Activate(h.ctx, c, 7))
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 2, Bytes: 1024})
	h.wantUsage(t, "bob", taskstore.Usage{Tasks: 1, Bytes: 7})

	// Claims, finishes, failures, cancels and retention's hold change nothing: a settled task is kept.
	claimed := h.claim(t)
	noErr(t, "Finish", h.finish(t, claimed.ID, claimed.Token))
	claimed = h.claim(t)
	if _, err := h.s.Fail(h.ctx, claimed.ID, claimed.Token, "bad", true); err != nil {
		t.Fatalf("Fail: %v", err)
	}
	if _, err := h.s.Cancel(h.ctx, b); err != nil && claimed.ID != b {
		t.Fatalf("Cancel(%d): %v", b, err)
	}
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 2, Bytes: 1024})
	h.wantUsage(t, "bob", taskstore.Usage{Tasks: 1, Bytes: 7})

	// Deleting frees the task and its bytes, once.
	noErr(t, "Delete", h.s.Delete(h.ctx, a))
	noErr(t, "Delete again", h.s.Delete(h.ctx, a))
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 1, Bytes: 24})
	noErr(t, "Delete", h.s.Delete(h.ctx, b))
	h.wantUsage(t, "alice", taskstore.Usage{})
	h.wantUsage(t, "bob", taskstore.Usage{Tasks: 1, Bytes: 7})
	// Tombstones belong to nobody: the owner "" counts none of them.
	h.wantUsage(t, "", taskstore.Usage{})

	// A failed upload (abandoned, or expired) stays counted until deleted; its size was never recorded.
	p := h.createWith(t, taskstore.CreateParams{Pending: true, Owner: "alice"})
	noErr(t, "Abandon", h.s.Abandon(h.ctx, p, "broke off"))
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 1})
	noErr(t, "Delete", h.s.Delete(h.ctx, p))
	h.wantUsage(t, "alice", taskstore.Usage{})
}

// Deleting a queued task takes it out of its owner's turn as well as its usage: the owner's other
// tasks, and other owners', are still claimed, and nothing claims the deleted one.
func testUsageDeleteQueued(t *testing.T, h *harness) {
	a0 := h.createWith(t, taskstore.CreateParams{Owner: "alice"})
	a1 := h.createWith(t, taskstore.CreateParams{Owner: "alice"})
	b0 := h.createWith(t, taskstore.CreateParams{Owner: "bob"})
	noErr(t, "Delete", h.s.Delete(h.ctx, a0))
	counts, err := h.s.Counts(h.ctx)
	noErr(t, "Counts", err)
	if counts.Queued != 2 {
		t.Errorf("Counts().Queued = %d after deleting one of three queued tasks, want 2", counts.Queued)
	}
	got := map[int64]bool{}
	for range 2 {
		task := h.claim(t)
		got[task.ID] = true
	}
	if !got[a1] || !got[b0] {
		t.Errorf("claimed %v, want tasks %d and %d", got, a1, b0)
	}
	if task, err := h.s.Claim(h.ctx, lease); err == nil {
		t.Errorf("Claim after the live tasks = task %d, want ErrNoTask", task.ID)
	}
	// Alice comes back after keeping nothing: her new task is claimed.
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 1})
	noErr(t, "Delete", h.s.Delete(h.ctx, a1))
	h.wantUsage(t, "alice", taskstore.Usage{})
	a2 := h.createWith(t, taskstore.CreateParams{Owner: "alice"})
	if task := h.claim(t); task.ID != a2 || task.State != wire.InProgress {
		t.Errorf("Claim = task %d (%v), want %d in progress", task.ID, task.State, a2)
	}
	h.wantUsage(t, "alice", taskstore.Usage{Tasks: 1})
}

// CheckUsageUpgraded checks a store upgraded from the schema before usage, whose tasks were: alice's 0
// and 1 queued, bob's 2 queued, carol's 3 deleted (a tombstone, her only task). readTombstone reads,
// through the engine, task 3's owner and how many rows of carol's the owners table holds.
func CheckUsageUpgraded(t *testing.T, s taskstore.Store, readTombstone func() (owner string, carolOwners int, err error)) {
	t.Helper()
	ctx := t.Context()
	for owner, want := range map[string]taskstore.Usage{"alice": {Tasks: 2}, "bob": {Tasks: 1}, "carol": {}, "": {}} {
		if got, err := s.Usage(ctx, owner); err != nil || got != want {
			t.Errorf("Usage(%q) after the upgrade = %+v, %v; want %+v", owner, got, err, want)
		}
	}
	tombOwner, carol, err := readTombstone()
	if err != nil {
		t.Fatal(err)
	}
	if tombOwner != "" || carol != 0 {
		t.Errorf("after the upgrade the tombstone's owner is %q and owners has %d rows of carol; want none", tombOwner, carol)
	}
	// The turn goes on: both queued tasks are claimed, and deleting one frees its owner's usage.
	for range 2 {
		if _, err := s.Claim(ctx, time.Hour); err != nil {
			t.Fatalf("Claim after the upgrade: %v", err)
		}
	}
	if err := s.Delete(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Usage(ctx, "bob"); err != nil || got != (taskstore.Usage{}) {
		t.Errorf("Usage(bob) after deleting his task = %+v, %v; want none", got, err)
	}
}

// TombstoneRow is what a deleted task's row holds, read through the engine.
type TombstoneRow struct {
	State, Size            int64
	Owner, Op, Error, Name string
	KeyKept                bool // idem_key is not NULL
}

// CheckTombstoneKeepsNothing checks that a tombstone keeps nothing of who asked for what (owner,
// operation, error, upload's name, idempotency key, size), and that an owner's rows (usage, and the turn) go once it
// keeps nothing. row reads task id's row through the engine; ownerRows counts owner's rows in table.
func CheckTombstoneKeepsNothing(t *testing.T, s taskstore.Store, row func(id int64) (TombstoneRow, error),
	ownerRows func(table, owner string) (int, error),
) {
	t.Helper()
	ctx := t.Context()
	task, _, err := s.CreateOnce(ctx, taskstore.CreateParams{Pending: true, Op: "grayscale", Owner: "203.0.113.9", Name: "alice.jpg"}, "fe-secret", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Activate(ctx, task.ID, 4096); err != nil {
		t.Fatal(err)
	}
	c, err := s.Claim(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fail(ctx, c.ID, c.Token, "cannot decode photo-of-alice.jpg", true); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, task.ID); err != nil {
		t.Fatal(err)
	}
	got, err := row(task.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got != (TombstoneRow{State: int64(taskstore.Deleted)}) {
		t.Errorf("tombstone row = %+v; want state 5 and nothing else", got)
	}
	// The last task of another owner, queued (so counted in the turn) when deleted.
	queued, err := s.Create(ctx, taskstore.CreateParams{Owner: "key:bob"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, queued); err != nil {
		t.Fatal(err)
	}
	for _, owner := range []string{"203.0.113.9", "key:bob"} {
		for _, table := range []string{"usage", "owners"} {
			n, err := ownerRows(table, owner)
			if err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("%s still names %s, whose tasks are all deleted", table, owner)
			}
		}
	}
}
