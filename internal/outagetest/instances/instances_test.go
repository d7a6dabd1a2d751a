package instances

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/outagetest"
)

func TestMain(m *testing.M) { deploytest.Main(m) }

// TestDistributedDeployment runs the split deployment on PostgreSQL, MinIO and a three-member etcd
// cluster, with two instances each of kv, database, storage, master and frontend and four workers,
// submits 1,000 images through both frontends and the masters, kills one instance of every kind and
// one etcd member with SIGKILL midway, and checks that every acknowledged upload finished and is
// pixel-correct, with its result written by the claim that finished it. Its deadline is scaled from the
// deployment's pace, measured first.
func TestDistributedDeployment(t *testing.T) {
	if testing.Short() {
		t.Skip("distributed deployment test is not run with -short")
	}
	const images = 1000
	dd := deploytest.StartDistributed(t, deploytest.Options{KVs: 2, Databases: 2, Storages: 2, Masters: 2, Frontends: 2, Workers: 4,
		Killing: true})
	// The frontends first: they refuse to start where tasks exist that they made no secret for.
	dd.WaitServing(dd.FEAddrs...)
	pace := deploytest.MeasurePace(t, dd.Master())
	ctx, cancel := deploytest.Within(t, pace.Allow(10*images, 10*time.Minute))
	defer cancel()

	w := deploytest.NewWorkload(t, images)
	submitted := w.Submit(t, ctx, dd.HC, dd.FEAddrs, dd.Master(), 8)
	deploytest.WaitFor(t, ctx, "a third of the images accepted", func() bool { return w.Accepted() >= images/3 || deploytest.IsDone(submitted) })
	victims := []string{"worker-1", "master-1", "database-1", "storage-1", "kv-1", "frontend-1"}
	for _, name := range victims {
		dd.Kill(name)
		time.Sleep(100 * time.Millisecond)
	}
	dd.Etcd.Member(0).Kill()
	t.Logf("killed %s and etcd member 1 with %d of %d images accepted", strings.Join(victims, ", "), w.Accepted(), images)
	<-submitted
	t.Logf("distributed: %s", w.Summary())
	w.Verify(t, ctx, dd.HC, dd.FEAddrs[1], dd.Database(), dd.Storage())
}

// TestInstancesKilled: on PostgreSQL, MinIO and a three-member etcd, with the default lifecycle, two
// instances of storage and master; storage-1 and master-1 are killed (SIGKILL) under a load sent to the
// surviving master and to the frontend: an upload begun after the kills must never be refused, whichever
// instance it first meets (a connection that could not be made is retried on another instance, and the
// dead ones are avoided at once). Its deadline is scaled from the deployment's pace, measured first.
func TestInstancesKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("outage tests are not run with -short")
	}
	dd := deploytest.StartDistributed(t, deploytest.Options{KVs: 1, Databases: 1, Storages: 2, Masters: 2, Frontends: 1, Workers: 2})
	dd.WaitServing(dd.FEAddrs...)
	pace := deploytest.MeasurePace(t, dd.Master())
	ctx, cancel := deploytest.Within(t, pace.Allow(2000, 5*time.Minute))
	defer cancel()
	l := outagetest.NewLoad(t, dd.HC, []outagetest.Target{{Frontend: true, Addr: dd.FEAddrs[0]}, {Addr: dd.MasterAddrs[1]}}, 4000, 200*time.Millisecond)
	stop := make(chan struct{})
	done := l.Start(ctx, 4, stop)
	deploytest.WaitFor(t, ctx, "uploads accepted before the kills", func() bool { return len(l.AcceptedTimes()) >= 20 })
	dd.Kill("storage-1")
	dd.Kill("master-1")
	// Kill returns once the process is gone: an upload begun before then may have met one still dying
	// (in flight at the kills); one begun after meets only dead instances and live ones.
	killed := time.Now()
	// Long enough for the dead instances' registrations to lapse (15s), and for calls to meet them first.
	backoff.Sleep(ctx, 20*time.Second)
	close(stop)
	<-done
	after := l.AcceptedBetween(killed, time.Now())
	l.Workload().VerifyAnswered(t, ctx, dd.HC, dd.FEAddrs[0], dd.Database(), dd.Storage())
	answers := l.Answers()
	t.Logf("OUTAGE storage-1 and master-1 killed: %d uploads accepted after the kills; clients saw: %s", after, outagetest.Summary(answers))
	if after == 0 {
		t.Error("no upload accepted after the kills")
	}
	for _, a := range answers {
		switch {
		case a.At.After(killed):
			t.Errorf("an upload begun %v after the kills got %d %q; want none refused", a.At.Sub(killed).Round(time.Millisecond), a.Status, a.Msg)
		case a.Status != http.StatusServiceUnavailable || !a.RetryAfter:
			// In flight through a dead instance when it died: told to retry.
			t.Errorf("an upload in flight at the kills got %d (Retry-After: %v) %q; want 503 with Retry-After", a.Status, a.RetryAfter, a.Msg)
		}
	}
}
