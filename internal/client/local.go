package client

import (
	"context"
	"errors"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
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

// ClaimLocal makes an in-process claim of up to n tasks (at most wire.MaxTasksPerClaim, at least one)
// through claim, as a claim over HTTP answers: made once, never retried (a retried claim could hold
// tasks twice), batched when n > 1, as an imgmill service answers a batch.
func ClaimLocal(ctx context.Context, n int, claim func(ctx context.Context, n int) ([]wire.Task, error)) (tasks []wire.Task, batched bool, err error) {
	n = max(1, min(n, wire.MaxTasksPerClaim))
	tasks, err = CallLocal(ctx, false, func(ctx context.Context) ([]wire.Task, error) { return claim(ctx, n) })
	if err != nil {
		return nil, false, err
	}
	return tasks, n > 1, nil
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
