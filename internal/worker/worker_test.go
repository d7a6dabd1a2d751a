package worker_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	_ "image/png" // decoder for results
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startWorker runs worker.Run until the test ends (or stop is called) and checks that it returns
// promptly once cancelled.
func startWorker(t *testing.T, cfg worker.Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan error, 1)
	go func() { returned <- worker.Run(ctx, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-returned:
				if err != nil {
					t.Errorf("worker.Run returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("worker.Run did not return within 10s of its context ending")
				// Leave it: goleak will report the stuck goroutines.
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

type upload struct {
	name string
	data []byte
	// want is the expected output image; nil means check with testimage.CheckSwapped against orig.
	orig image.Image
	want image.Image
	// format is the result's format ("" means png: every input but JPEG becomes PNG by default); a
	// JPEG result is compared with want within tolerance (lossy re-encoding).
	format    string
	tolerance int
}

func decode(t *testing.T, what string, b []byte) (image.Image, string) {
	t.Helper()
	img, format, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("decode %s: %v", what, err)
	}
	return img, format
}

func pngUpload(t *testing.T, name string, img image.Image) upload {
	t.Helper()
	data := servicetest.EncodePNG(t, img)
	orig, _ := decode(t, name, data)
	return upload{name: name, data: data, orig: orig}
}

// palettedImage is a paletted image whose palette has opaque, translucent and transparent entries.
func palettedImage(size int) *image.Paletted {
	pal := color.Palette{
		color.NRGBA{R: 250, G: 10, B: 30, A: 255},
		color.NRGBA{R: 20, G: 240, B: 60, A: 255},
		color.NRGBA{R: 90, G: 30, B: 200, A: 255},
		color.NRGBA{R: 200, G: 100, B: 0, A: 128},
		color.NRGBA{R: 10, G: 60, B: 140, A: 40},
		color.NRGBA{R: 0, G: 0, B: 0, A: 0},
		color.NRGBA{R: 255, G: 255, B: 0, A: 255},
	}
	m := image.NewPaletted(image.Rect(0, 0, size, size), pal)
	for y := range size {
		for x := range size {
			m.SetColorIndex(x, y, uint8((x/3+y*2)%len(pal)))
		}
	}
	return m
}

// jpegUpload encodes an opaque version of a test pattern as JPEG; the expected output is the decoded JPEG
// with red and green swapped.
func jpegUpload(t *testing.T, size int, seed int64) upload {
	t.Helper()
	src := testimage.Pattern(size, seed)
	for i := 3; i < len(src.Pix); i += 4 {
		src.Pix[i] = 255
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, src, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	decoded, format := decode(t, "jpeg", buf.Bytes())
	if format != "jpeg" {
		t.Fatalf("encoded JPEG decodes as %s", format)
	}
	// The default chain keeps a JPEG a JPEG: re-encoding at quality 85 moves a channel by a few levels.
	return upload{name: "jpeg", data: buf.Bytes(), want: imageop.SwapRedGreen(decoded), format: "jpeg", tolerance: 24}
}

func gifUpload(t *testing.T) upload {
	t.Helper()
	var buf bytes.Buffer
	if err := gif.Encode(&buf, palettedImage(30), nil); err != nil {
		t.Fatal(err)
	}
	orig, _ := decode(t, "gif", buf.Bytes())
	return upload{name: "gif", data: buf.Bytes(), orig: orig}
}

// nearPixels compares two images channel by channel, allowing each channel to differ by tolerance.
func nearPixels(want, got image.Image, tolerance int) error {
	if want.Bounds() != got.Bounds() {
		return fmt.Errorf("bounds %v, want %v", got.Bounds(), want.Bounds())
	}
	b := want.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			w := color.NRGBAModel.Convert(want.At(x, y)).(color.NRGBA)
			g := color.NRGBAModel.Convert(got.At(x, y)).(color.NRGBA)
			for _, d := range []int{int(w.R) - int(g.R), int(w.G) - int(g.G), int(w.B) - int(g.B), int(w.A) - int(g.A)} {
				if d > tolerance || -d > tolerance {
					return fmt.Errorf("pixel (%d,%d) = %v, want %v (tolerance %d)", x, y, g, w, tolerance)
				}
			}
		}
	}
	return nil
}

// waitFinished polls the database until task id is finished.
func waitFinished(ctx context.Context, t *testing.T, s *servicetest.Stack, id int64) {
	t.Helper()
	waitTask(ctx, t, s.Database, id, "finished", func(t wire.Task) bool { return t.State == wire.Finished })
}

// waitTask polls the database until task id satisfies cond (described by what) and returns it.
func waitTask(ctx context.Context, t *testing.T, db *client.Database, id int64, what string, cond func(wire.Task) bool) wire.Task {
	t.Helper()
	var task wire.Task
	ok := servicetest.Poll(ctx, func() bool {
		got, err := db.GetByID(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			t.Fatalf("database GetByID(%d): %v", id, err)
		}
		task = got
		return cond(task)
	})
	if !ok {
		t.Fatalf("task %d not %s in time: %+v", id, what, task)
	}
	return task
}

// waitSettled waits up to a minute for task id to be finished or failed, and returns it.
func (r *rig) waitSettled(t *testing.T, id int64) wire.Task {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	return waitTask(ctx, t, r.db, id, "finished or failed", func(t wire.Task) bool { return t.State >= wire.Finished })
}

func TestWorkerProcessesUploads(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	stop := startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 2, Wait: 2 * time.Second, Logger: servicetest.Discard})

	// An image that passes the master's header checks but does not decode: the worker must survive it.
	bad := servicetest.PaddedPNG(8, 8, 100)
	badID, err := s.Master.New(ctx, bytes.NewReader(bad), int64(len(bad)))
	if err != nil {
		t.Fatalf("upload bad image: %v", err)
	}

	uploads := []upload{
		pngUpload(t, "pattern 1", testimage.Pattern(1, 1)),
		pngUpload(t, "pattern 5", testimage.Pattern(5, 2)),
		pngUpload(t, "pattern 64", testimage.Pattern(64, 3)),
		pngUpload(t, "pattern 257", testimage.Pattern(257, 4)),
		pngUpload(t, "paletted", palettedImage(37)),
		jpegUpload(t, 50, 5),
		gifUpload(t),
	}
	ids := make([]int64, len(uploads))
	for i, u := range uploads {
		if i%2 == 0 {
			ids[i], err = s.Master.New(ctx, bytes.NewReader(u.data), int64(len(u.data)))
		} else {
			ids[i], err = s.Master.New(ctx, io.MultiReader(bytes.NewReader(u.data)), -1) // unknown length
		}
		if err != nil {
			t.Fatalf("upload %s: %v", u.name, err)
		}
	}

	for i, u := range uploads {
		t.Run(u.name, func(t *testing.T) {
			id := ids[i]
			waitFinished(ctx, t, s, id)
			out, ok := s.StoredImage(t, id, wire.FinishedImage)
			if !ok {
				t.Fatalf("task %d finished but storage has no finished image", id)
			}
			wantFormat := cmp.Or(u.format, "png")
			if format, ok := imageop.Sniff(out); !ok || format != wantFormat {
				t.Fatalf("finished image starts %q, want %s", out[:min(len(out), 16)], wantFormat)
			}
			result, format := decode(t, "result", out)
			if format != wantFormat {
				t.Fatalf("finished image decodes as %s, want %s", format, wantFormat)
			}
			if u.want != nil {
				if err := nearPixels(u.want, result, u.tolerance); err != nil {
					t.Errorf("result is not the swapped decoded input: %v", err)
				}
			} else if err := testimage.CheckSwapped(u.orig, result); err != nil {
				t.Errorf("result not swapped: %v", err)
			}
			// The input is kept as it was.
			resp, err := s.Storage.GetImage(t.Context(), id, wire.WorkingImage)
			if err != nil {
				t.Fatalf("working image: %v", err)
			}
			in, _ := io.ReadAll(resp)
			resp.Close()
			if !bytes.Equal(in, u.data) {
				t.Errorf("working image changed")
			}
			// The master serves what storage holds.
			if ready, err := s.Master.IsReady(t.Context(), id); err != nil || !ready {
				t.Errorf("master IsReady(%d) = %v, %v; want true", id, ready, err)
			}
			got, err := s.Master.Get(t.Context(), id)
			if err != nil {
				t.Fatalf("master Get(%d): %v", id, err)
			}
			b, _ := io.ReadAll(got)
			got.Close()
			if !bytes.Equal(b, out) {
				t.Errorf("master /get differs from storage's finished image")
			}
		})
	}

	// The undecodable image fails at once, for good: no retry can decode it. It never gets a result.
	task := waitTask(ctx, t, s.Database, badID, "failed", func(t wire.Task) bool { return t.State != wire.InProgress })
	if task.State != wire.Failed || task.Attempts != 1 || !strings.HasPrefix(task.Error, "cannot read this PNG: ") || !strings.HasSuffix(task.Error, imageop.ResaveAdvice) {
		t.Errorf("undecodable task = %+v, want failed after 1 attempt with an error about reading the PNG, then what to do", task)
	}
	if _, ok := s.StoredImage(t, badID, wire.FinishedImage); ok {
		t.Errorf("undecodable task %d has a finished image", badID)
	}

	// Cancelling stops the worker promptly even while its loops wait in long polls.
	start := time.Now()
	stop()
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("worker took %v to stop", el)
	}
}

