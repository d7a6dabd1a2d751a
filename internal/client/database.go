package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// NewTaskParams are the options of a new task; the zero value is the reference's plain /newTask.
type NewTaskParams struct {
	// Pending tasks are not claimable until activated (the master's upload protocol).
	Pending     bool
	MaxAttempts int    // 0: the database's default
	Op          string // the operation chain, as imageop.ParseChain accepts it; "": the default
	// IdempotencyKey, when set, makes the creation idempotent: a retry with the same key answers the
	// task the first call created (see wire.IdempotencyKeyHeader).
	IdempotencyKey string
	// Owner is who queues the task, whom claims serve in turn (see wire.OwnerHeader); "": none.
	Owner string
	// Name is the upload's file name (wire.CheckName); "": none.
	Name string
}

// NewTaskResult is the database's answer to a new task.
type NewTaskResult struct {
	ID int64
	// Replayed: the idempotency key named a task created before, and nothing was created.
	Replayed bool
	// Pending: the task is still pending (said only of a replayed task; a new one is as asked).
	Pending bool
}

// Database is a client of the database service.
type Database struct {
	p peer
	LeaseAPI
	kinds *databaseKinds
}

// NewDatabase returns a database client reaching the service through ep.
func NewDatabase(hc *http.Client, ep Endpoint) *Database {
	kinds := &databaseKinds{reference: map[string]bool{}}
	p := peer{name: "database", http: hc, ep: ep, missing: kinds.missing}
	return &Database{p: p, LeaseAPI: LeaseAPI{p: p, finishPath: "/finishTask"}, kinds: kinds}
}

// databaseKinds remembers, per address, whether the database there is the reference design's (it
// lacks the endpoints only imgmill has) or imgmill's, so that each address is found out once.
type databaseKinds struct {
	mu        sync.Mutex
	reference map[string]bool // by address; absent: not known yet
}

// missing records that the database at addr lacks path, which makes it a reference one; the first time
// for an address it says so at INFO.
func (k *databaseKinds) missing(ctx context.Context, addr, path string) {
	k.mu.Lock()
	known := k.reference[addr]
	k.reference[addr] = true
	k.mu.Unlock()
	if !known {
		httpapi.LoggerFrom(ctx).InfoContext(ctx, fmt.Sprintf("peer at http://%s has no %s: the reference design's database; "+
			"falling back to its endpoints (uploads stored before their task is created; no leases, failed state, "+
			"quotas, idempotency keys, cancel, retry or delete)", addr, path), "addr", addr, "endpoint", path)
	}
}

// lookup says what is known of the database at addr.
func (k *databaseKinds) lookup(addr string) (reference, known bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	reference, known = k.reference[addr]
	return reference, known
}

// verdict says whether any of addrs is a reference database, settled when every one of them is known
// (and there is at least one).
func (k *databaseKinds) verdict(addrs []string) (reference, settled bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, addr := range addrs {
		ref, known := k.reference[addr]
		if !known {
			return false, false
		}
		reference = reference || ref
	}
	return reference, len(addrs) > 0
}

// answered records that the database at addr served an endpoint only imgmill has.
func (k *databaseKinds) answered(addr string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reference[addr] = false
}

// Reference reports whether the database is the reference design's, which has none of imgmill's
// additive endpoints: its /newTask makes a task claimable at once, and there are no pending tasks,
// leases, failures or counts. Each address is asked once (GET /healthz, which only imgmill's database
// serves) and the answer kept; while every address the endpoint knows has its answer, Reference asks
// nobody, and says whether any of them is a reference one. An error is the database being away.
func (c *Database) Reference(ctx context.Context) (bool, error) {
	if lister, ok := c.p.ep.(knownAddrs); ok {
		if reference, settled := c.kinds.verdict(lister.KnownAddrs()); settled {
			return reference, nil
		}
	}
	addr, err := c.p.ep.Addr(ctx)
	if err != nil {
		return false, c.p.unavailable("database not found", err)
	}
	if reference, known := c.kinds.lookup(addr); known {
		return reference, nil
	}
	probe := c.p
	probe.ep = Static(addr)
	_, err = probe.sendText(ctx, call{method: http.MethodGet, path: "/healthz", idempotent: true})
	var refusal *httpapi.Error
	switch {
	case IsNoEndpoint(err):
		return true, nil // recorded and logged by the call
	case errors.As(err, &refusal) && !refusal.Transient():
		// Refused (say, 401 without the token), but in imgmill's words.
	case err != nil:
		return false, err
	}
	c.kinds.answered(addr)
	return false, nil
}

