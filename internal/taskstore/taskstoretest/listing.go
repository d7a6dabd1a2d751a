package taskstoretest

import (
	"context"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testList(t *testing.T, h *harness) {
	if got := h.list(t); len(got) != 0 {
		t.Fatalf("List of empty store yielded %d tasks", len(got))
	}
	h.createN(t, 3)
	h.create(t, true)
	h.create(t, false)
	h.createWith(t, taskstore.CreateParams{MaxAttempts: 1})
	h.claimID(t, 0)
	c := h.claimID(t, 1)
	noErr(t, "Finish(1)", h.finish(t, 1, c.Token))
	noErr(t, "Set(4, Failed)", h.s.Set(h.ctx, 4, wire.Failed, 0))
	noErr(t, "Set(5, InProgress)", h.s.Set(h.ctx, 5, wire.InProgress, lease/2))
	h.clk.Advance(lease/2 + time.Second) // task 5 lapses on its only attempt

	got := h.list(t)
	want := []struct {
		state   wire.State
		pending bool
	}{
		{wire.InProgress, false},
		{wire.Finished, false},
		{wire.NotStarted, false},
		{wire.NotStarted, true},
		{wire.Failed, false},
		{wire.Failed, false},
	}
	if len(got) != len(want) {
		t.Fatalf("List yielded %d tasks, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].ID != int64(i) || got[i].State != w.state || got[i].Pending != w.pending {
			t.Fatalf("List[%d] = %s, want id %d %s pending=%v", i, format(got[i]), i, w.state, w.pending)
		}
		// List and Get agree field for field.
		checkTask(t, "List vs Get", got[i], h.get(t, int64(i)))
	}
}

func testListEarlyStop(t *testing.T, h *harness) {
	h.createN(t, 10)
	// Stopping early must not panic (yield called after false), and must release whatever the
	// iteration held: afterwards reads and writes still work, many times over.
	for round := range 20 {
		n := 0
		for task, err := range h.s.List(h.ctx) {
			noErr(t, "List", err)
			if task.ID != int64(n) {
				t.Fatalf("round %d: List yielded id %d at position %d", round, task.ID, n)
			}
			n++
			if n == 3 {
				break
			}
		}
		if n != 3 {
			t.Fatalf("round %d: consumed %d tasks, want 3", round, n)
		}
	}
	h.claimID(t, 0)
	h.create(t, false)
	if got := len(h.list(t)); got != 11 {
		t.Fatalf("full List after early stops yielded %d tasks, want 11", got)
	}
	// Store calls from inside the loop must not deadlock.
	for task, err := range h.s.List(h.ctx) {
		noErr(t, "List", err)
		if _, err := h.s.Get(h.ctx, task.ID); err != nil {
			t.Fatalf("Get inside List: %v", err)
		}
		if task.ID == 5 {
			noErr(t, "Set inside List", h.s.Set(h.ctx, task.ID, wire.Finished, 0))
		}
	}
	if got := h.get(t, 5); got.State != wire.Finished {
		t.Fatalf("Set inside List did not take: %s", format(got))
	}
}

func testListCanceledContext(t *testing.T, h *harness) {
	h.createN(t, 3)
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	var gotErr error
	n := 0
	for _, err := range h.s.List(ctx) {
		if err != nil {
			gotErr = err
			break
		}
		n++
	}
	if gotErr == nil {
		t.Fatalf("List with canceled context yielded %d tasks and no error", n)
	}
}
