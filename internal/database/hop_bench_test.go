package database_test

import (
	"context"
	"path/filepath"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// BenchmarkHopDatabaseClaimFinish is one round trip of the worker's lease hop over HTTP on loopback,
// as the pipeline makes it for every image: the database client claims a task (POST /getNewTask, no
// wait) and finishes it (POST /finishTask) on the database service over SQLite. Client and service run
// in this process, so cpu-ns/op and allocs/op count both ends. Tasks are queued 500 at a time with the
// timer stopped, so the queue stays as short as in the pipeline.
func BenchmarkHopDatabaseClaimFinish(b *testing.B) {
	url, _ := servicetest.ServeDatabase(b, filepath.Join(b.TempDir(), "tasks.db"), database.Policy{Lease: servicetest.StackLease})
	db := client.NewDatabase(servicetest.NewHTTPClient(b), client.Static(servicetest.Addr(url)))
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
