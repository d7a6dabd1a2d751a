package taskstoretest

import (
	"cmp"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testConcurrentCreate(t *testing.T, h *harness) {
	const workers, per = 8, 25
	ids := make(chan int64, workers*per)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range per {
				id, err := h.s.Create(h.ctx, taskstore.CreateParams{})
				if err != nil {
					t.Errorf("Create: %v", err)
					return
				}
				ids <- id
			}
		})
	}
	wg.Wait()
	close(ids)
	if t.Failed() {
		t.FailNow()
	}
	got := slices.Sorted(func(yield func(int64) bool) {
		for id := range ids {
			if !yield(id) {
				return
			}
		}
	})
	for i, id := range got {
		if id != int64(i) {
			t.Fatalf("concurrent Create ids sorted = %v..., want 0..%d each once", got[:min(len(got), i+1)], workers*per-1)
		}
	}
	if len(got) != workers*per {
		t.Fatalf("got %d ids, want %d", len(got), workers*per)
	}
}

func testConcurrentClaim(t *testing.T, h *harness) {
	const workers, tasks = 8, 200
	h.createN(t, tasks)
	claimed := make([][]taskstore.Task, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				task, err := h.s.Claim(h.ctx, lease)
				if errors.Is(err, taskstore.ErrNoTask) {
					return
				}
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				if task.Attempts != 1 || task.State != wire.InProgress || task.Token <= 0 {
					t.Errorf("claimed %s", format(task))
				}
				claimed[w] = append(claimed[w], task)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for w, got := range claimed {
		// Each worker sees ids increasing: the queue is FIFO even under contention.
		if !slices.IsSortedFunc(got, func(a, b taskstore.Task) int { return cmp.Compare(a.ID, b.ID) }) {
			t.Errorf("worker %d claimed ids out of order", w)
		}
	}
	checkClaimedOnce(t, h, claimed, tasks, "concurrent claims")
}

// checkClaimedOnce checks that concurrent claimers, whose claims are claimed, took each of the tasks
// (ids 0 to tasks-1) exactly once, and that each is now in progress after one attempt under the token
// it was claimed with.
func checkClaimedOnce(t *testing.T, h *harness, claimed [][]taskstore.Task, tasks int, what string) {
	t.Helper()
	seen := make([]int, tasks)
	tokens := make([]int64, tasks)
	for _, got := range claimed {
		for _, task := range got {
			if task.ID < 0 || task.ID >= int64(tasks) {
				t.Fatalf("claimed unknown id %d", task.ID)
			}
			seen[task.ID]++
			tokens[task.ID] = task.Token
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("task %d claimed %d times, want once", id, n)
		}
	}
	for _, task := range h.list(t) {
		if task.State != wire.InProgress || task.Attempts != 1 || task.Token != tokens[task.ID] {
			t.Fatalf("after %s: %s, claimed with token %d", what, format(task), tokens[task.ID])
		}
	}
}

// testConcurrentFinishVsReclaim races late Finishes by holders whose leases lapsed against workers
// claiming those tasks again: for every task exactly one side must win.
func testConcurrentFinishVsReclaim(t *testing.T, h *harness) {
	const tasks, claimers = 60, 4
	h.createN(t, tasks)
	old := make([]int64, tasks)
	for i := range int64(tasks) {
		old[i] = h.claimID(t, i).Token
	}
	h.clk.Advance(past)

	finishErr := make([]error, tasks)
	reclaimed := make([][]taskstore.Task, claimers)
	var wg sync.WaitGroup
	for i := range tasks {
		wg.Go(func() { _, finishErr[i] = h.s.Finish(h.ctx, int64(i), old[i]) })
	}
	for w := range claimers {
		wg.Go(func() {
			for {
				task, err := h.s.Claim(h.ctx, lease)
				if errors.Is(err, taskstore.ErrNoTask) {
					return
				}
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				reclaimed[w] = append(reclaimed[w], task)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	byID := make(map[int64]taskstore.Task)
	for _, got := range reclaimed {
		for _, task := range got {
			if _, dup := byID[task.ID]; dup {
				t.Fatalf("task %d reclaimed twice", task.ID)
			}
			byID[task.ID] = task
		}
	}
	finished := 0
	for i := range int64(tasks) {
		got := h.get(t, i)
		if re, ok := byID[i]; ok {
			if !errors.Is(finishErr[i], taskstore.ErrStaleToken) {
				t.Fatalf("task %d was reclaimed, yet the old holder's Finish returned %v", i, finishErr[i])
			}
			if re.Token <= old[i] || re.Attempts != 2 {
				t.Fatalf("reclaim of task %d: %s, old token %d", i, format(re), old[i])
			}
			checkTask(t, "reclaimed task", got, re)
			continue
		}
		if finishErr[i] != nil {
			t.Fatalf("task %d was not reclaimed, yet the old holder's Finish returned %v", i, finishErr[i])
		}
		if got.State != wire.Finished || got.Token != old[i] || got.Attempts != 1 {
			t.Fatalf("task %d finished by its old holder: %s", i, format(got))
		}
		finished++
	}
	t.Logf("%d of %d tasks finished late, %d reclaimed", finished, tasks, tasks-finished)
}
