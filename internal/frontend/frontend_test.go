package frontend_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	notReady = "Your image is not ready yet."
	ready    = "Your image is ready."
	noTask   = "Error: " + client.NoTaskMessage
)

var discard = slog.New(slog.DiscardHandler)

// maxUpload is the master's upload limit in these tests.
const maxUpload = 1 << 20

func addrOf(srv *httptest.Server) string { return strings.TrimPrefix(srv.URL, "http://") }

// stack is the frontend in front of a real master over real database and storage services.
type stack struct {
	hc       *http.Client
	dbSrv    *httptest.Server
	db       *client.Database
	st       *client.Storage
	frontend *httptest.Server
}

func newStack(t *testing.T) *stack {
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

	hc := httpapi.NewClient()
	t.Cleanup(hc.CloseIdleConnections)
	s := &stack{hc: hc}

	done := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(done) }) }
	s.dbSrv = httptest.NewServer(httpapi.Wrap(database.NewServer(store, 2*time.Minute, done), discard))
	t.Cleanup(s.dbSrv.Close)
	stSrv := httptest.NewServer(httpapi.Wrap(storage.NewServer(blobs), discard))
	t.Cleanup(stSrv.Close)
	t.Cleanup(stop)

	s.db = client.NewDatabase(hc, client.Static(addrOf(s.dbSrv)))
	s.st = client.NewStorage(hc, client.Static(addrOf(stSrv)))
	mSrv := httptest.NewServer(httpapi.Wrap(master.NewServer(s.db, s.st, maxUpload), discard))
	t.Cleanup(mSrv.Close)
	m := client.NewMaster(hc, client.Static(addrOf(mSrv)))
	s.frontend = httptest.NewServer(httpapi.Wrap(frontend.NewServer(m), discard))
	t.Cleanup(s.frontend.Close)
	t.Cleanup(stop)
	return s
}

type reply struct {
	status int
	body   string
	header http.Header
}

func (s *stack) call(t *testing.T, method, path, contentType string, body io.Reader) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.frontend.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return reply{status: resp.StatusCode, body: string(b), header: resp.Header}
}

type part struct {
	field, filename string
	data            []byte
}

// form builds a multipart/form-data body.
func form(t *testing.T, parts ...part) (contentType string, body []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		var w io.Writer
		var err error
		if p.filename != "" {
			w, err = mw.CreateFormFile(p.field, p.filename)
		} else {
			w, err = mw.CreateFormField(p.field)
		}
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p.data)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), buf.Bytes()
}

func (s *stack) submit(t *testing.T, parts ...part) reply {
	t.Helper()
	ct, body := form(t, parts...)
	return s.call(t, http.MethodPost, "/submitTask", ct, bytes.NewReader(body))
}

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

