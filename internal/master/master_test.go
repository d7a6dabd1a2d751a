package master_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// stack is a servicetest.Stack with the master's own calls.
type stack struct{ *servicetest.Stack }

func newStack(t *testing.T, opts servicetest.Options) stack {
	t.Helper()
	return stack{servicetest.NewStack(t, opts)}
}

func (s stack) call(t *testing.T, method, url string, body io.Reader) servicetest.Reply {
	t.Helper()
	return servicetest.Call(t, s.HTTP, method, url, body)
}

// upload POSTs body to the master's /new.
func (s stack) upload(t *testing.T, body []byte) servicetest.Reply {
	t.Helper()
	return s.call(t, http.MethodPost, s.MasterURL+"/new", bytes.NewReader(body))
}

// uploadOK uploads body and returns the id answered.
func (s stack) uploadOK(t *testing.T, body []byte) int64 {
	t.Helper()
	r := s.upload(t, body)
	if r.Status != http.StatusOK {
		t.Fatalf("POST /new: %d %q, want 200", r.Status, r.Body)
	}
	return servicetest.ParseID(t, r.Body)
}

// storeResult stores a result for task id under token, as a worker does before it registers the task
// finished (the master refuses a finish without one).
func (s stack) storeResult(t *testing.T, id, token int64) {
	t.Helper()
	result := servicetest.PatternPNG(t, 4, id)
	if err := s.Storage.SendResult(t.Context(), id, token, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
}

// postChunked POSTs body to the master's /new with no length (sent chunked).
func (s stack) postChunked(t *testing.T, body []byte) servicetest.Reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.MasterURL+"/new", io.NopCloser(bytes.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	return servicetest.MustDo(t, s.HTTP, req)
}

// listIDs returns the ids of every task the database holds.
func (s stack) listIDs(t *testing.T) []int64 {
	t.Helper()
	list, err := s.Database.List(t.Context())
	if err != nil {
		t.Fatalf("database list: %v", err)
	}
	var ids []int64
	for line := range strings.Lines(list) {
		var task wire.Task
		if err := json.Unmarshal([]byte(line), &task); err != nil {
			t.Fatalf("list line %q: %v", line, err)
		}
		ids = append(ids, task.ID)
	}
	return ids
}

const pngMagic = "\x89PNG\r\n\x1a\n"

func TestNewStoresImageAndActivatesTask(t *testing.T) {
	// Whenever the image reaches storage, the task must exist but not be claimable yet.
	hc := servicetest.NewHTTPClient(t)
	var (
		dbURL     string
		mu        sync.Mutex
		sendSeen  int
		hookFault []string
	)
	hook := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/sendImage" && r.URL.Query().Get("state") == wire.WorkingImage {
				id := r.URL.Query().Get("id")
				ctx := r.Context()
				var faults []string
				byID, err := servicetest.Send(ctx, hc, http.MethodGet, dbURL+"/getById?id="+id, nil)
				if err != nil || byID.Status != http.StatusOK {
					faults = append(faults, fmt.Sprintf("task %s does not exist when its image is sent: %v %+v", id, err, byID))
				}
				claim, err := servicetest.Send(ctx, hc, http.MethodPost, dbURL+"/getNewTask", nil)
				if err != nil || claim.Status != http.StatusBadRequest || claim.Body != servicetest.NoTaskReply {
					faults = append(faults, fmt.Sprintf("task claimable before its image is stored: %v %d %q", err, claim.Status, claim.Body))
				}
				mu.Lock()
				sendSeen++
				hookFault = append(hookFault, faults...)
				mu.Unlock()
			}
			next.ServeHTTP(w, r)
		})
	}
	s := newStack(t, servicetest.Options{WrapStorage: hook})
	dbURL = s.DatabaseURL

	img := servicetest.PatternPNG(t, 48, 1)
	id := s.uploadOK(t, img)

	mu.Lock()
	if sendSeen != 1 {
		t.Errorf("storage saw %d working uploads, want 1", sendSeen)
	}
	for _, f := range hookFault {
		t.Error(f)
	}
	mu.Unlock()

	task, err := s.Database.GetByID(t.Context(), id)
	if err != nil {
		t.Fatalf("database GetByID(%d): %v", id, err)
	}
	if task.ID != id || task.State != wire.NotStarted {
		t.Errorf("task after /new = %+v, want id %d state %d", task, id, wire.NotStarted)
	}
	got, ok := s.StoredImage(t, id, wire.WorkingImage)
	if !ok {
		t.Fatalf("no working image stored for task %d", id)
	}
	if !bytes.Equal(got, img) {
		t.Errorf("stored working image differs from the upload (%d bytes, want %d)", len(got), len(img))
	}
	if _, ok := s.StoredImage(t, id, wire.FinishedImage); ok {
		t.Errorf("a finished image exists for task %d right after upload", id)
	}
	claimed, err := s.Database.GetNewTask(t.Context(), 0)
	if err != nil {
		t.Fatalf("task %d is not claimable after /new: %v", id, err)
	}
	if claimed.ID != id || claimed.State != wire.InProgress {
		t.Errorf("claimed %+v, want task %d in progress", claimed, id)
	}
	s.ExpectNoClaimable(t)

	// Ids are answered in creation order, one task per upload.
	id2 := s.uploadOK(t, servicetest.PatternPNG(t, 8, 2))
	if id2 == id {
		t.Errorf("second upload got the same id %d", id)
	}
}

func TestNewAcceptsEveryFormat(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	gif89a := encodeGIF(t, 9, 4)
	gif87a := bytes.Replace(gif89a, []byte("GIF89a"), []byte("GIF87a"), 1) // a plain GIF is valid as either
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"png", servicetest.PatternPNG(t, 16, 3)},
		{"jpeg", encodeJPEG(t, 12, 5)},
		{"gif87a", gif87a},
		{"gif89a", gif89a},
		// The master reads the header only: what follows is the workers' business.
		{"png header and junk", servicetest.PaddedPNG(16, 16, 200)},
		{"png header only", testimage.PNGHeader(3, 2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := s.uploadOK(t, tc.body)
			got, ok := s.StoredImage(t, id, wire.WorkingImage)
			if !ok || !bytes.Equal(got, tc.body) {
				t.Errorf("stored %q (found %v), want the upload %q", got, ok, tc.body)
			}
		})
	}
}

