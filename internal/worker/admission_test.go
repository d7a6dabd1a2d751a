package worker_test

import (
	"bytes"
	"context"
	"image"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

func TestTaskTimeoutFor(t *testing.T) {
	for _, tc := range []struct {
		ceiling, cpu, want time.Duration
	}{
		{0, time.Second, worker.MinTaskTimeout},                                // cheap: the floor
		{0, 10 * time.Second, worker.TaskTimeoutFactor * 10 * time.Second},     // scaled
		{0, time.Hour, worker.DefaultTaskTimeout},                              // the default ceiling
		{time.Hour, 20 * time.Minute, time.Hour},                               // a ceiling of choice
		{time.Second, time.Millisecond, time.Second},                           // a ceiling under the floor
		{10 * time.Minute, 1<<63 - 1, 10 * time.Minute},                        // no overflow
		{10 * time.Minute, 0, worker.MinTaskTimeout},                           // no estimate
		{2 * time.Minute, 5 * time.Second, min(2*time.Minute, 50*time.Second)}, // in range
	} {
		cfg := worker.Config{TaskTimeout: tc.ceiling}
		if got := cfg.TaskTimeoutFor(imageop.Estimate{CPU: tc.cpu}); got != tc.want {
			t.Errorf("TaskTimeout %v, estimate %v: deadline %v, want %v", tc.ceiling, tc.cpu, got, tc.want)
		}
	}
}

// estimate is what the worker estimates for running op on the PNG data.
func estimate(t *testing.T, data []byte, op string) imageop.Estimate {
	t.Helper()
	h, _, err := imageop.ReadHeader(bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := imageop.ParseChain(op)
	if err != nil {
		t.Fatal(err)
	}
	return chain.Estimate(h)
}

// TestWorkerFailsTaskPastDeadline: image work still running at the task's deadline is cancelled, and
// the task fails on its first attempt and for good, saying how long it was given.
func TestWorkerFailsTaskPastDeadline(t *testing.T) {
	r := newRig(t, rigOptions{})
	id := r.upload(t, testimage.Pattern(16, 1))
	var gotDeadline atomic.Bool
	cfg := worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		TaskTimeout: 300 * time.Millisecond, Logger: servicetest.Discard}
	worker.SetApply(&cfg, func(ctx context.Context, _ io.Writer, _ io.Reader, _ imageop.Chain) (string, error) {
		_, ok := ctx.Deadline()
		gotDeadline.Store(ok)
		<-ctx.Done() // work that would take far longer, and checks its context
		return "", ctx.Err()
	})
	startWorker(t, cfg)
	task := r.waitSettled(t, id)
	if want := "took longer than 0.3 s (the limit for this image and chain): try a smaller image or fewer steps"; task.State != wire.Failed || task.Attempts != 1 || task.Error != want {
		t.Errorf("task = %+v, want failed on its first attempt with %q", task, want)
	}
	if !gotDeadline.Load() {
		t.Error("the image work's context had no deadline")
	}
}

// TestWorkerDeadlineEndsStalledInput: the deadline covers reading the working image too: a stream
// that stalls half way does not hold the task past it.
func TestWorkerDeadlineEndsStalledInput(t *testing.T) {
	img := testimage.Pattern(96, 2)
	data := servicetest.EncodePNG(t, img)
	if len(data) < 2*imageop.SniffLen+1024 {
		t.Fatalf("test image of %d bytes: too small to stall after its header", len(data))
	}
	var stalled atomic.Int64
	stall := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || r.URL.Query().Get("state") != wire.WorkingImage {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			body := rec.Body.Bytes()
			w.Write(body[:len(body)/2])
			http.NewResponseController(w).Flush()
			stalled.Add(1)
			select {
			case <-r.Context().Done():
			case <-time.After(time.Minute):
			}
		})
	}
	r := newRig(t, rigOptions{wrapStorage: stall})
	id, err := r.master.New(t.Context(), bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		TaskTimeout: 500 * time.Millisecond, Logger: servicetest.Discard})
	task := r.waitSettled(t, id)
	if want := "took longer than 0.5 s (the limit for this image and chain): try a smaller image or fewer steps"; task.State != wire.Failed || task.Attempts != 1 || task.Error != want {
		t.Errorf("task = %+v, want failed on its first attempt with %q", task, want)
	}
	if n := stalled.Load(); n != 1 {
		t.Errorf("working image fetched %d times, want once", n)
	}
}