// NewTask creates a task and returns its id. A pending task is not claimable until ActivateTask;
// maxAttempts <= 0 takes the database's default.
func (c *Database) NewTask(ctx context.Context, p NewTaskParams) (int64, error) {
	r, err := c.CreateTask(ctx, p)
	return r.ID, err
}

// CreateTask creates a task, or with an idempotency key finds the one a call with the same key created.
func (c *Database) CreateTask(ctx context.Context, p NewTaskParams) (NewTaskResult, error) {
	q := url.Values{}
	if p.Pending {
		q.Set("pending", "true")
	}
	if p.MaxAttempts > 0 {
		q.Set("maxAttempts", strconv.Itoa(p.MaxAttempts))
	}
	if p.Op != "" {
		q.Set("op", p.Op)
	}
	if p.Name != "" {
		q.Set("name", p.Name)
	}
	cl := call{method: http.MethodPost, path: "/newTask", query: q, header: http.Header{}}
	if p.IdempotencyKey != "" {
		// With a key a retry after a lost answer finds the same task; without one it would create a
		// second, so it is not retried.
		cl.header.Set(wire.IdempotencyKeyHeader, p.IdempotencyKey)
		cl.idempotent = true
	}
	if p.Owner != "" {
		cl.header.Set(wire.OwnerHeader, p.Owner)
	}
	r, err := c.p.sendSmall(ctx, cl)
	if err != nil {
		return NewTaskResult{}, err
	}
	id, err := parseID(r.body)
	return NewTaskResult{ID: id, Replayed: r.header.Get(wire.ReplayedHeader) == "true", Pending: r.header.Get(wire.PendingHeader) == "true"}, err
}

// AbandonTask fails a pending task at once because its upload was refused or broke off, so that it
// neither waits for the pending timeout nor counts as queued. reason is kept as the task's error.
func (c *Database) AbandonTask(ctx context.Context, id int64, reason string) error {
	q := idQuery(id)
	q.Set("reason", reason)
	return expectSuccess(c.p.sendText(ctx, call{method: http.MethodPost, path: "/abandonTask", query: q, idempotent: true}))
}

// ActivateTask makes a pending task claimable; size is the bytes of its stored image, counted in its
// owner's usage.
func (c *Database) ActivateTask(ctx context.Context, id, size int64) error {
	q := idQuery(id)
	q.Set("size", strconv.FormatInt(size, 10))
	return expectSuccess(c.p.sendText(ctx, call{method: http.MethodPost, path: "/activateTask", query: q, idempotent: true}))
}

// Usage returns what owner keeps stored: its tasks not deleted and their images' bytes.
func (c *Database) Usage(ctx context.Context, owner string) (wire.Usage, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodGet, path: "/usage", query: url.Values{"owner": {owner}}, idempotent: true})
	return jsonReply[wire.Usage]("usage", reply, err)
}

// CancelTask cancels a task that has not finished and returns it (state Cancelled); cancelling a
// cancelled task is a no-op. A finished or failed task is refused with status 409, an unknown or deleted
// one with 400.
func (c *Database) CancelTask(ctx context.Context, id int64) (wire.Task, error) {
	return taskReply(c.p.sendText(ctx, call{method: http.MethodPost, path: "/cancelTask", query: idQuery(id), idempotent: true}))
}

// RequeueTask queues a failed or cancelled task again (a client's retry) and returns it, not started
// with attempts and error cleared. A task in any other state is refused with status 409, one whose
// upload never completed with 410, an unknown or deleted one with 400. It is not retried: a repeat
// after a lost answer would be refused (409) for the task it queued.
func (c *Database) RequeueTask(ctx context.Context, id int64) (wire.Task, error) {
	return taskReply(c.p.sendText(ctx, call{method: http.MethodPost, path: "/requeueTask", query: idQuery(id)}))
}

