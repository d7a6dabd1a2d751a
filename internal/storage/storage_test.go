package storage_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type storageServer struct {
	t   *testing.T
	url string
	dir string
	c   *http.Client
	// uploads receives a value each time a /sendImage handler has returned, so a test can wait until the
	// server is done with an upload the client abandoned.
	uploads chan struct{}
}

// newStorage runs the storage service over a file blob store in a temporary directory, wrapped as
// production wraps it. Everything is closed when the test ends.
func newStorage(t *testing.T) *storageServer {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "images")
	blobs, err := fileblob.Open(dir)
	if err != nil {
		t.Fatalf("fileblob.Open: %v", err)
	}
	s := &storageServer{t: t, dir: dir, uploads: make(chan struct{}, 64)}
	inner := storage.NewServer(blobs)
	hooked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if r.URL.Path == "/sendImage" {
				select {
				case s.uploads <- struct{}{}:
				default: // nobody is counting
				}
			}
		}()
		inner.ServeHTTP(w, r)
	})
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(hooked, slog.New(slog.DiscardHandler))
	srv.Start()
	s.url, s.c = srv.URL, httpapi.NewClient()
	t.Cleanup(func() {
		s.c.CloseIdleConnections()
		srv.Close()
		if err := blobs.Close(); err != nil {
			t.Errorf("close blob store: %v", err)
		}
	})
	return s
}

func imageQuery(id, state string) url.Values { return url.Values{"id": {id}, "state": {state}} }

type reply struct {
	status int
	body   []byte
	header http.Header
}

func (s *storageServer) do(req *http.Request) reply {
	s.t.Helper()
	resp, err := s.c.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read: %v", req.Method, req.URL, err)
	}
	r := reply{resp.StatusCode, b, resp.Header}
	if r.header.Get(httpapi.RequestIDHeader) == "" {
		s.t.Errorf("%s %s: no %s header", req.Method, req.URL.Path, httpapi.RequestIDHeader)
	}
	if r.status/100 != 2 && !bytes.HasPrefix(r.body, []byte("Error:")) {
		s.t.Errorf("%s %s: error reply %d %q does not start with Error:", req.Method, req.URL.Path, r.status, r.body)
	}
	return r
}

