package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// Master is a client of the master service, for users (New, IsReady, Get, Source, Status) and workers (the
// LeaseAPI: GetNewTask, FinishTask as /registerTaskFinished, ExtendLease, FailTask, ReleaseTask).
type Master struct {
	p peer
	LeaseAPI
	// missing remembers the masters found without /status (the reference design's), which are asked
	// /isReady instead at once.
	missing *Missing
}

// NewMaster returns a master client reaching the service through ep.
func NewMaster(hc *http.Client, ep Endpoint) *Master {
	p := peer{name: "master", http: hc, ep: ep}
	return &Master{p: p, LeaseAPI: LeaseAPI{p: p, finishPath: "/registerTaskFinished", errorIn200: true}, missing: &Missing{}}
}

// Addr is the address of the master instance calls go to now, to name it in logs.
func (c *Master) Addr(ctx context.Context) (string, error) { return c.p.ep.Addr(ctx) }

// FinishWithResult stores a worker's result, size bytes of r (-1: unknown), and registers the claimed
// task finished in one call (POST /finishTask, additive): what SendResult at storage and then
// FinishTask do in two. Refused as they are: 409 for a stale claim (a newer claim's result stays), 410
// for a task cancelled meanwhile (its result removed). It is retried after a transient failure when the
// body can be read again (a bytes.Reader, a file). A master without the endpoint (the reference
// design's) answers IsNoEndpoint: store and finish in two calls instead. A body past
// continueAbove bytes waits for the master's go-ahead (Expect: 100-continue), so that such a master
// refuses it before it is sent.
func (c *Master) FinishWithResult(ctx context.Context, id, token int64, r io.Reader, size int64) error {
	cl := call{method: http.MethodPost, path: "/finishTask", query: tokenQuery(id, token), body: r, size: size, idempotent: true}
	if size < 0 || size > continueAbove {
		cl.header = http.Header{"Expect": {"100-continue"}}
	}
	reply, err := c.p.sendLong(ctx, cl)
	return expectSuccess(reply.body, err)
}

// continueAbove is the size of a result beyond which FinishWithResult asks the master before it sends
// it: a Go server that refuses a request without reading its body reads (and drops) up to 256 KB of it
// before it answers, and closes the connection on a longer one, which can lose its answer.
const continueAbove = 256 << 10

// New uploads an image (size bytes, or -1 when unknown) and returns the task id. It is retried when the
// master could not be reached (nothing was sent).
func (c *Master) New(ctx context.Context, r io.Reader, size int64) (int64, error) {
	up, err := c.Upload(ctx, r, size, UploadParams{})
	return up.ID, err
}

// UploadParams are the additive options of an upload.
type UploadParams struct {
	// Op is the operation chain for the worker to apply ("": the default, swap); the master refuses a
	// bad one with 400 before reading the image.
	Op string
	// IdempotencyKey, when set, makes the upload safe to retry: a retry with the same key answers the
	// first upload's id and creates nothing. With one, an upload whose body can be read again (a
	// bytes.Reader, a file) is also retried after a transient failure.
	IdempotencyKey string
	// Owner names who queues the task, whom claims serve in turn (wire.OwnerHeader): the frontend
	// sets it to an API key's name or the client's address. The master believes it only when it
	// requires its token; otherwise the owner is the caller's address.
	Owner string
	// Name is the upload's file name (wire.CheckName; the master refuses another with 400), kept to
	// name the downloads; "": none.
	Name string
}

// Uploaded is what the master answered an upload.
type Uploaded struct {
	ID int64
	// Replayed says the upload's IdempotencyKey was used before: ID is that upload's task, and nothing
	// was created.
	Replayed bool
}

// Upload is New with options.
func (c *Master) Upload(ctx context.Context, r io.Reader, size int64, p UploadParams) (Uploaded, error) {
	q := url.Values{}
	if p.Op != "" {
		q.Set("op", p.Op)
	}
	if p.Name != "" {
		q.Set("name", p.Name)
	}
	cl := call{method: http.MethodPost, path: "/new", query: q, body: r, size: size, header: http.Header{}}
	if p.IdempotencyKey != "" {
		cl.header.Set(wire.IdempotencyKeyHeader, p.IdempotencyKey)
		cl.idempotent = true
	}
	if p.Owner != "" {
		cl.header.Set(wire.OwnerHeader, p.Owner)
	}
	reply, err := c.p.sendLong(ctx, cl)
	if err != nil {
		return Uploaded{}, err
	}
	id, err := parseID(reply.body)
	return Uploaded{ID: id, Replayed: reply.header.Get(wire.ReplayedHeader) == "true"}, err
}

// IsReady reports whether task id is finished. The reference design's master answers an id its
// database does not know with its database's error, with status 200 or 400: that is imgmill's "no task
// with id N".
func (c *Master) IsReady(ctx context.Context, id int64) (bool, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodGet, path: "/isReady", query: idQuery(id), idempotent: true,
		errorIn200: true})
	if err != nil {
		return false, unknownTask(err, id)
	}
	return reply == "1", nil
}

// unknownTask turns a reference master's refusal that says task id is not found (with status 200, or its
// database's 400 passed on, in the database's words) into imgmill's "no task with id N"; other errors,
// imgmill's own words included, pass unchanged.
func unknownTask(err error, id int64) error {
	var e *httpapi.Error
	own := fmt.Sprintf("no task with id %d", id)
	if errors.As(err, &e) && (e.Status == http.StatusNotFound || e.Status == http.StatusBadRequest) &&
		SaysNotFound(e.Msg) && e.Msg != own {
		return fmt.Errorf("%w (%s)", httpapi.Errorf(e.Status, "%s", own), e.Msg)
	}
	return err
}