// TestWorkerStopsRenewingPastDeadline: image work that does not stop at its deadline (stuck) gets
// its lease renewed for deadlineGrace at most, so it cannot hold the task for ever.
func TestWorkerStopsRenewingPastDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const grace = 2 * time.Second // worker's deadlineGrace
	var mu sync.Mutex
	var beats []time.Time
	recordBeats := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/extendLease" {
				mu.Lock()
				beats = append(beats, time.Now())
				mu.Unlock()
			}
			next.ServeHTTP(w, r)
		})
	}
	r := newRig(t, rigOptions{lease: time.Second, wrapMaster: recordBeats})
	id := r.upload(t, testimage.Pattern(8, 3))
	started := make(chan time.Time, 1)
	release := make(chan struct{})
	var calls atomic.Int64
	cfg := worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		Heartbeat: 50 * time.Millisecond, TaskTimeout: timeout, Logger: servicetest.Discard}
	worker.SetApply(&cfg, func(ctx context.Context, _ io.Writer, _ io.Reader, _ imageop.Chain) (string, error) {
		if calls.Add(1) == 1 {
			started <- time.Now()
			<-release // stuck: does not look at ctx
		}
		return "", ctx.Err()
	})
	stop := startWorker(t, cfg)
	var t0 time.Time
	select {
	case t0 = <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the image work did not start within 30s")
	}
	// Watch well past the deadline and its grace, then let the stuck work go.
	time.Sleep(timeout + grace + 2*time.Second)
	close(release)
	stop()

	mu.Lock()
	defer mu.Unlock()
	var before, late int
	cutoff := t0.Add(timeout + grace + time.Second) // a second's slack for a renewal under way at the cutoff
	for _, b := range beats {
		switch {
		case b.Before(t0.Add(timeout)):
			before++
		case b.After(cutoff):
			late++
		}
	}
	if before == 0 {
		t.Errorf("no lease renewal before the deadline (%d in all): the heartbeat was not running", len(beats))
	}
	if late != 0 {
		t.Errorf("%d lease renewals more than %v past the deadline, want none", late, grace+time.Second)
	}
	if task := r.task(t, id); task.State == wire.Finished {
		t.Errorf("task = %+v: a stuck task finished", task)
	}
}

// TestWorkerFailsTaskOverMemoryBudget: a task whose estimated peak exceeds the worker's whole budget
// can never run there: it fails on its first attempt and for good, saying so, and the next runs.
func TestWorkerFailsTaskOverMemoryBudget(t *testing.T) {
	r := newRig(t, rigOptions{})
	// The estimates hold a fixed part (the encoder's buffers) besides the pixels: the big image must be
	// large enough that its pixels dominate.
	bigImg, smallImg := testimage.Pattern(1024, 4), testimage.Pattern(8, 5)
	need := estimate(t, servicetest.EncodePNG(t, bigImg), "").Memory
	budget := need / 2
	if small := estimate(t, servicetest.EncodePNG(t, smallImg), "").Memory; small > budget {
		t.Fatalf("estimates: %d bytes for 1024x1024, %d for 8x8: the small one does not fit in half the large one's", need, small)
	}
	big := r.upload(t, bigImg)
	small := r.upload(t, smallImg)
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		MaxMemory: budget, Logger: servicetest.Discard})
	task := r.waitSettled(t, big)
	if task.State != wire.Failed || task.Attempts != 1 || !bytesContains(task.Error, "of memory for this image and chain, more than the worker's budget of") {
		t.Errorf("task over the budget = %+v, want failed on its first attempt for its memory", task)
	}
	if task := r.waitSettled(t, small); task.State != wire.Finished {
		t.Errorf("task within the budget = %+v, want finished", task)
	}
	checkResult(t, r.storage, small, smallImg, r.task(t, small).Token)
}

func bytesContains(s, sub string) bool { return bytes.Contains([]byte(s), []byte(sub)) }

// TestWorkerAdmitsByMemory: two tasks whose estimates fit the budget one at a time but not together
// run one after the other, though the worker has two slots; the one that waits keeps its lease (it
// waits for several leases and still finishes on its first attempt). With room for both, they run
// together: the instrument can see overlap.
func TestWorkerAdmitsByMemory(t *testing.T) {
	img1, img2 := testimage.Pattern(48, 6), testimage.Pattern(48, 7)
	need := estimate(t, servicetest.EncodePNG(t, img1), "").Memory
	const hold = 1500 * time.Millisecond // how long a task waits for company before it goes on
	for _, tc := range []struct {
		name        string
		budget      int64
		wantOverlap int64
	}{
		{"room for one", need * 3 / 2, 1},
		{"room for two", need * 5 / 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const lease = 500 * time.Millisecond
			hook := newWorkingHook(0)
			r := newRig(t, rigOptions{lease: lease, wrapStorage: hook.wrap})
			id1, id2 := r.upload(t, img1), r.upload(t, img2)
			var running, most atomic.Int64
			proc := imageop.NewProcessor()
			cfg := worker.Config{Master: r.master, Storage: r.storage, Concurrency: 2, Wait: time.Second,
				Heartbeat: 50 * time.Millisecond, MaxMemory: tc.budget, Logger: servicetest.Discard}
			worker.SetApply(&cfg, func(ctx context.Context, dst io.Writer, src io.Reader, chain imageop.Chain) (string, error) {
				n := running.Add(1)
				defer running.Add(-1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				// Wait for the other task to start too, or for hold.
				timer := time.NewTimer(hold)
				defer timer.Stop()
				for running.Load() < 2 {
					select {
					case <-timer.C:
						return proc.ApplyContext(ctx, dst, src, chain)
					case <-time.After(10 * time.Millisecond):
					}
				}
				return proc.ApplyContext(ctx, dst, src, chain)
			})
			startWorker(t, cfg)
			for _, c := range []struct {
				id  int64
				img image.Image
			}{{id1, img1}, {id2, img2}} {
				task := r.waitSettled(t, c.id)
				if task.State != wire.Finished || task.Attempts != 1 {
					t.Errorf("task = %+v, want finished on its first attempt", task)
				}
				checkResult(t, r.storage, c.id, c.img, task.Token)
			}
			if n := most.Load(); n != tc.wantOverlap {
				t.Errorf("at most %d tasks ran at once with a budget of %d bytes and %d-byte estimates, want %d", n, tc.budget, need, tc.wantOverlap)
			}
			if n := hook.gets.Load(); n != 2 {
				t.Errorf("working images fetched %d times, want twice: a task was claimed again", n)
			}
		})
	}
}
