package httpapi_test

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

const testToken = "s3cret-Token_0123456789-abcdefghijk"

// guarded serves a mux with /healthz and /secret behind RequireToken(testToken), the way service.Run
// puts it together.
func guarded(t *testing.T) string {
	t.Helper()
	mux := httpapi.NewMux()
	mux.Handle("GET /healthz", httpapi.Healthz(nil))
	mux.Handle("GET /livez", httpapi.Livez())
	mux.HandleFunc("POST /secret", func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteText(w, http.StatusOK, "the secret")
	})
	srv, _ := newServer(t, httpapi.RequireToken(testToken, mux), servicetest.Discard)
	return srv.URL
}

func TestRequireToken(t *testing.T) {
	url := guarded(t)
	hc := servicetest.NewHTTPClient(t)
	tests := []struct {
		name, method, path, auth string
		status                   int
		body                     string
	}{
		{"no header", "POST", "/secret", "", 401, httpapi.UnauthorizedText},
		{"wrong token", "POST", "/secret", "Bearer not-the-token", 401, httpapi.UnauthorizedText},
		{"prefix of the token", "POST", "/secret", "Bearer " + testToken[:len(testToken)-1], 401, httpapi.UnauthorizedText},
		{"token plus more", "POST", "/secret", "Bearer " + testToken + "x", 401, httpapi.UnauthorizedText},
		{"empty bearer", "POST", "/secret", "Bearer ", 401, httpapi.UnauthorizedText},
		{"scheme only", "POST", "/secret", "Bearer", 401, httpapi.UnauthorizedText},
		{"token without scheme", "POST", "/secret", testToken, 401, httpapi.UnauthorizedText},
		{"wrong scheme", "POST", "/secret", "Basic " + testToken, 401, httpapi.UnauthorizedText},
		{"right token", "POST", "/secret", "Bearer " + testToken, 200, "the secret"},
		{"scheme is case-insensitive", "POST", "/secret", "bearer " + testToken, 200, "the secret"},
		// Unknown paths and methods are not revealed either.
		{"unknown path without token", "GET", "/nope", "", 401, httpapi.UnauthorizedText},
		{"unknown path with token", "GET", "/nope", "Bearer " + testToken, 404, "Error: no endpoint /nope"},
		{"healthz without token", "GET", "/healthz", "", 200, "ok"},
		{"healthz with a wrong token", "GET", "/healthz", "Bearer wrong", 200, "ok"},
		{"POST healthz is not open", "POST", "/healthz", "", 401, httpapi.UnauthorizedText},
		{"livez without token", "GET", "/livez", "", 200, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, url+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			r := servicetest.MustDo(t, hc, req)
			if r.Status != tt.status || r.Body != tt.body {
				t.Errorf("%s %s with %q = %d %q, want %d %q", tt.method, tt.path, tt.auth, r.Status, r.Body, tt.status, tt.body)
			}
			if got, want := r.Header.Get("WWW-Authenticate"), map[bool]string{true: "Bearer"}[tt.status == 401]; got != want {
				t.Errorf("WWW-Authenticate = %q, want %q", got, want)
			}
			// The shared plumbing still runs around a refusal: the reply has a request id.
			if r.Header.Get(httpapi.RequestIDHeader) == "" {
				t.Errorf("no %s on the reply", httpapi.RequestIDHeader)
			}
		})
	}
	// HEAD /healthz is as open as GET.
	if r := servicetest.Call(t, hc, http.MethodHead, url+"/healthz", nil); r.Status != 200 {
		t.Errorf("HEAD /healthz = %d, want 200", r.Status)
	}
}

// Every presented token, right or wrong, is judged by the constant-time comparison.
func TestRequireTokenComparesInConstantTime(t *testing.T) {
	var calls, matches atomic.Int32
	restore := httpapi.SetConstantTimeCompare(func(x, y []byte) int {
		calls.Add(1)
		eq := subtle.ConstantTimeCompare(x, y)
		if len(x) != len(y) {
			t.Errorf("compared %d bytes with %d: the lengths must not depend on the token", len(x), len(y))
		}
		if eq == 1 {
			matches.Add(1)
		}
		return eq
	})
	t.Cleanup(restore)
	url := guarded(t)
	hc := servicetest.NewHTTPClient(t)
	for _, auth := range []string{"Bearer wrong", "Bearer " + testToken, "Bearer " + strings.Repeat("x", 500)} {
		req, _ := http.NewRequest(http.MethodPost, url+"/secret", nil)
		req.Header.Set("Authorization", auth)
		servicetest.MustDo(t, hc, req)
	}
	if calls.Load() != 3 || matches.Load() != 1 {
		t.Errorf("constant-time comparison called %d times with %d matches, want 3 and 1", calls.Load(), matches.Load())
	}
}

// An empty token turns the check off.
func TestRequireTokenEmptyIsOff(t *testing.T) {
	srv, hc := newServer(t, httpapi.RequireToken("", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteText(w, http.StatusOK, "open")
	})), servicetest.Discard)
	if r := servicetest.Call(t, hc, http.MethodPost, srv.URL+"/anything", nil); r.Status != 200 || r.Body != "open" {
		t.Errorf("without a token = %d %q, want 200 open", r.Status, r.Body)
	}
}