// DeleteTask removes a task's record; deleting a deleted task again succeeds, an id that never named a
// task is refused with status 404.
func (c *Database) DeleteTask(ctx context.Context, id int64) error {
	_, err := c.p.sendText(ctx, call{method: http.MethodDelete, path: "/task", query: idQuery(id), idempotent: true})
	return err
}

// ClaimExpired returns up to limit tasks whose retention ran out, held for this caller for a while
// (database.ExpiredHold) so that other sweepers get other ones; none when the database keeps tasks forever.
func (c *Database) ClaimExpired(ctx context.Context, limit int) ([]int64, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodPost, path: "/claimExpired",
		query: url.Values{"limit": {strconv.Itoa(limit)}}})
	ids, err := jsonReply[wire.TaskIDs]("expired tasks", reply, err)
	return ids.IDs, err
}

func (c *Database) GetByID(ctx context.Context, id int64) (wire.Task, error) {
	return taskReply(c.p.sendText(ctx, call{method: http.MethodGet, path: "/getById", query: idQuery(id), idempotent: true}))
}

// GetByIDs returns the tasks with the given ids in one call (at most wire.MaxStatusIDs), and the ids
// that name no task.
func (c *Database) GetByIDs(ctx context.Context, ids []int64) (wire.Tasks, error) {
	body, err := json.Marshal(wire.TaskIDs{IDs: ids})
	if err != nil {
		return wire.Tasks{}, err
	}
	reply, err := c.p.sendText(ctx, call{method: http.MethodPost, path: "/getByIds",
		body: bytes.NewReader(body), size: int64(len(body)), idempotent: true})
	if IsNoEndpoint(err) {
		return c.getOneByOne(ctx, ids)
	}
	return jsonReply[wire.Tasks]("tasks", reply, err)
}

// getOneByOne is GetByIDs of a reference database, which has only /getById: an id it refuses (400)
// names no task.
func (c *Database) getOneByOne(ctx context.Context, ids []int64) (wire.Tasks, error) {
	var out wire.Tasks
	for _, id := range ids {
		t, err := c.GetByID(ctx, id)
		switch {
		case IsStatus(err, http.StatusBadRequest):
			out.Missing = append(out.Missing, id)
		case err != nil:
			return wire.Tasks{}, err
		default:
			out.Tasks = append(out.Tasks, t)
		}
	}
	return out, nil
}

func (c *Database) SetByID(ctx context.Context, t wire.Task) error {
	body, err := json.Marshal(struct {
		ID    int64      `json:"id"`
		State wire.State `json:"state"`
	}{t.ID, t.State})
	if err != nil {
		return err
	}
	return expectSuccess(c.p.sendText(ctx, call{method: http.MethodPost, path: "/setById",
		body: bytes.NewReader(body), size: int64(len(body)), idempotent: true}))
}

// Stats returns how many tasks are in each state. A reference database, which does not count, has
// them counted from its /list.
func (c *Database) Stats(ctx context.Context) (wire.Stats, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodGet, path: "/stats", idempotent: true})
	if IsNoEndpoint(err) {
		return c.countTasks(ctx)
	}
	return jsonReply[wire.Stats]("task counts", reply, err)
}

// countTasks counts the tasks of the whole listing by state.
func (c *Database) countTasks(ctx context.Context) (wire.Stats, error) {
	var st wire.Stats
	for t, err := range c.Tasks(ctx) {
		if err != nil {
			return wire.Stats{}, fmt.Errorf("count the tasks: %w", err)
		}
		switch t.State {
		case wire.NotStarted:
			st.Queued++
		case wire.InProgress:
			st.Processing++
		case wire.Finished:
			st.Finished++
		case wire.Failed:
			st.Failed++
		case wire.Cancelled:
			st.Cancelled++
		}
	}
	return st, nil
}