func TestWorkerPicksUpTaskWhileIdle(t *testing.T) {
	// Long polls are held at the database; a task appearing later is taken at once, not after the wait.
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 1, Wait: 30 * time.Second, Logger: servicetest.Discard})
	time.Sleep(300 * time.Millisecond) // let the loop settle into its long poll

	img := testimage.Pattern(20, 9)
	start := time.Now()
	id, err := s.Master.New(ctx, bytes.NewReader(servicetest.EncodePNG(t, img)), -1)
	if err != nil {
		t.Fatal(err)
	}
	waitFinished(ctx, t, s, id)
	if el := time.Since(start); el > 15*time.Second {
		t.Errorf("task finished after %v: the waiting worker was not woken", el)
	}
	out, ok := s.StoredImage(t, id, wire.FinishedImage)
	if !ok {
		t.Fatal("no finished image")
	}
	result, _ := decode(t, "result", out)
	if err := testimage.CheckSwapped(img, result); err != nil {
		t.Error(err)
	}
}

// fakeMaster answers every claim at once with status and body (ignoring wait, like the reference master)
// and counts the claims.
func fakeMaster(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64, *atomic.Int64) {
	t.Helper()
	var claims, others atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/getNewTask" {
			claims.Add(1)
			httpapi.WriteText(w, status, body)
			return
		}
		others.Add(1)
		httpapi.WriteText(w, http.StatusNotFound, "Error: unexpected")
	}))
	t.Cleanup(srv.Close)
	return srv, &claims, &others
}

