// Package database is the database service: task records over the reference wire API, backed by a
// taskstore.Store.
package database

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

const (
	// DefaultLease is the reference time a task may stay in progress before it is handed out again.
	DefaultLease = 120 * time.Second
	// recheckEvery bounds how long a long poll sleeps without looking at the store again, so a lapsed
	// lease (which signals nobody) is noticed promptly.
	recheckEvery = time.Second
)

// Policy is the task lifecycle the database enforces.
type Policy struct {
	Lease       time.Duration // how long a claim lasts without a heartbeat; default DefaultLease
	MaxAttempts int           // claims a task gets before it fails; default taskstore.DefaultMaxAttempts
	// Retry is the wait before a task handed back after a transient failure is claimed again; zero
	// fields take taskstore.DefaultRetryMin and DefaultRetryMax.
	Retry taskstore.RetryBackoff
	// Retention is how long a finished, failed or cancelled task is kept before the sweep (see POST
	// /claimExpired) removes it; 0 keeps tasks forever.
	Retention time.Duration
}

// NewServer returns the database service's handler. done ends pending long polls (service shutdown).
func NewServer(store taskstore.Store, policy Policy, done <-chan struct{}, opts ...Option) http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, newServer(store, policy, done, opts...))
	return mux
}

func newServer(store taskstore.Store, policy Policy, done <-chan struct{}, opts ...Option) *server {
	if policy.Lease <= 0 {
		policy.Lease = DefaultLease
	}
	if policy.MaxAttempts <= 0 {
		policy.MaxAttempts = taskstore.DefaultMaxAttempts
	}
	if policy.Retry.Min <= 0 {
		policy.Retry.Min = taskstore.DefaultRetryMin
	}
	if policy.Retry.Max <= 0 {
		policy.Retry.Max = taskstore.DefaultRetryMax
	}
	s := &server{store: store, lease: policy.Lease, maxAttempts: policy.MaxAttempts, retry: policy.Retry, retention: policy.Retention,
		done: done, recheck: recheckEvery}
	for _, opt := range opts {
		opt(s)
	}
	return s
}

type server struct {
	store       taskstore.Store
	lease       time.Duration
	maxAttempts int
	retry       taskstore.RetryBackoff
	retention   time.Duration // 0: keep forever
	done        <-chan struct{}
	news        signal               // wakes the long polls when a task becomes claimable here
	recheck     time.Duration        // recheckEvery; tests lengthen it
	latency     prometheus.Histogram // nil: no metrics (see WithMetrics)
}

// Every endpoint is a handler, which reads the request, and a core method, which does the work and
// refuses what the endpoint refuses: the handler writes the core's answer, and Local (the in-process
// API) returns it. A core method checks the values it is given as the handler's parsing would, since
// Local's callers give them in Go.

func (s *server) handleNewTask(w http.ResponseWriter, r *http.Request) error {
	pending, err := queryBool(r, "pending")
	if err != nil {
		return err
	}
	p := client.NewTaskParams{Pending: pending, Op: r.URL.Query().Get("op"), Name: r.URL.Query().Get("name"),
		Owner: r.Header.Get(wire.OwnerHeader), IdempotencyKey: r.Header.Get(wire.IdempotencyKeyHeader)}
	if raw := r.URL.Query().Get("maxAttempts"); raw != "" {
		p.MaxAttempts, err = strconv.Atoi(raw)
		if err != nil || p.MaxAttempts < 1 {
			return httpapi.Errorf(http.StatusBadRequest, "maxAttempts must be a whole number from 1 to %d, got %q", maxMaxAttempts, raw)
		}
	}
	created, err := s.createTask(r.Context(), p)
	if err != nil {
		return err
	}
	if created.Replayed {
		w.Header().Set(wire.ReplayedHeader, "true")
		w.Header().Set(wire.PendingHeader, strconv.FormatBool(created.Pending))
	}
	httpapi.WriteText(w, http.StatusOK, strconv.FormatInt(created.ID, 10))
	return nil
}

// maxMaxAttempts caps a task's claims (the maxAttempts parameter).
const maxMaxAttempts = 100