func TestNewRefusals(t *testing.T) {
	const maxUpload = 64 << 10
	s := newStack(t, servicetest.Options{MaxUpload: maxUpload})
	big := func(n int) []byte { return servicetest.PaddedPNG(64, 64, n) }
	for _, tc := range []struct {
		name    string
		body    []byte
		chunked bool
		status  int
	}{
		{"empty", nil, false, http.StatusBadRequest},
		{"empty chunked", nil, true, http.StatusBadRequest},
		{"text", []byte("hello, this is not an image at all"), false, http.StatusUnsupportedMediaType},
		{"text chunked", []byte("hello, this is not an image at all"), true, http.StatusUnsupportedMediaType},
		{"short", []byte("\x89PN"), false, http.StatusUnsupportedMediaType},
		{"png magic only", []byte(pngMagic), false, http.StatusUnsupportedMediaType},
		{"bmp", append([]byte("BM"), make([]byte, 64)...), false, http.StatusUnsupportedMediaType},
		{"too large", big(maxUpload + 1), false, http.StatusRequestEntityTooLarge},
		{"too large chunked", big(maxUpload + 1), true, http.StatusRequestEntityTooLarge},
		{"far too large chunked", big(4 * maxUpload), true, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r servicetest.Reply
			if tc.chunked {
				r = s.postChunked(t, tc.body)
			} else {
				r = s.upload(t, tc.body)
			}
			servicetest.ExpectError(t, "POST /new", r, tc.status)
			s.ExpectNoClaimable(t)
			// A refusal after the task was created (a chunked body found too large on the way) gives
			// it up at once: it is failed, not left pending.
			if st, err := s.Database.Stats(t.Context()); err != nil || st.Pending != 0 {
				t.Errorf("stats %+v, %v: want no task left pending", st, err)
			}
			for _, id := range s.listIDs(t) {
				if _, ok := s.StoredImage(t, id, wire.WorkingImage); ok {
					t.Errorf("a refused upload left a working image for task %d", id)
				}
			}
		})
	}

	// The limit itself is allowed, with or without a length.
	t.Run("exactly max", func(t *testing.T) {
		body := big(maxUpload)
		id := s.uploadOK(t, body)
		r := s.postChunked(t, body)
		if r.Status != http.StatusOK {
			t.Fatalf("chunked upload of exactly max bytes: %d %q", r.Status, r.Body)
		}
		id2 := servicetest.ParseID(t, r.Body)
		for _, id := range []int64{id, id2} {
			got, ok := s.StoredImage(t, id, wire.WorkingImage)
			if !ok || !bytes.Equal(got, body) {
				t.Errorf("task %d: stored %d bytes (found %v), want the %d uploaded", id, len(got), ok, len(body))
			}
		}
	})
}

// deadAddr is the address of a server that has been shut down: nothing answers there.
func deadAddr() string {
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	return servicetest.Addr(down.URL)
}

// TestNewStorageDown: storage unreachable is a transient failure: 503 with Retry-After, after the
// master's client tried for a while; the pending task is given up at once, not left to expire.
func TestNewStorageDown(t *testing.T) {
	s := newStack(t, servicetest.Options{MasterStorageAddr: deadAddr()})

	r := s.upload(t, servicetest.PatternPNG(t, 16, 4))
	if r.Status != http.StatusServiceUnavailable || r.Body != "Error: storage unavailable" || r.Header.Get("Retry-After") == "" {
		t.Errorf("POST /new with storage down: %d %q Retry-After %q, want 503 \"Error: storage unavailable\" with Retry-After",
			r.Status, r.Body, r.Header.Get("Retry-After"))
	}
	s.ExpectNoClaimable(t)
	s.expectAbandoned(t, 0)
}

// expectAbandoned checks that task id, the pending task of a failed upload, was failed at once.
func (s stack) expectAbandoned(t *testing.T, id int64) {
	t.Helper()
	task := s.task(t, id)
	if task.State != wire.Failed || !strings.HasPrefix(task.Error, "upload never completed") {
		t.Errorf("task %d of the failed upload = %+v, want failed at once, \"upload never completed: ...\"", id, task)
	}
	stats, err := s.Database.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if stats.Pending != 0 {
		t.Errorf("%d pending tasks left behind", stats.Pending)
	}
}

// TestNewStorageFull: storage out of space answers 507 with Retry-After; the master passes both on and
// gives the pending task up. Once storage has room again, the retry with the same Idempotency-Key is
// accepted.
func TestNewStorageFull(t *testing.T) {
	var full atomic.Bool
	full.Store(true)
	hook := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/sendImage" && full.Load() {
				w.Header().Set("Retry-After", "10")
				httpapi.WriteText(w, http.StatusInsufficientStorage, "Error: image storage is out of space, retry later")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	s := newStack(t, servicetest.Options{WrapStorage: hook})
	img := servicetest.PatternPNG(t, 16, 7)
	r := s.uploadKey(t, img, "photo-1")
	if r.Status != http.StatusInsufficientStorage || r.Header.Get("Retry-After") != "10" ||
		r.Body != "Error: image storage is out of space, retry later" {
		t.Errorf("POST /new with storage full: %d %q Retry-After %q, want 507 with storage's message and Retry-After 10",
			r.Status, r.Body, r.Header.Get("Retry-After"))
	}
	s.expectAbandoned(t, 0)
	full.Store(false)
	r = s.uploadKey(t, img, "photo-1")
	if r.Status != http.StatusOK || r.Body != "1" {
		t.Fatalf("retry once storage has room: %d %q, want 200 \"1\" (the given-up task is never answered)", r.Status, r.Body)
	}
	if got, ok := s.StoredImage(t, 1, wire.WorkingImage); !ok || !bytes.Equal(got, img) {
		t.Errorf("stored upload of task 1 differs from the image sent")
	}
}

// uploadKey POSTs body to the master's /new with an Idempotency-Key.
func (s stack) uploadKey(t *testing.T, body []byte, key string) servicetest.Reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.MasterURL+"/new", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", key)
	return servicetest.MustDo(t, s.HTTP, req)
}

// TestNewIdempotencyKey: a retried upload with the same key answers the same id and stores nothing new;
// a retry of one whose activation failed finishes it under its first id.
func TestNewIdempotencyKey(t *testing.T) {
	var stores atomic.Int64
	var failActivate atomic.Bool
	s := newStack(t, servicetest.Options{
		WrapStorage: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/sendImage" {
					stores.Add(1)
				}
				next.ServeHTTP(w, r)
			})
		},
		WrapDatabase: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/activateTask" && failActivate.Load() {
					httpapi.WriteText(w, http.StatusInternalServerError, "Error: internal error")
					return
				}
				next.ServeHTTP(w, r)
			})
		},
	})
	img := servicetest.PatternPNG(t, 16, 8)
	first := s.uploadKey(t, img, "k-1")
	again := s.uploadKey(t, img, "k-1")
	if first.Status != 200 || first.Body != "0" || again.Status != 200 || again.Body != "0" || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("upload then retry: %d %q, %d %q replayed %q; want task 0 twice, the second a replay",
			first.Status, first.Body, again.Status, again.Body, again.Header.Get("Idempotent-Replayed"))
	}
	if n := stores.Load(); n != 1 {
		t.Errorf("image stored %d times, want once", n)
	}
	if ids := s.listIDs(t); len(ids) != 1 {
		t.Errorf("tasks %v, want one", ids)
	}

	// The image is stored but the activation fails: the client hears an error; its retry activates the
	// same task, which a worker then claims.
	failActivate.Store(true)
	if r := s.uploadKey(t, img, "k-2"); r.Status != http.StatusInternalServerError {
		t.Fatalf("upload with activation failing: %d %q, want 500", r.Status, r.Body)
	}
	failActivate.Store(false)
	s.claim(t, 0)
	s.ExpectNoClaimable(t) // task 1 is still pending
	if r := s.uploadKey(t, img, "k-2"); r.Status != 200 || r.Body != "1" || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry after the failed activation: %d %q replayed %q, want task 1, replayed", r.Status, r.Body, r.Header.Get("Idempotent-Replayed"))
	}
	s.claim(t, 1)
	if r := s.uploadKey(t, img, strings.Repeat("x", 300)); r.Status != 400 || !strings.HasPrefix(r.Body, "Error: Idempotency-Key must be") {
		t.Errorf("overlong key: %d %q, want 400", r.Status, r.Body)
	}
}

// TestNewClientGoneAbandonsTask: an upload whose client goes away mid-body gives its pending task up at
// once instead of leaving it to the pending timeout.
func TestNewClientGoneAbandonsTask(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	img := servicetest.PatternPNG(t, 64, 9)
	if len(img) < 4096 {
		t.Fatalf("the test image is %d bytes, want one well past the header the master reads first", len(img))
	}
	// The body breaks off well after the header: the transport aborts the request.
	body := io.MultiReader(bytes.NewReader(img[:len(img)/2]), iotest.ErrReader(errors.New("client went away")))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.MasterURL+"/new", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	if _, err := s.HTTP.Do(req); err == nil {
		t.Fatal("the broken upload succeeded")
	}
	if !servicetest.PollFor(10*time.Second, func() bool {
		task, err := s.Database.GetByID(t.Context(), 0)
		return err == nil && task.State == wire.Failed
	}) {
		t.Fatalf("the pending task of the broken upload was not given up: %+v", s.task(t, 0))
	}
	s.expectAbandoned(t, 0)
}