func TestWorkerDoesNotSpin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"no task at once", http.StatusBadRequest, servicetest.NoTaskReply},
		{"master failing", http.StatusInternalServerError, "Error: internal error"},
		{"database unavailable", http.StatusBadGateway, "Error: database unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, claims, others := fakeMaster(t, tc.status, tc.body)
			hc := servicetest.NewHTTPClient(t)
			ep := client.Static(servicetest.Addr(srv.URL))
			const loops = 2
			stop := startWorker(t, worker.Config{
				Master: client.NewMaster(hc, ep), Storage: client.NewStorage(hc, ep),
				Concurrency: loops, Logger: servicetest.Discard, // default Wait: the fake ignores it
			})
			time.Sleep(time.Second)
			stop()
			n := claims.Load()
			t.Logf("%d claims in 1s by %d loops", n, loops)
			if n < loops {
				t.Errorf("%d claims, want at least one per loop (%d)", n, loops)
			}
			if n >= 30 {
				t.Errorf("%d claims in 1s: the worker spins on an immediate %d", n, tc.status)
			}
			if o := others.Load(); o != 0 {
				t.Errorf("%d requests other than claims", o)
			}
		})
	}
}

func TestWorkerSendsWait(t *testing.T) {
	// The claim asks the master to hold it (long poll) for the configured wait.
	var mu sync.Mutex
	var waits []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		waits = append(waits, r.URL.Query().Get("wait"))
		mu.Unlock()
		httpapi.WriteText(w, http.StatusBadRequest, servicetest.NoTaskReply)
	}))
	t.Cleanup(srv.Close)
	hc := servicetest.NewHTTPClient(t)
	ep := client.Static(servicetest.Addr(srv.URL))
	stop := startWorker(t, worker.Config{Master: client.NewMaster(hc, ep), Storage: client.NewStorage(hc, ep),
		Concurrency: 1, Wait: 7 * time.Second, Logger: servicetest.Discard})
	servicetest.PollFor(5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(waits) > 0
	})
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(waits) == 0 {
		t.Fatal("no claim reached the master")
	}
	for _, w := range waits {
		if d, err := time.ParseDuration(w); err != nil || d != 7*time.Second {
			t.Errorf("claim wait=%q, want 7s", w)
		}
	}
}

// rig is a real database (with a lease of choice), storage and master, the master's requests counted.
type rig struct {
	hc        *http.Client
	db        *client.Database // straight to the database
	storage   *client.Storage
	master    *client.Master
	masterURL string
	calls     *calls // requests the master received
}

type rigOptions struct {
	lease       time.Duration // the database's lease; 0 means servicetest.StackLease
	retryMin    time.Duration // the database's first wait after a transient failure; 0: the default
	wrapStorage func(http.Handler) http.Handler
	wrapMaster  func(http.Handler) http.Handler // inside the master's request recording
	calls       *calls                          // records the master's requests; nil for a new one
}

func newRig(t *testing.T, opts rigOptions) *rig {
	t.Helper()
	dir := t.TempDir()
	lease := opts.lease
	if lease == 0 {
		lease = servicetest.StackLease
	}
	r := &rig{hc: servicetest.NewHTTPClient(t), calls: opts.calls}
	if r.calls == nil {
		r.calls = &calls{}
	}
	dbURL, stopDatabase := servicetest.ServeDatabase(t, filepath.Join(dir, "tasks.db"),
		database.Policy{Lease: lease, Retry: taskstore.RetryBackoff{Min: opts.retryMin}})
	storageURL := servicetest.ServeStorage(t, filepath.Join(dir, "images"), opts.wrapStorage)
	r.db = client.NewDatabase(r.hc, client.Static(servicetest.Addr(dbURL)))
	r.storage = client.NewStorage(r.hc, client.Static(servicetest.Addr(storageURL)))
	m := master.NewServer(r.db, r.storage, master.Limits{})
	if opts.wrapMaster != nil {
		m = opts.wrapMaster(m)
	}
	r.masterURL = servicetest.Serve(t, r.calls.wrap(m)).URL
	t.Cleanup(stopDatabase) // end long polls before the master's server waits for the requests holding them
	r.master = client.NewMaster(r.hc, client.Static(servicetest.Addr(r.masterURL)))
	return r
}

// upload sends img to the master and returns its task id.
func (r *rig) upload(t *testing.T, img image.Image) int64 {
	t.Helper()
	data := servicetest.EncodePNG(t, img)
	id, err := r.master.New(t.Context(), bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return id
}

// task returns task id as the database has it.
func (r *rig) task(t *testing.T, id int64) wire.Task {
	t.Helper()
	task, err := r.db.GetByID(t.Context(), id)
	if err != nil {
		t.Fatalf("database GetByID(%d): %v", id, err)
	}
	return task
}

// finishedImage returns the finished image storage holds for task id, with the lease token it was stored
// under; ok is false when there is none.
func finishedImage(t *testing.T, st *client.Storage, id int64) (b []byte, token int64, ok bool) {
	t.Helper()
	img, err := st.GetImage(t.Context(), id, wire.FinishedImage)
	if client.IsStatus(err, http.StatusNotFound) {
		return nil, 0, false
	}
	if err != nil {
		t.Fatalf("storage GetImage(%d, finished): %v", id, err)
	}
	defer img.Close()
	b, err = io.ReadAll(img)
	if err != nil {
		t.Fatalf("read finished image %d: %v", id, err)
	}
	return b, img.Token, true
}

// checkResult checks that the finished image of task id is orig with red and green swapped, stored under
// the lease token wantToken.
func checkResult(t *testing.T, st *client.Storage, id int64, orig image.Image, wantToken int64) {
	t.Helper()
	out, token, ok := finishedImage(t, st, id)
	if !ok {
		t.Fatalf("task %d has no finished image", id)
	}
	if token != wantToken {
		t.Errorf("finished image of task %d stored under lease token %d, want %d", id, token, wantToken)
	}
	result, _ := decode(t, "result", out)
	if err := testimage.CheckSwapped(orig, result); err != nil {
		t.Errorf("task %d: %v", id, err)
	}
}

// calls records the requests a handler receives.
type calls struct {
	mu   sync.Mutex
	reqs []*url.URL
}

func (c *calls) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		next.ServeHTTP(w, r)
	})
}

