package taskstoretest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// createOwned creates n active tasks of owner and returns their ids.
func (h *harness) createOwned(t *testing.T, owner string, n int) []int64 {
	t.Helper()
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = h.createWith(t, taskstore.CreateParams{Owner: owner})
	}
	return ids
}

// drain claims until ErrNoTask and returns the claimed tasks in claim order.
func (h *harness) drain(t *testing.T) []taskstore.Task {
	t.Helper()
	var got []taskstore.Task
	for {
		task, err := h.s.Claim(h.ctx, lease)
		if errors.Is(err, taskstore.ErrNoTask) {
			return got
		}
		noErr(t, "Claim", err)
		got = append(got, task)
	}
}

func testOwnerKept(t *testing.T, h *harness) {
	id := h.createWith(t, taskstore.CreateParams{Owner: "key:alice", Op: "blur:1"})
	if got := h.get(t, id); got.Owner != "key:alice" {
		t.Fatalf("Get: owner %q, want key:alice", got.Owner)
	}
	once, _, err := h.s.CreateOnce(h.ctx, taskstore.CreateParams{Owner: "2001:db8::/64"}, "k1", time.Hour)
	noErr(t, "CreateOnce", err)
	if once.Owner != "2001:db8::/64" {
		t.Fatalf("CreateOnce: owner %q, want 2001:db8::/64", once.Owner)
	}
	for range 2 {
		got := h.claim(t)
		if want := map[int64]string{id: "key:alice", once.ID: "2001:db8::/64"}[got.ID]; got.Owner != want {
			t.Fatalf("Claim: %s, want owner %q", format(got), want)
		}
	}
	list := h.list(t)
	if len(list) != 2 || list[0].Owner != "key:alice" || list[1].Owner != "2001:db8::/64" {
		t.Fatalf("List owners: %+v", list)
	}
}

// testFairBurst: one owner's burst does not hold back another owner's task.
func testFairBurst(t *testing.T, h *harness) {
	a := h.createOwned(t, "a", 200)
	b := h.createOwned(t, "b", 1)[0]
	first, second := h.claim(t), h.claim(t)
	if first.ID != b && second.ID != b {
		t.Fatalf("first two claims took tasks %d and %d; want b's task %d among them", first.ID, second.ID, b)
	}
	// a's tasks still go in id order around it.
	next := a[0]
	if first.ID == a[0] || second.ID == a[0] {
		next = a[1]
	}
	if got := h.claim(t); got.ID != next {
		t.Fatalf("third claim took task %d, want a's %d", got.ID, next)
	}
}

// testFairInterleave: owners with work take turns, each in id order.
func testFairInterleave(t *testing.T, h *harness) {
	owners := []string{"a", "b", "c"}
	for _, o := range owners {
		h.createOwned(t, o, 4) // a: 0-3, b: 4-7, c: 8-11
	}
	got := h.drain(t)
	if len(got) != 12 {
		t.Fatalf("drained %d tasks, want 12", len(got))
	}
	last := map[string]int64{}
	for i, task := range got {
		if prev, ok := last[task.Owner]; ok && task.ID <= prev {
			t.Fatalf("claim %d took %s's task %d after its task %d: not in id order", i, task.Owner, task.ID, prev)
		}
		last[task.Owner] = task.ID
		if i%3 == 2 {
			round := map[string]bool{got[i-2].Owner: true, got[i-1].Owner: true, task.Owner: true}
			if len(round) != 3 {
				t.Fatalf("claims %d-%d took owners %q, %q, %q; want each of a, b, c once",
					i-2, i, got[i-2].Owner, got[i-1].Owner, task.Owner)
			}
		}
	}
	// An owner that comes back after the others were served goes first: it waited longest.
	h.createOwned(t, "b", 1)
	h.createOwned(t, "a", 1)
	if got := h.claim(t); got.Owner != "a" {
		t.Fatalf("claim took %s's task; want a's (served longest ago)", got.Owner)
	}
}

// testFairNoOwner: tasks without an owner (old rows, clients that name none) are one owner.
func testFairNoOwner(t *testing.T, h *harness) {
	h.createOwned(t, "", 3)  // 0-2
	h.createOwned(t, "x", 1) // 3
	h.createOwned(t, "", 1)  // 4
	var ids []int64
	for _, task := range h.drain(t) {
		ids = append(ids, task.ID)
	}
	if fmt.Sprint(ids) != "[0 3 1 2 4]" && fmt.Sprint(ids) != "[3 0 1 2 4]" {
		t.Fatalf("claim order %v; want x's task 3 among the first two, then 1 2 4", ids)
	}
}

