package taskstoretest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// hold is how long the suite's sweepers hold a batch.
const hold = 10 * time.Minute

func (h *harness) claimExpired(t *testing.T, olderThan time.Duration, limit int) []int64 {
	t.Helper()
	ids, err := h.s.ClaimExpired(h.ctx, olderThan, limit, hold)
	if err != nil {
		t.Fatalf("ClaimExpired(%v, %d): %v", olderThan, limit, err)
	}
	return ids
}

func checkIDs(t *testing.T, what string, got, want []int64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: got ids %v, want %v", what, got, want)
	}
}

func testClaimExpired(t *testing.T, h *harness) {
	h.lifecycleTasks(t) // 0 lapsed out (settled when its lease lapsed), 1 finished, 2 failed, 3..5 not settled
	h.clk.Advance(time.Hour)
	if _, err := h.s.Cancel(h.ctx, 4); err != nil {
		t.Fatalf("Cancel(4): %v", err)
	}
	const age = 2 * time.Hour
	checkIDs(t, "nothing settled long enough", h.claimExpired(t, age, 10), nil)

	h.clk.Advance(time.Hour)
	checkIDs(t, "first batch", h.claimExpired(t, age, 2), []int64{0, 1})
	checkIDs(t, "second batch skips the held one", h.claimExpired(t, age, 2), []int64{2})
	checkIDs(t, "all held", h.claimExpired(t, age, 2), nil)

	// The sweeper removed 0 and died holding 1 and 2: they are taken again once the hold (shorter than an
	// hour) passes, with the cancelled task that has now been settled long enough. Queued, pending and processing tasks never
	// are, however old.
	noErr(t, "Delete(0)", h.s.Delete(h.ctx, 0))
	h.clk.Advance(time.Hour)
	checkIDs(t, "after the hold", h.claimExpired(t, age, 10), []int64{1, 2, 4})
	checkIDs(t, "processing, queued and pending", h.claimExpired(t, 0, 10), nil)
	for _, id := range []int64{3, 5} {
		if got := h.get(t, id); got.State == wire.Finished || got.State == wire.Failed || got.State == wire.Cancelled {
			t.Fatalf("task %d after ClaimExpired: %s", id, format(got))
		}
	}

	for _, bad := range []struct {
		age   time.Duration
		limit int
		hold  time.Duration
	}{{-time.Second, 1, hold}, {age, 0, hold}, {age, 1, 0}} {
		if _, err := h.s.ClaimExpired(h.ctx, bad.age, bad.limit, bad.hold); err == nil {
			t.Fatalf("ClaimExpired(%v, %d, %v) succeeded", bad.age, bad.limit, bad.hold)
		}
	}
}

// testClaimExpiredConcurrent runs sweepers at once: every settled task goes to exactly one of them.
func testClaimExpiredConcurrent(t *testing.T, h *harness) {
	const n, sweepers, batch = 40, 4, 3
	h.createN(t, n)
	for id := range int64(n) {
		state := []wire.State{wire.Finished, wire.Failed}[id%2]
		noErr(t, "Set", h.s.Set(h.ctx, id, state, lease))
	}
	h.clk.Advance(time.Hour)
	var (
		mu   sync.Mutex
		got  []int64
		wg   sync.WaitGroup
		errs = make(chan error, sweepers)
	)
	for range sweepers {
		wg.Go(func() {
			for {
				ids, err := h.s.ClaimExpired(h.ctx, time.Minute, batch, hold)
				if err != nil {
					errs <- err
					return
				}
				if len(ids) == 0 {
					return
				}
				if len(ids) > batch {
					t.Errorf("ClaimExpired returned %d ids, over the limit %d", len(ids), batch)
				}
				mu.Lock()
				got = append(got, ids...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("ClaimExpired: %v", err)
	}
	slices.Sort(got)
	want := make([]int64, n)
	for i := range want {
		want[i] = int64(i)
	}
	checkIDs(t, "the sweepers' batches together", got, want)
}
