package master_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const noTaskReply = "Error: " + client.NoTaskMessage

var discard = slog.New(slog.DiscardHandler)

// newHTTPClient returns the services' own HTTP client, its idle connections closed at cleanup.
func newHTTPClient(t *testing.T) *http.Client {
	t.Helper()
	hc := httpapi.NewClient()
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// addrOf strips the scheme from an httptest URL, leaving host:port.
func addrOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

// stack is a real database and storage service (real stores under t.TempDir()) on httptest servers, a
// master in front of them, and clients.
type stack struct {
	hc     *http.Client
	dbSrv  *httptest.Server
	stSrv  *httptest.Server
	db     *client.Database
	st     *client.Storage
	master *httptest.Server
}

type stackOptions struct {
	maxUpload int64
	// storageHook, when set, wraps the storage service's handler.
	storageHook func(http.Handler) http.Handler
	// storageAddr, when set, is where the master looks for storage instead of the real one.
	storageAddr string
	// databaseAddr, when set, is where the master looks for the database instead of the real one.
	databaseAddr string
}

func newStack(t *testing.T, opts stackOptions) *stack {
	t.Helper()
	dir := t.TempDir()
	store, err := sqlitestore.Open(context.Background(), filepath.Join(dir, "tasks.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatalf("sqlitestore.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("close task store: %v", err)
		}
	})
	blobs, err := fileblob.Open(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatalf("fileblob.Open: %v", err)
	}
	t.Cleanup(func() { blobs.Close() })

	s := &stack{hc: newHTTPClient(t)}
	done := make(chan struct{})
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { close(done) }) }

	s.dbSrv = httptest.NewServer(httpapi.Wrap(database.NewServer(store, 2*time.Minute, done), discard))
	t.Cleanup(s.dbSrv.Close)
	var st http.Handler = storage.NewServer(blobs)
	if opts.storageHook != nil {
		st = opts.storageHook(st)
	}
	s.stSrv = httptest.NewServer(httpapi.Wrap(st, discard))
	t.Cleanup(s.stSrv.Close)
	t.Cleanup(stop) // end long polls before the servers wait for them

	s.db = client.NewDatabase(s.hc, client.Static(addrOf(s.dbSrv)))
	s.st = client.NewStorage(s.hc, client.Static(addrOf(s.stSrv)))

	maxUpload := opts.maxUpload
	if maxUpload == 0 {
		maxUpload = master.DefaultMaxUpload
	}
	db, stg := s.db, s.st
	if opts.storageAddr != "" {
		stg = client.NewStorage(s.hc, client.Static(opts.storageAddr))
	}
	if opts.databaseAddr != "" {
		db = client.NewDatabase(s.hc, client.Static(opts.databaseAddr))
	}
	s.master = httptest.NewServer(httpapi.Wrap(master.NewServer(db, stg, maxUpload), discard))
	t.Cleanup(s.master.Close)
	t.Cleanup(stop)
	return s
}

type reply struct {
	status int
	body   string
	header http.Header
}

// do makes one request and reads the whole answer.
func do(ctx context.Context, hc *http.Client, method, url string, body io.Reader) (reply, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return reply{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, fmt.Errorf("%s %s: read body: %w", method, url, err)
	}
	return reply{status: resp.StatusCode, body: string(b), header: resp.Header}, nil
}

