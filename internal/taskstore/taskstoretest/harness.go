package taskstoretest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// harness is one subtest's store and the fake clock it runs on.
type harness struct {
	s   taskstore.Store
	clk *fakeClock
	ctx context.Context
}

func (h *harness) create(t *testing.T, pending bool) int64 {
	t.Helper()
	return h.createWith(t, taskstore.CreateParams{Pending: pending})
}

func (h *harness) createWith(t *testing.T, p taskstore.CreateParams) int64 {
	t.Helper()
	id, err := h.s.Create(h.ctx, p)
	if err != nil {
		t.Fatalf("Create(%+v): %v", p, err)
	}
	return id
}

// createN creates n active tasks and checks they got the next n ids.
func (h *harness) createN(t *testing.T, n int) {
	t.Helper()
	first := h.create(t, false)
	for i := 1; i < n; i++ {
		if id := h.create(t, false); id != first+int64(i) {
			t.Fatalf("Create returned id %d, want %d", id, first+int64(i))
		}
	}
}

func (h *harness) get(t *testing.T, id int64) taskstore.Task {
	t.Helper()
	task, err := h.s.Get(h.ctx, id)
	if err != nil {
		t.Fatalf("Get(%d): %v", id, err)
	}
	return task
}

func (h *harness) claim(t *testing.T) taskstore.Task {
	t.Helper()
	task, err := h.s.Claim(h.ctx, lease)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	return task
}

// claimID claims, checks the claimed task's id, and checks that the claim result agrees with Get and
// issued a token larger than the task had.
func (h *harness) claimID(t *testing.T, want int64) taskstore.Task {
	t.Helper()
	before, err := h.s.Get(h.ctx, want)
	if err != nil {
		t.Fatalf("Get(%d) before Claim: %v", want, err)
	}
	task := h.claim(t)
	if task.ID != want {
		t.Fatalf("Claim got task %d, want %d", task.ID, want)
	}
	if task.Token <= before.Token {
		t.Fatalf("Claim of task %d issued token %d, not above its previous %d", want, task.Token, before.Token)
	}
	checkTask(t, "Get after Claim", h.get(t, want), task)
	return task
}

// noTask checks that nothing is claimable.
func (h *harness) noTask(t *testing.T, what string) {
	t.Helper()
	task, err := h.s.Claim(h.ctx, lease)
	if !errors.Is(err, taskstore.ErrNoTask) {
		t.Fatalf("%s: Claim = %s, %v; want ErrNoTask", what, format(task), err)
	}
}

func (h *harness) fail(t *testing.T, id, token int64, reason string, permanent bool) taskstore.Task {
	t.Helper()
	task, err := h.s.Fail(h.ctx, id, token, reason, permanent)
	if err != nil {
		t.Fatalf("Fail(%d, token %d, %q, permanent=%v): %v", id, token, reason, permanent, err)
	}
	checkTask(t, "Get after Fail vs Fail's result", h.get(t, id), task)
	return task
}

// finish calls Finish and, when it succeeds, checks that the task it returns is the task Get reads
// now: the finish's own result, or on a retry the task as the first finish left it.
func (h *harness) finish(t *testing.T, id, token int64) error {
	t.Helper()
	task, err := h.s.Finish(h.ctx, id, token)
	if err != nil {
		return err
	}
	checkTask(t, fmt.Sprintf("Get after Finish(%d, token %d) vs Finish's result", id, token), h.get(t, id), task)
	return nil
}

func (h *harness) list(t *testing.T) []taskstore.Task {
	t.Helper()
	var out []taskstore.Task
	for task, err := range h.s.List(h.ctx) {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		out = append(out, task)
	}
	return out
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// checkTask compares every field; times with Equal, so location and monotonic readings don't matter.
func checkTask(t *testing.T, what string, got, want taskstore.Task) {
	t.Helper()
	if !sameTask(got, want) {
		t.Fatalf("%s:\n got  %s\n want %s", what, format(got), format(want))
	}
}

func sameTask(got, want taskstore.Task) bool {
	return got.ID == want.ID && got.State == want.State && got.Pending == want.Pending &&
		got.Attempts == want.Attempts && got.MaxAttempts == want.MaxAttempts && got.Token == want.Token &&
		got.Error == want.Error && got.Op == want.Op && got.CreatedAt.Equal(want.CreatedAt) &&
		got.StartedAt.Equal(want.StartedAt) && got.FinishedAt.Equal(want.FinishedAt) &&
		got.LeaseUntil.Equal(want.LeaseUntil) && got.RetryAt.Equal(want.RetryAt) && got.Retries == want.Retries &&
		got.Owner == want.Owner
}

// checkTasks compares two task lists with checkTask.
func checkTasks(t *testing.T, what string, got, want []taskstore.Task) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tasks, want %d", what, len(got), len(want))
	}
	for i := range want {
		checkTask(t, fmt.Sprintf("%s: task %d", what, i), got[i], want[i])
	}
}

func format(x taskstore.Task) string {
	tf := func(tm time.Time) string {
		if tm.IsZero() {
			return "zero"
		}
		return tm.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("{ID:%d State:%v Pending:%v Attempts:%d/%d Token:%d Op:%q Error:%q Created:%s Started:%s Finished:%s LeaseUntil:%s RetryAt:%s Retries:%d Owner:%q}",
		x.ID, x.State, x.Pending, x.Attempts, x.MaxAttempts, x.Token, x.Op, x.Error,
		tf(x.CreatedAt), tf(x.StartedAt), tf(x.FinishedAt), tf(x.LeaseUntil), tf(x.RetryAt), x.Retries, x.Owner)
}
