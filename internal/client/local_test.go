package client_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
)

func TestCallLocalRetriesTransientIdempotentCalls(t *testing.T) {
	calls := 0
	v, err := client.CallLocal(context.Background(), true, func(context.Context) (int, error) {
		calls++
		if calls < 3 {
			return 0, fault.Unavailable("the task database", errors.New("connection refused"))
		}
		return 42, nil
	})
	if err != nil || v != 42 || calls != 3 {
		t.Fatalf("got %d, %v after %d calls; want 42 after 3", v, err, calls)
	}
}

func TestCallLocalAnswersAsOverHTTP(t *testing.T) {
	cause := errors.New("disk says no")
	for _, tc := range []struct {
		name       string
		err        error
		idempotent bool
		status     int
		calls      int
		transient  bool
	}{
		{"refusal", httpapi.Errorf(http.StatusGone, "task 7 was cancelled"), true, http.StatusGone, 1, false},
		{"transient, not idempotent", fault.Unavailable("image storage", cause), false, http.StatusServiceUnavailable, 1, true},
		{"no space", fault.NoSpace("image storage", cause), false, http.StatusInsufficientStorage, 1, true},
		{"internal", cause, true, http.StatusInternalServerError, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			_, err := client.CallLocal(context.Background(), tc.idempotent, func(context.Context) (struct{}, error) {
				calls++
				return struct{}{}, tc.err
			})
			if !client.IsStatus(err, tc.status) || calls != tc.calls || fault.IsTransient(err) != tc.transient {
				t.Fatalf("got %v (transient %v) after %d calls; want status %d (transient %v) after %d",
					err, fault.IsTransient(err), calls, tc.status, tc.transient, tc.calls)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("%v does not wrap the failure %v", err, tc.err)
			}
			if tc.status == http.StatusInternalServerError && httpapi.ErrorMessage(err) != "internal error" {
				t.Errorf("an internal failure answers %q; want it not spelled out", httpapi.ErrorMessage(err))
			}
		})
	}
}

func TestCallLocalStopsRetryingAtItsDeadline(t *testing.T) {
	// A transient failure asks for 2 s (Retry-After): a 3 s budget has room for one wait, not two.
	ctx := client.RetryFor(context.Background(), 3*time.Second)
	start := time.Now()
	calls := 0
	_, err := client.CallLocal(ctx, true, func(context.Context) (int, error) {
		calls++
		return 0, fault.Unavailable("the task database", errors.New("down"))
	})
	if !client.IsStatus(err, http.StatusServiceUnavailable) || calls != 2 {
		t.Fatalf("got %v after %d calls; want 503 after 2", err, calls)
	}
	if took := time.Since(start); took < 2*time.Second || took > 30*time.Second {
		t.Errorf("gave up after %v; want after one wait of at least the 2 s Retry-After", took)
	}
}
