package lifecycle

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestRetentionOnEngines runs retention on the distributed backends: tasks in PostgreSQL, images in
// MinIO, two database instances and two masters sweeping at once. Every task that settles is removed
// once its retention passes, its images from the bucket and its record from the database, and each by
// one master only: the masters' counts of expired tasks add up to the tasks there were.
func TestRetentionOnEngines(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, MinIO, etcd and every service as a process")
	}
	const tasks = 40
	dd := deploytest.StartDistributed(t, deploytest.Options{KVs: 1, Databases: 2, Storages: 1, Masters: 2, Workers: 1,
		DBArgs: []string{"--retention", "3s"}, MasterArgs: []string{"--sweep-every", "500ms"}})
	ctx, cancel := deploytest.Within(t, 3*time.Minute)
	defer cancel()
	m, db, st := dd.Master(), dd.Database(), dd.Storage()

	ids := make([]int64, 0, tasks)
	for i := range tasks {
		img, err := testimage.EncodePNG(testimage.Pattern(16+i%8, int64(i)))
		if err != nil {
			t.Fatal(err)
		}
		id, err := m.New(ctx, bytes.NewReader(img), int64(len(img)))
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		ids = append(ids, id)
	}
	// Each task finishes (its status says so, with when it expires) before the sweep removes it; one
	// already removed answers 400 (no such task) at the master.
	for _, id := range ids {
		deploytest.WaitFor(t, ctx, "task "+strconv.FormatInt(id, 10)+" finished or removed", func() bool {
			s, err := m.Status(ctx, id)
			if err != nil {
				return client.IsStatus(err, http.StatusBadRequest)
			}
			if s.State == wire.FinishedWord && s.ExpiresAt.IsZero() {
				t.Fatalf("finished task %d has no expiresAt", id)
			}
			return s.State == wire.FinishedWord
		})
	}
	deploytest.WaitFor(t, ctx, "every task and image removed", func() bool {
		stats, err := db.Stats(ctx)
		if err != nil || stats != (wire.Stats{}) {
			return false
		}
		for _, prefix := range []string{wire.WorkingImage, wire.FinishedImage} {
			page, err := st.ListBlobs(ctx, prefix, "", 10)
			if err != nil || len(page.Blobs) > 0 {
				return false
			}
		}
		return true
	})
	for _, id := range ids {
		if _, err := m.Status(ctx, id); !client.IsStatus(err, http.StatusBadRequest) {
			t.Errorf("status of task %d after retention: %v, want 400 (no such task)", id, err)
		}
	}

	// Removed once each: the masters' counts of expired tasks add up to the tasks.
	removed := 0.0
	for _, addr := range dd.MasterAddrs {
		metrics := metricstest.Scrape(t, dd.HC, "http://"+addr+"/metrics")
		if !metrics.Has("imgmill_master_tasks_expired_total") {
			t.Fatalf("the master at %s exports no imgmill_master_tasks_expired_total", addr)
		}
		removed += metrics.Value("imgmill_master_tasks_expired_total")
	}
	if removed != tasks {
		t.Fatalf("the masters removed %v tasks in all, want %d (each once)", removed, tasks)
	}
}
