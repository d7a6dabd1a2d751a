package memory

import (
	"bytes"
	"compress/zlib"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	mathrand "math/rand/v2"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/wire"
)

// The memory tests of the upload path and the worker: they run the split deployment and read
// each service's resident set from /proc while a large image goes through it. The images are made on
// the fly by streamPNG, so the test process never holds one whole either.

const (
	// uploadGrowthLimit is how much a service's resident set may grow while a 200 MB upload streams
	// through it.
	uploadGrowthLimit = 32 << 20
	// bigUploadMin is the least size of the upload of TestUploadMemory.
	bigUploadMin = 200 << 20
)

// streamPNG is a valid, decodable PNG of width×height pseudo-random pixels (8-bit RGBA for depth 8,
// 16-bit for depth 16), made from seed. Its image data is deflated with stored (uncompressed) blocks,
// so the file is a little larger than its raw pixels, and it is written row by row: making one holds
// a row, not the image.
type streamPNG struct {
	width, height, depth int
	seed                 uint64
	// flat makes every pixel of a row alike (row y's pixels are all y) and deflates the image data
	// for real: a file of a few hundred KB that decodes to the full image.
	flat bool
}

// rowBytes is the length of one row of pixels (without its filter byte).
func (s streamPNG) rowBytes() int { return s.width * 4 * s.depth / 8 }

// decodedBytes is the size of the image decoded: its raw pixels.
func (s streamPNG) decodedBytes() int64 { return int64(s.height) * int64(s.rowBytes()) }

// fillRow writes the pixels of row y into row (rowBytes long); any row can be made again on its own.
func (s streamPNG) fillRow(y int, row []byte) {
	if s.flat {
		for i := range row {
			row[i] = byte(y >> (8 * (i % 2)))
		}
		return
	}
	rng := mathrand.NewPCG(s.seed, uint64(y))
	var w [8]byte
	for i := 0; i < len(row); i += 8 {
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(row[i:], w[:])
	}
}

// writeTo writes the PNG to w.
func (s streamPNG) writeTo(w io.Writer) error {
	if _, err := io.WriteString(w, "\x89PNG\r\n\x1a\n"); err != nil {
		return err
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(s.width))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(s.height))
	ihdr[8], ihdr[9] = byte(s.depth), 6 // truecolour with alpha; compression, filter, interlace 0
	if err := writePNGChunk(w, "IHDR", ihdr); err != nil {
		return err
	}
	idat := &idatWriter{w: w, buf: make([]byte, 0, 64<<10)}
	level := zlib.NoCompression
	if s.flat {
		level = zlib.BestSpeed
	}
	zw, err := zlib.NewWriterLevel(idat, level)
	if err != nil {
		return err
	}
	row := make([]byte, 1+s.rowBytes()) // filter byte 0 (none), then the pixels
	for y := range s.height {
		s.fillRow(y, row[1:])
		if _, err := zw.Write(row); err != nil {
			return err
		}
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := idat.flush(); err != nil {
		return err
	}
	return writePNGChunk(w, "IEND", nil)
}

// open returns a reader of the PNG, written by a goroutine that ends when the reader is read to the
// end or closed.
func (s streamPNG) open() io.ReadCloser {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(s.writeTo(pw)) }()
	return pr
}

func writePNGChunk(w io.Writer, typ string, data []byte) error {
	head := make([]byte, 8, 8+len(data)+4)
	binary.BigEndian.PutUint32(head, uint32(len(data)))
	copy(head[4:], typ)
	crc := crc32.NewIEEE()
	crc.Write(head[4:])
	crc.Write(data)
	if _, err := w.Write(head); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	_, err := w.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32()))
	return err
}

// idatWriter cuts the zlib stream into IDAT chunks of cap(buf) bytes.
type idatWriter struct {
	w   io.Writer
	buf []byte
}

