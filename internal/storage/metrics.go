package storage

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/wire"
)

// Option adjusts the server NewServer builds.
type Option func(*server)

// WithMetrics records the storage's metrics in reg: bytes and images stored, and bytes served, by
// state (working: uploads; finished: results).
func WithMetrics(reg *metrics.Registry) Option {
	return func(s *server) {
		m := &storageMetrics{
			bytesWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: metrics.Namespace, Subsystem: "storage", Name: "bytes_written_total",
				Help: "Image bytes stored, by state (working: uploads; finished: results); counted once durable.",
			}, []string{"state"}),
			objectsWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: metrics.Namespace, Subsystem: "storage", Name: "objects_written_total",
				Help: "Images stored, by state.",
			}, []string{"state"}),
			bytesServed: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: metrics.Namespace, Subsystem: "storage", Name: "bytes_served_total",
				Help: "Image bytes sent in replies, by state.",
			}, []string{"state"}),
		}
		// Both states exist from the start, so that rates have a zero to start from.
		for _, state := range []string{wire.WorkingImage, wire.FinishedImage} {
			m.bytesWritten.WithLabelValues(state)
			m.objectsWritten.WithLabelValues(state)
			m.bytesServed.WithLabelValues(state)
		}
		reg.MustRegister(m.bytesWritten, m.objectsWritten, m.bytesServed)
		s.metrics = m
	}
}

// storageMetrics are the storage's own metrics; a nil *storageMetrics records nothing.
type storageMetrics struct {
	bytesWritten, objectsWritten, bytesServed *prometheus.CounterVec
}

// stored counts an image of n bytes stored in state.
func (m *storageMetrics) stored(state string, n int64) {
	if m == nil {
		return
	}
	m.bytesWritten.WithLabelValues(state).Add(float64(n))
	m.objectsWritten.WithLabelValues(state).Inc()
}

// serving returns w counting the bytes of the reply as served in state.
func (m *storageMetrics) serving(w http.ResponseWriter, state string) http.ResponseWriter {
	if m == nil {
		return w
	}
	return &countingWriter{ResponseWriter: w, served: m.bytesServed.WithLabelValues(state)}
}

// countingWriter counts the body bytes written through it.
type countingWriter struct {
	http.ResponseWriter
	served prometheus.Counter
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.served.Add(float64(n))
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer (flushes, deadlines).
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
