package master

import (
	"context"
	"io"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// The client side of Local: the methods of *client.Master that the frontend calls, with the same
// signatures, answers and refusals, made through Go on the very server that serves the master's HTTP
// API (the same limits, queue gauge, quota, waiters and metrics). Each takes its arguments as the HTTP
// client would send them, and the core methods the handlers call do the rest.

// LocalCaller is the caller's address an in-process upload is owned by when the master does not trust
// the owner it names (Limits.TrustOwner unset): the process's own, as a caller over IPv4 loopback is.
const LocalCaller = "127.0.0.1"

// New uploads an image (size bytes, or -1 when unknown) and returns the task id.
func (l *Local) New(ctx context.Context, r io.Reader, size int64) (int64, error) {
	up, err := l.Upload(ctx, r, size, client.UploadParams{})
	return up.ID, err
}

// Upload stores an image as POST /new does, with the same checks and refusals (op, name, key, owner,
// MaxUpload, queue, quota, the image's type, size, cost and structure), and returns its task once the
// image is durable and the task claimable. The owner p names is believed exactly as wire.OwnerHeader is
// (Limits.TrustOwner); otherwise the owner is LocalCaller. As over HTTP, a transient failure is tried
// again only with an idempotency key and a body that can be read again (client.Replayer), and a failure
// to read r is the caller's (client.IsBodyError).
func (l *Local) Upload(ctx context.Context, r io.Reader, size int64, p client.UploadParams) (client.Uploaded, error) {
	if size <= 0 {
		// As net/http sends a body of length 0 that is not empty: streamed, its end unknown.
		size = -1
	}
	replay := client.Replayer(r)
	return client.CallLocal(ctx, p.IdempotencyKey != "" && replay != nil, func(ctx context.Context) (client.Uploaded, error) {
		body := r
		if replay != nil {
			body = replay()
		}
		if size >= 0 {
			body = io.LimitReader(body, size) // as net/http sends no more than the declared length
		}
		up, err := client.ReadingBody(body, func(body io.Reader) (client.Uploaded, error) {
			return l.s.upload(ctx, newUpload{op: p.Op, name: p.Name, key: p.IdempotencyKey, claimedOwner: p.Owner,
				addr: LocalCaller, size: size, body: l.s.capUpload(nil, io.NopCloser(body))})
		})
		if client.IsBodyError(err) {
			// The upload broke off on the caller's side; the pending task is given up already.
			return client.Uploaded{}, err
		}
		return up, notImplemented(err, "/new")
	})
}

// IsReady reports whether task id is finished (GET /isReady).
func (l *Local) IsReady(ctx context.Context, id int64) (bool, error) {
	return l.WaitReady(ctx, id, 0)
}

// WaitReady is IsReady held until the task finishes or wait (at most MaxReadyWait) ends (GET
// /isReady?wait=): woken by a finish through this master, HTTP or in-process.
func (l *Local) WaitReady(ctx context.Context, id int64, wait time.Duration) (bool, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (bool, error) {
		if err := httpapi.CheckID("id", id); err != nil {
			return false, err
		}
		// The HTTP client sends every wait, a negative one too, which the handler refuses.
		if wait < 0 || wait > MaxReadyWait {
			return false, durationRange("wait", MaxReadyWait)
		}
		ready, err := l.s.ready(ctx, id, wait)
		return ready, notImplemented(err, "/isReady")
	})
}

// Statuses returns the statuses of the tasks in known that differ from the ones given, and the ids of
// those that do not exist (POST /statuses), held up to wait (at most MaxReadyWait) for news.
func (l *Local) Statuses(ctx context.Context, known []wire.Status, wait time.Duration) (wire.Statuses, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Statuses, error) {
		wait, err := localWait(wait, MaxReadyWait)
		if err != nil {
			return wire.Statuses{}, err
		}
		st, err := l.s.statuses(ctx, known, wait)
		return st, notImplemented(err, "/statuses")
	})
}

// Get opens the finished image of task id (GET /get): refused with 404 unless the task is finished. The
// caller reads storage's image directly and must Close it.
func (l *Local) Get(ctx context.Context, id int64) (*client.Image, error) {
	return l.image(ctx, id, l.s.result, "/get")
}

// Source opens the uploaded image of task id, as stored (GET /source).
func (l *Local) Source(ctx context.Context, id int64) (*client.Image, error) {
	return l.image(ctx, id, l.s.source, "/source")
}

func (l *Local) image(ctx context.Context, id int64, open func(context.Context, int64) (*client.Image, error), path string) (*client.Image, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (*client.Image, error) {
		if err := httpapi.CheckID("id", id); err != nil {
			return nil, err
		}
		img, err := open(ctx, id)
		if err != nil {
			return nil, notImplemented(err, path)
		}
		// The master's answer carries no lease token (CopyImage sends none).
		img.Token = 0
		return img, nil
	})
}

// Stats returns how many tasks are in each state (GET /stats).
func (l *Local) Stats(ctx context.Context) (wire.Stats, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Stats, error) {
		st, err := l.s.db.Stats(ctx)
		return st, notImplemented(err, "/stats")
	})
}

// Status returns the state of task id in words, with attempts, error and times (GET /status).
func (l *Local) Status(ctx context.Context, id int64) (wire.Status, error) {
	return l.change(ctx, id, true, l.s.status, "/status")
}

// Cancel cancels task id if it has not finished and returns its status (POST /cancel): a finished or
// failed task is refused with 409, an unknown one with 404.
func (l *Local) Cancel(ctx context.Context, id int64) (wire.Status, error) {
	return l.change(ctx, id, true, l.s.cancel, "/cancel")
}

// Retry queues a failed or cancelled task id again and returns its status (POST /retry): another state
// is 409, a task whose upload is gone 410, an unknown one 404. Not retried, as over HTTP.
func (l *Local) Retry(ctx context.Context, id int64) (wire.Status, error) {
	return l.change(ctx, id, false, l.s.retry, "/retry")
}

// change is a call about task id that answers its status.
func (l *Local) change(ctx context.Context, id int64, idempotent bool, call func(context.Context, int64) (wire.Status, error), path string) (wire.Status, error) {
	return client.CallLocal(ctx, idempotent, func(ctx context.Context) (wire.Status, error) {
		if err := httpapi.CheckID("id", id); err != nil {
			return wire.Status{}, err
		}
		st, err := call(ctx, id)
		return st, notImplemented(err, path)
	})
}

// Delete removes task id, its images and its record (DELETE /task); deleting it again succeeds, an id
// that never named a task is 404.
func (l *Local) Delete(ctx context.Context, id int64) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (struct{}, error) {
		if err := httpapi.CheckID("id", id); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, notImplemented(l.s.delete(ctx, id), "/task")
	})
	return err
}