func (c *idatWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := copy(c.buf[len(c.buf):cap(c.buf)], p)
		c.buf, p = c.buf[:len(c.buf)+k], p[k:]
		if len(c.buf) == cap(c.buf) {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *idatWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	err := writePNGChunk(c.w, "IDAT", c.buf)
	c.buf = c.buf[:0]
	return err
}

// hashingReader counts and hashes what is read through it. It is locked: the HTTP transport reads a
// request body on a goroutine of its own.
type hashingReader struct {
	r  io.Reader
	mu sync.Mutex
	h  hash.Hash
	n  int64
}

func newHashingReader(r io.Reader) *hashingReader { return &hashingReader{r: r, h: sha256.New()} }

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.mu.Lock()
	h.n += int64(n)
	h.h.Write(p[:n])
	h.mu.Unlock()
	return n, err
}

// result returns the number of bytes read and their SHA-256.
func (h *hashingReader) result() (int64, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n, fmt.Sprintf("%x", h.h.Sum(nil))
}

// TestStreamPNG checks the generator the memory tests rely on: its images decode to the pixels fillRow
// makes.
func TestStreamPNG(t *testing.T) {
	for _, s := range []streamPNG{{width: 37, height: 29, depth: 8, seed: 1}, {width: 300, height: 250, depth: 16, seed: 2},
		{width: 300, height: 250, depth: 16, flat: true}} {
		var buf bytes.Buffer
		if err := s.writeTo(&buf); err != nil {
			t.Fatal(err)
		}
		if raw := s.decodedBytes(); s.flat && int64(buf.Len()) > raw/20 {
			t.Errorf("flat %dx%d depth %d: %d bytes, more than a twentieth of its %d bytes of pixels", s.width, s.height, s.depth, buf.Len(), raw)
		} else if raw := s.decodedBytes(); !s.flat && int64(buf.Len()) < raw {
			t.Errorf("%dx%d depth %d: %d bytes, less than its %d bytes of pixels", s.width, s.height, s.depth, buf.Len(), raw)
		}
		img, err := png.Decode(&buf)
		if err != nil {
			t.Fatalf("%dx%d depth %d: %v", s.width, s.height, s.depth, err)
		}
		var pix []byte
		var stride int
		switch m := img.(type) {
		case *image.NRGBA:
			pix, stride = m.Pix, m.Stride
		case *image.NRGBA64:
			pix, stride = m.Pix, m.Stride
		default:
			t.Fatalf("decodes as %T", img)
		}
		if b := img.Bounds(); b.Dx() != s.width || b.Dy() != s.height {
			t.Fatalf("decodes as %v, want %dx%d", b, s.width, s.height)
		}
		row := make([]byte, s.rowBytes())
		for y := range s.height {
			s.fillRow(y, row)
			if got := pix[y*stride : y*stride+len(row)]; !bytes.Equal(got, row) {
				t.Fatalf("depth %d: row %d differs from fillRow's", s.depth, y)
			}
		}
	}
}

// rssWatch follows the resident set of some processes: their size at the start, and their peak since,
// sampled every rssInterval and, where the kernel lets us reset it, read from VmHWM (the kernel's own
// high-water mark, which misses no spike between samples).
type rssWatch struct {
	names []string
	pids  []int
	base  []int64 // KiB
	hwm   bool    // VmHWM was reset at the start

	mu   sync.Mutex
	peak []int64 // KiB
	err  error

	stop chan struct{}
	done chan struct{}
}

const rssInterval = 20 * time.Millisecond

// watchRSS starts following the named services of d.
func watchRSS(t *testing.T, d *deploytest.Deployment, names ...string) *rssWatch {
	t.Helper()
	w := &rssWatch{names: names, hwm: true, stop: make(chan struct{}), done: make(chan struct{})}
	for _, name := range names {
		pid := d.PID(name)
		rss, err := deploytest.ProcStatusKiB(pid, "VmRSS")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// "5" resets the peak resident set (VmHWM) to the current one.
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
			w.hwm = false
		}
		w.pids, w.base, w.peak = append(w.pids, pid), append(w.base, rss), append(w.peak, rss)
	}
	if !w.hwm {
		t.Logf("cannot reset VmHWM; the peaks are sampled every %v only", rssInterval)
	}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(rssInterval)
		defer tick.Stop()
		for {
			w.sample()
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *rssWatch) sample() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, pid := range w.pids {
		fields := []string{"VmRSS"}
		if w.hwm {
			fields = append(fields, "VmHWM")
		}
		for _, f := range fields {
			kib, err := deploytest.ProcStatusKiB(pid, f)
			if err != nil {
				if w.err == nil {
					w.err = fmt.Errorf("%s: %w", w.names[i], err)
				}
				continue
			}
			w.peak[i] = max(w.peak[i], kib)
		}
	}
}

