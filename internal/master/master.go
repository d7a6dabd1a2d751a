// Package master is the master service: the API for clients (/new, /isReady, /get, /status, /source) and
// for workers (/getNewTask, /registerTaskFinished), in front of the database and storage services.
package master

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/wire"
)

// NewServer returns the master's handler; limits bound what it accepts (zero fields take the defaults).
func NewServer(db Database, storage Storage, limits Limits, opts ...Option) http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, newServer(db, storage, limits, opts...))
	return mux
}

func newServer(db Database, storage Storage, limits Limits, opts ...Option) *server {
	s := &server{db: db, storage: storage, limits: limits.WithDefaults(),
		queue: &queueGauge{db: db, ttl: queueCacheTTL}, missing: &client.Missing{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Option adjusts the server NewServer builds.
type Option func(*server)

// WithMetrics counts the deletes, cancels and quota refusals of the server in m.
func WithMetrics(m *Metrics) Option {
	return func(s *server) { s.metrics = m }
}

type server struct {
	db       Database
	storage  Storage
	limits   Limits
	metrics  *Metrics // nil: none
	queue    *queueGauge
	finishes finishWaiters
	// changes wakes the long polls of POST /statuses: every change of a task's state that passes
	// through this master (a claim, finish, failure or release).
	changes finishWaiters
	// missing remembers a storage found without deletes (keptImages).
	missing *client.Missing
}

// owner names who queues the task of an upload: the caller's word for it (claimed: wire.OwnerHeader, or
// the frontend's client.UploadParams.Owner in-process) when the master trusts it (Limits.TrustOwner),
// else the caller's address addr (an IPv6 client's /64).
func (s *server) owner(claimed, addr string) (string, error) {
	if claimed != "" && s.limits.TrustOwner {
		if err := wire.CheckOwner(claimed); err != nil {
			return "", httpapi.Errorf(http.StatusBadRequest, "%v", err)
		}
		return claimed, nil
	}
	return addr, nil
}

// newUpload is an upload as the master receives it, over HTTP (handleNew) or in-process (Local.Upload).
type newUpload struct {
	op, name, key string // the query's op and name, the Idempotency-Key; unchecked
	claimedOwner  string // the caller's word for the owner (see owner); unchecked
	addr          string // the caller's address
	size          int64  // the declared length; < 0: unknown
	// body is the image, capped at MaxUpload (capUpload).
	body io.Reader
}

// capUpload caps an upload's body at MaxUpload: reading past it fails with *http.MaxBytesError. w, when
// set, is told to close the connection after the answer.
func (s *server) capUpload(w http.ResponseWriter, body io.ReadCloser) io.Reader {
	if s.limits.MaxUpload > 0 {
		return http.MaxBytesReader(w, body, s.limits.MaxUpload)
	}
	return body
}

// handleNew stores an upload and answers its id (see upload).
func (s *server) handleNew(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	up, err := s.upload(r.Context(), newUpload{op: q.Get("op"), name: q.Get("name"), key: r.Header.Get(wire.IdempotencyKeyHeader),
		claimedOwner: r.Header.Get(wire.OwnerHeader), addr: httpapi.ClientAddr(r, false), size: r.ContentLength,
		body: s.capUpload(w, r.Body)})
	if up.Replayed {
		w.Header().Set(wire.ReplayedHeader, "true")
	}
	if err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, strconv.FormatInt(up.ID, 10))
	return nil
}

// upload stores an upload and returns its task's id. The task is created pending, the image streamed to
// storage, and only then is the task made claimable, so no worker can claim a task whose image does not
// exist yet; the id is returned only after both are durable. An upload that fails on the way (refused,
// broken off, or storage unavailable) gives its pending task up at once.
//
// Before any of that, the upload must pass the limits: its length when it is declared, the queue (both
// before a byte of the body is read), and then its type, width and height as its header says (the type
// from the bytes, never from Content-Type). The header is read as the body streams in, the few bytes
// it takes are kept and stored with the rest; the rest is checked against the format's decoding budget
// (imageop.CheckStructure) on its way to storage.
//
// With an Idempotency-Key (additive), a retry of an upload whose answer was lost answers the same id and
// creates nothing (Replayed): the task the key names is answered as it is, or, when its upload never
// completed, completed with this request's image. Replayed is set even when completing it fails.
//
// Over a reference database, which has no pending tasks, the upload takes newOnReference instead.
func (s *server) upload(ctx context.Context, u newUpload) (client.Uploaded, error) {
	// The operation chain is refused before any of the image is read: an unknown operation or a bad
	// parameter is the client's mistake, never a worker's surprise.
	chain, err := imageop.ParseChain(u.op)
	if err != nil {
		return client.Uploaded{}, httpapi.Errorf(http.StatusBadRequest, "op: %v", err)
	}
	// Additive: the upload's file name, kept to name the downloads.
	if err := wire.CheckName(u.name); err != nil {
		return client.Uploaded{}, httpapi.Errorf(http.StatusBadRequest, "name: %v", err)
	}
	key := u.key
	if key != "" {
		if err := wire.CheckIdempotencyKey(key); err != nil {
			return client.Uploaded{}, httpapi.Errorf(http.StatusBadRequest, "%v", err)
		}
	}
	owner, err := s.owner(u.claimedOwner, u.addr)
	if err != nil {
		return client.Uploaded{}, err
	}
	maxUpload := s.limits.MaxUpload
	if maxUpload > 0 && u.size > maxUpload {
		return client.Uploaded{}, TooLargeError(u.size, maxUpload)
	}
	// A reference database has no pending tasks, usage or keys: its uploads take newOnReference.
	reference, err := s.db.Reference(ctx)
	if err != nil {
		return client.Uploaded{}, fmt.Errorf("reach the task database: %w", err)
	}
	if err := s.checkQueue(ctx); err != nil {
		return client.Uploaded{}, err
	}
	// An upload with an idempotency key may be the retry of one that was stored: its quota is checked
	// once its task is known to be new.
	var limit func(io.Reader) io.Reader
	if reference {
		limit = func(r io.Reader) io.Reader { return r }
	} else if key == "" {
		if limit, err = s.checkQuota(ctx, owner, u.size, false); err != nil {
			return client.Uploaded{}, err
		}
	}
	body := u.body
	header, head, err := imageop.ReadHeader(body, imageop.MaxHeaderLen)
	switch {
	case len(head) == 0 && (err == nil || errors.Is(err, imageop.ErrDecode)):
		return client.Uploaded{}, httpapi.Errorf(http.StatusBadRequest, "empty image: send the image bytes as the request body")
	case errors.Is(err, imageop.ErrDecode):
		return client.Uploaded{}, httpapi.Errorf(http.StatusUnsupportedMediaType, "%v", err)
	case err != nil:
		return client.Uploaded{}, uploadError(err)
	}
	if err := header.CheckSize(s.limits.MaxDimension, s.limits.MaxPixels); err != nil {
		return client.Uploaded{}, httpapi.Errorf(http.StatusRequestEntityTooLarge, "%v", err)
	}
	if err := chain.CheckSize(header.Width, header.Height, s.limits.MaxPixels); err != nil {
		if errors.Is(err, imageop.ErrBadOp) {
			return client.Uploaded{}, httpapi.Errorf(http.StatusBadRequest, "op: %v", err)
		}
		return client.Uploaded{}, httpapi.Errorf(http.StatusRequestEntityTooLarge, "op: %v", err)
	}
	if err := s.limits.checkCost(chain, header); err != nil {
		return client.Uploaded{}, err
	}
	if reference {
		id, err := s.newOnReference(ctx, chain, imageop.CheckStructure(header.Format, io.MultiReader(bytes.NewReader(head), body)))
		return client.Uploaded{ID: id}, err
	}
	created, err := s.db.CreateTask(ctx, client.NewTaskParams{Pending: true, Op: chain.String(), IdempotencyKey: key, Owner: owner,
		Name: u.name})
	if err != nil {
		return client.Uploaded{}, fmt.Errorf("create task: %w", err)
	}
	id := created.ID
	up := client.Uploaded{ID: id, Replayed: created.Replayed}
	if created.Replayed && !created.Pending {
		// The first request stored the image and was answered (or its answer was lost): done.
		return up, nil
	}
	switch {
	case limit != nil:
	case created.Replayed:
		// Completing the pending task of an earlier request with the key, which passed the quota: a
		// request refused for it deleted its task, and with it the key.
		limit = func(r io.Reader) io.Reader { return r }
	default:
		// Keyed and new: the task counts already. A refused one is deleted, so that it neither counts
		// nor answers for its key.
		if limit, err = s.checkQuota(ctx, owner, u.size, true); err != nil {
			s.remove(ctx, id)
			return up, err
		}
	}
	// The image's structure is checked as it streams to storage: an image over a decoding budget (a
	// progressive JPEG of too many scans) fails the upload before storage keeps anything. Its bytes are
	// counted for its owner's usage.
	image := &counting{r: imageop.CheckStructure(header.Format, limit(io.MultiReader(bytes.NewReader(head), body)))}
	if err := s.storage.SendImage(ctx, id, wire.WorkingImage, image, u.size); err != nil {
		if refusal, ok := overQuota(err); ok {
			s.metrics.countQuotaRefusal("bytes")
			// Nothing was stored: the task goes, rather than count against the quota as a failed upload.
			s.remove(ctx, id)
			return up, refusal
		}
		err = uploadError(err)
		s.abandon(ctx, id, err)
		return up, err
	}
	if err := s.db.ActivateTask(ctx, id, image.n); err != nil {
		if client.IsStatus(err, http.StatusConflict) {
			// Given up meanwhile: another request with the same key failed and abandoned it, or the
			// task was cancelled or deleted while its upload streamed in. The image just stored is
			// nobody's (a delete may have swept the task's images before it landed). A retry with the
			// key makes a new task.
			s.discardUpload(ctx, id)
			return up, &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: httpapi.UnavailableRetryAfter,
				Msg: "the upload was given up meanwhile, retry it"}
		}
		// The image is stored; a retry with the same key activates the task. Without a key the pending
		// task expires by itself (--pending-timeout) and counts as nothing meanwhile.
		return up, fmt.Errorf("activate task %d: %w", id, err)
	}
	s.queue.add(1)
	return up, nil
}

// abandonTimeout bounds giving up the pending task of a failed upload.
const abandonTimeout = 5 * time.Second

// abandon gives up the pending task of an upload that failed with err, so that it does not wait for the
// pending timeout. When the database cannot be reached either, the task expires by itself later.
func (s *server) abandon(ctx context.Context, id int64, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
	defer cancel()
	reason := wire.AbandonedError + ": " + httpapi.ErrorMessage(err)
	if aerr := s.db.AbandonTask(ctx, id, reason); aerr != nil {
		httpapi.LoggerFrom(ctx).WarnContext(ctx, "cannot give up the pending task of a failed upload; it expires by itself", "task", id, "err", aerr)
	}
}

// discardUpload removes the image stored for task id by an upload whose task can no longer become
// active. When storage cannot be reached, the image stays until the task's retention runs out.
func (s *server) discardUpload(ctx context.Context, id int64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
	defer cancel()
	if err := keptImages(ctx, s.missing, s.storage, s.storage.DeleteImages(ctx, id)); err != nil {
		httpapi.LoggerFrom(ctx).WarnContext(ctx, "cannot remove the upload of a task given up meanwhile", "task", id, "err", err)
	}
}

// remove deletes the task of an upload refused for its owner's quota, before any of its image was
// stored. When the database cannot be reached, the pending task expires by itself later.
func (s *server) remove(ctx context.Context, id int64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
	defer cancel()
	if err := s.db.DeleteTask(ctx, id); err != nil {
		httpapi.LoggerFrom(ctx).WarnContext(ctx, "cannot remove the task of an upload refused for its quota", "task", id, "err", err)
	}
}

// uploadError reports a failed upload: too large, over a decoding budget or broken off is the client's
// doing (413, 422, 400), storage refusing it is passed on (503 or 507 with Retry-After when it is away
// or full), the rest is ours. An image over a decoding budget is 422, not 413: it is small in bytes and
// in pixels, but its content is refused.
func uploadError(err error) error {
	if reason, ok := imageop.TooComplexReason(err); ok {
		return httpapi.Errorf(http.StatusUnprocessableEntity, "%s", reason)
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return TooLargeError(-1, tooBig.Limit)
	}
	if client.IsBodyError(err) {
		return fmt.Errorf("%w: %w", httpapi.Errorf(http.StatusBadRequest, "the upload broke off before its end"), err)
	}
	return fmt.Errorf("store image: %w", err)
}

// MaxReadyWait caps the additive wait parameter of GET /isReady: short enough that a master shutting
// down (which lets requests run for httpapi.ShutdownGrace) is not held up by idle polls.
const MaxReadyWait = 10 * time.Second

// readyRecheck is how often a waiting /isReady looks at the database again, for a task that finished
// through another master (which wakes only its own waiters).
const readyRecheck = time.Second

// handleIsReady answers 1 for a finished task, else 0 (see ready).
func (s *server) handleIsReady(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	wait, err := httpapi.QueryDuration(r, "wait", MaxReadyWait)
	if err != nil {
		return err
	}
	ready, err := s.ready(r.Context(), id, wait)
	if err != nil {
		return err
	}
	answer := "0"
	if ready {
		answer = "1"
	}
	httpapi.WriteText(w, http.StatusOK, answer)
	return nil
}

// ready reports whether task id is finished. With wait (additive, at most MaxReadyWait) it holds the
// answer until the task finishes (or fails, or is cancelled) or the wait ends, so a client needs one
// request where it would poll many times.
func (s *server) ready(ctx context.Context, id int64, wait time.Duration) (bool, error) {
	deadline := time.Now().Add(wait)
	for {
		// Register before looking, so a finish between the look and the wait is not missed; a plain
		// poll (no wait) registers nothing.
		var woken <-chan struct{}
		withdraw := func() {}
		if wait > 0 {
			woken, withdraw = s.finishes.wait(id)
		}
		t, err := s.db.GetByID(ctx, id)
		remaining := time.Until(deadline)
		if err != nil || t.State.Word().Settled() || remaining <= 0 {
			withdraw()
			if err != nil {
				return false, err
			}
			return t.State == wire.Finished, nil
		}
		timer := time.NewTimer(min(remaining, readyRecheck))
		select {
		case <-woken:
			// The database just answered this master's forwarded finish: no need to ask it again.
			timer.Stop()
			return true, nil
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		withdraw()
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
	}
}

// handleStatuses answers the statuses of many tasks at once (additive; see statuses).
func (s *server) handleStatuses(w http.ResponseWriter, r *http.Request) error {
	wait, err := httpapi.QueryDuration(r, "wait", MaxReadyWait)
	if err != nil {
		return err
	}
	var q wire.StatusesQuery
	// Room for every status with a long worker error: an internal caller, behind the token.
	if err := httpapi.DecodeStrict(r.Body, int64(wire.MaxStatusIDs)*4096, &q); err != nil {
		return err
	}
	out, err := s.statuses(r.Context(), q.Known, wait)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, out)
}

// statuses returns the statuses of the tasks in known that differ from what the caller knows, and the
// ids of those that do not exist: the frontend watches every task its event streams show with one such
// call. With wait (at most MaxReadyWait) the answer is held until there is news, woken by the changes
// that pass through this master and by a look at the database every readyRecheck (for changes made
// through other masters, or by the database itself: an expired lease).
func (s *server) statuses(ctx context.Context, knownList []wire.Status, wait time.Duration) (wire.Statuses, error) {
	if len(knownList) > wire.MaxStatusIDs {
		return wire.Statuses{}, httpapi.Errorf(http.StatusBadRequest, "at most %d tasks at once, got %d", wire.MaxStatusIDs, len(knownList))
	}
	ids := make([]int64, len(knownList))
	known := make(map[int64]wire.Status, len(knownList))
	for i, k := range knownList {
		ids[i] = k.ID
		known[k.ID] = k
	}
	deadline := time.Now().Add(wait)
	for {
		woken, withdraw := s.watchChanges(ids, wait > 0)
		tasks, err := s.db.GetByIDs(ctx, ids)
		if err != nil {
			withdraw()
			return wire.Statuses{}, err
		}
		out := wire.Statuses{Statuses: []wire.Status{}, Missing: tasks.Missing}
		for _, t := range tasks.Tasks {
			if st := statusOf(t); st.Differs(known[t.ID]) {
				out.Statuses = append(out.Statuses, st)
			}
		}
		remaining := time.Until(deadline)
		if len(out.Statuses) > 0 || len(out.Missing) > 0 || remaining <= 0 {
			withdraw()
			return out, nil
		}
		timer := time.NewTimer(min(remaining, readyRecheck))
		select {
		case <-woken:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		withdraw()
		if ctx.Err() != nil {
			return wire.Statuses{}, ctx.Err()
		}
	}
}

// watchChanges returns a channel closed when any of the tasks ids changes through this master, and a
// function that withdraws it; when !wait it registers nothing.
func (s *server) watchChanges(ids []int64, wait bool) (<-chan struct{}, func()) {
	if !wait {
		return nil, func() {}
	}
	return s.changes.waitAny(ids)
}

// statusOf is a task's status as /status answers it.
func statusOf(t wire.Task) wire.Status {
	return wire.Status{ID: t.ID, State: t.State.Word(), Op: cmp.Or(t.Op, imageop.Chain{}.String()), Name: t.Name, Attempts: t.Attempts,
		MaxAttempts: t.MaxAttempts, Error: t.Error, CreatedAt: t.CreatedAt, StartedAt: t.StartedAt, FinishedAt: t.FinishedAt,
		RetryAt: t.RetryAt, ExpiresAt: t.ExpiresAt}
}

// handleGet serves the finished image of a task (see result).
func (s *server) handleGet(w http.ResponseWriter, r *http.Request) error {
	return s.serveImage(w, r, s.result)
}

// serveImage serves the image open opens for the task named by the id parameter.
func (s *server) serveImage(w http.ResponseWriter, r *http.Request, open func(context.Context, int64) (*client.Image, error)) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	img, err := open(r.Context(), id)
	if err != nil {
		return err
	}
	defer img.Close()
	return CopyImage(w, r, img)
}

// result opens the finished image, but only of a finished task: a stale worker's result stored for a
// task that is still being redone (or that failed) is never served.
func (s *server) result(ctx context.Context, id int64) (*client.Image, error) {
	t, err := s.existing(ctx, id)
	if err != nil {
		return nil, err
	}
	switch t.State {
	case wire.Finished:
	case wire.Failed:
		return nil, httpapi.Errorf(http.StatusNotFound, "task %d failed: %s", id, t.Error)
	case wire.Cancelled:
		return nil, httpapi.Errorf(http.StatusNotFound, "task %d was cancelled", id)
	default:
		return nil, httpapi.Errorf(http.StatusNotFound, "task %d is not finished", id)
	}
	return s.storage.GetImage(ctx, id, wire.FinishedImage)
}

// existing reads task id for a reply about its images: a task that does not exist is 404, not the
// database's 400.
func (s *server) existing(ctx context.Context, id int64) (wire.Task, error) {
	t, err := s.db.GetByID(ctx, id)
	if client.IsStatus(err, http.StatusBadRequest) {
		return t, httpapi.Errorf(http.StatusNotFound, "no task with id %d", id)
	}
	return t, err
}

// handleCancel cancels a task (additive) and answers its status (see cancel).
func (s *server) handleCancel(w http.ResponseWriter, r *http.Request) error {
	return s.answerStatus(w, r, s.cancel)
}

// answerStatus answers the status change makes of the task named by the id parameter.
func (s *server) answerStatus(w http.ResponseWriter, r *http.Request, change func(context.Context, int64) (wire.Status, error)) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	st, err := change(r.Context(), id)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, st)
}