func TestNewStorageRefuses(t *testing.T) {
	// Storage answers but refuses: the master's answer is still an error and nothing is claimable.
	hook := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/sendImage" {
				httpapi.WriteText(w, http.StatusInternalServerError, "Error: disk full")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	s := newStack(t, servicetest.Options{WrapStorage: hook})
	r := s.upload(t, servicetest.PatternPNG(t, 16, 5))
	if r.Status < 400 || !strings.HasPrefix(r.Body, "Error:") {
		t.Errorf("POST /new with storage refusing: %d %q, want an \"Error: ...\" answer", r.Status, r.Body)
	}
	s.ExpectNoClaimable(t)
}

func TestNewDatabaseDown(t *testing.T) {
	s := newStack(t, servicetest.Options{MasterDatabaseAddr: deadAddr()})
	for _, c := range []struct {
		what, method, path string
		body               []byte
	}{
		{"POST /new", http.MethodPost, "/new", servicetest.PatternPNG(t, 16, 6)},
		{"GET /isReady", http.MethodGet, "/isReady?id=0", nil},
		{"GET /stats", http.MethodGet, "/stats", nil},
	} {
		r := s.call(t, c.method, s.MasterURL+c.path, bytes.NewReader(c.body))
		if r.Status != http.StatusServiceUnavailable || r.Body != "Error: database unavailable" || r.Header.Get("Retry-After") == "" {
			t.Errorf("%s with the database down: %d %q Retry-After %q, want 503 \"Error: database unavailable\" with Retry-After",
				c.what, r.Status, r.Body, r.Header.Get("Retry-After"))
		}
	}
}

func TestStatsPassesThrough(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	s.uploadOK(t, servicetest.PatternPNG(t, 8, 30))
	direct := s.call(t, http.MethodGet, s.DatabaseURL+"/stats", nil)
	if r := s.call(t, http.MethodGet, s.MasterURL+"/stats", nil); r.Status != 200 || r.Body != direct.Body ||
		r.Body != `{"queued":1,"pending":0,"processing":0,"finished":0,"failed":0,"cancelled":0}` {
		t.Errorf("GET /stats = %d %q, want the database's %q", r.Status, r.Body, direct.Body)
	}
}

// filler is a generated upload of size bytes: 64 KiB pseudo-random blocks, each stamped with its index so
// that lost, repeated or reordered blocks change the hash, the first starting with the header of a 64x64
// PNG (what the master checks). It hashes what it yields. Before yielding byte gateAt it calls gate, which may block or fail the upload.
type filler struct {
	size, off int64
	block     []byte
	cur       []byte
	hash      io.Writer
	gateAt    int64
	gate      func() error
	gated     bool
}

const fillerBlock = 64 << 10

func newFiller(size int64, hash io.Writer) *filler {
	rng := rand.New(rand.NewPCG(1, 2))
	block := make([]byte, fillerBlock)
	for i := 0; i < len(block); i += 8 {
		binary.LittleEndian.PutUint64(block[i:], rng.Uint64())
	}
	return &filler{size: size, block: block, hash: hash, gateAt: -1}
}

func (f *filler) Read(p []byte) (int, error) {
	if f.off >= f.size {
		return 0, io.EOF
	}
	if f.gate != nil && !f.gated && f.off >= f.gateAt {
		f.gated = true
		if err := f.gate(); err != nil {
			return 0, err
		}
	}
	if len(f.cur) == 0 {
		n := f.off / fillerBlock
		f.cur = f.block
		// Stamp the block index (in place is fine: every later block overwrites it).
		binary.LittleEndian.PutUint64(f.block, uint64(n))
		if n == 0 {
			copy(f.block, testimage.PNGHeader(64, 64))
		}
	}
	n := copy(p, f.cur)
	if rest := f.size - f.off; int64(n) > rest {
		n = int(rest)
	}
	f.cur = f.cur[n:]
	f.hash.Write(p[:n])
	f.off += int64(n)
	return n, nil
}

// notifyCloser closes closed when it is closed.
type notifyCloser struct {
	io.Reader
	once   sync.Once
	closed chan struct{}
}

func (n *notifyCloser) Close() error {
	n.once.Do(func() { close(n.closed) })
	return nil
}

// countingBody counts the bytes a handler reads from a request body.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func TestNewStreamsLargeUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB upload")
	}
	const size = 64 << 20
	var atStorage atomic.Int64
	hook := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/sendImage" {
				r.Body = countingBody{r.Body, &atStorage}
			}
			next.ServeHTTP(w, r)
		})
	}
	s := newStack(t, servicetest.Options{WrapStorage: hook})

	sent := sha256.New()
	gen := newFiller(size, sent)
	// Three quarters in, a quarter must have reached storage already: a master that buffered the whole
	// upload before forwarding it would leave storage waiting here, and the upload fails.
	var notStreamed atomic.Bool
	gen.gateAt = size * 3 / 4
	gen.gate = func() error {
		if !servicetest.PollFor(60*time.Second, func() bool { return atStorage.Load() >= size/4 }) {
			notStreamed.Store(true)
			return errors.New("upload is not being streamed to storage")
		}
		return nil
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	body := &notifyCloser{Reader: gen, closed: make(chan struct{})}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.MasterURL+"/new", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1 // unknown length: sent chunked
	r, err := servicetest.Do(s.HTTP, req)
	// The transport closes the body when it is done with it; only then may gen be read here.
	select {
	case <-body.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the transport never closed the request body")
	}
	if notStreamed.Load() {
		t.Fatalf("storage had %d bytes when the client had sent %d: the master does not stream", atStorage.Load(), gen.gateAt)
	}
	if err != nil {
		t.Fatalf("POST /new: %v", err)
	}
	if r.Status != http.StatusOK {
		t.Fatalf("POST /new of %d bytes: %d %q", size, r.Status, r.Body)
	}
	if gen.off != size {
		t.Fatalf("generator yielded %d bytes, want %d", gen.off, size)
	}
	id := servicetest.ParseID(t, r.Body)

	img, err := s.Storage.GetImage(ctx, id, wire.WorkingImage)
	if err != nil {
		t.Fatalf("storage GetImage: %v", err)
	}
	defer img.Close()
	stored := sha256.New()
	n, err := io.Copy(stored, img)
	if err != nil {
		t.Fatalf("read stored image: %v", err)
	}
	if n != size || (img.Size >= 0 && img.Size != size) {
		t.Errorf("stored %d bytes (length header %d), want %d", n, img.Size, size)
	}
	if !bytes.Equal(stored.Sum(nil), sent.Sum(nil)) {
		t.Errorf("stored image hash %x differs from the upload's %x", stored.Sum(nil), sent.Sum(nil))
	}
	if task, err := s.Database.GetNewTask(ctx, 0); err != nil || task.ID != id {
		t.Errorf("claim after the large upload: %+v, %v; want task %d", task, err, id)
	}
}

