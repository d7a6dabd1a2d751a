package master

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// Local is the worker side of a master in this process (Service.Local): the methods of *client.Master
// that a worker calls, with the same signatures, answers and refusals, made through Go on the very
// server that serves the master's HTTP API. A finish wakes the same /isReady and /statuses long polls,
// a cancel through the HTTP API ends the same WatchLease. Each method takes the arguments as the HTTP
// client would send them and refuses them as the handler would; a call the deployment's database cannot
// serve (a reference one) is 501, as over HTTP.
type Local struct {
	s    *server
	addr string
}

// Addr names the master, as *client.Master's does: its advertised or listen address.
func (l *Local) Addr(context.Context) (string, error) { return l.addr, nil }

// GetNewTask claims a task, as POST /getNewTask does; IsNoTask(err) tells that none came within wait.
// Not retried, as over HTTP: a retried claim could hold a second task.
func (l *Local) GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error) {
	ts, _, err := client.ClaimLocal(ctx, 1, l.claim(wait))
	if err != nil {
		return wire.Task{}, err
	}
	return ts[0], nil
}

// GetNewTasks claims up to n tasks at once (POST /getNewTask?max=n); with n of 1 it is GetNewTask. This
// master always answers a batch, so batched is true for n > 1.
func (l *Local) GetNewTasks(ctx context.Context, wait time.Duration, n int) (tasks []wire.Task, batched bool, err error) {
	return client.ClaimLocal(ctx, n, l.claim(wait))
}

// claim is the claim of n tasks, waiting up to wait, that POST /getNewTask makes.
func (l *Local) claim(wait time.Duration) func(ctx context.Context, n int) ([]wire.Task, error) {
	return func(ctx context.Context, n int) ([]wire.Task, error) {
		wait, err := localWait(wait, wire.MaxWait)
		if err != nil {
			return nil, err
		}
		ts, err := l.s.claim(ctx, wait, n)
		return ts, notImplemented(err, "/getNewTask")
	}
}

// FinishTask registers the claimed task finished (POST /registerTaskFinished): refused, and the task
// handed back, when storage holds no result for it.
func (l *Local) FinishTask(ctx context.Context, id, token int64) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (struct{}, error) {
		if err := httpapi.CheckIDAndToken(id, token); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, notImplemented(l.s.finish(ctx, id, token), "/registerTaskFinished")
	})
	return err
}

// FinishWithResult stores the result, size bytes of r (-1: unknown), and finishes the claimed task in
// one call (POST /finishTask): refused as the result's store is (409 for a stale claim, whose result is
// not stored over a newer one's) and as a finish is (410, and the result removed, for a task cancelled
// meanwhile). It is retried after a transient failure only when r can be read again from where it
// started (client.Replayer), as over HTTP.
func (l *Local) FinishWithResult(ctx context.Context, id, token int64, r io.Reader, size int64) error {
	if size <= 0 {
		// As net/http sends a body of length 0 that is not empty: streamed, its end unknown.
		size = -1
	}
	replay := client.Replayer(r)
	_, err := client.CallLocal(ctx, replay != nil, func(ctx context.Context) (struct{}, error) {
		if err := httpapi.CheckIDAndToken(id, token); err != nil {
			return struct{}{}, err
		}
		body := r
		if replay != nil {
			body = replay()
		}
		if limit := l.s.maxResult(); limit > 0 && size < 0 {
			// A body of known length is checked by finishWithResult, and storage reads no more of it.
			body = &resultLimit{r: io.LimitReader(body, limit+1), limit: limit}
		}
		return struct{}{}, notImplemented(l.s.finishWithResult(ctx, id, token, body, size), "/finishTask")
	})
	return err
}

// resultLimit reads a result as http.MaxBytesReader does in the handler: past limit bytes it fails
// with *http.MaxBytesError.
type resultLimit struct {
	r     io.Reader // limited to limit+1 bytes
	limit int64
	n     int64
}

func (l *resultLimit) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if l.n += int64(n); l.n > l.limit {
		return n - int(l.n-l.limit), &http.MaxBytesError{Limit: l.limit}
	}
	return n, err
}

// ExtendLease renews the claim's lease (POST /extendLease) and returns the task with its new lease.
func (l *Local) ExtendLease(ctx context.Context, id, token int64) (wire.Task, error) {
	return l.extendLease(ctx, id, token, 0)
}

// WatchLease is ExtendLease held for up to wait (at most wire.MaxLeaseWait) after the renewal, and
// answered early, 410, when the task is cancelled or deleted through this master meanwhile.
func (l *Local) WatchLease(ctx context.Context, id, token int64, wait time.Duration) (wire.Task, error) {
	return l.extendLease(ctx, id, token, wait)
}

func (l *Local) extendLease(ctx context.Context, id, token int64, wait time.Duration) (wire.Task, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Task, error) {
		if wait < 0 || wait > wire.MaxLeaseWait {
			return wire.Task{}, durationRange("wait", wire.MaxLeaseWait)
		}
		if err := httpapi.CheckIDAndToken(id, token); err != nil {
			return wire.Task{}, err
		}
		t, err := l.s.extendLease(ctx, id, token, wait)
		return t, notImplemented(err, "/extendLease")
	})
}

// FailTask records a failed attempt (POST /failTask); a permanent one is not retried. It returns the
// task afterwards.
func (l *Local) FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error) {
	return l.fail(ctx, id, token, reason, permanent, false)
}

// RetryTask hands a claimed task back after a transient failure, without counting the attempt (POST
// /failTask?transient=true). It returns the task afterwards, with its RetryAt.
func (l *Local) RetryTask(ctx context.Context, id, token int64, reason string) (wire.Task, error) {
	return l.fail(ctx, id, token, reason, false, true)
}

func (l *Local) fail(ctx context.Context, id, token int64, reason string, permanent, transient bool) (wire.Task, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Task, error) {
		if err := httpapi.CheckIDAndToken(id, token); err != nil {
			return wire.Task{}, err
		}
		reason, err := checkReason(reason)
		if err != nil {
			return wire.Task{}, err
		}
		t, err := l.s.fail(ctx, id, token, reason, permanent, transient)
		return t, notImplemented(err, "/failTask")
	})
}

// ReleaseTask hands a claimed task back without counting the attempt (POST /releaseTask).
func (l *Local) ReleaseTask(ctx context.Context, id, token int64) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (struct{}, error) {
		if err := httpapi.CheckIDAndToken(id, token); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, notImplemented(l.s.release(ctx, id, token), "/releaseTask")
	})
	return err
}

// localWait is a claim's wait as the HTTP client sends it (none when not positive) and the handler
// refuses it (over max).
func localWait(wait, max time.Duration) (time.Duration, error) {
	if wait <= 0 {
		return 0, nil
	}
	if wait > max {
		return 0, durationRange("wait", max)
	}
	return wait, nil
}

// durationRange is httpapi.QueryDuration's refusal of a duration out of its range.
func durationRange(name string, max time.Duration) error {
	return httpapi.Errorf(http.StatusBadRequest, "%s must be between 0 and %s", name, max)
}
