package master_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// expectRefused makes an upload with send and checks that the answer is exactly status and body, and
// that the upload left nothing behind: no task (so no stored image and nothing claimable either).
func (s stack) expectRefused(t *testing.T, what string, send func(*testing.T, []byte) servicetest.Reply, upload []byte, status int, body string) {
	t.Helper()
	before := s.listIDs(t)
	r := send(t, upload)
	if r.Status != status || r.Body != body {
		t.Errorf("%s: POST /new = %d %q, want %d %q", what, r.Status, r.Body, status, body)
	}
	if err := servicetest.ConventionError(http.MethodPost, "/new", r); err != nil {
		t.Error(err)
	}
	if after := s.listIDs(t); len(after) != len(before) {
		t.Errorf("%s: the refused upload created a task: %v before, %v after", what, before, after)
	}
}

// expectStored checks that an upload was accepted and stored exactly as sent.
func (s stack) expectStored(t *testing.T, what string, r servicetest.Reply, body []byte) int64 {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("%s: POST /new = %d %q, want 200", what, r.Status, r.Body)
	}
	id := servicetest.ParseID(t, r.Body)
	if got, ok := s.StoredImage(t, id, wire.WorkingImage); !ok || !bytes.Equal(got, body) {
		t.Errorf("%s: stored %d bytes (found %v), want the %d uploaded", what, len(got), ok, len(body))
	}
	return id
}

func TestNewRefusesHugeImageFromItsHeader(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	// 300 bytes that claim 100000x100000 pixels: 40 GB as RGBA, were anyone to decode it.
	huge := servicetest.PaddedPNG(100_000, 100_000, 300)
	const want = "Error: image is 100000x100000 pixels, over the limit of 16384 pixels per side: scale it down and upload it again"
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s.expectRefused(t, "100000x100000 PNG", s.upload, huge, http.StatusRequestEntityTooLarge, want)
	s.expectRefused(t, "100000x100000 PNG, chunked", s.postChunked, huge, http.StatusRequestEntityTooLarge, want)
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("refusing two 300-byte uploads allocated %d MB", alloc>>20)
	}
	if ids := s.listIDs(t); len(ids) != 0 {
		t.Errorf("refused uploads created tasks %v", ids)
	}
	s.ExpectNoClaimable(t)
	if _, ok := s.StoredImage(t, 0, wire.WorkingImage); ok {
		t.Error("a refused upload was stored")
	}
	if st, err := s.Database.Stats(t.Context()); err != nil || st != (wire.Stats{}) {
		t.Errorf("database stats after refusals = %+v, %v; want all zero", st, err)
	}

	// Within both default limits, on the edge: accepted (the header is all the master reads).
	for _, wh := range [][2]int{{16384, 3051}, {3051, 16384}} {
		body := servicetest.PaddedPNG(wh[0], wh[1], 300)
		s.expectStored(t, fmt.Sprintf("%dx%d PNG", wh[0], wh[1]), s.upload(t, body), body)
	}
	// Over the default pixel limit with both sides within theirs.
	s.expectRefused(t, "10000x5001 PNG", s.upload, servicetest.PaddedPNG(10_000, 5001, 300), http.StatusRequestEntityTooLarge,
		"Error: image is 10000x5001 pixels, over the limit of 50000000 pixels (50 MP) in all: scale it down and upload it again")
}

func TestNewMaxDimension(t *testing.T) {
	s := newStack(t, servicetest.Options{Limits: master.Limits{MaxDimension: 100}})
	for _, tc := range []struct {
		name string
		body []byte
		want string // "" for accepted
	}{
		{"png 100x100", servicetest.PatternPNG(t, 100, 1), ""},
		{"png 101x1", servicetest.PaddedPNG(101, 1, 200), "image is 101x1 pixels, over the limit of 100 pixels per side: scale it down and upload it again"},
		{"png 1x101", servicetest.PaddedPNG(1, 101, 200), "image is 1x101 pixels, over the limit of 100 pixels per side: scale it down and upload it again"},
		{"png 101x101", servicetest.PatternPNG(t, 101, 2), "image is 101x101 pixels, over the limit of 100 pixels per side: scale it down and upload it again"},
		{"jpeg 100x7", encodeJPEG(t, 100, 7), ""},
		{"jpeg 7x101", encodeJPEG(t, 7, 101), "image is 7x101 pixels, over the limit of 100 pixels per side: scale it down and upload it again"},
		{"gif 100x3", encodeGIF(t, 100, 3), ""},
		{"gif 101x3", encodeGIF(t, 101, 3), "image is 101x3 pixels, over the limit of 100 pixels per side: scale it down and upload it again"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "" {
				id := s.expectStored(t, tc.name, s.upload(t, tc.body), tc.body)
				s.claim(t, id) // leave nothing claimable
				return
			}
			s.expectRefused(t, tc.name, s.upload, tc.body, http.StatusRequestEntityTooLarge, "Error: "+tc.want)
		})
	}
}