func (c *calls) record(r *http.Request) {
	u := *r.URL
	c.mu.Lock()
	c.reqs = append(c.reqs, &u)
	c.mu.Unlock()
}

// queries returns the query of each request to path, in order.
func (c *calls) queries(path string) []url.Values {
	c.mu.Lock()
	defer c.mu.Unlock()
	var qs []url.Values
	for _, u := range c.reqs {
		if u.Path == path {
			qs = append(qs, u.Query())
		}
	}
	return qs
}

func (c *calls) count(path string) int { return len(c.queries(path)) }

// workingHook sits in front of storage and slows down or refuses GETs of working images (a worker fetching
// its input).
type workingHook struct {
	delay time.Duration // before answering each GET; the GET is abandoned if its caller goes away
	// refuse, when set, is asked on each GET: true answers 503 at once.
	refuse func() bool

	gets, refused, abandoned atomic.Int64
	arrived                  chan struct{} // gets a value as each GET arrives, if there is room
}

func newWorkingHook(delay time.Duration) *workingHook {
	return &workingHook{delay: delay, arrived: make(chan struct{}, 100)}
}

func (h *workingHook) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/getImage" || r.URL.Query().Get("state") != wire.WorkingImage {
			next.ServeHTTP(w, r)
			return
		}
		h.gets.Add(1)
		select {
		case h.arrived <- struct{}{}:
		default:
		}
		if h.refuse != nil && h.refuse() {
			h.refused.Add(1)
			httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: storage busy")
			return
		}
		if h.delay > 0 {
			timer := time.NewTimer(h.delay)
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-r.Context().Done():
				h.abandoned.Add(1)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// waitArrived waits for a GET of a working image to reach storage.
func (h *workingHook) waitArrived(t *testing.T) {
	t.Helper()
	select {
	case <-h.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("no worker fetched a working image within 30s")
	}
}

// poll waits up to 30s for cond, failing the test with what when it never holds.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !servicetest.PollFor(30*time.Second, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestWorkerHeartbeatKeepsLease(t *testing.T) {
	// The task takes several leases to process; the heartbeat renews its lease all along, so the second
	// loop, waiting for work, never gets it.
	const lease = 500 * time.Millisecond
	hook := newWorkingHook(4 * lease)
	r := newRig(t, rigOptions{lease: lease, wrapStorage: hook.wrap})
	img := testimage.Pattern(16, 11)
	id := r.upload(t, img)
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 2, Wait: time.Second,
		Heartbeat: 50 * time.Millisecond, Logger: servicetest.Discard})

	task := r.waitSettled(t, id)
	if task.State != wire.Finished || task.Attempts != 1 || task.Error != "" {
		t.Errorf("task = %+v, want finished on its first attempt with no error", task)
	}
	if n := hook.gets.Load(); n != 1 {
		t.Errorf("working image fetched %d times, want once: the task was claimed again", n)
	}
	beats := r.calls.queries("/extendLease")
	if len(beats) < 2 {
		t.Errorf("%d heartbeats while the task took %v under a lease of %v", len(beats), hook.delay, lease)
	}
	for _, q := range beats {
		if q.Get("id") != strconv.FormatInt(id, 10) || q.Get("token") != strconv.FormatInt(task.Token, 10) {
			t.Errorf("heartbeat with %v, want id %d and the claim's token %d", q, id, task.Token)
		}
	}
	if task.Token == 0 {
		t.Fatal("claimed task has no lease token")
	}
	// Fencing: the result is stored under the claim's token, and finishing carried it too.
	checkResult(t, r.storage, id, img, task.Token)
	if fin := r.calls.queries("/finishTask"); len(fin) != 1 || fin[0].Get("token") != strconv.FormatInt(task.Token, 10) {
		t.Errorf("finish calls %v, want one with token %d", fin, task.Token)
	}
}

