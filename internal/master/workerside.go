package master

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// The worker side of the master: each endpoint is a handler that reads the worker's query, refusing a
// bad one with the 400 the database would give, calls a core method, and writes the database's answer
// (task JSON, or "success"). Local calls the same core methods in-process.

// handleGetNewTask passes a worker's claim on to the database. With max (additive, up to
// wire.MaxTasksPerClaim) it asks for that many at once and answers {"tasks":[...]}, whatever shape the
// database answered (a reference database knows no max and claims one); without max, or with max=1,
// the answer is the reference's task JSON.
func (s *server) handleGetNewTask(w http.ResponseWriter, r *http.Request) error {
	wait, err := httpapi.QueryDuration(r, "wait", wire.MaxWait)
	if err != nil {
		return err
	}
	n := 1
	if raw := r.URL.Query().Get(wire.MaxTasksParam); raw != "" {
		if n, err = strconv.Atoi(raw); err != nil || n < 1 || n > wire.MaxTasksPerClaim {
			return httpapi.Errorf(http.StatusBadRequest, "%s must be a whole number from 1 to %d, got %q",
				wire.MaxTasksParam, wire.MaxTasksPerClaim, raw)
		}
	}
	ts, err := s.claim(r.Context(), wait, n)
	if err != nil {
		return err
	}
	if n == 1 {
		return httpapi.WriteJSON(w, http.StatusOK, ts[0])
	}
	return httpapi.WriteJSON(w, http.StatusOK, wire.Tasks{Tasks: ts})
}

// claim claims n tasks (1: one, as the reference does) from the database, waiting up to wait for one.
func (s *server) claim(ctx context.Context, wait time.Duration, n int) ([]wire.Task, error) {
	var ts []wire.Task
	if n == 1 {
		t, err := s.db.GetNewTask(ctx, wait)
		if err != nil {
			return nil, err
		}
		ts = []wire.Task{t}
	} else {
		var err error
		if ts, _, err = s.db.GetNewTasks(ctx, wait, n); err != nil {
			return nil, err
		}
	}
	for _, t := range ts {
		s.claimed(t)
	}
	return ts, nil
}

// claimed tells the event streams that a task a worker claimed is processing now.
func (s *server) claimed(t wire.Task) {
	if t.State == wire.InProgress {
		s.changes.finished(t.ID)
	}
}

