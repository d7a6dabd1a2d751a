package taskstoretest

import (
	"cmp"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// answers is what every method that takes an id says about it, as the sentinel each answer wraps
// ("ok" for none): a removed tombstone must answer as the tombstone did.
func (h *harness) answers(id, token int64) []string {
	sentinels := []error{taskstore.ErrNotFound, taskstore.ErrCancelled, taskstore.ErrNotPending, taskstore.ErrSettled,
		taskstore.ErrNotInProgress, taskstore.ErrStaleToken, taskstore.ErrInvalidState}
	name := func(err error) string {
		if err == nil {
			return "ok"
		}
		for _, s := range sentinels {
			if errors.Is(err, s) {
				return s.Error()
			}
		}
		return "unexpected: " + err.Error()
	}
	_, getErr := h.s.Get(h.ctx, id)
	_, cancelErr := h.s.Cancel(h.ctx, id)
	_, extendErr := h.s.Extend(h.ctx, id, token, lease)
	_, failErr := h.s.Fail(h.ctx, id, token, "boom", true)
	_, retryErr := h.s.Retry(h.ctx, id, token, "away", taskstore.RetryBackoff{Min: time.Second, Max: time.Second})
	_, finishErr := h.s.Finish(h.ctx, id, token)
	var got []string
	for _, err := range []error{
		getErr, cancelErr, extendErr, failErr, retryErr,
		finishErr, h.s.Release(h.ctx, id, token),
		h.s.Set(h.ctx, id, wire.NotStarted, lease), h.s.Activate(h.ctx, id, 0), h.s.Abandon(h.ctx, id, "gone"),
		h.s.Delete(h.ctx, id),
	} {
		got = append(got, name(err))
	}
	return got
}

func (h *harness) purge(t *testing.T, limit, want int) {
	t.Helper()
	n, err := h.s.PurgeDeleted(h.ctx, past, limit)
	if err != nil || n != want {
		t.Fatalf("PurgeDeleted(%v, %d) = %d, %v; want %d", past, limit, n, err, want)
	}
}

func testPurgeDeleted(t *testing.T, h *harness) {
	h.createN(t, 3)
	held := h.claimID(t, 0) // 0: deleted while in progress
	done := h.claimID(t, 1) // 1: deleted finished
	noErr(t, "Finish", h.finish(t, 1, done.Token))
	// 2: deleted queued; 3: deleted pending; 4: kept; 5: deleted, the highest id.
	for _, pending := range []bool{true, false, false} {
		h.create(t, pending)
	}
	deleted := []int64{0, 1, 2, 3, 5}
	tokens := map[int64]int64{0: held.Token, 1: done.Token}
	for _, id := range deleted {
		noErr(t, "Delete", h.s.Delete(h.ctx, id))
	}
	before := h.list(t)
	if len(before) != 1 || before[0].ID != 4 {
		t.Fatalf("List after the deletes = %v, want task 4 alone", before)
	}
	tombstone := make(map[int64][]string)
	for _, id := range deleted {
		tombstone[id] = h.answers(id, cmp.Or(tokens[id], 1))
	}

	h.purge(t, 10, 0) // not deleted long enough
	h.clk.Advance(2 * past)
	h.purge(t, 3, 3)
	h.purge(t, 3, 1) // the highest id's tombstone stays: the next id is counted from it
	h.purge(t, 3, 0)

	checkTasks(t, "List after PurgeDeleted", h.list(t), before)
	h.checkCounts(t, "after PurgeDeleted", countsOf(before))
	for _, id := range deleted {
		if got := h.answers(id, cmp.Or(tokens[id], 1)); !slices.Equal(got, tombstone[id]) {
			t.Errorf("task %d answers %q once its tombstone is removed, %q before", id, got, tombstone[id])
		}
	}
	wantErr(t, "Delete of an id never handed out", h.s.Delete(h.ctx, 6), taskstore.ErrNotFound)
	if id := h.create(t, false); id != 6 {
		t.Fatalf("Create after PurgeDeleted = id %d, want 6 (ids are never handed out again)", id)
	}
	// 5 is no longer the highest: its tombstone goes too.
	h.clk.Advance(2 * past)
	h.purge(t, 10, 1)
	h.checkCounts(t, "after the last tombstone went", taskstore.Counts{Queued: 2})
	if got := h.answers(5, 1); !slices.Equal(got, tombstone[5]) {
		t.Errorf("task 5 answers %q once its tombstone is removed, %q before", got, tombstone[5])
	}
	for _, bad := range []struct {
		age   time.Duration
		limit int
	}{{-time.Second, 1}, {0, 0}} {
		if _, err := h.s.PurgeDeleted(h.ctx, bad.age, bad.limit); err == nil {
			t.Errorf("PurgeDeleted(%v, %d) accepted", bad.age, bad.limit)
		}
	}
}