func (s *stack) call(t *testing.T, method, url string, body io.Reader) reply {
	t.Helper()
	r, err := do(t.Context(), s.hc, method, url, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// upload POSTs body to the master's /new.
func (s *stack) upload(t *testing.T, body []byte) reply {
	t.Helper()
	return s.call(t, http.MethodPost, s.master.URL+"/new", bytes.NewReader(body))
}

// uploadOK uploads body and returns the id answered.
func (s *stack) uploadOK(t *testing.T, body []byte) int64 {
	t.Helper()
	r := s.upload(t, body)
	if r.status != http.StatusOK {
		t.Fatalf("POST /new: %d %q, want 200", r.status, r.body)
	}
	return parseID(t, r.body)
}

// parseID parses a bare decimal id: no whitespace, no trailing newline.
func parseID(t *testing.T, body string) int64 {
	t.Helper()
	id, err := strconv.ParseInt(body, 10, 64)
	if err != nil || id < 0 {
		t.Fatalf("reply %q is not a bare decimal id", body)
	}
	return id
}

func expectError(t *testing.T, what string, r reply, status int) {
	t.Helper()
	if r.status != status || !strings.HasPrefix(r.body, "Error:") {
		t.Errorf("%s: %d %q, want %d \"Error: ...\"", what, r.status, r.body, status)
	}
}

// expectNoClaimable asks the database itself for a task and expects the reference refusal.
func (s *stack) expectNoClaimable(t *testing.T) {
	t.Helper()
	r := s.call(t, http.MethodPost, s.dbSrv.URL+"/getNewTask", nil)
	if r.status != http.StatusBadRequest || r.body != noTaskReply {
		t.Errorf("database POST /getNewTask: %d %q, want 400 %q (a task was left claimable)", r.status, r.body, noTaskReply)
	}
}

// storedBytes returns the image stored under id and state, or ok false when there is none.
func (s *stack) storedBytes(t *testing.T, id int64, state string) ([]byte, bool) {
	t.Helper()
	img, err := s.st.GetImage(t.Context(), id, state)
	if client.IsStatus(err, http.StatusNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("storage GetImage(%d, %s): %v", id, state, err)
	}
	defer img.Close()
	b, err := io.ReadAll(img)
	if err != nil {
		t.Fatalf("read stored image %d/%s: %v", id, state, err)
	}
	return b, true
}

// listIDs returns the ids of every task the database holds.
func (s *stack) listIDs(t *testing.T) []int64 {
	t.Helper()
	list, err := s.db.List(t.Context())
	if err != nil {
		t.Fatalf("database list: %v", err)
	}
	var ids []int64
	for line := range strings.Lines(list) {
		var task client.Task
		if err := json.Unmarshal([]byte(line), &task); err != nil {
			t.Fatalf("list line %q: %v", line, err)
		}
		ids = append(ids, task.ID)
	}
	return ids
}

func testPNG(t *testing.T, size int, seed int64) []byte {
	t.Helper()
	b, err := imageop.EncodePNG(imageop.TestPattern(size, seed))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const pngMagic = "\x89PNG\r\n\x1a\n"

func TestNewStoresImageAndActivatesTask(t *testing.T) {
	// Whenever the image reaches storage, the task must exist but not be claimable yet.
	hc := newHTTPClient(t)
	var (
		dbURL     string
		mu        sync.Mutex
		sendSeen  int
		hookFault []string
	)
	hook := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/sendImage" && r.URL.Query().Get("state") == client.Working {
				id := r.URL.Query().Get("id")
				ctx := r.Context()
				var faults []string
				byID, err := do(ctx, hc, http.MethodGet, dbURL+"/getById?id="+id, nil)
				if err != nil || byID.status != http.StatusOK {
					faults = append(faults, fmt.Sprintf("task %s does not exist when its image is sent: %v %+v", id, err, byID))
				}
				claim, err := do(ctx, hc, http.MethodPost, dbURL+"/getNewTask", nil)
				if err != nil || claim.status != http.StatusBadRequest || claim.body != noTaskReply {
					faults = append(faults, fmt.Sprintf("task claimable before its image is stored: %v %d %q", err, claim.status, claim.body))
				}
				mu.Lock()
				sendSeen++
				hookFault = append(hookFault, faults...)
				mu.Unlock()
			}
			next.ServeHTTP(w, r)
		})
	}
	s := newStack(t, stackOptions{storageHook: hook})
	dbURL = s.dbSrv.URL

	img := testPNG(t, 48, 1)
	id := s.uploadOK(t, img)

	mu.Lock()
	if sendSeen != 1 {
		t.Errorf("storage saw %d working uploads, want 1", sendSeen)
	}
	for _, f := range hookFault {
		t.Error(f)
	}
	mu.Unlock()

	task, err := s.db.GetByID(t.Context(), id)
	if err != nil {
		t.Fatalf("database GetByID(%d): %v", id, err)
	}
	if task.ID != id || task.State != client.StateNotStarted {
		t.Errorf("task after /new = %+v, want id %d state %d", task, id, client.StateNotStarted)
	}
	got, ok := s.storedBytes(t, id, client.Working)
	if !ok {
		t.Fatalf("no working image stored for task %d", id)
	}
	if !bytes.Equal(got, img) {
		t.Errorf("stored working image differs from the upload (%d bytes, want %d)", len(got), len(img))
	}
	if _, ok := s.storedBytes(t, id, client.Finished); ok {
		t.Errorf("a finished image exists for task %d right after upload", id)
	}
	claimed, err := s.db.GetNewTask(t.Context(), 0)
	if err != nil {
		t.Fatalf("task %d is not claimable after /new: %v", id, err)
	}
	if claimed.ID != id || claimed.State != client.StateInProgress {
		t.Errorf("claimed %+v, want task %d in progress", claimed, id)
	}
	s.expectNoClaimable(t)

	// Ids are answered in creation order, one task per upload.
	id2 := s.uploadOK(t, testPNG(t, 8, 2))
	if id2 == id {
		t.Errorf("second upload got the same id %d", id)
	}
}

