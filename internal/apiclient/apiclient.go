// Package apiclient is a client of the frontend's public JSON API (/api/...): upload, status, wait,
// download, and the operation catalogue, with the waits a client owes a busy or unavailable server.
package apiclient

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

const (
	// DefaultServer is where a frontend started by imgmill serve answers.
	DefaultServer = "http://localhost:8080"
	// callTimeout bounds a small API call (operations, status); uploads and downloads are bounded by
	// httpapi.ClientTimeout and the caller's context.
	callTimeout = 30 * time.Second
	// maxOutage is how long a call goes on retrying while the server is busy or unavailable (429, 503,
	// 507, or no connection): each wait honours the server's Retry-After, capped by maxBusyWait.
	maxOutage   = 10 * time.Minute
	maxBusyWait = time.Minute
	// pollMin and pollMax are the backoff bounds of waiting for a task; maxPollErrors is how many status
	// calls in a row may fail with an error that is not an outage (a 500) before waiting gives up.
	pollMin, pollMax = 100 * time.Millisecond, 2 * time.Second
	maxPollErrors    = 5
)

// Client talks to one frontend's /api.
type Client struct {
	base string // scheme://host[:port], no trailing slash
	hc   *http.Client
	// OnOutage, when set, hears of every retry of a status call or a download while the server is
	// unavailable (a one-shot command tells its user why it waits).
	OnOutage func(wait time.Duration, err error)
}

// New returns a client of the frontend at server (a URL, or host:port for http).
func New(server string) (*Client, error) {
	s := strings.TrimRight(strings.TrimSpace(server), "/")
	if s == "" {
		return nil, errors.New("the server's URL is empty")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http(s) URL", server)
	}
	return &Client{base: s, hc: httpapi.NewClient()}, nil
}

// Base is the server's URL (scheme://host[:port]).
func (c *Client) Base() string { return c.base }

// Close closes the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Error is a non-2xx answer of the API.
type Error struct {
	Status     int
	Msg        string
	RetryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Msg, e.Status) }

// Busy reports whether the server asked to come back later: too many uploads (429), unavailable (502,
// 503, 504: it, or what it depends on, is away) or out of space (507).
func (e *Error) Busy() bool {
	switch e.Status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
		http.StatusInsufficientStorage:
		return true
	}
	return false
}

// ConnError is a request that got no answer: the server could not be reached, or the connection broke.
type ConnError struct{ err error }

func (e *ConnError) Error() string { return e.err.Error() }
func (e *ConnError) Unwrap() error { return e.err }

// ComeBackLater reports whether err says to try again later: the server asked for it, or did not
// answer.
func ComeBackLater(err error) bool {
	var e *Error
	var c *ConnError
	return errors.As(err, &c) || errors.As(err, &e) && e.Busy()
}

// retryWait is how long to wait before retrying after err: what the server asked for (Retry-After,
// capped by maxBusyWait), or, when it said nothing (or could not be reached), the caller's backoff step.
func retryWait(err error, step time.Duration) time.Duration {
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > 0 {
		return min(e.RetryAfter, maxBusyWait)
	}
	return step
}

// retrying calls try until it succeeds, fails for good, or an outage (see ComeBackLater) has lasted
// maxOutage, waiting between attempts as retryWait says (a backoff from 1 s to 30 s where the server
// names no wait); onRetry hears of each retry.
func retrying[T any](ctx context.Context, try func() (T, error), onRetry func(wait time.Duration, err error)) (T, error) {
	step := backoff.Backoff{Min: time.Second, Max: 30 * time.Second}
	start := time.Now()
	for {
		v, err := try()
		if err == nil || !ComeBackLater(err) || ctx.Err() != nil {
			return v, err
		}
		wait := retryWait(err, step.Next())
		if time.Since(start)+wait > maxOutage {
			return v, err
		}
		if onRetry != nil {
			onRetry(wait, err)
		}
		if serr := sleep(ctx, wait); serr != nil {
			return v, err
		}
	}
}

