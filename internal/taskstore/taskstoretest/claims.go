package taskstoretest

import (
	"fmt"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func testClaimFIFO(t *testing.T, h *harness) {
	h.createN(t, 3)
	for i := range int64(3) {
		now := h.clk.Advance(time.Second)
		got := h.claimID(t, i)
		if got.Token <= 0 {
			t.Fatalf("first claim issued token %d", got.Token)
		}
		checkTask(t, "Claim result", got, taskstore.Task{
			ID: i, State: wire.InProgress, Attempts: 1, MaxAttempts: defMax, Token: got.Token,
			CreatedAt: start, StartedAt: now, LeaseUntil: now.Add(lease),
		})
	}
	h.noTask(t, "everything in progress")

	// Tasks created after claims continue the queue.
	h.createN(t, 2)
	h.claimID(t, 3)
	h.claimID(t, 4)
}

func testClaimEmpty(t *testing.T, h *harness) {
	h.noTask(t, "empty store")

	h.create(t, false)
	c := h.claimID(t, 0)
	noErr(t, "Finish(0)", h.finish(t, 0, c.Token))
	h.clk.Advance(10 * lease) // a finished task never comes back, lease or not
	h.noTask(t, "only finished tasks")
}

// testTokensGrow checks that every claim, by Claim or by Set(InProgress), issues a larger token, and
// that nothing else changes it.
func testTokensGrow(t *testing.T, h *harness) {
	h.createN(t, 2)
	if tok := h.get(t, 0).Token; tok != 0 {
		t.Fatalf("never-claimed task has token %d, want 0", tok)
	}
	var tokens []int64
	same := func(what string) {
		t.Helper()
		if got := h.get(t, 0).Token; got != tokens[len(tokens)-1] {
			t.Fatalf("%s changed the token from %d to %d", what, tokens[len(tokens)-1], got)
		}
	}
	grew := func(what string) {
		t.Helper()
		got := h.get(t, 0).Token
		if len(tokens) > 0 && got <= tokens[len(tokens)-1] {
			t.Fatalf("%s: token %d, not above the previous %d", what, got, tokens[len(tokens)-1])
		}
		tokens = append(tokens, got)
	}

	h.claimID(t, 0) // claimID checks the growth itself, and that Get agrees with Claim
	grew("Claim")
	h.fail(t, 0, tokens[len(tokens)-1], "transient", false)
	same("Fail")
	h.claimID(t, 0)
	grew("Claim after Fail")
	h.clk.Advance(past)
	same("a lapse")
	h.claimID(t, 0)
	grew("Claim after a lapse")
	noErr(t, "Release", h.s.Release(h.ctx, 0, tokens[len(tokens)-1]))
	same("Release")
	h.claimID(t, 0)
	grew("Claim after Release")
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, wire.InProgress, lease))
	grew("Set InProgress on an in-progress task")
	noErr(t, "Set NotStarted", h.s.Set(h.ctx, 0, wire.NotStarted, 0))
	same("Set NotStarted")
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, wire.InProgress, lease))
	grew("Set InProgress on a not-started task")
	noErr(t, "Finish", h.finish(t, 0, tokens[len(tokens)-1]))
	same("Finish")
	noErr(t, "Set Failed", h.s.Set(h.ctx, 0, wire.Failed, 0))
	same("Set Failed")
	noErr(t, "Set InProgress", h.s.Set(h.ctx, 0, wire.InProgress, lease))
	grew("Set InProgress on a failed task")

	// Only the most recent token is current.
	for _, old := range tokens[:len(tokens)-1] {
		wantErr(t, fmt.Sprintf("Finish with old token %d", old), h.finish(t, 0, old), taskstore.ErrStaleToken)
	}
	noErr(t, "Finish with the newest token", h.finish(t, 0, tokens[len(tokens)-1]))

	// Task 1 was never touched.
	if got := h.get(t, 1); got.Token != 0 || got.Attempts != 0 {
		t.Fatalf("claims of task 0 changed task 1: %s", format(got))
	}
}
