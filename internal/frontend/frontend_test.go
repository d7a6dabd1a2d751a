package frontend_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	notReady = "Your image is not ready yet."
	ready    = "Your image is ready."
	noSuch   = "Error: no such task"
)

// maxUpload is the master's upload limit in these tests.
const maxUpload = 1 << 20

// testSecret is the public id secret of the frontends under test.
var testSecret = bytes.Repeat([]byte("imgmill test secret "), 2)

// countingEndpoint is the master's address, counting the requests the frontend makes to it (the client
// asks for the address once per attempt).
type countingEndpoint struct {
	client.Static
	calls atomic.Int64
}

func (c *countingEndpoint) Addr(ctx context.Context) (string, error) {
	c.calls.Add(1)
	return c.Static.Addr(ctx)
}

// stack is the frontend in front of a servicetest.Stack.
type stack struct {
	*servicetest.Stack
	frontendURL string
	ids         *publicid.Codec
	master      *countingEndpoint // the frontend's way to the master
}

func newStack(t *testing.T) *stack {
	t.Helper()
	return newStackWith(t, frontend.Limits{})
}

func newStackWith(t *testing.T, opts frontend.Limits) *stack {
	t.Helper()
	return newStackOver(t, servicetest.Options{MaxUpload: maxUpload}, opts)
}

// newStackOver is newStackWith over a stack started with stackOpts.
func newStackOver(t *testing.T, stackOpts servicetest.Options, opts frontend.Limits) *stack {
	t.Helper()
	ids, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{Stack: servicetest.NewStack(t, stackOpts), ids: ids}
	s.master = &countingEndpoint{Static: client.Static(servicetest.Addr(s.MasterURL))}
	s.frontendURL = servicetest.Serve(t, frontend.NewServer(client.NewMaster(s.HTTP, s.master), ids, opts)).URL
	return s
}

func (s *stack) call(t *testing.T, method, path, contentType string, body io.Reader) servicetest.Reply {
	t.Helper()
	return s.callWith(t, method, path, contentType, body, nil)
}

func (s *stack) callWith(t *testing.T, method, path, contentType string, body io.Reader, header http.Header) servicetest.Reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.frontendURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	r := servicetest.MustDo(t, s.HTTP, req)
	expectFrontendHeaders(t, method+" "+path, r)
	return r
}

// expectFrontendHeaders checks the headers every frontend reply carries.
func expectFrontendHeaders(t testing.TB, what string, r servicetest.Reply) {
	t.Helper()
	if got := r.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("%s: X-Content-Type-Options %q, want nosniff", what, got)
	}
	if got := r.Header.Get("X-Frame-Options"); got != "DENY" {
		t.Errorf("%s: X-Frame-Options %q, want DENY", what, got)
	}
	if got := r.Header.Get("Referrer-Policy"); got != "no-referrer" {
		t.Errorf("%s: Referrer-Policy %q, want no-referrer", what, got)
	}
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

func (s *stack) submit(t *testing.T, parts ...part) servicetest.Reply {
	t.Helper()
	return s.submitWith(t, nil, parts...)
}

func (s *stack) submitWith(t *testing.T, header http.Header, parts ...part) servicetest.Reply {
	t.Helper()
	ct, body := form(t, parts...)
	return s.callWith(t, http.MethodPost, "/submitTask", ct, bytes.NewReader(body), header)
}

// submitImage uploads img and returns the public id answered.
func (s *stack) submitImage(t *testing.T, img []byte) string {
	t.Helper()
	r := s.submit(t, part{field: frontend.UploadField, filename: "x.png", data: img})
	if r.Status != http.StatusOK {
		t.Fatalf("POST /submitTask: %d %q", r.Status, r.Body)
	}
	return s.parsePublicID(t, r.Body)
}

