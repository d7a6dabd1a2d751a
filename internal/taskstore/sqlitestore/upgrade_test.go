package sqlitestore

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// releasedDatabase copies the gzipped database file name from testdata to a temporary tasks.db, and reads
// the tasks its release read back from it (name without .db.gz, plus .json) and the time it did.
func releasedDatabase(t *testing.T, name string) (path string, now time.Time, tasks []taskstore.Task) {
	t.Helper()
	gz, err := os.ReadFile(filepath.Join("testdata", name+".db.gz"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	db, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "tasks.db")
	if err := os.WriteFile(path, db, 0o644); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("testdata", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var want struct {
		Now   time.Time
		Tasks []taskstore.Task
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	return path, want.Now, want.Tasks
}

// canonical makes tasks comparable with ==: the same instants in UTC, whatever their origin.
func canonical(t taskstore.Task) taskstore.Task {
	for _, tm := range []*time.Time{&t.CreatedAt, &t.StartedAt, &t.FinishedAt, &t.LeaseUntil, &t.RetryAt} {
		*tm = tm.UTC()
	}
	return t
}

// TestOpenReleasedDatabase opens a task database written by the previous release (schema version 5, a
// task in every state; see testdata/README.md): the migrations run, every task reads back as that
// release read it (tasks from before owners belong to owner ""), and the work goes on from where it was.
func TestOpenReleasedDatabase(t *testing.T) {
	ctx := t.Context()
	path, then, want := releasedDatabase(t, "release-schema5")
	if v := userVersion(t, path); v != 5 {
		t.Fatalf("the released file has user_version %d, want 5", v)
	}
	var mu sync.Mutex
	now := then
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }

	s, err := Open(ctx, path, Options{Now: clock})
	if err != nil {
		t.Fatalf("Open of the released database: %v", err)
	}
	defer closeStore(t, s)
	if v := userVersion(t, path); v != len(migrations()) {
		t.Fatalf("user_version after Open = %d, want %d", v, len(migrations()))
	}
	checkIndexes(t, s)

	states := map[wire.State]int{}
	for _, w := range want {
		got, err := s.Get(ctx, w.ID)
		if err != nil {
			t.Fatalf("Get(%d): %v", w.ID, err)
		}
		if canonical(got) != canonical(w) {
			t.Errorf("task %d after the upgrade:\n got %+v\nwant %+v", w.ID, got, w)
		}
		states[w.State]++
	}
	for _, s := range []wire.State{wire.NotStarted, wire.InProgress, wire.Finished, wire.Failed} {
		if states[s] == 0 {
			t.Fatalf("the released database has no task in state %v: it tests less than it claims", s)
		}
	}
	var listed int
	for got, err := range s.List(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if listed >= len(want) || canonical(got) != canonical(want[listed]) {
			t.Fatalf("List item %d: %+v", listed, got)
		}
		listed++
	}
	if listed != len(want) {
		t.Fatalf("List gave %d tasks, want %d", listed, len(want))
	}
	counts, err := s.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := (taskstore.Counts{Queued: 2, Pending: 1, Processing: 1, Finished: 2, Failed: 3}); counts != c {
		t.Fatalf("Counts = %+v, want %+v", counts, c)
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
	if err := s.Finish(ctx, claimed.ID, claimed.Token); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if _, err := s.Claim(ctx, time.Hour); !errors.Is(err, taskstore.ErrNoTask) {
		t.Fatalf("second Claim: %v, want ErrNoTask", err)
	}
	// The worker that held task 4 across the upgrade reports it with the token it was given.
	if err := s.Finish(ctx, 4, 1); err != nil {
		t.Fatalf("Finish of the task in progress across the upgrade: %v", err)
	}
	// The idempotency key still answers for its task.
	again, replayed, err := s.CreateOnce(ctx, taskstore.CreateParams{Pending: true}, "fe-0123456789abcdef", 24*time.Hour)
	if err != nil || !replayed || again.ID != 5 {
		t.Fatalf("CreateOnce with the released key = %+v, %v, %v; want task 5 replayed", again, replayed, err)
	}
	// The pending upload completes, and the retry comes due: both are claimed, in id order.
	if err := s.Activate(ctx, 6); err != nil {
		t.Fatalf("Activate of the released pending task: %v", err)
	}
	advance(2 * time.Hour)
	for _, id := range []int64{3, 6} {
		c, err := s.Claim(ctx, time.Hour)
		if err != nil || c.ID != id {
			t.Fatalf("Claim = %+v, %v; want task %d", c, err, id)
		}
		if err := s.Finish(ctx, c.ID, c.Token); err != nil {
			t.Fatal(err)
		}
	}
	// New tasks carry on the ids, and with an owner.
	id, err := s.Create(ctx, taskstore.CreateParams{Owner: "key:new"})
	if err != nil || id != int64(len(want)) {
		t.Fatalf("Create after the upgrade = %d, %v; want id %d", id, err, len(want))
	}
	if got, err := s.Get(ctx, id); err != nil || got.Owner != "key:new" {
		t.Fatalf("Get(%d) = %+v, %v; want owner key:new", id, got, err)
	}
}
