package taskstoretest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testCreateIDsConsecutive(t *testing.T, h *harness) {
	var want []taskstore.Task
	for i := range 5 {
		now := h.clk.Advance(time.Second)
		pending := i%2 == 1
		id := h.create(t, pending)
		if id != int64(i) {
			t.Fatalf("Create #%d returned id %d, want %d", i, id, i)
		}
		want = append(want, taskstore.Task{
			ID: id, State: wire.NotStarted, Pending: pending, MaxAttempts: defMax, CreatedAt: now,
		})
	}
	h.clk.Advance(time.Hour) // CreatedAt must be the creation time, not the read time
	for _, w := range want {
		checkTask(t, "Get after Create", h.get(t, w.ID), w)
	}
}

// testOp checks that a task's operation chain is kept verbatim through every read and write path.
func testOp(t *testing.T, h *harness) {
	ops := []string{"", "swap", "resize:800x600,grayscale,sharpen:1.5", strings.Repeat("x", 2000), "ünïcode,'quote\"--"}
	for i, op := range ops {
		id := h.createWith(t, taskstore.CreateParams{Op: op, Pending: i%2 == 1})
		if got := h.get(t, id).Op; got != op {
			t.Fatalf("Get(%d).Op = %q, want %q", id, got, op)
		}
		if i%2 == 1 {
			noErr(t, "Activate", h.s.Activate(h.ctx, id, 0))
		}
	}
	for i := range ops {
		task, err := h.s.Claim(h.ctx, lease)
		noErr(t, "Claim", err)
		if task.ID != int64(i) || task.Op != ops[i] {
			t.Fatalf("Claim = %s, want id %d with op %q", format(task), i, ops[i])
		}
		if i == 0 {
			task, err = h.s.Fail(h.ctx, task.ID, task.Token, "boom", true)
			noErr(t, "Fail", err)
			if task.Op != ops[0] {
				t.Fatalf("Fail returned op %q, want %q", task.Op, ops[0])
			}
		}
	}
	for task, err := range h.s.List(h.ctx) {
		noErr(t, "List", err)
		if task.Op != ops[task.ID] {
			t.Fatalf("List: task %d op %q, want %q", task.ID, task.Op, ops[task.ID])
		}
	}
}

// testMaxAttempts checks the attempt limit, defaulted and custom, and that a task fails exactly when
// it has used it up.
func testMaxAttempts(t *testing.T, h *harness) {
	if defMax != 3 {
		t.Fatalf("DefaultMaxAttempts = %d, want 3", defMax)
	}
	limits := []struct {
		p    taskstore.CreateParams
		want int
	}{
		{taskstore.CreateParams{}, defMax},
		{taskstore.CreateParams{MaxAttempts: 5}, 5},
		{taskstore.CreateParams{MaxAttempts: -2}, defMax},
		{taskstore.CreateParams{MaxAttempts: 1}, 1},
		{taskstore.CreateParams{Pending: true, MaxAttempts: 2}, 2},
	}
	for i, l := range limits {
		id := h.createWith(t, l.p)
		if id != int64(i) {
			t.Fatalf("Create #%d returned id %d", i, id)
		}
		checkTask(t, fmt.Sprintf("Get after Create(%+v)", l.p), h.get(t, id), taskstore.Task{
			ID: id, State: wire.NotStarted, Pending: l.p.Pending, MaxAttempts: l.want, CreatedAt: start,
		})
	}
	for i, task := range h.list(t) {
		if task.MaxAttempts != limits[i].want {
			t.Fatalf("List[%d] = %s, want MaxAttempts %d", i, format(task), limits[i].want)
		}
	}

	// Let every active task's lease lapse round after round; each fails after exactly its limit.
	for round := 1; round <= 6; round++ {
		for {
			task, err := h.s.Claim(h.ctx, lease)
			if errors.Is(err, taskstore.ErrNoTask) {
				break
			}
			noErr(t, "Claim", err)
			if task.Attempts != round || task.Attempts > limits[task.ID].want {
				t.Fatalf("round %d claimed %s", round, format(task))
			}
		}
		h.clk.Advance(past)
	}
	for i, task := range h.list(t) {
		l := limits[i]
		if l.p.Pending {
			if task.State != wire.NotStarted || task.Attempts != 0 {
				t.Fatalf("pending task %d: %s", i, format(task))
			}
			continue
		}
		if task.State != wire.Failed || task.Attempts != l.want || task.Error != lapsed(l.want, l.want) {
			t.Fatalf("task %d with limit %d after 6 lapses: %s", i, l.want, format(task))
		}
	}
}

func testGetUnknown(t *testing.T, h *harness) {
	_, err := h.s.Get(h.ctx, 0)
	wantErr(t, "Get(0) on empty store", err, taskstore.ErrNotFound)
	h.create(t, false)
	for _, id := range []int64{-1, 1, 1 << 40} {
		_, err := h.s.Get(h.ctx, id)
		wantErr(t, fmt.Sprintf("Get(%d)", id), err, taskstore.ErrNotFound)
	}
}
