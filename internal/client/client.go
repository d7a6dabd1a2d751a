// Package client holds typed clients for imgmill's wire API (kv, database, storage, master), the task JSON
// they exchange, and discovery of peers through the kv store.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// CallTimeout bounds one attempt of a small request (no image body, no long poll).
const CallTimeout = 10 * time.Second

// DefaultRetryFor is how long a call goes on retrying a transient failure (a peer or its engine
// unavailable) unless its context ends sooner or says otherwise (RetryFor): long enough to ride out a
// restart or a failover, short enough that the caller's own client hears 503 soon. Callers that must
// get through a longer outage (a worker reporting a finished task) ask for more with RetryFor.
const DefaultRetryFor = 5 * time.Second

// retryForKey carries a retry budget in a context (see RetryFor).
type retryForKey struct{}

// RetryFor returns ctx, with which calls retry transient failures for d from their start instead of
// DefaultRetryFor (never past ctx's own deadline): for a caller that outlasts outages in place, such as
// a worker fetching the image of the task it holds, whose stream must not end with the retries.
func RetryFor(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, retryForKey{}, d)
}

// retryDeadline is when a call started now stops retrying: ctx's deadline, or its retry budget
// (RetryFor, else DefaultRetryFor) from now, whichever comes first.
func retryDeadline(ctx context.Context) time.Time {
	budget, ok := ctx.Value(retryForKey{}).(time.Duration)
	if !ok {
		budget = DefaultRetryFor
	}
	deadline := time.Now().Add(budget)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		return d
	}
	return deadline
}

// imageHeaderTimeout bounds how long an image download waits for its answer to begin: a peer that
// accepted the connection but does not answer (a stopped process) is then tried again, elsewhere if
// there is another instance. The body itself may take as long as the caller allows.
const imageHeaderTimeout = 30 * time.Second

// maxTextReply caps how much of a text or JSON reply is read.
const maxTextReply = 1 << 20

// peer is the shared call path of every typed client.
type peer struct {
	name string
	http *http.Client
	ep   Endpoint
	// missing, when set, hears of every endpoint the peer turned out not to have (see NoEndpointError).
	missing func(ctx context.Context, addr, path string)
}

// call is one request to a peer.
type call struct {
	method, path string
	query        url.Values
	header       http.Header
	body         io.Reader
	size         int64
	// idempotent calls are retried after any transport failure or a transient answer (502, 503, 504,
	// 507); others only when the connection could not be made at all (the request never left).
	idempotent bool
	// small calls are read whole within the attempt, each attempt bounded by CallTimeout; the others
	// (image streams, long polls) hand their body to the caller, and headerTimeout bounds how long an
	// attempt waits for the answer to begin (0: as long as ctx allows).
	small         bool
	headerTimeout time.Duration
	// errorIn200: the peer may answer a refusal with status 200 and an "Error: ..." body, as the
	// reference design's master passes on its database's errors; such a reply is the error it says.
	errorIn200 bool
}

// reply is a peer's 2xx answer. For a small call body holds the reply text and stream is nil; otherwise
// stream is the response, which the caller must close.
type reply struct {
	body   string
	header http.Header
	stream *http.Response
}

// Retry policy for calls to peers: jittered exponential backoff between attempts, at least as long as a
// peer's Retry-After, until the call's deadline (its context's, or DefaultRetryFor).
const (
	retryMin = 50 * time.Millisecond
	retryMax = 2 * time.Second
)

// send sends c and returns its 2xx reply. A non-2xx answer becomes an *httpapi.Error carrying the peer's
// status, message and Retry-After; an unreachable peer a 503 one. Transient failures are retried while
// the body can be sent again and the deadline allows: a body that cannot be replayed only when the
// connection was never made (nothing of it was read).
func (p peer) send(ctx context.Context, c call) (reply, error) {
	deadline := retryDeadline(ctx)
	wait := backoff.Backoff{Min: retryMin, Max: retryMax}
	replay := Replayer(c.body)
	for attempt := 1; ; attempt++ {
		a := c
		if replay != nil {
			a.body = replay()
		}
		r, adv, err := p.once(ctx, a)
		if err == nil {
			return r, nil
		}
		if !adv.retry || (c.body != nil && replay == nil && !adv.notSent) {
			// A body that cannot be read again goes out once, unless it never left.
			return reply{}, err
		}
		d := max(wait.Next(), adv.after)
		if adv.notSent && attempt == 1 {
			d = 0 // another instance may take it at once
		}
		if time.Now().Add(d).After(deadline) || !backoff.Sleep(ctx, d) {
			return reply{}, err
		}
	}
}

// sourceReader is the body of an attempt. It remembers a failure of its own source (the stream the
// caller passes on broke off: its client went away), so that the failed attempt is blamed on the body,
// not on the peer.
type sourceReader struct {
	r   io.Reader
	mu  sync.Mutex
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
	}
	return n, err
}

