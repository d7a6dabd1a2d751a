package worker_test

import (
	"image"
	"image/color"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// methodCalls counts the requests a handler receives, by method and path.
type methodCalls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *methodCalls) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		if c.n == nil {
			c.n = map[string]int{}
		}
		c.n[r.Method+" "+r.URL.Path]++
		c.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (c *methodCalls) count(method, path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[method+" "+path]
}

// TestWorkerFinishesInOneCall: against an imgmill master, a worker hands its result over and finishes the
// task in one call (POST /finishTask): the master stores the result, and neither the worker's two calls
// (storing at storage, /registerTaskFinished) nor the master's look for the result at storage happen.
func TestWorkerFinishesInOneCall(t *testing.T) {
	atStorage := &methodCalls{}
	r := newRig(t, rigOptions{wrapStorage: atStorage.wrap})
	img := noise(8, 31)
	id := r.upload(t, img)
	uploads := atStorage.count(http.MethodPost, "/sendImage")
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second, Logger: servicetest.Discard})

	task := r.waitSettled(t, id)
	if task.State != wire.Finished || task.Attempts != 1 {
		t.Fatalf("task = %+v, want finished on its first attempt", task)
	}
	checkResult(t, r.storage, id, img, task.Token)
	if fin := r.calls.queries("/finishTask"); len(fin) != 1 || fin[0].Get("id") != strconv.FormatInt(id, 10) || fin[0].Get("token") != strconv.FormatInt(task.Token, 10) {
		t.Errorf("finish calls %v, want one for task %d with its token %d", fin, id, task.Token)
	}
	if n := r.calls.count("/registerTaskFinished"); n != 0 {
		t.Errorf("%d calls of /registerTaskFinished, want none: the result's call finished the task", n)
	}
	if n := atStorage.count(http.MethodPost, "/sendImage") - uploads; n != 1 {
		t.Errorf("%d stores at storage after the upload, want 1: the result, by the master", n)
	}
	if n := atStorage.count(http.MethodHead, "/getImage"); n != 0 {
		t.Errorf("%d looks for a result at storage, want none", n)
	}
}

// TestWorkerFinishFallsBack: a master without /finishTask (the reference design's, whose mux answers
// Go's bare 404) gets the result stored at storage and the task registered finished in two calls, as it
// expects; the worker remembers that master, and asks it /finishTask only once. The results are larger
// than what a Go server reads of a body it refuses, so the refusal must come before the body is sent.
func TestWorkerFinishFallsBack(t *testing.T) {
	r := newRig(t, rigOptions{})
	target, err := url.Parse(r.masterURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: r.hc.Transport,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	seen := &calls{}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		seen.record(req)
		if req.URL.Path == "/finishTask" {
			http.NotFound(w, req) // what an http.ServeMux answers a path it does not have
			return
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(front.Close)

	imgs := []image.Image{noise(300, 41), noise(300, 42)} // PNGs of about 350 KB
	ids := make([]int64, len(imgs))
	for i, img := range imgs {
		ids[i] = r.upload(t, img)
	}
	startWorker(t, worker.Config{Master: client.NewMaster(r.hc, client.Static(servicetest.Addr(front.URL))),
		Storage: r.storage, Concurrency: 1, Wait: time.Second, Logger: servicetest.Discard})
	for i, id := range ids {
		task := r.waitSettled(t, id)
		if task.State != wire.Finished || task.Attempts != 1 {
			t.Errorf("task = %+v, want finished on its first attempt", task)
		}
		checkResult(t, r.storage, id, imgs[i], task.Token)
	}
	if n := seen.count("/finishTask"); n != 1 {
		t.Errorf("%d calls of /finishTask to a master without it, want 1: the worker did not remember", n)
	}
	if n := seen.count("/registerTaskFinished"); n != len(ids) {
		t.Errorf("%d calls of /registerTaskFinished, want %d", n, len(ids))
	}
}

// TestWorkerFinishAnswerNotCutShort: the master's finish wakes the task's held heartbeat, which then
// hears that the task is no longer in progress (400); the finish's own answer, slow to come here, must
// still be heard: the worker reports the task finished, not lost.
func TestWorkerFinishAnswerNotCutShort(t *testing.T) {
	var holding atomic.Bool
	var refusedMeanwhile atomic.Int64 // heartbeats refused during the finish, its answer held
	r := newRig(t, rigOptions{wrapMaster: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path == "/extendLease" {
				rec := httptest.NewRecorder()
				next.ServeHTTP(rec, req)
				if holding.Load() && rec.Code == http.StatusBadRequest {
					refusedMeanwhile.Add(1)
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(rec.Body.Bytes())
				return
			}
			if req.URL.Path != "/finishTask" {
				next.ServeHTTP(w, req)
				return
			}
			holding.Store(true)
			defer holding.Store(false)
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, req)
			// The task is finished at the database, and its held heartbeat woken to hear so.
			time.Sleep(time.Second)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
		})
	}})
	img := noise(8, 51)
	id := r.upload(t, img)
	var log logLines
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		Heartbeat: 50 * time.Millisecond, Logger: log.logger()})
	task := r.waitSettled(t, id)
	if task.State != wire.Finished {
		t.Fatalf("task = %+v, want finished", task)
	}
	poll(t, "the worker to report the task finished", func() bool { return len(log.matching("task finished")) == 1 })
	if lost := log.matching("gave up task"); len(lost) != 0 {
		t.Errorf("the worker gave up a task it finished: %q", lost)
	}
	if n := refusedMeanwhile.Load(); n < 1 {
		t.Errorf("no heartbeat was refused while the finish's answer was held: the test tested nothing")
	}
	checkResult(t, r.storage, id, img, task.Token)
}

// noise is a size×size opaque image of random pixels, which PNG does not compress.
func noise(size int, seed uint64) *image.NRGBA {
	rnd := rand.New(rand.NewPCG(seed, seed))
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	for y := range size {
		for x := range size {
			img.SetNRGBA(x, y, color.NRGBA{R: uint8(rnd.Uint32()), G: uint8(rnd.Uint32()), B: uint8(rnd.Uint32()), A: 255})
		}
	}
	return img
}
