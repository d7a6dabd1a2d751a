package client

import (
	"context"
	"errors"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/httpapi"
)

// CallLocal makes a call to a service in this process, directly through Go, as a peer's client would
// make it over HTTP: a failure comes back as the *httpapi.Error the service would have answered (its
// status, message and Retry-After; the cause stays wrapped for logs), and an idempotent call is retried
// after a transient failure with the same backoff and deadline (see RetryFor) as a call over HTTP. So
// a caller cannot tell the two transports apart, and its checks (IsStatus, fault.IsTransient) hold
// for both.
func CallLocal[T any](ctx context.Context, idempotent bool, call func(context.Context) (T, error)) (T, error) {
	deadline := retryDeadline(ctx)
	wait := backoff.Backoff{Min: retryMin, Max: retryMax}
	for {
		v, err := call(ctx)
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil {
			var zero T
			return zero, err
		}
		e := AsAnswer(err)
		if !idempotent || !e.Transient() {
			var zero T
			return zero, e
		}
		d := max(wait.Next(), e.Answer.RetryAfter)
		if time.Now().Add(d).After(deadline) || !backoff.Sleep(ctx, d) {
			var zero T
			return zero, e
		}
	}
}

// LocalError is a service's failure as its peers see it: the *httpapi.Error it answers with, wrapping
// the failure itself.
type LocalError struct {
	Answer *httpapi.Error
	Err    error
}

func (e *LocalError) Error() string   { return e.Answer.Error() }
func (e *LocalError) Transient() bool { return e.Answer.Transient() }
func (e *LocalError) Unwrap() []error { return []error{e.Answer, e.Err} }

// AsAnswer returns err as the answer a service's handler would send for it: the *httpapi.Error it is or
// wraps; a transient failure's 503 or 507 with Retry-After; any other failure a 500 "internal error".
// Unlike an answer over HTTP, the failure stays wrapped (an *httpapi.Error found by errors.As is the
// answer's).
func AsAnswer(err error) *LocalError {
	var le *LocalError
	if errors.As(err, &le) {
		return le
	}
	return &LocalError{Answer: httpapi.Answer(err), Err: err}
}