// finish stops the sampling and returns each service's peak growth over its start, in bytes, by name.
func (w *rssWatch) finish(t *testing.T) map[string]int64 {
	t.Helper()
	close(w.stop)
	<-w.done
	w.sample()
	if w.err != nil {
		t.Fatal(w.err)
	}
	growth := map[string]int64{}
	for i, name := range w.names {
		growth[name] = (w.peak[i] - w.base[i]) << 10
		t.Logf("%-9s RSS %6.1f MiB before, peak %6.1f MiB: grew %6.1f MiB", name,
			float64(w.base[i])/1024, float64(w.peak[i])/1024, float64(growth[name])/(1<<20))
	}
	return growth
}

func memMiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// uploadPath is one way of uploading an image: it streams body and returns the task's internal id.
type uploadPath struct {
	name string
	// through are the services the upload goes through.
	through []string
	upload  func(ctx context.Context, body io.Reader) (int64, error)
}

// TestUploadMemory streams a 200 MB image through every upload path of the split deployment (the
// frontend's /submitTask form and /api/tasks raw body, the master's /new) and checks that no service
// it goes through grows its resident set by uploadGrowthLimit or more, and that storage holds exactly
// the bytes sent.
func TestUploadMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("the 200 MB upload test is not run with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	secret := make([]byte, publicid.MinSecretLen)
	rand.Read(secret)
	ids, err := publicid.New(secret)
	if err != nil {
		t.Fatal(err)
	}
	d := deploytest.New(t)
	// The default limits accept the image below (5120x5120 pixels, 26 MP, 200 MiB); they are set
	// higher anyway so that the test measures the upload path, not today's defaults.
	limit := "300000000"
	d.MustStart("kv", "kv", "--addr", d.KVAddr, "--data", filepath.Join(d.Dir, "kv"))
	d.MustStart("database", "database", "--addr", "127.0.0.1:0", "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "db"))
	d.MustStart("storage", "storage", "--addr", "127.0.0.1:0", "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "storage"))
	d.MustStart("master", "master", "--addr", "127.0.0.1:0", "--kv", d.KVAddr,
		"--max-upload", limit, "--max-pixels", "100000000", "--max-dimension", "20000")
	d.WaitReady()
	d.MustStart("frontend", "frontend", "--addr", d.FEAddr, "--kv", d.KVAddr, "--upload-rate", "0",
		"--max-upload", limit, "--secret", publicid.FormatSecret(secret))

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	if err := memWaitHTTP(ctx, d.HC, "http://"+d.FEAddr+"/healthz"); err != nil {
		t.Fatal(err)
	}
	fe := "http://" + d.FEAddr
	paths := []uploadPath{
		{"frontend POST /submitTask", []string{"frontend", "master", "storage"}, func(ctx context.Context, body io.Reader) (int64, error) {
			reply, err := memPostMultipart(ctx, d.HC, fe+"/submitTask", frontend.UploadField, body)
			if err != nil {
				return 0, err
			}
			return ids.Decode(reply)
		}},
		{"frontend POST /api/tasks", []string{"frontend", "master", "storage"}, func(ctx context.Context, body io.Reader) (int64, error) {
			reply, err := memPost(ctx, d.HC, fe+"/api/tasks", "image/png", body, http.StatusCreated)
			if err != nil {
				return 0, err
			}
			var created wire.TaskCreated
			if err := json.Unmarshal([]byte(reply), &created); err != nil {
				return 0, fmt.Errorf("answer %q: %w", reply, err)
			}
			return ids.Decode(created.ID)
		}},
		{"master POST /new", []string{"master", "storage"}, func(ctx context.Context, body io.Reader) (int64, error) {
			return d.Master().New(ctx, body, -1)
		}},
	}
	big := streamPNG{width: 5120, height: 5120, depth: 16, seed: 7}
	for i, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			// A small upload first, so that what every later one needs (connections, buffers, a
			// grown heap) is there before the baseline.
			uploadAndCheck(ctx, t, d, p, streamPNG{width: 64, height: 64, depth: 8, seed: uint64(i)})
			watch := watchRSS(t, d, p.through...)
			n := uploadAndCheck(ctx, t, d, p, big)
			growth := watch.finish(t)
			if n < bigUploadMin {
				t.Fatalf("uploaded %d bytes, want at least %d", n, bigUploadMin)
			}
			for _, name := range p.through {
				if growth[name] >= uploadGrowthLimit {
					t.Errorf("%s: RSS grew by %s while %s streamed through it, want less than %s",
						name, memMiB(growth[name]), memMiB(n), memMiB(uploadGrowthLimit))
				}
			}
		})
	}
}