func (s *stack) expectNoClaimable(t *testing.T) {
	t.Helper()
	resp, err := s.hc.Post(s.dbSrv.URL+"/getNewTask", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || string(b) != noTask {
		t.Errorf("database POST /getNewTask: %d %q, want 400 %q (a task was left claimable)", resp.StatusCode, b, noTask)
	}
}

func (s *stack) working(t *testing.T, id int64) []byte {
	t.Helper()
	img, err := s.st.GetImage(t.Context(), id, client.Working)
	if err != nil {
		t.Fatalf("storage GetImage(%d, working): %v", id, err)
	}
	defer img.Close()
	b, err := io.ReadAll(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testPNG(t *testing.T, size int, seed int64) []byte {
	t.Helper()
	b, err := imageop.EncodePNG(imageop.TestPattern(size, seed))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIndexPage(t *testing.T) {
	s := newStack(t)
	r := s.call(t, http.MethodGet, "/", "", nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET /: %d %q", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("GET / Content-Type %q, want text/html", ct)
	}
	// The upload form: posts multipart to /submitTask with a file input named uploadfile inside it.
	formRE := regexp.MustCompile(`(?is)<form\b([^>]*)>(.*?)</form>`)
	found := false
	for _, m := range formRE.FindAllStringSubmatch(r.body, -1) {
		attrs, inner := m[1], m[2]
		if !strings.Contains(attrs, `action="/submitTask"`) {
			continue
		}
		found = true
		if !regexp.MustCompile(`(?i)method="post"`).MatchString(attrs) {
			t.Errorf("upload form %q does not post", attrs)
		}
		if !strings.Contains(attrs, `enctype="multipart/form-data"`) {
			t.Errorf("upload form %q is not multipart/form-data", attrs)
		}
		input := regexp.MustCompile(`<input\b[^>]*\bname="` + frontend.UploadField + `"[^>]*>`).FindString(inner)
		if input == "" {
			t.Errorf("upload form has no input named %q: %s", frontend.UploadField, inner)
		} else if !strings.Contains(input, `type="file"`) {
			t.Errorf("input %s is not a file input", input)
		}
	}
	if !found {
		t.Errorf("GET / has no form posting to /submitTask:\n%s", r.body)
	}
	if frontend.UploadField != "uploadfile" {
		t.Errorf("UploadField = %q, the reference field is uploadfile", frontend.UploadField)
	}
	expectError(t, "GET /nothing", s.call(t, http.MethodGet, "/nothing", "", nil), http.StatusNotFound)
	expectError(t, "POST /", s.call(t, http.MethodPost, "/", "", nil), http.StatusMethodNotAllowed)
}

func TestSubmitProcessAndGet(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	img := testPNG(t, 40, 11)
	// Other fields before and after the file are skipped.
	r := s.submit(t, part{field: "note", data: []byte("hello")}, part{field: frontend.UploadField, filename: "x.png", data: img},
		part{field: "after", data: []byte("bye")})
	if r.status != http.StatusOK {
		t.Fatalf("POST /submitTask: %d %q", r.status, r.body)
	}
	id := parseID(t, r.body)
	if got := s.working(t, id); !bytes.Equal(got, img) {
		t.Errorf("storage holds %d bytes for task %d, want the %d uploaded", len(got), id, len(img))
	}
	isReady := func() reply { return s.call(t, http.MethodGet, fmt.Sprintf("/isReady?id=%d", id), "", nil) }
	getImage := func() reply { return s.call(t, http.MethodGet, fmt.Sprintf("/getImage?id=%d", id), "", nil) }

	if r := isReady(); r.status != http.StatusOK || r.body != notReady {
		t.Errorf("isReady before processing: %d %q, want 200 %q", r.status, r.body, notReady)
	}
	expectError(t, "getImage before processing", getImage(), http.StatusNotFound)

	// Play the worker: claim, store a result, finish.
	task, err := s.db.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	result := testPNG(t, 40, 12)
	if err := s.st.SendImage(ctx, id, client.Finished, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.body != notReady {
		t.Errorf("isReady before the task is finished: %q, want %q", r.body, notReady)
	}
	if err := s.db.FinishTask(ctx, id); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.status != http.StatusOK || r.body != ready {
		t.Errorf("isReady after finishing: %d %q, want 200 %q", r.status, r.body, ready)
	}
	r = getImage()
	if r.status != http.StatusOK || r.body != string(result) {
		t.Fatalf("getImage: %d, %d bytes; want 200 and the %d finished bytes", r.status, len(r.body), len(result))
	}
	if ct := r.header.Get("Content-Type"); ct != "image/png" {
		t.Errorf("getImage Content-Type %q, want image/png", ct)
	}
	if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(result)) {
		t.Errorf("getImage Content-Length %q, want %d", cl, len(result))
	}
	if cd := r.header.Get("Content-Disposition"); cd != "" && !strings.Contains(cd, ".png") {
		t.Errorf("getImage Content-Disposition %q does not name a PNG", cd)
	}

	// A second upload gets a new id and is not ready.
	r = s.submit(t, part{field: frontend.UploadField, filename: "y.png", data: testPNG(t, 9, 13)})
	if r.status != http.StatusOK {
		t.Fatalf("second submit: %d %q", r.status, r.body)
	}
	if id2 := parseID(t, r.body); id2 == id {
		t.Errorf("second upload got id %d again", id)
	} else if r := s.call(t, http.MethodGet, fmt.Sprintf("/isReady?id=%d", id2), "", nil); r.body != notReady {
		t.Errorf("isReady of the second upload: %q, want %q", r.body, notReady)
	}
}

func TestSubmitRefusals(t *testing.T) {
	s := newStack(t)
	plainCT := "text/plain"
	for _, tc := range []struct {
		name   string
		ct     string
		body   []byte
		status int
	}{
		{"raw body", "image/png", testPNG(t, 8, 14), http.StatusBadRequest},
		{"no content type", "", []byte("x"), http.StatusBadRequest},
		{"text", plainCT, []byte("uploadfile=abc"), http.StatusBadRequest},
		{"urlencoded", "application/x-www-form-urlencoded", []byte("uploadfile=abc"), http.StatusBadRequest},
		{"multipart without boundary", "multipart/form-data", []byte("--x\r\n"), http.StatusBadRequest},
		{"malformed multipart", "multipart/form-data; boundary=zzz", []byte("not multipart at all"), http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			expectError(t, "POST /submitTask", s.call(t, http.MethodPost, "/submitTask", tc.ct, bytes.NewReader(tc.body)), tc.status)
			s.expectNoClaimable(t)
		})
	}
	t.Run("no uploadfile field", func(t *testing.T) {
		expectError(t, "submit other fields", s.submit(t, part{field: "file", filename: "a.png", data: testPNG(t, 8, 15)},
			part{field: "name", data: []byte("a")}), http.StatusBadRequest)
		expectError(t, "submit empty form", s.submit(t), http.StatusBadRequest)
		s.expectNoClaimable(t)
	})
	t.Run("empty file", func(t *testing.T) {
		expectError(t, "submit empty file", s.submit(t, part{field: frontend.UploadField, filename: "a.png"}), http.StatusBadRequest)
		s.expectNoClaimable(t)
	})
	t.Run("too large", func(t *testing.T) {
		// The frontend streams the part with unknown length; the master's 413 passes through.
		big := make([]byte, maxUpload+1)
		copy(big, "\x89PNG\r\n\x1a\n")
		expectError(t, "submit oversized file", s.submit(t, part{field: frontend.UploadField, filename: "big.png", data: big}),
			http.StatusRequestEntityTooLarge)
		s.expectNoClaimable(t)
	})
	t.Run("exactly the limit", func(t *testing.T) {
		body := make([]byte, maxUpload)
		copy(body, "\x89PNG\r\n\x1a\n")
		r := s.submit(t, part{field: frontend.UploadField, filename: "max.png", data: body})
		if r.status != http.StatusOK {
			t.Fatalf("submit of exactly the limit: %d %q", r.status, r.body)
		}
		if got := s.working(t, parseID(t, r.body)); !bytes.Equal(got, body) {
			t.Errorf("stored %d bytes, want the %d uploaded", len(got), len(body))
		}
		if _, err := s.db.GetNewTask(t.Context(), 0); err != nil { // leave nothing claimable for the next checks
			t.Fatal(err)
		}
	})
	t.Run("not an image", func(t *testing.T) {
		// The master's refusal passes through.
		expectError(t, "submit text file", s.submit(t, part{field: frontend.UploadField, filename: "a.txt", data: []byte("just some text, no image")}),
			http.StatusUnsupportedMediaType)
		s.expectNoClaimable(t)
	})
	for _, path := range []string{"/isReady", "/isReady?id=", "/isReady?id=x", "/isReady?id=-2", "/getImage", "/getImage?id=1.5"} {
		expectError(t, "GET "+path, s.call(t, http.MethodGet, path, "", nil), http.StatusBadRequest)
	}
	expectError(t, "getImage of an unknown task", s.call(t, http.MethodGet, "/getImage?id=999", "", nil), http.StatusNotFound)
	if r := s.call(t, http.MethodGet, "/isReady?id=999", "", nil); r.status == http.StatusOK || !strings.HasPrefix(r.body, "Error:") {
		t.Errorf("isReady of an unknown task: %d %q, want an \"Error: ...\" refusal", r.status, r.body)
	}
	expectError(t, "GET /submitTask", s.call(t, http.MethodGet, "/submitTask", "", nil), http.StatusMethodNotAllowed)
}

func TestSubmitStreamsMultipart(t *testing.T) {
	// A multipart body sent with unknown length, written while the request is under way.
	s := newStack(t)
	img := testPNG(t, 128, 16)
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		w, err := mw.CreateFormFile(frontend.UploadField, "big.png")
		if err == nil {
			for chunk := range slices.Chunk(img, 1000) {
				if _, err = w.Write(chunk); err != nil {
					break
				}
			}
		}
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	r := s.call(t, http.MethodPost, "/submitTask", mw.FormDataContentType(), pr)
	if r.status != http.StatusOK {
		t.Fatalf("streamed submit: %d %q", r.status, r.body)
	}
	if got := s.working(t, parseID(t, r.body)); !bytes.Equal(got, img) {
		t.Errorf("stored %d bytes, want the %d uploaded", len(got), len(img))
	}
}
