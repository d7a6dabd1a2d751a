package servicetest

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// Route is one row of a plumbing table: a request and the answer expected.
type Route struct {
	Method, Path string
	// Query, when not nil, is sent with the request.
	Query  url.Values
	Status int
	Body   string
	// Allow is the Allow header expected; "" for none.
	Allow string
}

// CheckPlumbing checks what every service's mux and middleware answer at baseURL: GET /healthz is 200
// "ok", and each route, in a subtest named method+path, gets exactly its status, body and Allow header
// (for the shared fallback: 404 "Error: no endpoint /path", 405 "Error: method M not allowed on /path"
// with an Allow header), with a request id and, on failure, an "Error:" body.
func CheckPlumbing(t *testing.T, hc *http.Client, baseURL string, routes []Route) {
	t.Helper()
	r := Call(t, hc, http.MethodGet, baseURL+"/healthz", nil)
	if r.Status != http.StatusOK || r.Body != "ok" {
		t.Errorf("GET /healthz = %d %q, want 200 \"ok\"", r.Status, r.Body)
	}
	if err := ConventionError(http.MethodGet, "/healthz", r); err != nil {
		t.Error(err)
	}
	for _, rt := range routes {
		t.Run(rt.Method+rt.Path, func(t *testing.T) {
			u := baseURL + rt.Path
			if rt.Query != nil {
				u += "?" + rt.Query.Encode()
			}
			r := Call(t, hc, rt.Method, u, nil)
			if r.Status != rt.Status || r.Body != rt.Body || r.Header.Get("Allow") != rt.Allow {
				t.Errorf("%s %s = %d %q Allow %q, want %d %q Allow %q", rt.Method, rt.Path,
					r.Status, r.Body, r.Header.Get("Allow"), rt.Status, rt.Body, rt.Allow)
			}
			if err := ConventionError(rt.Method, rt.Path, r); err != nil {
				t.Error(err)
			}
		})
	}
}

// CheckEchoesRequestID sends method url with the request id header set to id and checks that the reply
// carries the same id back (and the other conventions of ConventionError).
func CheckEchoesRequestID(t testing.TB, hc *http.Client, method, url, id string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(httpapi.RequestIDHeader, id)
	r := MustDo(t, hc, req)
	if got := r.Header.Get(httpapi.RequestIDHeader); got != id {
		t.Errorf("request id not echoed: %q", got)
	}
	if err := ConventionError(method, req.URL.Path, r); err != nil {
		t.Error(err)
	}
}
