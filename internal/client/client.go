// Package client holds typed clients for imgmill's wire API (kv, database, storage, master), the task JSON
// they exchange, and discovery of peers through the kv store.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/httpapi"
)

// CallTimeout bounds a small request (no image body, no long poll).
const CallTimeout = 10 * time.Second

// maxTextReply caps how much of a text or JSON reply is read.
const maxTextReply = 1 << 20

// Endpoint yields the host:port of a peer.
type Endpoint interface {
	Addr(ctx context.Context) (string, error)
	// Forget tells the endpoint addr did not answer, so the next call looks the peer up again.
	Forget(addr string)
}

// Static is an Endpoint with a fixed host:port.
type Static string

func (s Static) Addr(context.Context) (string, error) { return string(s), nil }
func (Static) Forget(string)                          {}

// Resolver is an Endpoint for a service that may run as several instances. It looks up the instances
// registered under InstancePrefix(key) in the kv store (falling back to key itself, the reference
// registration, which names one of them), caches the list for ttl and spreads calls across it
// round-robin. An instance that fails a connection is dropped from the list until the next lookup, so a
// dead instance stops getting calls at once, and drops out of the kv store within its registration TTL.
// Concurrent lookups share one request to the kv store.
type Resolver struct{ b balancer }

// NewResolver looks key's instances up in kv, caching the answer for ttl.
func NewResolver(kv *KV, key string, ttl time.Duration) *Resolver {
	return &Resolver{balancer{name: key, ttl: ttl, lookup: func(ctx context.Context) ([]string, error) {
		return kv.Instances(ctx, key)
	}}}
}

func (r *Resolver) Addr(ctx context.Context) (string, error) { return r.b.addr(ctx) }
func (r *Resolver) Forget(addr string)                       { r.b.forget(addr) }

// Addrs is an Endpoint over a fixed list of instances (the kv service's --kv list), spread across
// round-robin; one that fails a connection is skipped for a while (ResolveTTL), or until all have
// failed.
type Addrs struct{ b balancer }

// NewAddrs returns an Endpoint over addrs.
func NewAddrs(addrs []string) *Addrs {
	list := slices.Clone(addrs)
	return &Addrs{balancer{name: strings.Join(list, ","), ttl: ResolveTTL, lookup: func(context.Context) ([]string, error) {
		return list, nil
	}}}
}

func (a *Addrs) Addr(ctx context.Context) (string, error) { return a.b.addr(ctx) }
func (a *Addrs) Forget(addr string)                       { a.b.forget(addr) }

// balancer hands out the addresses lookup yields round-robin, looking them up again after ttl or when
// every one of them has been forgotten.
type balancer struct {
	name    string
	ttl     time.Duration
	lookup  func(ctx context.Context) ([]string, error)
	lookups singleflight.Group

	mu      sync.Mutex
	addrs   []string
	next    int
	expires time.Time
}

func (b *balancer) addr(ctx context.Context) (string, error) {
	if addr, ok := b.pick(); ok {
		return addr, nil
	}
	ch := b.lookups.DoChan("", func() (any, error) {
		// Not tied to one caller's context: the shared lookup serves every waiter.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CallTimeout)
		defer cancel()
		addrs, err := b.lookup(ctx)
		if err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, errors.New("no instance registered")
		}
		b.mu.Lock()
		b.addrs, b.expires = addrs, time.Now().Add(b.ttl)
		b.mu.Unlock()
		return nil, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return "", fmt.Errorf("look up %s: %w", b.name, res.Err)
		}
		if addr, ok := b.pick(); ok {
			return addr, nil
		}
		return "", fmt.Errorf("look up %s: every instance failed", b.name)
	case <-ctx.Done():
		return "", fmt.Errorf("look up %s: %w", b.name, ctx.Err())
	}
}

// pick returns the next cached address, if the cache is fresh and not empty.
func (b *balancer) pick() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.addrs) == 0 || !time.Now().Before(b.expires) {
		return "", false
	}
	b.next = (b.next + 1) % len(b.addrs)
	return b.addrs[b.next], true
}

func (b *balancer) forget(addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// A copy, not in place: the slice may be the lookup's own (Addrs' fixed list).
	b.addrs = slices.DeleteFunc(slices.Clone(b.addrs), func(a string) bool { return a == addr })
}

// peer is the shared call path of every typed client.
type peer struct {
	name string
	http *http.Client
	ep   Endpoint
}

// call is one request to a peer.
type call struct {
	method, path string
	query        url.Values
	body         io.Reader
	size         int64
	// idempotent calls are retried after any transport failure or a 502/503/504; others only when the
	// connection could not be made at all (the request never left).
	idempotent bool
}