// parsePublicID checks that a reply is a bare public id (no newline) and returns it.
func (s *stack) parsePublicID(t *testing.T, body string) string {
	t.Helper()
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`).MatchString(body) {
		t.Fatalf("reply %q is not a bare 43-character public id", body)
	}
	return body
}

// internal is the internal id behind public id pub (the test knows the secret).
func (s *stack) internal(t *testing.T, pub string) int64 {
	t.Helper()
	id, err := s.ids.Decode(pub)
	if err != nil {
		t.Fatalf("public id %q: %v", pub, err)
	}
	return id
}

// finish plays the worker for the next task, which must be id: claim, store result, finish.
func (s *stack) finish(t *testing.T, id int64, result []byte) {
	t.Helper()
	ctx := t.Context()
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
}

// paddedPNG is size bytes: a small valid PNG followed by zeros, which passes the master's checks of the
// image header.
func paddedPNG(t *testing.T, size int) []byte {
	t.Helper()
	img := servicetest.PatternPNG(t, 8, 99)
	if len(img) > size {
		t.Fatalf("paddedPNG(%d): the PNG alone is %d bytes", size, len(img))
	}
	return append(img, make([]byte, size-len(img))...)
}

// working returns the working image storage holds for task id.
func (s *stack) working(t *testing.T, id int64) []byte {
	t.Helper()
	b, ok := s.StoredImage(t, id, wire.WorkingImage)
	if !ok {
		t.Fatalf("storage holds no working image for task %d", id)
	}
	return b
}

func TestIndexPage(t *testing.T) {
	s := newStack(t)
	r := s.call(t, http.MethodGet, "/", "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /: %d %q", r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("GET / Content-Type %q, want text/html", ct)
	}
	// The upload form: posts multipart to /submitTask with a file input named uploadfile inside it.
	formRE := regexp.MustCompile(`(?is)<form\b([^>]*)>(.*?)</form>`)
	found, foundCheck := false, false
	for _, m := range formRE.FindAllStringSubmatch(r.Body, -1) {
		attrs, inner := m[1], m[2]
		if strings.Contains(attrs, `action="/isReady"`) {
			// The check form takes a public id: its pattern accepts one and nothing numeric.
			foundCheck = true
			pattern := regexp.MustCompile(`\bpattern="([^"]*)"`).FindStringSubmatch(inner)
			if pattern == nil {
				t.Errorf("check form has no id pattern: %s", inner)
				continue
			}
			re, err := regexp.Compile("^(?:" + pattern[1] + ")$")
			if err != nil {
				t.Fatalf("id pattern %q: %v", pattern[1], err)
			}
			if pub := s.ids.Encode(12); !re.MatchString(pub) {
				t.Errorf("id pattern %q refuses the public id %q", pattern[1], pub)
			}
			for _, bad := range []string{"0", "12", "task"} {
				if re.MatchString(bad) {
					t.Errorf("id pattern %q accepts %q", pattern[1], bad)
				}
			}
			if strings.Contains(inner, `inputmode="numeric"`) {
				t.Error("the id input still asks for a numeric keyboard")
			}
			continue
		}
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
		t.Errorf("GET / has no form posting to /submitTask:\n%s", r.Body)
	}
	if !foundCheck {
		t.Errorf("GET / has no form checking a task at /isReady:\n%s", r.Body)
	}
	if frontend.UploadField != "uploadfile" {
		t.Errorf("UploadField = %q, the reference field is uploadfile", frontend.UploadField)
	}
	servicetest.ExpectError(t, "GET /nothing", s.call(t, http.MethodGet, "/nothing", "", nil), http.StatusNotFound)
	servicetest.ExpectError(t, "POST /", s.call(t, http.MethodPost, "/", "", nil), http.StatusMethodNotAllowed)
}

// TestIndexPageCSP: the page's policy is strict (scripts and styles from the site only, nothing inline;
// no framing), the page needs nothing it forbids, and the files it loads are served from /assets/.
func TestIndexPageCSP(t *testing.T) {
	s := newStack(t)
	r := s.call(t, http.MethodGet, "/", "", nil)
	csp := r.Header.Get("Content-Security-Policy")
	directives := map[string]string{}
	for d := range strings.SplitSeq(csp, ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		directives[name] = value
	}
	for name, want := range map[string]string{"default-src": "'self'", "script-src": "'self'", "style-src": "'self'",
		"frame-ancestors": "'none'", "object-src": "'none'", "base-uri": "'none'", "form-action": "'self'"} {
		if got := directives[name]; got != want {
			t.Errorf("CSP %s = %q, want %q (policy %q)", name, got, want, csp)
		}
	}
	if strings.Contains(csp, "unsafe-") {
		t.Errorf("CSP allows something unsafe: %q", csp)
	}
	body := strings.ToLower(r.Body)
	for _, bad := range []string{"<style", " style=", " onclick=", " onsubmit=", " onload=", "javascript:"} {
		if strings.Contains(body, bad) {
			t.Errorf("page contains %q, which its policy blocks", bad)
		}
	}
	if n := strings.Count(body, "<script"); n != strings.Count(body, "<script src=\"/assets/") {
		t.Errorf("page has inline scripts, which its policy blocks")
	}
	// Every file the page loads is there, with its type, and revalidated by its ETag.
	refs := regexp.MustCompile(`(?:src|href)="(/assets/[^"]+)"`).FindAllStringSubmatch(r.Body, -1)
	if len(refs) < 2 {
		t.Fatalf("page loads %d files from /assets/, want its script and style sheet at least", len(refs))
	}
	for _, ref := range refs {
		a := s.call(t, http.MethodGet, ref[1], "", nil)
		if a.Status != http.StatusOK || a.Header.Get("Cache-Control") != "no-cache" || a.Header.Get("ETag") == "" ||
			a.Header.Get("Content-Type") == "" {
			t.Errorf("GET %s = %d, headers %v", ref[1], a.Status, a.Header)
			continue
		}
		again := s.callWith(t, http.MethodGet, ref[1], "", nil, http.Header{"If-None-Match": {a.Header.Get("ETag")}})
		if again.Status != http.StatusNotModified {
			t.Errorf("GET %s with its ETag = %d, want 304", ref[1], again.Status)
		}
	}
	servicetest.ExpectError(t, "GET /assets/index.html", s.call(t, http.MethodGet, "/assets/index.html", "", nil), http.StatusNotFound)
	servicetest.ExpectError(t, "GET /assets/nothing.js", s.call(t, http.MethodGet, "/assets/nothing.js", "", nil), http.StatusNotFound)
}