// handleRegisterTaskFinished passes a worker's finish through to the database (see finish).
func (s *server) handleRegisterTaskFinished(w http.ResponseWriter, r *http.Request) error {
	id, token, err := httpapi.QueryIDAndToken(r)
	if err != nil {
		return err
	}
	if err := s.finish(r.Context(), id, token); err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

// finish passes a worker's finish of task id through to the database, once storage holds the task's
// result (see withoutResult), and then wakes the /isReady and /statuses polls waiting for that task.
func (s *server) finish(ctx context.Context, id, token int64) error {
	// A worker may register a task finished without having stored its result (a reference worker
	// whose store failed does): the task would be finished with nothing to serve.
	held, err := s.storage.HasImage(ctx, id, wire.FinishedImage)
	if err != nil {
		return fmt.Errorf("look for the result of task %d: %w", id, err)
	}
	if !held {
		return s.withoutResult(ctx, id, token)
	}
	return s.finishStored(ctx, id, token)
}

// handleFinishTask stores a worker's result, the request body, and finishes its task (see
// finishWithResult): POST /finishTask?id=N&token=T, additive.
func (s *server) handleFinishTask(w http.ResponseWriter, r *http.Request) error {
	id, token, err := httpapi.QueryIDAndToken(r)
	if err != nil {
		return err
	}
	var body io.Reader = r.Body
	if limit := s.maxResult(); limit > 0 && r.ContentLength < 0 {
		// A body of known length is checked by finishWithResult, and read no further than it.
		body = http.MaxBytesReader(w, r.Body, limit)
	}
	if err := s.finishWithResult(r.Context(), id, token, body, r.ContentLength); err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

// A result as the workers encode it takes at most resultBytesPerPixel bytes a pixel, plus resultSlack: a
// 16-bit RGBA PNG that does not compress takes 8, plus a filter byte per row (a row may be one pixel) and
// the framing of deflate and of PNG's chunks, and its header and metadata.
const (
	resultBytesPerPixel = 10
	resultSlack         = 1 << 20
)

// maxResult is the most bytes a worker's result may take (0: no bound): what an image of the largest
// pixel count the workers make (the pixel limit, which bounds every image of a chain) takes at worst,
// and at least the largest upload. Storage's space guard bounds results otherwise; this keeps the
// master from streaming an unbounded body into it.
func (s *server) maxResult() int64 {
	pixels, upload := s.limits.MaxPixels, s.limits.MaxUpload
	if pixels <= 0 || upload <= 0 || pixels > (math.MaxInt64-resultSlack)/resultBytesPerPixel {
		return 0
	}
	return max(pixels*resultBytesPerPixel+resultSlack, upload)
}

// finishWithResult stores body, size bytes (-1: unknown), as the result of task id under the claim's
// fencing token, and finishes the task as finish does, without asking storage whether it holds the
// result: a worker's result and finish in one call. Storage refuses the result of a stale claim (409,
// a newer claim's result stays); a result over maxResult is 413, an empty one 400, storage away 503 or
// 507 with Retry-After (the task stays in progress, its result unstored or not registered).
func (s *server) finishWithResult(ctx context.Context, id, token int64, body io.Reader, size int64) error {
	if size == 0 {
		return httpapi.Errorf(http.StatusBadRequest, "empty result body")
	}
	if limit := s.maxResult(); limit > 0 && size > limit {
		return httpapi.Errorf(http.StatusRequestEntityTooLarge, "the result is %d bytes, more than the %d a result may take", size, limit)
	}
	if err := s.storage.SendResult(ctx, id, token, body, size); err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			return httpapi.Errorf(http.StatusRequestEntityTooLarge, "the result is more than the %d bytes a result may take", tooBig.Limit)
		case client.IsBodyError(err):
			return fmt.Errorf("%w: %w", httpapi.Errorf(http.StatusBadRequest, "the result broke off before its end"), err)
		}
		return fmt.Errorf("store the result of task %d: %w", id, err)
	}
	return s.finishStored(ctx, id, token)
}

// finishStored finishes task id, whose result storage holds, at the database, and wakes the polls
// waiting for it; the result of a task cancelled or deleted meanwhile is removed.
func (s *server) finishStored(ctx context.Context, id, token int64) error {
	err := s.db.FinishTask(ctx, id, token)
	if client.IsStatus(err, http.StatusGone) {
		// The task was cancelled or deleted while the worker made its result: the result it stored
		// is nobody's, and a delete may already have swept the task's images before it landed.
		if derr := keptImages(ctx, s.missing, s.storage, s.storage.DeleteResult(ctx, id)); derr != nil {
			httpapi.LoggerFrom(ctx).WarnContext(ctx, "removing a cancelled task's result failed", "task", id, "err", derr)
		}
	}
	if err != nil {
		return err
	}
	s.finishes.finished(id)
	s.changes.finished(id)
	return nil
}

// handleExtendLease passes a worker's heartbeat through to the database (see extendLease).
func (s *server) handleExtendLease(w http.ResponseWriter, r *http.Request) error {
	wait, err := httpapi.QueryDuration(r, "wait", wire.MaxLeaseWait)
	if err != nil {
		return err
	}
	id, token, err := httpapi.QueryIDAndToken(r)
	if err != nil {
		return err
	}
	t, err := s.extendLease(r.Context(), id, token, wait)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, t)
}