// staleLeaseMaster passes every request through to the master at masterURL except /extendLease, which it
// refuses the way the database refuses a superseded claim. It records what it receives.
func staleLeaseMaster(t *testing.T, hc *http.Client, masterURL string) (*httptest.Server, *calls) {
	t.Helper()
	target, err := url.Parse(masterURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: hc.Transport,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	seen := &calls{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.record(r)
		if r.URL.Path == "/extendLease" {
			httpapi.WriteText(w, http.StatusConflict, "Error: stale lease token for task "+r.URL.Query().Get("id"))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, seen
}

func TestWorkerStopsOnLostLease(t *testing.T) {
	hook := newWorkingHook(time.Minute) // the task would take a minute
	r := newRig(t, rigOptions{wrapStorage: hook.wrap})
	id := r.upload(t, testimage.Pattern(8, 12))
	fake, seen := staleLeaseMaster(t, r.hc, r.masterURL)
	stop := startWorker(t, worker.Config{
		Master: client.NewMaster(r.hc, client.Static(servicetest.Addr(fake.URL))), Storage: r.storage,
		Concurrency: 1, Wait: time.Second, Heartbeat: 50 * time.Millisecond, Logger: servicetest.Discard,
	})

	// The first claim took the task; a second claim means the loop is done with it.
	poll(t, "the worker to give the task up and claim again", func() bool { return seen.count("/getNewTask") >= 2 })
	poll(t, "the worker to abandon fetching the task's input", func() bool { return hook.abandoned.Load() == 1 })
	stop()

	if n := seen.count("/extendLease"); n != 1 {
		t.Errorf("%d heartbeats, want 1: the first refusal ends the work", n)
	}
	for _, path := range []string{"/finishTask", "/registerTaskFinished", "/failTask", "/releaseTask"} {
		if n := seen.count(path); n != 0 {
			t.Errorf("%d calls of %s for a task whose lease was lost, want none", n, path)
		}
	}
	if _, _, ok := finishedImage(t, r.storage, id); ok {
		t.Errorf("a result was stored for a task whose lease was lost")
	}
	if task := r.task(t, id); task.State != wire.InProgress || task.Attempts != 1 {
		t.Errorf("task = %+v, want left in progress (for its lease to lapse) after 1 attempt", task)
	}
}

// TestWorkerWaitsOutStorageOutage: storage unavailable for a moment (shorter than OutageWait) is waited
// out in place: the task finishes on its first attempt and no failure is reported.
func TestWorkerWaitsOutStorageOutage(t *testing.T) {
	hook := newWorkingHook(0)
	start := time.Now()
	hook.refuse = func() bool { return time.Since(start) < 1500*time.Millisecond }
	r := newRig(t, rigOptions{wrapStorage: hook.wrap})
	img := testimage.Pattern(12, 13)
	id := r.upload(t, img)
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		OutageWait: time.Minute, Logger: servicetest.Discard})

	task := r.waitSettled(t, id)
	if task.State != wire.Finished || task.Attempts != 1 || task.Retries != 0 || task.Error != "" {
		t.Errorf("task = %+v, want finished on its first attempt, nothing handed back", task)
	}
	if n := r.calls.count("/failTask"); n != 0 {
		t.Errorf("%d failures reported for a storage outage shorter than OutageWait", n)
	}
	if n := hook.refused.Load(); n < 2 {
		t.Errorf("storage refused %d fetches, want several (the outage was waited out by retrying)", n)
	}
	checkResult(t, r.storage, id, img, task.Token)
}

// TestWorkerHandsBackAfterOutageWait: storage unavailable for longer than OutageWait: the task is handed
// back as a transient failure (no attempt used, a retryAt set), claimed again after the backoff, and
// finishes once storage is back, with attempts left untouched however long storage stayed away.
func TestWorkerHandsBackAfterOutageWait(t *testing.T) {
	masterCalls := &calls{}
	hook := newWorkingHook(0)
	// Storage refuses until the worker has handed the task back twice.
	hook.refuse = func() bool { return masterCalls.count("/failTask") < 2 }
	r := newRig(t, rigOptions{wrapStorage: hook.wrap, calls: masterCalls, retryMin: 100 * time.Millisecond})
	img := testimage.Pattern(12, 14)
	id := r.upload(t, img)
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		OutageWait: 300 * time.Millisecond, Logger: servicetest.Discard})

	task := r.waitSettled(t, id)
	if task.State != wire.Finished || task.Attempts != 1 || task.Retries != 2 {
		t.Errorf("task = %+v, want finished, attempts 1 (transient failures are not attempts), retries 2", task)
	}
	for i, q := range r.calls.queries("/failTask") {
		if q.Get("transient") != "true" || q.Get("permanent") == "true" || !strings.Contains(q.Get("reason"), "503") || q.Get("token") == "" {
			t.Errorf("hand-back %d reported with %v, want transient=true, the claim's token and the storage error", i, q)
		}
	}
	checkResult(t, r.storage, id, img, task.Token)
}

// TestWorkerStoresResultThroughOutage: storage out of space (507) when the result is stored is waited
// out in place; the image work is not redone.
func TestWorkerStoresResultThroughOutage(t *testing.T) {
	var refused atomic.Int64
	start := time.Now()
	full := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/sendImage" && r.URL.Query().Get("state") == wire.FinishedImage && time.Since(start) < 1500*time.Millisecond {
				refused.Add(1)
				w.Header().Set("Retry-After", "1")
				httpapi.WriteText(w, http.StatusInsufficientStorage, "Error: image storage is out of space, retry later")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	hook := newWorkingHook(0)
	r := newRig(t, rigOptions{wrapStorage: func(h http.Handler) http.Handler { return full(hook.wrap(h)) }})
	img := testimage.Pattern(12, 15)
	id := r.upload(t, img)
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		OutageWait: time.Minute, Logger: servicetest.Discard})
	task := r.waitSettled(t, id)
	if task.State != wire.Finished || task.Attempts != 1 || r.calls.count("/failTask") != 0 {
		t.Errorf("task = %+v after %d failure reports, want finished on its first attempt, none reported", task, r.calls.count("/failTask"))
	}
	if n, fetched := refused.Load(), hook.gets.Load(); n < 1 || fetched != 1 {
		t.Errorf("storage refused %d results and served the input %d times; want the result retried, the input fetched once", n, fetched)
	}
	checkResult(t, r.storage, id, img, task.Token)
}

// TestWorkerFinishSurvivesMasterOutage: the master (or the database behind it) is unavailable when the
// worker reports the task finished: the report is retried in place until it gets through, so the task is
// not redone after its lease.
func TestWorkerFinishSurvivesMasterOutage(t *testing.T) {
	var refused atomic.Int64
	var down atomic.Bool
	down.Store(true)
	r := newRig(t, rigOptions{wrapMaster: func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if (r.URL.Path == "/finishTask" || r.URL.Path == "/registerTaskFinished") && down.Load() {
				refused.Add(1)
				w.Header().Set("Retry-After", "1")
				httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: the task database is temporarily unavailable, retry later")
				return
			}
			next.ServeHTTP(w, r)
		})
	}})
	img := testimage.Pattern(12, 16)
	id := r.upload(t, img)
	startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second, Logger: servicetest.Discard})
	poll(t, "a refused finish report", func() bool { return refused.Load() >= 2 })
	down.Store(false)
	task := r.waitSettled(t, id)
	if task.State != wire.Finished || task.Attempts != 1 {
		t.Errorf("task = %+v, want finished by its first claim's retried report", task)
	}
	checkResult(t, r.storage, id, img, task.Token)
}