func TestSubmitProcessAndGet(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 40, 11)
	// Other fields before and after the file are skipped.
	r := s.submit(t, part{field: "note", data: []byte("hello")}, part{field: frontend.UploadField, filename: "x.png", data: img},
		part{field: "after", data: []byte("bye")})
	if r.Status != http.StatusOK {
		t.Fatalf("POST /submitTask: %d %q", r.Status, r.Body)
	}
	pub := s.parsePublicID(t, r.Body)
	id := s.internal(t, pub)
	if got := s.working(t, id); !bytes.Equal(got, img) {
		t.Errorf("storage holds %d bytes for task %d, want the %d uploaded", len(got), id, len(img))
	}
	isReady := func() servicetest.Reply { return s.call(t, http.MethodGet, "/isReady?id="+pub, "", nil) }
	getImage := func() servicetest.Reply { return s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil) }

	if r := isReady(); r.Status != http.StatusOK || r.Body != notReady {
		t.Errorf("isReady before processing: %d %q, want 200 %q", r.Status, r.Body, notReady)
	}
	if r := getImage(); r.Status != http.StatusNotFound || r.Body != "Error: task is not finished" {
		t.Errorf("getImage before processing: %d %q, want 404 \"Error: task is not finished\"", r.Status, r.Body)
	}

	// Play the worker: claim, store a result, finish.
	ctx := t.Context()
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	result := servicetest.PatternPNG(t, 40, 12)
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.Body != notReady {
		t.Errorf("isReady before the task is finished: %q, want %q", r.Body, notReady)
	}
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	if r := isReady(); r.Status != http.StatusOK || r.Body != ready {
		t.Errorf("isReady after finishing: %d %q, want 200 %q", r.Status, r.Body, ready)
	}
	r = getImage()
	servicetest.ExpectPNGReply(t, "getImage", r, result)
	wantCD := `attachment; filename="x-swap.png"` // named after the upload (x.png) and the chain
	if cd := r.Header.Get("Content-Disposition"); cd != wantCD {
		t.Errorf("getImage Content-Disposition %q, want %q", cd, wantCD)
	}
	if name := frontend.DownloadName(wire.Status{ID: id}, pub, "image/png"); name != "imgmill-"+pub[:12]+"-swap.png" ||
		strings.Contains(name, strconv.FormatInt(id, 10)+".") {
		t.Errorf("DownloadName(%q) = %q", pub, name)
	}

	// A second upload gets a new id and is not ready.
	pub2 := s.submitImage(t, servicetest.PatternPNG(t, 9, 13))
	if pub2 == pub {
		t.Errorf("second upload got id %s again", pub)
	} else if r := s.call(t, http.MethodGet, "/isReady?id="+pub2, "", nil); r.Body != notReady {
		t.Errorf("isReady of the second upload: %q, want %q", r.Body, notReady)
	}
}