func TestNewAcceptsEveryFormat(t *testing.T) {
	s := newStack(t, stackOptions{})
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"png", testPNG(t, 16, 3)},
		{"jpeg", append([]byte("\xff\xd8\xff\xe0"), bytes.Repeat([]byte{7}, 100)...)},
		{"gif87a", []byte("GIF87a and some more bytes")},
		{"gif89a", []byte("GIF89a and some more bytes")},
		{"magic only", []byte(pngMagic)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := s.uploadOK(t, tc.body)
			got, ok := s.storedBytes(t, id, client.Working)
			if !ok || !bytes.Equal(got, tc.body) {
				t.Errorf("stored %q (found %v), want the upload %q", got, ok, tc.body)
			}
		})
	}
}

func TestNewRefusals(t *testing.T) {
	const maxUpload = 64 << 10
	s := newStack(t, stackOptions{maxUpload: maxUpload})
	big := func(n int) []byte {
		b := make([]byte, n)
		copy(b, pngMagic)
		for i := len(pngMagic); i < n; i++ {
			b[i] = byte(i)
		}
		return b
	}
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
		{"bmp", append([]byte("BM"), make([]byte, 64)...), false, http.StatusUnsupportedMediaType},
		{"too large", big(maxUpload + 1), false, http.StatusRequestEntityTooLarge},
		{"too large chunked", big(maxUpload + 1), true, http.StatusRequestEntityTooLarge},
		{"far too large chunked", big(4 * maxUpload), true, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.master.URL+"/new", bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.chunked {
				req.Body = io.NopCloser(bytes.NewReader(tc.body)) // hide the length
				req.ContentLength = -1
			}
			resp, err := s.hc.Do(req)
			if err != nil {
				t.Fatalf("POST /new: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			expectError(t, "POST /new", reply{status: resp.StatusCode, body: string(b)}, tc.status)
			s.expectNoClaimable(t)
			for _, id := range s.listIDs(t) {
				if _, ok := s.storedBytes(t, id, client.Working); ok {
					t.Errorf("a refused upload left a working image for task %d", id)
				}
			}
		})
	}

	// The limit itself is allowed, with or without a length.
	t.Run("exactly max", func(t *testing.T) {
		body := big(maxUpload)
		id := s.uploadOK(t, body)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.master.URL+"/new", io.NopCloser(bytes.NewReader(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = -1
		resp, err := s.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("chunked upload of exactly max bytes: %d %q", resp.StatusCode, b)
		}
		id2 := parseID(t, string(b))
		for _, id := range []int64{id, id2} {
			got, ok := s.storedBytes(t, id, client.Working)
			if !ok || !bytes.Equal(got, body) {
				t.Errorf("task %d: stored %d bytes (found %v), want the %d uploaded", id, len(got), ok, len(body))
			}
		}
	})
}

func TestNewStorageDown(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	downAddr := addrOf(down)
	down.Close()
	s := newStack(t, stackOptions{storageAddr: downAddr})

	r := s.upload(t, testPNG(t, 16, 4))
	if r.status < 500 || !strings.HasPrefix(r.body, "Error:") {
		t.Errorf("POST /new with storage down: %d %q, want 5xx \"Error: ...\"", r.status, r.body)
	}
	s.expectNoClaimable(t)
	// The answer is not a plausible id either.
	if _, err := strconv.ParseInt(r.body, 10, 64); err == nil {
		t.Errorf("failed upload answered an id %q", r.body)
	}
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
	s := newStack(t, stackOptions{storageHook: hook})
	r := s.upload(t, testPNG(t, 16, 5))
	if r.status < 400 || !strings.HasPrefix(r.body, "Error:") {
		t.Errorf("POST /new with storage refusing: %d %q, want an \"Error: ...\" answer", r.status, r.body)
	}
	s.expectNoClaimable(t)
}

func TestNewDatabaseDown(t *testing.T) {
	down := httptest.NewServer(http.NotFoundHandler())
	downAddr := addrOf(down)
	down.Close()
	s := newStack(t, stackOptions{databaseAddr: downAddr})
	r := s.upload(t, testPNG(t, 16, 6))
	if r.status < 500 || !strings.HasPrefix(r.body, "Error:") {
		t.Errorf("POST /new with the database down: %d %q, want 5xx \"Error: ...\"", r.status, r.body)
	}
	r = s.call(t, http.MethodGet, s.master.URL+"/isReady?id=0", nil)
	if r.status < 500 || !strings.HasPrefix(r.body, "Error:") {
		t.Errorf("GET /isReady with the database down: %d %q, want 5xx \"Error: ...\"", r.status, r.body)
	}
}

// filler is a generated upload: a PNG signature then size-8 bytes of 64 KiB pseudo-random blocks, each
// stamped with its index so that lost, repeated or reordered blocks change the hash. It hashes what it
// yields. Before yielding byte gateAt it calls gate, which may block or fail the upload.
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
			copy(f.block, pngMagic)
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
	s := newStack(t, stackOptions{storageHook: hook})

	sent := sha256.New()
	gen := newFiller(size, sent)
	// Three quarters in, a quarter must have reached storage already: a master that buffered the whole
	// upload before forwarding it would leave storage waiting here, and the upload fails.
	var notStreamed atomic.Bool
	gen.gateAt = size * 3 / 4
	gen.gate = func() error {
		deadline := time.Now().Add(60 * time.Second)
		for atStorage.Load() < size/4 {
			if time.Now().After(deadline) {
				notStreamed.Store(true)
				return errors.New("upload is not being streamed to storage")
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	body := &notifyCloser{Reader: gen, closed: make(chan struct{})}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.master.URL+"/new", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1 // unknown length: sent chunked
	resp, err := s.hc.Do(req)
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
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /new of %d bytes: %d %q", size, resp.StatusCode, b)
	}
	if gen.off != size {
		t.Fatalf("generator yielded %d bytes, want %d", gen.off, size)
	}
	id := parseID(t, string(b))

	img, err := s.st.GetImage(ctx, id, client.Working)
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
	if task, err := s.db.GetNewTask(ctx, 0); err != nil || task.ID != id {
		t.Errorf("claim after the large upload: %+v, %v; want task %d", task, err, id)
	}
}

func TestNewConcurrentUploads(t *testing.T) {
	s := newStack(t, stackOptions{})
	const n = 8
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = testPNG(t, 8+4*i, int64(100+i))
	}
	ids := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, err := do(t.Context(), s.hc, http.MethodPost, s.master.URL+"/new", bytes.NewReader(bodies[i]))
			if err == nil && r.status != http.StatusOK {
				err = fmt.Errorf("%d %q", r.status, r.body)
			}
			if err == nil {
				ids[i], err = strconv.ParseInt(r.body, 10, 64)
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
		got, ok := s.storedBytes(t, ids[i], client.Working)
		if !ok || !bytes.Equal(got, bodies[i]) {
			t.Errorf("upload %d (task %d): stored image differs", i, ids[i])
		}
	}
	for range n {
		if _, err := s.db.GetNewTask(t.Context(), 0); err != nil {
			t.Errorf("claim: %v", err)
		}
	}
	s.expectNoClaimable(t)
}

func TestIsReadyAndGet(t *testing.T) {
	s := newStack(t, stackOptions{})
	ctx := t.Context()
	img := testPNG(t, 24, 7)
	id := s.uploadOK(t, img)
	isReady := func() reply { return s.call(t, http.MethodGet, fmt.Sprintf("%s/isReady?id=%d", s.master.URL, id), nil) }
	get := func() reply { return s.call(t, http.MethodGet, fmt.Sprintf("%s/get?id=%d", s.master.URL, id), nil) }

	if r := isReady(); r.status != http.StatusOK || r.body != "0" {
		t.Errorf("isReady before processing: %d %q, want 200 \"0\"", r.status, r.body)
	}
	expectError(t, "get before processing", get(), http.StatusNotFound)

	// Play the worker by hand: claim, store a result, finish.
	task, err := s.db.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	if r := isReady(); r.body != "0" {
		t.Errorf("isReady while in progress: %q, want \"0\"", r.body)
	}
	result := testPNG(t, 24, 8)
	if err := s.st.SendImage(ctx, id, client.Finished, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.body != "0" {
		t.Errorf("isReady with the result stored but the task not finished: %q, want \"0\"", r.body)
	}
	if err := s.db.FinishTask(ctx, id); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.status != http.StatusOK || r.body != "1" {
		t.Errorf("isReady after finishing: %d %q, want 200 \"1\"", r.status, r.body)
	}
	r := get()
	if r.status != http.StatusOK || r.body != string(result) {
		t.Fatalf("get: %d, %d bytes; want 200 and the %d stored bytes", r.status, len(r.body), len(result))
	}
	if ct := r.header.Get("Content-Type"); ct != "image/png" {
		t.Errorf("get Content-Type %q, want image/png", ct)
	}
	if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(result)) {
		t.Errorf("get Content-Length %q, want %d", cl, len(result))
	}

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
		expectError(t, "GET "+tc.path, s.call(t, http.MethodGet, s.master.URL+tc.path, nil), tc.status)
	}
}