func TestNewMaxPixels(t *testing.T) {
	s := newStack(t, servicetest.Options{Limits: master.Limits{MaxDimension: 10_000, MaxPixels: 10_000}})
	for _, tc := range []struct {
		w, h int
		ok   bool
	}{{100, 100, true}, {10_000, 1, true}, {1, 10_000, true}, {101, 100, false}, {5000, 3, false}, {10_000, 2, false}} {
		name := fmt.Sprintf("%dx%d", tc.w, tc.h)
		body := servicetest.PaddedPNG(tc.w, tc.h, 100)
		if tc.ok {
			s.claim(t, s.expectStored(t, name, s.upload(t, body), body))
			continue
		}
		s.expectRefused(t, name, s.upload, body, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("Error: image is %dx%d pixels, over the limit of 10000 pixels in all: scale it down and upload it again", tc.w, tc.h))
	}
}

// TestNewMeasuresJPEGAfterMetadata: a JPEG's size is in its frame header, which can follow large
// metadata segments (Exif, ICC profiles); the master reads on until it finds it, and stores every byte.
func TestNewMeasuresJPEGAfterMetadata(t *testing.T) {
	s := newStack(t, servicetest.Options{Limits: master.Limits{MaxDimension: 100}})
	small := testimage.InsertJPEGMetadata(encodeJPEG(t, 80, 50), 200<<10)
	big := testimage.InsertJPEGMetadata(encodeJPEG(t, 200, 50), 200<<10)
	for _, chunked := range []bool{false, true} {
		post := s.upload
		if chunked {
			post = s.postChunked
		}
		what := fmt.Sprintf("chunked %v", chunked)
		s.claim(t, s.expectStored(t, "80x50 JPEG after 200 KiB of metadata, "+what, post(t, small), small))
		s.expectRefused(t, "200x50 JPEG after 200 KiB of metadata, "+what, post, big, http.StatusRequestEntityTooLarge,
			"Error: image is 200x50 pixels, over the limit of 100 pixels per side: scale it down and upload it again")
	}
	// The search has an end: no size within the first 256 KiB is refused.
	lost := testimage.InsertJPEGMetadata(encodeJPEG(t, 8, 8), imageop.MaxHeaderLen)
	s.expectRefused(t, "JPEG after 256 KiB of metadata", s.upload, lost, http.StatusUnsupportedMediaType,
		"Error: cannot read this JPEG: no image size within its first 262144 bytes (too much metadata before it): save it as PNG or JPEG and upload it again")
}

func TestNewRefusesBadHeaders(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	png := servicetest.PatternPNG(t, 32, 5)
	badCRC := bytes.Clone(png)
	badCRC[testimage.PNGHeaderLen-1] ^= 0xff
	jpg := encodeJPEG(t, 16, 16)
	for _, tc := range []struct {
		name, body, want string
	}{
		{"text", "hello, this is not an image at all", "Error: " + imageop.NotImageMessage},
		{"png magic only", pngMagic, "Error: cannot read this PNG: the file is cut short: it ends after 8 bytes, before the image size (unexpected EOF): save it as PNG or JPEG and upload it again"},
		{"png cut in IHDR", string(png[:20]), "Error: cannot read this PNG: the file is cut short: it ends after 20 bytes, before the image size (unexpected EOF): save it as PNG or JPEG and upload it again"},
		{"jpeg cut before its size", string(jpg[:100]), "Error: cannot read this JPEG: the file is cut short: it ends after 100 bytes, before the image size (unexpected EOF): save it as PNG or JPEG and upload it again"},
		{"gif cut", "GIF89a\x10\x00\x10", "Error: cannot read this GIF: the file is cut short: it ends after 9 bytes, before the image size (gif: reading header: unexpected EOF): save it as PNG or JPEG and upload it again"},
		{"png bad IHDR checksum", string(badCRC), "Error: cannot read this PNG: its header is malformed (png: invalid format: invalid checksum): save it as PNG or JPEG and upload it again"},
		{"png zero width", string(servicetest.PaddedPNG(0, 9, 100)), "Error: cannot read this PNG: its header is malformed (png: invalid format: non-positive dimension): save it as PNG or JPEG and upload it again"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.expectRefused(t, tc.name, s.upload, []byte(tc.body), http.StatusUnsupportedMediaType, tc.want)
			s.expectRefused(t, tc.name+", chunked", s.postChunked, []byte(tc.body), http.StatusUnsupportedMediaType, tc.want)
		})
	}
}