func TestWorkerShutdown(t *testing.T) {
	t.Run("drain finishes the task", func(t *testing.T) {
		hook := newWorkingHook(time.Second)
		r := newRig(t, rigOptions{wrapStorage: hook.wrap})
		img := testimage.Pattern(10, 14)
		id := r.upload(t, img)
		stop := startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1,
			Wait: time.Second, Drain: time.Minute, Logger: servicetest.Discard})
		hook.waitArrived(t)
		stop() // returns once Run has (or fails the test after 10s)

		task := r.task(t, id)
		if task.State != wire.Finished || task.Attempts != 1 {
			t.Errorf("task = %+v, want finished during the drain on its first attempt", task)
		}
		checkResult(t, r.storage, id, img, task.Token)
		if n := r.calls.count("/releaseTask"); n != 0 {
			t.Errorf("%d releases of a task finished in time", n)
		}
		if n := r.calls.count("/getNewTask"); n != 1 {
			t.Errorf("%d claims, want 1: a stopping worker claims nothing more", n)
		}
	})
	t.Run("short drain releases the task", func(t *testing.T) {
		hook := newWorkingHook(time.Minute)
		r := newRig(t, rigOptions{wrapStorage: hook.wrap})
		id := r.upload(t, testimage.Pattern(10, 15))
		stop := startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1,
			Wait: time.Second, Drain: 100 * time.Millisecond, Logger: servicetest.Discard})
		hook.waitArrived(t)
		stop() // returns once Run has (or fails the test after 10s), well before the fetch would end

		task := r.task(t, id)
		if task.State != wire.NotStarted || task.Attempts != 0 {
			t.Errorf("task = %+v, want handed back: not started, the attempt not counted", task)
		}
		if n := r.calls.count("/releaseTask"); n != 1 {
			t.Errorf("%d releases, want 1", n)
		}
		for _, path := range []string{"/finishTask", "/registerTaskFinished", "/failTask"} {
			if n := r.calls.count(path); n != 0 {
				t.Errorf("%d calls of %s for a released task", n, path)
			}
		}
		// Another worker can take it at once: no lease to wait out.
		again, err := r.db.GetNewTask(t.Context(), 0)
		if err != nil || again.ID != id || again.Attempts != 1 {
			t.Errorf("claim after release = %+v, %v; want task %d on attempt 1", again, err, id)
		}
		poll(t, "the fetch to be abandoned", func() bool { return hook.abandoned.Load() == 1 })
	})
}

// resultHook sits in front of storage and holds every upload of a finished image (a worker storing its
// result) until released, counting them.
type resultHook struct {
	held    atomic.Int64
	release chan struct{}
}

func (h *resultHook) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/sendImage" && r.URL.Query().Get("state") == wire.FinishedImage {
			h.held.Add(1)
			select {
			case <-h.release:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// TestWorkerPrefetch: while one task's result is being stored (a slow disk flush, here held by the hook),
// the worker's CPU goes to the next task, which it has claimed ahead; and it holds no more than
// Concurrency + Prefetch tasks. Without prefetch it does one thing at a time.
func TestWorkerPrefetch(t *testing.T) {
	for _, tc := range []struct {
		prefetch int
		held     int64 // results being stored at once while the hook holds them
	}{
		{prefetch: 1, held: 2},
		{prefetch: 0, held: 1},
	} {
		t.Run(fmt.Sprintf("prefetch %d", tc.prefetch), func(t *testing.T) {
			hook := &resultHook{release: make(chan struct{})}
			r := newRig(t, rigOptions{wrapStorage: hook.wrap})
			imgs := make([]image.Image, 3)
			ids := make([]int64, len(imgs))
			for i := range imgs {
				imgs[i] = testimage.Pattern(12, int64(40+i))
				ids[i] = r.upload(t, imgs[i])
			}
			stop := startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Prefetch: tc.prefetch,
				Wait: time.Second, Logger: servicetest.Discard})
			poll(t, fmt.Sprintf("%d results being stored", tc.held), func() bool { return hook.held.Load() == tc.held })
			// Give the worker time to do more than it may: nothing more may arrive, and no third task be
			// claimed while its loops are all holding one.
			time.Sleep(200 * time.Millisecond)
			if n := hook.held.Load(); n != tc.held {
				t.Errorf("%d results being stored at once, want %d", n, tc.held)
			}
			// The loops waiting at once may share a claim: count the tasks asked for.
			asked := 0
			for _, n := range claimedPer(t, r.calls) {
				asked += n
			}
			if asked != int(tc.held) {
				t.Errorf("claims asked for %d tasks in all while every loop holds a task, want %d", asked, tc.held)
			}
			close(hook.release)
			for _, id := range ids {
				waitTask(t.Context(), t, r.db, id, "finished", func(task wire.Task) bool { return task.State == wire.Finished })
			}
			stop()
			for i, id := range ids {
				task := r.task(t, id)
				checkResult(t, r.storage, id, imgs[i], task.Token)
			}
		})
	}
}

// referenceMaster is a fake master of the reference design: a claim answers {"id":N,"state":1} (with token
// when it is not 0, as an imgmill master without heartbeats would), /registerTaskFinished answers
// "success", and there is no other worker-side endpoint.
func referenceMaster(t *testing.T, ids []int64, token int64) (*httptest.Server, *calls) {
	t.Helper()
	var mu sync.Mutex
	seen := &calls{}
	mux := httpapi.NewMux()
	mux.HandleFunc("POST /getNewTask", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if len(ids) == 0 {
			httpapi.WriteText(w, http.StatusBadRequest, servicetest.NoTaskReply)
			return
		}
		reply := fmt.Sprintf(`{"id":%d,"state":1}`, ids[0])
		if token != 0 {
			reply = fmt.Sprintf(`{"id":%d,"state":1,"token":%d}`, ids[0], token)
		}
		ids = ids[1:]
		httpapi.WriteText(w, http.StatusOK, reply)
	})
	mux.HandleFunc("POST /registerTaskFinished", func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteText(w, http.StatusOK, "success")
	})
	srv := httptest.NewServer(seen.wrap(mux))
	t.Cleanup(srv.Close)
	return srv, seen
}

