package chaos

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
)

// TestChaos runs the split deployment as real processes, submits 500 images through the frontend and the
// master while every service in turn is killed with SIGKILL and restarted, and then checks that every
// upload that was answered with an id is finished and pixel-correct, that no task is stuck, and that
// every stored result was written by the claim that finished the task (no stale worker overwrote it).
//
// It judges what was lost, not how fast, so that a busy machine makes it slower but not failing: a
// service is killed each time a few more images were accepted (as many kills for the images on a busy
// machine as on an idle one), the lease is scaled from how long a service took to start, and the
// deadline from the deployment's pace, both measured first.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test is not run with -short")
	}
	const (
		images = 500
		// acceptedPerKill makes two full rounds of kills while the images are accepted.
		acceptedPerKill = 35
	)
	d := deploytest.New(t)
	restart := d.StartKV()
	// Short leases and pending timeouts so crashed claims and uploads are recovered within the test,
	// long enough that restarts of the services a heartbeat passes through cost no attempt; the default
	// three attempts, which only crashes of the worker holding a task use.
	lease := deploytest.KillingLease(restart)
	d.DBArgs = deploytest.KillingDBArgs(lease)
	d.StartBackends()
	d.StartWorker("worker-1", deploytest.KillingWorkerArgs()...)
	d.StartWorker("worker-2", deploytest.KillingWorkerArgs()...)
	d.StartFrontend()
	// The frontend first: it refuses to start where tasks exist that it made no secret for.
	d.WaitServing(d.FEAddr)
	pace := deploytest.MeasurePace(t, d.Master())
	ctx, cancel := deploytest.Within(t, pace.Allow(20*images, 8*time.Minute))
	defer cancel()
	t.Logf("kv started in %v: lease %v", restart.Round(time.Millisecond), lease)

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
			for w.Accepted() < (kills+1)*acceptedPerKill && !deploytest.IsDone(submitted) {
				time.Sleep(20 * time.Millisecond)
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
