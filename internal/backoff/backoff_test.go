package backoff

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, time.Second
	within := func(t *testing.T, step int, got, d time.Duration) {
		t.Helper()
		if got < d/2 || got > d {
			t.Fatalf("step %d: wait %v, want within [%v, %v]", step, got, d/2, d)
		}
	}
	t.Run("grows to Max", func(t *testing.T) {
		b := Backoff{Min: lo, Max: hi}
		for i, d := range []time.Duration{lo, 2 * lo, 4 * lo, 8 * lo, hi, hi, hi} {
			within(t, i, b.Next(), d)
		}
		// Capped however long it goes on, without overflowing.
		for i := range 200 {
			within(t, 7+i, b.Next(), hi)
		}
	})
	t.Run("Reset", func(t *testing.T) {
		b := Backoff{Min: lo, Max: hi}
		for range 10 {
			b.Next()
		}
		b.Reset()
		within(t, 0, b.Next(), lo)
		within(t, 1, b.Next(), 2*lo)
	})
	t.Run("Min above Max", func(t *testing.T) {
		b := Backoff{Min: 10 * hi, Max: hi}
		within(t, 0, b.Next(), hi)
	})
	t.Run("jittered", func(t *testing.T) {
		// Full jitter over [d/2, d]: many clients of a failed peer spread out. 1000 draws all in one half,
		// or all alike, would be a broken generator (odds 2^-999).
		seen := make(map[time.Duration]bool)
		low, high := 0, 0
		for range 1000 {
			b := Backoff{Min: lo, Max: hi}
			d := b.Next()
			within(t, 0, d, lo)
			seen[d] = true
			if d < 3*lo/4 {
				low++
			} else {
				high++
			}
		}
		if low == 0 || high == 0 || len(seen) < 100 {
			t.Fatalf("1000 first waits: %d in the lower half, %d in the upper, %d distinct", low, high, len(seen))
		}
	})
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Error("Sleep of 1ms with a live context reported an interruption")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Error("Sleep with an ended context reported a full wait")
	}
	if time.Since(start) > 10*time.Second {
		t.Error("Sleep with an ended context waited")
	}
}
