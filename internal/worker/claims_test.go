package worker_test

import (
	"bytes"
	"context"
	"image"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// slowClaims holds every claim at the master for delay: time for all of a worker's loops to be
// waiting for a task before the next claim is sent.
func slowClaims(delay time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/getNewTask" {
				time.Sleep(delay)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// claimedPer is the number of tasks each /getNewTask asked for (max, 1 without it).
func claimedPer(t *testing.T, c *calls) []int {
	t.Helper()
	var out []int
	for _, q := range c.queries("/getNewTask") {
		n := 1
		if raw := q.Get(wire.MaxTasksParam); raw != "" {
			var err error
			if n, err = strconv.Atoi(raw); err != nil {
				t.Fatalf("claim with max=%q", raw)
			}
		}
		out = append(out, n)
	}
	return out
}

// TestWorkerClaimsInBatches: a worker's loops waiting for a task at once share one claim of as many
// tasks as they are, and a worker whose every slot holds a task claims nothing.
func TestWorkerClaimsInBatches(t *testing.T) {
	const slots, tasks = 4, 6
	r := newRig(t, rigOptions{wrapMaster: slowClaims(500 * time.Millisecond)})
	imgs := make([]image.Image, tasks)
	ids := make([]int64, tasks)
	for i := range imgs {
		imgs[i] = testimage.Pattern(10, int64(60+i))
		ids[i] = r.upload(t, imgs[i])
	}
	gate := make(chan struct{})
	var running atomic.Int64
	proc := imageop.NewProcessor()
	cfg := worker.Config{Master: r.master, Storage: r.storage, Concurrency: slots, Wait: time.Second,
		Logger: servicetest.Discard}
	worker.SetApply(&cfg, func(ctx context.Context, dst io.Writer, src io.Reader, chain imageop.Chain) (string, error) {
		running.Add(1)
		<-gate
		return proc.ApplyContext(ctx, dst, src, chain)
	})
	startWorker(t, cfg)
	poll(t, "every slot working", func() bool { return running.Load() == slots })
	// Time for a claim the worker should not send to arrive.
	time.Sleep(700 * time.Millisecond)
	per := claimedPer(t, r.calls)
	sum := 0
	for _, n := range per {
		sum += n
	}
	t.Logf("claims for the first %d tasks asked for %v", slots, per)
	if sum != slots {
		t.Errorf("claims asked for %v tasks, %d in all; want %d, the worker's free slots", per, sum, slots)
	}
	// The first claim may be sent before every loop waits; the second then takes the rest.
	if len(per) > 2 {
		t.Errorf("%d claims for %d slots, want at most 2: the waiting loops did not share a claim", len(per), slots)
	}
	close(gate)
	for i, id := range ids {
		task := r.waitSettled(t, id)
		if task.State != wire.Finished || task.Attempts != 1 {
			t.Errorf("task = %+v, want finished on its first attempt", task)
		}
		checkResult(t, r.storage, id, imgs[i], task.Token)
	}
}

// TestWorkerBatchFallback: a master that answers a batch claim with one task JSON (the reference
// design's, which knows no max) gets every task claimed one per call, each loop asking for itself.
func TestWorkerBatchFallback(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	st := client.NewStorage(hc, client.Static(servicetest.Addr(servicetest.ServeStorage(t, t.TempDir(), nil))))
	ids := []int64{0, 1, 2, 3, 4, 5}
	imgs := make([]image.Image, len(ids))
	for i, id := range ids {
		imgs[i] = testimage.Pattern(9, int64(70+i))
		data := servicetest.EncodePNG(t, imgs[i])
		if err := st.SendImage(t.Context(), id, wire.WorkingImage, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	fake, seen := referenceMaster(t, ids, 0)
	stop := startWorker(t, worker.Config{Master: client.NewMaster(hc, client.Static(servicetest.Addr(fake.URL))),
		Storage: st, Concurrency: 4, Wait: time.Second, Logger: servicetest.Discard})
	poll(t, "every task registered finished", func() bool { return seen.count("/registerTaskFinished") >= len(ids) })
	stop()

	finished := map[string]int{}
	for _, q := range seen.queries("/registerTaskFinished") {
		finished[q.Get("id")]++
	}
	for i, id := range ids {
		if n := finished[strconv.FormatInt(id, 10)]; n != 1 {
			t.Errorf("task %d registered finished %d times, want once", id, n)
		}
		checkResult(t, st, id, imgs[i], 0)
	}
	batches := 0
	for _, q := range seen.queries("/getNewTask") {
		if q.Has(wire.MaxTasksParam) {
			batches++
		}
	}
	if batches > 1 {
		t.Errorf("%d batch claims to a master that answered the first with one task, want at most 1", batches)
	}
}
