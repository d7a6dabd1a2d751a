// Package servicetest is shared test support for imgmill's HTTP services: serving a handler the way
// production does, a stack of real database and storage services (and a master) on httptest servers,
// whole-reply HTTP calls, a check of the plumbing every service shares, and polling. Only tests import it.
package servicetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// Discard is a logger that drops every record.
var Discard = slog.New(slog.DiscardHandler)

// NoTaskReply is the reference answer to a claim when no task can be claimed.
const NoTaskReply = "Error: " + wire.NoTaskMessage

// Serve serves h on an httptest server the way production does: through httpapi.NewHTTPServer, so
// httpapi.Wrap and the server timeouts apply. The server is closed when the test ends.
func Serve(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(h, Discard)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// NewHTTPClient returns the services' own HTTP client (httpapi.NewClient), its idle connections closed
// when the test ends.
func NewHTTPClient(t testing.TB) *http.Client {
	t.Helper()
	hc := httpapi.NewClient()
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// CloseAtCleanup closes c when the test ends and fails the test if that fails; what names c.
func CloseAtCleanup(t testing.TB, what string, c io.Closer) {
	t.Helper()
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close %s: %v", what, err)
		}
	})
}

// Addr is the host:port of a server URL such as an httptest server's, as a client.Static endpoint wants it.
func Addr(url string) string { return strings.TrimPrefix(url, "http://") }

// Reply is a whole HTTP answer.
type Reply struct {
	Status int
	Body   string
	Header http.Header
}

// Do sends req with hc and reads the whole answer. It is safe to use from any goroutine.
func Do(hc *http.Client, req *http.Request) (Reply, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{}, fmt.Errorf("%s %s: read body: %w", req.Method, req.URL, err)
	}
	return Reply{Status: resp.StatusCode, Body: string(b), Header: resp.Header}, nil
}

// Send makes one request with ctx and reads the whole answer. It is safe to use from any goroutine.
func Send(ctx context.Context, hc *http.Client, method, url string, body io.Reader) (Reply, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return Reply{}, err
	}
	return Do(hc, req)
}

// MustDo is Do that fails the test when the exchange fails.
func MustDo(t testing.TB, hc *http.Client, req *http.Request) Reply {
	t.Helper()
	r, err := Do(hc, req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return r
}

// Call is Send with the test's context that fails the test when the exchange fails.
func Call(t testing.TB, hc *http.Client, method, url string, body io.Reader) Reply {
	t.Helper()
	r, err := Send(t.Context(), hc, method, url, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// ConventionError reports what r, the reply to method on path, lacks of what every service reply
// carries: a request id header, and a body starting "Error:" when the status is not 2xx. It is nil when
// r has both.
func ConventionError(method, path string, r Reply) error {
	var errs []error
	if r.Header.Get(httpapi.RequestIDHeader) == "" {
		errs = append(errs, fmt.Errorf("%s %s: no %s header", method, path, httpapi.RequestIDHeader))
	}
	if r.Status/100 != 2 && !strings.HasPrefix(r.Body, "Error:") {
		errs = append(errs, fmt.Errorf("%s %s: error reply %d %q, want one starting with %q", method, path, r.Status, r.Body, "Error:"))
	}
	return errors.Join(errs...)
}

// ExpectError checks that r, the answer to what, has the given status and an "Error: ..." body.
func ExpectError(t testing.TB, what string, r Reply, status int) {
	t.Helper()
	if r.Status != status || !strings.HasPrefix(r.Body, "Error:") {
		t.Errorf("%s: %d %q, want %d \"Error: ...\"", what, r.Status, r.Body, status)
	}
}

// ExpectPNGReply checks that r, the answer to what, is 200 with exactly the PNG image want, typed
// image/png and with its length in Content-Length.
func ExpectPNGReply(t testing.TB, what string, r Reply, want []byte) {
	t.Helper()
	if r.Status != http.StatusOK || r.Body != string(want) {
		t.Fatalf("%s: %d, %d bytes; want 200 and the %d bytes of the image", what, r.Status, len(r.Body), len(want))
	}
	if ct := r.Header.Get("Content-Type"); ct != "image/png" {
		t.Errorf("%s Content-Type %q, want image/png", what, ct)
	}
	if cl := r.Header.Get("Content-Length"); cl != strconv.Itoa(len(want)) {
		t.Errorf("%s Content-Length %q, want %d", what, cl, len(want))
	}
}

// ParseID parses a reply that must be a bare non-negative decimal id: no whitespace, no trailing newline.
func ParseID(t testing.TB, body string) int64 {
	t.Helper()
	id, err := strconv.ParseInt(body, 10, 64)
	if err != nil || id < 0 {
		t.Fatalf("reply %q is not a bare decimal id", body)
	}
	return id
}

// PollInterval is how often Poll checks its condition.
const PollInterval = 10 * time.Millisecond

// Poll calls cond every PollInterval until it returns true or ctx ends, and reports whether it returned
// true. cond is called at least once, on the caller's goroutine.
func Poll(ctx context.Context, cond func() bool) bool {
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(PollInterval):
		}
	}
	return true
}

// PollFor is Poll bounded by timeout instead of a context.
func PollFor(timeout time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return Poll(ctx, cond)
}