// createTask creates a task; p.MaxAttempts <= 0 takes the policy's. With an idempotency key
// (additive) it answers the task a request with the same key created within wire.IdempotencyWindow
// instead, if any: a client whose answer was lost retries without creating a second task. A replay
// says so, and whether the task is still pending, so that the master can finish a broken-off upload.
func (s *server) createTask(ctx context.Context, p client.NewTaskParams) (client.NewTaskResult, error) {
	maxAttempts := p.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = s.maxAttempts
	}
	if maxAttempts > maxMaxAttempts {
		return client.NewTaskResult{}, httpapi.Errorf(http.StatusBadRequest, "maxAttempts must be a whole number from 1 to %d, got %q",
			maxMaxAttempts, strconv.Itoa(maxAttempts))
	}
	// Additive: the operation chain, kept as given. The master checks it before it gets here and the
	// worker before it processes, so a new operation needs new masters and workers, not a new database;
	// here it is only bounded.
	if err := wire.CheckOp(p.Op); err != nil {
		return client.NewTaskResult{}, httpapi.Errorf(http.StatusBadRequest, "op: %v", err)
	}
	// Additive: who queues the task, whom claims serve in turn. The master sets it; "" when absent.
	if err := wire.CheckOwner(p.Owner); err != nil {
		return client.NewTaskResult{}, httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	// Additive: the upload's file name, kept to name the downloads. The frontend cleans it (wire.CleanName).
	if err := wire.CheckName(p.Name); err != nil {
		return client.NewTaskResult{}, httpapi.Errorf(http.StatusBadRequest, "name: %v", err)
	}
	cp := taskstore.CreateParams{Pending: p.Pending, MaxAttempts: maxAttempts, Op: p.Op, Owner: p.Owner, Name: p.Name}
	if p.IdempotencyKey == "" {
		id, err := s.store.Create(ctx, cp)
		if err != nil {
			return client.NewTaskResult{}, fmt.Errorf("create task: %w", err)
		}
		if !p.Pending {
			s.news.broadcast()
		}
		return client.NewTaskResult{ID: id}, nil
	}
	if err := wire.CheckIdempotencyKey(p.IdempotencyKey); err != nil {
		return client.NewTaskResult{}, httpapi.Errorf(http.StatusBadRequest, "%v", err)
	}
	t, replayed, err := s.store.CreateOnce(ctx, cp, p.IdempotencyKey, wire.IdempotencyWindow)
	if err != nil {
		return client.NewTaskResult{}, fmt.Errorf("create task: %w", err)
	}
	if replayed {
		return client.NewTaskResult{ID: t.ID, Replayed: true, Pending: t.Pending && t.State == wire.NotStarted}, nil
	}
	if !p.Pending {
		s.news.broadcast()
	}
	return client.NewTaskResult{ID: t.ID}, nil
}

func (s *server) handleGetByID(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	t, err := s.getByID(r.Context(), id)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, t)
}

func (s *server) getByID(ctx context.Context, id int64) (wire.Task, error) {
	if err := httpapi.CheckID("id", id); err != nil {
		return wire.Task{}, err
	}
	t, err := s.store.Get(ctx, id)
	if err != nil {
		return wire.Task{}, storeError(id, err)
	}
	return s.wireTask(t), nil
}

// handleGetByIDs answers many tasks in one call (additive): the master's POST /statuses asks for every
// task the frontends' event streams watch, once a second, in one request rather than one per task.
func (s *server) handleGetByIDs(w http.ResponseWriter, r *http.Request) error {
	var q wire.TaskIDs
	if err := httpapi.DecodeStrict(r.Body, int64(wire.MaxStatusIDs)*21+64, &q); err != nil {
		return err
	}
	out, err := s.getByIDs(r.Context(), q.IDs)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, out)
}

func (s *server) getByIDs(ctx context.Context, ids []int64) (wire.Tasks, error) {
	if len(ids) > wire.MaxStatusIDs {
		return wire.Tasks{}, httpapi.Errorf(http.StatusBadRequest, "at most %d ids at once, got %d", wire.MaxStatusIDs, len(ids))
	}
	out := wire.Tasks{Tasks: make([]wire.Task, 0, len(ids))}
	for _, id := range ids {
		t, err := s.store.Get(ctx, id)
		switch {
		case errors.Is(err, taskstore.ErrNotFound):
			out.Missing = append(out.Missing, id)
		case err != nil:
			return wire.Tasks{}, storeError(id, err)
		default:
			out.Tasks = append(out.Tasks, s.wireTask(t))
		}
	}
	return out, nil
}

