package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/enginetest"
)

// distributed is the split deployment on real engines: PostgreSQL for tasks, MinIO for images and a
// three-member etcd cluster under the kv services, with several instances of every service.
type distributed struct {
	*deployment
	pg      *enginetest.Postgres
	minio   *enginetest.MinIO
	etcd    *enginetest.EtcdCluster
	feAddrs []string
}

// startDistributed starts the engines and instances of every service: kvs kv services, and so on.
func startDistributed(t *testing.T, kvs, databases, storages, masters, frontends, workers int) *distributed {
	t.Helper()
	pg := enginetest.StartPostgres(t)
	minio := enginetest.StartMinIO(t)
	etcd := enginetest.StartEtcd(t, 3)
	tasks, blobs := pg.NewDatabase(t), minio.URL(minio.NewBucket(t))

	d := newDeployment(t)
	// Short leases and pending timeouts so the claims and uploads of killed instances are recovered
	// within the test; attempts enough that a task survives the crashes.
	d.dbArgs = []string{"--lease", "3s", "--pending-timeout", "4s", "--max-attempts", "10"}
	addrs, err := allinone.FreeAddrs(kvs + frontends)
	if err != nil {
		t.Fatal(err)
	}
	kvAddrs, feAddrs := addrs[:kvs], addrs[kvs:]
	// Every service gets every kv instance and spreads its calls across them.
	d.kvAddr = strings.Join(kvAddrs, ",")
	dd := &distributed{deployment: d, pg: pg, minio: minio, etcd: etcd, feAddrs: feAddrs}
	for i, a := range kvAddrs {
		d.mustStart(fmt.Sprintf("kv-%d", i+1), "kv", "--addr", a, "--kv", etcd.URL())
	}
	for i := range databases {
		d.mustStart(fmt.Sprintf("database-%d", i+1), append([]string{"database", "--addr", "127.0.0.1:0", "--kv", d.kvAddr,
			"--tasks", tasks, "--pool", "4"}, d.dbArgs...)...)
	}
	for i := range storages {
		d.mustStart(fmt.Sprintf("storage-%d", i+1), "storage", "--addr", "127.0.0.1:0", "--kv", d.kvAddr, "--blobs", blobs)
	}
	for i := range masters {
		d.mustStart(fmt.Sprintf("master-%d", i+1), "master", "--addr", "127.0.0.1:0", "--kv", d.kvAddr)
	}
	d.waitReady()
	for i := range workers {
		d.startWorker(fmt.Sprintf("worker-%d", i+1), "--heartbeat", "500ms", "--drain", "2s", "--wait", "2s")
	}
	for i, a := range feAddrs {
		// They share the public id secret through the kv store: an id from one works at the other.
		d.mustStart(fmt.Sprintf("frontend-%d", i+1), "frontend", "--addr", a, "--kv", d.kvAddr, "--upload-rate", "0")
	}
	return dd
}

// TestDistributedDeployment runs the split deployment on PostgreSQL, MinIO and a three-member etcd
// cluster, with two instances each of kv, database, storage, master and frontend and four workers,
// submits 1,000 images through both frontends and the masters, kills one instance of every kind and
// one etcd member with SIGKILL midway, and checks that every acknowledged upload finished and is
// pixel-correct, with its result written by the claim that finished it.
func TestDistributedDeployment(t *testing.T) {
	if testing.Short() {
		t.Skip("distributed deployment test is not run with -short")
	}
	const images = 1000
	dd := startDistributed(t, 2, 2, 2, 2, 2, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, a := range dd.feAddrs {
		waitHealthy(t, ctx, dd.hc, a)
	}

	w := newWorkload(t, images)
	submitted := w.submit(t, ctx, dd.hc, dd.feAddrs, dd.master(), 8)
	waitFor(t, ctx, "a third of the images accepted", func() bool { return w.accepted() >= images/3 || isDone(submitted) })
	victims := []string{"worker-1", "master-1", "database-1", "storage-1", "kv-1", "frontend-1"}
	for _, name := range victims {
		dd.kill(name)
		time.Sleep(100 * time.Millisecond)
	}
	dd.etcd.Member(0).Kill()
	t.Logf("killed %s and etcd member 1 with %d of %d images accepted", strings.Join(victims, ", "), w.accepted(), images)
	<-submitted
	t.Logf("distributed: %d images accepted (%d through the frontends), %d refused attempts retried",
		w.accepted(), len(w.answeredPublic), w.refused.Load())
	w.verify(t, ctx, dd.hc, dd.feAddrs[1], dd.database(), dd.storage())
}
