package httpapi

import (
	"fmt"
	"testing"
	"time"
)

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestKeyedLimiterBucket(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	l := NewKeyedLimiter(5, 20, 100, clock.now)
	for i := range 20 {
		if _, ok := l.Allow("a"); !ok {
			t.Fatalf("event %d within the burst refused", i)
		}
	}
	wait, ok := l.Allow("a")
	if ok || wait != 200*time.Millisecond {
		t.Fatalf("event 21: ok %v wait %s, want refused with 200ms to wait", ok, wait)
	}
	if _, ok := l.Allow("b"); !ok {
		t.Error("another client was refused")
	}
	clock.advance(wait)
	if _, ok := l.Allow("a"); !ok {
		t.Error("refused after waiting as told")
	}
	if _, ok := l.Allow("a"); ok {
		t.Error("a second event right after was allowed")
	}
	if got := RetryAfterSeconds(wait); got != 1 {
		t.Errorf("RetryAfterSeconds(%s) = %d, want 1", wait, got)
	}
	for d, want := range map[time.Duration]int{0: 1, time.Nanosecond: 1, time.Second: 1, time.Second + 1: 2, 10 * time.Second: 10} {
		if got := RetryAfterSeconds(d); got != want {
			t.Errorf("RetryAfterSeconds(%s) = %d, want %d", d, got, want)
		}
	}
}

// TestKeyedLimiterBoundedMemory: idle buckets go away, and there are never more than the cap.
func TestKeyedLimiterBoundedMemory(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	const capacity = 50
	l := NewKeyedLimiter(5, 20, capacity, clock.now) // a bucket refills fully in 4 s
	for i := range 1000 {
		l.Allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256))
		if n := l.Len(); n > capacity {
			t.Fatalf("%d buckets after %d clients, cap %d", n, i+1, capacity)
		}
		clock.advance(time.Millisecond)
	}
	// The most recent client keeps its (partly used) bucket while others churn; idle ones expire.
	for range 20 {
		l.Allow("busy")
	}
	if _, ok := l.Allow("busy"); ok {
		t.Fatal("busy client not limited")
	}
	clock.advance(3 * time.Second)
	l.Allow("other")
	if l.byKey["busy"] == nil {
		t.Error("a client idle for less than a refill lost its bucket")
	}
	clock.advance(4 * time.Second)
	l.Allow("other")
	if n := l.Len(); n != 1 {
		t.Errorf("%d buckets after every other client was idle for a full refill, want 1", n)
	}
	// A bucket evicted after a full refill is the same as a new one: the client gets its whole burst.
	for i := range 20 {
		if _, ok := l.Allow("busy"); !ok {
			t.Fatalf("event %d of a returning client refused", i)
		}
	}
}