// handleGetNewTask claims a task, or with max (additive, 2 to taskstore.MaxClaimBatch) up to max tasks
// in one transaction, answered as {"tasks":[...]}; without max, or with max=1, the answer is the
// reference's task JSON.
func (s *server) handleGetNewTask(w http.ResponseWriter, r *http.Request) error {
	wait, err := httpapi.QueryDuration(r, "wait", wire.MaxWait)
	if err != nil {
		return err
	}
	n, err := claimBatch(r)
	if err != nil {
		return err
	}
	ts, err := s.claimWait(r.Context(), n, wait)
	if err != nil {
		return err
	}
	if n == 1 {
		return httpapi.WriteJSON(w, http.StatusOK, ts[0])
	}
	return httpapi.WriteJSON(w, http.StatusOK, wire.Tasks{Tasks: ts})
}

// claimBatch reads /getNewTask's max parameter: 1 when absent.
func claimBatch(r *http.Request) (int, error) {
	raw := r.URL.Query().Get(wire.MaxTasksParam)
	if raw == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || taskstore.CheckClaimBatch(n) != nil {
		return 0, claimBatchError(raw)
	}
	return n, nil
}

func claimBatchError(raw string) error {
	return httpapi.Errorf(http.StatusBadRequest, "%s must be a whole number from 1 to %d, got %q",
		wire.MaxTasksParam, taskstore.MaxClaimBatch, raw)
}

// claimWait claims one task, or up to n in one transaction. A long poll (wait > 0) answers as soon as
// at least one task is claimable: the news signal wakes it when this server queued one (through
// either transport), and it looks again every s.recheck for what signals nobody (a lapsed lease, a
// retry's wait). It answers the reference's "no task" refusal when none came in time, when ctx ends
// or when the service stops.
func (s *server) claimWait(ctx context.Context, n int, wait time.Duration) ([]wire.Task, error) {
	if wait < 0 || wait > wire.MaxWait {
		return nil, httpapi.Errorf(http.StatusBadRequest, "wait must be between 0 and %s", wire.MaxWait)
	}
	if taskstore.CheckClaimBatch(n) != nil {
		return nil, claimBatchError(strconv.Itoa(n))
	}
	deadline := time.Now().Add(wait)
	for {
		// Take the wake-up channel before looking, so a task created in between is not missed.
		woken := s.news.wait()
		ts, err := s.claim(ctx, n)
		if err == nil {
			out := make([]wire.Task, len(ts))
			for i, t := range ts {
				out[i] = s.wireTask(t)
			}
			return out, nil
		}
		if !errors.Is(err, taskstore.ErrNoTask) {
			return nil, fmt.Errorf("claim: %w", err)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, httpapi.Errorf(http.StatusBadRequest, wire.NoTaskMessage)
		}
		timer := time.NewTimer(min(remaining, s.recheck))
		select {
		case <-woken:
		case <-timer.C:
		case <-ctx.Done():
		case <-s.done:
		}
		timer.Stop()
		if ctx.Err() != nil || isClosed(s.done) {
			return nil, httpapi.Errorf(http.StatusBadRequest, wire.NoTaskMessage)
		}
	}
}

// claim takes one task (Claim, as always) or a batch of up to n (ClaimN).
func (s *server) claim(ctx context.Context, n int) ([]taskstore.Task, error) {
	if n == 1 {
		t, err := s.store.Claim(ctx, s.lease)
		if err != nil {
			return nil, err
		}
		return []taskstore.Task{t}, nil
	}
	return s.store.ClaimN(ctx, n, s.lease)
}

