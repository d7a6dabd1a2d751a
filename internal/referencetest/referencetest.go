// Package referencetest has stand-ins of the reference design's six services (kv, database, storage,
// master, worker, frontend), written to answer exactly as the reference does on its wire API (docs/api.md,
// the endpoints without the (imgmill) mark), quirks included: a kv that answers a missing key with 200 and
// an empty body, a database whose new tasks are claimable at once, a master that creates a task before it
// stores its image and answers its errors with status 200, a worker without leases. Each serves on Go's
// default ServeMux, which answers any other path with 404 "404 page not found\n", registers in the kv store
// and finds its peers there as imgmill's services do (the reference keys, host:port values), so that
// stand-ins and imgmill's services can be mixed in one deployment. Only tests import it.
package referencetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// callTimeout bounds every call a stand-in makes to a peer; wide, for a busy machine.
const callTimeout = 30 * time.Second

// registerTimeout is how long Start keeps trying to register a stand-in in a kv store that is not up yet.
const registerTimeout = 30 * time.Second

// serve serves h on a free loopback port until the test ends and returns its host:port.
func serve(t testing.TB, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// text writes a plain-text answer, as the reference does: the bare text, no trailing newline.
func text(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// fail writes the reference's error answer, "Error: " and the message.
func fail(w http.ResponseWriter, status int, err error) {
	text(w, status, "Error: "+err.Error())
}

// peers reaches the other services through the kv store at kv, looked up again on every call (the
// reference keeps no cache).
type peers struct {
	hc *http.Client
	kv string // host:port
}

// newPeers returns peers with a client of their own, whose idle connections closeIdle closes.
func newPeers(kvAddr string) peers {
	return peers{hc: &http.Client{Timeout: callTimeout, Transport: http.DefaultTransport.(*http.Transport).Clone()}, kv: kvAddr}
}

func (p peers) closeIdle() { p.hc.CloseIdleConnections() }

// answer is a peer's whole reply.
type answer struct {
	status int
	body   []byte
	header http.Header
}

// call sends a request to addr (host:port) and reads the whole answer.
func (p peers) call(ctx context.Context, method, addr, path string, q url.Values, body io.Reader) (answer, error) {
	u := url.URL{Scheme: "http", Host: addr, Path: path, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return answer{}, err
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, fmt.Errorf("%s %s: read body: %w", method, u.Path, err)
	}
	return answer{status: resp.StatusCode, body: b, header: resp.Header}, nil
}

// lookup returns the address registered under key: the kv's GET /get, which answers the value (the
// reference kv: 200 and an empty body for a missing key; imgmill's: 404).
func (p peers) lookup(ctx context.Context, key string) (string, error) {
	a, err := p.call(ctx, http.MethodGet, p.kv, "/get", url.Values{"key": {key}}, nil)
	if err != nil {
		return "", fmt.Errorf("look up %s: %w", key, err)
	}
	addr := strings.TrimSpace(string(a.body))
	if a.status != http.StatusOK || addr == "" {
		return "", fmt.Errorf("look up %s: %d %q: not registered", key, a.status, addr)
	}
	return addr, nil
}

// to calls the service registered under key.
func (p peers) to(ctx context.Context, key, method, path string, q url.Values, body io.Reader) (answer, error) {
	addr, err := p.lookup(ctx, key)
	if err != nil {
		return answer{}, err
	}
	return p.call(ctx, method, addr, path, q, body)
}

// register stores addr under key in the kv store at kvAddr once, as the reference services do at start
// (no TTL, no instance key), retrying while the kv store is not up yet.
func register(t testing.TB, kvAddr, key, addr string) {
	t.Helper()
	p := newPeers(kvAddr)
	defer p.closeIdle()
	ctx, cancel := context.WithTimeout(context.Background(), registerTimeout)
	defer cancel()
	var err error
	for {
		var a answer
		a, err = p.call(ctx, http.MethodPost, kvAddr, "/set", url.Values{"key": {key}, "value": {addr}}, nil)
		if err == nil && a.status == http.StatusOK {
			return
		}
		if err == nil {
			err = fmt.Errorf("%d %q", a.status, a.body)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("register %s=%s in the kv store at %s: %v", key, addr, kvAddr, errors.Join(err, ctx.Err()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}
