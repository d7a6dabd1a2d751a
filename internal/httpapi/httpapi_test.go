package httpapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newServer serves h the way production does: through httpapi.NewHTTPServer, so Wrap and the server
// timeouts apply. The server and the client's idle connections are closed when the test ends.
func newServer(t *testing.T, h http.Handler, logger *slog.Logger) (*httptest.Server, *http.Client) {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(h, logger)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, servicetest.NewHTTPClient(t)
}

func TestErrorHelpers(t *testing.T) {
	notFound := httpapi.Errorf(http.StatusNotFound, "no value for key %q", "k")
	var e *httpapi.Error
	if !errors.As(notFound, &e) {
		t.Fatalf("Errorf returned %T, want *httpapi.Error", notFound)
	}
	if e.Status != http.StatusNotFound || e.Msg != `no value for key "k"` {
		t.Errorf("Errorf = %+v", *e)
	}
	if got, want := notFound.Error(), `404 no value for key "k"`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}

	tests := []struct {
		name   string
		err    error
		status int
		text   string
	}{
		{"Error", &httpapi.Error{Status: http.StatusBadRequest, Msg: "bad id"}, 400, "Error: bad id"},
		{"wrapped Error", fmt.Errorf("context: %w", httpapi.Errorf(http.StatusConflict, "busy")), 409, "Error: busy"},
		{"joined Error", errors.Join(errors.New("x"), httpapi.Errorf(http.StatusTeapot, "tea")), 418, "Error: tea"},
		{"plain error", errors.New("disk on fire at /secret/path"), 500, "Error: internal error"},
		// Transient failures say what is away, never the cause (an address, a path).
		{"unavailable", fmt.Errorf("get task 3: %w", fault.Unavailable("the task database", errors.New("dial tcp 10.0.0.1:5432: refused"))),
			503, "Error: the task database is temporarily unavailable, retry later"},
		{"no space", fmt.Errorf("store: %w", fault.NoSpace("image storage", errors.New("write /data/images/x: no space left"))),
			507, "Error: image storage is out of space, retry later"},
		{"wrapped plain error", fmt.Errorf("store: %w", io.ErrUnexpectedEOF), 500, "Error: internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := httpapi.StatusOf(tt.err); got != tt.status {
				t.Errorf("StatusOf = %d, want %d", got, tt.status)
			}
			if got := httpapi.ErrorText(tt.err); got != tt.text {
				t.Errorf("ErrorText = %q, want %q", got, tt.text)
			}
		})
	}
}

func TestReadErrorBody(t *testing.T) {
	tests := []struct {
		status int
		body   string
		msg    string
	}{
		{400, "Error: No non-started task.", "No non-started task."},
		{404, "Error:no value\n", "no value"},
		{500, "plain text", "plain text"},
		{502, "", "Bad Gateway"},
		{503, "Error:   ", "Service Unavailable"},
	}
	for _, tt := range tests {
		e := httpapi.ReadErrorBody(tt.status, http.Header{}, []byte(tt.body))
		if e.Status != tt.status || e.Msg != tt.msg {
			t.Errorf("ReadErrorBody(%d, %q) = %+v, want status %d msg %q", tt.status, tt.body, *e, tt.status, tt.msg)
		}
		if e.RetryAfter != 0 {
			t.Errorf("ReadErrorBody without Retry-After: RetryAfter %s", e.RetryAfter)
		}
	}
}