func (s *server) handleSetByID(w http.ResponseWriter, r *http.Request) error {
	// The task JSON's other fields may come along (a client sending back the task it read) and are
	// ignored; a field the task JSON does not have, or a key given twice, is refused.
	var body struct {
		wire.Task
		ID    *int64 `json:"id"`
		State *int   `json:"state"`
	}
	if err := httpapi.DecodeStrict(r.Body, 64<<10, &body); err != nil {
		return httpapi.Errorf(httpapi.StatusOf(err), "body must be task JSON like {\"id\":0,\"state\":1}: %s", httpapi.ErrorMessage(err))
	}
	if body.ID == nil {
		return httpapi.Errorf(http.StatusBadRequest, "task JSON needs a non-negative id")
	}
	if body.State == nil {
		return httpapi.Errorf(http.StatusBadRequest, "task JSON needs a state of 0, 1, 2 or 3")
	}
	if err := s.setByID(r.Context(), *body.ID, wire.State(*body.State)); err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

// setByID sets a task's state, the reference's way of moving a task along.
func (s *server) setByID(ctx context.Context, id int64, state wire.State) error {
	if id < 0 {
		return httpapi.Errorf(http.StatusBadRequest, "task JSON needs a non-negative id")
	}
	if !state.Valid() {
		return httpapi.Errorf(http.StatusBadRequest, "task JSON needs a state of 0, 1, 2 or 3")
	}
	if err := s.store.Set(ctx, id, state, s.lease); err != nil {
		return storeError(id, err)
	}
	if state == wire.NotStarted {
		s.news.broadcast()
	}
	return nil
}

func (s *server) handleList(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	bw := bufio.NewWriter(w)
	for t, err := range s.tasks(r.Context()) {
		if err != nil {
			return err
		}
		line, err := json.Marshal(t)
		if err != nil {
			return err
		}
		bw.Write(line)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// tasks streams every task in id order, as the wire shows them; the stream stops at the first error,
// which it yields.
func (s *server) tasks(ctx context.Context) iter.Seq2[wire.Task, error] {
	return func(yield func(wire.Task, error) bool) {
		for t, err := range s.store.List(ctx) {
			if err != nil {
				yield(wire.Task{}, fmt.Errorf("list tasks: %w", err))
				return
			}
			if !yield(s.wireTask(t), nil) {
				return
			}
		}
	}
}

// handleStats answers how many tasks are in each state, as JSON with the states in words.
func (s *server) handleStats(w http.ResponseWriter, r *http.Request) error {
	st, err := s.stats(r.Context())
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, st)
}

func (s *server) stats(ctx context.Context) (wire.Stats, error) {
	c, err := s.store.Counts(ctx)
	if err != nil {
		return wire.Stats{}, fmt.Errorf("count tasks: %w", err)
	}
	return wire.Stats{Queued: c.Queued, Pending: c.Pending, Processing: c.Processing,
		Finished: c.Finished, Failed: c.Failed, Cancelled: c.Cancelled}, nil
}

// wireTask is t as the wire carries it, with when retention removes it once it settled.
func (s *server) wireTask(t taskstore.Task) wire.Task {
	var expires time.Time
	if s.retention > 0 && (t.State == wire.Finished || t.State == wire.Failed || t.State == wire.Cancelled) {
		expires = t.FinishedAt.Add(s.retention)
	}
	return wire.Task{ExpiresAt: expires, ID: t.ID, State: t.State, Token: t.Token, Attempts: t.Attempts, MaxAttempts: t.MaxAttempts,
		Error: t.Error, CreatedAt: t.CreatedAt, StartedAt: t.StartedAt, FinishedAt: t.FinishedAt, LeaseUntil: t.LeaseUntil,
		Op: t.Op, RetryAt: t.RetryAt, Retries: t.Retries, Pending: t.Pending && t.State == wire.NotStarted, Owner: t.Owner,
		Name: t.Name}
}

// handleActivateTask makes a pending task claimable. The additive size parameter is the bytes of its
// stored image, counted in its owner's usage (0 when absent: a reference master tells none).
func (s *server) handleActivateTask(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	var size int64
	if v := r.URL.Query().Get("size"); v != "" {
		if size, err = strconv.ParseInt(v, 10, 64); err != nil {
			return sizeError(v)
		}
	}
	if err := s.activate(r.Context(), id, size); err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

func sizeError(raw string) error {
	return httpapi.Errorf(http.StatusBadRequest, "size: want a number of bytes, got %q", raw)
}

func (s *server) activate(ctx context.Context, id, size int64) error {
	if err := httpapi.CheckID("id", id); err != nil {
		return err
	}
	if size < 0 {
		return sizeError(strconv.FormatInt(size, 10))
	}
	if err := s.store.Activate(ctx, id, size); err != nil {
		return storeError(id, err)
	}
	s.news.broadcast()
	return nil
}

// handleUsage answers what the owner named by the owner parameter keeps stored (additive; "" is the
// owner of tasks that name none), for the master's quotas.
func (s *server) handleUsage(w http.ResponseWriter, r *http.Request) error {
	u, err := s.usage(r.Context(), r.URL.Query().Get("owner"))
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, u)
}

func (s *server) usage(ctx context.Context, owner string) (wire.Usage, error) {
	u, err := s.store.Usage(ctx, owner)
	if err != nil {
		return wire.Usage{}, fmt.Errorf("read usage: %w", err)
	}
	return wire.Usage{Tasks: u.Tasks, Bytes: u.Bytes}, nil
}

func (s *server) handleFinishTask(w http.ResponseWriter, r *http.Request) error {
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

func (s *server) finish(ctx context.Context, id, token int64) error {
	if err := httpapi.CheckIDAndToken(id, token); err != nil {
		return err
	}
	start := time.Now()
	t, err := s.store.Finish(ctx, id, token)
	if err != nil {
		return storeError(id, err)
	}
	s.observeFinished(t, start)
	return nil
}

func (s *server) handleExtendLease(w http.ResponseWriter, r *http.Request) error {
	id, token, err := httpapi.QueryIDAndToken(r)
	if err != nil {
		return err
	}
	t, err := s.extend(r.Context(), id, token)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, t)
}

// extend renews a claim's lease. The database answers at once, whatever wait a caller asks for (the
// master holds the call; see client.LeaseAPI.WatchLease).
func (s *server) extend(ctx context.Context, id, token int64) (wire.Task, error) {
	if err := httpapi.CheckIDAndToken(id, token); err != nil {
		return wire.Task{}, err
	}
	t, err := s.store.Extend(ctx, id, token, s.lease)
	if err != nil {
		return wire.Task{}, storeError(id, err)
	}
	return s.wireTask(t), nil
}

func (s *server) handleFailTask(w http.ResponseWriter, r *http.Request) error {
	id, token, err := httpapi.QueryIDAndToken(r)
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
	t, err := s.fail(r.Context(), id, token, r.URL.Query().Get("reason"), permanent, transient)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, t)
}

// fail records a failed attempt (permanent: not to be claimed again), or with transient hands the task
// back for a later claim without counting the attempt.
func (s *server) fail(ctx context.Context, id, token int64, reason string, permanent, transient bool) (wire.Task, error) {
	if err := httpapi.CheckIDAndToken(id, token); err != nil {
		return wire.Task{}, err
	}
	reason, err := checkReason(reason)
	if err != nil {
		return wire.Task{}, err
	}
	var t taskstore.Task
	switch {
	case permanent && transient:
		return wire.Task{}, httpapi.Errorf(http.StatusBadRequest, "a failure cannot be both permanent and transient")
	case transient:
		t, err = s.store.Retry(ctx, id, token, reason, s.retry)
	default:
		t, err = s.store.Fail(ctx, id, token, reason, permanent)
	}
	if err != nil {
		return wire.Task{}, storeError(id, err)
	}
	if t.State == wire.NotStarted {
		s.news.broadcast()
	}
	return s.wireTask(t), nil
}

// handleCancelTask cancels a task that has not finished (additive) and answers it, state Cancelled: a
// queued task is never claimed, a processing one's worker is refused (410) at its next heartbeat or
// report. Cancelling a cancelled task answers it again; a finished or failed one is 409.
func (s *server) handleCancelTask(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	t, err := s.cancel(r.Context(), id)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, t)
}