func TestNewConcurrentUploads(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	const n = 8
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = servicetest.PatternPNG(t, 8+4*i, int64(100+i))
	}
	ids := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := servicetest.Send(t.Context(), s.HTTP, http.MethodPost, s.MasterURL+"/new", bytes.NewReader(bodies[i]))
			if err == nil && r.Status != http.StatusOK {
				err = fmt.Errorf("%d %q", r.Status, r.Body)
			}
			if err == nil {
				ids[i], err = strconv.ParseInt(r.Body, 10, 64)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	seen := map[int64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("upload %d: %v", i, errs[i])
		}
		if seen[ids[i]] {
			t.Errorf("id %d answered twice", ids[i])
		}
		seen[ids[i]] = true
		got, ok := s.StoredImage(t, ids[i], wire.WorkingImage)
		if !ok || !bytes.Equal(got, bodies[i]) {
			t.Errorf("upload %d (task %d): stored image differs", i, ids[i])
		}
	}
	for range n {
		if _, err := s.Database.GetNewTask(t.Context(), 0); err != nil {
			t.Errorf("claim: %v", err)
		}
	}
	s.ExpectNoClaimable(t)
}

func TestIsReadyAndGet(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	img := servicetest.PatternPNG(t, 24, 7)
	id := s.uploadOK(t, img)
	isReady := func() servicetest.Reply {
		return s.call(t, http.MethodGet, fmt.Sprintf("%s/isReady?id=%d", s.MasterURL, id), nil)
	}
	get := func() servicetest.Reply {
		return s.call(t, http.MethodGet, fmt.Sprintf("%s/get?id=%d", s.MasterURL, id), nil)
	}

	if r := isReady(); r.Status != http.StatusOK || r.Body != "0" {
		t.Errorf("isReady before processing: %d %q, want 200 \"0\"", r.Status, r.Body)
	}
	servicetest.ExpectError(t, "get before processing", get(), http.StatusNotFound)

	// Play the worker by hand: claim, store a result, finish.
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	if r := isReady(); r.Body != "0" {
		t.Errorf("isReady while in progress: %q, want \"0\"", r.Body)
	}
	result := servicetest.PatternPNG(t, 24, 8)
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.Body != "0" {
		t.Errorf("isReady with the result stored but the task not finished: %q, want \"0\"", r.Body)
	}
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.Status != http.StatusOK || r.Body != "1" {
		t.Errorf("isReady after finishing: %d %q, want 200 \"1\"", r.Status, r.Body)
	}
	servicetest.ExpectPNGReply(t, "get", get(), result)

	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/isReady", http.StatusBadRequest},
		{"/isReady?id=", http.StatusBadRequest},
		{"/isReady?id=abc", http.StatusBadRequest},
		{"/isReady?id=-1", http.StatusBadRequest},
		{"/isReady?id=12345", http.StatusBadRequest}, // the database's unknown-id answer
		{"/get", http.StatusBadRequest},
		{"/get?id=x", http.StatusBadRequest},
		{"/get?id=12345", http.StatusNotFound},
	} {
		servicetest.ExpectError(t, "GET "+tc.path, s.call(t, http.MethodGet, s.MasterURL+tc.path, nil), tc.status)
	}
}

func TestGetNewTaskPassesThrough(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()

	// None to claim: the database's refusal, byte for byte.
	direct := s.call(t, http.MethodPost, s.DatabaseURL+"/getNewTask", nil)
	via := s.call(t, http.MethodPost, s.MasterURL+"/getNewTask", nil)
	if direct.Status != http.StatusBadRequest || direct.Body != servicetest.NoTaskReply {
		t.Fatalf("database refusal %d %q, want 400 %q", direct.Status, direct.Body, servicetest.NoTaskReply)
	}
	if via.Status != direct.Status || via.Body != direct.Body {
		t.Errorf("master /getNewTask with no task: %d %q, want the database's %d %q", via.Status, via.Body, direct.Status, direct.Body)
	}

	// A task: the claim JSON, identical to the database's record of the claimed task.
	id, err := s.Database.NewTask(ctx, client.NewTaskParams{})
	if err != nil {
		t.Fatal(err)
	}
	via = s.call(t, http.MethodPost, s.MasterURL+"/getNewTask", nil)
	if via.Status != http.StatusOK {
		t.Fatalf("master /getNewTask: %d %q", via.Status, via.Body)
	}
	if ct := via.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("claim Content-Type %q, want application/json", ct)
	}
	var task wire.Task
	if err := json.Unmarshal([]byte(via.Body), &task); err != nil {
		t.Fatalf("claim %q: %v", via.Body, err)
	}
	if task.ID != id || task.State != wire.InProgress || task.Attempts != 1 {
		t.Errorf("claimed %+v, want task %d in progress, attempt 1", task, id)
	}
	record := s.call(t, http.MethodGet, fmt.Sprintf("%s/getById?id=%d", s.DatabaseURL, id), nil)
	if record.Body != via.Body {
		t.Errorf("master's claim %q differs from the database's record %q", via.Body, record.Body)
	}
	s.ExpectNoClaimable(t)

	// A short wait with nothing to claim is honoured, then refused.
	start := time.Now()
	via = s.call(t, http.MethodPost, s.MasterURL+"/getNewTask?wait=300ms", nil)
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("wait=300ms answered after %v", el)
	}
	if via.Status != http.StatusBadRequest || via.Body != servicetest.NoTaskReply {
		t.Errorf("wait=300ms with no task: %d %q, want 400 %q", via.Status, via.Body, servicetest.NoTaskReply)
	}

	// A long poll is answered as soon as a task appears.
	type result struct {
		r   servicetest.Reply
		err error
	}
	got := make(chan result, 1)
	start = time.Now()
	go func() {
		r, err := servicetest.Send(ctx, s.HTTP, http.MethodPost, s.MasterURL+"/getNewTask?wait=20s", nil)
		got <- result{r, err}
	}()
	time.Sleep(150 * time.Millisecond)
	id2 := s.uploadOK(t, servicetest.PatternPNG(t, 8, 9))
	res := <-got
	if res.err != nil {
		t.Fatalf("long poll: %v", res.err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("long poll answered after %v, not when the task appeared", el)
	}
	if err := json.Unmarshal([]byte(res.r.Body), &task); res.r.Status != http.StatusOK || err != nil || task.ID != id2 {
		t.Errorf("long poll: %d %q, want task %d", res.r.Status, res.r.Body, id2)
	}

	for _, q := range []string{"?wait=forever", "?wait=-1s", "?wait=1h"} {
		servicetest.ExpectError(t, "getNewTask"+q, s.call(t, http.MethodPost, s.MasterURL+"/getNewTask"+q, nil), http.StatusBadRequest)
	}
	servicetest.ExpectError(t, "GET /getNewTask", s.call(t, http.MethodGet, s.MasterURL+"/getNewTask", nil), http.StatusMethodNotAllowed)
}