func TestGetNewTaskPassesThrough(t *testing.T) {
	s := newStack(t, stackOptions{})
	ctx := t.Context()

	// None to claim: the database's refusal, byte for byte.
	direct := s.call(t, http.MethodPost, s.dbSrv.URL+"/getNewTask", nil)
	via := s.call(t, http.MethodPost, s.master.URL+"/getNewTask", nil)
	if direct.status != http.StatusBadRequest || direct.body != noTaskReply {
		t.Fatalf("database refusal %d %q, want 400 %q", direct.status, direct.body, noTaskReply)
	}
	if via.status != direct.status || via.body != direct.body {
		t.Errorf("master /getNewTask with no task: %d %q, want the database's %d %q", via.status, via.body, direct.status, direct.body)
	}

	// A task: the claim JSON, identical to the database's record of the claimed task.
	id, err := s.db.NewTask(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	via = s.call(t, http.MethodPost, s.master.URL+"/getNewTask", nil)
	if via.status != http.StatusOK {
		t.Fatalf("master /getNewTask: %d %q", via.status, via.body)
	}
	if ct := via.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("claim Content-Type %q, want application/json", ct)
	}
	var task client.Task
	if err := json.Unmarshal([]byte(via.body), &task); err != nil {
		t.Fatalf("claim %q: %v", via.body, err)
	}
	if task.ID != id || task.State != client.StateInProgress || task.Attempts != 1 {
		t.Errorf("claimed %+v, want task %d in progress, attempt 1", task, id)
	}
	record := s.call(t, http.MethodGet, fmt.Sprintf("%s/getById?id=%d", s.dbSrv.URL, id), nil)
	if record.body != via.body {
		t.Errorf("master's claim %q differs from the database's record %q", via.body, record.body)
	}
	s.expectNoClaimable(t)

	// A short wait with nothing to claim is honoured, then refused.
	start := time.Now()
	via = s.call(t, http.MethodPost, s.master.URL+"/getNewTask?wait=300ms", nil)
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("wait=300ms answered after %v", el)
	}
	if via.status != http.StatusBadRequest || via.body != noTaskReply {
		t.Errorf("wait=300ms with no task: %d %q, want 400 %q", via.status, via.body, noTaskReply)
	}

	// A long poll is answered as soon as a task appears.
	type result struct {
		r   reply
		err error
	}
	got := make(chan result, 1)
	start = time.Now()
	go func() {
		r, err := do(ctx, s.hc, http.MethodPost, s.master.URL+"/getNewTask?wait=20s", nil)
		got <- result{r, err}
	}()
	time.Sleep(150 * time.Millisecond)
	id2 := s.uploadOK(t, testPNG(t, 8, 9))
	res := <-got
	if res.err != nil {
		t.Fatalf("long poll: %v", res.err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("long poll answered after %v, not when the task appeared", el)
	}
	if err := json.Unmarshal([]byte(res.r.body), &task); res.r.status != http.StatusOK || err != nil || task.ID != id2 {
		t.Errorf("long poll: %d %q, want task %d", res.r.status, res.r.body, id2)
	}

	for _, q := range []string{"?wait=forever", "?wait=-1s", "?wait=1h"} {
		expectError(t, "getNewTask"+q, s.call(t, http.MethodPost, s.master.URL+"/getNewTask"+q, nil), http.StatusBadRequest)
	}
	expectError(t, "GET /getNewTask", s.call(t, http.MethodGet, s.master.URL+"/getNewTask", nil), http.StatusMethodNotAllowed)
}