func (s *server) cancel(ctx context.Context, id int64) (wire.Task, error) {
	if err := httpapi.CheckID("id", id); err != nil {
		return wire.Task{}, err
	}
	t, err := s.store.Cancel(ctx, id)
	if err != nil {
		return wire.Task{}, storeError(id, err)
	}
	return s.wireTask(t), nil
}

// handleRequeueTask queues a failed or cancelled task again (additive: a client's retry) and answers it,
// state NotStarted with attempts and error cleared; it keeps its op, name and image. 409 for a task in
// any other state, 410 for one whose upload never completed, 400 for an unknown or deleted id (as
// every reference call). A worker that still held it is refused at its next report. The master checks
// that the task's image is still stored before it asks. A task past the retention is 410 too: a sweep
// may hold it already (POST /claimExpired) and would remove it, queued or not.
func (s *server) handleRequeueTask(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	t, err := s.requeue(r.Context(), id)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, t)
}

func (s *server) requeue(ctx context.Context, id int64) (wire.Task, error) {
	if err := httpapi.CheckID("id", id); err != nil {
		return wire.Task{}, err
	}
	if s.retention > 0 {
		if t, err := s.store.Get(ctx, id); err == nil && (t.State == wire.Failed || t.State == wire.Cancelled) &&
			!time.Now().Before(t.FinishedAt.Add(s.retention)) {
			return wire.Task{}, httpapi.Errorf(http.StatusGone, "task %d expired: it is being removed", id)
		}
	}
	t, err := s.store.Requeue(ctx, id)
	switch {
	case errors.Is(err, taskstore.ErrNotRetryable):
		return wire.Task{}, httpapi.Errorf(http.StatusConflict, "task %d is neither failed nor cancelled", id)
	case errors.Is(err, taskstore.ErrNoUpload):
		return wire.Task{}, httpapi.Errorf(http.StatusGone, "task %d has no image: its upload never completed", id)
	case err != nil:
		return wire.Task{}, storeError(id, err)
	}
	s.news.broadcast()
	return s.wireTask(t), nil
}

