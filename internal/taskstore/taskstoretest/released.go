package taskstoretest

import (
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// Released is what a released program read back from the database it wrote for an upgrade test: the
// time of its clock then, and the tasks. The programs (testdata/mkschemaN in each store's package) make
// the same nine tasks, one in every state: 0 finished, 1 failed by the worker, 2 failed on a lapsed
// lease, 3 waiting for a retry, 4 in progress (token 1), 5 finished and created with the idempotency
// key ReleasedKey, 6 pending, 7 queued ("invert", 5 attempts), 8 set failed by hand.
type Released struct {
	Now   time.Time
	Tasks []taskstore.Task
}

// ReleasedKey is the idempotency key task 5 of a released database was created with.
const ReleasedKey = "fe-0123456789abcdef"

// ReadReleased reads the JSON file a released program wrote.
func ReadReleased(t *testing.T, path string) Released {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r Released
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Tasks) != 9 {
		t.Fatalf("%s has %d tasks, want the 9 of every released database", path, len(r.Tasks))
	}
	return r
}

// canonical makes tasks comparable with ==: the same instants in UTC, whatever their origin.
func canonical(t taskstore.Task) taskstore.Task {
	for _, tm := range []*time.Time{&t.CreatedAt, &t.StartedAt, &t.FinishedAt, &t.LeaseUntil, &t.RetryAt} {
		*tm = tm.UTC()
	}
	return t
}

// CheckReleased checks a store that opened (and so migrated) a database a released program wrote, on
// r.Clock: every task reads back as that release read it (tasks from before
// owners belong to owner ""), and the work goes on from where it was.
func CheckReleased(t *testing.T, s taskstore.Store, r Released, advance func(time.Duration)) {
	t.Helper()
	ctx := t.Context()
	for _, w := range r.Tasks {
		got, err := s.Get(ctx, w.ID)
		if err != nil {
			t.Fatalf("Get(%d): %v", w.ID, err)
		}
		if canonical(got) != canonical(w) {
			t.Errorf("task %d after the upgrade:\n got %+v\nwant %+v", w.ID, got, w)
		}
	}
	var listed int
	for got, err := range s.List(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if listed >= len(r.Tasks) || canonical(got) != canonical(r.Tasks[listed]) {
			t.Fatalf("List item %d: %+v", listed, got)
		}
		listed++
	}
	if listed != len(r.Tasks) {
		t.Fatalf("List gave %d tasks, want %d", listed, len(r.Tasks))
	}
	counts, err := s.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := (taskstore.Counts{Queued: 2, Pending: 1, Processing: 1, Finished: 2, Failed: 3}); counts != c {
		t.Fatalf("Counts = %+v, want %+v", counts, c)
	}

	// The upgrade counted every task as kept by its owner "", with no bytes (their sizes were never told).
	if u, err := s.Usage(ctx, ""); err != nil || u != (taskstore.Usage{Tasks: int64(len(r.Tasks))}) {
		t.Fatalf("Usage(\"\") after the upgrade = %+v, %v; want %d tasks and no bytes", u, err, len(r.Tasks))
	}

	// The queued task is claimed and finished; the others wait: one for its retry, one for its upload,
	// one for the worker that holds it.
	claimed, err := s.Claim(ctx, time.Hour)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if claimed.ID != 7 || claimed.Op != "invert" || claimed.MaxAttempts != 5 || claimed.Attempts != 1 || claimed.Token != 1 {
		t.Fatalf("Claim = %+v, want the queued task 7 on its first attempt", claimed)
	}
	if _, err := s.Finish(ctx, claimed.ID, claimed.Token); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if _, err := s.Claim(ctx, time.Hour); !errors.Is(err, taskstore.ErrNoTask) {
		t.Fatalf("second Claim: %v, want ErrNoTask", err)
	}
	// The worker that held task 4 across the upgrade reports it with the token it was given.
	if _, err := s.Finish(ctx, 4, 1); err != nil {
		t.Fatalf("Finish of the task in progress across the upgrade: %v", err)
	}
	// The idempotency key still answers for its task.
	again, replayed, err := s.CreateOnce(ctx, taskstore.CreateParams{Pending: true}, ReleasedKey, 24*time.Hour)
	if err != nil || !replayed || again.ID != 5 {
		t.Fatalf("CreateOnce with the released key = %+v, %v, %v; want task 5 replayed", again, replayed, err)
	}
	// The pending upload completes, and the retry comes due: both are claimed, in id order.
	if err := s.Activate(ctx, 6, 0); err != nil {
		t.Fatalf("Activate of the released pending task: %v", err)
	}
	advance(2 * time.Hour)
	for _, id := range []int64{3, 6} {
		c, err := s.Claim(ctx, time.Hour)
		if err != nil || c.ID != id {
			t.Fatalf("Claim = %+v, %v; want task %d", c, err, id)
		}
		if _, err := s.Finish(ctx, c.ID, c.Token); err != nil {
			t.Fatal(err)
		}
	}
	// New tasks carry on the ids, and with an owner.
	id, err := s.Create(ctx, taskstore.CreateParams{Owner: "key:new"})
	if err != nil || id != int64(len(r.Tasks)) {
		t.Fatalf("Create after the upgrade = %d, %v; want id %d", id, err, len(r.Tasks))
	}
	if got, err := s.Get(ctx, id); err != nil || got.Owner != "key:new" || got.State != wire.NotStarted {
		t.Fatalf("Get(%d) = %+v, %v; want a queued task of owner key:new", id, got, err)
	}
	// Deleting a released task frees its place in the usage of its owner.
	if err := s.Delete(ctx, 0); err != nil {
		t.Fatalf("Delete(0): %v", err)
	}
	if u, err := s.Usage(ctx, ""); err != nil || u != (taskstore.Usage{Tasks: int64(len(r.Tasks)) - 1}) {
		t.Fatalf("Usage(\"\") after a delete = %+v, %v; want %d tasks", u, err, len(r.Tasks)-1)
	}
	if u, err := s.Usage(ctx, "key:new"); err != nil || u != (taskstore.Usage{Tasks: 1}) {
		t.Fatalf("Usage(key:new) = %+v, %v; want 1 task", u, err)
	}
}

// Clock is a clock at r.Now, safe for concurrent use, for the store that opens the database, and what
// moves it.
func (r Released) Clock() (now func() time.Time, advance func(time.Duration)) {
	c := &fakeClock{t: r.Now}
	return c.Now, func(d time.Duration) { c.Advance(d) }
}
