package groupsync_test

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/groupsync"
)

// A caller that arrives while a flush runs must wait for the next one (the running one may have started
// before its write), and the callers waiting together share that next one.
func TestSyncWaitsForAFlushStartedAfterTheCall(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int64
	s := groupsync.New(func() error {
		if calls.Add(1) == 1 {
			<-release // the first flush runs until the test lets it end
		}
		return nil
	})
	first := make(chan error, 1)
	go func() { first <- s.Sync() }()
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("first flush never started")
		}
		time.Sleep(time.Millisecond)
	}
	const late = 8
	var returned atomic.Int64
	var wg sync.WaitGroup
	for range late {
		wg.Go(func() {
			if err := s.Sync(); err != nil {
				t.Error(err)
			}
			returned.Add(1)
		})
	}
	time.Sleep(50 * time.Millisecond) // let them queue behind the running flush
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d callers returned while the flush that started before them was still running", n)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if n := calls.Load(); n != 2 {
		t.Errorf("%d flushes for 1 + %d callers, want 2 (the late ones share one)", n, late)
	}
}

func TestSyncReportsTheFlushError(t *testing.T) {
	boom := errors.New("disk on fire")
	fail := true
	s := groupsync.New(func() error {
		if fail {
			return boom
		}
		return nil
	})
	if err := s.Sync(); !errors.Is(err, boom) {
		t.Fatalf("Sync = %v, want %v", err, boom)
	}
	fail = false
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync after recovery = %v", err)
	}
}

// Sequential callers each get a flush of their own: nothing is skipped without a concurrent caller.
func TestSyncSequential(t *testing.T) {
	var calls int
	s := groupsync.New(func() error { calls++; return nil })
	for range 5 {
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 5 {
		t.Errorf("%d flushes for 5 sequential calls, want 5", calls)
	}
}
