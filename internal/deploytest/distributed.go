package deploytest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/enginetest"
)

// Distributed is the split deployment on real engines: PostgreSQL for tasks, MinIO for images and a
// three-member etcd cluster under the kv services, with several instances of every service.
type Distributed struct {
	*Deployment
	PG    *enginetest.Postgres
	MinIO *enginetest.MinIO
	Etcd  *enginetest.EtcdCluster
	// FEAddrs, StorageAddrs and MasterAddrs are where instance i (frontend-i+1, storage-i+1,
	// master-i+1) listens.
	FEAddrs, StorageAddrs, MasterAddrs []string
}

// Options says how many instances of each service StartDistributed runs, and with which lifecycle.
type Options struct {
	KVs, Databases, Storages, Masters, Frontends, Workers int
	// DBArgs, MasterArgs and WorkerArgs are the database's, the masters' and the workers' extra flags
	// (none: the defaults).
	DBArgs, MasterArgs, WorkerArgs []string
	// Killing puts the lifecycle of the tests that kill services first: KillingDBArgs with a
	// KillingLease scaled from how long the first kv instance took to start, and KillingWorkerArgs.
	Killing bool
}

// KillingDBArgs are the database's lifecycle flags in the tests that kill services: a crashed worker's
// task is handed out again once lease has passed without a heartbeat, rather than after the default 2
// minutes (every kill of the worker holding a task costs it an attempt; the default three attempts are
// plenty for the few kills a task meets), and an upload that a killed master left unfinished is given up
// a second after that. The lease must also outlast the restarts that a live worker's heartbeats can meet
// on their way (master, kv, database), or they cost attempts too: see KillingLease.
func KillingDBArgs(lease time.Duration) []string {
	return []string{"--lease", lease.String(), "--pending-timeout", (lease + time.Second).String()}
}

// KillingLease is the lease for KillingDBArgs on a machine where a service takes restart to start (see
// Deployment.StartKV): a few restarts in a row, and at least 3s.
func KillingLease(restart time.Duration) time.Duration {
	return max(3*time.Second, (4 * restart).Round(100*time.Millisecond))
}

// KillingWorkerArgs are the workers' lifecycle flags in the tests that kill services: a heartbeat every
// 500ms, well within any KillingLease, and short waits, so that a killed worker's replacement is at work
// soon.
func KillingWorkerArgs() []string {
	return []string{"--heartbeat", "500ms", "--drain", "2s", "--claim-wait", "2s"}
}

// StartDistributed starts the engines and the instances of every service opts asks for.
func StartDistributed(t testing.TB, opts Options) *Distributed {
	t.Helper()
	pg := enginetest.StartPostgres(t)
	minio := enginetest.StartMinIO(t)
	etcd := enginetest.StartEtcd(t, 3)
	tasks, blobs := pg.NewDatabase(t), minio.URL(minio.NewBucket(t))

	d := New(t)
	d.DBArgs = opts.DBArgs
	addrs := enginetest.FreeAddrs(t, opts.KVs+opts.Frontends+opts.Storages+opts.Masters)
	kvAddrs, addrs := addrs[:opts.KVs], addrs[opts.KVs:]
	feAddrs, addrs := addrs[:opts.Frontends], addrs[opts.Frontends:]
	storageAddrs, masterAddrs := addrs[:opts.Storages], addrs[opts.Storages:]
	// Every service gets every kv instance and spreads its calls across them.
	d.KVAddr = strings.Join(kvAddrs, ",")
	dd := &Distributed{Deployment: d, PG: pg, MinIO: minio, Etcd: etcd, FEAddrs: feAddrs,
		StorageAddrs: storageAddrs, MasterAddrs: masterAddrs}
	start := time.Now()
	for i, a := range kvAddrs {
		d.MustStart(fmt.Sprintf("kv-%d", i+1), "kv", "--addr", a, "--kv-store", etcd.URL())
	}
	workerArgs := opts.WorkerArgs
	if opts.Killing {
		d.WaitServing(kvAddrs[0])
		d.DBArgs = append(KillingDBArgs(KillingLease(time.Since(start))), d.DBArgs...)
		workerArgs = append(KillingWorkerArgs(), workerArgs...)
	}
	for i := range opts.Databases {
		d.MustStart(fmt.Sprintf("database-%d", i+1), append([]string{"database", "--addr", "127.0.0.1:0", "--kv", d.KVAddr,
			"--tasks", tasks, "--pool", "4"}, d.DBArgs...)...)
	}
	for i, a := range storageAddrs {
		d.MustStart(fmt.Sprintf("storage-%d", i+1), "storage", "--addr", a, "--kv", d.KVAddr, "--blobs", blobs)
	}
	for i, a := range masterAddrs {
		d.MustStart(fmt.Sprintf("master-%d", i+1), append([]string{"master", "--addr", a, "--kv", d.KVAddr}, opts.MasterArgs...)...)
	}
	d.WaitReady()
	for i := range opts.Workers {
		d.StartWorker(fmt.Sprintf("worker-%d", i+1), workerArgs...)
	}
	for i, a := range feAddrs {
		// They share the public id secret through the kv store: an id from one works at the other.
		d.MustStart(fmt.Sprintf("frontend-%d", i+1), "frontend", "--addr", a, "--kv", d.KVAddr, "--upload-rate", "0",
			"--data", filepath.Join(d.Dir, fmt.Sprintf("frontend-%d", i+1)))
	}
	return dd
}