// TestGetNewTaskBatch: with max the master passes a batch claim on and answers {"tasks":[...]}, each
// task as the database records it; a bad max is refused before the database is asked.
func TestGetNewTaskBatch(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	var ids []int64
	for range 3 {
		id, err := s.Database.NewTask(ctx, client.NewTaskParams{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, q := range []string{"?max=0", "?max=65", "?max=two"} {
		servicetest.ExpectError(t, "getNewTask"+q, s.call(t, http.MethodPost, s.MasterURL+"/getNewTask"+q, nil), http.StatusBadRequest)
	}
	via := s.call(t, http.MethodPost, s.MasterURL+"/getNewTask?max=2", nil)
	if via.Status != http.StatusOK {
		t.Fatalf("master /getNewTask?max=2: %d %q", via.Status, via.Body)
	}
	var got wire.Tasks
	if err := json.Unmarshal([]byte(via.Body), &got); err != nil || len(got.Tasks) != 2 {
		t.Fatalf("master /getNewTask?max=2 answered %q, want {\"tasks\":[two tasks]} (%v)", via.Body, err)
	}
	for i, task := range got.Tasks {
		if task.ID != ids[i] || task.State != wire.InProgress || task.Token <= 0 {
			t.Errorf("batch task %d: %+v, want task %d in progress with a token", i, task, ids[i])
		}
		record, err := s.Database.GetByID(ctx, task.ID)
		if err != nil || record.Token != task.Token {
			t.Errorf("task %d: token %d in the batch, record %+v, %v", task.ID, task.Token, record, err)
		}
	}
	// max=1: the reference's task JSON.
	via = s.call(t, http.MethodPost, s.MasterURL+"/getNewTask?max=1", nil)
	var one wire.Task
	if err := json.Unmarshal([]byte(via.Body), &one); via.Status != http.StatusOK || err != nil || one.ID != ids[2] {
		t.Errorf("master /getNewTask?max=1: %d %q, want task %d as task JSON", via.Status, via.Body, ids[2])
	}
	s.ExpectNoClaimable(t)
}

func TestRegisterTaskFinishedPassesThrough(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	register := func(id string) servicetest.Reply {
		return s.call(t, http.MethodPost, s.MasterURL+"/registerTaskFinished?id="+id, nil)
	}
	// compare checks the master's answer for id against the database's own (a refusal changes nothing,
	// so asking both is safe).
	compare := func(what, id string) {
		t.Helper()
		via := register(id)
		direct := s.call(t, http.MethodPost, s.DatabaseURL+"/finishTask?id="+id, nil)
		if direct.Status != http.StatusBadRequest || !strings.HasPrefix(direct.Body, "Error:") {
			t.Fatalf("%s: database answered %d %q, want a 400 refusal", what, direct.Status, direct.Body)
		}
		if via.Status != direct.Status || via.Body != direct.Body {
			t.Errorf("%s: master answered %d %q, want the database's %d %q", what, via.Status, via.Body, direct.Status, direct.Body)
		}
	}

	compare("unknown task", "4242")
	id, err := s.Database.NewTask(ctx, client.NewTaskParams{})
	if err != nil {
		t.Fatal(err)
	}
	ids := strconv.FormatInt(id, 10)
	compare("task not started", ids)

	claimed, err := s.Database.GetNewTask(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	s.storeResult(t, id, claimed.Token)
	if r := register(ids); r.Status != http.StatusOK || r.Body != "success" {
		t.Errorf("register an in-progress task: %d %q, want 200 \"success\"", r.Status, r.Body)
	}
	task, err := s.Database.GetByID(ctx, id)
	if err != nil || task.State != wire.Finished {
		t.Errorf("task after register = %+v, %v; want finished", task, err)
	}
	compare("task already finished", ids)

	for _, q := range []string{"", "x", "-3"} {
		servicetest.ExpectError(t, "registerTaskFinished?id="+q, register(q), http.StatusBadRequest)
	}
}

func TestUnknownRoutes(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	r := s.call(t, http.MethodGet, s.MasterURL+"/new", nil)
	servicetest.ExpectError(t, "GET /new", r, http.StatusMethodNotAllowed)
	if allow := r.Header.Get("Allow"); !strings.Contains(allow, http.MethodPost) {
		t.Errorf("GET /new Allow %q, want POST in it", allow)
	}
	servicetest.ExpectError(t, "GET /nothing", s.call(t, http.MethodGet, s.MasterURL+"/nothing", nil), http.StatusNotFound)
	if r := s.call(t, http.MethodGet, s.MasterURL+"/healthz", nil); r.Status != http.StatusOK || r.Body != "ok" {
		t.Errorf("healthz: %d %q", r.Status, r.Body)
	}
}

// Lifecycle additions: /status, /get of unfinished and failed tasks, and the worker calls passed through
// to the database.

func (s stack) post(t *testing.T, baseURL, path string, q url.Values) servicetest.Reply {
	t.Helper()
	u := baseURL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return s.call(t, http.MethodPost, u, nil)
}

// record is the database's own answer to GET /getById?id=id.
func (s stack) record(t *testing.T, id int64) servicetest.Reply {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("%s/getById?id=%d", s.DatabaseURL, id), nil)
	if r.Status != http.StatusOK {
		t.Fatalf("database getById %d: %d %q", id, r.Status, r.Body)
	}
	return r
}

func (s stack) task(t *testing.T, id int64) wire.Task {
	t.Helper()
	var task wire.Task
	if r := s.record(t, id); json.Unmarshal([]byte(r.Body), &task) != nil {
		t.Fatalf("task JSON %q", r.Body)
	}
	return task
}

// claim claims with the database (no wait) and expects task id.
func (s stack) claim(t *testing.T, id int64) wire.Task {
	t.Helper()
	task, err := s.Database.GetNewTask(t.Context(), 0)
	if err != nil || task.ID != id || task.State != wire.InProgress {
		t.Fatalf("claim: %+v, %v; want task %d in progress", task, err, id)
	}
	return task
}

// reclaim hands task id out again, as the database does once a lease lapses (the reference setById to
// state 1 is a claim): the previous claim's token is stale afterwards. It returns the new claim.
func (s stack) reclaim(t *testing.T, id int64, stale wire.Task) wire.Task {
	t.Helper()
	if err := s.Database.SetByID(t.Context(), wire.Task{ID: id, State: wire.InProgress}); err != nil {
		t.Fatal(err)
	}
	task := s.task(t, id)
	if task.State != wire.InProgress || task.Token <= stale.Token {
		t.Fatalf("task %d set in progress again: %+v, want a token above %d", id, task, stale.Token)
	}
	return task
}

func tokenQuery(id, token int64, kv ...string) url.Values {
	q := url.Values{"id": {strconv.FormatInt(id, 10)}, "token": {strconv.FormatInt(token, 10)}}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q
}

// expectRefusalPassedThrough checks that the master answers POST masterPath?q exactly as the database
// answers POST dbPath?q: a refusal with the given status, same body, same content type. A refusal
// changes nothing, so asking both is safe.
func (s stack) expectRefusalPassedThrough(t *testing.T, what, masterPath, dbPath string, q url.Values, status int, body string) {
	t.Helper()
	via := s.post(t, s.MasterURL, masterPath, q)
	direct := s.post(t, s.DatabaseURL, dbPath, q)
	if direct.Status != status || direct.Body != body {
		t.Fatalf("%s: database answered %d %q, want %d %q", what, direct.Status, direct.Body, status, body)
	}
	if via.Status != direct.Status || via.Body != direct.Body {
		t.Errorf("%s: master answered %d %q, want the database's %d %q", what, via.Status, via.Body, direct.Status, direct.Body)
	}
	if got, want := via.Header.Get("Content-Type"), direct.Header.Get("Content-Type"); got != want {
		t.Errorf("%s: master Content-Type %q, want the database's %q", what, got, want)
	}
}

// expectTaskReply checks that r, the master's answer about task id, is the database's task JSON of it
// as it is now, byte for byte.
func (s stack) expectTaskReply(t *testing.T, what string, r servicetest.Reply, id int64) wire.Task {
	t.Helper()
	if r.Status != http.StatusOK {
		t.Fatalf("%s: %d %q, want 200 and task %d", what, r.Status, r.Body, id)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want the database's application/json", what, ct)
	}
	if rec := s.record(t, id); r.Body != rec.Body {
		t.Errorf("%s: master answered %q, want the database's record %q", what, r.Body, rec.Body)
	}
	var task wire.Task
	if err := json.Unmarshal([]byte(r.Body), &task); err != nil {
		t.Fatalf("%s: %q: %v", what, r.Body, err)
	}
	return task
}

// expectStatus checks GET /status?id=id: exactly {"id","state","op","attempts","maxAttempts"} then the error
// and the times the database's record has, in that order, with the state in words.
func (s stack) expectStatus(t *testing.T, id int64, word string) {
	t.Helper()
	r := s.call(t, http.MethodGet, fmt.Sprintf("%s/status?id=%d", s.MasterURL, id), nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /status?id=%d: %d %q", id, r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET /status Content-Type %q, want application/json", ct)
	}
	var rec map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s.record(t, id).Body), &rec); err != nil {
		t.Fatal(err)
	}
	attempts := "0"
	if a, ok := rec["attempts"]; ok {
		attempts = string(a)
	}
	op := `"swap"` // the default chain, for tasks whose record has none
	if o, ok := rec["op"]; ok {
		op = string(o)
	}
	want := fmt.Sprintf(`{"id":%d,"state":%q,"op":%s,"attempts":%s,"maxAttempts":%s`, id, word, op, attempts, rec["maxAttempts"])
	for _, k := range []string{"error", "createdAt", "startedAt", "finishedAt", "retryAt"} {
		if v, ok := rec[k]; ok {
			want += fmt.Sprintf(",%q:%s", k, v)
		}
	}
	want += "}"
	if r.Body != want {
		t.Errorf("GET /status?id=%d = %s, want %s", id, r.Body, want)
	}
}

