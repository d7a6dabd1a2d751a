package master_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

func (s stack) status(t *testing.T, id int64) wire.Status {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("%s/status?id=%d", s.MasterURL, id), nil)
	var st wire.Status
	if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &st) != nil {
		t.Fatalf("GET /status?id=%d: %d %q", id, r.Status, r.Body)
	}
	return st
}

// TestSweepRemovesExpired: the sweep removes the images and records of finished, failed and cancelled
// tasks past the retention, and leaves queued and processing ones alone, however old.
func TestSweepRemovesExpired(t *testing.T) {
	const retention = time.Millisecond
	s := newStack(t, servicetest.Options{Retention: retention})
	ctx := t.Context()
	processing := s.uploadOK(t, servicetest.PatternPNG(t, 16, 40))
	s.claim(t, processing)
	finished := s.uploadOK(t, servicetest.PatternPNG(t, 16, 41))
	task := s.claim(t, finished)
	result := servicetest.PatternPNG(t, 16, 42)
	if err := s.Storage.SendResult(ctx, finished, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.FinishTask(ctx, finished, task.Token); err != nil {
		t.Fatal(err)
	}
	failed := s.uploadOK(t, servicetest.PatternPNG(t, 16, 43))
	if err := s.Database.SetByID(ctx, wire.Task{ID: failed, State: wire.Failed}); err != nil {
		t.Fatal(err)
	}
	cancelled := s.uploadOK(t, servicetest.PatternPNG(t, 16, 44))
	if r := s.cancel(t, cancelled); r.Status != http.StatusOK {
		t.Fatalf("POST /cancel: %d %q", r.Status, r.Body)
	}
	queued := s.uploadOK(t, servicetest.PatternPNG(t, 16, 45))

	for _, id := range []int64{finished, failed, cancelled} {
		st := s.status(t, id)
		if st.FinishedAt.IsZero() || !st.ExpiresAt.Equal(st.FinishedAt.Add(retention)) {
			t.Errorf("status of settled task %d: finishedAt %v, expiresAt %v; want expiresAt = finishedAt + %v",
				id, st.FinishedAt, st.ExpiresAt, retention)
		}
	}
	for _, id := range []int64{processing, queued} {
		if st := s.status(t, id); !st.ExpiresAt.IsZero() {
			t.Errorf("status of unsettled task %d has expiresAt %v", id, st.ExpiresAt)
		}
	}

	sweeper := master.NewSweeper(s.Database, s.Storage)
	removed := 0
	if !servicetest.PollFor(time.Minute, func() bool {
		n, err := sweeper.Sweep(ctx)
		if err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		removed += n
		return removed >= 3
	}) {
		t.Fatalf("the sweeps removed %d tasks in a minute, want 3", removed)
	}
	if removed != 3 {
		t.Errorf("the sweeps removed %d tasks, want 3", removed)
	}
	for _, id := range []int64{finished, failed, cancelled} {
		for _, state := range []string{wire.WorkingImage, wire.FinishedImage} {
			if _, ok := s.StoredImage(t, id, state); ok {
				t.Errorf("expired task %d's %s image is still stored", id, state)
			}
		}
		expectReply(t, "status of an expired task", s.call(t, http.MethodGet, fmt.Sprintf("%s/status?id=%d", s.MasterURL, id), nil),
			http.StatusBadRequest, fmt.Sprintf("Error: no task with id %d", id))
	}
	for _, id := range []int64{processing, queued} {
		if _, ok := s.StoredImage(t, id, wire.WorkingImage); !ok {
			t.Errorf("the sweep removed the upload of unsettled task %d", id)
		}
		s.status(t, id)
	}
	if n, err := sweeper.Sweep(ctx); n != 0 || err != nil {
		t.Errorf("a sweep with nothing expired removed %d, %v", n, err)
	}
}

// TestSweepKeepsForever: with no retention the sweep removes nothing and statuses carry no expiresAt.
func TestSweepKeepsForever(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	id := s.uploadOK(t, servicetest.PatternPNG(t, 16, 46))
	if err := s.Database.SetByID(ctx, wire.Task{ID: id, State: wire.Failed}); err != nil {
		t.Fatal(err)
	}
	if n, err := master.NewSweeper(s.Database, s.Storage).Sweep(ctx); n != 0 || err != nil {
		t.Errorf("Sweep without retention removed %d, %v", n, err)
	}
	if st := s.status(t, id); !st.ExpiresAt.IsZero() {
		t.Errorf("status without retention has expiresAt %v", st.ExpiresAt)
	}
	if _, ok := s.StoredImage(t, id, wire.WorkingImage); !ok {
		t.Error("the upload of a failed task is gone without retention")
	}
}

// TestOrphanSweep: the orphan sweep removes the image of a task whose record is gone (deleted behind
// the master's back), counts it, leaves the images of live tasks, and a second sweep (another master's)
// removes nothing more.
func TestOrphanSweep(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	orphaned := s.uploadOK(t, servicetest.PatternPNG(t, 16, 50))
	kept := s.uploadOK(t, servicetest.PatternPNG(t, 16, 51))
	if err := s.Database.DeleteTask(ctx, orphaned); err != nil {
		t.Fatal(err)
	}
	reg := metrics.New("master")
	sweeper := master.NewOrphanSweeper(s.Database, s.Storage, time.Nanosecond, reg)
	counted := func() float64 {
		return metricstest.Gather(t, reg.Gatherer()).Value("imgmill_master_orphans_removed_total", "service", "master", "kind", "orphan")
	}
	for i, want := range []int{1, 0} {
		n, err := sweeper.Sweep(ctx)
		if err != nil || n != want {
			t.Errorf("sweep %d = %d, %v; want %d removed", i+1, n, err, want)
		}
	}
	if got := counted(); got != 1 {
		t.Errorf("orphans_removed_total{kind=orphan} = %v, want 1", got)
	}
	if _, ok := s.StoredImage(t, orphaned, wire.WorkingImage); ok {
		t.Errorf("the deleted task's upload is still stored")
	}
	if _, ok := s.StoredImage(t, kept, wire.WorkingImage); !ok {
		t.Errorf("the live task's upload was removed")
	}
}