// TestGetImageContentType: the download is typed as the master types it, whatever the file name says.
func TestGetImageContentType(t *testing.T) {
	s := newStack(t)
	pub := s.submitImage(t, servicetest.PatternPNG(t, 8, 30))
	// A worker that stored a GIF (the storage sniffs the type, the master passes it on).
	gif := []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;")
	s.finish(t, s.internal(t, pub), gif)
	r := s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil)
	if r.Status != http.StatusOK || r.Body != string(gif) {
		t.Fatalf("getImage: %d %q", r.Status, r.Body)
	}
	want, err := s.Master.Get(t.Context(), s.internal(t, pub))
	if err != nil {
		t.Fatal(err)
	}
	want.Close()
	if ct := r.Header.Get("Content-Type"); ct != want.ContentType || ct != "image/gif" {
		t.Errorf("getImage Content-Type %q, want the master's %q (image/gif)", ct, want.ContentType)
	}
	if cd := r.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment;") {
		t.Errorf("getImage Content-Disposition %q, want an attachment", cd)
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
		{"raw body", "image/png", servicetest.PatternPNG(t, 8, 14), http.StatusBadRequest},
		{"no content type", "", []byte("x"), http.StatusBadRequest},
		{"text", plainCT, []byte("uploadfile=abc"), http.StatusBadRequest},
		{"urlencoded", "application/x-www-form-urlencoded", []byte("uploadfile=abc"), http.StatusBadRequest},
		{"multipart without boundary", "multipart/form-data", []byte("--x\r\n"), http.StatusBadRequest},
		{"malformed multipart", "multipart/form-data; boundary=zzz", []byte("not multipart at all"), http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			servicetest.ExpectError(t, "POST /submitTask", s.call(t, http.MethodPost, "/submitTask", tc.ct, bytes.NewReader(tc.body)), tc.status)
			s.ExpectNoClaimable(t)
		})
	}
	t.Run("no uploadfile field", func(t *testing.T) {
		servicetest.ExpectError(t, "submit other fields", s.submit(t, part{field: "file", filename: "a.png", data: servicetest.PatternPNG(t, 8, 15)},
			part{field: "name", data: []byte("a")}), http.StatusBadRequest)
		servicetest.ExpectError(t, "submit empty form", s.submit(t), http.StatusBadRequest)
		s.ExpectNoClaimable(t)
	})
	t.Run("empty file", func(t *testing.T) {
		servicetest.ExpectError(t, "submit empty file", s.submit(t, part{field: frontend.UploadField, filename: "a.png"}), http.StatusBadRequest)
		s.ExpectNoClaimable(t)
	})
	t.Run("too large", func(t *testing.T) {
		// The frontend streams the part with unknown length; the master's 413 passes through.
		big := paddedPNG(t, maxUpload+1)
		servicetest.ExpectError(t, "submit oversized file", s.submit(t, part{field: frontend.UploadField, filename: "big.png", data: big}),
			http.StatusRequestEntityTooLarge)
		s.ExpectNoClaimable(t)
	})
	t.Run("exactly the limit", func(t *testing.T) {
		body := paddedPNG(t, maxUpload)
		r := s.submit(t, part{field: frontend.UploadField, filename: "max.png", data: body})
		if r.Status != http.StatusOK {
			t.Fatalf("submit of exactly the limit: %d %q", r.Status, r.Body)
		}
		if got := s.working(t, s.internal(t, s.parsePublicID(t, r.Body))); !bytes.Equal(got, body) {
			t.Errorf("stored %d bytes, want the %d uploaded", len(got), len(body))
		}
		if _, err := s.Database.GetNewTask(t.Context(), 0); err != nil { // leave nothing claimable for the next checks
			t.Fatal(err)
		}
	})
	t.Run("not an image", func(t *testing.T) {
		// The master's refusal passes through.
		servicetest.ExpectError(t, "submit text file", s.submit(t, part{field: frontend.UploadField, filename: "a.txt", data: []byte("just some text, no image")}),
			http.StatusUnsupportedMediaType)
		s.ExpectNoClaimable(t)
	})
	for _, path := range []string{"/isReady", "/isReady?id=", "/getImage", "/status", "/status?x=1"} {
		if r := s.call(t, http.MethodGet, path, "", nil); r.Status != http.StatusBadRequest || r.Body != "Error: missing id parameter" {
			t.Errorf("GET %s: %d %q, want 400 \"Error: missing id parameter\"", path, r.Status, r.Body)
		}
	}
	for _, path := range []string{"/isReady?id=x", "/isReady?id=-2", "/getImage?id=1.5", "/getImage?id=999", "/isReady?id=999", "/status?id=0"} {
		if r := s.call(t, http.MethodGet, path, "", nil); r.Status != http.StatusNotFound || r.Body != noSuch {
			t.Errorf("GET %s: %d %q, want 404 %q", path, r.Status, r.Body, noSuch)
		}
	}
	// A genuine public id of a task the master does not know (data lost, another deployment with the same
	// secret) is no such task either, and names no internal id.
	for _, path := range []string{"/isReady", "/getImage", "/status"} {
		before := s.master.calls.Load()
		if r := s.call(t, http.MethodGet, path+"?id="+s.ids.Encode(999), "", nil); r.Status != http.StatusNotFound || r.Body != noSuch {
			t.Errorf("GET %s of an unknown task: %d %q, want 404 %q", path, r.Status, r.Body, noSuch)
		}
		if s.master.calls.Load() == before {
			t.Errorf("GET %s of a genuine public id did not ask the master", path)
		}
	}
	servicetest.ExpectError(t, "GET /submitTask", s.call(t, http.MethodGet, "/submitTask", "", nil), http.StatusMethodNotAllowed)
}

func TestSubmitStreamsMultipart(t *testing.T) {
	// A multipart body sent with unknown length, written while the request is under way.
	s := newStack(t)
	img := servicetest.PatternPNG(t, 128, 16)
	ct, body := streamForm(t, img)
	r := s.call(t, http.MethodPost, "/submitTask", ct, body)
	if r.Status != http.StatusOK {
		t.Fatalf("streamed submit: %d %q", r.Status, r.Body)
	}
	if got := s.working(t, s.internal(t, s.parsePublicID(t, r.Body))); !bytes.Equal(got, img) {
		t.Errorf("stored %d bytes, want the %d uploaded", len(got), len(img))
	}
}