// StatusOf returns the HTTP status of an *Error in err's chain, or 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// readAPIError turns a non-2xx reply into an *Error: the {"error":...} message, or the text of a
// reply that is not JSON (a proxy's page, the services' "Error: ..." form).
func readAPIError(resp *http.Response) *Error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	var j struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &j) == nil && j.Error != "" {
		e.Msg = j.Error
	} else {
		e.Msg = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(body)), "Error:"))
		if len(e.Msg) > 300 {
			e.Msg = e.Msg[:300] + "..."
		}
	}
	if e.Msg == "" {
		e.Msg = http.StatusText(resp.StatusCode)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if secs, err := strconv.Atoi(ra); err == nil && secs >= 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(ra); err == nil {
			e.RetryAfter = time.Until(t)
		}
	}
	return e
}

// do sends req and returns the response when it is 2xx, else the *Error (the body is closed then),
// or a *ConnError when no answer came.
func (c *Client) do(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		if req.Context().Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
		}
		return nil, &ConnError{fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)}
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, readAPIError(resp)
	}
	return resp, nil
}

// getJSON GETs path and returns the raw JSON body, decoded into v.
func (c *Client) getJSON(ctx context.Context, path string, v any) ([]byte, error) {
	raw, err := c.send(ctx, http.MethodGet, path)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("GET %s: answer is not the expected JSON: %w", path, err)
	}
	return raw, nil
}

// Operations returns the catalogue of operations the server offers.
func (c *Client) Operations(ctx context.Context) ([]wire.OperationInfo, error) {
	var ops wire.Operations
	if _, err := c.getJSON(ctx, "/api/operations", &ops); err != nil {
		return nil, fmt.Errorf("list operations at %s: %w", c.base, err)
	}
	return ops.Operations, nil
}

func taskPath(id string) string { return "/api/tasks/" + url.PathEscape(id) }

// Status returns the task's status, and the raw JSON the server answered; it waits out an outage.
func (c *Client) Status(ctx context.Context, id string) (wire.PublicStatus, []byte, error) {
	type answer struct {
		st  wire.PublicStatus
		raw []byte
	}
	a, err := retrying(ctx, func() (answer, error) {
		var a answer
		var err error
		a.raw, err = c.getJSON(ctx, taskPath(id), &a.st)
		return a, err
	}, c.OnOutage)
	if StatusOf(err) == http.StatusNotFound {
		return a.st, nil, fmt.Errorf("no such task %s: %w", id, err)
	}
	return a.st, a.raw, err
}

// Delete removes the task with public id id (its upload, its result and its record): DELETE
// /api/tasks/{id}. Deleting a deleted task succeeds again; an outage is waited out as Status waits.
func (c *Client) Delete(ctx context.Context, id string) error {
	_, err := retrying(ctx, func() (struct{}, error) {
		_, err := c.send(ctx, http.MethodDelete, taskPath(id))
		return struct{}{}, err
	}, c.OnOutage)
	if StatusOf(err) == http.StatusNotFound {
		return fmt.Errorf("no such task %s: %w", id, err)
	}
	return err
}

// Cancel cancels the task with public id id if it has not finished, and returns its status: POST
// /api/tasks/{id}/cancel. Cancelling a cancelled task succeeds again; a finished or failed one is an
// *Error with status 409.
func (c *Client) Cancel(ctx context.Context, id string) (wire.PublicStatus, error) {
	st, err := retrying(ctx, func() (wire.PublicStatus, error) {
		var st wire.PublicStatus
		raw, err := c.send(ctx, http.MethodPost, taskPath(id)+"/cancel")
		if err == nil {
			if err = json.Unmarshal(raw, &st); err != nil {
				err = fmt.Errorf("cancel %s: answer is not a task status: %w", id, err)
			}
		}
		return st, err
	}, c.OnOutage)
	if StatusOf(err) == http.StatusNotFound {
		return st, fmt.Errorf("no such task %s: %w", id, err)
	}
	return st, err
}

// Retry queues the failed or cancelled task with public id id again, with the image it was uploaded
// with, and returns its status (state queued): POST /api/tasks/{id}/retry. A task in another state is an
// *Error with status 409, one whose upload is gone 410. An outage is waited out as Status waits (the
// server answers 503 without queueing anything).
func (c *Client) Retry(ctx context.Context, id string) (wire.PublicStatus, error) {
	st, err := retrying(ctx, func() (wire.PublicStatus, error) {
		var st wire.PublicStatus
		raw, err := c.send(ctx, http.MethodPost, taskPath(id)+"/retry")
		if err == nil {
			if err = json.Unmarshal(raw, &st); err != nil {
				err = fmt.Errorf("retry %s: answer is not a task status: %w", id, err)
			}
		}
		return st, err
	}, c.OnOutage)
	if StatusOf(err) == http.StatusNotFound {
		return st, fmt.Errorf("no such task %s: %w", id, err)
	}
	return st, err
}