func TestWriteText(t *testing.T) {
	rec := httptest.NewRecorder()
	httpapi.WriteText(rec, http.StatusAccepted, "success")
	if rec.Code != http.StatusAccepted {
		t.Errorf("status = %d, want 202", rec.Code)
	}
	if got := rec.Body.String(); got != "success" {
		t.Errorf("body = %q, want %q (no trailing newline)", got, "success")
	}
	for k, want := range map[string]string{
		"Content-Type":           "text/plain; charset=utf-8",
		"Content-Length":         "7",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := rec.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

func TestHandlerFuncErrors(t *testing.T) {
	mux := httpapi.NewMux()
	mux.Handle("GET /plain", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("open /var/secret/db: %w", errors.New("permission denied"))
	}))
	mux.Handle("GET /typed", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("wrapped: %w", httpapi.Errorf(http.StatusNotFound, "no image for task %d", 7))
	}))
	mux.Handle("GET /ok", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		httpapi.WriteText(w, http.StatusOK, "fine")
		return nil
	}))
	mux.Handle("GET /late", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "partial")
		return errors.New("stream broke")
	}))
	srv, c := newServer(t, mux, servicetest.Discard)

	tests := []struct {
		path   string
		status int
		body   string
	}{
		{"/plain", 500, "Error: internal error"},
		{"/typed", 404, "Error: no image for task 7"},
		{"/ok", 200, "fine"},
		// Once the reply is under way the error can only be logged; no "Error:" is spliced into the body.
		{"/late", 200, "partial"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r := servicetest.Call(t, c, http.MethodGet, srv.URL+tt.path, nil)
			if r.Status != tt.status || r.Body != tt.body {
				t.Errorf("GET %s = %d %q, want %d %q", tt.path, r.Status, r.Body, tt.status, tt.body)
			}
			if strings.Contains(r.Body, "secret") || strings.Contains(r.Body, "permission") {
				t.Errorf("body leaks the internal error: %q", r.Body)
			}
			if r.Header.Get(httpapi.RequestIDHeader) == "" {
				t.Errorf("no %s header", httpapi.RequestIDHeader)
			}
		})
	}
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestInternalErrorIsLoggedWithRequestID(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return errors.New("the real reason")
	})
	srv, c := newServer(t, h, logger)
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x", nil)
	req.Header.Set(httpapi.RequestIDHeader, "log-me-42")
	r := servicetest.MustDo(t, c, req)
	if r.Status != 500 || r.Body != "Error: internal error" {
		t.Fatalf("got %d %q", r.Status, r.Body)
	}
	// The access log line is written after the reply went out: wait for it.
	servicetest.PollFor(5*time.Second, func() bool { return strings.Contains(logs.String(), "msg=request ") })
	out := logs.String()
	for _, want := range []string{
		`msg="request failed" request_id=log-me-42 err="the real reason"`,
		`msg=request request_id=log-me-42 method=GET path=/x status=500`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestPanicRecovery(t *testing.T) {
	mux := httpapi.NewMux()
	mux.HandleFunc("GET /panic", func(w http.ResponseWriter, r *http.Request) { panic("boom: secret detail") })
	mux.HandleFunc("GET /abort", func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) })
	srv, c := newServer(t, mux, servicetest.Discard)

	r := servicetest.Call(t, c, http.MethodGet, srv.URL+"/panic", nil)
	if r.Status != http.StatusInternalServerError || r.Body != "Error: internal error" {
		t.Errorf("GET /panic = %d %q, want 500 %q", r.Status, r.Body, "Error: internal error")
	}
	if r.Header.Get(httpapi.RequestIDHeader) == "" {
		t.Errorf("panic reply has no %s", httpapi.RequestIDHeader)
	}

	// http.ErrAbortHandler is passed on so that the server aborts the connection.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/abort", nil)
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("GET /abort answered %d, want the connection aborted", resp.StatusCode)
	}

	// The server survives both.
	if r := servicetest.Call(t, c, http.MethodGet, srv.URL+"/panic", nil); r.Status != 500 {
		t.Errorf("second GET /panic = %d", r.Status)
	}
}

var generatedID = regexp.MustCompile(`^[0-9a-f]{16}$`)

