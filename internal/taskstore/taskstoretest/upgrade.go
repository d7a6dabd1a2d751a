package taskstoretest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// UpgradedTasks are the tasks a store must list, at now, after it upgraded a database of an older schema
// that its upgrade test made by hand with one task in every state an older version could leave: queued
// (with an op), pending, in progress, in progress with its lease over (so queued again), finished,
// failed, and queued again after a failed attempt.
func UpgradedTasks(now time.Time) []taskstore.Task {
	ts := func(d time.Duration) time.Time { return now.Add(d) }
	return []taskstore.Task{
		{ID: 0, State: wire.NotStarted, MaxAttempts: 3, CreatedAt: ts(-9 * time.Hour), Op: "swap"},
		{ID: 1, State: wire.NotStarted, Pending: true, MaxAttempts: 3, CreatedAt: ts(-8 * time.Hour)},
		{ID: 2, State: wire.InProgress, Attempts: 1, MaxAttempts: 3, Token: 1, CreatedAt: ts(-7 * time.Hour),
			StartedAt: ts(-time.Minute), LeaseUntil: ts(time.Hour), Op: "grayscale"},
		{ID: 3, State: wire.NotStarted, Attempts: 1, MaxAttempts: 3, Token: 1, Error: "lease lapsed on attempt 1 of 3",
			CreatedAt: ts(-6 * time.Hour), StartedAt: ts(-time.Hour)},
		{ID: 4, State: wire.Finished, Attempts: 1, MaxAttempts: 3, Token: 1, CreatedAt: ts(-5 * time.Hour),
			StartedAt: ts(-5 * time.Hour), FinishedAt: ts(-4 * time.Hour)},
		{ID: 5, State: wire.Failed, Attempts: 1, MaxAttempts: 1, Token: 1, Error: "broken",
			CreatedAt: ts(-4 * time.Hour), StartedAt: ts(-4 * time.Hour), FinishedAt: ts(-3 * time.Hour)},
		{ID: 6, State: wire.NotStarted, Attempts: 1, MaxAttempts: 3, Token: 1, Error: "flaky",
			CreatedAt: ts(-3 * time.Hour), StartedAt: ts(-3 * time.Hour)},
	}
}

// CheckUpgradedTasks checks that s, which upgraded such a database, lists UpgradedTasks(now) and counts
// them.
func CheckUpgradedTasks(t *testing.T, s taskstore.Store, now time.Time) {
	t.Helper()
	var got []taskstore.Task
	for task, err := range s.List(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, task)
	}
	if want := UpgradedTasks(now); !slices.Equal(got, want) {
		t.Fatalf("tasks after the upgrade:\n got  %+v\n want %+v", got, want)
	}
	if c, err := s.Counts(t.Context()); err != nil ||
		c != (taskstore.Counts{Queued: 3, Pending: 1, Processing: 1, Finished: 1, Failed: 1}) {
		t.Fatalf("Counts after the upgrade = %+v, %v", c, err)
	}
}

// CheckUpgradedWorks checks that the features newer than the old schema work on the upgraded tasks of s:
// the claim from before the upgrade reports a transient failure, and its task waits while the others are
// claimed in id order; CreateOnce makes the next task and then replays it; the pending task can be
// abandoned.
func CheckUpgradedWorks(t *testing.T, s taskstore.Store, now time.Time) {
	t.Helper()
	ctx := t.Context()
	retried, err := s.Retry(ctx, 2, 1, "storage unavailable", taskstore.RetryBackoff{Min: time.Minute, Max: time.Hour})
	if err != nil || retried.Attempts != 0 || retried.Retries != 1 || retried.RetryAt.Before(now.Add(30*time.Second)) {
		t.Fatalf("Retry of a claim from before the upgrade = %+v, %v", retried, err)
	}
	for _, id := range []int64{0, 3, 6} {
		if task, err := s.Claim(ctx, time.Minute); err != nil || task.ID != id {
			t.Fatalf("Claim = %+v, %v; want task %d", task, err, id)
		}
	}
	if _, err := s.Claim(ctx, time.Minute); !errors.Is(err, taskstore.ErrNoTask) {
		t.Fatalf("Claim with task 2 waiting: %v, want ErrNoTask", err)
	}
	for i, wantReplay := range []bool{false, true} {
		if task, replayed, err := s.CreateOnce(ctx, taskstore.CreateParams{}, "key", time.Hour); err != nil ||
			replayed != wantReplay || task.ID != 7 {
			t.Fatalf("CreateOnce #%d after the upgrade = %+v, %v, %v; want task 7", i, task, replayed, err)
		}
	}
	if err := s.Abandon(ctx, 1, ""); err != nil {
		t.Fatalf("Abandon of the pending task from before the upgrade: %v", err)
	}
}