func TestWorkerWithReferenceMaster(t *testing.T) {
	for _, tc := range []struct {
		name  string
		token int64
	}{
		{"no tokens", 0},
		{"tokens but no heartbeat endpoint", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each fetch takes several heartbeat intervals.
			hook := newWorkingHook(300 * time.Millisecond)
			hc := servicetest.NewHTTPClient(t)
			st := client.NewStorage(hc, client.Static(servicetest.Addr(servicetest.ServeStorage(t, t.TempDir(), hook.wrap))))
			ids := []int64{0, 1}
			imgs := make([]image.Image, len(ids))
			for i, id := range ids {
				imgs[i] = testimage.Pattern(9, int64(20+i))
				data := servicetest.EncodePNG(t, imgs[i])
				if err := st.SendImage(t.Context(), id, wire.WorkingImage, bytes.NewReader(data), int64(len(data))); err != nil {
					t.Fatal(err)
				}
			}
			fake, seen := referenceMaster(t, ids, tc.token)
			stop := startWorker(t, worker.Config{Master: client.NewMaster(hc, client.Static(servicetest.Addr(fake.URL))),
				Storage: st, Concurrency: 1, Heartbeat: 20 * time.Millisecond, Logger: servicetest.Discard})
			poll(t, "both tasks registered finished", func() bool { return seen.count("/registerTaskFinished") >= len(ids) })
			stop()

			fin := seen.queries("/registerTaskFinished")
			if len(fin) != len(ids) {
				t.Fatalf("%d tasks registered finished, want %d", len(fin), len(ids))
			}
			for i, q := range fin {
				if q.Get("id") != strconv.Itoa(i) {
					t.Errorf("register finished #%d for id %q, want %d", i, q.Get("id"), i)
				}
				if tc.token == 0 && q.Has("token") {
					t.Errorf("register finished with token %q, but the master issued none", q.Get("token"))
				}
				if tc.token != 0 && q.Get("token") != strconv.FormatInt(tc.token, 10) {
					t.Errorf("register finished with token %q, want the claim's %d", q.Get("token"), tc.token)
				}
			}
			for i, id := range ids {
				checkResult(t, st, id, imgs[i], tc.token)
			}
			beats := seen.count("/extendLease")
			t.Logf("%d heartbeat attempts", beats)
			if beats > len(ids) {
				t.Errorf("%d heartbeats to a master without the endpoint, want at most one per task", beats)
			}
			for _, path := range []string{"/failTask", "/releaseTask"} {
				if n := seen.count(path); n != 0 {
					t.Errorf("%d calls of %s", n, path)
				}
			}
		})
	}
}

// queueDirectly stores data as task's working image and activates it, past the master and its limits,
// as an upload from before the limits (or from another master) would be; it returns the task id.
func queueDirectly(ctx context.Context, t *testing.T, s *servicetest.Stack, data []byte) int64 {
	t.Helper()
	return queueDirectlyWithOp(ctx, t, s, data, "")
}

// queueDirectlyWithOp is queueDirectly for a task with the operation chain op, unchecked.
func queueDirectlyWithOp(ctx context.Context, t *testing.T, s *servicetest.Stack, data []byte, op string) int64 {
	t.Helper()
	id, err := s.Database.NewTask(ctx, client.NewTaskParams{Pending: true, Op: op})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Storage.SendImage(ctx, id, wire.WorkingImage, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.ActivateTask(ctx, id, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestWorkerFailsOversizedImage: an image over the worker's pixel limit fails its task at once and for
// good, with the reason, before any pixel is decoded: 300 bytes that claim 100000x100000 pixels (40 GB
// as RGBA) cost the worker nothing.
func TestWorkerFailsOversizedImage(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	huge := queueDirectly(ctx, t, s, servicetest.PaddedPNG(100_000, 100_000, 300))
	// The worker's own limit, lower than the default: a real 20x20 image is over 300 pixels.
	small := queueDirectly(ctx, t, s, servicetest.PatternPNG(t, 20, 3))
	fine := queueDirectly(ctx, t, s, servicetest.PatternPNG(t, 17, 4))

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 1, Wait: time.Second,
		MaxPixels: 300, Logger: servicetest.Discard})
	for _, tc := range []struct {
		id     int64
		reason string
	}{
		{huge, "image is 100000x100000 pixels, over the limit of 300 pixels in all: scale it down and upload it again"},
		{small, "image is 20x20 pixels, over the limit of 300 pixels in all: scale it down and upload it again"},
	} {
		task := waitTask(ctx, t, s.Database, tc.id, "failed", func(t wire.Task) bool { return t.State == wire.Failed })
		if task.Attempts != 1 || task.Error != tc.reason {
			t.Errorf("oversized task = %+v, want failed on its first attempt with %q", task, tc.reason)
		}
		if _, ok := s.StoredImage(t, tc.id, wire.FinishedImage); ok {
			t.Errorf("oversized task %d has a finished image", tc.id)
		}
	}
	waitFinished(ctx, t, s, fine)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
		t.Errorf("the worker allocated %d MB for three small files", alloc>>20)
	}

	// The default limit (50 MP) refuses the huge one too.
	stop()
	huge2 := queueDirectly(ctx, t, s, servicetest.PaddedPNG(100_000, 100_000, 300))
	startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 1, Wait: time.Second, Logger: servicetest.Discard})
	task := waitTask(ctx, t, s.Database, huge2, "failed", func(t wire.Task) bool { return t.State == wire.Failed })
	if want := "image is 100000x100000 pixels, over the limit of 50000000 pixels (50 MP) in all: scale it down and upload it again"; task.Attempts != 1 || task.Error != want {
		t.Errorf("oversized task = %+v, want failed on its first attempt with %q", task, want)
	}
}

