package database_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
	"github.com/imgmill/imgmill/internal/wire"
)

// leaseHop is the part of the database's API the worker's lease hop uses, which both transports have.
type leaseHop interface {
	NewTask(ctx context.Context, p client.NewTaskParams) (int64, error)
	GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error)
	FinishTask(ctx context.Context, id, token int64) error
}

// BenchmarkHopDatabaseClaimFinish is one round trip of the worker's lease hop, as the pipeline makes it
// for every image: claim a task (no wait) and finish it, on the database service over SQLite. http
// makes it over HTTP on loopback with the database client (POST /getNewTask, POST /finishTask); local
// through the service's in-process API (database.Local), as a master in the same process does. Client
// and service run in this process, so cpu-ns/op and allocs/op count both ends. Tasks are queued 500 at
// a time with the timer stopped, so the queue stays as short as in the pipeline.
func BenchmarkHopDatabaseClaimFinish(b *testing.B) {
	b.Run("http", func(b *testing.B) {
		svc := newBenchService(b)
		url := servicetest.Serve(b, svc.Handler()).URL
		benchClaimFinish(b, client.NewDatabase(servicetest.NewHTTPClient(b), client.Static(servicetest.Addr(url))))
	})
	b.Run("local", func(b *testing.B) {
		benchClaimFinish(b, newBenchService(b).Local())
	})
}

// newBenchService builds a database service, with its metrics, over a fresh SQLite store.
func newBenchService(b *testing.B) *database.Service {
	store, err := sqlitestore.Open(context.Background(), filepath.Join(b.TempDir(), "tasks.db"), sqlitestore.Options{})
	if err != nil {
		b.Fatalf("sqlitestore.Open: %v", err)
	}
	servicetest.CloseAtCleanup(b, "task store", store)
	svc, err := database.NewService(database.Config{Store: store, Policy: database.Policy{Lease: servicetest.StackLease}})
	if err != nil {
		b.Fatalf("NewService: %v", err)
	}
	return svc
}

func benchClaimFinish(b *testing.B, db leaseHop) {
	ctx := context.Background()
	queue := func() {
		var g errgroup.Group
		g.SetLimit(8)
		for range 500 {
			g.Go(func() error {
				_, err := db.NewTask(ctx, client.NewTaskParams{})
				return err
			})
		}
		if err := g.Wait(); err != nil {
			b.Fatalf("queue tasks: %v", err)
		}
	}
	left := 0
	b.ReportAllocs()
	cpu := servicetest.StartCPU()
	for b.Loop() {
		if left == 0 {
			b.StopTimer()
			cpu.Pause()
			queue()
			left = 500
			cpu.Resume()
			b.StartTimer()
		}
		task, err := db.GetNewTask(ctx, 0)
		if err != nil {
			b.Fatalf("claim: %v", err)
		}
		if err := db.FinishTask(ctx, task.ID, task.Token); err != nil {
			b.Fatalf("finish task %d: %v", task.ID, err)
		}
		left--
	}
	cpu.Report(b)
}
