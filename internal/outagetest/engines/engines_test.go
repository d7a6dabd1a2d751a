package engines

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/outagetest"
	"github.com/imgmill/imgmill/internal/testimage"
)

func TestMain(m *testing.M) { deploytest.Main(m) }

// TestOutagesOfEngines: on PostgreSQL, MinIO and a three-member etcd, with the default lifecycle
// (lease 2m, three attempts): MinIO stopped for 30 s, PostgreSQL stopped for 30 s, etcd without a
// quorum for 30 s, each under load.
func TestOutagesOfEngines(t *testing.T) {
	if testing.Short() {
		t.Skip("outage tests are not run with -short")
	}
	dd := deploytest.StartDistributed(t, deploytest.Options{KVs: 1, Databases: 1, Storages: 2, Masters: 2, Frontends: 1, Workers: 2})
	dd.WaitServing(dd.FEAddrs[0])
	view := outagetest.View{HC: dd.HC, FEAddr: dd.FEAddrs[0], DB: dd.Database, ST: dd.Storage, Master: dd.Master,
		Targets: []outagetest.Target{{Frontend: true, Addr: dd.FEAddrs[0]}, {Addr: dd.MasterAddrs[0]}, {Addr: dd.MasterAddrs[1]}}}
	outer := t // the engines restart for the whole test, not for one subtest
	t.Run("MinIO", func(t *testing.T) {
		outagetest.Run(t, view, outagetest.Outage{Name: "MinIO stopped", Duration: 30 * time.Second,
			Begin: dd.MinIO.Stop, End: func() { dd.MinIO.Restart(outer) }, Allowed: outagetest.TransientStatuses})
	})
	t.Run("PostgreSQL", func(t *testing.T) {
		outagetest.Run(t, view, outagetest.Outage{Name: "PostgreSQL stopped", Duration: 30 * time.Second,
			Begin: dd.PG.Stop, End: func() { dd.PG.Restart(outer) }, Allowed: outagetest.TransientStatuses})
	})
	t.Run("etcd", func(t *testing.T) {
		outagetest.Run(t, view, outagetest.Outage{Name: "etcd quorum lost (2 of 3 members down)", Duration: 30 * time.Second,
			Begin:   func() { dd.Etcd.Member(0).Kill(); dd.Etcd.Member(1).Kill() },
			End:     func() { dd.Etcd.Member(0).Restart(outer); dd.Etcd.Member(1).Restart(outer) },
			Allowed: outagetest.TransientStatuses, Flowing: true})
	})
}

// TestServicesStartBeforeTheirEngines: kv, database and storage started while etcd, PostgreSQL and
// MinIO are all down: each runs, answers /livez but not /healthz (503), says in its log what it waits
// for, and serves as soon as its engine is up; an upload then goes through.
func TestServicesStartBeforeTheirEngines(t *testing.T) {
	if testing.Short() {
		t.Skip("outage tests are not run with -short")
	}
	pg := enginetest.StartPostgres(t)
	minio := enginetest.StartMinIO(t)
	etcd := enginetest.StartEtcd(t, 1)
	tasks, blobs := pg.NewDatabase(t), minio.URL(minio.NewBucket(t))
	pg.Stop()
	minio.Stop()
	etcd.Member(0).Kill()

	d := deploytest.New(t)
	addrs := enginetest.FreeAddrs(t, 4)
	d.KVAddr = addrs[0]
	d.MustStart("kv", "kv", "--addr", addrs[0], "--kv-store", etcd.URL())
	d.MustStart("database", "database", "--addr", addrs[1], "--kv", d.KVAddr, "--tasks", tasks)
	d.MustStart("storage", "storage", "--addr", addrs[2], "--kv", d.KVAddr, "--blobs", blobs)
	d.MustStart("master", "master", "--addr", addrs[3], "--kv", d.KVAddr)
	d.StartWorker("worker")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	probe := func(addr, path string) int {
		r, err := deploytest.GetStatus(ctx, d.HC, "http://"+addr+path)
		if err != nil {
			return 0
		}
		return r
	}
	services := map[string]struct{ addr, waits string }{
		"kv": {addrs[0], "etcd"}, "database": {addrs[1], "waiting for PostgreSQL"}, "storage": {addrs[2], "waiting for S3"},
	}
	for name, s := range services {
		deploytest.WaitFor(t, ctx, name+" live", func() bool { return probe(s.addr, "/livez") == http.StatusOK })
		if got := probe(s.addr, "/healthz"); got != http.StatusServiceUnavailable {
			t.Errorf("%s /healthz with its engine down: %d, want 503", name, got)
		}
		deploytest.WaitFor(t, ctx, name+"'s log to say what it waits for", func() bool {
			log := d.Log(name)
			return strings.Contains(log, s.waits) && strings.Contains(log, "not ready")
		})
	}

	pg.Restart(t)
	minio.Restart(t)
	etcd.Member(0).Restart(t)
	for name, s := range services {
		deploytest.WaitFor(t, ctx, name+" ready once its engine is up", func() bool { return probe(s.addr, "/healthz") == http.StatusOK })
	}
	d.WaitReady()
	orig := testimage.Pattern(24, 60)
	data, _ := testimage.EncodePNG(orig)
	m := d.Master()
	up, err := m.Upload(ctx, bytes.NewReader(data), int64(len(data)), client.UploadParams{IdempotencyKey: "start-order"})
	id := up.ID
	if err != nil {
		t.Fatalf("upload once the engines are up: %v", err)
	}
	deploytest.WaitFor(t, ctx, "the upload processed", func() bool {
		ready, _ := m.IsReady(ctx, id)
		return ready
	})
	if err := testimage.CheckSwapped(orig, deploytest.FetchFromMaster(t, ctx, m, id)); err != nil {
		t.Error(err)
	}
}