// handleDeleteTask removes a task's record (additive), leaving a tombstone, and answers 204, again for
// a task deleted before; 404 for an id that never named a task. A worker that holds it is refused (410).
// The master removes the task's images first.
func (s *server) handleDeleteTask(w http.ResponseWriter, r *http.Request) error {
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

func (s *server) delete(ctx context.Context, id int64) error {
	if err := httpapi.CheckID("id", id); err != nil {
		return err
	}
	if err := s.store.Delete(ctx, id); err != nil {
		if errors.Is(err, taskstore.ErrNotFound) {
			return httpapi.Errorf(http.StatusNotFound, "no task with id %d", id)
		}
		return storeError(id, err)
	}
	return nil
}

// DefaultRetention is how long the command line keeps a settled task (--retention).
const DefaultRetention = 7 * 24 * time.Hour

// MaxExpiredBatch caps the limit of one POST /claimExpired; ExpiredHold is how long the sweeper that
// took a batch has to remove it before another sweeper may take it again.
const (
	MaxExpiredBatch = 1000
	ExpiredHold     = 10 * time.Minute
)

// handleClaimExpired answers the ids of up to limit tasks (default 100) that settled longer than the
// retention ago (additive), oldest first, and holds them for ExpiredHold so that a concurrent caller,
// through this or another database service, gets other ones. The caller (the master's sweeper) removes
// each as DELETE does. With no retention it answers none.
func (s *server) handleClaimExpired(w http.ResponseWriter, r *http.Request) error {
	limit := 100
	if raw := r.URL.Query().Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			return limitError(raw)
		}
		limit = n
	}
	ids, err := s.claimExpired(r.Context(), limit)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, wire.TaskIDs{IDs: ids})
}

func limitError(raw string) error {
	return httpapi.Errorf(http.StatusBadRequest, "limit must be a whole number from 1 to %d, got %q", MaxExpiredBatch, raw)
}

func (s *server) claimExpired(ctx context.Context, limit int) ([]int64, error) {
	if limit < 1 || limit > MaxExpiredBatch {
		return nil, limitError(strconv.Itoa(limit))
	}
	out := []int64{}
	if s.retention > 0 {
		ids, err := s.store.ClaimExpired(ctx, s.retention, limit, ExpiredHold)
		if err != nil {
			return nil, fmt.Errorf("claim expired tasks: %w", err)
		}
		out = append(out, ids...)
	}
	return out, nil
}