// streamForm returns the content type and a body of unknown length carrying data as the upload file,
// written in chunks while the request is under way.
func streamForm(t *testing.T, data []byte) (string, io.Reader) {
	t.Helper()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		w, err := mw.CreateFormFile(frontend.UploadField, "big.png")
		if err == nil {
			for chunk := range slices.Chunk(data, 1000) {
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
	t.Cleanup(func() { pr.Close() })
	return mw.FormDataContentType(), pr
}

func TestStatus(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.submitImage(t, servicetest.PatternPNG(t, 12, 17))
	id := s.internal(t, pub)
	// expect checks that the frontend answers /status?id=pub as the master does for the internal id, with
	// the public id instead, and state word.
	expect := func(word wire.Word) wire.PublicStatus {
		t.Helper()
		got := s.call(t, http.MethodGet, "/status?id="+pub, "", nil)
		want := servicetest.Call(t, s.HTTP, http.MethodGet, fmt.Sprintf("%s/status?id=%d", s.MasterURL, id), nil)
		if want.Status != http.StatusOK || !strings.Contains(want.Body, fmt.Sprintf(`"state":%q`, word)) {
			t.Fatalf("master GET /status?id=%d = %d %q, want state %q", id, want.Status, want.Body, word)
		}
		wantBody := strings.Replace(want.Body, fmt.Sprintf(`{"id":%d,`, id), fmt.Sprintf(`{"id":%q,`, pub), 1)
		if got.Status != http.StatusOK || got.Body != wantBody {
			t.Errorf("GET /status = %d %q, want %q", got.Status, got.Body, wantBody)
		}
		if ct := got.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET /status Content-Type %q, want application/json", ct)
		}
		var st wire.PublicStatus
		if err := json.Unmarshal([]byte(got.Body), &st); err != nil || st.ID != pub || st.State != word {
			t.Errorf("GET /status = %+v (%v), want id %q state %q", st, err, pub, word)
		}
		return st
	}
	expect("queued")
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	expect("processing")
	if _, err := s.Master.FailTask(ctx, id, task.Token, "cannot read this PNG: no such colour: save it as PNG or JPEG and upload it again", true); err != nil {
		t.Fatal(err)
	}
	if st := expect("failed"); st.Error != "cannot read this PNG: no such colour: save it as PNG or JPEG and upload it again" {
		t.Errorf("status error %q, want the decoding failure", st.Error)
	}
	// The failure also explains why there is no image, without the internal id.
	if r := s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil); r.Status != http.StatusNotFound ||
		r.Body != "Error: task failed: cannot read this PNG: no such colour: save it as PNG or JPEG and upload it again" {
		t.Errorf("getImage of a failed task: %d %q, want 404 with the reason", r.Status, r.Body)
	}
	servicetest.ExpectError(t, "POST /status", s.call(t, http.MethodPost, "/status?id="+pub, "", nil), http.StatusMethodNotAllowed)
}

// TestFailureReasonsStayInternal: a worker's failure text may name internal ids or addresses; the public
// sees only that processing failed.
func TestFailureReasonsStayInternal(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.submitImage(t, servicetest.PatternPNG(t, 12, 19))
	id := s.internal(t, pub)
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v", task, err)
	}
	reason := fmt.Sprintf("fetch working image: 404 no working image for task %d at 10.1.2.3:3002", id)
	if _, err := s.Master.FailTask(ctx, id, task.Token, reason, true); err != nil {
		t.Fatal(err)
	}
	r := s.call(t, http.MethodGet, "/status?id="+pub, "", nil)
	var st wire.PublicStatus
	if err := json.Unmarshal([]byte(r.Body), &st); err != nil || st.State != "failed" || st.Error != "processing failed" {
		t.Errorf("GET /status = %q (%v), want failed with error \"processing failed\"", r.Body, err)
	}
	if r := s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil); r.Status != http.StatusNotFound || r.Body != "Error: task failed: processing failed" {
		t.Errorf("getImage: %d %q, want 404 \"Error: task failed: processing failed\"", r.Status, r.Body)
	}
}

func TestStatusFinished(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.submitImage(t, servicetest.PatternPNG(t, 12, 18))
	id := s.internal(t, pub)
	s.finish(t, id, servicetest.PatternPNG(t, 12, 20))
	got := s.call(t, http.MethodGet, "/status?id="+pub, "", nil)
	want, err := s.Master.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var st wire.PublicStatus
	if err := json.Unmarshal([]byte(got.Body), &st); got.Status != http.StatusOK || err != nil {
		t.Fatalf("GET /status: %d %q (%v)", got.Status, got.Body, err)
	}
	want.ID = 0 // the internal id is never sent
	wantSt := wire.PublicStatus{ID: pub, Status: want}
	if st != wantSt || st.State != "finished" || st.Attempts != 1 || st.FinishedAt.IsZero() {
		t.Errorf("GET /status = %+v, want %+v, finished on attempt 1", st, wantSt)
	}
	if strings.Contains(got.Body, `"id":`+strconv.FormatInt(id, 10)) {
		t.Errorf("GET /status shows the internal id: %s", got.Body)
	}
}

// badIDs are ids that can be refused by their form alone, or by their tag.
func badIDs(t *testing.T, genuine string) []string {
	other, err := publicid.New(bytes.Repeat([]byte("another secret.."), 2))
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"0", "1", "2", "-1", "x", "1.5", "0x1", strings.Repeat("0", 43), strings.Repeat("A", 43),
		genuine[:42], genuine + "A", genuine + "=", genuine[:42] + ".", " " + genuine[1:], genuine[:20] + "+" + genuine[21:],
		strings.ToUpper(genuine), strings.ToLower(genuine), other.Encode(0), other.Encode(1),
		base64.RawURLEncoding.EncodeToString(make([]byte, 32))}
	// Every character of the genuine id changed to a neighbour in the alphabet.
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i := range genuine {
		j := strings.IndexByte(alphabet, genuine[i])
		ids = append(ids, genuine[:i]+string(alphabet[(j+1)%64])+genuine[i+1:])
	}
	return slices.DeleteFunc(ids, func(s string) bool { return s == genuine })
}

