package taskstoretest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// claimN is ClaimN that must not fail; it checks that every task it took agrees with Get.
func (h *harness) claimN(t *testing.T, n int) []taskstore.Task {
	t.Helper()
	got, err := h.s.ClaimN(h.ctx, n, lease)
	if err != nil {
		t.Fatalf("ClaimN(%d): %v", n, err)
	}
	for _, task := range got {
		checkTask(t, fmt.Sprintf("Get after ClaimN(%d)", n), h.get(t, task.ID), task)
	}
	return got
}

func ids(ts []taskstore.Task) []int64 {
	out := make([]int64, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

// testClaimNDistinct: a batch takes distinct tasks in id order, each a claim of its own, and fewer
// when fewer are queued.
func testClaimNDistinct(t *testing.T, h *harness) {
	h.createN(t, 10)
	now := h.clk.Advance(time.Second)
	first := h.claimN(t, 4)
	if got := ids(first); !slices.Equal(got, []int64{0, 1, 2, 3}) {
		t.Fatalf("first ClaimN(4) took %v, want [0 1 2 3]", got)
	}
	for _, got := range first {
		if got.Token <= 0 {
			t.Fatalf("ClaimN issued token %d", got.Token)
		}
		checkTask(t, "ClaimN result", got, taskstore.Task{
			ID: got.ID, State: wire.InProgress, Attempts: 1, MaxAttempts: defMax, Token: got.Token,
			CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease),
		})
	}
	if got := ids(h.claimN(t, 4)); !slices.Equal(got, []int64{4, 5, 6, 7}) {
		t.Fatalf("second ClaimN(4) took %v, want [4 5 6 7]", got)
	}
	if got := ids(h.claimN(t, 4)); !slices.Equal(got, []int64{8, 9}) {
		t.Fatalf("ClaimN(4) with two queued took %v, want [8 9]", got)
	}
	if got, err := h.s.ClaimN(h.ctx, 4, lease); !errors.Is(err, taskstore.ErrNoTask) {
		t.Fatalf("ClaimN(4) with nothing queued = %v, %v; want ErrNoTask", ids(got), err)
	}

	// Each task of a batch is a claim of its own: finishing one leaves the others held.
	noErr(t, "Finish(1)", h.finish(t, 1, first[1].Token))
	if got := h.get(t, 2); got.State != wire.InProgress {
		t.Fatalf("after finishing task 1 of a batch, task 2 is %s", format(got))
	}

	// Bounds: refused, not ErrNoTask.
	for _, n := range []int{0, -1, taskstore.MaxClaimBatch + 1} {
		if _, err := h.s.ClaimN(h.ctx, n, lease); err == nil || errors.Is(err, taskstore.ErrNoTask) {
			t.Errorf("ClaimN(%d) = %v, want a refusal", n, err)
		}
	}
}

// testClaimNLapsed: a batch settles lapsed leases first and takes those tasks back, with the next
// attempt and a larger token.
func testClaimNLapsed(t *testing.T, h *harness) {
	h.createN(t, 3)
	old := h.claimN(t, 2)
	h.clk.Advance(past)
	got := h.claimN(t, 3)
	if !slices.Equal(ids(got), []int64{0, 1, 2}) {
		t.Fatalf("ClaimN(3) after a lapse took %v, want [0 1 2]", ids(got))
	}
	for i, o := range old {
		if got[i].Attempts != 2 || got[i].Token <= o.Token {
			t.Fatalf("reclaim of lapsed task %d: %s, old token %d", o.ID, format(got[i]), o.Token)
		}
	}
	if got[2].Attempts != 1 {
		t.Fatalf("never-claimed task in the batch: %s", format(got[2]))
	}
}

// testClaimNFair: owners take turns within a batch as across claims: one owner's burst does not fill
// a batch while another owner waits.
func testClaimNFair(t *testing.T, h *harness) {
	a := h.createOwned(t, "a", 200)
	b := h.createOwned(t, "b", 1)[0]
	got := h.claimN(t, 2)
	if !slices.Contains(ids(got), b) {
		t.Fatalf("first ClaimN(2) took %v; want b's task %d among them", ids(got), b)
	}
	// a's tasks go in id order around it, in the batch and after.
	rest := h.claimN(t, 3)
	var aIDs []int64
	for _, task := range append(got, rest...) {
		if task.ID != b {
			aIDs = append(aIDs, task.ID)
		}
	}
	if !slices.Equal(aIDs, a[:len(aIDs)]) {
		t.Fatalf("a's tasks claimed as %v, want %v", aIDs, a[:len(aIDs)])
	}
}

// testClaimNConcurrent: concurrent batch claimers never take the same task, and together take all.
func testClaimNConcurrent(t *testing.T, h *harness) {
	h.createN(t, 200)
	claimConcurrently(t, h, 200)
}

// testClaimNConcurrentOwners is testClaimNConcurrent over tasks of several owners, whose turns each
// batch takes in an order of its own.
func testClaimNConcurrentOwners(t *testing.T, h *harness) {
	for i := range 200 {
		h.createWith(t, taskstore.CreateParams{Owner: fmt.Sprintf("owner-%d", i%5)})
	}
	claimConcurrently(t, h, 200)
}

// claimConcurrently drains the queue of tasks (ids 0 to tasks-1) with concurrent batch claimers and
// checks that each task was claimed once.
func claimConcurrently(t *testing.T, h *harness, tasks int) {
	t.Helper()
	const workers, batch = 6, 7
	claimed := make([][]taskstore.Task, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				got, err := h.s.ClaimN(h.ctx, batch, lease)
				if errors.Is(err, taskstore.ErrNoTask) {
					return
				}
				if err != nil {
					t.Errorf("ClaimN: %v", err)
					return
				}
				if len(got) == 0 || len(got) > batch {
					t.Errorf("ClaimN(%d) took %d tasks", batch, len(got))
					return
				}
				claimed[w] = append(claimed[w], got...)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	checkClaimedOnce(t, h, claimed, tasks, "concurrent batch claims")
}