// uploadAndCheck uploads s by p, checks that storage holds exactly the bytes sent, and returns their
// number.
func uploadAndCheck(ctx context.Context, t *testing.T, d *deploytest.Deployment, p uploadPath, s streamPNG) int64 {
	t.Helper()
	src := s.open()
	defer src.Close()
	sent := newHashingReader(src)
	id, err := p.upload(ctx, sent)
	sentN, sentSum := sent.result()
	if err != nil {
		t.Fatalf("upload of %d bytes: %v", sentN, err)
	}
	if id < 0 {
		t.Fatalf("upload answered id %d", id)
	}
	img, err := d.Storage().GetImage(ctx, id, wire.WorkingImage)
	if err != nil {
		t.Fatalf("storage GET /getImage?id=%d&state=working: %v", id, err)
	}
	defer img.Close()
	stored := newHashingReader(img)
	if _, err := io.Copy(io.Discard, stored); err != nil {
		t.Fatalf("read stored image of task %d: %v", id, err)
	}
	if n, sum := stored.result(); n != sentN || sum != sentSum {
		t.Fatalf("task %d: storage holds %d bytes (sha256 %s), sent %d (sha256 %s)", id, n, sum, sentN, sentSum)
	}
	return sentN
}

// memPost sends body (streamed, of unknown length) and returns the answer of a reply with status want.
func memPost(ctx context.Context, hc *http.Client, url, contentType string, body io.Reader, want int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != want {
		return "", fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// memPostMultipart streams file as the field of a multipart form, never holding it whole.
func memPostMultipart(ctx context.Context, hc *http.Client, url, field string, file io.Reader) (string, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	var wg sync.WaitGroup
	wg.Go(func() {
		part, err := mw.CreateFormFile(field, "big.png")
		if err == nil {
			_, err = io.Copy(part, file)
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	})
	reply, err := memPost(ctx, hc, url, mw.FormDataContentType(), pr, http.StatusOK)
	pr.CloseWithError(errors.New("request ended")) // unblocks the writer when the server answered early
	wg.Wait()
	return reply, err
}

// memWaitHTTP polls url until it answers 200.
func memWaitHTTP(ctx context.Context, hc *http.Client, url string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %v)", url, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// memWaitSettled polls the master until task id is finished or failed and returns its status.
func memWaitSettled(ctx context.Context, t *testing.T, m *client.Master, id int64) wire.Status {
	t.Helper()
	for {
		st, err := m.Status(ctx, id)
		if err == nil && (st.State == "finished" || st.State == "failed") {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("task %d not finished or failed in time: %+v, %v", id, st, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestWorkerMemory runs a worker process on a 4000x4000 image (64 MB of pixels decoded, its PNG as
// large: the pixels are noise) and checks that its resident set grows by less than a small constant
// times the decoded image; and that a worker whose --max-pixels the image is over fails the task for
// good without decoding it (its resident set grows by far less than the image).
func TestWorkerMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("the large image test is not run with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	d := deploytest.New(t)
	d.StartBackends()
	m := d.Master()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	big := streamPNG{width: 4000, height: 4000, depth: 8, seed: 11}
	decoded := big.decodedBytes()
	upload := func(s streamPNG) int64 {
		t.Helper()
		src := s.open()
		defer src.Close()
		id, err := m.New(ctx, src, -1)
		if err != nil {
			t.Fatalf("upload %dx%d: %v", s.width, s.height, err)
		}
		return id
	}
	small := func(seed uint64) {
		t.Helper()
		if st := memWaitSettled(ctx, t, m, upload(streamPNG{width: 64, height: 64, depth: 8, seed: seed})); st.State != "finished" {
			t.Fatalf("small image: %+v", st)
		}
	}

	t.Run("over --max-pixels", func(t *testing.T) {
		d.StartWorker("worker-limited", "--concurrency", "1", "--max-pixels", "10000000")
		defer d.Kill("worker-limited")
		small(1)
		watch := watchRSS(t, d, "worker-limited")
		st := memWaitSettled(ctx, t, m, upload(big))
		growth := watch.finish(t)["worker-limited"]
		want := "image is 4000x4000 pixels, over the limit of 10000000 pixels (10 MP) in all: scale it down and upload it again"
		if st.State != "failed" || st.Attempts != 1 || st.Error != want {
			t.Errorf("task = %+v, want failed on its first attempt with %q", st, want)
		}
		if growth >= decoded/4 {
			t.Errorf("the worker grew by %s refusing a %dx%d image (%s decoded): it was decoded", memMiB(growth), big.width, big.height, memMiB(decoded))
		}
	})

	t.Run("processed", func(t *testing.T) {
		if raceEnabled() {
			// The race detector's shadow memory grows with the heap several times over (the worker
			// grows by about 20 times the image under it), and decoding takes a minute.
			t.Skip("a worker's memory is not measured under the race detector")
		}
		d.StartWorker("worker", "--concurrency", "1")
		defer d.Kill("worker")
		small(2)
		watch := watchRSS(t, d, "worker")
		id := upload(big)
		st := memWaitSettled(ctx, t, m, id)
		growth := watch.finish(t)["worker"]
		if st.State != "finished" {
			t.Fatalf("task = %+v, want finished", st)
		}
		limit := 2*decoded + 32<<20
		t.Logf("worker peak growth %s = %.2f x the decoded image (%s); limit %s", memMiB(growth), float64(growth)/float64(decoded), memMiB(decoded), memMiB(limit))
		if growth >= limit {
			t.Errorf("the worker grew by %s processing a %dx%d image (%s decoded), want less than %s",
				memMiB(growth), big.width, big.height, memMiB(decoded), memMiB(limit))
		}
		checkSwappedResult(ctx, t, m, id, big)
	})
}

// raceEnabled reports whether this binary, and so every service the tests start from it, was built
// with the race detector.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// checkSwappedResult checks that task id's result is s with red and green swapped.
func checkSwappedResult(ctx context.Context, t *testing.T, m *client.Master, id int64, s streamPNG) {
	t.Helper()
	res, err := m.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	img, err := png.Decode(res)
	if err != nil {
		t.Fatalf("decode result: %v", err)
	}
	out, ok := img.(*image.NRGBA)
	if !ok || out.Rect.Dx() != s.width || out.Rect.Dy() != s.height {
		t.Fatalf("result is a %T of %v, want %dx%d NRGBA", img, img.Bounds(), s.width, s.height)
	}
	row := make([]byte, s.rowBytes())
	for y := range s.height {
		s.fillRow(y, row)
		got := out.Pix[y*out.Stride:]
		for x := 0; x < len(row); x += 4 {
			if got[x] != row[x+1] || got[x+1] != row[x] || got[x+2] != row[x+2] || got[x+3] != row[x+3] {
				t.Fatalf("result pixel (%d,%d) = %v, want %v with red and green swapped", x/4, y, got[x:x+4], row[x:x+4])
			}
		}
	}
}
