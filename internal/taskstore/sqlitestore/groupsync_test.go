package sqlitestore

import (
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// A caller that arrives while an fsync runs must wait for the next one (the running one may have
// started before its commit was written), and the callers waiting together share that next one.
func TestGroupSyncWaitsForAnFsyncStartedAfterTheCall(t *testing.T) {
	g := newGroupSync("unused")
	release := make(chan struct{})
	var calls atomic.Int64
	g.doSync = func() error {
		if calls.Add(1) == 1 {
			<-release // the first fsync runs until the test lets it end
		}
		return nil
	}
	first := make(chan error, 1)
	go func() { first <- g.sync() }()
	waitUntil(t, func() bool { return calls.Load() == 1 })

	const late = 8
	var returned atomic.Int64
	var wg sync.WaitGroup
	for range late {
		wg.Go(func() {
			if err := g.sync(); err != nil {
				t.Error(err)
			}
			returned.Add(1)
		})
	}
	time.Sleep(50 * time.Millisecond) // let them queue behind the running fsync
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d callers returned while the fsync that started before them was still running", n)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// The first fsync, then one more for all eight late callers.
	if n := calls.Load(); n != 2 {
		t.Errorf("%d fsyncs for 1 + %d callers, want 2 (the late ones share one)", n, late)
	}
}

func TestGroupSyncReportsTheError(t *testing.T) {
	g := newGroupSync("unused")
	boom := errors.New("disk on fire")
	g.doSync = func() error { return boom }
	if err := g.sync(); !errors.Is(err, boom) {
		t.Fatalf("sync = %v, want %v", err, boom)
	}
	g.doSync = func() error { return nil }
	if err := g.sync(); err != nil {
		t.Fatalf("sync after recovery = %v", err)
	}
}

// The real fsync follows the WAL when SQLite replaces the file.
func TestGroupSyncReopensAReplacedWAL(t *testing.T) {
	s, path := openTemp(t, nil)
	defer closeStore(t, s)
	if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil { // a durable commit: opens the WAL
		t.Fatal(err)
	}
	if s.durable.f == nil {
		t.Fatal("no WAL file held after a durable commit")
	}
	held := s.durable.f
	if filepath.Base(s.durable.path) != filepath.Base(path)+"-wal" {
		t.Fatalf("syncing %s, want the WAL of %s", s.durable.path, path)
	}
	s.durable.f = nil // as if never opened
	held.Close()
	if err := s.durable.sync(); err != nil {
		t.Fatal(err)
	}
	if s.durable.f == nil {
		t.Fatal("WAL not reopened")
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
