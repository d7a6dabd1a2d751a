package httpapi_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// observation is one call of a RequestObserver.
type observation struct {
	route, method string
	status        int
}

type recordingObserver struct {
	mu   sync.Mutex
	seen []observation
}

func (o *recordingObserver) ObserveRequest(route, method string, status int, elapsed time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if elapsed < 0 {
		panic("negative duration")
	}
	o.seen = append(o.seen, observation{route, method, status})
}

func (o *recordingObserver) take() []observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	seen := o.seen
	o.seen = nil
	return seen
}

// The observer is told each request's route as the ServeMux pattern that matched it, never the raw
// path, and one fixed route for whatever matched no route.
func TestObserverSeesRoutePatterns(t *testing.T) {
	mux := httpapi.NewMux()
	mux.Handle("GET /healthz", httpapi.Livez())
	mux.Handle("GET /items/{id}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		httpapi.WriteText(w, http.StatusOK, r.PathValue("id"))
		return nil
	}))
	mux.Handle("POST /fail", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return httpapi.Errorf(http.StatusConflict, "no")
	}))
	mux.HandleFunc("GET /panic", func(w http.ResponseWriter, r *http.Request) { panic("boom") })
	// A second catch-all, like the frontend's JSON API fallback, is no route either.
	mux.Handle("/api/", httpapi.JSONHandlerFunc(httpapi.Unmatched(mux, "/", "/api/")))
	// Wrapped the way service.Run wraps it: a token in front, a plain mux around.
	outer := http.NewServeMux()
	outer.Handle("GET /outer", httpapi.Livez())
	outer.Handle("/", mux)
	obs := &recordingObserver{}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(httpapi.RequireToken(testToken, outer), servicetest.Discard, httpapi.WithObserver(obs))
	srv.Start()
	t.Cleanup(srv.Close)
	hc := httpapi.NewClient(httpapi.WithToken(testToken))
	t.Cleanup(hc.CloseIdleConnections)
	plain := servicetest.NewHTTPClient(t)

	tests := []struct {
		client       *http.Client
		method, path string
		want         observation
	}{
		{hc, "GET", "/items/42", observation{"GET /items/{id}", "GET", 200}},
		{hc, "GET", "/items/43?x=1", observation{"GET /items/{id}", "GET", 200}},
		{hc, "HEAD", "/items/44", observation{"GET /items/{id}", "HEAD", 200}},
		{hc, "POST", "/fail", observation{"POST /fail", "POST", 409}},
		{hc, "GET", "/panic", observation{"GET /panic", "GET", 500}},
		{hc, "GET", "/outer", observation{"GET /outer", "GET", 200}},
		{hc, "GET", "/healthz", observation{"GET /healthz", "GET", 200}},
		{hc, "GET", "/no/such/path/17", observation{httpapi.UnmatchedRoute, "GET", 404}},
		{hc, "DELETE", "/items/42", observation{httpapi.UnmatchedRoute, "DELETE", 405}},
		{hc, "GET", "/api/nope", observation{httpapi.UnmatchedRoute, "GET", 404}},
		{hc, "PROPFIND", "/items/1", observation{httpapi.UnmatchedRoute, "PROPFIND", 405}},
		// Refused before any routing.
		{plain, "GET", "/items/42", observation{httpapi.UnmatchedRoute, "GET", 401}},
	}
	for _, tt := range tests {
		r := servicetest.Call(t, tt.client, tt.method, srv.URL+tt.path, nil)
		if r.Status != tt.want.status {
			t.Errorf("%s %s = %d %q, want %d", tt.method, tt.path, r.Status, r.Body, tt.want.status)
		}
		// The observer runs after the reply is written: wait for it.
		var seen []observation
		servicetest.PollFor(5*time.Second, func() bool {
			seen = append(seen, obs.take()...)
			return len(seen) > 0
		})
		if !slices.Equal(seen, []observation{tt.want}) {
			t.Errorf("%s %s: observed %+v, want %+v", tt.method, tt.path, seen, tt.want)
		}
	}
}

// Scrapes are logged at debug level like liveness probes: they come every few seconds.
func TestMetricsScrapesLoggedAtDebug(t *testing.T) {
	var log bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &log}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	mux := httpapi.NewMux()
	mux.Handle("GET /metrics", httpapi.Livez())
	mux.Handle("GET /work", httpapi.Livez())
	srv, hc := newServer(t, mux, logger)
	servicetest.Call(t, hc, http.MethodGet, srv.URL+"/metrics", nil)
	servicetest.Call(t, hc, http.MethodGet, srv.URL+"/work", nil)
	srv.Close() // the access log lines are written by now
	mu.Lock()
	defer mu.Unlock()
	if out := log.String(); strings.Contains(out, "path=/metrics") || !strings.Contains(out, "path=/work") {
		t.Errorf("info log should have /work and not /metrics:\n%s", out)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
