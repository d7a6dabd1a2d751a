package database

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// Option adjusts the server NewServer builds.
type Option func(*server)

// WithMetrics records the database's metrics in reg: the tasks in each state, counted by the store at
// every scrape, the latency of every task a worker finishes, from upload to finished, and, for a store
// whose writes share transactions, how many of each.
func WithMetrics(reg *metrics.Registry) Option {
	return func(s *server) {
		s.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metrics.Namespace, Name: "task_latency_seconds",
			Help:    "Time from a task's creation (its upload) to its finish, observed when a worker finishes it.",
			Buckets: metrics.TaskBuckets,
		})
		reg.MustRegister(s.latency, &taskCounts{store: s.store, desc: prometheus.NewDesc(
			prometheus.BuildFQName(metrics.Namespace, "", "tasks"),
			"Tasks by state, as the task store counts them at the scrape: queued (claimable now or after a transient failure's wait), pending (uploads not complete), processing, finished, failed, cancelled.",
			[]string{"state"}, nil)})
		if b, ok := s.store.(taskstore.Batching); ok {
			reg.MustRegister(
				prometheus.NewCounterFunc(prometheus.CounterOpts{
					Namespace: metrics.Namespace, Subsystem: "taskstore", Name: "transactions_total",
					Help: "Write transactions of the task store's single writer since it opened (embedded SQLite only).",
				}, func() float64 { return float64(b.Batching().Transactions) }),
				prometheus.NewCounterFunc(prometheus.CounterOpts{
					Namespace: metrics.Namespace, Subsystem: "taskstore", Name: "writes_total",
					Help: "Writes run in those transactions (embedded SQLite only): writes that queue for the writer share its next transaction, so writes per transaction tells how busy it is.",
				}, func() float64 { return float64(b.Batching().Writes) }),
			)
		}
	}
}

// countsTimeout bounds the store's count at a scrape. Counts is cheap by contract: a store that takes
// longer is in trouble, and the rest of the scrape should not wait for it.
const countsTimeout = 2 * time.Second

// taskCounts reports the task store's counts by state, read when scraped: the store is the only place
// that knows them (several database services may share it), and Counts is cheap.
type taskCounts struct {
	store taskstore.Store
	desc  *prometheus.Desc
}

func (c *taskCounts) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *taskCounts) Collect(ch chan<- prometheus.Metric) {
	// A Collector gets no context: the timeout is its own.
	ctx, cancel := context.WithTimeout(context.Background(), countsTimeout)
	defer cancel()
	counts, err := c.store.Counts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, fmt.Errorf("count tasks: %w", err))
		return
	}
	for state, n := range map[string]int64{string(wire.QueuedWord): counts.Queued, "pending": counts.Pending,
		string(wire.ProcessingWord): counts.Processing, string(wire.FinishedWord): counts.Finished, string(wire.FailedWord): counts.Failed,
		string(wire.CancelledWord): counts.Cancelled} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), state)
	}
}

// observeFinished observes the latency of t, the task as the store's Finish returned it after this
// request (begun at start) finished it. A retried finish of a task that had finished before the request
// began returns the first finish's time, and is not observed a second time.
func (s *server) observeFinished(t taskstore.Task, start time.Time) {
	if s.latency == nil {
		return
	}
	// The store takes its times from this process's clock, and may keep microseconds only (rounded), so
	// a finish during this request reads back no earlier than its start's microsecond: only an older one
	// is a retry. In process a retry may come well within a millisecond of the first finish.
	if t.State != wire.Finished || t.CreatedAt.IsZero() || t.FinishedAt.Before(start.Truncate(time.Microsecond)) {
		return
	}
	s.latency.Observe(t.FinishedAt.Sub(t.CreatedAt).Seconds())
}