// cancel cancels task id if it has not finished and returns its status, state "cancelled": a queued
// task never starts, a processing one's worker is refused at its next heartbeat and stops. Cancelling a
// cancelled task answers its status again; a finished or failed one is 409.
func (s *server) cancel(ctx context.Context, id int64) (wire.Status, error) {
	// A repeat is not counted: whether the task was cancelled already is asked first (cancels are rare;
	// the task's cancel time would depend on the clocks of master and database agreeing).
	repeat := false
	if s.metrics != nil {
		before, err := s.db.GetByID(ctx, id)
		repeat = err == nil && before.State == wire.Cancelled
	}
	t, err := s.db.CancelTask(ctx, id)
	if client.IsStatus(err, http.StatusBadRequest) {
		return wire.Status{}, httpapi.Errorf(http.StatusNotFound, "no task with id %d", id)
	}
	if err != nil {
		return wire.Status{}, err
	}
	if !repeat {
		s.metrics.countCancelled()
	}
	s.changes.finished(id)
	return statusOf(t), nil
}

// handleRetry queues a failed or cancelled task again (additive) and answers its status (see retry).
func (s *server) handleRetry(w http.ResponseWriter, r *http.Request) error {
	return s.answerStatus(w, r, s.retry)
}

// retry queues a failed or cancelled task again with the image it was uploaded with and returns its
// status, state "queued" with a full set of attempts. A task in any other state is 409, one whose
// upload is no longer stored (it never completed, or was removed) 410, an unknown one 404, and while
// --max-queued tasks are queued 503 as an upload. A result an earlier attempt left is removed first, so
// that only the new attempt's is served.
func (s *server) retry(ctx context.Context, id int64) (wire.Status, error) {
	t, err := s.existing(ctx, id)
	if err != nil {
		return wire.Status{}, err
	}
	if t.State != wire.Failed && t.State != wire.Cancelled {
		return wire.Status{}, retryConflict(id, t.State)
	}
	// Queued again, it is work waiting like a new upload: the same cap.
	if err := s.checkQueue(ctx); err != nil {
		return wire.Status{}, err
	}
	img, err := s.storage.GetImage(ctx, id, wire.WorkingImage)
	if client.IsStatus(err, http.StatusNotFound) || t.Pending {
		return wire.Status{}, httpapi.Errorf(http.StatusGone, "the upload of task %d is gone: upload the image again", id)
	}
	if err != nil {
		return wire.Status{}, fmt.Errorf("find the upload of task %d: %w", id, err)
	}
	img.Close() // only its existence was asked
	if err := keptImages(ctx, s.missing, s.storage, s.storage.DeleteResult(ctx, id)); err != nil {
		return wire.Status{}, fmt.Errorf("remove the earlier result of task %d: %w", id, err)
	}
	t, err = s.db.RequeueTask(ctx, id)
	switch {
	case client.IsStatus(err, http.StatusBadRequest):
		return wire.Status{}, httpapi.Errorf(http.StatusNotFound, "no task with id %d", id)
	case client.IsStatus(err, http.StatusConflict):
		// Retried or set by someone else meanwhile.
		if now, gerr := s.db.GetByID(ctx, id); gerr == nil {
			return wire.Status{}, retryConflict(id, now.State)
		}
		return wire.Status{}, httpapi.Errorf(http.StatusConflict, "task %d is neither failed nor cancelled: only those can be retried", id)
	case client.IsStatus(err, http.StatusGone):
		return wire.Status{}, httpapi.Errorf(http.StatusGone, "the upload of task %d is gone: upload the image again", id)
	case err != nil:
		return wire.Status{}, err
	}
	s.queue.add(1)
	s.changes.finished(id) // wakes the status waiters: the task changed
	return statusOf(t), nil
}

