package metrics_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRequestMetrics(t *testing.T) {
	reg := metrics.New("master")
	for range 3 {
		reg.ObserveRequest("GET /isReady", "GET", 200, 2*time.Millisecond)
	}
	reg.ObserveRequest("GET /isReady", "GET", 400, time.Millisecond)
	reg.ObserveRequest("unmatched", "BREW", 404, time.Millisecond)
	f := metricstest.Gather(t, reg.Gatherer())
	const requests, durations = "imgmill_http_requests_total", "imgmill_http_request_duration_seconds"
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{requests, []string{"service", "master", "route", "GET /isReady", "method", "GET", "code", "200"}, 3},
		{requests, []string{"route", "GET /isReady", "code", "400"}, 1},
		// Methods outside the standard ones are one label: any token can be a method.
		{requests, []string{"route", "unmatched", "method", "OTHER", "code", "404"}, 1},
		{requests, []string{"method", "BREW"}, 0},
		{durations, []string{"service", "master", "route", "GET /isReady", "method", "GET"}, 4},
	} {
		if got := f.Value(tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%v = %v, want %v (series: %v)", tt.name, tt.labels, got, tt.want, f.Labels(tt.name))
		}
	}
	if got, want := f.Sum(durations, "route", "GET /isReady"), 0.007; got < want-1e-9 || got > want+1e-9 {
		t.Errorf("duration sum = %v, want %v", got, want)
	}
	// The Go runtime and the process are in every registry, without the service label.
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes"} {
		if !f.Has(name) {
			t.Errorf("no %s", name)
		}
	}
	if l := f.Labels("go_goroutines"); len(l) != 1 || len(l[0]) != 0 {
		t.Errorf("go_goroutines labels = %v, want none", l)
	}
}

// Every service has its own registry, so several of them, and tests, share a process without
// colliding; and a nil registry observes nothing.
func TestRegistriesAreIndependent(t *testing.T) {
	a, b := metrics.New("kv"), metrics.New("kv")
	metrics.NewWorker(a)
	metrics.NewWorker(b)
	a.ObserveRequest("GET /get", "GET", 200, time.Millisecond)
	if got := metricstest.Gather(t, b.Gatherer()).Value("imgmill_http_requests_total"); got != 0 {
		t.Errorf("b counted a's request: %v", got)
	}
	var none *metrics.Registry
	none.ObserveRequest("GET /get", "GET", 200, time.Millisecond)
}

// The handler serves the text format, and a collector that fails leaves the rest of the scrape intact.
func TestHandler(t *testing.T) {
	reg := metrics.New("database")
	reg.MustRegister(failingCollector{})
	reg.ObserveRequest("POST /newTask", "POST", 200, time.Millisecond)
	srv := httptest.NewServer(reg.Handler(servicetest.Discard))
	t.Cleanup(srv.Close)
	hc := servicetest.NewHTTPClient(t)
	f := metricstest.Scrape(t, hc, srv.URL)
	if got := f.Value("imgmill_http_requests_total", "service", "database", "route", "POST /newTask"); got != 1 {
		t.Errorf("scraped counter = %v, want 1", got)
	}
	r := servicetest.Call(t, hc, http.MethodGet, srv.URL, nil)
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	if !strings.Contains(r.Body, "# TYPE imgmill_http_request_duration_seconds histogram") {
		t.Errorf("no histogram in the scrape:\n%s", r.Body)
	}
}

// failingCollector fails every collection, as a store that is down would.
type failingCollector struct{}

var failingDesc = prometheus.NewDesc("imgmill_failing", "Always fails.", nil, nil)

func (failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- failingDesc }
func (failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(failingDesc, errors.New("store down"))
}

func TestWorkerStates(t *testing.T) {
	reg := metrics.New("worker")
	w := metrics.NewWorker(reg)
	loops := func() (busy, idle float64) {
		f := metricstest.Gather(t, reg.Gatherer())
		return f.Value("imgmill_worker_loops", "state", "busy"), f.Value("imgmill_worker_loops", "state", "idle")
	}
	check := func(what string, wantBusy, wantIdle float64) {
		t.Helper()
		if busy, idle := loops(); busy != wantBusy || idle != wantIdle {
			t.Errorf("%s: busy %v idle %v, want %v and %v", what, busy, idle, wantBusy, wantIdle)
		}
	}
	check("before any loop", 0, 0)
	end1, end2 := w.Loop(), w.Loop()
	check("two loops", 0, 2)
	done := w.Busy()
	check("one busy", 1, 1)
	w.Processed(30*time.Millisecond, nil)
	w.Processed(10*time.Millisecond, errors.New("bad image"))
	done()
	check("done", 0, 2)
	end1()
	end2()
	check("loops ended", 0, 0)
	f := metricstest.Gather(t, reg.Gatherer())
	for _, tt := range []struct {
		name, result string
		want         float64
	}{
		{"imgmill_worker_tasks_total", "processed", 1},
		{"imgmill_worker_tasks_total", "failed", 1},
		{"imgmill_worker_processing_seconds", "processed", 1},
		{"imgmill_worker_processing_seconds", "failed", 1},
	} {
		if got := f.Value(tt.name, "service", "worker", "result", tt.result); got != tt.want {
			t.Errorf("%s{result=%q} = %v, want %v", tt.name, tt.result, got, tt.want)
		}
	}
	// A nil *Worker (no --metrics-addr) records nothing and does not fail.
	var none *metrics.Worker
	none.Loop()()
	none.Busy()()
	none.Processed(time.Second, nil)
}
