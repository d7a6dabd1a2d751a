package storage

import (
	"context"
	"io"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/wire"
)

// Option adjusts the server NewServer builds.
type Option func(*server)

// WithMinFree refuses uploads that would leave less than m free on the blob store's file system (see
// MinFree). Stores without one (blobstore.FreeSpacer) are not checked.
func WithMinFree(m MinFree) Option {
	return func(s *server) { s.space = newSpaceGuard(s.blobs, m) }
}

// WithMetrics records the storage's metrics in reg: bytes and images stored, and bytes served, by
// state (working: uploads; finished: results); uploads refused for space; and, where the blob store can
// tell, what it holds (blobstore.Inventory) and its file system's free space with the floor kept
// (blobstore.FreeSpacer, and WithMinFree).
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
			spaceRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: metrics.Namespace, Subsystem: "storage", Name: "space_refusals_total",
				Help: "Images refused (507) because storing them would leave less free space than --min-free (half of it for results), by state.",
			}, []string{"state"}),
			reg: reg,
		}
		// Both states exist from the start, so that rates have a zero to start from.
		for _, state := range []string{wire.WorkingImage, wire.FinishedImage} {
			m.bytesWritten.WithLabelValues(state)
			m.objectsWritten.WithLabelValues(state)
			m.bytesServed.WithLabelValues(state)
			m.spaceRefusals.WithLabelValues(state)
		}
		reg.MustRegister(m.bytesWritten, m.objectsWritten, m.bytesServed, m.spaceRefusals)
		s.metrics = m
	}
}

// storageMetrics are the storage's own metrics; a nil *storageMetrics records nothing.
type storageMetrics struct {
	bytesWritten, objectsWritten, bytesServed, spaceRefusals *prometheus.CounterVec
	reg                                                      *metrics.Registry
}

// watch adds the gauges of what blobs can tell: what it holds by state, and the free space of its file
// system with the floor space keeps (none without a guard). They are read when scraped.
func (m *storageMetrics) watch(blobs blobstore.Store, space *spaceGuard) {
	if m == nil {
		return
	}
	if inv, ok := blobs.(blobstore.Inventory); ok {
		m.reg.MustRegister(&inventoryCollector{inv: inv,
			bytes: prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, "storage", "stored_bytes"),
				"Image bytes held now, by state, counted at start and kept by every write and delete (file store only).", []string{"state"}, nil),
			objects: prometheus.NewDesc(prometheus.BuildFQName(metrics.Namespace, "storage", "stored_objects"),
				"Images held now, by state (file store only).", []string{"state"}, nil),
		})
	}
	if c, ok := blobs.(blobstore.Compacting); ok {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: metrics.Namespace, Subsystem: "storage", Name: "segment_bytes",
				Help: "Bytes of the segment files that hold the small images (file store only); what is not live waits for a compaction.",
			}, func() float64 { return float64(c.Compaction().Bytes) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Namespace: metrics.Namespace, Subsystem: "storage", Name: "segment_live_bytes",
				Help: "Bytes of the segment files' records still served (file store only).",
			}, func() float64 { return float64(c.Compaction().LiveBytes) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: metrics.Namespace, Subsystem: "storage", Name: "compactions_total",
				Help: "Compactions that removed segment files since the storage started (file store only).",
			}, func() float64 { return float64(c.Compaction().Rounds) }),
		)
	}
	if space == nil {
		return
	}
	// The free space of the guard's last measure (at most a second old), measured now when there is none.
	freeBytes := func() (free int64, size uint64) {
		free, size, err := space.measure(context.Background())
		if err != nil {
			return -1, 0
		}
		return free, size
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metrics.Namespace, Subsystem: "storage", Name: "free_bytes",
			Help: "Bytes still free for images on the blob store's file system (-1: it cannot be asked).",
		}, func() float64 { free, _ := freeBytes(); return float64(free) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: metrics.Namespace, Subsystem: "storage", Name: "min_free_bytes",
			Help: "The free bytes --min-free keeps: uploads that would leave less are refused (results: below half of it).",
		}, func() float64 { _, size := freeBytes(); return float64(space.floor(wire.WorkingImage, size)) }),
	)
}

// refusedForSpace counts an image of state refused for space.
func (m *storageMetrics) refusedForSpace(state string) {
	if m == nil {
		return
	}
	m.spaceRefusals.WithLabelValues(state).Inc()
}

// inventoryCollector reports what the store holds by state when scraped.
type inventoryCollector struct {
	inv            blobstore.Inventory
	bytes, objects *prometheus.Desc
}

func (c *inventoryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.objects
}

func (c *inventoryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, state := range []string{wire.WorkingImage, wire.FinishedImage} {
		u := c.inv.Usage(state)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(u.Bytes), state)
		ch <- prometheus.MustNewConstMetric(c.objects, prometheus.GaugeValue, float64(u.Objects), state)
	}
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

// reading returns r counting the bytes read from it as served in state: an image read in this process.
func (m *storageMetrics) reading(r io.ReadCloser, state string) io.ReadCloser {
	if m == nil {
		return r
	}
	return &countingReadCloser{ReadCloser: r, served: m.bytesServed.WithLabelValues(state)}
}

type countingReadCloser struct {
	io.ReadCloser
	served prometheus.Counter
}

func (c *countingReadCloser) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.served.Add(float64(n))
	return n, err
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