// Tasks streams every task the database holds, in id order (its GET /list, one JSON task per line),
// without holding the listing: for walks of the whole database such as imgmill fsck. The stream stops
// at the first error, which it yields.
func (c *Database) Tasks(ctx context.Context) iter.Seq2[wire.Task, error] {
	return func(yield func(wire.Task, error) bool) {
		r, err := c.p.send(ctx, call{method: http.MethodGet, path: "/list", idempotent: true, headerTimeout: CallTimeout})
		if err != nil {
			yield(wire.Task{}, err)
			return
		}
		defer r.stream.Body.Close()
		sc := bufio.NewScanner(r.stream.Body)
		sc.Buffer(make([]byte, 0, 4096), maxTextReply)
		for sc.Scan() {
			var t wire.Task
			if err := json.Unmarshal(sc.Bytes(), &t); err != nil {
				yield(wire.Task{}, fmt.Errorf("task list line %q is not a task: %w", truncate(sc.Text()), err))
				return
			}
			if !yield(t, nil) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			yield(wire.Task{}, fmt.Errorf("read the task list: %w", err))
		}
	}
}

// List returns the reference listing, one task per line.
func (c *Database) List(ctx context.Context) (string, error) {
	return c.p.sendText(ctx, call{method: http.MethodGet, path: "/list", idempotent: true})
}

// LeaseAPI is the worker side of the task lifecycle: the database serves it and the master passes it
// through (finishing is /finishTask at the database, /registerTaskFinished at the master). Token is the
// fencing token of the claim (0 for none).
type LeaseAPI struct {
	p          peer
	finishPath string
	// errorIn200: refusals may come as 200 "Error: ..." (the reference design's master).
	errorIn200 bool
}

// GetNewTask claims a task. With wait > 0 the request is held up to wait for a task to appear;
// IsNoTask(err) tells that none did.
func (a LeaseAPI) GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error) {
	var q url.Values
	timeout := CallTimeout
	if wait > 0 {
		q = url.Values{"wait": {wait.String()}}
		timeout += wait
	}
	// Not idempotent: a retried claim whose first answer was lost would hold a second task.
	r, err := a.p.sendLong(ctx, call{method: http.MethodPost, path: "/getNewTask", query: q, headerTimeout: timeout, errorIn200: a.errorIn200})
	return taskReply(r.body, err)
}

// GetNewTasks claims up to n tasks (at most wire.MaxTasksPerClaim) in one call, waiting as GetNewTask
// does: the additive /getNewTask?max=. A peer that knows no max parameter (the reference design's)
// answers one task JSON; batched tells the answers apart, by their shape, so that a caller can stop
// asking such a peer for more than one. With n of 1 it is GetNewTask. IsNoTask(err) tells that none
// came.
func (a LeaseAPI) GetNewTasks(ctx context.Context, wait time.Duration, n int) (tasks []wire.Task, batched bool, err error) {
	n = min(n, wire.MaxTasksPerClaim)
	if n <= 1 {
		t, err := a.GetNewTask(ctx, wait)
		if err != nil {
			return nil, false, err
		}
		return []wire.Task{t}, false, nil
	}
	q := url.Values{wire.MaxTasksParam: {strconv.Itoa(n)}}
	timeout := CallTimeout
	if wait > 0 {
		q.Set("wait", wait.String())
		timeout += wait
	}
	// Not idempotent, as GetNewTask.
	r, err := a.p.sendLong(ctx, call{method: http.MethodPost, path: "/getNewTask", query: q, headerTimeout: timeout, errorIn200: a.errorIn200})
	if err != nil {
		return nil, false, err
	}
	return tasksReply(r.body, n)
}

// tasksReply decodes a claim's answer of either shape: {"tasks":[...]} or one task.
func tasksReply(reply string, n int) ([]wire.Task, bool, error) {
	var v struct {
		Tasks []wire.Task `json:"tasks"`
		ID    *int64      `json:"id"`
	}
	if err := json.Unmarshal([]byte(reply), &v); err != nil {
		return nil, false, fmt.Errorf("reply %q is not tasks: %w", truncate(reply), err)
	}
	switch {
	case v.ID != nil:
		t, err := taskReply(reply, nil)
		if err != nil {
			return nil, false, err
		}
		return []wire.Task{t}, false, nil
	case len(v.Tasks) == 0 || len(v.Tasks) > n:
		return nil, true, fmt.Errorf("reply holds %d tasks, want 1 to %d", len(v.Tasks), n)
	}
	return v.Tasks, true, nil
}