// WaitReady is IsReady held by the master until the task finishes or wait (at most 10s) ends: one
// request where polling takes many. A master that ignores wait (the reference one) answers at once.
func (c *Master) WaitReady(ctx context.Context, id int64, wait time.Duration) (bool, error) {
	q := idQuery(id)
	q.Set("wait", wait.String())
	reply, err := c.p.sendLong(ctx, call{method: http.MethodGet, path: "/isReady", query: q, idempotent: true,
		headerTimeout: wait + CallTimeout, errorIn200: true})
	if err != nil {
		return false, unknownTask(err, id)
	}
	return reply.body == "1", nil
}

// Statuses returns the statuses of the tasks in known that differ from the ones given, and the ids of
// those that do not exist (at most wire.MaxStatusIDs tasks). With wait (at most 10s) the master holds
// the answer until there is news or the wait ends: one request watches all the tasks.
func (c *Master) Statuses(ctx context.Context, known []wire.Status, wait time.Duration) (wire.Statuses, error) {
	body, err := json.Marshal(wire.StatusesQuery{Known: known})
	if err != nil {
		return wire.Statuses{}, err
	}
	q := url.Values{}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	reply, err := c.p.sendLong(ctx, call{method: http.MethodPost, path: "/statuses", query: q, idempotent: true,
		body: bytes.NewReader(body), size: int64(len(body)), headerTimeout: wait + CallTimeout})
	if err != nil {
		return wire.Statuses{}, err
	}
	return jsonReply[wire.Statuses]("task statuses", reply.body, nil)
}

// Get opens the finished image of task id. The reference design's master answers a task without a
// result (unfinished, or unknown) with 200 and its storage's error ("Error:open data/finished/7: no
// such file or directory"): that is the 404 "task N is not finished" of imgmill's master.
func (c *Master) Get(ctx context.Context, id int64) (*Image, error) {
	img, err := openImage(ctx, c.p, call{method: http.MethodGet, path: "/get", query: idQuery(id), errorIn200: true})
	var r *RefusedIn200
	if errors.As(err, &r) && r.Err.Status == http.StatusNotFound {
		return nil, fmt.Errorf("%w (%s)", httpapi.Errorf(http.StatusNotFound, "task %d is not finished", id), r.Err.Msg)
	}
	return img, err
}

// Source opens the uploaded image of task id, as stored.
func (c *Master) Source(ctx context.Context, id int64) (*Image, error) {
	return openImage(ctx, c.p, call{method: http.MethodGet, path: "/source", query: idQuery(id)})
}

// Stats returns how many tasks are in each state (the database's count, passed through).
func (c *Master) Stats(ctx context.Context) (wire.Stats, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodGet, path: "/stats", idempotent: true})
	return jsonReply[wire.Stats]("task counts", reply, err)
}

// Status returns the state of task id in words, with attempts, error and times. A master without
// /status (the reference design's) is asked /isReady instead, and the status says only "finished" or
// "queued": that master knows no other state, and keeps no attempts, errors, times, chain or name.
func (c *Master) Status(ctx context.Context, id int64) (wire.Status, error) {
	known := false // the master is known to have no /status
	if c.missing.any.Load() {
		addr, _ := c.p.ep.Addr(ctx)
		known = c.missing.has(addr, "/status")
	}
	var reply string
	var err error
	if !known {
		reply, err = c.p.sendText(ctx, call{method: http.MethodGet, path: "/status", query: idQuery(id), idempotent: true})
	}
	if known || IsNoEndpoint(err) {
		if !known {
			addr, _ := c.p.ep.Addr(ctx)
			c.missing.Note(ctx, httpapi.LoggerFrom(ctx), "master", addr, "/status",
				"a task's status is asked of /isReady: finished, or queued for anything else")
		}
		ready, err := c.IsReady(ctx, id)
		if err != nil {
			return wire.Status{}, err
		}
		st := wire.Status{ID: id, State: wire.QueuedWord}
		if ready {
			st.State = wire.FinishedWord
		}
		return st, nil
	}
	return jsonReply[wire.Status]("a task status", reply, err)
}

// Cancel cancels task id if it has not finished and returns its status (state "cancelled"); cancelling a
// cancelled task answers it again. A finished or failed task is refused with 409, an unknown one with 404.
func (c *Master) Cancel(ctx context.Context, id int64) (wire.Status, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodPost, path: "/cancel", query: idQuery(id), idempotent: true})
	return jsonReply[wire.Status]("a task status", reply, err)
}

// Retry queues task id again, failed or cancelled, with the image it was uploaded with, and returns its
// status (state "queued"). Another state is refused with 409, a task whose upload is gone with 410, an
// unknown one with 404. It is not retried: a repeat after a lost answer would be refused (409).
func (c *Master) Retry(ctx context.Context, id int64) (wire.Status, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodPost, path: "/retry", query: idQuery(id)})
	return jsonReply[wire.Status]("a task status", reply, err)
}

// Delete removes task id, its images and its record; deleting a deleted task again succeeds, an id that
// never named a task is refused with 404.
func (c *Master) Delete(ctx context.Context, id int64) error {
	_, err := c.p.sendText(ctx, call{method: http.MethodDelete, path: "/task", query: idQuery(id), idempotent: true})
	return err
}
