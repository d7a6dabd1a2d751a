package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/fault"
)

// Worker states and task results, as label values.
const (
	StateBusy       = "busy"
	StateIdle       = "idle"
	ResultProcessed = "processed"
	ResultFailed    = "failed"
	ResultTransient = "transient"
)

// Worker is a worker process's metrics: how many of its loops are busy with a task or idle (waiting
// for one), how many tasks they processed or failed, and how long processing took. A nil *Worker
// records nothing, so worker code calls it unconditionally.
type Worker struct {
	loops      *prometheus.GaugeVec
	tasks      *prometheus.CounterVec
	processing *prometheus.HistogramVec
}

// NewWorker registers the worker metrics in r.
func NewWorker(r *Registry) *Worker {
	w := &Worker{
		loops: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "worker", Name: "loops",
			Help: "Worker loops by state: busy with a task, or idle waiting for one.",
		}, []string{"state"}),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "worker", Name: "tasks_total",
			Help: "Tasks a worker worked on, by result: processed (result stored), transient (storage or another peer away or full for longer than the worker waits: handed back for later), or failed (bad input, a peer's error, or cut short by a lost lease or shutdown).",
		}, []string{"result"}),
		processing: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "worker", Name: "processing_seconds",
			Help:    "Time a worker spent processing one task (fetch, decode, operations, encode, store), by result.",
			Buckets: ProcessingBuckets,
		}, []string{"result"}),
	}
	// Every series exists from the start, so that rates and ratios have a zero to start from.
	for _, s := range []string{StateBusy, StateIdle} {
		w.loops.WithLabelValues(s)
	}
	for _, res := range []string{ResultProcessed, ResultTransient, ResultFailed} {
		w.tasks.WithLabelValues(res)
		w.processing.WithLabelValues(res)
	}
	r.MustRegister(w.loops, w.tasks, w.processing)
	return w
}

// Loop counts a running worker loop as idle; the loop calls the returned function when it ends.
func (w *Worker) Loop() (ended func()) {
	if w == nil {
		return func() {}
	}
	idle := w.loops.WithLabelValues(StateIdle)
	idle.Inc()
	return idle.Dec
}

// Busy moves a loop from idle to busy while it works on a task; it calls the returned function when it
// is done with the task (its outcome reported), which makes it idle again.
func (w *Worker) Busy() (done func()) {
	if w == nil {
		return func() {}
	}
	busy, idle := w.loops.WithLabelValues(StateBusy), w.loops.WithLabelValues(StateIdle)
	idle.Dec()
	busy.Inc()
	return func() {
		busy.Dec()
		idle.Inc()
	}
}

// Processed records one task's processing: how long it took, and whether it failed (err != nil), for
// a transient reason or not.
func (w *Worker) Processed(elapsed time.Duration, err error) {
	if w == nil {
		return
	}
	result := ResultProcessed
	switch {
	case fault.IsTransient(err):
		result = ResultTransient
	case err != nil:
		result = ResultFailed
	}
	w.tasks.WithLabelValues(result).Inc()
	w.processing.WithLabelValues(result).Observe(elapsed.Seconds())
}