func (s *storageServer) request(method, path string, query url.Values, body io.Reader, size int64) *http.Request {
	s.t.Helper()
	u := s.url + path
	if query != nil {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if body != nil {
		req.ContentLength = size
	}
	return req
}

func (s *storageServer) send(id, state string, body []byte) reply {
	s.t.Helper()
	return s.do(s.request("POST", "/sendImage", imageQuery(id, state), bytes.NewReader(body), int64(len(body))))
}

func (s *storageServer) get(id, state string) reply {
	s.t.Helper()
	return s.do(s.request("GET", "/getImage", imageQuery(id, state), nil, 0))
}

func (s *storageServer) expectText(r reply, status int, body string) {
	s.t.Helper()
	if r.status != status || string(r.body) != body {
		s.t.Errorf("got %d %q, want %d %q", r.status, r.body, status, body)
	}
}

func (s *storageServer) expectImage(id, state string, want []byte) {
	s.t.Helper()
	r := s.get(id, state)
	if r.status != 200 || !bytes.Equal(r.body, want) {
		s.t.Errorf("GET %s/%s = %d, %d bytes %.40q; want 200 with %d bytes %.40q", state, id, r.status, len(r.body), r.body, len(want), want)
	}
}

func (s *storageServer) expectMissing(id, state string) {
	s.t.Helper()
	s.expectText(s.get(id, state), 404, fmt.Sprintf("Error: no %s image for task %s", state, id))
}

// waitUpload waits until a /sendImage handler has returned.
func (s *storageServer) waitUpload() {
	s.t.Helper()
	select {
	case <-s.uploads:
	case <-time.After(30 * time.Second):
		s.t.Fatal("the server never finished handling the upload")
	}
}

// files lists the regular files under the store's directory.
func (s *storageServer) files() []string {
	s.t.Helper()
	var files []string
	err := filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(s.dir, path)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return files
}

func testPNG(t *testing.T) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 5, 3))
	for x := range 5 {
		for y := range 3 {
			img.Set(x, y, color.RGBA{uint8(40 * x), uint8(80 * y), 200, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestPNGRoundTrip(t *testing.T) {
	s := newStorage(t)
	pic := testPNG(t)
	s.expectText(s.send("1", "working", pic), 200, "success")

	r := s.get("1", "working")
	if r.status != 200 || !bytes.Equal(r.body, pic) {
		t.Fatalf("GET = %d with %d bytes, want the %d bytes sent", r.status, len(r.body), len(pic))
	}
	if ct := r.header.Get("Content-Type"); ct != "image/png" {
		t.Errorf("Content-Type = %q, want image/png", ct)
	}
	if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(pic)) {
		t.Errorf("Content-Length = %q, want %d", cl, len(pic))
	}
	if _, err := png.Decode(bytes.NewReader(r.body)); err != nil {
		t.Errorf("returned image does not decode: %v", err)
	}

	// The states and ids are separate images.
	s.expectMissing("1", "finished")
	s.expectMissing("2", "working")
	other := []byte("not a png, just text")
	s.expectText(s.send("1", "finished", other), 200, "success")
	s.expectImage("1", "finished", other)
	s.expectImage("1", "working", pic)
	if ct := s.get("1", "finished").header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type of text = %q", ct)
	}
}

func TestOverwrite(t *testing.T) {
	s := newStorage(t)
	s.expectText(s.send("3", "working", []byte("first version")), 200, "success")
	s.expectText(s.send("3", "working", []byte("second")), 200, "success")
	s.expectImage("3", "working", []byte("second"))
}

func TestRangeAndHead(t *testing.T) {
	s := newStorage(t)
	pic := testPNG(t)
	s.expectText(s.send("4", "finished", pic), 200, "success")

	req := s.request("GET", "/getImage", imageQuery("4", "finished"), nil, 0)
	req.Header.Set("Range", "bytes=0-7")
	r := s.do(req)
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, pic[:8]) {
		t.Errorf("range GET = %d %q, want 206 %q", r.status, r.body, pic[:8])
	}

	r = s.do(s.request("HEAD", "/getImage", imageQuery("4", "finished"), nil, 0))
	if r.status != 200 || len(r.body) != 0 || r.header.Get("Content-Length") != strconv.Itoa(len(pic)) {
		t.Errorf("HEAD = %d, %d bytes, Content-Length %q", r.status, len(r.body), r.header.Get("Content-Length"))
	}
}

func TestParamValidation(t *testing.T) {
	s := newStorage(t)
	tests := []struct {
		name  string
		query url.Values
		body  string
	}{
		{"no params", nil, "Error: missing id parameter"},
		{"no id", url.Values{"state": {"working"}}, "Error: missing id parameter"},
		{"word id", imageQuery("abc", "working"), `Error: id must be a non-negative decimal integer, got "abc"`},
		{"negative id", imageQuery("-1", "working"), `Error: id must be a non-negative decimal integer, got "-1"`},
		{"decimal id", imageQuery("1.0", "working"), `Error: id must be a non-negative decimal integer, got "1.0"`},
		{"path id", imageQuery("../1", "working"), `Error: id must be a non-negative decimal integer, got "../1"`},
		{"no state", url.Values{"id": {"1"}}, `Error: state must be "working" or "finished", got ""`},
		{"other state", imageQuery("1", "done"), `Error: state must be "working" or "finished", got "done"`},
		{"upper-case state", imageQuery("1", "WORKING"), `Error: state must be "working" or "finished", got "WORKING"`},
		{"path state", imageQuery("1", "working/.."), `Error: state must be "working" or "finished", got "working/.."`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.do(s.request("POST", "/sendImage", tt.query, strings.NewReader("data"), 4))
			s.expectText(r, 400, tt.body)
			r = s.do(s.request("GET", "/getImage", tt.query, nil, 0))
			s.expectText(r, 400, tt.body)
		})
	}
	if files := s.files(); len(files) != 0 {
		t.Errorf("refused uploads left files: %v", files)
	}
}

// opaqueReader hides the concrete reader so that the client sends the body chunked, with no length.
type opaqueReader struct{ io.Reader }

func TestEmptyBody(t *testing.T) {
	s := newStorage(t)
	// Content-Length: 0.
	s.expectText(s.send("5", "working", nil), 400, "Error: empty image body")
	s.expectMissing("5", "working")
	// Chunked and empty.
	r := s.do(s.request("POST", "/sendImage", imageQuery("5", "working"), opaqueReader{strings.NewReader("")}, -1))
	s.expectText(r, 400, "Error: empty image body")
	s.expectMissing("5", "working")

	// A refused empty upload leaves an existing image alone, however it was sent.
	s.expectText(s.send("6", "working", []byte("keep me")), 200, "success")
	s.expectText(s.send("6", "working", nil), 400, "Error: empty image body")
	s.expectImage("6", "working", []byte("keep me"))
	r = s.do(s.request("POST", "/sendImage", imageQuery("6", "working"), opaqueReader{strings.NewReader("")}, -1))
	s.expectText(r, 400, "Error: empty image body")
	s.expectImage("6", "working", []byte("keep me"))

	if files := s.files(); len(files) != 1 || files[0] != "working/6" {
		t.Errorf("files = %v, want only working/6", files)
	}
}