// TestMalformedIDsCostNoMasterCall: an id that fails its form or tag is refused without asking the master.
func TestMalformedIDsCostNoMasterCall(t *testing.T) {
	s := newStack(t)
	pub := s.submitImage(t, servicetest.PatternPNG(t, 8, 21))
	before := s.master.calls.Load()
	for _, path := range []string{"/isReady", "/getImage", "/status"} {
		for _, id := range badIDs(t, pub) {
			r := s.call(t, http.MethodGet, path+"?"+url.Values{"id": {id}}.Encode(), "", nil)
			if r.Status != http.StatusNotFound || r.Body != noSuch {
				t.Errorf("GET %s?id=%q: %d %q, want 404 %q", path, id, r.Status, r.Body, noSuch)
			}
		}
	}
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("refusing malformed or forged ids made %d master calls, want 0", n)
	}
	// The genuine id does reach the master.
	if r := s.call(t, http.MethodGet, "/isReady?id="+pub, "", nil); r.Body != notReady {
		t.Errorf("isReady of the genuine id: %q", r.Body)
	}
	if s.master.calls.Load() == before {
		t.Error("the genuine id did not reach the master")
	}
}

// TestCountingReadsNothing: a second user cannot read a first user's task by counting, or by trying
// ids near the one they were given.
func TestCountingReadsNothing(t *testing.T) {
	s := newStack(t)
	first := s.submitImage(t, servicetest.PatternPNG(t, 16, 22))
	second := s.submitImage(t, servicetest.PatternPNG(t, 16, 23))
	resultFirst, resultSecond := servicetest.PatternPNG(t, 16, 24), servicetest.PatternPNG(t, 16, 25)
	s.finish(t, s.internal(t, first), resultFirst)
	s.finish(t, s.internal(t, second), resultSecond)
	before := s.master.calls.Load()
	tries := []string{"0", "1", "2", "00", "01", "+1"}
	tries = append(tries, badIDs(t, first)...)
	tries = append(tries, badIDs(t, second)...)
	for _, id := range tries {
		for _, path := range []string{"/getImage", "/isReady", "/status"} {
			r := s.call(t, http.MethodGet, path+"?"+url.Values{"id": {id}}.Encode(), "", nil)
			if r.Status != http.StatusNotFound || r.Body != noSuch {
				t.Errorf("GET %s?id=%q: %d %q, want 404 %q", path, id, r.Status, r.Body, noSuch)
			}
			if strings.Contains(r.Body, "PNG") || r.Header.Get("Content-Type") == "image/png" {
				t.Errorf("GET %s?id=%q answered image bytes", path, id)
			}
		}
	}
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("guessing made %d master calls, want 0", n)
	}
	// Each owner still gets their own image.
	servicetest.ExpectPNGReply(t, "first owner's getImage", s.call(t, http.MethodGet, "/getImage?id="+first, "", nil), resultFirst)
	servicetest.ExpectPNGReply(t, "second owner's getImage", s.call(t, http.MethodGet, "/getImage?id="+second, "", nil), resultSecond)
}

// TestConsecutiveTasksHaveUnrelatedIDs: the ids of consecutive uploads share no visible pattern.
func TestConsecutiveTasksHaveUnrelatedIDs(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 26)
	var ids []string
	for range 8 {
		ids = append(ids, s.submitImage(t, img))
	}
	for i := 1; i < len(ids); i++ {
		a, b := ids[i-1], ids[i]
		same := 0
		for k := range a {
			if a[k] == b[k] {
				same++
			}
		}
		if same > 8 || a[:3] == b[:3] {
			t.Errorf("consecutive ids %q and %q agree in %d positions", a, b, same)
		}
		if s.internal(t, b) != s.internal(t, a)+1 {
			t.Errorf("ids %q %q are not consecutive tasks", a, b)
		}
	}
}

func TestUploadRateLimit(t *testing.T) {
	s := newStackWith(t, frontend.Limits{UploadRate: 2, UploadBurst: 2})
	img := servicetest.PatternPNG(t, 8, 27)
	ct, body := form(t, part{field: frontend.UploadField, filename: "r.png", data: img})
	submit := func(header http.Header) servicetest.Reply {
		return s.callWith(t, http.MethodPost, "/submitTask", ct, bytes.NewReader(body), header)
	}
	for i := range 2 {
		if r := submit(nil); r.Status != http.StatusOK {
			t.Fatalf("upload %d within the burst: %d %q", i, r.Status, r.Body)
		}
	}
	before := s.master.calls.Load()
	r := submit(nil)
	if r.Status != http.StatusTooManyRequests || r.Body != "Error: too many uploads, retry in 1s" || r.Header.Get("Retry-After") != "1" {
		t.Fatalf("upload over the limit: %d %q Retry-After %q, want 429 \"Error: too many uploads, retry in 1s\" Retry-After 1",
			r.Status, r.Body, r.Header.Get("Retry-After"))
	}
	// X-Forwarded-For is not trusted by default: it does not make another client.
	if r := submit(http.Header{"X-Forwarded-For": {"203.0.113.9"}}); r.Status != http.StatusTooManyRequests {
		t.Errorf("upload with a made-up X-Forwarded-For: %d %q, want 429", r.Status, r.Body)
	}
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("refused uploads made %d master calls", n)
	}
	// After Retry-After the client may upload again.
	time.Sleep(time.Second)
	if r := submit(nil); r.Status != http.StatusOK {
		t.Errorf("upload after waiting: %d %q", r.Status, r.Body)
	}
}