// retryConflict refuses the retry of a task in state, which is neither failed nor cancelled.
func retryConflict(id int64, state wire.State) error {
	return httpapi.Errorf(http.StatusConflict, "task %d is %s: only a failed or cancelled task can be retried", id, state.Word())
}

// handleDelete removes a task (additive) and answers 204 (see delete).
func (s *server) handleDelete(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	if err := s.delete(r.Context(), id); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// delete removes task id: it cancels it, so that a worker holding it stops and its result is refused,
// removes both its images from storage, and then its record, leaving a tombstone. It succeeds once all
// of that is durable, again for a task deleted before, and is 404 for an id that never named a task.
// Each step may be repeated, so when storage or the database is away (503) a retry completes the
// delete; until then the task stays, cancelled, with whatever images it had.
func (s *server) delete(ctx context.Context, id int64) error {
	if err := removeTask(ctx, s.db, s.storage, s.missing, id); err != nil {
		return err
	}
	s.metrics.countDeleted()
	s.changes.finished(id)
	return nil
}

// removeTask is a delete (see handleDelete) and the retention sweep's removal of an expired task: cancel,
// then the images, then the record. An error leaves the task cancelled for a repeat to complete.
func removeTask(ctx context.Context, db Database, storage Storage, missing *client.Missing, id int64) error {
	// A finished or failed task (409) needs no cancel; an unknown or deleted one (400) is told apart by
	// the database's delete below.
	if _, err := db.CancelTask(ctx, id); err != nil &&
		!client.IsStatus(err, http.StatusConflict) && !client.IsStatus(err, http.StatusBadRequest) {
		return err
	}
	if err := keptImages(ctx, missing, storage, storage.DeleteImages(ctx, id)); err != nil {
		return fmt.Errorf("delete the images of task %d: %w", id, err)
	}
	return db.DeleteTask(ctx, id)
}

// keptImages is err of a delete in storage, but nil when storage cannot delete (client.ErrNoDeletes:
// the reference design's storage, which keeps every image): the images stay, logged once per storage,
// and the delete goes on without them rather than fail for good.
func keptImages(ctx context.Context, missing *client.Missing, storage Storage, err error) error {
	if !errors.Is(err, client.ErrNoDeletes) {
		return err
	}
	addr, aerr := storage.Addr(ctx)
	if aerr != nil {
		addr = "unknown"
	}
	missing.Note(ctx, httpapi.LoggerFrom(ctx), "storage", addr, "DELETE /images",
		"images of deleted, expired or retried tasks stay in storage")
	return nil
}

// handleSource serves the uploaded image of a task (see source).
func (s *server) handleSource(w http.ResponseWriter, r *http.Request) error {
	return s.serveImage(w, r, s.source)
}

// source opens the uploaded image of task id as stored, whatever its state.
func (s *server) source(ctx context.Context, id int64) (*client.Image, error) {
	if _, err := s.existing(ctx, id); err != nil {
		return nil, err
	}
	return s.storage.GetImage(ctx, id, wire.WorkingImage)
}

// handleStatus answers the status of a task (see status).
func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	return s.answerStatus(w, r, s.status)
}