// checkReason checks a failure's reason, required, and cuts it to 1000 bytes.
func checkReason(reason string) (string, error) {
	reason = strings.TrimSpace(reason)
	if reason == "" {
		return "", httpapi.Errorf(http.StatusBadRequest, "missing reason parameter")
	}
	if len(reason) > 1000 {
		// Cut at a character boundary: half a character would be stored as invalid UTF-8.
		cut := 1000
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	return reason, nil
}

// handleAbandonTask fails a pending task whose upload was refused or broke off (additive; the master
// calls it), so that it neither waits for the pending timeout nor counts as queued.
func (s *server) handleAbandonTask(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	reason := wire.AbandonedError
	if r.URL.Query().Has("reason") {
		reason = r.URL.Query().Get("reason")
	}
	if err := s.abandon(r.Context(), id, reason); err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

func (s *server) abandon(ctx context.Context, id int64, reason string) error {
	if err := httpapi.CheckID("id", id); err != nil {
		return err
	}
	reason, err := checkReason(reason)
	if err != nil {
		return err
	}
	if err := s.store.Abandon(ctx, id, reason); err != nil {
		if errors.Is(err, taskstore.ErrNotPending) {
			return httpapi.Errorf(http.StatusConflict, "task %d is not pending: its upload completed", id)
		}
		return storeError(id, err)
	}
	return nil
}

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

func (s *server) release(ctx context.Context, id, token int64) error {
	if err := httpapi.CheckIDAndToken(id, token); err != nil {
		return err
	}
	if err := s.store.Release(ctx, id, token); err != nil {
		return storeError(id, err)
	}
	s.news.broadcast()
	return nil
}

// storeError maps the store's errors to the reference's 400 answers, and imgmill's fencing refusals to 409.
func storeError(id int64, err error) error {
	switch {
	case errors.Is(err, taskstore.ErrNotFound):
		return httpapi.Errorf(http.StatusBadRequest, "no task with id %d", id)
	case errors.Is(err, taskstore.ErrNotInProgress):
		return httpapi.Errorf(http.StatusBadRequest, "task %d is not in progress", id)
	case errors.Is(err, taskstore.ErrInvalidState):
		return httpapi.Errorf(http.StatusBadRequest, "invalid state for task %d", id)
	case errors.Is(err, taskstore.ErrStaleToken):
		return httpapi.Errorf(http.StatusConflict, "stale lease token for task %d", id)
	case errors.Is(err, taskstore.ErrNotPending):
		return httpapi.Errorf(http.StatusConflict, "task %d is no longer pending: its upload expired", id)
	case errors.Is(err, taskstore.ErrCancelled):
		// Gone, not Conflict: the holder must stop and report nothing, and whoever passes a finish on
		// (the master) knows the result it stored is not wanted either.
		return httpapi.Errorf(http.StatusGone, "task %d was cancelled", id)
	case errors.Is(err, taskstore.ErrSettled):
		return httpapi.Errorf(http.StatusConflict, "task %d already finished", id)
	}
	return fmt.Errorf("task %d: %w", id, err)
}

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

// signal wakes every current waiter at once: wait returns a channel that broadcast closes.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) broadcast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// DefaultAddr is the database service's listen address unless told otherwise (the reference's port).
const DefaultAddr = "127.0.0.1:3001"

// DefaultPendingTimeout is how long an upload may take before its pending task is given up.
const DefaultPendingTimeout = 15 * time.Minute

// Config configures Run and NewService.
type Config struct {
	service.Options
	KV *client.KV // where the service registers
	// Store is the task store, opened by the caller (see package engines), who closes it after Run.
	Store          taskstore.Store
	Policy         Policy
	PendingTimeout time.Duration // default DefaultPendingTimeout
}

// Run serves the database service on cfg.Store until ctx ends, registered in the kv store as
// databaseAddress.
func Run(ctx context.Context, cfg Config) error {
	s, err := NewService(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// Service is one database service: the server that Run serves over HTTP and Local serves in this
// process, so that both share its long polls' wake-ups and its metrics.
type Service struct {
	cfg  Config
	srv  *server
	reg  *metrics.Registry
	stop func() // closes srv.done, ending the long polls
	ran  atomic.Bool
}

// NewService builds the database service on cfg.Store; Run serves it, Local calls it in this process.
func NewService(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("database service: no task store")
	}
	if cfg.PendingTimeout <= 0 {
		cfg.PendingTimeout = DefaultPendingTimeout
	}
	done := make(chan struct{})
	reg := metrics.New("database")
	return &Service{cfg: cfg, srv: newServer(cfg.Store, cfg.Policy, done, WithMetrics(reg)), reg: reg,
		stop: sync.OnceFunc(func() { close(done) })}, nil
}

// Local returns the in-process API of the service: it works on the same server as Run, before, while
// and after Run serves it (once Run returned, its long polls answer at once).
func (s *Service) Local() *Local { return &Local{s: s.srv} }

// Run serves the service until ctx ends, registered in the kv store as databaseAddress. A Service
// runs once.
func (s *Service) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("database service: already run")
	}
	// The long polls end when ctx does, so that shutdown does not wait for them, and stay ended.
	defer context.AfterFunc(ctx, s.stop)()
	defer s.stop()
	cfg, store, srv := s.cfg, s.cfg.Store, s.srv
	mux := httpapi.NewMux()
	addRoutes(mux, srv)
	background := []func(context.Context) error{func(ctx context.Context) error {
		expirePending(ctx, store, cfg.PendingTimeout, cfg.Logger)
		return nil
	}}
	background = append(background, func(ctx context.Context) error {
		purgeDeleted(ctx, store, time.Minute, TombstoneKeep, purgeBatch, cfg.Logger)
		return nil
	})
	if w, ok := store.(taskstore.Watcher); ok {
		// Other database services share the store: wake our long polls for the work they make claimable.
		background = append(background, func(ctx context.Context) error {
			if err := w.Watch(ctx, srv.news.broadcast); err != nil && ctx.Err() == nil {
				return fmt.Errorf("watch the task store: %w", err)
			}
			return nil
		})
	}
	return service.Run(ctx, cfg.Spec(service.Spec{
		Handler: mux, Ready: store.Ping, RegisterAs: wire.DatabaseKey, KV: cfg.KV, Internal: true,
		Background: background, Metrics: s.reg,
	}))
}

// expirePending gives up uploads that never completed (a master that died mid-upload leaves its task
// pending), so no task stays unfinished forever.
func expirePending(ctx context.Context, store taskstore.Store, olderThan time.Duration, logger *slog.Logger) {
	every := min(olderThan/4, time.Minute)
	for backoff.Sleep(ctx, every) {
		n, err := store.ExpirePending(ctx, olderThan)
		switch {
		case err != nil && ctx.Err() == nil:
			logger.WarnContext(ctx, "expiring pending tasks failed", "err", err)
		case n > 0:
			logger.InfoContext(ctx, "expired pending tasks", "count", n, "older_than", olderThan)
		}
	}
}

// TombstoneKeep is how long a deleted task's tombstone stays before purgeDeleted removes it: longer
// than a sweeper holds a batch of tasks it removes and than any lease, though nothing depends on it
// (a removed tombstone answers as the tombstone did; see taskstore.Store.PurgeDeleted).
const TombstoneKeep = 10 * time.Minute

// purgeBatch is how many tombstones one statement removes: a short write, so that claims do not wait.
const purgeBatch = 1000

// purgeDeleted removes the tombstones of tasks deleted more than keep ago, every interval, batch at a
// time, so that a store that deletes as much as it creates (under retention) stays the same size.
// Several database instances may purge one store at once: each removes what the others did not.
func purgeDeleted(ctx context.Context, store taskstore.Store, every, keep time.Duration, batch int, logger *slog.Logger) {
	for backoff.Sleep(ctx, every) {
		removed := 0
		for {
			n, err := store.PurgeDeleted(ctx, keep, batch)
			removed += n
			if err != nil {
				if ctx.Err() == nil {
					logger.WarnContext(ctx, "removing old tombstones failed", "err", err, "removed", removed)
				}
				break
			}
			if n < batch {
				break
			}
		}
		if removed > 0 {
			logger.DebugContext(ctx, "removed old tombstones", "count", removed)
		}
	}
}
