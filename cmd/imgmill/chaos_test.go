package main

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
)

// TestChaos runs the split deployment as real processes, submits 500 images through the frontend and the
// master while every service in turn is killed with SIGKILL and restarted, and then checks that every
// upload that was answered with an id is finished and pixel-correct, that no task is stuck, and that
// every stored result was written by the claim that finished the task (no stale worker overwrote it).
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test is not run with -short")
	}
	const images = 500
	d := deploytest.New(t)
	// Short leases and pending timeouts so crashed claims and uploads are recovered within the test; the
	// default three attempts, which only crashes of the worker holding a task use.
	d.DBArgs = deploytest.KillingDBArgs
	d.StartBackends()
	d.StartWorker("worker-1", deploytest.KillingWorkerArgs...)
	d.StartWorker("worker-2", deploytest.KillingWorkerArgs...)
	d.StartFrontend()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	deploytest.WaitHealthy(t, ctx, d.HC, d.FEAddr)

	w := deploytest.NewWorkload(t, images)
	submitted := w.Submit(t, ctx, d.HC, []string{d.FEAddr}, d.Master(), 8)

	// Kill every service in turn, at least one full round and until every image was accepted.
	victims := []string{"worker-1", "master", "database", "storage", "kv", "frontend", "worker-2"}
	kills := 0
	rng := rand.New(rand.NewPCG(1, 2))
chaos:
	for round := 0; ; round++ {
		for _, name := range victims {
			if round > 0 && deploytest.IsDone(submitted) {
				break chaos
			}
			time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
			d.Kill(name)
			kills++
			time.Sleep(time.Duration(50+rng.IntN(250)) * time.Millisecond)
			if err := d.Restart(name); err != nil {
				t.Fatalf("restart %s: %v", name, err)
			}
		}
	}
	<-submitted
	t.Logf("chaos: %s; %d kills", w.Summary(), kills)
	w.Verify(t, ctx, d.HC, d.FEAddr, d.Database(), d.Storage())
}
