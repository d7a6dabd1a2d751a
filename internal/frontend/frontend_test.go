package frontend_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	notReady = "Your image is not ready yet."
	ready    = "Your image is ready."
)

// maxUpload is the master's upload limit in these tests.
const maxUpload = 1 << 20

// stack is the frontend in front of a servicetest.Stack.
type stack struct {
	*servicetest.Stack
	frontendURL string
}

func newStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{Stack: servicetest.NewStack(t, servicetest.Options{MaxUpload: maxUpload})}
	s.frontendURL = servicetest.Serve(t, frontend.NewServer(s.Master)).URL
	return s
}

func (s *stack) call(t *testing.T, method, path, contentType string, body io.Reader) servicetest.Reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.frontendURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return servicetest.MustDo(t, s.HTTP, req)
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
	ct, body := form(t, parts...)
	return s.call(t, http.MethodPost, "/submitTask", ct, bytes.NewReader(body))
}

// working returns the working image storage holds for task id.
func (s *stack) working(t *testing.T, id int64) []byte {
	t.Helper()
	b, ok := s.StoredImage(t, id, client.Working)
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
	found := false
	for _, m := range formRE.FindAllStringSubmatch(r.Body, -1) {
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
		t.Errorf("GET / has no form posting to /submitTask:\n%s", r.Body)
	}
	if frontend.UploadField != "uploadfile" {
		t.Errorf("UploadField = %q, the reference field is uploadfile", frontend.UploadField)
	}
	servicetest.ExpectError(t, "GET /nothing", s.call(t, http.MethodGet, "/nothing", "", nil), http.StatusNotFound)
	servicetest.ExpectError(t, "POST /", s.call(t, http.MethodPost, "/", "", nil), http.StatusMethodNotAllowed)
}