func TestStatus(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	id := s.uploadOK(t, servicetest.PatternPNG(t, 8, 20))
	s.expectStatus(t, id, "queued")
	task := s.claim(t, id)
	s.expectStatus(t, id, "processing")
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	s.expectStatus(t, id, "finished")

	// A failure with attempts left is queued again, with its reason; a permanent one is failed.
	id2 := s.uploadOK(t, servicetest.PatternPNG(t, 8, 21))
	task = s.claim(t, id2)
	if _, err := s.Master.FailTask(ctx, id2, task.Token, "worker ran out of memory", false); err != nil {
		t.Fatal(err)
	}
	s.expectStatus(t, id2, "queued")
	task = s.claim(t, id2)
	if _, err := s.Master.FailTask(ctx, id2, task.Token, "not a decodable image", true); err != nil {
		t.Fatal(err)
	}
	s.expectStatus(t, id2, "failed")
	if st := s.task(t, id2); st.Error != "not a decodable image" || st.Attempts != 2 || st.State != wire.Failed {
		t.Errorf("failed task = %+v", st)
	}

	// Refusals: an unknown id is the database's own answer.
	direct := s.call(t, http.MethodGet, s.DatabaseURL+"/getById?id=12345", nil)
	if r := s.call(t, http.MethodGet, s.MasterURL+"/status?id=12345", nil); r.Status != http.StatusBadRequest ||
		r.Body != "Error: no task with id 12345" || r.Body != direct.Body || r.Status != direct.Status {
		t.Errorf("GET /status of an unknown id = %d %q, want the database's %d %q", r.Status, r.Body, direct.Status, direct.Body)
	}
	for _, tc := range []struct{ query, body string }{
		{"", "Error: missing id parameter"},
		{"?id=x", `Error: id must be a non-negative decimal integer, got "x"`},
		{"?id=-4", `Error: id must be a non-negative decimal integer, got "-4"`},
	} {
		if r := s.call(t, http.MethodGet, s.MasterURL+"/status"+tc.query, nil); r.Status != http.StatusBadRequest || r.Body != tc.body {
			t.Errorf("GET /status%s = %d %q, want 400 %q", tc.query, r.Status, r.Body, tc.body)
		}
	}
	r := s.call(t, http.MethodPost, s.MasterURL+"/status?id=0", nil)
	if r.Status != http.StatusMethodNotAllowed || r.Body != "Error: method POST not allowed on /status" || r.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /status = %d %q Allow %q", r.Status, r.Body, r.Header.Get("Allow"))
	}
}

func TestGetOnlyFinishedTasks(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	get := func(id int64) servicetest.Reply {
		return s.call(t, http.MethodGet, fmt.Sprintf("%s/get?id=%d", s.MasterURL, id), nil)
	}
	expect := func(what string, id int64, body string) {
		t.Helper()
		if r := get(id); r.Status != http.StatusNotFound || r.Body != body {
			t.Errorf("get %s: %d %.100q, want 404 %q", what, r.Status, r.Body, body)
		}
	}
	id := s.uploadOK(t, servicetest.PatternPNG(t, 16, 22))
	notFinished := fmt.Sprintf("Error: task %d is not finished", id)
	expect("queued", id, notFinished)

	// A result in storage is not served while the task is unfinished (a stale worker's, say).
	task := s.claim(t, id)
	result := servicetest.PatternPNG(t, 16, 23)
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	expect("processing with a result stored", id, notFinished)
	if _, err := s.Database.FailTask(ctx, id, task.Token, "timeout", false); err != nil {
		t.Fatal(err)
	}
	expect("queued again with a result stored", id, notFinished)
	task = s.claim(t, id)
	if _, err := s.Database.FailTask(ctx, id, task.Token, "image is corrupt", true); err != nil {
		t.Fatal(err)
	}
	expect("failed", id, fmt.Sprintf("Error: task %d failed: image is corrupt", id))
	if r := s.call(t, http.MethodGet, fmt.Sprintf("%s/isReady?id=%d", s.MasterURL, id), nil); r.Status != http.StatusOK || r.Body != "0" {
		t.Errorf("isReady of a failed task: %d %q, want 200 \"0\"", r.Status, r.Body)
	}
	expect("unknown", 12345, "Error: no task with id 12345")

	// Finished: served.
	id2 := s.uploadOK(t, servicetest.PatternPNG(t, 16, 24))
	task = s.claim(t, id2)
	if err := s.Storage.SendImage(ctx, id2, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.FinishTask(ctx, id2, task.Token); err != nil {
		t.Fatal(err)
	}
	servicetest.ExpectPNGReply(t, "get finished", get(id2), result)
}

func TestRegisterTaskFinishedFenced(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	id, err := s.Database.NewTask(t.Context(), client.NewTaskParams{})
	if err != nil {
		t.Fatal(err)
	}
	stale := s.claim(t, id)
	current := s.reclaim(t, id, stale)
	staleMsg := fmt.Sprintf("Error: stale lease token for task %d", id)

	s.expectRefusalPassedThrough(t, "stale token", "/registerTaskFinished", "/finishTask", tokenQuery(id, stale.Token), http.StatusConflict, staleMsg)
	s.storeResult(t, id, current.Token)
	for range 2 { // the second time is a retry, which succeeds too
		r := s.post(t, s.MasterURL, "/registerTaskFinished", tokenQuery(id, current.Token))
		if r.Status != http.StatusOK || r.Body != "success" || r.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("register with the current token: %d %q (%s), want 200 \"success\"", r.Status, r.Body, r.Header.Get("Content-Type"))
		}
	}
	if task := s.task(t, id); task.State != wire.Finished {
		t.Errorf("task after register = %+v, want finished", task)
	}
	s.expectRefusalPassedThrough(t, "stale token after finishing", "/registerTaskFinished", "/finishTask", tokenQuery(id, stale.Token), http.StatusConflict, staleMsg)
	s.expectRefusalPassedThrough(t, "bad token", "/registerTaskFinished", "/finishTask", tokenQuery(id, 0, "token", "x"),
		http.StatusBadRequest, `Error: token must be a non-negative decimal integer, got "x"`)
}