func (s *sourceReader) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// bodyError is a call that failed because its own request body could not be read.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "read the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// ReadingBody runs call with body as a request body, as a service's in-process API does with its
// caller's stream: when call fails while reading body itself failed (not its end), the failure is the
// caller's (IsBodyError), as it is over HTTP.
func ReadingBody[T any](body io.Reader, call func(io.Reader) (T, error)) (T, error) {
	source := &sourceReader{r: body}
	v, err := call(source)
	if err != nil && source.failure() != nil {
		var zero T
		return zero, &bodyError{err: source.failure()}
	}
	return v, err
}

// IsBodyError reports whether err is a call that failed because reading its own request body failed
// (the stream being passed on broke off), rather than because of the peer.
func IsBodyError(err error) bool {
	var b *bodyError
	return errors.As(err, &b)
}

// Replayer returns a function yielding a fresh reader of body's remaining bytes for each attempt, or nil
// when body cannot be replayed, and a call with it is not tried again once it was read (in-process
// services decide alike, see CallLocal). Attempts must not share one reader: after a peer answers early
// (a 503 before it read the body), the transport may still be reading the abandoned attempt's body
// while the next attempt starts, so rewinding a shared reader races with it and corrupts the replay. A
// body that can be read at an offset (bytes.Reader, strings.Reader, os.File) is read through its own
// section reader by every attempt instead; body itself is left where it was.
func Replayer(body io.Reader) func() io.Reader {
	rs, ok := body.(interface {
		io.ReaderAt
		io.Seeker
	})
	if !ok {
		return nil
	}
	off, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil
	}
	end, err := rs.Seek(0, io.SeekEnd)
	if err != nil {
		return nil
	}
	if _, err := rs.Seek(off, io.SeekStart); err != nil || end < off {
		return nil
	}
	return func() io.Reader { return io.NewSectionReader(rs, off, end-off) }
}

// advice is what an attempt's failure says about trying again.
type advice struct {
	retry   bool
	notSent bool          // the request never reached a peer
	after   time.Duration // the peer's Retry-After
}

// unavailable is the error of a peer that could not be reached (or did not answer in time).
func (p peer) unavailable(msg string, err error) error {
	return fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusServiceUnavailable, Msg: msg,
		RetryAfter: httpapi.UnavailableRetryAfter}, err)
}

// once makes one attempt and says whether a failure is worth retrying.
func (p peer) once(ctx context.Context, c call) (reply, advice, error) {
	addr, err := p.ep.Addr(ctx)
	if err != nil {
		// Registrations come back within seconds of a kv store restart: worth waiting for.
		return reply{}, advice{retry: ctx.Err() == nil, notSent: true}, p.unavailable(p.name+" not found", err)
	}
	u := "http://" + addr + c.path
	if len(c.query) > 0 {
		u += "?" + c.query.Encode()
	}
	attempt, cancel := context.WithCancel(ctx)
	limit := c.headerTimeout
	if c.small {
		limit = CallTimeout
	}
	var timedOut atomic.Bool
	stopTimer := func() {}
	if limit > 0 {
		timer := time.AfterFunc(limit, func() { timedOut.Store(true); cancel() })
		stopTimer = func() { timer.Stop() }
	}
	defer stopTimer()
	req, err := http.NewRequestWithContext(attempt, c.method, u, c.body)
	if err != nil {
		cancel()
		return reply{}, advice{}, fmt.Errorf("%s %s: %w", c.method, c.path, err)
	}
	maps.Copy(req.Header, c.header)
	var source *sourceReader
	if c.body != nil {
		source = &sourceReader{r: c.body}
		req.Body = io.NopCloser(source)
		req.ContentLength = c.size
		if sr, ok := c.body.(*io.SectionReader); ok {
			// Lets the transport resend the body itself on a stale keep-alive connection.
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(io.NewSectionReader(sr.Outer())), nil }
		}
	}
	resp, err := p.http.Do(req)
	if err != nil && source != nil && source.failure() != nil {
		cancel()
		return reply{}, advice{}, &bodyError{err: source.failure()}
	}
	if err == nil && c.small {
		var r reply
		if r, err = p.read(resp, c); err == nil || resp.StatusCode/100 != 2 {
			cancel()
			return p.outcome(ctx, addr, resp, r, err, c)
		}
	}
	if err == nil && !c.small {
		stopTimer()
		if timedOut.Load() {
			// The limit struck just as the answer began: its stream is cancelled already.
			resp.Body.Close()
			err = context.DeadlineExceeded
		}
	}
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return reply{}, advice{}, fmt.Errorf("%s %s: %w", c.method, c.path, ctx.Err())
		}
		p.ep.Failed(addr)
		var op *net.OpError
		notSent := errors.As(err, &op) && op.Op == "dial"
		msg := p.name + " unavailable"
		if timedOut.Load() {
			msg = p.name + " did not answer in time"
		}
		return reply{}, advice{retry: notSent || c.idempotent, notSent: notSent}, p.unavailable(msg, err)
	}
	if resp.StatusCode/100 != 2 {
		defer cancel()
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return p.outcome(ctx, addr, resp, reply{body: string(b)}, nil, c)
	}
	// The stream outlives this function: the attempt's context ends when its body is closed.
	p.ep.Answered(addr)
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return reply{header: resp.Header, stream: resp}, advice{}, nil
}

