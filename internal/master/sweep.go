package master

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
)

// DefaultSweepEvery is how often the master sweeps the tasks past their retention.
const DefaultSweepEvery = time.Minute

// sweepBatch is how many expired tasks one sweep asks the database for at a time: small, so that each
// query is short, and so that a sweeper that dies leaves little for the hold to delay.
const sweepBatch = 100

// sweepParallel is how many tasks of a batch a sweep removes at once. Each removal waits for two
// durable writes (the images' directory, the database's tombstone), which the stores share between
// concurrent callers (group commit): one at a time, a sweep removes fewer tasks per second than a busy
// deployment finishes, and the retention would never catch up.
const sweepParallel = 8

// Sweeper removes the tasks whose retention ran out: the database (which knows the retention) hands out
// batches of them, each held for one sweeper, so several masters share the work without doubling it;
// each task is removed as DELETE /task removes it, images first, then the record.
type Sweeper struct {
	db      Database
	storage Storage
	missing client.Missing
	metrics *Metrics // nil: none
}

// NewSweeper returns a sweeper that removes expired tasks through db and storage.
func NewSweeper(db Database, storage Storage) *Sweeper {
	return &Sweeper{db: db, storage: storage}
}

// WithMetrics counts the tasks w removes in m, and returns w.
func (w *Sweeper) WithMetrics(m *Metrics) *Sweeper {
	w.metrics = m
	return w
}

// Sweep removes expired tasks until the database has none left to hand out, and returns how many it
// removed. It removes up to sweepParallel tasks of a batch at once and stops at the first task it
// cannot remove (storage or the database away): the tasks of that batch are handed out again once
// their hold lapses.
func (w *Sweeper) Sweep(ctx context.Context) (int, error) {
	var removed atomic.Int64
	for {
		ids, err := w.db.ClaimExpired(ctx, sweepBatch)
		if client.IsNoEndpoint(err) {
			return 0, nil // a reference database keeps every task for ever
		}
		if err != nil {
			return int(removed.Load()), fmt.Errorf("ask for expired tasks: %w", err)
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(sweepParallel)
		for _, id := range ids {
			g.Go(func() error {
				if err := removeTask(gctx, w.db, w.storage, &w.missing, id); err != nil {
					return fmt.Errorf("remove expired task %d: %w", id, err)
				}
				removed.Add(1)
				w.metrics.countExpired()
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return int(removed.Load()), err
		}
		if len(ids) < sweepBatch {
			return int(removed.Load()), nil
		}
	}
}

// Run sweeps every interval until ctx ends.
func (w *Sweeper) Run(ctx context.Context, every time.Duration, logger *slog.Logger) {
	for backoff.Sleep(ctx, every) {
		n, err := w.Sweep(ctx)
		if err != nil && ctx.Err() == nil {
			logger.WarnContext(ctx, "sweeping expired tasks failed", "err", err, "removed", n)
		} else if n > 0 {
			logger.InfoContext(ctx, "removed expired tasks", "count", n)
		}
	}
}