func TestExtendLeasePassesThrough(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	id, err := s.Database.NewTask(ctx, client.NewTaskParams{})
	if err != nil {
		t.Fatal(err)
	}
	claimed := s.claim(t, id)
	time.Sleep(5 * time.Millisecond) // so the renewed lease ends later than the claim's
	task := s.expectTaskReply(t, "extendLease", s.post(t, s.MasterURL, "/extendLease", tokenQuery(id, claimed.Token)), id)
	if task.State != wire.InProgress || task.Token != claimed.Token || !task.LeaseUntil.After(claimed.LeaseUntil) {
		t.Errorf("extendLease = %+v, want the claim with a lease beyond %v", task, claimed.LeaseUntil)
	}

	notInProgress := fmt.Sprintf("Error: task %d is not in progress", id)
	s.expectRefusalPassedThrough(t, "unknown task", "/extendLease", "/extendLease", tokenQuery(4242, 1), http.StatusBadRequest, "Error: no task with id 4242")
	s.expectRefusalPassedThrough(t, "no id", "/extendLease", "/extendLease", url.Values{"token": {"1"}}, http.StatusBadRequest, "Error: missing id parameter")
	current := s.reclaim(t, id, claimed)
	s.expectRefusalPassedThrough(t, "stale token", "/extendLease", "/extendLease", tokenQuery(id, claimed.Token), http.StatusConflict,
		fmt.Sprintf("Error: stale lease token for task %d", id))
	s.storeResult(t, id, current.Token)
	if err := s.Master.FinishTask(ctx, id, current.Token); err != nil {
		t.Fatal(err)
	}
	s.expectRefusalPassedThrough(t, "finished task", "/extendLease", "/extendLease", tokenQuery(id, current.Token), http.StatusBadRequest, notInProgress)
}