// TestWorkerAppliesTheTasksChain: the operation chain travels with the task (uploaded through the
// master with ?op=) and the worker applies it in order, in the output format it names.
func TestWorkerAppliesTheTasksChain(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 1, Wait: time.Second, Logger: servicetest.Discard})
	src := testimage.Pattern(40, 7)
	src = src.SubImage(image.Rect(0, 0, 40, 24)).(*image.NRGBA) // 40x24: a rotation shows
	data, err := testimage.EncodePNG(src)
	if err != nil {
		t.Fatal(err)
	}
	up, err := s.Master.Upload(ctx, bytes.NewReader(data), int64(len(data)), client.UploadParams{Op: " Rotate:90 , grayscale,convert:jpeg:95"})
	id := up.ID
	if err != nil {
		t.Fatal(err)
	}
	task := waitTask(ctx, t, s.Database, id, "finished", func(t wire.Task) bool { return t.State == wire.Finished })
	if task.Op != "rotate:90,grayscale,convert:jpeg:95" {
		t.Errorf("task op = %q, want the canonical chain", task.Op)
	}
	out, ok := s.StoredImage(t, id, wire.FinishedImage)
	if !ok {
		t.Fatal("no finished image")
	}
	result, format := decode(t, "result", out)
	if format != "jpeg" || result.Bounds().Dx() != 24 || result.Bounds().Dy() != 40 {
		t.Fatalf("result is a %s of %v, want a 24x40 jpeg (rotated)", format, result.Bounds())
	}
	// Rotated clockwise: the result's top-right pixel is the source's top-left, in gray.
	r, g, b, _ := result.At(23, 0).RGBA()
	if d := int(r>>8) - int(g>>8); d > 2 || d < -2 || int(g>>8)-int(b>>8) > 2 || int(b>>8)-int(g>>8) > 2 {
		t.Errorf("result pixel (23,0) = %d,%d,%d, want gray", r>>8, g>>8, b>>8)
	}
	sr, sg, sb, _ := src.At(0, 0).RGBA()
	want := (299*int(sr>>8) + 587*int(sg>>8) + 114*int(sb>>8)) / 1000
	if d := int(g>>8) - want; d > 12 || d < -12 {
		t.Errorf("result pixel (23,0) gray %d, want about %d (the luma of the source's (0,0))", g>>8, want)
	}

	// A chain the master refuses never becomes a task.
	if _, err := s.Master.Upload(ctx, bytes.NewReader(data), int64(len(data)), client.UploadParams{Op: "blurr:2"}); !client.IsStatus(err, http.StatusBadRequest) ||
		!strings.Contains(err.Error(), `unknown operation "blurr"`) {
		t.Errorf("upload with op blurr:2 = %v, want 400 naming the unknown operation", err)
	}
	// One that cannot apply to this image (a crop outside it) is refused from the header too.
	if _, err := s.Master.Upload(ctx, bytes.NewReader(data), int64(len(data)), client.UploadParams{Op: "crop:10x10+500+500"}); !client.IsStatus(err, http.StatusBadRequest) {
		t.Errorf("upload with a crop outside the image = %v, want 400", err)
	}
	// And one whose result would be over the pixel limit is refused with 413.
	if _, err := s.Master.Upload(ctx, bytes.NewReader(data), int64(len(data)), client.UploadParams{Op: "resize:16384x16384:exact"}); !client.IsStatus(err, http.StatusRequestEntityTooLarge) {
		t.Errorf("upload resizing to 16384x16384 = %v, want 413", err)
	}
}

// The worker's PNG compression setting reaches the encoder: stored (level none), a PNG result is at
// least as large as its pixels.
func TestWorkerPNGCompression(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 1, Wait: time.Second,
		PNGCompression: png.NoCompression, Logger: servicetest.Discard})
	src := testimage.Pattern(64, 9)
	id := queueDirectly(ctx, t, s, servicetest.PatternPNG(t, 64, 9))
	waitFinished(ctx, t, s, id)
	out, ok := s.StoredImage(t, id, wire.FinishedImage)
	if !ok {
		t.Fatal("no finished image")
	}
	if len(out) < len(src.Pix) {
		t.Errorf("result of %d bytes for %d bytes of pixels: not stored uncompressed", len(out), len(src.Pix))
	}
	result, _ := decode(t, "result", out)
	if err := testimage.CheckSwapped(src, result); err != nil {
		t.Error(err)
	}
}

// The database keeps a chain as given (a newer master's operation, say); a worker that does not know
// an operation fails the task at once and for good, saying which, and goes on with the next.
func TestWorkerFailsUnknownOperation(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	unknown := queueDirectlyWithOp(ctx, t, s, servicetest.PatternPNG(t, 16, 1), "grayscale,sepia:0.8")
	fine := queueDirectly(ctx, t, s, servicetest.PatternPNG(t, 16, 2))
	startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 1, Wait: time.Second, Logger: servicetest.Discard})
	task := waitTask(ctx, t, s.Database, unknown, "failed", func(t wire.Task) bool { return t.State == wire.Failed })
	if task.Attempts != 1 || !strings.Contains(task.Error, `unknown operation "sepia"`) {
		t.Errorf("task with an unknown operation = %+v, want failed on its first attempt naming sepia", task)
	}
	waitFinished(ctx, t, s, fine)
}
