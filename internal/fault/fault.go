// Package fault tells transient failures from permanent ones. A failure is permanent (the input is bad:
// retrying the same request cannot help) unless it is marked transient here: something the work depends
// on is unavailable for now (an engine or a peer cannot be reached, or does not answer in time) or out of
// space. Transient failures are waited out and retried with backoff; they never count against a task's
// attempts, and they reach HTTP clients as 503 or 507 with Retry-After, never as a bare 500.
package fault

import (
	"context"
	"errors"
	"syscall"
)

var (
	// ErrUnavailable marks a dependency that cannot be reached or did not answer in time.
	ErrUnavailable = errors.New("temporarily unavailable")
	// ErrNoSpace marks a dependency that is out of space (a full disk, quota or bucket).
	ErrNoSpace = errors.New("out of space")
)

// Error is a transient failure of the dependency named What.
type Error struct {
	Kind error  // ErrUnavailable or ErrNoSpace
	What string // what failed, as people name it: "the task database", "image storage"
	Err  error  // the cause
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Message()
	}
	return e.Message() + ": " + e.Err.Error()
}

// Message says what failed without the cause's details, for a reply to a client: the cause may name
// addresses and paths, which are logged instead.
func (e *Error) Message() string { return e.What + " is " + e.Kind.Error() }

func (e *Error) Unwrap() []error { return []error{e.Kind, e.Err} }

// Unavailable marks err as what being unavailable for now. A nil err stays nil.
func Unavailable(what string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: ErrUnavailable, What: what, Err: err}
}

// NoSpace marks err as what being out of space. A nil err stays nil.
func NoSpace(what string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Kind: ErrNoSpace, What: what, Err: err}
}

// transient is implemented by errors that know whether they are transient without being marked here:
// a peer's HTTP answer (503, 507, ...) carries its own classification.
type transient interface{ Transient() bool }

// IsTransient reports whether err is worth retrying later, unchanged: it is (or wraps) an Error, or an
// error that says it is transient.
func IsTransient(err error) bool {
	if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNoSpace) {
		return true
	}
	var t transient
	return errors.As(err, &t) && t.Transient()
}

// IsNoSpace reports whether err is (or wraps) an out-of-space failure.
func IsNoSpace(err error) bool { return errors.Is(err, ErrNoSpace) }

// Disk classifies an error of a local file system used for what: out of space or quota (ENOSPC, EDQUOT)
// becomes a NoSpace error, a read-only file system an Unavailable one (an operator remounting it, a disk
// that failed over); anything else is returned unchanged.
func Disk(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return NoSpace(what, err)
	case errors.Is(err, syscall.EROFS):
		return Unavailable(what, err)
	}
	return err
}

// Timeout marks err as what being unavailable when it is a deadline that passed while ctx itself is
// still live: the dependency did not answer in time, which is its failure, not the caller's. The
// caller's own cancellation or deadline is returned unchanged.
func Timeout(ctx context.Context, what string, err error) error {
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return Unavailable(what, err)
	}
	return err
}