func TestRequestIDGeneratedAndEchoed(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteText(w, http.StatusOK, httpapi.RequestID(r.Context()))
	})
	srv, c := newServer(t, h, servicetest.Discard)

	get := func(id string) servicetest.Reply {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
		if id != "" {
			req.Header.Set(httpapi.RequestIDHeader, id)
		}
		return servicetest.MustDo(t, c, req)
	}

	a, b := get(""), get("")
	for _, r := range []servicetest.Reply{a, b} {
		id := r.Header.Get(httpapi.RequestIDHeader)
		if !generatedID.MatchString(id) {
			t.Errorf("generated id %q is not 16 hex digits", id)
		}
		if r.Body != id {
			t.Errorf("handler saw id %q, reply header says %q", r.Body, id)
		}
	}
	if a.Body == b.Body {
		t.Errorf("two requests got the same generated id %q", a.Body)
	}

	if r := get("caller-id-1"); r.Header.Get(httpapi.RequestIDHeader) != "caller-id-1" || r.Body != "caller-id-1" {
		t.Errorf("caller's id not echoed: header %q, context %q", r.Header.Get(httpapi.RequestIDHeader), r.Body)
	}
	max := strings.Repeat("a", 128)
	if r := get(max); r.Header.Get(httpapi.RequestIDHeader) != max {
		t.Errorf("128-character id was not kept")
	}
	if r := get(max + "a"); !generatedID.MatchString(r.Header.Get(httpapi.RequestIDHeader)) || r.Body != r.Header.Get(httpapi.RequestIDHeader) {
		t.Errorf("129-character id was not replaced: header %q, context %q", r.Header.Get(httpapi.RequestIDHeader), r.Body)
	}
}

func TestRequestIDContext(t *testing.T) {
	if got := httpapi.RequestID(context.Background()); got != "" {
		t.Errorf("RequestID(Background) = %q, want empty", got)
	}
	if got := httpapi.RequestID(httpapi.WithRequestID(context.Background(), "abc")); got != "abc" {
		t.Errorf("RequestID(WithRequestID(abc)) = %q", got)
	}
	if a, b := httpapi.NewRequestID(), httpapi.NewRequestID(); !generatedID.MatchString(a) || a == b {
		t.Errorf("NewRequestID gave %q and %q", a, b)
	}
}

func TestClientPropagatesRequestID(t *testing.T) {
	// back reports the id it received.
	back, _ := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteText(w, http.StatusOK, r.Header.Get(httpapi.RequestIDHeader))
	}), servicetest.Discard)

	// front calls back with its request's context, as services call each other.
	out := httpapi.NewClient()
	t.Cleanup(out.CloseIdleConnections)
	front, c := newServer(t, httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, back.URL+"/", nil)
		if err != nil {
			return err
		}
		if explicit := r.URL.Query().Get("explicit"); explicit != "" {
			req.Header.Set(httpapi.RequestIDHeader, explicit)
		}
		resp, err := out.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		httpapi.WriteText(w, http.StatusOK, string(b))
		return nil
	}), servicetest.Discard)

	req, _ := http.NewRequest(http.MethodGet, front.URL+"/", nil)
	req.Header.Set(httpapi.RequestIDHeader, "upload-77")
	if r := servicetest.MustDo(t, c, req); r.Status != 200 || r.Body != "upload-77" {
		t.Errorf("back saw %d %q, want the caller's id upload-77", r.Status, r.Body)
	}

	r := servicetest.Call(t, c, http.MethodGet, front.URL+"/", nil)
	if id := r.Header.Get(httpapi.RequestIDHeader); r.Status != 200 || r.Body != id || !generatedID.MatchString(id) {
		t.Errorf("back saw %d %q, front generated %q", r.Status, r.Body, id)
	}

	// An id set explicitly on the outgoing request wins over the context's.
	req, _ = http.NewRequest(http.MethodGet, front.URL+"/?explicit=mine", nil)
	req.Header.Set(httpapi.RequestIDHeader, "upload-78")
	if r := servicetest.MustDo(t, c, req); r.Body != "mine" {
		t.Errorf("back saw %q, want the explicit id mine", r.Body)
	}

	// A request without an id in its context goes out without the header.
	req, _ = http.NewRequest(http.MethodGet, back.URL+"/", nil)
	if r := servicetest.MustDo(t, out, req); r.Body != "" {
		t.Errorf("back saw id %q from a context without one", r.Body)
	}
}

