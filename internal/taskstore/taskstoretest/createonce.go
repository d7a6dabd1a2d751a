package taskstoretest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// createOnce calls CreateOnce, checks whether it replayed, and checks that Get agrees with its result.
func (h *harness) createOnce(t *testing.T, p taskstore.CreateParams, key string, window time.Duration,
	wantReplay bool,
) taskstore.Task {
	t.Helper()
	task, replayed, err := h.s.CreateOnce(h.ctx, p, key, window)
	if err != nil {
		t.Fatalf("CreateOnce(%+v, %q, %v): %v", p, key, window, err)
	}
	if replayed != wantReplay {
		t.Fatalf("CreateOnce(%+v, %q, %v) = %s, replayed %v; want replayed %v", p, key, window, format(task),
			replayed, wantReplay)
	}
	checkTask(t, "Get after CreateOnce vs its result", h.get(t, task.ID), task)
	return task
}

func (h *harness) counts(t *testing.T) taskstore.Counts {
	t.Helper()
	c, err := h.s.Counts(h.ctx)
	noErr(t, "Counts", err)
	return c
}

// testCreateOnce: a key answers with the task it created, as that task is now, for window; then it
// creates again.
func testCreateOnce(t *testing.T, h *harness) {
	const window = time.Hour
	p := taskstore.CreateParams{Op: "resize:10x10", MaxAttempts: 5}
	first := h.createOnce(t, p, "upload-a", window, false)
	checkTask(t, "created once", first, taskstore.Task{
		ID: 0, State: wire.NotStarted, MaxAttempts: 5, Op: "resize:10x10", CreatedAt: start,
	})
	h.createN(t, 1) // 1

	// A replay, whatever its parameters, returns the task and creates nothing.
	before, counts := h.list(t), h.counts(t)
	h.clk.Advance(window / 2)
	checkTask(t, "replay", h.createOnce(t, taskstore.CreateParams{Op: "other", Pending: true}, "upload-a", window, true), first)
	checkTasks(t, "after a replay", h.list(t), before)
	h.checkCounts(t, "after a replay", counts)

	// Another key is another task.
	if b := h.createOnce(t, taskstore.CreateParams{}, "upload-b", window, false); b.ID != 2 {
		t.Fatalf("CreateOnce of another key created task %d, want 2", b.ID)
	}
	// A replay reports the task as it is now: finished, or failed for good (it was no pending upload).
	c := h.claimID(t, 0)
	noErr(t, "Finish(0)", h.finish(t, 0, c.Token))
	if got := h.createOnce(t, p, "upload-a", window, true); got.ID != 0 || got.State != wire.Finished {
		t.Fatalf("replay of a finished task: %s", format(got))
	}
	h.claimID(t, 1)
	c = h.claimID(t, 2)
	h.fail(t, 2, c.Token, "not an image", true)
	if got := h.createOnce(t, p, "upload-b", window, true); got.ID != 2 || got.State != wire.Failed {
		t.Fatalf("replay of a failed task: %s", format(got))
	}

	// Once window has passed (task 0 is exactly that old: not less), the key creates a new task, which
	// answers for it from then on.
	now := h.clk.Advance(window / 2)
	third := h.createOnce(t, p, "upload-a", window, false)
	checkTask(t, "created again after the window", third, taskstore.Task{
		ID: 3, State: wire.NotStarted, MaxAttempts: 5, Op: "resize:10x10", CreatedAt: now,
	})
	h.createOnce(t, p, "upload-a", window, true)
	if got := h.get(t, 0); got.State != wire.Finished {
		t.Fatalf("the old task of the key changed: %s", format(got))
	}
	// The window is the caller's: a shorter one creates again, a zero one always does.
	h.clk.Advance(time.Minute)
	if got := h.createOnce(t, p, "upload-a", time.Minute, false); got.ID != 4 {
		t.Fatalf("CreateOnce with a window the task outlived created %d, want 4", got.ID)
	}
	if got := h.createOnce(t, p, "upload-a", 0, false); got.ID != 5 {
		t.Fatalf("CreateOnce with no window created %d, want 5", got.ID)
	}
	if got := h.createOnce(t, p, "upload-a", window, true); got.ID != 5 {
		t.Fatalf("replay after a zero window = %d, want 5", got.ID)
	}

	// A key is required; a refused call creates nothing, and ids go on without a gap.
	if _, _, err := h.s.CreateOnce(h.ctx, p, "", window); err == nil {
		t.Fatal("CreateOnce with an empty key succeeded")
	}
	if id := h.create(t, false); id != 6 {
		t.Fatalf("Create after CreateOnce calls = %d, want 6", id)
	}
	// Task 1's lease lapsed meanwhile: it is queued again.
	h.checkCounts(t, "end", taskstore.Counts{Queued: 5, Finished: 1, Failed: 1})
}