// Retry policy for calls to peers: a few quick attempts, spaced out with jittered exponential backoff,
// looking the peer up again in the kv store after a failed connection.
const (
	retryAttempts = 4
	retryMin      = 50 * time.Millisecond
	retryMax      = time.Second
)

// send sends c and returns the response of a 2xx answer, which the caller must close. A non-2xx answer
// becomes an *httpapi.Error carrying the peer's status and message; an unreachable peer a 502 one.
// Transient failures are retried while the body can be replayed and ctx allows.
func (p peer) send(ctx context.Context, c call) (*http.Response, error) {
	wait := backoff.Backoff{Min: retryMin, Max: retryMax}
	replay := replayer(c.body)
	for attempt := 1; ; attempt++ {
		a := c
		if replay != nil {
			a.body = replay()
		}
		resp, err, retry := p.once(ctx, a)
		if !retry || attempt == retryAttempts || (c.body != nil && replay == nil) {
			return resp, err
		}
		if !backoff.Sleep(ctx, wait.Next()) {
			return nil, err
		}
	}
}

// replayer returns a function yielding a fresh reader of body's remaining bytes for each attempt, or nil
// when body cannot be replayed. Attempts must not share one reader: after a peer answers early (a 503
// before it read the body), the transport may still be reading the abandoned attempt's body while the
// next attempt starts, so rewinding a shared reader races with it and corrupts the replay. A body that
// can be read at an offset (bytes.Reader, strings.Reader, os.File) is read through its own section reader
// by every attempt instead; body itself is left where it was.
func replayer(body io.Reader) func() io.Reader {
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

// once makes one attempt and says whether a failure is worth retrying.
func (p peer) once(ctx context.Context, c call) (_ *http.Response, _ error, retry bool) {
	addr, err := p.ep.Addr(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusBadGateway, Msg: p.name + " not found"}, err), ctx.Err() == nil
	}
	u := "http://" + addr + c.path
	if len(c.query) > 0 {
		u += "?" + c.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, c.method, u, c.body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", c.method, c.path, err), false
	}
	if c.body != nil {
		req.ContentLength = c.size
		if sr, ok := c.body.(*io.SectionReader); ok {
			// Lets the transport resend the body itself on a stale keep-alive connection.
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(io.NewSectionReader(sr.Outer())), nil }
		}
	}
	resp, err := p.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w", c.method, c.path, ctx.Err()), false
		}
		p.ep.Forget(addr)
		var op *net.OpError
		notSent := errors.As(err, &op) && op.Op == "dial"
		return nil, fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusBadGateway, Msg: p.name + " unavailable"}, err), notSent || c.idempotent
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		switch resp.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			retry = c.idempotent
		}
		return nil, httpapi.ReadErrorBody(resp.StatusCode, resp.Header, b), retry
	}
	return resp, nil, false
}

// text makes a small call and returns the reply body as text.
func (p peer) sendText(ctx context.Context, c call) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return p.sendTextNoTimeout(ctx, c)
}

func (p peer) sendTextNoTimeout(ctx context.Context, c call) (string, error) {
	resp, err := p.send(ctx, c)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTextReply))
	if err != nil {
		return "", fmt.Errorf("read %s reply: %w", c.path, err)
	}
	return string(b), nil
}

// expectSuccess checks a reference "success" answer.
func expectSuccess(reply string, err error) error {
	if err != nil {
		return err
	}
	if reply != "success" {
		return fmt.Errorf("unexpected reply %q", truncate(reply))
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// IsStatus reports whether err carries the given HTTP status from a peer.
func IsStatus(err error, status int) bool {
	var e *httpapi.Error
	return errors.As(err, &e) && e.Status == status
}

// NoTaskMessage is the reference reply when no task can be claimed.
const NoTaskMessage = "No non-started task."

// IsNoTask reports whether err is the reference "no task to claim" answer.
func IsNoTask(err error) bool {
	var e *httpapi.Error
	return errors.As(err, &e) && e.Status == http.StatusBadRequest && strings.TrimSpace(e.Msg) == NoTaskMessage
}

// ResolveTTL is how long a peer's address looked up in the kv store is reused.
const ResolveTTL = 5 * time.Second

// MaxWait caps a long poll on /getNewTask.
const MaxWait = 60 * time.Second

// CheckHealth calls GET /healthz on the service at addr.
func CheckHealth(ctx context.Context, hc *http.Client, addr string) error {
	p := peer{name: addr, http: hc, ep: Static(addr)}
	_, err := p.sendText(ctx, call{method: http.MethodGet, path: "/healthz", idempotent: true})
	return err
}