func TestClientCloseIdleConnections(t *testing.T) {
	closed := make(chan struct{}, 16)
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(httpapi.Livez(), servicetest.Discard)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed <- struct{}{}
		}
	}
	srv.Start()
	defer srv.Close()

	c := httpapi.NewClient()
	defer c.CloseIdleConnections()
	if r := servicetest.Call(t, c, http.MethodGet, srv.URL+"/healthz", nil); r.Status != 200 || r.Body != "ok" {
		t.Fatalf("GET /healthz = %d %q", r.Status, r.Body)
	}
	// The connection is now idle in the client's pool; closing idle connections must reach the transport
	// inside the request-id wrapper and close it.
	c.CloseIdleConnections()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("CloseIdleConnections did not close the client's idle connection")
	}
}

func TestMuxFallback(t *testing.T) {
	mux := httpapi.NewMux()
	mux.Handle("POST /set", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		httpapi.WriteText(w, http.StatusOK, "success")
		return nil
	}))
	mux.Handle("GET /get", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		httpapi.WriteText(w, http.StatusOK, "value")
		return nil
	}))
	mux.Handle("DELETE /remove", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		httpapi.WriteText(w, http.StatusOK, "success")
		return nil
	}))
	mux.Handle("GET /healthz", httpapi.Livez())
	srv, c := newServer(t, mux, servicetest.Discard)

	servicetest.CheckPlumbing(t, c, srv.URL, []servicetest.Route{
		{Method: "POST", Path: "/set", Status: 200, Body: "success"},
		{Method: "GET", Path: "/get", Status: 200, Body: "value"},
		{Method: "GET", Path: "/healthz", Status: 200, Body: "ok"},
		{Method: "GET", Path: "/nope", Status: 404, Body: "Error: no endpoint /nope"},
		{Method: "POST", Path: "/nope", Status: 404, Body: "Error: no endpoint /nope"},
		{Method: "GET", Path: "/", Status: 404, Body: "Error: no endpoint /"},
		{Method: "GET", Path: "/set/extra", Status: 404, Body: "Error: no endpoint /set/extra"},
		{Method: "GET", Path: "/set", Status: 405, Body: "Error: method GET not allowed on /set", Allow: "POST"},
		{Method: "PUT", Path: "/set", Status: 405, Body: "Error: method PUT not allowed on /set", Allow: "POST"},
		{Method: "POST", Path: "/get", Status: 405, Body: "Error: method POST not allowed on /get", Allow: "GET, HEAD"},
		{Method: "GET", Path: "/remove", Status: 405, Body: "Error: method GET not allowed on /remove", Allow: "DELETE"},
		{Method: "OPTIONS", Path: "/remove", Status: 405, Body: "Error: method OPTIONS not allowed on /remove", Allow: "DELETE"},
	})
}

func TestQueryID(t *testing.T) {
	tests := []struct {
		query string
		id    int64
		msg   string // "" when valid
	}{
		{"id=0", 0, ""},
		{"id=42", 42, ""},
		{"id=007", 7, ""},
		{"id=9223372036854775807", 9223372036854775807, ""},
		{"", 0, "missing id parameter"},
		{"id=", 0, "missing id parameter"},
		{"other=1", 0, "missing id parameter"},
		{"id=-1", 0, `id must be a non-negative decimal integer, got "-1"`},
		{"id=abc", 0, `id must be a non-negative decimal integer, got "abc"`},
		{"id=1.5", 0, `id must be a non-negative decimal integer, got "1.5"`},
		{"id=0x10", 0, `id must be a non-negative decimal integer, got "0x10"`},
		{"id=%201", 0, `id must be a non-negative decimal integer, got " 1"`},
		{"id=9223372036854775808", 0, `id must be a non-negative decimal integer, got "9223372036854775808"`},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/x?"+tt.query, nil)
			id, err := httpapi.QueryID(r, "id")
			if tt.msg == "" {
				if err != nil || id != tt.id {
					t.Errorf("QueryID = %d, %v; want %d", id, err, tt.id)
				}
				return
			}
			var e *httpapi.Error
			if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Msg != tt.msg {
				t.Errorf("QueryID = %d, %v; want 400 %q", id, err, tt.msg)
			}
		})
	}
}

func TestQueryRequired(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/x?key=a%26b&empty=", nil)
	if v, err := httpapi.QueryRequired(r, "key"); err != nil || v != "a&b" {
		t.Errorf("QueryRequired(key) = %q, %v", v, err)
	}
	for _, name := range []string{"empty", "absent"} {
		_, err := httpapi.QueryRequired(r, name)
		if httpapi.StatusOf(err) != 400 || httpapi.ErrorText(err) != "Error: missing "+name+" parameter" {
			t.Errorf("QueryRequired(%s) = %v", name, err)
		}
	}
}