// status returns the state of task id in words, with attempts, error, times, chain and name.
func (s *server) status(ctx context.Context, id int64) (wire.Status, error) {
	t, err := s.db.GetByID(ctx, id)
	if err != nil {
		return wire.Status{}, err
	}
	return statusOf(t), nil
}

// handleStats passes the database's count of tasks by state through (additive): the frontend asks it
// whether any task exists before it would make a new public id secret.
func (s *server) handleStats(w http.ResponseWriter, r *http.Request) error {
	stats, err := s.db.Stats(r.Context())
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, stats)
}

// CopyImage streams a peer's image reply to w with its type and length. A HEAD request whose length is
// known is answered without reading the image (net/http would read it all only to drop it).
func CopyImage(w http.ResponseWriter, r *http.Request, img *client.Image) error {
	if img.ContentType != "" {
		w.Header().Set("Content-Type", img.ContentType)
	}
	if img.Size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(img.Size, 10))
		if r.Method == http.MethodHead {
			return nil
		}
	}
	// io.Copy would allocate 32 KiB for every reply; most images are smaller.
	var buf []byte
	if img.Size >= 0 {
		buf = make([]byte, min(max(img.Size, 512), 32<<10))
	}
	if _, err := io.CopyBuffer(w, img, buf); err != nil {
		return fmt.Errorf("stream image: %w", err)
	}
	return nil
}

