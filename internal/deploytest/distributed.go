package deploytest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/allinone"
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
	// DBArgs and WorkerArgs are the database's and the workers' lifecycle flags (none: the defaults).
	DBArgs, WorkerArgs []string
}

// KillingDBArgs and KillingWorkerArgs are the lifecycle flags of the tests that kill workers: a crashed worker's task is handed
// out again after 3s rather than the default 2 minutes (every kill costs that task an attempt; the
// default three attempts are plenty for the few kills a task can meet), and an upload that a killed
// master left unfinished is given up after 4s.
var (
	KillingDBArgs     = []string{"--lease", "3s", "--pending-timeout", "4s"}
	KillingWorkerArgs = []string{"--heartbeat", "500ms", "--drain", "2s", "--wait", "2s"}
)

// StartDistributed starts the engines and the instances of every service opts asks for.
func StartDistributed(t testing.TB, opts Options) *Distributed {
	t.Helper()
	pg := enginetest.StartPostgres(t)
	minio := enginetest.StartMinIO(t)
	etcd := enginetest.StartEtcd(t, 3)
	tasks, blobs := pg.NewDatabase(t), minio.URL(minio.NewBucket(t))

	d := New(t)
	d.DBArgs = opts.DBArgs
	addrs, err := allinone.FreeAddrs(opts.KVs + opts.Frontends + opts.Storages + opts.Masters)
	if err != nil {
		t.Fatal(err)
	}
	kvAddrs, addrs := addrs[:opts.KVs], addrs[opts.KVs:]
	feAddrs, addrs := addrs[:opts.Frontends], addrs[opts.Frontends:]
	storageAddrs, masterAddrs := addrs[:opts.Storages], addrs[opts.Storages:]
	// Every service gets every kv instance and spreads its calls across them.
	d.KVAddr = strings.Join(kvAddrs, ",")
	dd := &Distributed{Deployment: d, PG: pg, MinIO: minio, Etcd: etcd, FEAddrs: feAddrs,
		StorageAddrs: storageAddrs, MasterAddrs: masterAddrs}
	for i, a := range kvAddrs {
		d.MustStart(fmt.Sprintf("kv-%d", i+1), "kv", "--addr", a, "--kv", etcd.URL())
	}
	for i := range opts.Databases {
		d.MustStart(fmt.Sprintf("database-%d", i+1), append([]string{"database", "--addr", "127.0.0.1:0", "--kv", d.KVAddr,
			"--tasks", tasks, "--pool", "4"}, d.DBArgs...)...)
	}
	for i, a := range storageAddrs {
		d.MustStart(fmt.Sprintf("storage-%d", i+1), "storage", "--addr", a, "--kv", d.KVAddr, "--blobs", blobs)
	}
	for i, a := range masterAddrs {
		d.MustStart(fmt.Sprintf("master-%d", i+1), "master", "--addr", a, "--kv", d.KVAddr)
	}
	d.WaitReady()
	for i := range opts.Workers {
		d.StartWorker(fmt.Sprintf("worker-%d", i+1), opts.WorkerArgs...)
	}
	for i, a := range feAddrs {
		// They share the public id secret through the kv store: an id from one works at the other.
		d.MustStart(fmt.Sprintf("frontend-%d", i+1), "frontend", "--addr", a, "--kv", d.KVAddr, "--upload-rate", "0",
			"--data", filepath.Join(d.Dir, fmt.Sprintf("frontend-%d", i+1)))
	}
	return dd
}
