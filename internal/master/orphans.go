package master

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/consistency"
	"github.com/imgmill/imgmill/internal/metrics"
)

// DefaultOrphanSweepEvery is how often the master removes the images no task wants (--orphan-sweep-every).
const DefaultOrphanSweepEvery = time.Hour

// OrphanSweeper removes the images that no task wants (see package consistency): those of unknown or
// deleted tasks, and the results of failed or cancelled ones, once older than the grace. It pages
// through storage's listing and asks the database about a page's tasks in one call. Several masters
// may sweep at once: each removal is an idempotent delete of an image nobody wants, so a second
// sweeper only repeats the first's deletes.
type OrphanSweeper struct {
	checker consistency.Checker
	storage Storage                // named in logs
	removed *prometheus.CounterVec // by kind; nil: not counted
	missing client.Missing
}

// NewOrphanSweeper returns a sweeper of the images in storage that db has no use for, leaving alone
// those written less than grace ago (0: consistency.DefaultGrace). reg, when not nil, gets its counter.
func NewOrphanSweeper(db Database, storage Storage, grace time.Duration, reg *metrics.Registry) *OrphanSweeper {
	w := &OrphanSweeper{checker: consistency.Checker{DB: db, Storage: storage, Grace: grace}, storage: storage}
	if reg != nil {
		w.removed = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "master", Name: "orphans_removed_total",
			Help: "Images the orphan sweep removed, by kind: orphan (its task is unknown or deleted) or stray_result (the result of a failed or cancelled task).",
		}, []string{"kind"})
		reg.MustRegister(w.removed)
		// Both series exist from the start, so that a rate over them is defined before the first removal.
		w.removed.WithLabelValues("orphan")
		w.removed.WithLabelValues("stray_result")
	}
	return w
}

// Sweep walks every image once, removes the orphans and stray results, and returns how many it removed.
// It stops at the first failure (storage or the database away); the next sweep starts over.
func (w *OrphanSweeper) Sweep(ctx context.Context) (int, error) {
	removed := 0
	err := w.checker.ScanImages(ctx, consistency.RemoveOrphans, func(im consistency.Image) {
		if !im.Removed {
			return
		}
		removed++
		if w.removed != nil {
			kind := "orphan"
			if im.Kind == consistency.StrayResult {
				kind = "stray_result"
			}
			w.removed.WithLabelValues(kind).Inc()
		}
	})
	if err != nil {
		return removed, fmt.Errorf("sweep orphaned images: %w", err)
	}
	return removed, nil
}

// Run sweeps every interval until ctx ends.
func (w *OrphanSweeper) Run(ctx context.Context, every time.Duration, logger *slog.Logger) {
	for backoff.Sleep(ctx, every) {
		n, err := w.Sweep(ctx)
		if client.IsNoEndpoint(err) {
			// The reference design's storage lists nothing and removes nothing: there is nothing to sweep.
			addr, aerr := w.storage.Addr(ctx)
			if aerr != nil {
				addr = "unknown"
			}
			w.missing.Note(ctx, logger, "storage", addr, "GET /list", "orphaned images are not swept")
			continue
		}
		if err != nil && ctx.Err() == nil {
			logger.WarnContext(ctx, "sweeping orphaned images failed", "err", err, "removed", n)
		} else if n > 0 {
			logger.InfoContext(ctx, "removed orphaned images", "count", n)
		}
	}
}
