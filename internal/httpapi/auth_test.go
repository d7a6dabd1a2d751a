package httpapi_test

import (
	"crypto/subtle"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

const testToken = "s3cret-Token_0123456789"

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
	for _, ok := range []string{"", "abc", testToken, "a+b/c=", strings.Repeat("f", 64)} {
		if err := httpapi.CheckToken(ok); err != nil {
			t.Errorf("CheckToken(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"a b", "tab\there", "new\nline", "ünïcode", "\x00"} {
		if err := httpapi.CheckToken(bad); err == nil {
			t.Errorf("CheckToken(%q) = nil, want an error", bad)
		}
	}
}
