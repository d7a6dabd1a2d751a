package frontend_test

import (
	"bytes"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// pageForm is the upload page's own form: the ui field first, as index.html has it.
var pageForm = part{field: frontend.UIField, data: []byte(frontend.UIHTML)}

// browser is what a browser sends with a form it submits.
var browser = http.Header{"Accept": {"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}}

// noRedirect calls the frontend without following redirects.
func (s *stack) noRedirect(t *testing.T, method, path, contentType string, body []byte, header http.Header) servicetest.Reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.frontendURL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	c := *s.HTTP
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	r := servicetest.MustDo(t, &c, req)
	expectFrontendHeaders(t, method+" "+path, r)
	return r
}

// expectPage checks an HTML answer: status, type, a script-free policy, and each of want in its body.
func expectPage(t *testing.T, what string, r servicetest.Reply, status int, want ...string) {
	t.Helper()
	if r.Status != status || r.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("%s: %d %s %q, want %d text/html", what, r.Status, r.Header.Get("Content-Type"), r.Body, status)
	}
	if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script-src") {
		t.Errorf("%s: Content-Security-Policy %q, want default-src 'none' and no scripts", what, csp)
	}
	for _, w := range append([]string{`<html lang="en">`, `<link rel="stylesheet" href="/assets/style.css">`, "<title>"}, want...) {
		if !strings.Contains(r.Body, w) {
			t.Errorf("%s: the page lacks %q:\n%s", what, w, r.Body)
		}
	}
}

// TestPageFormAnswersHTML: the page's form is answered 303 to the task's page, which refreshes itself
// while the task is queued and shows the result and a download link once it is finished.
func TestPageFormAnswersHTML(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 5)
	ct, body := form(t, pageForm, part{field: frontend.OpField, data: []byte("grayscale")},
		part{field: frontend.UploadField, filename: "leaf.png", data: img})
	r := s.noRedirect(t, http.MethodPost, "/submitTask", ct, body, browser)
	loc := r.Header.Get("Location")
	m := regexp.MustCompile(`^/tasks/([A-Za-z0-9_-]{43})$`).FindStringSubmatch(loc)
	if r.Status != http.StatusSeeOther || m == nil {
		t.Fatalf("the page's form: %d Location %q, want 303 to /tasks/{id}", r.Status, loc)
	}
	pub := m[1]
	queued := s.call(t, http.MethodGet, loc, "", nil)
	expectPage(t, "queued", queued, http.StatusOK, `<meta http-equiv="refresh" content="2">`, "<h1>Queued</h1>",
		`<a href="/tasks/`+pub+`">Refresh</a>`, "<code>grayscale</code>")
	if strings.Contains(queued.Body, "/result") {
		t.Errorf("the page of a queued task links to a result:\n%s", queued.Body)
	}
	// The reference's status path leads people to the same page.
	if r := s.noRedirect(t, http.MethodGet, "/status?id="+pub+"&ui=html", "", nil, nil); r.Status != http.StatusSeeOther || r.Header.Get("Location") != loc {
		t.Errorf("GET /status?ui=html: %d Location %q, want 303 to %s", r.Status, r.Header.Get("Location"), loc)
	}

	s.finish(t, s.internal(t, pub), img)
	finished := s.call(t, http.MethodGet, loc, "", nil)
	expectPage(t, "finished", finished, http.StatusOK, "<h1>Finished</h1>",
		`src="/api/tasks/`+pub+`/result?download=0" alt="The result of leaf.png"`, `<p class="lead">leaf.png</p>`, `<a href="/api/tasks/`+pub+`/result" download>`)
	if strings.Contains(finished.Body, `http-equiv="refresh"`) {
		t.Errorf("the page of a finished task still refreshes itself")
	}
	if r := s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result?download=0", "", nil); r.Status != http.StatusOK || r.Body != string(img) {
		t.Errorf("the page's image: %d, %d bytes, want 200 and the result", r.Status, len(r.Body))
	}

	// Cancelled: said so, without a refresh.
	queuedPub := s.submitImage(t, img)
	s.call(t, http.MethodPost, "/api/tasks/"+queuedPub+"/cancel", "", nil)
	expectPage(t, "cancelled", s.call(t, http.MethodGet, "/tasks/"+queuedPub, "", nil), http.StatusOK, "<h1>Cancelled</h1>")
}

