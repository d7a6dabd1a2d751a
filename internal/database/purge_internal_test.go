package database

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
)

// purgeCounter counts what the purge loop removes.
type purgeCounter struct {
	taskstore.Store
	removed atomic.Int64
}

func (p *purgeCounter) PurgeDeleted(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	n, err := p.Store.PurgeDeleted(ctx, olderThan, limit)
	p.removed.Add(int64(n))
	return n, err
}

// TestPurgeDeleted runs the loop Run starts: every round removes every tombstone old enough, a batch
// at a time, and leaves the highest id's.
func TestPurgeDeleted(t *testing.T) {
	store, err := sqlitestore.Open(t.Context(), filepath.Join(t.TempDir(), "tasks.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	const tasks = 8
	for range tasks {
		if _, err := store.Create(t.Context(), taskstore.CreateParams{}); err != nil {
			t.Fatal(err)
		}
	}
	for id := range int64(tasks) {
		if id == 3 {
			continue // kept
		}
		if err := store.Delete(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	}
	counter := &purgeCounter{Store: store}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() {
		purgeDeleted(ctx, counter, 10*time.Millisecond, 0, 2, slog.New(slog.NewTextHandler(io.Discard, nil)))
	})
	deadline := time.Now().Add(30 * time.Second)
	for counter.removed.Load() < tasks-2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	// Everything but the kept task and the highest id's tombstone, however many batches it took.
	if got := counter.removed.Load(); got != tasks-2 {
		t.Fatalf("the purge loop removed %d tombstones, want %d", got, tasks-2)
	}
	if n, err := store.PurgeDeleted(t.Context(), 0, tasks); err != nil || n != 0 {
		t.Fatalf("PurgeDeleted after the loop = %d, %v; want nothing left", n, err)
	}
	c, err := store.Counts(t.Context())
	if err != nil || c != (taskstore.Counts{Queued: 1}) {
		t.Fatalf("Counts = %+v, %v; want the one kept task", c, err)
	}
}
