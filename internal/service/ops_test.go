package service_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/servicetest"
)

const opsToken = "ops-t0ken-for-the-test-0123456789abc"

// tokenClient returns a client that sends token.
func tokenClient(t *testing.T, token string) *http.Client {
	t.Helper()
	hc := httpapi.NewClient(httpapi.WithToken(token))
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// GET /metrics counts every request by its route pattern, method and status.
func TestMetricsCountRequests(t *testing.T) {
	addr := startSpec(t, service.Spec{Addr: "127.0.0.1:0", Internal: true, Metrics: metrics.New("test")})
	url := "http://" + addr
	hc := servicetest.NewHTTPClient(t)
	before := metricstest.Scrape(t, hc, url+"/metrics")
	for range 3 {
		servicetest.Call(t, hc, http.MethodGet, url+"/", nil)
	}
	servicetest.Call(t, hc, http.MethodGet, url+"/no/such/42", nil)
	servicetest.Call(t, hc, http.MethodPost, url+"/", nil)
	after := metricstest.Scrape(t, hc, url+"/metrics")
	const requests = "imgmill_http_requests_total"
	for _, tt := range []struct {
		labels []string
		grew   float64
	}{
		{[]string{"service", "test", "route", "GET /{$}", "method", "GET", "code", "200"}, 3},
		{[]string{"route", "unmatched", "method", "GET", "code", "404"}, 1},
		{[]string{"route", "unmatched", "method", "POST", "code", "405"}, 1},
		// The first scrape, counted once it was answered.
		{[]string{"route", "GET /metrics", "method", "GET", "code", "200"}, 1},
	} {
		if got := after.Value(requests, tt.labels...) - before.Value(requests, tt.labels...); got != tt.grew {
			t.Errorf("%s%v grew by %v, want %v (series: %v)", requests, tt.labels, got, tt.grew, after.Labels(requests))
		}
	}
	for _, l := range after.Labels(requests) {
		if strings.Contains(strings.Join(l, " "), "/no/such") {
			t.Errorf("a raw path became a label: %v", l)
		}
	}
	if got := after.Value("imgmill_http_request_duration_seconds", "route", "GET /{$}"); got != 3 {
		t.Errorf("durations observed for GET /{$}: %v, want 3", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if !after.Has(name) {
			t.Errorf("no %s", name)
		}
	}
}

// /debug/pprof/ is served only with Pprof: 404 without.
func TestPprofSwitch(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	off := "http://" + startSpec(t, service.Spec{Addr: "127.0.0.1:0", Internal: true, Metrics: metrics.New("off")})
	on := "http://" + startSpec(t, service.Spec{Addr: "127.0.0.1:0", Internal: true, Pprof: true})
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap"} {
		if r := servicetest.Call(t, hc, http.MethodGet, off+path, nil); r.Status != http.StatusNotFound {
			t.Errorf("pprof off: GET %s = %d, want 404", path, r.Status)
		}
		if r := servicetest.Call(t, hc, http.MethodGet, on+path+"?debug=1", nil); r.Status != http.StatusOK {
			t.Errorf("pprof on: GET %s = %d %q, want 200", path, r.Status, r.Body)
		}
	}
	if r := servicetest.Call(t, hc, http.MethodGet, on+"/debug/pprof/goroutine?debug=1", nil); !strings.Contains(r.Body, "goroutine") {
		t.Errorf("goroutine profile: %d %.200q", r.Status, r.Body)
	}
	// Without Metrics there is no /metrics either.
	if r := servicetest.Call(t, hc, http.MethodGet, on+"/metrics", nil); r.Status != http.StatusNotFound {
		t.Errorf("no registry: GET /metrics = %d, want 404", r.Status)
	}
}

// With a token, /metrics and /debug/pprof/ need it like everything else.
func TestOpsBehindToken(t *testing.T) {
	const token = "t0ken-for-the-ops-test-0123456789abc"
	url := "http://" + startSpec(t, service.Spec{Addr: "127.0.0.1:0", Internal: true, Token: token,
		Metrics: metrics.New("test"), Pprof: true})
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/cmdline"} {
		for name, hc := range map[string]*http.Client{"no token": servicetest.NewHTTPClient(t), "wrong token": tokenClient(t, "not-"+token)} {
			if r := servicetest.Call(t, hc, http.MethodGet, url+path, nil); r.Status != http.StatusUnauthorized {
				t.Errorf("%s: GET %s = %d, want 401", name, path, r.Status)
			}
		}
		if r := servicetest.Call(t, tokenClient(t, token), http.MethodGet, url+path, nil); r.Status != http.StatusOK {
			t.Errorf("with the token: GET %s = %d %q, want 200", path, r.Status, r.Body)
		}
	}
	f := metricstest.Scrape(t, tokenClient(t, token), url+"/metrics")
	if got := f.Value("imgmill_http_requests_total", "route", "unmatched", "code", "401"); got < 2 {
		t.Errorf("refusals counted: %v, want at least 2", got)
	}
}

// On a public service (the frontend), whose routes are open to anyone, the ops endpoints are served only
// with their own token, and need it.
func TestOpsOnPublicService(t *testing.T) {
	plain := servicetest.NewHTTPClient(t)
	closed := "http://" + startSpec(t, service.Spec{Addr: "127.0.0.1:0", Metrics: metrics.New("frontend"), Pprof: true})
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		for name, hc := range map[string]*http.Client{"no token": plain, "a token": tokenClient(t, opsToken)} {
			if r := servicetest.Call(t, hc, http.MethodGet, closed+path, nil); r.Status != http.StatusNotFound {
				t.Errorf("without OpsToken, %s: GET %s = %d, want 404", name, path, r.Status)
			}
		}
	}
	guarded := "http://" + startSpec(t, service.Spec{Addr: "127.0.0.1:0", Metrics: metrics.New("frontend"), Pprof: true, OpsToken: opsToken})
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		if r := servicetest.Call(t, plain, http.MethodGet, guarded+path, nil); r.Status != http.StatusUnauthorized {
			t.Errorf("without the token: GET %s = %d, want 401", path, r.Status)
		}
		if r := servicetest.Call(t, tokenClient(t, opsToken), http.MethodGet, guarded+path, nil); r.Status != http.StatusOK {
			t.Errorf("with the token: GET %s = %d, want 200", path, r.Status)
		}
	}
	// The service's own routes stay open.
	if r := servicetest.Call(t, plain, http.MethodGet, guarded+"/", nil); r.Status != http.StatusOK || r.Body != greeting {
		t.Errorf("GET / = %d %q, want 200 %q", r.Status, r.Body, greeting)
	}
}

// A service without a handler (a worker's metrics listener) answers /healthz and the ops endpoints.
func TestRunWithoutHandler(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	ks := startKV(t)
	spec := service.Spec{Addr: "127.0.0.1:0", Internal: true, Logger: discard, Metrics: metrics.New("worker"),
		RegisterAs: testKey, KV: ks.kv, RegistrationTTL: testTTL}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.Run(ctx, spec) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	url := "http://" + ks.waitRegistered(t)
	for _, probe := range []string{"/healthz", "/livez"} {
		if r := servicetest.Call(t, hc, http.MethodGet, url+probe, nil); r.Status != 200 || r.Body != "ok" {
			t.Errorf("GET %s = %d %q", probe, r.Status, r.Body)
		}
	}
	if r := servicetest.Call(t, hc, http.MethodGet, url+"/", nil); r.Status != http.StatusNotFound {
		t.Errorf("GET / = %d, want 404", r.Status)
	}
	metricstest.Scrape(t, hc, url+"/metrics")
}