// FinishTask marks the claimed task finished.
func (a LeaseAPI) FinishTask(ctx context.Context, id, token int64) error {
	return expectSuccess(a.p.sendText(ctx, call{method: http.MethodPost, path: a.finishPath, query: tokenQuery(id, token), idempotent: true, errorIn200: a.errorIn200}))
}

// ExtendLease renews the claim's lease (a heartbeat) and returns the task with its new lease.
func (a LeaseAPI) ExtendLease(ctx context.Context, id, token int64) (wire.Task, error) {
	return taskReply(a.p.sendText(ctx, call{method: http.MethodPost, path: "/extendLease", query: tokenQuery(id, token), idempotent: true, errorIn200: a.errorIn200}))
}

// WatchLease is ExtendLease held by the master (additive) for up to wait (at most wire.MaxLeaseWait)
// after it renewed the lease, and answered early, 410, when the task is cancelled or deleted
// meanwhile: a heartbeat that doubles as a long poll for a cancel. A master or database that ignores
// wait answers at once.
func (a LeaseAPI) WatchLease(ctx context.Context, id, token int64, wait time.Duration) (wire.Task, error) {
	q := tokenQuery(id, token)
	q.Set("wait", wait.String())
	r, err := a.p.sendLong(ctx, call{method: http.MethodPost, path: "/extendLease", query: q, idempotent: true,
		headerTimeout: wait + CallTimeout, errorIn200: a.errorIn200})
	return taskReply(r.body, err)
}

// FailTask records a failed attempt; permanent failures (input that can never work) are not retried.
// It returns the task afterwards.
func (a LeaseAPI) FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error) {
	q := tokenQuery(id, token)
	q.Set("reason", reason)
	if permanent {
		q.Set("permanent", "true")
	}
	return taskReply(a.p.sendText(ctx, call{method: http.MethodPost, path: "/failTask", query: q, idempotent: true, errorIn200: a.errorIn200}))
}

// RetryTask hands a claimed task back after a transient failure (something the work needed was
// unavailable or full), without counting the attempt: it is claimable again after a wait that grows with
// every such failure. It returns the task afterwards, with its RetryAt.
func (a LeaseAPI) RetryTask(ctx context.Context, id, token int64, reason string) (wire.Task, error) {
	q := tokenQuery(id, token)
	q.Set("reason", reason)
	q.Set("transient", "true")
	return taskReply(a.p.sendText(ctx, call{method: http.MethodPost, path: "/failTask", query: q, idempotent: true, errorIn200: a.errorIn200}))
}

// ReleaseTask hands a claimed task back without counting the attempt.
func (a LeaseAPI) ReleaseTask(ctx context.Context, id, token int64) error {
	return expectSuccess(a.p.sendText(ctx, call{method: http.MethodPost, path: "/releaseTask", query: tokenQuery(id, token), idempotent: true, errorIn200: a.errorIn200}))
}

func idQuery(id int64) url.Values { return url.Values{"id": {strconv.FormatInt(id, 10)}} }

func tokenQuery(id, token int64) url.Values {
	q := idQuery(id)
	if token != 0 {
		q.Set("token", strconv.FormatInt(token, 10))
	}
	return q
}

func parseID(reply string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(reply), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reply %q is not an id", truncate(reply))
	}
	return id, nil
}

func taskReply(reply string, err error) (wire.Task, error) {
	return jsonReply[wire.Task]("a task", reply, err)
}

// jsonReply decodes a call's JSON reply (passing the call's error through), naming what it expected.
func jsonReply[T any](what, reply string, err error) (T, error) {
	var v T
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal([]byte(reply), &v); err != nil {
		return v, fmt.Errorf("reply %q is not %s: %w", truncate(reply), what, err)
	}
	return v, nil
}