// TestNewTypeFromBytes: the type is the bytes', whatever Content-Type the client claims.
func TestNewTypeFromBytes(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	post := func(body []byte, contentType string) servicetest.Reply {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.MasterURL+"/new", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", contentType)
		return servicetest.MustDo(t, s.HTTP, req)
	}
	labelled := func(contentType string) func(*testing.T, []byte) servicetest.Reply {
		return func(_ *testing.T, body []byte) servicetest.Reply { return post(body, contentType) }
	}
	png := servicetest.PatternPNG(t, 8, 6)
	id := s.expectStored(t, "PNG labelled text/html", post(png, "text/html"), png)
	img, err := s.Storage.GetImage(t.Context(), id, wire.WorkingImage)
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	if img.ContentType != "image/png" {
		t.Errorf("stored upload served as %q, want image/png", img.ContentType)
	}
	s.claim(t, id)
	s.expectRefused(t, "HTML labelled image/png", labelled("image/png"), []byte("<html><script>alert(1)</script></html>"),
		http.StatusUnsupportedMediaType, "Error: "+imageop.NotImageMessage)
	s.expectRefused(t, "HTML labelled image/jpeg", labelled("image/jpeg"), []byte("<html>hello</html>"),
		http.StatusUnsupportedMediaType, "Error: "+imageop.NotImageMessage)
}

// statsCounter is a proxy in front of the database that counts GET /stats; with refuse set it answers
// /stats with 404, as a database without it would.
type statsCounter struct {
	calls  atomic.Int64
	refuse atomic.Bool
	proxy  atomic.Pointer[httputil.ReverseProxy]
}

// newCountedStack is a stack whose master reaches the database through a statsCounter.
func newCountedStack(t *testing.T, limits master.Limits) (stack, *statsCounter) {
	t.Helper()
	c := &statsCounter{}
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stats" {
			c.calls.Add(1)
			if c.refuse.Load() {
				http.Error(w, "Error: no endpoint /stats", http.StatusNotFound)
				return
			}
		}
		c.proxy.Load().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s := newStack(t, servicetest.Options{Limits: limits, MasterDatabaseAddr: servicetest.Addr(srv.URL)})
	target, err := url.Parse(s.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = transport
	c.proxy.Store(proxy)
	return s, c
}

// waitCache outlasts the master's cache of the queue count.
func waitCache() { time.Sleep(1100 * time.Millisecond) }