// TestScriptSubmitKeepsBareID: without the page's field, /submitTask answers the bare id as the
// reference does, whatever the Accept header; and its refusals stay "Error: ..." text.
func TestScriptSubmitKeepsBareID(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 6)
	for _, h := range []http.Header{nil, browser} {
		r := s.submitWith(t, h, part{field: frontend.UploadField, filename: "a.png", data: img})
		if r.Status != http.StatusOK || r.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("script upload (Accept %q): %d %s %q, want 200 text", h.Get("Accept"), r.Status, r.Header.Get("Content-Type"), r.Body)
		}
		s.parsePublicID(t, r.Body)
	}
	r := s.submit(t, part{field: frontend.UploadField, filename: "a.txt", data: []byte("just some text")})
	if r.Status != http.StatusUnsupportedMediaType || r.Body != "Error: "+notImage {
		t.Errorf("script upload of text: %d %q, want 415 %q", r.Status, r.Body, "Error: "+notImage)
	}
}

const notImage = "this file is not an image imgmill reads (PNG, JPEG, GIF, WebP, BMP, TIFF): choose an image file"

// TestPageFormRefusalsAreHTML: the form's refusals are HTML pages with the message, a way back and
// the refusal's status; a declared length over the limit is refused before the form is read, for a
// browser by its Accept header.
func TestPageFormRefusalsAreHTML(t *testing.T) {
	const limit = 4000
	s := newStackWith(t, frontend.Limits{MaxUpload: limit})
	back := `<a href="/">Back to the upload page</a>`
	r := s.submitWith(t, browser, pageForm, part{field: frontend.UploadField, filename: "a.txt", data: []byte("just some text")})
	expectPage(t, "text file", r, http.StatusUnsupportedMediaType, "Error: "+notImage, back)
	r = s.submitWith(t, nil, pageForm, part{field: frontend.OpField, data: []byte("blurr")}, part{field: frontend.UploadField, filename: "a.png", data: paddedPNG(t, 300)})
	expectPage(t, "unknown operation", r, http.StatusBadRequest, "Error: op: ", back)
	big := paddedPNG(t, 100_000)
	r = s.submitWith(t, browser, pageForm, part{field: frontend.UploadField, filename: "big.png", data: big})
	expectPage(t, "too large, by its length", r, http.StatusRequestEntityTooLarge, "the largest upload is 3.9 KB", back)
	r = s.submitWith(t, browser, pageForm, part{field: frontend.UploadField, filename: "big.png", data: big[:limit+1]})
	expectPage(t, "too large, by its bytes", r, http.StatusRequestEntityTooLarge, "the largest upload: make it smaller", back)
	// A script's oversized upload is still told in text.
	if r := s.submit(t, part{field: frontend.UploadField, filename: "big.png", data: big}); !strings.HasPrefix(r.Body, "Error: the image is ") {
		t.Errorf("script's oversized upload: %d %q, want the text refusal", r.Status, r.Body)
	}
	s.ExpectNoClaimable(t)
	// The task page of no task.
	expectPage(t, "unknown task", s.call(t, http.MethodGet, "/tasks/"+strings.Repeat("A", 43), "", nil), http.StatusNotFound, "Error: no such task", back)
}

// TestTaskPageEscapes: the upload's name, chosen by whoever uploads, is escaped on the page (in the
// text and in the image's alt text alike).
func TestTaskPageEscapes(t *testing.T) {
	got := frontend.RenderTaskPage(t, `<script>alert("x")</script>.png`)
	if strings.Contains(got, "<script>") {
		t.Errorf("the page carries the name unescaped:\n%s", got)
	}
	if want := `&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;.png`; strings.Count(got, want) != 2 { // the text and the alt text
		t.Errorf("the page lacks the escaped name %q:\n%s", want, got)
	}
}

// TestLimits: GET /api/limits answers what the frontend enforces, cacheable for a while.
func TestLimits(t *testing.T) {
	for _, c := range []struct {
		opts frontend.Limits
		want string
	}{
		{frontend.Limits{MaxUpload: 4000, MaxPixels: 1000}, `{"maxUploadBytes":4000,"maxPixels":1000,"maxChainLength":1024}`},
		{frontend.Limits{}, fmt.Sprintf(`{"maxUploadBytes":%d,"maxPixels":50000000,"maxChainLength":1024}`, frontend.DefaultMaxUpload)},
		{frontend.Limits{MaxUpload: -1, MaxPixels: -1}, `{"maxChainLength":1024}`},
	} {
		s := newStackWith(t, c.opts)
		r := s.call(t, http.MethodGet, "/api/limits", "", nil)
		if r.Status != http.StatusOK || r.Body != c.want || r.Header.Get("Cache-Control") != "public, max-age=300" {
			t.Errorf("GET /api/limits with %+v: %d %q (Cache-Control %q), want 200 %s, public, max-age=300",
				c.opts, r.Status, r.Body, r.Header.Get("Cache-Control"), c.want)
		}
	}
}
