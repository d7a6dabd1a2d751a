package frontend

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// fakeClock is a settable clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestUploadLimiterBucket(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	l := newUploadLimiter(5, 20, 100, clock.now)
	for i := range 20 {
		if _, ok := l.allow("a"); !ok {
			t.Fatalf("upload %d within the burst refused", i)
		}
	}
	wait, ok := l.allow("a")
	if ok || wait != 200*time.Millisecond {
		t.Fatalf("upload 21: ok %v wait %s, want refused with 200ms to wait", ok, wait)
	}
	if _, ok := l.allow("b"); !ok {
		t.Error("another client was refused")
	}
	clock.advance(wait)
	if _, ok := l.allow("a"); !ok {
		t.Error("refused after waiting as told")
	}
	if _, ok := l.allow("a"); ok {
		t.Error("a second upload right after was allowed")
	}
	if got := httpapi.RetryAfterSeconds(wait); got != 1 {
		t.Errorf("httpapi.RetryAfterSeconds(%s) = %d, want 1", wait, got)
	}
	for d, want := range map[time.Duration]int{0: 1, time.Nanosecond: 1, time.Second: 1, time.Second + 1: 2, 10 * time.Second: 10} {
		if got := httpapi.RetryAfterSeconds(d); got != want {
			t.Errorf("httpapi.RetryAfterSeconds(%s) = %d, want %d", d, got, want)
		}
	}
}

// TestUploadLimiterBoundedMemory: idle buckets go away, and there are never more than the cap.
func TestUploadLimiterBoundedMemory(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	const capacity = 50
	l := newUploadLimiter(5, 20, capacity, clock.now) // a bucket refills fully in 4 s
	for i := range 1000 {
		l.allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256))
		if n := l.buckets(); n > capacity {
			t.Fatalf("%d buckets after %d clients, cap %d", n, i+1, capacity)
		}
		clock.advance(time.Millisecond)
	}
	// The most recent client keeps its (partly used) bucket while others churn; idle ones expire.
	for range 20 {
		l.allow("busy")
	}
	if _, ok := l.allow("busy"); ok {
		t.Fatal("busy client not limited")
	}
	clock.advance(3 * time.Second)
	l.allow("other")
	if l.byKey["busy"] == nil {
		t.Error("a client idle for less than a refill lost its bucket")
	}
	clock.advance(4 * time.Second)
	l.allow("other")
	if n := l.buckets(); n != 1 {
		t.Errorf("%d buckets after every other client was idle for a full refill, want 1", n)
	}
	// A bucket evicted after a full refill is the same as a new one: the client gets its whole burst.
	for i := range 20 {
		if _, ok := l.allow("busy"); !ok {
			t.Fatalf("upload %d of a returning client refused", i)
		}
	}
}

// TestPublicError: the master's refusals, which name internal ids, are reworded without them.
func TestPublicError(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		text   string
	}{
		{&httpapi.Error{Status: 400, Msg: "no task with id 5"}, 404, "Error: no such task"},
		{&httpapi.Error{Status: 404, Msg: "no task with id 5"}, 404, "Error: no such task"},
		{&httpapi.Error{Status: 404, Msg: "task 5 is not finished"}, 404, "Error: task is not finished"},
		{&httpapi.Error{Status: 404, Msg: "task 5 failed: cannot decode image: bad"}, 404, "Error: task failed: cannot decode image: bad"},
		{&httpapi.Error{Status: 404, Msg: "task 5 failed: task 5 at 10.0.0.1 broke"}, 404, "Error: task failed: processing failed"},
		{&httpapi.Error{Status: 404, Msg: "no finished image for task 5"}, 404, "Error: the task's image is not available"},
		{fmt.Errorf("get: %w", &httpapi.Error{Status: 502, Msg: "master unavailable"}), 502, "Error: master unavailable"},
		{errors.New("boom"), 500, "Error: internal error"},
	} {
		err := publicError(c.err, 5)
		if httpapi.StatusOf(err) != c.status || httpapi.ErrorText(err) != c.text {
			t.Errorf("publicError(%v) = %d %q, want %d %q", c.err, httpapi.StatusOf(err), httpapi.ErrorText(err), c.status, c.text)
		}
	}
}

func TestPublicReason(t *testing.T) {
	for _, c := range []struct{ reason, want string }{
		{"cannot decode image: png: invalid format", "cannot decode image: png: invalid format"},
		{"upload never completed", "upload never completed"},
		{"lease lapsed on attempt 3 of 3", "lease lapsed on attempt 3 of 3"},
		{"fetch working image: 404 no working image for task 17", "processing failed"},
		{"store finished image: dial tcp 10.0.0.5:3002: connection refused", "processing failed"},
	} {
		if got := publicReason(c.reason); got != c.want {
			t.Errorf("publicReason(%q) = %q, want %q", c.reason, got, c.want)
		}
	}
}