// TestNewQueueCap: with MaxQueued tasks queued the master refuses uploads, 503 with Retry-After, before
// reading them; once workers take tasks (and the cached count expires) uploads are accepted again.
func TestNewQueueCap(t *testing.T) {
	s, stats := newCountedStack(t, master.Limits{MaxQueued: 3})
	ctx := t.Context()
	start := time.Now()
	var ids []int64
	for i := range 3 {
		ids = append(ids, s.uploadOK(t, servicetest.PatternPNG(t, 8, int64(i))))
	}
	// The 4th is refused at once, although the count the master read from the database (before the
	// first upload) is less than a second old: it counts its own uploads meanwhile.
	const full = "Error: too many queued tasks (3), retry later"
	for _, chunked := range []bool{false, true} {
		var r servicetest.Reply
		if chunked {
			r = s.postChunked(t, servicetest.PatternPNG(t, 8, 9))
		} else {
			r = s.upload(t, servicetest.PatternPNG(t, 8, 9))
		}
		if r.Status != http.StatusServiceUnavailable || r.Body != full {
			t.Fatalf("4th upload (chunked %v): %d %q, want 503 %q", chunked, r.Status, r.Body, full)
		}
		if ra := r.Header.Get("Retry-After"); ra != "5" {
			t.Errorf("4th upload: Retry-After %q, want 5 (seconds)", ra)
		}
	}
	if got := s.listIDs(t); len(got) != 3 {
		t.Errorf("tasks after the refusals: %v, want the 3 accepted", got)
	}
	if n, max := stats.calls.Load(), 1+int64(time.Since(start)/time.Second); n < 1 || n > max {
		t.Errorf("the master asked the database for stats %d times in %v, want 1 to %d", n, time.Since(start), max)
	}
	if st, err := s.Database.Stats(ctx); err != nil || st != (wire.Stats{Queued: 3}) {
		t.Errorf("database stats = %+v, %v; want 3 queued", st, err)
	}

	// Still full after the cache expires: the database says so.
	waitCache()
	servicetest.ExpectError(t, "upload with 3 queued", s.upload(t, servicetest.PatternPNG(t, 8, 10)), http.StatusServiceUnavailable)

	// Workers take two; within a second uploads are accepted again, up to the cap.
	first := s.claim(t, ids[0])
	s.claim(t, ids[1])
	if err := s.Database.FinishTask(ctx, ids[0], first.Token); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Database.Stats(ctx); err != nil || st != (wire.Stats{Queued: 1, Processing: 1, Finished: 1}) {
		t.Errorf("database stats = %+v, %v; want 1 queued, 1 processing, 1 finished", st, err)
	}
	var r servicetest.Reply
	if !servicetest.PollFor(5*time.Second, func() bool {
		r = s.upload(t, servicetest.PatternPNG(t, 8, 11))
		return r.Status != http.StatusServiceUnavailable
	}) {
		t.Fatalf("uploads still refused with 1 task queued: %d %q", r.Status, r.Body)
	}
	if r.Status != http.StatusOK {
		t.Fatalf("upload after workers took tasks: %d %q", r.Status, r.Body)
	}
	s.uploadOK(t, servicetest.PatternPNG(t, 8, 12))
	servicetest.ExpectError(t, "upload with 3 queued again", s.upload(t, servicetest.PatternPNG(t, 8, 13)), http.StatusServiceUnavailable)
}

// TestNewQueueCapCountsNoPending: uploads not complete yet (pending tasks: an upload under way, or one
// that broke off and was never given up) are no work for the workers and do not fill the queue.
func TestNewQueueCapCountsNoPending(t *testing.T) {
	s, _ := newCountedStack(t, master.Limits{MaxQueued: 2})
	for range 5 {
		if _, err := s.Database.NewTask(t.Context(), client.NewTaskParams{Pending: true}); err != nil {
			t.Fatal(err)
		}
	}
	waitCache()
	s.uploadOK(t, servicetest.PatternPNG(t, 8, 20))
	s.uploadOK(t, servicetest.PatternPNG(t, 8, 21))
	servicetest.ExpectError(t, "upload with 2 queued and 5 pending", s.upload(t, servicetest.PatternPNG(t, 8, 22)), http.StatusServiceUnavailable)
	if st, err := s.Database.Stats(t.Context()); err != nil || st != (wire.Stats{Queued: 2, Pending: 5}) {
		t.Errorf("database stats = %+v, %v; want 2 queued, 5 pending", st, err)
	}
}

