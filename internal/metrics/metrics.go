// Package metrics is imgmill's Prometheus instrumentation: one registry per service, the HTTP request
// metrics every service records, and the worker's metrics.
//
// Nothing is registered globally (no prometheus.DefaultRegisterer, no promauto): several services share
// one process in `imgmill serve` and in tests, and the same metric registered twice in one registry
// would collide.
package metrics

import (
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every imgmill metric.
const Namespace = "imgmill"

// Bucket bounds, in seconds.
var (
	// HTTPBuckets span a request's duration: from a cached answer (0.5ms) to a long poll or a large
	// upload on a slow link (60s).
	HTTPBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	// TaskBuckets span a task's life from upload to finished: an idle pipeline and a small image
	// (5ms) to an hour-long backlog.
	TaskBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}
	// ProcessingBuckets span one image's processing in a worker: fetch, decode, operations, encode,
	// store.
	ProcessingBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}
)

// Registry is one service's metrics: the Go runtime and process collectors, and imgmill's own metrics,
// which all carry the service's name as their service label (several services may be scraped from
// one process with `imgmill serve`).
type Registry struct {
	gatherer *prometheus.Registry
	reg      prometheus.Registerer // adds the service label

	requests  *prometheus.CounterVec
	durations *prometheus.HistogramVec
}

// New returns the registry of the service named service, with the HTTP request metrics registered.
func New(service string) *Registry {
	gatherer := prometheus.NewRegistry()
	gatherer.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r := &Registry{
		gatherer: gatherer,
		reg:      prometheus.WrapRegistererWith(prometheus.Labels{"service": service}, gatherer),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests answered, by route (the ServeMux pattern; \"unmatched\" for none), method and status code.",
		}, []string{"route", "method", "code"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its reply, by route and method.",
			Buckets: HTTPBuckets,
		}, []string{"route", "method"}),
	}
	r.MustRegister(r.requests, r.durations)
	return r
}

// MustRegister registers imgmill collectors, adding the service label; it panics on a conflict, a
// programming error.
func (r *Registry) MustRegister(cs ...prometheus.Collector) {
	r.reg.MustRegister(cs...)
}

// Gatherer is the registry to read metrics from, the Go and process collectors included.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.gatherer }

// Handler serves the registry in the Prometheus text format (or OpenMetrics, gzip and zstd, as the
// scraper negotiates). A collector that fails is logged and left out; the other metrics are still
// served, so one slow store does not blind the whole scrape.
func (r *Registry) Handler(logger *slog.Logger) http.Handler {
	return promhttp.HandlerFor(r.gatherer, promhttp.HandlerOpts{
		ErrorLog:      errorLog{logger},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// errorLog is promhttp's Logger on slog.
type errorLog struct{ logger *slog.Logger }

func (l errorLog) Println(v ...any) {
	l.logger.Warn("metrics collection failed", "err", fmt.Sprint(v...))
}

// ObserveRequest counts one answered request (httpapi.RequestObserver). route must be a fixed string,
// the ServeMux pattern, never a raw path: ids in paths would make a series per request.
func (r *Registry) ObserveRequest(route, method string, status int, elapsed time.Duration) {
	if r == nil {
		return
	}
	method = methodLabel(method)
	r.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	r.durations.WithLabelValues(route, method).Observe(elapsed.Seconds())
}

// methodLabel keeps the method label to the standard methods: a client may send any token as its
// method, and each would become a series.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "OTHER"
}
