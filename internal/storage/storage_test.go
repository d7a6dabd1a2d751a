package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
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
	s := &storageServer{t: t, dir: filepath.Join(t.TempDir(), "images"), uploads: make(chan struct{}, 64)}
	s.url = servicetest.ServeStorage(t, s.dir, func(inner http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	})
	s.c = servicetest.NewHTTPClient(t)
	return s
}

func imageQuery(id, state string) url.Values { return url.Values{"id": {id}, "state": {state}} }

// do sends req and checks what every reply must carry (see servicetest.ConventionError).
func (s *storageServer) do(req *http.Request) servicetest.Reply {
	s.t.Helper()
	r := servicetest.MustDo(s.t, s.c, req)
	if err := servicetest.ConventionError(req.Method, req.URL.Path, r); err != nil {
		s.t.Error(err)
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

func (s *storageServer) send(id, state string, body []byte) servicetest.Reply {
	s.t.Helper()
	return s.do(s.request("POST", "/sendImage", imageQuery(id, state), bytes.NewReader(body), int64(len(body))))
}

// sendResult sends a finished image with the lease token token ("" sends none).
func (s *storageServer) sendResult(id, token string, body []byte) servicetest.Reply {
	s.t.Helper()
	q := imageQuery(id, "finished")
	if token != "" {
		q.Set("token", token)
	}
	return s.do(s.request("POST", "/sendImage", q, bytes.NewReader(body), int64(len(body))))
}

func (s *storageServer) get(id, state string) servicetest.Reply {
	s.t.Helper()
	return s.do(s.request("GET", "/getImage", imageQuery(id, state), nil, 0))
}

func (s *storageServer) expectText(r servicetest.Reply, status int, body string) {
	s.t.Helper()
	if r.Status != status || r.Body != body {
		s.t.Errorf("got %d %q, want %d %q", r.Status, r.Body, status, body)
	}
}

func (s *storageServer) expectImage(id, state string, want []byte) {
	s.t.Helper()
	r := s.get(id, state)
	if r.Status != 200 || r.Body != string(want) {
		s.t.Errorf("GET %s/%s = %d, %d bytes %.40q; want 200 with %d bytes %.40q", state, id, r.Status, len(r.Body), r.Body, len(want), want)
	}
}

// expectToken checks the image of id and state and the lease token it is served with ("" for none).
func (s *storageServer) expectToken(id, state string, want []byte, token string) {
	s.t.Helper()
	r := s.get(id, state)
	if r.Status != 200 || r.Body != string(want) {
		s.t.Errorf("GET %s/%s = %d, %d bytes %.40q; want 200 with %d bytes %.40q", state, id, r.Status, len(r.Body), r.Body, len(want), want)
	}
	got, ok := r.Header[wire.LeaseTokenHeader]
	if token == "" && ok {
		s.t.Errorf("GET %s/%s sent %s %q, want none", state, id, wire.LeaseTokenHeader, got)
	}
	if token != "" && (len(got) != 1 || got[0] != token) {
		s.t.Errorf("GET %s/%s sent %s %q, want %q", state, id, wire.LeaseTokenHeader, got, token)
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
	servicetest.ExpectPNGReply(t, "GET /getImage", r, pic)
	if v, ok := r.Header[wire.LeaseTokenHeader]; ok {
		t.Errorf("an upload without a token is served with %s %q", wire.LeaseTokenHeader, v)
	}
	if _, err := png.Decode(strings.NewReader(r.Body)); err != nil {
		t.Errorf("returned image does not decode: %v", err)
	}

	// The states and ids are separate images.
	s.expectMissing("1", "finished")
	s.expectMissing("2", "working")
	other := []byte("not a png, just text")
	s.expectText(s.send("1", "finished", other), 200, "success")
	s.expectImage("1", "finished", other)
	s.expectImage("1", "working", pic)
	if ct := s.get("1", "finished").Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
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
	if r.Status != http.StatusPartialContent || r.Body != string(pic[:8]) {
		t.Errorf("range GET = %d %q, want 206 %q", r.Status, r.Body, pic[:8])
	}

	r = s.do(s.request("HEAD", "/getImage", imageQuery("4", "finished"), nil, 0))
	if r.Status != 200 || len(r.Body) != 0 || r.Header.Get("Content-Length") != strconv.Itoa(len(pic)) {
		t.Errorf("HEAD = %d, %d bytes, Content-Length %q", r.Status, len(r.Body), r.Header.Get("Content-Length"))
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
	anyImage := imageQuery("1", "working")
	servicetest.CheckPlumbing(t, s.c, s.url, []servicetest.Route{
		{Method: "GET", Path: "/nope", Query: anyImage, Status: 404, Body: "Error: no endpoint /nope"},
		{Method: "GET", Path: "/sendImage", Query: anyImage, Status: 405, Body: "Error: method GET not allowed on /sendImage", Allow: "POST"},
		{Method: "PUT", Path: "/sendImage", Query: anyImage, Status: 405, Body: "Error: method PUT not allowed on /sendImage", Allow: "POST"},
		{Method: "POST", Path: "/getImage", Query: anyImage, Status: 405, Body: "Error: method POST not allowed on /getImage", Allow: "GET, HEAD"},
		{Method: "DELETE", Path: "/getImage", Query: anyImage, Status: 405, Body: "Error: method DELETE not allowed on /getImage", Allow: "GET, HEAD"},
	})
	servicetest.CheckEchoesRequestID(t, s.c, "GET", s.url+"/getImage?"+anyImage.Encode(), "storage-req-3")
}

const staleReply = "Error: stale lease token for task 7"

func TestLeaseTokenFencing(t *testing.T) {
	s := newStorage(t)
	s.expectText(s.sendResult("7", "5", []byte("by claim 5")), 200, "success")
	s.expectToken("7", "finished", []byte("by claim 5"), "5")

	// A worker whose lease lapsed (an older claim) cannot replace the newer result.
	s.expectText(s.sendResult("7", "4", []byte("by claim 4")), 409, staleReply)
	s.expectText(s.sendResult("7", "1", []byte("by claim 1")), 409, staleReply)
	r := s.do(s.request("POST", "/sendImage", url.Values{"id": {"7"}, "state": {"finished"}, "token": {"3"}},
		opaqueReader{strings.NewReader("chunked by claim 3")}, -1))
	s.expectText(r, 409, staleReply)
	s.expectToken("7", "finished", []byte("by claim 5"), "5")

	// The same claim retrying is accepted; a newer claim too, after which 5 is stale.
	s.expectText(s.sendResult("7", "5", []byte("claim 5 retried")), 200, "success")
	s.expectToken("7", "finished", []byte("claim 5 retried"), "5")
	s.expectText(s.sendResult("7", "6", []byte("by claim 6")), 200, "success")
	s.expectToken("7", "finished", []byte("by claim 6"), "6")
	s.expectText(s.sendResult("7", "5", []byte("claim 5 late")), 409, staleReply)
	s.expectToken("7", "finished", []byte("by claim 6"), "6")

	// Other tasks and the working image are separate.
	s.expectText(s.sendResult("8", "1", []byte("task 8")), 200, "success")
	s.expectToken("8", "finished", []byte("task 8"), "1")
	s.expectText(s.send("7", "working", []byte("upload")), 200, "success")
	s.expectToken("7", "working", []byte("upload"), "")

	// The token is served on HEAD and range requests too.
	r = s.do(s.request("HEAD", "/getImage", imageQuery("7", "finished"), nil, 0))
	if r.Status != 200 || r.Header.Get(wire.LeaseTokenHeader) != "6" {
		t.Errorf("HEAD = %d %s %q, want 200 and 6", r.Status, wire.LeaseTokenHeader, r.Header.Get(wire.LeaseTokenHeader))
	}
	req := s.request("GET", "/getImage", imageQuery("7", "finished"), nil, 0)
	req.Header.Set("Range", "bytes=0-1")
	r = s.do(req)
	if r.Status != http.StatusPartialContent || r.Body != "by" || r.Header.Get(wire.LeaseTokenHeader) != "6" {
		t.Errorf("range GET = %d %q %s %q, want 206 \"by\" and 6", r.Status, r.Body, wire.LeaseTokenHeader, r.Header.Get(wire.LeaseTokenHeader))
	}
	if files := s.files(); len(files) != 3 {
		t.Errorf("files = %v, want the three images and nothing else", files)
	}
}

// A worker that knows no tokens (the reference one) sends none, or 0: never refused, and what it stores
// carries no token, so any claim may replace it.
func TestUnfencedResult(t *testing.T) {
	s := newStorage(t)
	s.expectText(s.sendResult("7", "9", []byte("by claim 9")), 200, "success")
	s.expectText(s.sendResult("7", "", []byte("reference worker")), 200, "success")
	s.expectToken("7", "finished", []byte("reference worker"), "")
	s.expectText(s.sendResult("7", "2", []byte("by claim 2")), 200, "success")
	s.expectToken("7", "finished", []byte("by claim 2"), "2")
	s.expectText(s.sendResult("7", "0", []byte("token 0")), 200, "success")
	s.expectToken("7", "finished", []byte("token 0"), "")
}

func TestTokenValidation(t *testing.T) {
	s := newStorage(t)
	s.expectText(s.sendResult("7", "5", []byte("keep me")), 200, "success")
	for _, token := range []string{"abc", "-1", "+5", "-0", "1.0", "0x10", " 5", "5 ", "", "1e3",
		"9223372036854775808", "99999999999999999999"} {
		want := fmt.Sprintf("Error: token must be a non-negative decimal integer, got %q", token)
		for _, id := range []string{"7", "8"} {
			q := imageQuery(id, "finished")
			q.Set("token", token)
			s.expectText(s.do(s.request("POST", "/sendImage", q, strings.NewReader("data"), 4)), 400, want)
		}
	}
	// The largest token and leading zeros are fine.
	s.expectText(s.sendResult("7", "0006", []byte("six")), 200, "success")
	s.expectToken("7", "finished", []byte("six"), "6")
	s.expectText(s.sendResult("9", "9223372036854775807", []byte("max")), 200, "success")
	s.expectToken("9", "finished", []byte("max"), "9223372036854775807")
	// The id and state are checked first; an empty body is refused before the token is looked at.
	q := url.Values{"id": {"x"}, "state": {"finished"}, "token": {"bad"}}
	s.expectText(s.do(s.request("POST", "/sendImage", q, strings.NewReader("data"), 4)), 400,
		`Error: id must be a non-negative decimal integer, got "x"`)
	s.expectText(s.sendResult("7", "1", nil), 400, "Error: empty image body")
	s.expectToken("7", "finished", []byte("six"), "6")
	if files := s.files(); len(files) != 2 {
		t.Errorf("files = %v, want finished/7 and finished/9 only", files)
	}
}

// Workers racing to store one task's result (one presumed dead, its successors) leave the result of the
// newest claim; every other answer is success or the stale refusal.
func TestConcurrentResults(t *testing.T) {
	s := newStorage(t)
	const writers = 8
	for round := range 5 {
		id := strconv.Itoa(100 + round)
		var wg sync.WaitGroup
		replies := make([]servicetest.Reply, writers+1)
		errs := make([]error, writers+1)
		for token := 1; token <= writers; token++ {
			wg.Go(func() {
				q := imageQuery(id, "finished")
				q.Set("token", strconv.Itoa(token))
				body := bytes.Repeat([]byte{byte('a' + token)}, 64<<10+token)
				req := s.request("POST", "/sendImage", q, bytes.NewReader(body), int64(len(body)))
				replies[token], errs[token] = servicetest.Do(s.c, req)
			})
		}
		wg.Wait()
		for token := 1; token <= writers; token++ {
			if errs[token] != nil {
				t.Fatalf("token %d: %v", token, errs[token])
			}
			r := replies[token]
			if (r.Status != 200 || r.Body != "success") && (r.Status != 409 || r.Body != "Error: stale lease token for task "+id) {
				t.Errorf("token %d: %d %q, want success or the stale refusal", token, r.Status, r.Body)
			}
		}
		if r := replies[writers]; r.Status != 200 {
			t.Errorf("the newest claim was refused: %d %q", r.Status, r.Body)
		}
		s.expectToken(id, "finished", bytes.Repeat([]byte{byte('a' + writers)}, 64<<10+writers), strconv.Itoa(writers))
	}
}

// client.Storage speaks the same: SendResult sends the token, GetImage returns it, a refusal is
// ErrStaleToken.
func TestClientTokens(t *testing.T) {
	s := newStorage(t)
	c := client.NewStorage(s.c, client.Static(servicetest.Addr(s.url)))
	ctx := t.Context()
	get := func(id int64, state string) (string, int64) {
		t.Helper()
		img, err := c.GetImage(ctx, id, state)
		if err != nil {
			t.Fatalf("GetImage(%d, %s): %v", id, state, err)
		}
		defer img.Close()
		b, err := io.ReadAll(img)
		if err != nil {
			t.Fatal(err)
		}
		return string(b), img.Token
	}
	send := func(id, token int64, body string) error {
		return c.SendResult(ctx, id, token, strings.NewReader(body), int64(len(body)))
	}

	if err := c.SendImage(ctx, 1, wire.WorkingImage, strings.NewReader("upload"), 6); err != nil {
		t.Fatalf("SendImage: %v", err)
	}
	if body, token := get(1, wire.WorkingImage); body != "upload" || token != 0 {
		t.Errorf("working image = %q token %d, want %q token 0", body, token, "upload")
	}
	if err := send(1, 5, "by claim 5"); err != nil {
		t.Fatalf("SendResult(token 5): %v", err)
	}
	if body, token := get(1, wire.FinishedImage); body != "by claim 5" || token != 5 {
		t.Errorf("result = %q token %d, want %q token 5", body, token, "by claim 5")
	}
	err := send(1, 4, "by claim 4")
	if !errors.Is(err, client.ErrStaleToken) || !client.IsStatus(err, http.StatusConflict) {
		t.Errorf("SendResult(token 4) = %v, want ErrStaleToken with status 409", err)
	}
	if err := send(1, 5, "claim 5 retried"); err != nil {
		t.Errorf("SendResult(token 5) again: %v", err)
	}
	if err := send(1, 0, "reference worker"); err != nil {
		t.Errorf("SendResult(token 0): %v", err)
	}
	if body, token := get(1, wire.FinishedImage); body != "reference worker" || token != 0 {
		t.Errorf("result = %q token %d, want %q token 0", body, token, "reference worker")
	}
	if err := send(1, -1, "negative"); err == nil || errors.Is(err, client.ErrStaleToken) {
		t.Errorf("SendResult(token -1) = %v, want a refusal of the token", err)
	}
	if body, _ := get(1, wire.FinishedImage); body != "reference worker" {
		t.Errorf("a refused SendResult changed the result to %q", body)
	}
	// SendImage with an unknown length, and a body that can be replayed, work as before.
	if err := c.SendImage(ctx, 2, wire.FinishedImage, opaqueReader{strings.NewReader("chunked")}, -1); err != nil {
		t.Errorf("SendImage(size -1): %v", err)
	}
	if err := c.SendResult(ctx, 3, 2, bytes.NewReader([]byte("bytes")), 5); err != nil {
		t.Errorf("SendResult(bytes.Reader): %v", err)
	}
	if body, token := get(3, wire.FinishedImage); body != "bytes" || token != 2 {
		t.Errorf("result = %q token %d, want %q token 2", body, token, "bytes")
	}
}

// A malformed X-Lease-Token from a peer is a bad reply, not a token of 0.
func TestClientMalformedTokenHeader(t *testing.T) {
	for _, value := range []string{"x", "-1", "1.5"} {
		srv := servicetest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(wire.LeaseTokenHeader, value)
			w.Write([]byte("image"))
		}))
		c := client.NewStorage(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
		img, err := c.GetImage(context.Background(), 1, wire.FinishedImage)
		if err == nil {
			img.Close()
			t.Errorf("%q: GetImage succeeded with token %d", value, img.Token)
			continue
		}
		if !client.IsStatus(err, http.StatusBadGateway) || !strings.Contains(err.Error(), wire.LeaseTokenHeader) {
			t.Errorf("%q: GetImage = %v, want a 502 naming the header", value, err)
		}
	}
}

func TestDeleteImages(t *testing.T) {
	s := newStorage(t)
	pic := testPNG(t)
	for _, id := range []string{"4", "5"} {
		s.expectText(s.send(id, "working", pic), 200, "success")
		s.expectText(s.send(id, "finished", pic), 200, "success")
	}
	del := func(q url.Values) servicetest.Reply {
		return s.do(s.request(http.MethodDelete, "/images", q, nil, 0))
	}
	// One state only: the result goes, the upload stays.
	if r := del(imageQuery("4", "finished")); r.Status != http.StatusNoContent {
		t.Fatalf("DELETE /images of a result = %d %q, want 204", r.Status, r.Body)
	}
	s.expectMissing("4", "finished")
	s.expectImage("4", "working", pic)
	// Both states, twice: the second finds nothing and is no error.
	for range 2 {
		if r := del(url.Values{"id": {"4"}}); r.Status != http.StatusNoContent {
			t.Fatalf("DELETE /images = %d %q, want 204", r.Status, r.Body)
		}
		s.expectMissing("4", "working")
		s.expectMissing("4", "finished")
	}
	s.expectImage("5", "working", pic) // other tasks keep theirs
	s.expectImage("5", "finished", pic)
	for _, q := range []url.Values{{}, {"id": {"-1"}}, imageQuery("5", "other")} {
		if r := del(q); r.Status != http.StatusBadRequest || !strings.HasPrefix(r.Body, "Error:") {
			t.Errorf("DELETE /images?%s = %d %q, want 400 Error:", q.Encode(), r.Status, r.Body)
		}
	}
	s.expectImage("5", "working", pic)
}

// TestListBlobs: GET /list answers the blobs in key order, a page at a time with a cursor to the next,
// filtered by prefix, with sizes and modification times; bad limits are refused.
func TestListBlobs(t *testing.T) {
	s := newStorage(t)
	before := time.Now().Add(-time.Minute)
	for i, id := range []string{"3", "12", "1"} {
		s.expectText(s.send(id, "working", bytes.Repeat([]byte("w"), 10+i)), 200, "success")
	}
	s.expectText(s.send("12", "finished", []byte("result")), 200, "success")
	st := client.NewStorage(s.c, client.Static(servicetest.Addr(s.url)))
	ctx := t.Context()

	page, err := st.ListBlobs(ctx, "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, b := range page.Blobs {
		keys = append(keys, b.Key)
		if b.ModTime.Before(before) || b.ModTime.After(time.Now().Add(time.Minute)) {
			t.Errorf("%s: modTime %v, want about now", b.Key, b.ModTime)
		}
	}
	if strings.Join(keys, " ") != "finished/12 working/1 working/12 working/3" || page.Next != "" {
		t.Errorf("GET /list = %q next %q, want finished/12 working/1 working/12 working/3 and no next", keys, page.Next)
	}
	if len(page.Blobs) == 4 && (page.Blobs[0].Size != 6 || page.Blobs[1].Size != 12) {
		t.Errorf("sizes %d and %d, want 6 and 12", page.Blobs[0].Size, page.Blobs[1].Size)
	}

	// Pages of two, under a prefix.
	var paged []string
	after := ""
	for range 5 {
		page, err := st.ListBlobs(ctx, "working/", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page.Blobs {
			paged = append(paged, b.Key)
		}
		if after = page.Next; after == "" {
			break
		}
	}
	if strings.Join(paged, " ") != "working/1 working/12 working/3" || after != "" {
		t.Errorf("paged listing = %q (next %q), want working/1 working/12 working/3", paged, after)
	}

	for _, limit := range []string{"0", "-1", "x", strconv.Itoa(wire.MaxBlobPage + 1)} {
		r := s.do(s.request(http.MethodGet, "/list", url.Values{"limit": {limit}}, nil, 0))
		if r.Status != http.StatusBadRequest || !strings.HasPrefix(r.Body, "Error: limit must be") {
			t.Errorf("GET /list?limit=%s = %d %q, want 400 Error: limit must be ...", limit, r.Status, r.Body)
		}
	}
}