// extendLease renews the lease of a worker's claim. With wait (additive, at most wire.MaxLeaseWait) the
// renewed lease is answered only when the wait ends, or at once with the database's 410 when the task
// is cancelled or deleted through this master meanwhile: a worker that heartbeats this way learns of a
// cancel within moments rather than at its next heartbeat. A cancel through another master is heard at
// the next heartbeat, as without wait. A database without leases (the reference's) never takes a claim
// back: the task is answered as it is, as if renewed.
func (s *server) extendLease(ctx context.Context, id, token int64, wait time.Duration) (wire.Task, error) {
	var woken <-chan struct{}
	if wait > 0 {
		// Registered before the renewal, so that a cancel between the two is not missed.
		var withdraw func()
		woken, withdraw = s.changes.wait(id)
		defer withdraw()
	}
	t, err := s.db.ExtendLease(ctx, id, token)
	if client.IsNoEndpoint(err) {
		return s.db.GetByID(ctx, id)
	}
	if err != nil || wait <= 0 {
		return t, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-woken:
		// Changed through this master: cancelled or deleted, as a rule. The database's answer to
		// renewing it again says which (410), or renews the lease once more.
		return s.db.ExtendLease(ctx, id, token)
	case <-timer.C:
		return t, nil
	case <-ctx.Done():
		return wire.Task{}, ctx.Err()
	}
}

// handleFailTask passes a worker's failed attempt through to the database (see fail).
func (s *server) handleFailTask(w http.ResponseWriter, r *http.Request) error {
	id, token, err := httpapi.QueryIDAndToken(r)
	if err != nil {
		return err
	}
	reason, err := checkReason(r.URL.Query().Get("reason"))
	if err != nil {
		return err
	}
	permanent, err := queryBool(r, "permanent")
	if err != nil {
		return err
	}
	// Additive: a transient failure (something the work needed was away) hands the task back for a
	// later claim without counting the attempt.
	transient, err := queryBool(r, "transient")
	if err != nil {
		return err
	}
	if permanent && transient {
		return httpapi.Errorf(http.StatusBadRequest, "a failure cannot be both permanent and transient")
	}
	t, err := s.fail(r.Context(), id, token, reason, permanent, transient)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, t)
}

// fail records a worker's failed attempt at task id (a transient one hands the task back without
// counting it) and wakes the POST /statuses polls watching the task. Over a database without failures
// (the reference's) the task is handed back instead (see handBackOnReference).
func (s *server) fail(ctx context.Context, id, token int64, reason string, permanent, transient bool) (wire.Task, error) {
	var t wire.Task
	var err error
	if transient {
		t, err = s.db.RetryTask(ctx, id, token, reason)
	} else {
		t, err = s.db.FailTask(ctx, id, token, reason, permanent)
	}
	if client.IsNoEndpoint(err) {
		if err := s.handBackOnReference(ctx, id, true, permanent); err != nil {
			return wire.Task{}, err
		}
		return s.db.GetByID(ctx, id)
	}
	if err != nil {
		return wire.Task{}, err
	}
	s.changes.finished(id)
	return t, nil
}

// handleReleaseTask passes a worker's release of its claim through to the database (see release).
func (s *server) handleReleaseTask(w http.ResponseWriter, r *http.Request) error {
	id, token, err := httpapi.QueryIDAndToken(r)
	if err != nil {
		return err
	}
	if err := s.release(r.Context(), id, token); err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

// release hands a claimed task back without counting the attempt, and wakes the POST /statuses polls
// watching it.
func (s *server) release(ctx context.Context, id, token int64) error {
	err := s.db.ReleaseTask(ctx, id, token)
	if client.IsNoEndpoint(err) {
		return s.handBackOnReference(ctx, id, false, false)
	}
	if err != nil {
		return err
	}
	s.changes.finished(id)
	return nil
}

// checkReason refuses a failure without a reason, as the database does.
func checkReason(reason string) (string, error) {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return "", httpapi.Errorf(http.StatusBadRequest, "missing reason parameter")
	}
	return reason, nil
}

// queryBool reads the boolean parameter name (absent: false), refusing it as the database does.
func queryBool(r *http.Request, name string) (bool, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		return false, httpapi.Errorf(http.StatusBadRequest, "%s must be true or false, got %q", name, raw)
	}
	return v, nil
}