func TestFailTaskPassesThrough(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	id, err := s.Database.NewTask(ctx, client.NewTaskParams{Pending: false, MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	first := s.claim(t, id)
	task := s.expectTaskReply(t, "failTask", s.post(t, s.MasterURL, "/failTask", tokenQuery(id, first.Token, "reason", "flaky disk")), id)
	if task.State != wire.NotStarted || task.Error != "flaky disk" || task.Attempts != 1 {
		t.Errorf("failTask with attempts left = %+v, want not started with the reason", task)
	}

	notInProgress := fmt.Sprintf("Error: task %d is not in progress", id)
	s.expectRefusalPassedThrough(t, "reported twice", "/failTask", "/failTask", tokenQuery(id, first.Token, "reason", "flaky disk"), http.StatusBadRequest, notInProgress)
	second := s.claim(t, id)
	s.expectRefusalPassedThrough(t, "no reason", "/failTask", "/failTask", tokenQuery(id, second.Token), http.StatusBadRequest, "Error: missing reason parameter")
	s.expectRefusalPassedThrough(t, "bad permanent", "/failTask", "/failTask", tokenQuery(id, second.Token, "reason", "r", "permanent", "sure"),
		http.StatusBadRequest, `Error: permanent must be true or false, got "sure"`)
	s.expectRefusalPassedThrough(t, "stale token", "/failTask", "/failTask", tokenQuery(id, first.Token, "reason", "late"), http.StatusConflict,
		fmt.Sprintf("Error: stale lease token for task %d", id))

	task = s.expectTaskReply(t, "failTask on the last attempt", s.post(t, s.MasterURL, "/failTask", tokenQuery(id, second.Token, "reason", "flaky again")), id)
	if task.State != wire.Failed || task.Error != "flaky again" || task.Attempts != 2 {
		t.Errorf("failTask on the last attempt = %+v, want failed with the reason", task)
	}
	s.ExpectNoClaimable(t)

	// Permanent, at once.
	id2, err := s.Database.NewTask(ctx, client.NewTaskParams{})
	if err != nil {
		t.Fatal(err)
	}
	claimed := s.claim(t, id2)
	task = s.expectTaskReply(t, "permanent failTask", s.post(t, s.MasterURL, "/failTask", tokenQuery(id2, claimed.Token, "reason", "corrupt", "permanent", "true")), id2)
	if task.State != wire.Failed || task.Error != "corrupt" || task.Attempts != 1 {
		t.Errorf("permanent failTask = %+v, want failed on attempt 1", task)
	}
}

func TestReleaseTaskPassesThrough(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	var ids [2]int64
	var claims [2]wire.Task
	for i := range ids {
		id, err := s.Database.NewTask(ctx, client.NewTaskParams{})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
		claims[i] = s.claim(t, id)
	}
	// Twin tasks, one released through the master, one at the database: the same answer.
	via := s.post(t, s.MasterURL, "/releaseTask", tokenQuery(ids[0], claims[0].Token))
	direct := s.post(t, s.DatabaseURL, "/releaseTask", tokenQuery(ids[1], claims[1].Token))
	if direct.Status != http.StatusOK || direct.Body != "success" {
		t.Fatalf("database releaseTask: %d %q", direct.Status, direct.Body)
	}
	if via.Status != direct.Status || via.Body != direct.Body || via.Header.Get("Content-Type") != direct.Header.Get("Content-Type") {
		t.Errorf("master releaseTask: %d %q (%s), want the database's %d %q (%s)", via.Status, via.Body, via.Header.Get("Content-Type"),
			direct.Status, direct.Body, direct.Header.Get("Content-Type"))
	}
	for i, id := range ids {
		if task := s.task(t, id); task.State != wire.NotStarted || task.Attempts != 0 || task.Token != claims[i].Token {
			t.Errorf("released task %d = %+v, want not started, attempt given back", id, task)
		}
	}

	id := ids[0]
	s.expectRefusalPassedThrough(t, "released twice", "/releaseTask", "/releaseTask", tokenQuery(id, claims[0].Token), http.StatusBadRequest,
		fmt.Sprintf("Error: task %d is not in progress", id))
	again := s.claim(t, id) // at once, and lowest id first
	if again.Attempts != 1 || again.Token <= claims[0].Token {
		t.Errorf("claim after release = %+v, want attempt 1 with a new token", again)
	}
	s.expectRefusalPassedThrough(t, "stale token", "/releaseTask", "/releaseTask", tokenQuery(id, claims[0].Token), http.StatusConflict,
		fmt.Sprintf("Error: stale lease token for task %d", id))
	s.expectRefusalPassedThrough(t, "unknown task", "/releaseTask", "/releaseTask", tokenQuery(4242, 1), http.StatusBadRequest, "Error: no task with id 4242")
}

func encodeJPEG(t testing.TB, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, testimage.Pattern(max(w, h), 1).SubImage(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeGIF(t testing.TB, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := gif.Encode(&b, testimage.Pattern(max(w, h), 2).SubImage(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestSource(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	img := servicetest.PatternPNG(t, 16, 41)
	id := s.uploadOK(t, img)
	source := func() servicetest.Reply {
		return s.call(t, http.MethodGet, fmt.Sprintf("%s/source?id=%d", s.MasterURL, id), nil)
	}
	servicetest.ExpectPNGReply(t, "source while queued", source(), img)
	task := s.claim(t, id)
	result := servicetest.PatternPNG(t, 16, 42)
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	servicetest.ExpectPNGReply(t, "source when finished", source(), img)
	// The client.
	rc, err := s.Master.Source(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, img) || rc.ContentType != "image/png" || rc.Size != int64(len(img)) {
		t.Errorf("Master.Source: %d bytes (%v), type %q size %d; want the upload", len(got), err, rc.ContentType, rc.Size)
	}
	for _, tc := range []struct {
		path   string
		status int
	}{
		{"/source", http.StatusBadRequest},
		{"/source?id=x", http.StatusBadRequest},
		{"/source?id=-1", http.StatusBadRequest},
		{"/source?id=12345", http.StatusNotFound},
	} {
		servicetest.ExpectError(t, "GET "+tc.path, s.call(t, http.MethodGet, s.MasterURL+tc.path, nil), tc.status)
	}
	if r := s.call(t, http.MethodGet, s.MasterURL+"/source?id=12345", nil); r.Body != "Error: no task with id 12345" {
		t.Errorf("source of an unknown task: %q", r.Body)
	}
	// A task whose upload is not stored (created pending, never uploaded): 404 from storage.
	pending, err := s.Database.NewTask(ctx, client.NewTaskParams{Pending: true})
	if err != nil {
		t.Fatal(err)
	}
	servicetest.ExpectError(t, "source without an upload",
		s.call(t, http.MethodGet, fmt.Sprintf("%s/source?id=%d", s.MasterURL, pending), nil), http.StatusNotFound)
	servicetest.ExpectError(t, "POST /source", s.call(t, http.MethodPost, s.MasterURL+"/source?id=0", nil), http.StatusMethodNotAllowed)
}

// GET /isReady?wait= (additive) holds the answer until the task finishes or the wait ends.
func TestIsReadyWait(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	id := s.uploadOK(t, servicetest.PatternPNG(t, 8, 21))
	isReady := func(wait string) servicetest.Reply {
		return s.call(t, http.MethodGet, fmt.Sprintf("%s/isReady?id=%d&wait=%s", s.MasterURL, id, wait), nil)
	}

	// Not finished: "0", and not before the wait is over.
	start := time.Now()
	if r := isReady("300ms"); r.Status != http.StatusOK || r.Body != "0" {
		t.Fatalf("isReady wait=300ms on a queued task = %d %q, want 200 0", r.Status, r.Body)
	}
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Errorf("isReady with wait=300ms answered after %s", elapsed)
	}

	// Finished through this master while a poll waits: the poll answers "1".
	task := s.claim(t, id)
	answer := make(chan servicetest.Reply, 1)
	go func() { answer <- isReady("9s") }()
	s.storeResult(t, id, task.Token)
	time.Sleep(50 * time.Millisecond) // let the poll start waiting
	r := s.call(t, http.MethodPost, fmt.Sprintf("%s/registerTaskFinished?id=%d&token=%d", s.MasterURL, id, task.Token), nil)
	if r.Status != http.StatusOK || r.Body != "success" {
		t.Fatalf("registerTaskFinished = %d %q", r.Status, r.Body)
	}
	if r := <-answer; r.Status != http.StatusOK || r.Body != "1" {
		t.Errorf("waiting isReady after the finish = %d %q, want 200 1", r.Status, r.Body)
	}

	// Finished elsewhere (straight at the database, as through another master): found by the recheck.
	id2 := s.uploadOK(t, servicetest.PatternPNG(t, 8, 22))
	task2 := s.claim(t, id2)
	go func() {
		time.Sleep(100 * time.Millisecond)
		if err := s.Database.FinishTask(ctx, id2, task2.Token); err != nil {
			t.Error(err)
		}
	}()
	r = s.call(t, http.MethodGet, fmt.Sprintf("%s/isReady?id=%d&wait=9s", s.MasterURL, id2), nil)
	if r.Status != http.StatusOK || r.Body != "1" {
		t.Errorf("isReady after a finish through the database = %d %q, want 200 1", r.Status, r.Body)
	}

	for _, bad := range []string{"11s", "-1s", "soon"} {
		if r := isReady(bad); r.Status != http.StatusBadRequest || !strings.HasPrefix(r.Body, "Error: wait") {
			t.Errorf("isReady wait=%s = %d %q, want 400 Error: wait ...", bad, r.Status, r.Body)
		}
	}
}

// POST /statuses (additive) answers, for many tasks at once, only the statuses that differ from what
// the caller knows, and the ids that name no task; with wait it holds the answer until there is news,
// woken by changes through this master and by its recheck of the database.
func TestStatuses(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	a := s.uploadOK(t, servicetest.PatternPNG(t, 8, 31))
	b := s.uploadOK(t, servicetest.PatternPNG(t, 8, 32))
	const missing = 99

	got, err := s.Master.Statuses(ctx, []wire.Status{{ID: a}, {ID: b}, {ID: missing}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Statuses) != 2 || got.Statuses[0].ID != a || got.Statuses[1].ID != b || got.Statuses[0].State != wire.QueuedWord ||
		len(got.Missing) != 1 || got.Missing[0] != missing {
		t.Fatalf("statuses of two new tasks and a missing one = %+v, want both queued and %d missing", got, missing)
	}
	for _, st := range got.Statuses {
		one, err := s.Master.Status(ctx, st.ID)
		if err != nil || one.Differs(st) || one.Op != st.Op || !one.CreatedAt.Equal(st.CreatedAt) {
			t.Errorf("task %d: /statuses says %+v, /status %+v (%v)", st.ID, st, one, err)
		}
	}
	known := got.Statuses

	// Nothing new: an empty answer, at once without wait, at the end of the wait with one.
	if got, err := s.Master.Statuses(ctx, known, 0); err != nil || len(got.Statuses) != 0 || len(got.Missing) != 0 {
		t.Errorf("statuses with nothing new = %+v, %v; want none", got, err)
	}
	start := time.Now()
	if got, err := s.Master.Statuses(ctx, known, 300*time.Millisecond); err != nil || len(got.Statuses) != 0 {
		t.Errorf("statuses wait=300ms with nothing new = %+v, %v; want none", got, err)
	}
	if elapsed := time.Since(start); elapsed < 300*time.Millisecond {
		t.Errorf("statuses with wait=300ms and nothing new answered after %s", elapsed)
	}

	// A claim through this master wakes a waiting poll, which answers that task alone.
	answer := make(chan wire.Statuses, 1)
	go func() {
		got, err := s.Master.Statuses(ctx, known, 9*time.Second)
		if err != nil {
			t.Error(err)
		}
		answer <- got
	}()
	claimed, err := s.Master.GetNewTask(ctx, 0)
	if err != nil || claimed.ID != a {
		t.Fatalf("claim: %+v %v, want task %d", claimed, err, a)
	}
	got = <-answer
	if len(got.Statuses) != 1 || got.Statuses[0].ID != a || got.Statuses[0].State != wire.ProcessingWord || got.Statuses[0].Attempts != 1 {
		t.Fatalf("statuses after the claim = %+v, want task %d processing", got, a)
	}
	known[0] = got.Statuses[0]

	// A finish straight at the database (as through another master) is found by the recheck.
	go func() {
		time.Sleep(100 * time.Millisecond)
		if err := s.Database.FinishTask(ctx, a, claimed.Token); err != nil {
			t.Error(err)
		}
	}()
	got, err = s.Master.Statuses(ctx, known, 9*time.Second)
	if err != nil || len(got.Statuses) != 1 || got.Statuses[0].State != wire.FinishedWord {
		t.Errorf("statuses after a finish at the database = %+v, %v; want task %d finished", got, err, a)
	}

	for _, bad := range []struct{ query, body string }{
		{"?wait=11s", `{"known":[]}`},
		{"", `{"known":[{"id":1}],"other":1}`},
		{"", `not json`},
		{"", `{"known":[` + strings.Repeat(`{"id":1},`, wire.MaxStatusIDs) + `{"id":1}]}`},
	} {
		r := s.call(t, http.MethodPost, s.MasterURL+"/statuses"+bad.query, strings.NewReader(bad.body))
		if r.Status != http.StatusBadRequest || !strings.HasPrefix(r.Body, "Error: ") {
			t.Errorf("POST /statuses%s %.40q = %d %q, want 400", bad.query, bad.body, r.Status, r.Body)
		}
	}
}