func TestUploadRateLimitPerClientBehindProxy(t *testing.T) {
	s := newStackWith(t, frontend.Limits{UploadRate: 0.1, UploadBurst: 1, TrustProxy: true})
	img := servicetest.PatternPNG(t, 8, 28)
	ct, body := form(t, part{field: frontend.UploadField, filename: "r.png", data: img})
	submit := func(xff ...string) servicetest.Reply {
		return s.callWith(t, http.MethodPost, "/submitTask", ct, bytes.NewReader(body), http.Header{"X-Forwarded-For": xff})
	}
	// The proxy appends the client it saw last; what the client sent before it is not trusted.
	for _, c := range []struct {
		xff    []string
		status int
	}{
		{[]string{"198.51.100.1"}, http.StatusOK},
		{[]string{"198.51.100.1"}, http.StatusTooManyRequests},
		{[]string{"198.51.100.2, 198.51.100.1"}, http.StatusTooManyRequests}, // forged first entry
		{[]string{"198.51.100.1", "198.51.100.3"}, http.StatusOK},            // last header counts
		{[]string{"2001:db8:1:2::1"}, http.StatusOK},
		{[]string{"2001:db8:1:2::ffff"}, http.StatusTooManyRequests}, // same /64
		{[]string{"2001:db8:1:3::1"}, http.StatusOK},
	} {
		r := submit(c.xff...)
		if r.Status != c.status {
			t.Errorf("upload as %q: %d %q, want %d", c.xff, r.Status, r.Body, c.status)
		}
		if c.status == http.StatusTooManyRequests {
			if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 10 {
				t.Errorf("Retry-After %q, want 1-10 seconds", r.Header.Get("Retry-After"))
			}
		}
	}
}

func TestUploadTooLargeAtFrontend(t *testing.T) {
	const limit = 4000
	s := newStackWith(t, frontend.Limits{MaxUpload: limit})
	big := paddedPNG(t, 100_000)
	before := s.master.calls.Load()
	// Known length: refused before reading, without asking the master.
	r := s.submit(t, part{field: frontend.UploadField, filename: "big.png", data: big})
	if r.Status != http.StatusRequestEntityTooLarge || r.Body != "Error: the image is 97.9 KB; the largest upload is 3.9 KB: make it smaller (fewer pixels, or saved as JPEG) and upload it again" {
		t.Errorf("oversized upload: %d %q, want 413", r.Status, r.Body)
	}
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("an oversized upload of known length made %d master calls", n)
	}
	// Known length within the form allowance, but the file itself too large.
	r = s.submit(t, part{field: frontend.UploadField, filename: "big.png", data: big[:limit+1]})
	servicetest.ExpectError(t, "upload one byte over", r, http.StatusRequestEntityTooLarge)
	// Unknown length: cut off while streaming.
	ct, body := streamForm(t, big)
	r = s.call(t, http.MethodPost, "/submitTask", ct, body)
	servicetest.ExpectError(t, "streamed oversized upload", r, http.StatusRequestEntityTooLarge)
	s.ExpectNoClaimable(t)
	// Exactly the limit passes.
	r = s.submit(t, part{field: "note", data: []byte("hi")}, part{field: frontend.UploadField, filename: "max.png", data: big[:limit]})
	if r.Status != http.StatusOK {
		t.Fatalf("upload of exactly the limit: %d %q", r.Status, r.Body)
	}
	if got := s.working(t, s.internal(t, s.parsePublicID(t, r.Body))); !bytes.Equal(got, big[:limit]) {
		t.Errorf("stored %d bytes, want %d", len(got), limit)
	}

	// No limit at the frontend (master.NoLimit): the master's own 413 still answers.
	s = newStackWith(t, frontend.Limits{MaxUpload: -1})
	r = s.submit(t, part{field: frontend.UploadField, filename: "big.png", data: paddedPNG(t, maxUpload+1)})
	if r.Status != http.StatusRequestEntityTooLarge || r.Body != "Error: the image is larger than 1 MB, the largest upload: make it smaller (fewer pixels, or saved as JPEG) and upload it again" {
		t.Errorf("upload over the master's limit, none at the frontend: %d %q, want the master's 413", r.Status, r.Body)
	}
}

// TestHeadersOnEveryReply: call checks the shared headers on each of these; the download too.
func TestHeadersOnEveryReply(t *testing.T) {
	s := newStack(t)
	pub := s.submitImage(t, servicetest.PatternPNG(t, 8, 29))
	s.finish(t, s.internal(t, pub), servicetest.PatternPNG(t, 8, 31))
	for _, path := range []string{"/", "/healthz", "/nothing", "/isReady?id=" + pub, "/isReady?id=x", "/status?id=" + pub, "/getImage?id=" + pub, "/getImage"} {
		s.call(t, http.MethodGet, path, "", nil)
	}
	s.call(t, http.MethodPost, "/submitTask", "text/plain", strings.NewReader("x"))
	s.call(t, http.MethodDelete, "/submitTask", "", nil)
	r := s.call(t, http.MethodGet, "/getImage?id="+pub, "", nil)
	if r.Header.Get("Content-Type") != "image/png" || !strings.HasPrefix(r.Header.Get("Content-Disposition"), "attachment; ") {
		t.Errorf("download headers: %v", r.Header)
	}
	servicetest.CheckEchoesRequestID(t, s.HTTP, http.MethodGet, s.frontendURL+"/isReady?id="+pub, "frontend-req-1")
}

