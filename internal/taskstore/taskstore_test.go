package taskstore_test

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// TestRetryBackoff: the wait after the n-th transient failure doubles from Min up to Max, and each one
// drawn lies in [d/2, d].
func TestRetryBackoff(t *testing.T) {
	b := taskstore.RetryBackoff{Min: time.Second, Max: 5 * time.Minute}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 9: 256 * time.Second,
		10: 5 * time.Minute, 31: 5 * time.Minute, 1000: 5 * time.Minute, 0: time.Second} {
		if got := b.Delay(n); got != want {
			t.Errorf("Delay(%d) = %v, want %v", n, got, want)
		}
	}
	for range 20 {
		waits := b.Waits()
		if len(waits) != 31 {
			t.Fatalf("%d waits, want 31", len(waits))
		}
		for i, w := range waits {
			if d := b.Delay(i + 1); w < d/2 || w > d {
				t.Fatalf("wait %d = %v, want within [%v, %v]", i+1, w, d/2, d)
			}
		}
	}
	if waits := (taskstore.RetryBackoff{}).Waits(); waits[0] != 0 || waits[30] != 0 {
		t.Errorf("no backoff: waits %v, want none", waits)
	}
}
