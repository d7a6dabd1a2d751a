package metrics_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/worker"
)

// A real worker's loops show busy while they work on a task and idle otherwise, and count what they
// processed. Storage holds the worker's fetch of the image until the test has seen it busy.
func TestWorkerBusyWhileProcessing(t *testing.T) {
	fetching := make(chan struct{}, 1)
	release := make(chan struct{})
	stack := servicetest.NewStack(t, servicetest.Options{WrapStorage: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && r.URL.Query().Get("state") == "working" {
				fetching <- struct{}{}
				<-release
			}
			h.ServeHTTP(w, r)
		})
	}})
	reg := metrics.New("worker")
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan error, 1)
	go func() {
		returned <- worker.Run(ctx, worker.Config{Master: stack.Master, Storage: stack.Storage, Concurrency: 2,
			Wait: time.Second, Logger: servicetest.Discard, Metrics: metrics.NewWorker(reg)})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-returned; err != nil {
			t.Errorf("worker.Run: %v", err)
		}
	})
	loops := func(state string) float64 {
		return metricstest.Gather(t, reg.Gatherer()).Value("imgmill_worker_loops", "state", state)
	}
	waitLoops := func(what string, busy, idle float64) {
		t.Helper()
		if !servicetest.PollFor(10*time.Second, func() bool { return loops("busy") == busy && loops("idle") == idle }) {
			t.Fatalf("%s: busy %v idle %v, want %v and %v", what, loops("busy"), loops("idle"), busy, idle)
		}
	}
	// Registered last, so it runs first: a failed test does not leave the worker's fetch hanging.
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock)
	waitLoops("started", 0, 2)

	data, err := testimage.EncodePNG(testimage.Pattern(16, 1))
	if err != nil {
		t.Fatal(err)
	}
	id, err := stack.Master.New(t.Context(), bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-fetching:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker never fetched the image")
	}
	waitLoops("fetching the image", 1, 1)
	unblock()
	if !servicetest.PollFor(10*time.Second, func() bool {
		ready, _ := stack.Master.IsReady(t.Context(), id)
		return ready
	}) {
		t.Fatal("task never finished")
	}
	waitLoops("done", 0, 2)
	f := metricstest.Gather(t, reg.Gatherer())
	if got := f.Value("imgmill_worker_tasks_total", "result", "processed"); got != 1 {
		t.Errorf("processed = %v, want 1", got)
	}
	if got := f.Value("imgmill_worker_processing_seconds", "result", "processed"); got != 1 {
		t.Errorf("processing time observations = %v, want 1", got)
	}
	if got := f.Value("imgmill_worker_tasks_total", "result", "failed"); got != 0 {
		t.Errorf("failed = %v, want 0", got)
	}
}

// TestWorkerResults: a task's outcome is counted as processed, transient (something it needed was away,
// the task was handed back) or failed.
func TestWorkerResults(t *testing.T) {
	reg := metrics.New("worker")
	w := metrics.NewWorker(reg)
	w.Processed(time.Millisecond, nil)
	w.Processed(time.Millisecond, fmt.Errorf("fetch working image: %w", fault.Unavailable("image storage", errors.New("refused"))))
	w.Processed(time.Millisecond, fmt.Errorf("store finished image: %w", fault.NoSpace("image storage", errors.New("full"))))
	w.Processed(time.Millisecond, errors.New("cannot decode image"))
	f := metricstest.Gather(t, reg.Gatherer())
	for result, want := range map[string]float64{"processed": 1, "transient": 2, "failed": 1} {
		if got := f.Value("imgmill_worker_tasks_total", "result", result); got != want {
			t.Errorf("tasks_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}