// fakeMasterStats answers GET /stats with the counts tasks holds, as the master does.
func fakeMasterStats(t *testing.T, tasks *atomic.Int64) *client.Master {
	t.Helper()
	srv := servicetest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, wire.Stats{Finished: tasks.Load()})
	}))
	return client.NewMaster(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
}

// newKVService serves a kv service over a fresh file store and returns its client.
func newKVService(t *testing.T) *client.KV {
	t.Helper()
	store, err := filekv.Open(filepath.Join(t.TempDir(), "kv.json"), filekv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "kv store", store)
	return client.NewKV(servicetest.NewHTTPClient(t), servicetest.Addr(servicetest.Serve(t, kvservice.NewServer(store)).URL))
}

func TestResolveSecret(t *testing.T) {
	ctx := t.Context()
	kv := newKVService(t)
	var tasks atomic.Int64
	m := fakeMasterStats(t, &tasks)
	resolve := func(file string, kv *client.KV) ([]byte, error) {
		return frontend.ResolveSecret(ctx, file, kv, m, servicetest.Discard)
	}
	fileOf := func() string { return filepath.Join(t.TempDir(), frontend.SecretFile) }

	// Frontends starting together, each with its own data directory, on an empty kv store and with no
	// task yet, agree on one secret, and each keeps it in its file, readable by its owner only.
	const n = 4
	secrets, files := make([][]byte, n), make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		files[i] = fileOf()
		wg.Go(func() {
			var err error
			if secrets[i], err = resolve(files[i], kv); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	stored, err := kv.Get(ctx, frontend.SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	want, err := publicid.ParseSecret(stored)
	if err != nil || len(want) < publicid.MinSecretLen {
		t.Fatalf("kv holds %q under %s: %v", stored, frontend.SecretKey, err)
	}
	for i, s := range secrets {
		if !bytes.Equal(s, want) {
			t.Errorf("frontend %d resolved %x, the kv store holds %x", i, s, want)
		}
		fi, err := os.Stat(files[i])
		b, _ := os.ReadFile(files[i])
		if err != nil || fi.Mode().Perm() != 0o600 || strings.TrimSpace(string(b)) != stored {
			t.Errorf("frontend %d's file: %v, mode %v, %q; want the secret, mode 0600", i, err, fi.Mode().Perm(), b)
		}
	}
	// A restart reads the same one.
	if again, err := resolve(files[0], kv); err != nil || !bytes.Equal(again, want) {
		t.Errorf("second resolve: %x, %v; want %x", again, err, want)
	}
	tasks.Store(3) // tasks were made with it

	// The kv store lost its data: a frontend with the file puts the secret back; one without the file
	// (a new machine) then gets it from the kv store.
	wiped := newKVService(t)
	if again, err := resolve(files[1], wiped); err != nil || !bytes.Equal(again, want) {
		t.Errorf("resolve with the file, kv store wiped: %x, %v; want %x", again, err, want)
	}
	if v, _ := wiped.Get(ctx, frontend.SecretKey); v != stored {
		t.Errorf("the wiped kv store holds %q, want the file's secret back", v)
	}
	newMachine := fileOf()
	if got, err := resolve(newMachine, wiped); err != nil || !bytes.Equal(got, want) {
		t.Errorf("resolve on a new machine: %x, %v; want %x", got, err, want)
	}

	// Neither the file nor the kv store has one, but tasks exist: no new secret is made, and the error
	// says what to do.
	empty := newKVService(t)
	_, err = resolve(fileOf(), empty)
	if err == nil || !strings.Contains(err.Error(), "tasks exist but no public id secret") || !strings.Contains(err.Error(), "--secret") {
		t.Errorf("resolve with tasks but no secret anywhere: %v, want a refusal naming --secret", err)
	}
	if _, err := empty.Get(ctx, frontend.SecretKey); !client.IsStatus(err, http.StatusNotFound) {
		t.Errorf("a secret was stored in the kv store all the same: %v", err)
	}

	// The file and the kv store disagree: refused, nothing replaced.
	other := newKVService(t)
	if err := other.Set(ctx, frontend.SecretKey, publicid.FormatSecret(bytes.Repeat([]byte{7}, 32))); err != nil {
		t.Fatal(err)
	}
	if _, err := resolve(files[2], other); err == nil || !strings.Contains(err.Error(), "differs from the one in the kv store") {
		t.Errorf("resolve with two different secrets: %v, want a refusal", err)
	}
	// A stored value that is no secret is an error, and is left alone.
	if err := other.Set(ctx, frontend.SecretKey, "too short"); err != nil {
		t.Fatal(err)
	}
	if _, err := resolve(fileOf(), other); err == nil {
		t.Error("a malformed stored secret was accepted")
	}
	if v, _ := other.Get(ctx, frontend.SecretKey); v != "too short" {
		t.Errorf("the malformed stored secret was replaced by %q", v)
	}
	// No kv store: it waits until its context ends.
	ctx2, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := frontend.ResolveSecret(ctx2, fileOf(), client.NewKV(servicetest.NewHTTPClient(t), "127.0.0.1:1"), m, servicetest.Discard); err == nil {
		t.Error("resolve without a kv store succeeded")
	}
}