// DefaultAddr is the master's listen address unless told otherwise (the reference's port).
const DefaultAddr = "127.0.0.1:3003"

// Config configures a Service.
type Config struct {
	service.Options
	KV     *client.KV // where the service registers, and finds database and storage unless given below
	HTTP   *http.Client
	Limits Limits // zero fields take the defaults
	// Database and Storage, when set, are the task database and image storage the master uses (the
	// services of this process, in-process); nil: found through KV and called over HTTP.
	Database Database
	Storage  Storage
	// SweepEvery is how often the master removes the tasks past the database's retention; default
	// DefaultSweepEvery.
	SweepEvery time.Duration
	// OrphanSweepEvery is how often the master removes the images no task wants (see OrphanSweeper);
	// 0: never.
	OrphanSweepEvery time.Duration
	// OrphanGrace is how long an image is left alone after it was written, whatever its task; default
	// consistency.DefaultGrace.
	OrphanGrace time.Duration
}

// Service is one master: its HTTP API, its sweeps, and its worker side in-process (Local), all over
// the same server.
type Service struct {
	cfg     Config
	srv     *server
	handler http.Handler
	reg     *metrics.Registry
	metrics *Metrics
}

// NewService builds the master cfg describes; Run serves it.
func NewService(cfg Config) (*Service, error) {
	db, storage := cfg.Database, cfg.Storage
	if (db == nil || storage == nil) && cfg.KV == nil {
		return nil, errors.New("master: no kv store to find the database and storage through")
	}
	if db == nil {
		db = client.NewDatabase(cfg.HTTP, client.NewResolver(cfg.KV, wire.DatabaseKey, client.ResolveTTL))
	}
	if storage == nil {
		storage = client.NewStorage(cfg.HTTP, client.NewResolver(cfg.KV, wire.StorageKey, client.ResolveTTL))
	}
	cfg.Database, cfg.Storage = db, storage
	limits := cfg.Limits
	// Without a token the master listens on loopback only (service.Run refuses otherwise), so every caller
	// is a process of this machine, as trusted as the frontend; --insecure opens it to anyone.
	limits.TrustOwner = cfg.Token != "" || !cfg.Insecure
	reg := metrics.New("master")
	m := NewMetrics(reg)
	srv := newServer(db, storage, limits, WithMetrics(m))
	mux := httpapi.NewMux()
	addRoutes(mux, srv)
	return &Service{cfg: cfg, srv: srv, handler: mux, reg: reg, metrics: m}, nil
}