func TestQueryDuration(t *testing.T) {
	const max = 60 * time.Second
	tests := []struct {
		raw  string
		want time.Duration
		msg  string // "" when valid
	}{
		{"", 0, ""},
		{"0", 0, ""},
		{"10s", 10 * time.Second, ""},
		{"500ms", 500 * time.Millisecond, ""},
		{"1m", time.Minute, ""},
		{"10", 10 * time.Second, ""},
		{"60", 60 * time.Second, ""},
		{"1m0s", time.Minute, ""},
		{"61s", 0, "wait must be between 0 and 1m0s"},
		{"61", 0, "wait must be between 0 and 1m0s"},
		{"-1s", 0, "wait must be between 0 and 1m0s"},
		{"-1", 0, "wait must be between 0 and 1m0s"},
		{"abc", 0, `wait must be a duration like 10s, got "abc"`},
		{"1.5", 0, `wait must be a duration like 10s, got "1.5"`},
		{"10 s", 0, `wait must be a duration like 10s, got "10 s"`},
		// Whole seconds whose nanoseconds overflow int64 must be refused, not wrap around into range:
		// 18446744074 s is 2^64 ns + 290448384 ns.
		{"18446744074", 0, "wait must be between 0 and 1m0s"},
		{"9223372037", 0, "wait must be between 0 and 1m0s"},
		{"99999999999999999999", 0, `wait must be a duration like 10s, got "99999999999999999999"`},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/x", nil)
			if tt.raw != "" {
				q := r.URL.Query()
				q.Set("wait", tt.raw)
				r.URL.RawQuery = q.Encode()
			}
			d, err := httpapi.QueryDuration(r, "wait", max)
			if tt.msg == "" {
				if err != nil || d != tt.want {
					t.Errorf("QueryDuration(%q) = %v, %v; want %v", tt.raw, d, err, tt.want)
				}
				return
			}
			var e *httpapi.Error
			if !errors.As(err, &e) || e.Status != http.StatusBadRequest || e.Msg != tt.msg {
				t.Errorf("QueryDuration(%q) = %v, %v; want 400 %q", tt.raw, d, err, tt.msg)
			}
		})
	}
}

func TestServeDrainsAndShutsDownCleanly(t *testing.T) {
	ln, err := httpapi.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	entered := make(chan struct{})
	release := make(chan struct{})
	mux := httpapi.NewMux()
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		httpapi.WriteText(w, http.StatusOK, "done")
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- httpapi.Serve(ctx, ln, mux, servicetest.Discard) }()

	c := httpapi.NewClient()
	defer c.CloseIdleConnections()
	type result struct {
		r   servicetest.Reply
		err error
	}
	inflight := make(chan result, 1)
	go func() {
		r, err := servicetest.Send(context.Background(), c, http.MethodGet, "http://"+addr+"/slow", nil)
		inflight <- result{r, err}
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the request never reached the handler")
	}

	cancel()
	// Serve stops accepting: new connections are refused once the listener is closed.
	refused := servicetest.PollFor(5*time.Second, func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	if !refused {
		t.Fatal("listener still accepts connections after the context ended")
	}
	// ...but waits for the request in flight.
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}

	close(release)
	select {
	case res := <-inflight:
		if res.err != nil {
			t.Fatalf("in-flight request failed: %v", res.err)
		}
		if res.r.Status != 200 || res.r.Body != "done" {
			t.Errorf("in-flight request = %d %q, want 200 done", res.r.Status, res.r.Body)
		}
		if res.r.Header.Get(httpapi.RequestIDHeader) == "" {
			t.Errorf("Serve does not wrap the handler: no %s", httpapi.RequestIDHeader)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight request never completed")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v, want nil after a clean shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the context ended")
	}
}

