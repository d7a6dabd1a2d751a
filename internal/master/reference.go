package master

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/wire"
)

// A database of the reference design (client.Database.Reference) lacks every endpoint only imgmill's
// has. The master falls back to what it does have: see docs/mixing.md.

// spoolRetryAfter is the Retry-After of an upload refused because the master's temporary space is full.
const spoolRetryAfter = 30 * time.Second

// newOnReference is upload over a reference database, whose /newTask makes a task claimable at once
// (there are no pending tasks): the upload, already checked, is spooled to a temporary file first, and
// only then is the task created and its image stored from the file, so that a worker claiming the task
// at once misses its image only for the moment the copy takes (a worker retries a missing upload a few
// times before it gives the task back). The reference keeps no operation, name, owner or key, so only
// the default operation can be asked for.
func (s *server) newOnReference(ctx context.Context, chain imageop.Chain, image io.Reader) (int64, error) {
	if !chain.IsDefault() {
		return 0, httpapi.Errorf(http.StatusBadRequest, "op: the task database is the reference design's, which keeps no operation: only the default one can be asked for")
	}
	f, err := os.CreateTemp("", "imgmill-upload-*")
	if err != nil {
		return 0, spoolError(err)
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	n, err := io.Copy(f, image)
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return 0, spoolError(err) // writing the file failed, not reading the upload
	}
	if err != nil {
		return 0, uploadError(err)
	}
	id, err := s.db.NewTask(ctx, client.NewTaskParams{})
	if err != nil {
		return 0, fmt.Errorf("create task: %w", err)
	}
	if err := s.storage.SendImage(ctx, id, wire.WorkingImage, io.NewSectionReader(f, 0, n), n); err != nil {
		// The task is claimable and has no image: it fails rather than waits for a worker to find
		// nothing. A retry of the upload makes a new task.
		s.setState(ctx, id, wire.Failed)
		return 0, fmt.Errorf("store image: %w", err)
	}
	s.queue.add(1)
	return id, nil
}

// spoolError refuses an upload the master could not keep in its temporary space: 507, as storage
// refuses one when it is full, for the client to try again later.
func spoolError(err error) error {
	return fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusInsufficientStorage, RetryAfter: spoolRetryAfter,
		Msg: "the master cannot keep the upload in its temporary space, retry later"}, err)
}

// setState sets a task's state through the reference's /setById, the only change a reference database
// lets anyone make besides claiming and finishing. A failure is logged: the task stays as it is.
func (s *server) setState(ctx context.Context, id int64, state wire.State) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
	defer cancel()
	if err := s.db.SetByID(ctx, wire.Task{ID: id, State: state}); err != nil {
		httpapi.LoggerFrom(ctx).WarnContext(ctx, "cannot set the state of a task in the reference database", "task", id,
			"state", state.Word(), "err", err)
	}
}

// handBackOnReference is a worker's failure (failed) or release of task id over a database without them:
// the task goes back to not started, to be claimed again, or with a permanent failure, or when storage
// holds no upload for it, to failed (the reference's state numbers leave room for it; it keeps no
// attempts or error).
func (s *server) handBackOnReference(ctx context.Context, id int64, failed, permanent bool) error {
	state := wire.NotStarted
	if failed {
		if !permanent {
			// With no attempts to run out, a task without an upload (its creation's answer was lost, or
			// storage refused the image) would be handed back and forth for ever.
			held, err := s.uploadHeld(ctx, id)
			if err != nil {
				return err
			}
			permanent = !held
		}
		if permanent {
			state = wire.Failed
		}
	}
	if err := s.db.SetByID(ctx, wire.Task{ID: id, State: state}); err != nil {
		return fmt.Errorf("hand task %d back: %w", id, err)
	}
	s.changes.finished(id)
	return nil
}

// uploadGrace is how long a task's upload may be missing before it counts as lost: over a reference
// database the master stores it right after creating the task, so a worker may claim the task first.
const uploadGrace = 2 * time.Second

// uploadHeld reports whether storage holds the upload of task id, asking again after uploadGrace when
// it does not at first.
func (s *server) uploadHeld(ctx context.Context, id int64) (bool, error) {
	held, err := s.storage.HasImage(ctx, id, wire.WorkingImage)
	if err != nil || held {
		return held, err
	}
	if !backoff.Sleep(ctx, uploadGrace) {
		return false, ctx.Err()
	}
	return s.storage.HasImage(ctx, id, wire.WorkingImage)
}

// withoutResult refuses a worker's finish of task id when storage holds no result for it (a worker that
// skipped storing it, or whose store was lost): the client must never see the task finished without an
// image. The task goes back to the queue: over imgmill's database as a failed attempt, so that a worker
// that never stores a result does not loop for ever; over the reference's back to not started.
// token is the worker's, which fences the failure.
func (s *server) withoutResult(ctx context.Context, id, token int64) error {
	reference, err := s.db.Reference(ctx)
	if err != nil {
		return fmt.Errorf("hand back task %d, finished without a result: %w", id, err)
	}
	refusal := httpapi.Errorf(http.StatusConflict, "task %d has no result in storage: store it (POST /sendImage?state=%s) "+
		"before registering the task finished; the task goes back to the queue", id, wire.FinishedImage)
	if reference {
		s.setState(ctx, id, wire.NotStarted)
		s.changes.finished(id)
		return refusal
	}
	// The database's refusal of the failure (an unknown task, one not in progress, a stale token, a
	// cancelled one: 410) is the one it would have given the finish.
	if _, err := s.db.FailTask(ctx, id, token, "the worker registered the task finished without storing a result", false); err != nil {
		return err
	}
	s.changes.finished(id)
	return refusal
}

// noPeerEndpoint answers a call that needed an endpoint the database lacks (a reference database has
// no cancel, retry, delete or usage) with 501, never the peer's 404: the master and the task exist,
// only the deployment cannot do this.
func noPeerEndpoint(h httpapi.HandlerFunc) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		return notImplemented(h(w, r), r.URL.Path)
	}
}

// notImplemented is err of the master's endpoint path, but 501 when it is a peer's missing endpoint.
func notImplemented(err error, path string) error {
	var missing *client.NoEndpointError
	if errors.As(err, &missing) {
		return fmt.Errorf("%w: %w", httpapi.Errorf(http.StatusNotImplemented,
			"the task database of this deployment (the reference design's) has no %s: %s is not available",
			missing.Path, path), err)
	}
	return err
}