// testCreateOncePending: a pending upload answers for its key while it may still complete; once it
// failed (abandoned or expired, never acknowledged), the key creates a new task.
func testCreateOncePending(t *testing.T, h *harness) {
	const window = time.Hour
	p := taskstore.CreateParams{Pending: true}
	a := h.createOnce(t, p, "a", window, false) // 0
	if !a.Pending || a.State != wire.NotStarted {
		t.Fatalf("pending CreateOnce: %s", format(a))
	}
	h.createOnce(t, p, "a", window, true)

	noErr(t, "Abandon(0)", h.s.Abandon(h.ctx, 0, "upload broke off"))
	abandoned := h.get(t, 0)
	if got := h.createOnce(t, p, "a", window, false); got.ID != 1 || !got.Pending {
		t.Fatalf("CreateOnce after the upload was abandoned: %s", format(got))
	}
	checkTask(t, "the abandoned task", h.get(t, 0), abandoned)
	h.createOnce(t, p, "a", window, true)
	noErr(t, "Activate(1)", h.s.Activate(h.ctx, 1, 0))
	if got := h.createOnce(t, p, "a", window, true); got.ID != 1 || got.Pending {
		t.Fatalf("replay of an activated upload: %s", format(got))
	}

	h.createOnce(t, p, "e", window, false) // 2
	h.clk.Advance(2 * time.Minute)
	if n, err := h.s.ExpirePending(h.ctx, time.Minute); err != nil || n != 1 {
		t.Fatalf("ExpirePending = %d, %v; want 1", n, err)
	}
	if got := h.createOnce(t, p, "e", window, false); got.ID != 3 {
		t.Fatalf("CreateOnce after the upload expired created %d, want 3", got.ID)
	}
	h.checkCounts(t, "end", taskstore.Counts{Queued: 1, Pending: 1, Failed: 2})
	h.claimID(t, 1)
	h.noTask(t, "only a pending task left")
}

// testConcurrentCreateOnce: concurrent calls with one key create one task, which they all return;
// alongside other keys and plain Creates, ids stay consecutive.
func testConcurrentCreateOnce(t *testing.T, h *harness) {
	const same, others = 16, 8
	h.createN(t, 1)
	type result struct {
		task     taskstore.Task
		replayed bool
	}
	results := make(chan result, same)
	var wg sync.WaitGroup
	for range same {
		wg.Go(func() {
			task, replayed, err := h.s.CreateOnce(h.ctx, taskstore.CreateParams{Op: "same"}, "same", time.Hour)
			if err != nil {
				t.Errorf("CreateOnce: %v", err)
				return
			}
			results <- result{task, replayed}
		})
	}
	for i := range others {
		wg.Go(func() {
			if _, replayed, err := h.s.CreateOnce(h.ctx, taskstore.CreateParams{}, fmt.Sprint("other-", i), time.Hour); err != nil || replayed {
				t.Errorf("CreateOnce of a key of its own: replayed %v, %v", replayed, err)
			}
		})
		wg.Go(func() {
			if _, err := h.s.Create(h.ctx, taskstore.CreateParams{}); err != nil {
				t.Errorf("Create: %v", err)
			}
		})
	}
	wg.Wait()
	close(results)
	if t.Failed() {
		t.FailNow()
	}
	created, n := 0, 0
	var first taskstore.Task
	for r := range results {
		if !r.replayed {
			created++
		}
		if n == 0 {
			first = r.task
		}
		if r.task.ID != first.ID || r.task.Op != "same" {
			t.Fatalf("CreateOnce calls with one key returned %s and %s", format(first), format(r.task))
		}
		n++
	}
	if created != 1 || n != same {
		t.Fatalf("%d of %d CreateOnce calls with one key created a task, want 1", created, n)
	}
	tasks := h.list(t)
	for i, task := range tasks {
		if task.ID != int64(i) {
			t.Fatalf("after concurrent creates, task %d has id %d: ids are not consecutive", i, task.ID)
		}
	}
	if want := 1 + 1 + 2*others; len(tasks) != want {
		t.Fatalf("%d tasks after concurrent creates, want %d", len(tasks), want)
	}
	if id := h.create(t, false); id != int64(len(tasks)) {
		t.Fatalf("Create after concurrent creates = %d, want %d", id, len(tasks))
	}
}