func TestServeListenerFailure(t *testing.T) {
	ln, err := httpapi.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	done := make(chan error, 1)
	go func() { done <- httpapi.Serve(context.Background(), ln, httpapi.Livez(), servicetest.Discard) }()
	select {
	case err := <-done:
		if err == nil || !strings.HasPrefix(err.Error(), "serve ") {
			t.Errorf("Serve on a closed listener = %v, want a serve error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve on a closed listener did not return")
	}
}

func TestListenBadAddress(t *testing.T) {
	if ln, err := httpapi.Listen(context.Background(), "127.0.0.1:notaport"); err == nil {
		ln.Close()
		t.Fatal("Listen on a bad address succeeded")
	}
}

func TestAdvertiseAddr(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{Port: 3001}, "127.0.0.1:3001"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 3001}, "127.0.0.1:3001"},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 80}, "127.0.0.1:80"},
		{&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 80}, "10.1.2.3:80"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 8080}, "[::1]:8080"},
		{&net.UnixAddr{Name: "/tmp/s", Net: "unix"}, "/tmp/s"},
	}
	for _, tt := range tests {
		if got := httpapi.AdvertiseAddr(tt.addr); got != tt.want {
			t.Errorf("AdvertiseAddr(%v) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

// A refusal's Retry-After travels: the server sends it, a client reads it back into the error, and a
// proxying handler that returns that error sends it on.
func TestRetryAfterPassesThrough(t *testing.T) {
	upstream := httptest.NewServer(httpapi.Wrap(httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return &httpapi.Error{Status: http.StatusServiceUnavailable, Msg: "busy", RetryAfter: 1500 * time.Millisecond}
	}), slog.New(slog.DiscardHandler)))
	defer upstream.Close()
	resp, err := http.Get(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || string(body) != "Error: busy" || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("upstream: %d %q Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	e := httpapi.ReadErrorBody(resp.StatusCode, resp.Header, body)
	if e.RetryAfter != 2*time.Second || e.Msg != "busy" {
		t.Fatalf("read back: %+v", *e)
	}
	proxy := httptest.NewServer(httpapi.Wrap(httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return fmt.Errorf("upstream refused: %w", e)
	}), slog.New(slog.DiscardHandler)))
	defer proxy.Close()
	resp, err = http.Get(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || string(body) != "Error: busy" || resp.Header.Get("Retry-After") != "2" {
		t.Errorf("proxy: %d %q Retry-After %q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	for d, want := range map[time.Duration]int{0: 1, time.Nanosecond: 1, time.Second: 1, time.Second + 1: 2, 10 * time.Second: 10} {
		if got := httpapi.RetryAfterSeconds(d); got != want {
			t.Errorf("RetryAfterSeconds(%s) = %d, want %d", d, got, want)
		}
	}
}

// TestTransientFailuresAnswerRetryAfter: a handler failing with a transient fault answers 503 or 507 with
// Retry-After, in both reply forms, and logs it as a warning, not an error.
func TestTransientFailuresAnswerRetryAfter(t *testing.T) {
	for _, c := range []struct {
		name        string
		err         error
		status      int
		retryAfter  string
		text, jsonB string
	}{
		{"unavailable", fault.Unavailable("etcd", errors.New("no leader")), 503, "2",
			"Error: etcd is temporarily unavailable, retry later", `{"error":"etcd is temporarily unavailable, retry later"}`},
		{"no space", fault.NoSpace("image storage", errors.New("ENOSPC")), 507, "10",
			"Error: image storage is out of space, retry later", `{"error":"image storage is out of space, retry later"}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
			fail := func(w http.ResponseWriter, r *http.Request) error { return fmt.Errorf("handler: %w", c.err) }
			for _, h := range []struct {
				handler http.Handler
				body    string
			}{{httpapi.HandlerFunc(fail), c.text}, {httpapi.JSONHandlerFunc(fail), c.jsonB}} {
				rec := httptest.NewRecorder()
				httpapi.Wrap(h.handler, logger).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/x", nil))
				if rec.Code != c.status || rec.Header().Get("Retry-After") != c.retryAfter || rec.Body.String() != h.body {
					t.Errorf("%d Retry-After %q %q, want %d Retry-After %q %q", rec.Code, rec.Header().Get("Retry-After"),
						rec.Body.String(), c.status, c.retryAfter, h.body)
				}
			}
			if strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "level=WARN") {
				t.Errorf("want a warning, not an error:\n%s", logs.String())
			}
		})
	}
	for status, want := range map[int]bool{502: true, 503: true, 504: true, 507: true, 500: false, 400: false, 409: false, 429: false} {
		if got := (&httpapi.Error{Status: status}).Transient(); got != want {
			t.Errorf("Error{%d}.Transient() = %v, want %v", status, got, want)
		}
		if got := fault.IsTransient(fmt.Errorf("call: %w", &httpapi.Error{Status: status})); got != want {
			t.Errorf("fault.IsTransient(a peer's %d) = %v, want %v", status, got, want)
		}
	}
}

// TestHealthz: the readiness probe answers from its check, 503 with Retry-After while it fails (what is
// not ready, without the cause), and asks the check at most once a second however often it is probed;
// the liveness probe always answers ok.
func TestHealthz(t *testing.T) {
	var calls atomic.Int64
	var down atomic.Bool
	check := func(ctx context.Context) error {
		calls.Add(1)
		if down.Load() {
			return fault.Unavailable("the task database", errors.New("dial tcp 10.0.0.1:5432: connection refused"))
		}
		return nil
	}
	mux := httpapi.NewMux()
	mux.Handle("GET /healthz", httpapi.Healthz(check))
	mux.Handle("GET /livez", httpapi.Livez())
	srv, hc := newServer(t, mux, slog.New(slog.DiscardHandler))
	probe := func(path string) servicetest.Reply {
		t.Helper()
		return servicetest.Call(t, hc, http.MethodGet, srv.URL+path, nil)
	}
	if r := probe("/healthz"); r.Status != 200 || r.Body != "ok" {
		t.Fatalf("healthy: %d %q", r.Status, r.Body)
	}
	for range 20 {
		probe("/healthz")
	}
	if n := calls.Load(); n > 2 {
		t.Errorf("21 probes within a second asked the check %d times, want at most 2 (cached)", n)
	}
	down.Store(true)
	var r servicetest.Reply
	waitUntil(t, 5*time.Second, func() bool { r = probe("/healthz"); return r.Status != 200 })
	if r.Status != 503 || r.Body != "Error: the task database is temporarily unavailable, retry later" || r.Header.Get("Retry-After") == "" {
		t.Errorf("unhealthy: %d %q Retry-After %q", r.Status, r.Body, r.Header.Get("Retry-After"))
	}
	if r := probe("/livez"); r.Status != 200 || r.Body != "ok" {
		t.Errorf("/livez while not ready: %d %q, want 200 ok", r.Status, r.Body)
	}
	down.Store(false)
	waitUntil(t, 5*time.Second, func() bool { return probe("/healthz").Status == 200 })

	// A check that fails with an error of no known kind still answers 503, saying only "not ready".
	mux2 := httpapi.NewMux()
	mux2.Handle("GET /healthz", httpapi.Healthz(func(context.Context) error { return errors.New("secret detail") }))
	srv2, _ := newServer(t, mux2, slog.New(slog.DiscardHandler))
	if r := servicetest.Call(t, hc, http.MethodGet, srv2.URL+"/healthz", nil); r.Status != 503 || r.Body != "Error: not ready" {
		t.Errorf("unknown failure: %d %q, want 503 \"Error: not ready\"", r.Status, r.Body)
	}
}

// waitUntil polls cond every 20ms until it holds, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A handler that fails because its caller hung up is not a server error: logged at debug, as 499.
func TestCallerGoneIsNotAnError(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h := httpapi.Wrap(httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		<-r.Context().Done()
		return fmt.Errorf("forward: %w", r.Context().Err())
	}), logger)
	ctx, cancel := context.WithCancel(t.Context())
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/x", nil)
	rec := httptest.NewRecorder()
	cancel()
	h.ServeHTTP(rec, req)
	if rec.Code != httpapi.StatusClientClosedRequest {
		t.Errorf("status %d, want 499", rec.Code)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("logged as an error:\n%s", logs.String())
	}
}