// testFairRequeued: tasks that become claimable again (released, failed with attempts left, lapsed,
// due after a retry wait, set not started, activated) are served as their owner's, and tasks that are
// not claimable (waiting for a retry, pending) never hold a turn.
// testFairPendingKeepsTurn: an owner whose only task left is a pending upload still keeps something, so
// it keeps its place in the turn: when that upload is activated, the owner served longer ago goes first.
func testFairPendingKeepsTurn(t *testing.T, h *harness) {
	a1 := h.createWith(t, taskstore.CreateParams{Owner: "a"})
	b := h.createOwned(t, "b", 2)
	a2 := h.createWith(t, taskstore.CreateParams{Owner: "a", Pending: true})
	first, second := h.claim(t), h.claim(t)
	if first.ID != a1 || second.ID != b[0] {
		t.Fatalf("claimed %d then %d, want a's %d then b's %d", first.ID, second.ID, a1, b[0])
	}
	// a keeps only its pending upload; b, served after a, has a task queued.
	noErr(t, "Finish", h.finish(t, a1, first.Token))
	noErr(t, "Delete", h.s.Delete(h.ctx, a1))
	noErr(t, "Activate", h.s.Activate(h.ctx, a2, 100))
	if got := h.claim(t); got.ID != a2 {
		t.Fatalf("claimed %s, want a's %d: a was served before b", format(got), a2)
	}
	if got := h.claim(t); got.ID != b[1] {
		t.Fatalf("claimed %s, want b's %d", format(got), b[1])
	}
	u, err := h.s.Usage(h.ctx, "a")
	noErr(t, "Usage", err)
	if u != (taskstore.Usage{Tasks: 1, Bytes: 100}) {
		t.Fatalf("a's usage = %+v, want its one task of 100 bytes", u)
	}
}

func testFairRequeued(t *testing.T, h *harness) {
	a := h.createOwned(t, "a", 6)
	pend := h.createWith(t, taskstore.CreateParams{Owner: "b", Pending: true})
	got := map[int64]taskstore.Task{}
	for range 6 {
		task := h.claim(t)
		got[task.ID] = task
	}
	h.noTask(t, "a's tasks all claimed, b's pending")
	noErr(t, "Release", h.s.Release(h.ctx, a[0], got[a[0]].Token))
	h.fail(t, a[1], got[a[1]].Token, "transient", false)
	_, err := h.s.Retry(h.ctx, a[2], got[a[2]].Token, "busy", taskstore.RetryBackoff{Min: 10 * lease, Max: 10 * lease})
	noErr(t, "Retry", err)
	noErr(t, "Set NotStarted", h.s.Set(h.ctx, a[3], wire.NotStarted, 0))
	noErr(t, "Finish", h.finish(t, a[5], got[a[5]].Token))
	noErr(t, "Activate", h.s.Activate(h.ctx, pend, 0))
	// Claimable: a0, a1, a3 (a's) and b's; a2 waits for its retry; a4 holds its lease.
	order := h.drain(t)
	if len(order) != 4 {
		t.Fatalf("drained %d tasks, want 4 (a's 0, 1, 3 and b's)", len(order))
	}
	// b joined the turn when its task was activated, last: a goes once, then b.
	var ids []int64
	for _, task := range order {
		ids = append(ids, task.ID)
	}
	if want := []int64{a[0], pend, a[1], a[3]}; fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("claimed %v, want %v", ids, want)
	}
	// The leases lapse and a2's retry comes due: all come back. a was served last, so b goes first,
	// then a's tasks in id order.
	h.clk.Advance(11 * lease)
	ids = nil
	for _, task := range h.drain(t) {
		ids = append(ids, task.ID)
	}
	if want := []int64{pend, a[0], a[1], a[2], a[3], a[4]}; fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Fatalf("after the lapse claimed %v, want %v", ids, want)
	}
}

// testFairConcurrent: concurrent claimers over several owners claim every task once.
func testFairConcurrent(t *testing.T, h *harness) {
	const workers, owners, per = 8, 5, 40
	for o := range owners {
		h.createOwned(t, fmt.Sprintf("owner%d", o), per)
	}
	lone := h.createOwned(t, "lone", 1)[0]
	var mu sync.Mutex
	var order []int64
	var wg sync.WaitGroup
	for range workers {
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
				mu.Lock()
				order = append(order, task.ID)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := map[int64]bool{}
	for _, id := range order {
		if seen[id] {
			t.Fatalf("task %d claimed twice", id)
		}
		seen[id] = true
	}
	if len(seen) != owners*per+1 {
		t.Fatalf("claimed %d tasks, want %d", len(seen), owners*per+1)
	}
	// The lone owner's task is served in the first round of turns, give or take the claims in flight.
	for i, id := range order {
		if id == lone {
			if i > owners+1+workers {
				t.Fatalf("lone owner's task was claim %d of %d; want within the first round", i, len(order))
			}
			break
		}
	}
}