// Handler is the master's HTTP API (without the plumbing Run adds: token, metrics, pprof).
func (v *Service) Handler() http.Handler { return v.handler }

// Local is the worker side of this master in-process: the same server as its HTTP API. It needs
// nothing of Run: it works before Run serves the master, and after.
func (v *Service) Local() *Local {
	return &Local{s: v.srv, addr: cmp.Or(v.cfg.Advertise, v.cfg.Addr, "in-process")}
}

// Run serves the master until ctx ends, registered in the kv store as masterAddress.
func (v *Service) Run(ctx context.Context) error {
	cfg := v.cfg
	every := cmp.Or(cfg.SweepEvery, DefaultSweepEvery)
	sweep := func(ctx context.Context) error {
		NewSweeper(cfg.Database, cfg.Storage).WithMetrics(v.metrics).Run(ctx, every, cfg.Logger)
		return nil
	}
	background := []func(context.Context) error{sweep}
	if cfg.OrphanSweepEvery > 0 {
		orphans := NewOrphanSweeper(cfg.Database, cfg.Storage, cfg.OrphanGrace, v.reg)
		background = append(background, func(ctx context.Context) error {
			orphans.Run(ctx, cfg.OrphanSweepEvery, cfg.Logger)
			return nil
		})
	}
	return service.Run(ctx, cfg.Spec(service.Spec{Handler: v.handler,
		RegisterAs: wire.MasterKey, KV: cfg.KV, Internal: true, Metrics: v.reg, Background: background}))
}

// Run serves the master cfg describes until ctx ends (NewService, then Run).
func Run(ctx context.Context, cfg Config) error {
	v, err := NewService(cfg)
	if err != nil {
		return err
	}
	return v.Run(ctx)
}