// randomStream is a reproducible pseudo-random stream of n bytes.
func randomStream(seed byte, n int64) io.Reader {
	var s [32]byte
	s[0] = seed
	return io.LimitReader(rand.NewChaCha8(s), n)
}

func TestLargeStreamedUpload(t *testing.T) {
	s := newStorage(t)
	for _, tt := range []struct {
		name    string
		size    int64
		chunked bool
	}{
		{"32MiB with length", 32 << 20, false},
		{"5MiB chunked", 5<<20 + 123, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := strconv.FormatInt(tt.size, 10)
			sent := sha256.New()
			var body io.Reader = opaqueReader{io.TeeReader(randomStream(byte(tt.size), tt.size), sent)}
			size := tt.size
			if tt.chunked {
				size = -1
			}
			s.expectText(s.do(s.request("POST", "/sendImage", imageQuery(id, "working"), body, size)), 200, "success")

			resp, err := s.c.Get(s.url + "/getImage?" + imageQuery(id, "working").Encode())
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("GET = %d", resp.StatusCode)
			}
			if resp.ContentLength != tt.size {
				t.Errorf("Content-Length = %d, want %d", resp.ContentLength, tt.size)
			}
			got := sha256.New()
			n, err := io.Copy(got, resp.Body)
			if err != nil {
				t.Fatalf("read image: %v", err)
			}
			if n != tt.size || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
				t.Errorf("got %d bytes with sha256 %x, sent %d bytes with sha256 %x", n, got.Sum(nil), tt.size, sent.Sum(nil))
			}
		})
	}
}

func TestAbortedUploadLeavesNoImage(t *testing.T) {
	for _, tt := range []struct {
		name     string
		size     int64 // announced; -1 sends chunked
		existing []byte
	}{
		{"with length", 8 << 20, nil},
		{"chunked", -1, nil},
		{"over an existing image", 8 << 20, []byte("the previous image")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStorage(t)
			if tt.existing != nil {
				s.expectText(s.send("9", "working", tt.existing), 200, "success")
				s.waitUpload()
			}
			pr, pw := io.Pipe()
			go func() {
				chunk := bytes.Repeat([]byte("x"), 64<<10)
				for range 16 { // 1 MiB, then the client gives up
					if _, err := pw.Write(chunk); err != nil {
						return
					}
				}
				pw.CloseWithError(errors.New("client gave up"))
			}()
			req := s.request("POST", "/sendImage", imageQuery("9", "working"), pr, tt.size)
			resp, err := s.c.Do(req)
			if err == nil {
				resp.Body.Close()
				t.Fatalf("aborted upload answered %d, want a client error", resp.StatusCode)
			}
			if !strings.Contains(err.Error(), "client gave up") {
				t.Errorf("upload error = %v, want the body's error", err)
			}
			s.waitUpload()

			if tt.existing != nil {
				s.expectImage("9", "working", tt.existing)
				if files := s.files(); len(files) != 1 || files[0] != "working/9" {
					t.Errorf("files = %v, want only working/9", files)
				}
				return
			}
			s.expectMissing("9", "working")
			if files := s.files(); len(files) != 0 {
				t.Errorf("aborted upload left files: %v", files)
			}
		})
	}
}

func TestPlumbing(t *testing.T) {
	s := newStorage(t)
	s.expectText(s.do(s.request("GET", "/healthz", nil, nil, 0)), 200, "ok")
	tests := []struct {
		method, path string
		status       int
		body         string
		allow        string
	}{
		{"GET", "/nope", 404, "Error: no endpoint /nope", ""},
		{"GET", "/sendImage", 405, "Error: method GET not allowed on /sendImage", "POST"},
		{"PUT", "/sendImage", 405, "Error: method PUT not allowed on /sendImage", "POST"},
		{"POST", "/getImage", 405, "Error: method POST not allowed on /getImage", "GET, HEAD"},
		{"DELETE", "/getImage", 405, "Error: method DELETE not allowed on /getImage", "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			r := s.do(s.request(tt.method, tt.path, imageQuery("1", "working"), nil, 0))
			if r.status != tt.status || string(r.body) != tt.body || r.header.Get("Allow") != tt.allow {
				t.Errorf("%s %s = %d %q Allow %q, want %d %q Allow %q", tt.method, tt.path,
					r.status, r.body, r.header.Get("Allow"), tt.status, tt.body, tt.allow)
			}
		})
	}

	req := s.request("GET", "/getImage", imageQuery("1", "working"), nil, 0)
	req.Header.Set(httpapi.RequestIDHeader, "storage-req-3")
	if r := s.do(req); r.header.Get(httpapi.RequestIDHeader) != "storage-req-3" {
		t.Errorf("request id not echoed: %q", r.header.Get(httpapi.RequestIDHeader))
	}
}
