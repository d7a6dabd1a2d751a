// Package client holds typed clients for imgmill's wire API (kv, database, storage, master), the task JSON
// they exchange, and discovery of peers through the kv store.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

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

// Resolver is an Endpoint looked up under a key in the kv store and cached for a short while, so a peer
// that moved is found again without a lookup on every call.
type Resolver struct {
	kv  *KV
	key string
	ttl time.Duration

	mu      sync.Mutex
	addr    string
	expires time.Time
}

// NewResolver looks key up in kv, caching the answer for ttl.
func NewResolver(kv *KV, key string, ttl time.Duration) *Resolver {
	return &Resolver{kv: kv, key: key, ttl: ttl}
}

func (r *Resolver) Addr(ctx context.Context) (string, error) {
	r.mu.Lock()
	if r.addr != "" && time.Now().Before(r.expires) {
		addr := r.addr
		r.mu.Unlock()
		return addr, nil
	}
	r.mu.Unlock()
	addr, err := r.kv.Get(ctx, r.key)
	if err != nil {
		return "", fmt.Errorf("look up %s: %w", r.key, err)
	}
	r.mu.Lock()
	r.addr, r.expires = addr, time.Now().Add(r.ttl)
	r.mu.Unlock()
	return addr, nil
}

func (r *Resolver) Forget(addr string) {
	r.mu.Lock()
	if r.addr == addr {
		r.addr = ""
	}
	r.mu.Unlock()
}

// peer is the shared call path of every typed client.
type peer struct {
	name string
	http *http.Client
	ep   Endpoint
}

// do sends one request and returns the response of a 2xx answer, which the caller must close. A non-2xx
// answer becomes an *httpapi.Error carrying the peer's status and message; an unreachable peer a 502 one.
func (p peer) do(ctx context.Context, method, path string, query url.Values, body io.Reader, size int64) (*http.Response, error) {
	addr, err := p.ep.Addr(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusBadGateway, Msg: p.name + " not found"}, err)
	}
	u := "http://" + addr + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.ContentLength = size
	}
	resp, err := p.http.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			p.ep.Forget(addr)
		}
		return nil, fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusBadGateway, Msg: p.name + " unavailable"}, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, httpapi.ReadErrorBody(resp.StatusCode, b)
	}
	return resp, nil
}

// text makes a small call and returns the reply body as text.
func (p peer) text(ctx context.Context, method, path string, query url.Values, body io.Reader, size int64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return p.textNoTimeout(ctx, method, path, query, body, size)
}

func (p peer) textNoTimeout(ctx context.Context, method, path string, query url.Values, body io.Reader, size int64) (string, error) {
	resp, err := p.do(ctx, method, path, query, body, size)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTextReply))
	if err != nil {
		return "", fmt.Errorf("read %s reply: %w", path, err)
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
	_, err := p.text(ctx, http.MethodGet, "/healthz", nil, nil, 0)
	return err
}