func TestRegisterTaskFinishedPassesThrough(t *testing.T) {
	s := newStack(t, stackOptions{})
	ctx := t.Context()
	register := func(id string) reply {
		return s.call(t, http.MethodPost, s.master.URL+"/registerTaskFinished?id="+id, nil)
	}
	// compare checks the master's answer for id against the database's own (a refusal changes nothing,
	// so asking both is safe).
	compare := func(what, id string) {
		t.Helper()
		via := register(id)
		direct := s.call(t, http.MethodPost, s.dbSrv.URL+"/finishTask?id="+id, nil)
		if direct.status != http.StatusBadRequest || !strings.HasPrefix(direct.body, "Error:") {
			t.Fatalf("%s: database answered %d %q, want a 400 refusal", what, direct.status, direct.body)
		}
		if via.status != direct.status || via.body != direct.body {
			t.Errorf("%s: master answered %d %q, want the database's %d %q", what, via.status, via.body, direct.status, direct.body)
		}
	}

	compare("unknown task", "4242")
	id, err := s.db.NewTask(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	ids := strconv.FormatInt(id, 10)
	compare("task not started", ids)

	if _, err := s.db.GetNewTask(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if r := register(ids); r.status != http.StatusOK || r.body != "success" {
		t.Errorf("register an in-progress task: %d %q, want 200 \"success\"", r.status, r.body)
	}
	task, err := s.db.GetByID(ctx, id)
	if err != nil || task.State != client.StateFinished {
		t.Errorf("task after register = %+v, %v; want finished", task, err)
	}
	compare("task already finished", ids)

	for _, q := range []string{"", "x", "-3"} {
		expectError(t, "registerTaskFinished?id="+q, register(q), http.StatusBadRequest)
	}
}

func TestUnknownRoutes(t *testing.T) {
	s := newStack(t, stackOptions{})
	r := s.call(t, http.MethodGet, s.master.URL+"/new", nil)
	expectError(t, "GET /new", r, http.StatusMethodNotAllowed)
	if allow := r.header.Get("Allow"); !strings.Contains(allow, http.MethodPost) {
		t.Errorf("GET /new Allow %q, want POST in it", allow)
	}
	expectError(t, "GET /nothing", s.call(t, http.MethodGet, s.master.URL+"/nothing", nil), http.StatusNotFound)
	if r := s.call(t, http.MethodGet, s.master.URL+"/healthz", nil); r.status != http.StatusOK || r.body != "ok" {
		t.Errorf("healthz: %d %q", r.status, r.body)
	}
}