func TestSubmitProcessAndGet(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	img := servicetest.PatternPNG(t, 40, 11)
	// Other fields before and after the file are skipped.
	r := s.submit(t, part{field: "note", data: []byte("hello")}, part{field: frontend.UploadField, filename: "x.png", data: img},
		part{field: "after", data: []byte("bye")})
	if r.Status != http.StatusOK {
		t.Fatalf("POST /submitTask: %d %q", r.Status, r.Body)
	}
	id := servicetest.ParseID(t, r.Body)
	if got := s.working(t, id); !bytes.Equal(got, img) {
		t.Errorf("storage holds %d bytes for task %d, want the %d uploaded", len(got), id, len(img))
	}
	isReady := func() servicetest.Reply { return s.call(t, http.MethodGet, fmt.Sprintf("/isReady?id=%d", id), "", nil) }
	getImage := func() servicetest.Reply {
		return s.call(t, http.MethodGet, fmt.Sprintf("/getImage?id=%d", id), "", nil)
	}

	if r := isReady(); r.Status != http.StatusOK || r.Body != notReady {
		t.Errorf("isReady before processing: %d %q, want 200 %q", r.Status, r.Body, notReady)
	}
	servicetest.ExpectError(t, "getImage before processing", getImage(), http.StatusNotFound)

	// Play the worker: claim, store a result, finish.
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	result := servicetest.PatternPNG(t, 40, 12)
	if err := s.Storage.SendImage(ctx, id, client.Finished, bytes.NewReader(result), int64(len(result))); err != nil {
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
	if cd := r.Header.Get("Content-Disposition"); cd != "" && !strings.Contains(cd, ".png") {
		t.Errorf("getImage Content-Disposition %q does not name a PNG", cd)
	}

	// A second upload gets a new id and is not ready.
	r = s.submit(t, part{field: frontend.UploadField, filename: "y.png", data: servicetest.PatternPNG(t, 9, 13)})
	if r.Status != http.StatusOK {
		t.Fatalf("second submit: %d %q", r.Status, r.Body)
	}
	if id2 := servicetest.ParseID(t, r.Body); id2 == id {
		t.Errorf("second upload got id %d again", id)
	} else if r := s.call(t, http.MethodGet, fmt.Sprintf("/isReady?id=%d", id2), "", nil); r.Body != notReady {
		t.Errorf("isReady of the second upload: %q, want %q", r.Body, notReady)
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
		big := make([]byte, maxUpload+1)
		copy(big, "\x89PNG\r\n\x1a\n")
		servicetest.ExpectError(t, "submit oversized file", s.submit(t, part{field: frontend.UploadField, filename: "big.png", data: big}),
			http.StatusRequestEntityTooLarge)
		s.ExpectNoClaimable(t)
	})
	t.Run("exactly the limit", func(t *testing.T) {
		body := make([]byte, maxUpload)
		copy(body, "\x89PNG\r\n\x1a\n")
		r := s.submit(t, part{field: frontend.UploadField, filename: "max.png", data: body})
		if r.Status != http.StatusOK {
			t.Fatalf("submit of exactly the limit: %d %q", r.Status, r.Body)
		}
		if got := s.working(t, servicetest.ParseID(t, r.Body)); !bytes.Equal(got, body) {
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
	for _, path := range []string{"/isReady", "/isReady?id=", "/isReady?id=x", "/isReady?id=-2", "/getImage", "/getImage?id=1.5"} {
		servicetest.ExpectError(t, "GET "+path, s.call(t, http.MethodGet, path, "", nil), http.StatusBadRequest)
	}
	servicetest.ExpectError(t, "getImage of an unknown task", s.call(t, http.MethodGet, "/getImage?id=999", "", nil), http.StatusNotFound)
	if r := s.call(t, http.MethodGet, "/isReady?id=999", "", nil); r.Status == http.StatusOK || !strings.HasPrefix(r.Body, "Error:") {
		t.Errorf("isReady of an unknown task: %d %q, want an \"Error: ...\" refusal", r.Status, r.Body)
	}
	servicetest.ExpectError(t, "GET /submitTask", s.call(t, http.MethodGet, "/submitTask", "", nil), http.StatusMethodNotAllowed)
}

func TestSubmitStreamsMultipart(t *testing.T) {
	// A multipart body sent with unknown length, written while the request is under way.
	s := newStack(t)
	img := servicetest.PatternPNG(t, 128, 16)
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
	if r.Status != http.StatusOK {
		t.Fatalf("streamed submit: %d %q", r.Status, r.Body)
	}
	if got := s.working(t, servicetest.ParseID(t, r.Body)); !bytes.Equal(got, img) {
		t.Errorf("stored %d bytes, want the %d uploaded", len(got), len(img))
	}
}

func TestStatus(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	r := s.submit(t, part{field: frontend.UploadField, filename: "s.png", data: servicetest.PatternPNG(t, 12, 17)})
	if r.Status != http.StatusOK {
		t.Fatalf("POST /submitTask: %d %q", r.Status, r.Body)
	}
	id := servicetest.ParseID(t, r.Body)
	// expect checks that the frontend answers /status?id=id exactly as the master does, in state word.
	expect := func(word string) {
		t.Helper()
		path := fmt.Sprintf("/status?id=%d", id)
		got := s.call(t, http.MethodGet, path, "", nil)
		want := servicetest.Call(t, s.HTTP, http.MethodGet, s.MasterURL+path, nil)
		if want.Status != http.StatusOK || !strings.Contains(want.Body, fmt.Sprintf(`"state":%q`, word)) {
			t.Fatalf("master GET %s = %d %q, want state %q", path, want.Status, want.Body, word)
		}
		if got.Status != want.Status || got.Body != want.Body {
			t.Errorf("GET %s = %d %q, want the master's %d %q", path, got.Status, got.Body, want.Status, want.Body)
		}
		if ct := got.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("GET %s Content-Type %q, want application/json", path, ct)
		}
	}
	expect("queued")
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	expect("processing")
	if _, err := s.Master.FailTask(ctx, id, task.Token, "no such colour", true); err != nil {
		t.Fatal(err)
	}
	expect("failed")
	// The failure also explains why there is no image.
	if r := s.call(t, http.MethodGet, fmt.Sprintf("/getImage?id=%d", id), "", nil); r.Status != http.StatusNotFound ||
		r.Body != fmt.Sprintf("Error: task %d failed: no such colour", id) {
		t.Errorf("getImage of a failed task: %d %q, want 404 with the reason", r.Status, r.Body)
	}

	for _, tc := range []struct {
		query  string
		status int
		body   string
	}{
		{"", http.StatusBadRequest, "Error: missing id parameter"},
		{"?id=x", http.StatusBadRequest, `Error: id must be a non-negative decimal integer, got "x"`},
		{"?id=999", http.StatusBadRequest, "Error: no task with id 999"}, // the database's answer, through the master
	} {
		if r := s.call(t, http.MethodGet, "/status"+tc.query, "", nil); r.Status != tc.status || r.Body != tc.body {
			t.Errorf("GET /status%s = %d %q, want %d %q", tc.query, r.Status, r.Body, tc.status, tc.body)
		}
	}
	servicetest.ExpectError(t, "POST /status", s.call(t, http.MethodPost, "/status?id=0", "", nil), http.StatusMethodNotAllowed)
}

func TestStatusFinished(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	r := s.submit(t, part{field: frontend.UploadField, filename: "f.png", data: servicetest.PatternPNG(t, 12, 18)})
	id := servicetest.ParseID(t, r.Body)
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	got := s.call(t, http.MethodGet, fmt.Sprintf("/status?id=%d", id), "", nil)
	want, err := s.Master.Status(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var st client.Status
	if err := json.Unmarshal([]byte(got.Body), &st); got.Status != http.StatusOK || err != nil {
		t.Fatalf("GET /status: %d %q (%v)", got.Status, got.Body, err)
	}
	if st != want || st.State != "finished" || st.Attempts != 1 || st.FinishedAt.IsZero() {
		t.Errorf("GET /status = %+v, want the master's %+v, finished on attempt 1", st, want)
	}
}