// TestNewQueueCountShared: however many uploads arrive at once, the master asks the database for the
// count once per second.
func TestNewQueueCountShared(t *testing.T) {
	s, stats := newCountedStack(t, master.Limits{})
	const n = 12
	body := servicetest.PatternPNG(t, 8, 1)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			r, err := servicetest.Send(t.Context(), s.HTTP, http.MethodPost, s.MasterURL+"/new", bytes.NewReader(body))
			if err == nil && r.Status != http.StatusOK {
				err = fmt.Errorf("%d %q", r.Status, r.Body)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	for i, err := range errs {
		if err != nil {
			t.Errorf("upload %d: %v", i, err)
		}
	}
	if calls, max := stats.calls.Load(), 1+int64(elapsed/time.Second); calls < 1 || calls > max {
		t.Errorf("%d concurrent uploads in %v made %d stats calls, want 1 to %d", n, elapsed, calls, max)
	}
}

// TestNewQueueCapOff: with no cap the master never counts; when counting fails the uploads go ahead.
func TestNewQueueCapOff(t *testing.T) {
	s, stats := newCountedStack(t, master.Limits{MaxQueued: master.NoLimit})
	for i := range 5 {
		s.uploadOK(t, servicetest.PatternPNG(t, 8, int64(i)))
	}
	if n := stats.calls.Load(); n != 0 {
		t.Errorf("the master asked for stats %d times with no queue cap", n)
	}

	s, stats = newCountedStack(t, master.Limits{MaxQueued: 1})
	stats.refuse.Store(true)
	start := time.Now()
	for i := range 3 {
		s.uploadOK(t, servicetest.PatternPNG(t, 8, int64(i)))
	}
	if n, max := stats.calls.Load(), 1+int64(time.Since(start)/time.Second); n < 1 || n > max {
		t.Errorf("stats asked %d times in %v while failing, want 1 to %d (failures are cached too)", n, time.Since(start), max)
	}
	// Once counting works again, the cap holds.
	stats.refuse.Store(false)
	waitCache()
	r := s.upload(t, servicetest.PatternPNG(t, 8, 4))
	if r.Status != http.StatusServiceUnavailable || r.Body != "Error: too many queued tasks (3), retry later" {
		t.Errorf("upload with 3 queued and a cap of 1: %d %q, want 503", r.Status, r.Body)
	}
}

func TestLimitsWithDefaults(t *testing.T) {
	got := master.Limits{}.WithDefaults()
	want := master.Limits{MaxUpload: 256 << 20, MaxDimension: 16384, MaxPixels: 50_000_000, MaxQueued: 10000,
		MaxTaskCost: 30 * time.Second, MaxTaskMemory: 512 << 20}
	if got != want {
		t.Errorf("Limits{}.WithDefaults() = %+v, want %+v", got, want)
	}
	off := master.Limits{MaxUpload: master.NoLimit, MaxDimension: master.NoLimit, MaxPixels: master.NoLimit, MaxQueued: master.NoLimit,
		MaxTaskCost: master.NoLimit, MaxTaskMemory: master.NoLimit}
	if got := off.WithDefaults(); got != off {
		t.Errorf("NoLimit fields changed by WithDefaults: %+v", got)
	}
	if got := (master.Limits{MaxQueued: 7}).WithDefaults().MaxQueued; got != 7 {
		t.Errorf("MaxQueued 7 became %d", got)
	}
}

// TestTooLargeError: the size refusal in units a person reads, the reason first and then what to do.
func TestTooLargeError(t *testing.T) {
	const mb = 1 << 20
	const advice = ": make it smaller (fewer pixels, or saved as JPEG) and upload it again"
	for _, c := range []struct {
		size, limit int64
		want        string
	}{
		{54_000_000, 20 * mb, "the image is 51.5 MB; the largest upload is 20 MB" + advice},
		{-1, 20 * mb, "the image is larger than 20 MB, the largest upload" + advice},
		{20*mb + 1, 20 * mb, "the image is larger than 20 MB, the largest upload" + advice}, // the same when rounded
		{100_000, 4000, "the image is 97.7 KB; the largest upload is 3.9 KB" + advice},
		{1001, 1000, "the image is 1001 bytes; the largest upload is 1000 bytes" + advice},
		{3 << 30, 256 * mb, "the image is 3 GB; the largest upload is 256 MB" + advice},
	} {
		err := master.TooLargeError(c.size, c.limit)
		if httpapi.StatusOf(err) != http.StatusRequestEntityTooLarge || httpapi.ErrorMessage(err) != c.want {
			t.Errorf("TooLargeError(%d, %d) = %d %q, want 413 %q", c.size, c.limit, httpapi.StatusOf(err), httpapi.ErrorMessage(err), c.want)
		}
	}
}

// TestRetryQueueCap: a retry queues work as an upload does, so with MaxQueued tasks queued it is
// refused as one, and the task stays as it was.
func TestRetryQueueCap(t *testing.T) {
	s, _ := newCountedStack(t, master.Limits{MaxQueued: 1})
	cancelled := s.uploadOK(t, servicetest.PatternPNG(t, 8, 60))
	if r := s.cancel(t, cancelled); r.Status != http.StatusOK {
		t.Fatalf("cancel: %d %q", r.Status, r.Body)
	}
	waitCache() // the master counted its own upload as queued until it reads the count again
	s.uploadOK(t, servicetest.PatternPNG(t, 8, 61))
	r := s.retry(t, cancelled)
	if r.Status != http.StatusServiceUnavailable || r.Body != "Error: too many queued tasks (1), retry later" || r.Header.Get("Retry-After") == "" {
		t.Errorf("retry with the queue full: %d %q, want 503 with Retry-After", r.Status, r.Body)
	}
	if task := s.task(t, cancelled); task.State != wire.Cancelled {
		t.Errorf("task after the refused retry: %+v, want it cancelled still", task)
	}
}
