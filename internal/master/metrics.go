package master

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/metrics"
)

// Metrics are the master's counts of the data lifecycle: tasks removed on request and by retention,
// cancelled, and uploads refused for a quota. A nil *Metrics records nothing.
type Metrics struct {
	deleted, expired, cancelled prometheus.Counter
	quotaRefusals               *prometheus.CounterVec
}

// NewMetrics registers the master's lifecycle metrics in reg.
func NewMetrics(reg *metrics.Registry) *Metrics {
	m := &Metrics{
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "master", Name: "tasks_deleted_total",
			Help: "Tasks deleted on request (DELETE /task), images and record, through this master.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "master", Name: "tasks_expired_total",
			Help: "Tasks removed by this master's sweeper because their retention ran out.",
		}),
		cancelled: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "master", Name: "tasks_cancelled_total",
			Help: "Tasks cancelled on request (POST /cancel) through this master, repeats not counted.",
		}),
		quotaRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "master", Name: "quota_refusals_total",
			Help: "Uploads refused for their owner's quota, by quota (tasks: 429; bytes: 507).",
		}, []string{"quota"}),
	}
	// Both quotas exist from the start, so that rates have a zero to start from.
	m.quotaRefusals.WithLabelValues("tasks")
	m.quotaRefusals.WithLabelValues("bytes")
	reg.MustRegister(m.deleted, m.expired, m.cancelled, m.quotaRefusals)
	return m
}

func (m *Metrics) countDeleted() {
	if m != nil {
		m.deleted.Inc()
	}
}

func (m *Metrics) countExpired() {
	if m != nil {
		m.expired.Inc()
	}
}

func (m *Metrics) countCancelled() {
	if m != nil {
		m.cancelled.Inc()
	}
}

// countQuotaRefusal counts an upload refused for the quota named (tasks or bytes).
func (m *Metrics) countQuotaRefusal(quota string) {
	if m != nil {
		m.quotaRefusals.WithLabelValues(quota).Inc()
	}
}