// A client made WithToken sends the bearer token on every request, unless the request sets its own
// Authorization; without a token nothing is sent. The caller's request is left unchanged.
func TestClientSendsToken(t *testing.T) {
	srv, _ := newServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteText(w, http.StatusOK, r.Header.Get("Authorization"))
	}), servicetest.Discard)

	withToken := httpapi.NewClient(httpapi.WithToken(testToken))
	t.Cleanup(withToken.CloseIdleConnections)
	for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodDelete} {
		req, _ := http.NewRequest(method, srv.URL+"/x", strings.NewReader("body"))
		if r := servicetest.MustDo(t, withToken, req); r.Body != "Bearer "+testToken {
			t.Errorf("%s: server saw Authorization %q, want %q", method, r.Body, "Bearer "+testToken)
		}
		if got := req.Header.Get("Authorization"); got != "" {
			t.Errorf("%s: the caller's request was changed: Authorization %q", method, got)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x", nil)
	req.Header.Set("Authorization", "Bearer explicit")
	if r := servicetest.MustDo(t, withToken, req); r.Body != "Bearer explicit" {
		t.Errorf("explicit Authorization: server saw %q", r.Body)
	}

	// And the token it sends is the one RequireToken accepts.
	url := guarded(t)
	if r := servicetest.Call(t, withToken, http.MethodPost, url+"/secret", nil); r.Status != 200 {
		t.Errorf("WithToken client against RequireToken: %d %q", r.Status, r.Body)
	}

	for name, c := range map[string]*http.Client{"NewClient()": httpapi.NewClient(), "WithToken(\"\")": httpapi.NewClient(httpapi.WithToken(""))} {
		t.Cleanup(c.CloseIdleConnections)
		if r := servicetest.Call(t, c, http.MethodGet, srv.URL+"/x", nil); r.Body != "" {
			t.Errorf("%s sent Authorization %q", name, r.Body)
		}
		if r := servicetest.Call(t, c, http.MethodPost, url+"/secret", nil); r.Status != 401 {
			t.Errorf("%s against RequireToken: %d, want 401", name, r.Status)
		}
	}
}

func TestCheckToken(t *testing.T) {
	long := strings.Repeat("x", 32)
	for _, ok := range []string{"", testToken, long, "kq3V+0hZ3f8pX9yQ2mW7bT4nR1sL6cA0eJ5uG8dF/Hk=", strings.Repeat("f", 64)} {
		if err := httpapi.CheckToken(ok); err != nil {
			t.Errorf("CheckToken(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{long + "a b", long + "tab\there", long + "new\nline", long + "ünïcode", long + "\x00"} {
		if err := httpapi.CheckToken(bad); err == nil {
			t.Errorf("CheckToken(%q) = nil, want an error", bad)
		}
	}
	for _, short := range []string{"x", "abc", "a+b/c=", long[:31]} {
		want := fmt.Sprintf("the token is too short (%d of at least 32 characters): use a long random one, e.g. from `openssl rand -base64 32`", len(short))
		if err := httpapi.CheckToken(short); err == nil || err.Error() != want {
			t.Errorf("CheckToken(%q) = %v, want %q", short, err, want)
		}
	}
}

// TestRequireTokenThrottlesFailures: after a burst of wrong tokens from one address, the next wrong one
// answers 429 with Retry-After; the right token from that same address still passes at once.
func TestRequireTokenThrottlesFailures(t *testing.T) {
	url := guarded(t)
	hc := servicetest.NewHTTPClient(t)
	post := func(auth string) servicetest.Reply {
		req, err := http.NewRequest(http.MethodPost, url+"/secret", nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		return servicetest.MustDo(t, hc, req)
	}
	for i := range 10 {
		if r := post("Bearer wrong-" + strconv.Itoa(i)); r.Status != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d %q, want 401 within the burst", i+1, r.Status, r.Body)
		}
	}
	var throttled servicetest.Reply
	for range 3 { // a refill of one a second may let one more through on a slow machine
		if throttled = post("Bearer wrong-again"); throttled.Status == http.StatusTooManyRequests {
			break
		}
	}
	if throttled.Status != http.StatusTooManyRequests || throttled.Header.Get("Retry-After") == "" ||
		!strings.HasPrefix(throttled.Body, "Error: too many failed attempts with a wrong token, retry in ") {
		t.Fatalf("wrong tokens past the burst: %d %q Retry-After %q, want 429 with Retry-After",
			throttled.Status, throttled.Body, throttled.Header.Get("Retry-After"))
	}
	if r := post(""); r.Status != http.StatusTooManyRequests {
		t.Errorf("no token past the burst: %d %q, want 429", r.Status, r.Body)
	}
	for i := range 20 {
		if r := post("Bearer " + testToken); r.Status != http.StatusOK || r.Body != "the secret" {
			t.Fatalf("right token %d from the throttled address: %d %q, want 200", i+1, r.Status, r.Body)
		}
	}
}