// send makes a bodiless request of path and returns its answer's body (at most 1 MiB).
func (c *Client) send(ctx context.Context, method, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	return raw, nil
}

// WaitTask polls the task's status, backing off from pollMin to pollMax, until it is finished or failed.
// An outage is waited out (status does); other failures may repeat maxPollErrors times.
func (c *Client) WaitTask(ctx context.Context, id string) (wire.PublicStatus, error) {
	delay, errs := pollMin, 0
	for {
		st, _, err := c.Status(ctx, id)
		switch {
		case err == nil && st.State.Settled():
			return st, nil
		case err == nil:
			errs = 0
		case ctx.Err() != nil:
			return st, ctx.Err()
		case StatusOf(err) != 0 && StatusOf(err) < 500:
			return st, err // the server's answer will not change
		default:
			if errs++; errs >= maxPollErrors {
				return st, fmt.Errorf("status of task %s: %w", id, err)
			}
		}
		if err := sleep(ctx, delay); err != nil {
			return st, err
		}
		delay = min(2*delay, pollMax)
	}
}

// Upload streams the file at path to POST /api/tasks?op=OP&name=NAME (no op: the default; name, the
// file name the result is downloaded under, may be empty) as the raw body and returns the task id. Every attempt carries the same random Idempotency-Key, so an upload whose answer
// was lost (the connection broke) is retried without creating a second task. A busy or unavailable
// server (429, 502-504, 507) or no answer at all is retried after the server's Retry-After, for up to
// maxOutage (each retry is told to onRetry). onBytes learns the bytes sent, negative when a retry starts
// over.
func (c *Client) Upload(ctx context.Context, path, name, op string, onBytes func(int64), onRetry func(wait time.Duration, err error)) (string, error) {
	key := rand.Text() // 26 characters of base32: 130 random bits
	var sent int64
	return retrying(ctx, func() (string, error) {
		onBytes(-sent)
		sent = 0
		return c.uploadOnce(ctx, path, name, op, key, func(n int64) { sent += n; onBytes(n) })
	}, onRetry)
}

func (c *Client) uploadOnce(ctx context.Context, path, name, op, key string, onBytes func(int64)) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	var body io.Reader = http.NoBody
	if fi.Size() > 0 {
		body = &countingReader{r: f, add: onBytes}
	}
	q := url.Values{}
	if op != "" {
		q.Set("op", op)
	}
	if name != "" {
		q.Set("name", name)
	}
	target := c.base + "/api/tasks"
	if len(q) > 0 {
		target += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, body)
	if err != nil {
		return "", err
	}
	req.ContentLength = fi.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Accept", "application/json")
	req.Header.Set(wire.IdempotencyKeyHeader, key)
	resp, err := c.do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var created wire.TaskCreated
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&created); err != nil || created.ID == "" {
		return "", fmt.Errorf("POST /api/tasks: answer has no task id (%v)", err)
	}
	return created.ID, nil
}

// Download GETs the task's result, waiting out an outage before the answer begins. dest chooses where
// it goes from the result's Content-Type: a path, written atomically with mode 0666 less the umask,
// or "-" for w. It returns the path
// written.
func (c *Client) Download(ctx context.Context, id string, w io.Writer, dest func(contentType string) string) (string, error) {
	resp, err := retrying(ctx, func() (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+taskPath(id)+"/result", nil)
		if err != nil {
			return nil, err
		}
		return c.do(req)
	}, c.OnOutage)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	path := dest(resp.Header.Get("Content-Type"))
	if path == "-" {
		_, err = io.Copy(w, resp.Body)
	} else {
		// 0666 less the umask, as the user's other tools create files (os.CreateTemp's 0600 would hide
		// results from the rest of the group).
		_, err = atomicfile.WritePerm(ctx, path, resp.Body, 0o666)
	}
	if err != nil {
		return "", fmt.Errorf("download result of task %s: %w", id, err)
	}
	return path, nil
}

// countingReader tells add how many bytes were read through it.
type countingReader struct {
	r   io.Reader
	add func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.add(int64(n))
	}
	return n, err
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