// read reads a small call's whole reply.
func (p peer) read(resp *http.Response, c call) (reply, error) {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTextReply))
	if err != nil {
		return reply{}, fmt.Errorf("read %s reply: %w", c.path, err)
	}
	return reply{body: string(b), header: resp.Header}, nil
}

// outcome turns an answer read whole into the attempt's outcome: a 2xx reply, or the peer's refusal as
// an *httpapi.Error, retried when it is transient and the call idempotent.
func (p peer) outcome(ctx context.Context, addr string, resp *http.Response, r reply, err error, c call) (reply, advice, error) {
	p.ep.Answered(addr)
	if err != nil {
		return reply{}, advice{retry: c.idempotent}, err
	}
	if resp.StatusCode/100 == 2 {
		if e := refusalIn200(c, r.body); e != nil {
			return reply{}, advice{retry: c.idempotent && e.Err.Transient()}, e
		}
		return r, advice{}, nil
	}
	e := httpapi.ReadErrorBody(resp.StatusCode, resp.Header, []byte(r.body))
	if resp.StatusCode == http.StatusNotFound && strings.TrimSpace(r.body) == goNotFound {
		if p.missing != nil {
			p.missing(ctx, addr, c.path)
		}
		return reply{}, advice{}, &NoEndpointError{Addr: addr, Path: c.path, err: e}
	}
	return reply{}, advice{retry: c.idempotent && e.Transient(), after: e.RetryAfter}, e
}

// goNotFound is the whole body of Go's default ServeMux for a path it does not serve: how the reference
// design's services answer the endpoints only imgmill has. imgmill's own services answer an unknown
// path "Error: no endpoint ...", and a missing task or image with an "Error: ..." 404 of their own.
const goNotFound = "404 page not found"

// NoEndpointError is a peer's answer that it has no such endpoint at all (a 404 with the body of Go's
// default mux): a peer of the reference design asked for something only imgmill has. It unwraps to the
// peer's 404 as an *httpapi.Error.
type NoEndpointError struct {
	Addr, Path string
	err        *httpapi.Error
}

func (e *NoEndpointError) Error() string {
	return fmt.Sprintf("the peer at %s has no %s: %v", e.Addr, e.Path, e.err)
}
func (e *NoEndpointError) Unwrap() error { return e.err }

// IsNoEndpoint reports whether err is a peer's answer that it has no such endpoint (see NoEndpointError).
func IsNoEndpoint(err error) bool {
	var e *NoEndpointError
	return errors.As(err, &e)
}

// cancelOnClose ends an attempt's context when its streamed body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// sendText makes a small call and returns the reply body as text.
func (p peer) sendText(ctx context.Context, c call) (string, error) {
	r, err := p.sendSmall(ctx, c)
	return r.body, err
}

// sendSmall makes a small call and returns the reply with its headers.
func (p peer) sendSmall(ctx context.Context, c call) (reply, error) {
	c.small = true
	return p.send(ctx, c)
}

// sendLong makes a call whose answer is text but may take long to begin (an upload, a long poll: see
// call.headerTimeout) and returns the reply with its headers.
func (p peer) sendLong(ctx context.Context, c call) (reply, error) {
	r, err := p.send(ctx, c)
	if err != nil {
		return r, err
	}
	defer r.stream.Body.Close()
	b, err := io.ReadAll(io.LimitReader(r.stream.Body, maxTextReply))
	if err != nil {
		return reply{}, fmt.Errorf("read %s reply: %w", c.path, err)
	}
	if e := refusalIn200(c, string(b)); e != nil {
		return reply{}, e
	}
	return reply{body: string(b), header: r.header}, nil
}

// IsStatus reports whether err carries the given HTTP status from a peer.
func IsStatus(err error, status int) bool {
	var e *httpapi.Error
	return errors.As(err, &e) && e.Status == status
}

// IsNoTask reports whether err is the reference "no task to claim" answer: the database's 400, or the
// same words with status 200 from the reference design's master (RefusedIn200).
func IsNoTask(err error) bool {
	var e *httpapi.Error
	return errors.As(err, &e) && e.Status == http.StatusBadRequest && strings.TrimSpace(e.Msg) == wire.NoTaskMessage
}

// ResolveTTL is how long a peer's address looked up in the kv store is reused.
const ResolveTTL = 5 * time.Second

// CheckHealth calls GET /healthz on the service at addr, once: nil when it answers that it is ready.
func CheckHealth(ctx context.Context, hc *http.Client, addr string) error {
	p := peer{name: addr, http: hc, ep: Static(addr)}
	_, err := p.sendText(ctx, call{method: http.MethodGet, path: "/healthz"})
	return err
}
