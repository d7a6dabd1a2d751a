package frontend_test

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// pathRecorder is the frontend's transport to the master, recording the path of every request.
type pathRecorder struct {
	base  http.RoundTripper
	mu    sync.Mutex
	paths []string
}

func (p *pathRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	p.mu.Lock()
	p.paths = append(p.paths, req.URL.Path)
	p.mu.Unlock()
	return p.base.RoundTrip(req)
}

// since returns the paths recorded after the first n, and how many there are now.
func (p *pathRecorder) since(n int) ([]string, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.paths[n:]), len(p.paths)
}

// newRecordedStack is newStack with the frontend's requests to the master recorded.
func newRecordedStack(t *testing.T) (*stack, *pathRecorder) {
	t.Helper()
	ids, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{Stack: servicetest.NewStack(t, servicetest.Options{MaxUpload: maxUpload}), ids: ids}
	rec := &pathRecorder{base: cmp.Or[http.RoundTripper](s.HTTP.Transport, http.DefaultTransport)}
	hc := *s.HTTP
	hc.Transport = rec
	s.master = &countingEndpoint{Static: client.Static(servicetest.Addr(s.MasterURL))}
	s.frontendURL = servicetest.Serve(t, frontend.NewServer(client.NewMaster(&hc, s.master), ids, frontend.Limits{})).URL
	return s, rec
}

const immutable = "private, max-age=31536000, immutable"

// getCached GETs path, with If-None-Match: inm when given, and returns the reply and the paths the
// frontend asked the master for meanwhile.
func getCached(t *testing.T, s *stack, rec *pathRecorder, path, inm string) (servicetest.Reply, []string) {
	t.Helper()
	_, n := rec.since(0)
	var h http.Header
	if inm != "" {
		h = http.Header{"If-None-Match": {inm}}
	}
	r := s.callWith(t, http.MethodGet, path, "", nil, h)
	asked, _ := rec.since(n)
	return r, asked
}

// expectCacheable checks a 200 image answer that may be kept for good, and returns its ETag.
func expectCacheable(t *testing.T, what string, r servicetest.Reply, body []byte) string {
	t.Helper()
	servicetest.ExpectPNGReply(t, what, r, body)
	etag := r.Header.Get("ETag")
	if !strings.HasPrefix(etag, `"`) || !strings.HasSuffix(etag, `"`) || len(etag) < 10 {
		t.Errorf("%s: ETag %q, want a strong quoted ETag", what, etag)
	}
	if cc := r.Header.Get("Cache-Control"); cc != immutable {
		t.Errorf("%s: Cache-Control %q, want %q", what, cc, immutable)
	}
	return etag
}

// expectNotModified checks a 304 answer for etag, with no body, that read no image from the master.
func expectNotModified(t *testing.T, what string, r servicetest.Reply, asked []string, etag string) {
	t.Helper()
	if r.Status != http.StatusNotModified || r.Body != "" {
		t.Errorf("%s: %d %q, want 304 and no body", what, r.Status, r.Body)
	}
	if got := r.Header.Get("ETag"); got != etag {
		t.Errorf("%s: ETag %q, want %q", what, got, etag)
	}
	if cc := r.Header.Get("Cache-Control"); cc != immutable {
		t.Errorf("%s: Cache-Control %q, want %q", what, cc, immutable)
	}
	if !slices.Equal(asked, []string{"/status"}) {
		t.Errorf("%s: the frontend asked the master for %v, want only [/status] (no image)", what, asked)
	}
}

// TestAPIImageCaching: a finished result and a source carry a stable ETag and are cacheable for good;
// If-None-Match with it answers 304 without reading the image; a result not finished is no-store.
func TestAPIImageCaching(t *testing.T) {
	s, rec := newRecordedStack(t)
	img := servicetest.PatternPNG(t, 12, 5)
	pub := s.created(t, s.createRaw(t, "", img))
	id := s.internal(t, pub)
	resultPath, sourcePath := "/api/tasks/"+pub+"/result", "/api/tasks/"+pub+"/source"

	r, _ := getCached(t, s, rec, resultPath, "")
	expectJSONError(t, "result while queued", r, http.StatusNotFound, "task is not finished")
	if cc, etag := r.Header.Get("Cache-Control"), r.Header.Get("ETag"); cc != "no-store" || etag != "" {
		t.Errorf("result while queued: Cache-Control %q, ETag %q; want no-store and none", cc, etag)
	}
	// Even an If-None-Match of "*" gets the refusal, not a 304: there is nothing to hold yet.
	r, _ = getCached(t, s, rec, resultPath, "*")
	expectJSONError(t, "result while queued, If-None-Match: *", r, http.StatusNotFound, "task is not finished")

	// The source: cacheable from the start, the same ETag every time.
	r, asked := getCached(t, s, rec, sourcePath, "")
	sourceTag := expectCacheable(t, "GET source", r, img)
	if !slices.Contains(asked, "/source") {
		t.Errorf("GET source asked the master for %v, want /source among them", asked)
	}
	r, _ = getCached(t, s, rec, sourcePath, "")
	if again := expectCacheable(t, "GET source again", r, img); again != sourceTag {
		t.Errorf("source ETag %q, then %q: want it stable", sourceTag, again)
	}
	r, asked = getCached(t, s, rec, sourcePath, sourceTag)
	expectNotModified(t, "source, If-None-Match", r, asked, sourceTag)

	result := servicetest.PatternPNG(t, 12, 6)
	s.finish(t, id, result)
	r, asked = getCached(t, s, rec, resultPath, "")
	resultTag := expectCacheable(t, "GET result", r, result)
	if !slices.Contains(asked, "/get") {
		t.Errorf("GET result asked the master for %v, want /get among them", asked)
	}
	if resultTag == sourceTag {
		t.Errorf("result and source share the ETag %q", resultTag)
	}
	r, _ = getCached(t, s, rec, resultPath, "")
	if again := expectCacheable(t, "GET result again", r, result); again != resultTag {
		t.Errorf("result ETag %q, then %q: want it stable", resultTag, again)
	}
	for _, inm := range []string{resultTag, `"other", ` + resultTag, "W/" + resultTag, "*"} {
		r, asked = getCached(t, s, rec, resultPath, inm)
		expectNotModified(t, "result, If-None-Match: "+inm, r, asked, resultTag)
	}
	// Another ETag (the source's, one made up) gets the image.
	for _, inm := range []string{sourceTag, `"not-it"`} {
		r, _ = getCached(t, s, rec, resultPath, inm)
		if expectCacheable(t, "result, If-None-Match: "+inm, r, result) != resultTag {
			t.Errorf("result, If-None-Match: %s: another ETag", inm)
		}
	}
	// The ETag is the same inline and as an attachment, and the 304 too.
	r, asked = getCached(t, s, rec, resultPath+"?download=0", resultTag)
	expectNotModified(t, "inline result, If-None-Match", r, asked, resultTag)

	// Once deleted, the ETag holds nothing: 404, not 304.
	if r := s.call(t, http.MethodDelete, "/api/tasks/"+pub, "", nil); r.Status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %q", r.Status, r.Body)
	}
	for _, p := range []string{resultPath, sourcePath} {
		r, _ = getCached(t, s, rec, p, "*")
		expectJSONError(t, "GET deleted "+p, r, http.StatusNotFound, "no such task")
	}
}

// TestAPIResultETagAfterRequeue: a finished task an operator requeues gets a new result, and with it a
// new ETag: the old one no longer answers 304.
func TestAPIResultETagAfterRequeue(t *testing.T) {
	s, rec := newRecordedStack(t)
	img := servicetest.PatternPNG(t, 10, 3)
	pub := s.created(t, s.createRaw(t, "", img))
	id := s.internal(t, pub)
	resultPath := "/api/tasks/" + pub + "/result"
	first := servicetest.PatternPNG(t, 10, 4)
	s.finish(t, id, first)
	r, _ := getCached(t, s, rec, resultPath, "")
	oldTag := expectCacheable(t, "first result", r, first)

	if err := s.Database.SetByID(t.Context(), wire.Task{ID: id, State: wire.NotStarted}); err != nil {
		t.Fatal(err)
	}
	r, _ = getCached(t, s, rec, resultPath, oldTag)
	expectJSONError(t, "requeued result, old ETag", r, http.StatusNotFound, "task is not finished")
	if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("requeued result: Cache-Control %q, want no-store", cc)
	}
	second := servicetest.PatternPNG(t, 10, 9)
	s.finish(t, id, second)
	r, _ = getCached(t, s, rec, resultPath, oldTag)
	if newTag := expectCacheable(t, "second result, old ETag", r, second); newTag == oldTag {
		t.Errorf("the second result has the first's ETag %q", oldTag)
	}
}

// TestAPIResultInline: ?download=0 serves the result inline, with the download's name, no sniffing and
// a sandbox; the default and ?download=1 serve it as an attachment; anything else is refused.
func TestAPIResultInline(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 9, 2)
	pub := s.created(t, s.createRaw(t, "", img))
	result := servicetest.PatternPNG(t, 9, 8)
	s.finish(t, s.internal(t, pub), result)
	name := frontend.DownloadName(wire.Status{}, pub, "image/png")
	for query, disposition := range map[string]string{"": "attachment", "?download=1": "attachment",
		"?download=0": "inline", "?download=false": "inline"} {
		what := "GET result" + query
		r := s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result"+query, "", nil)
		servicetest.ExpectPNGReply(t, what, r, result)
		if cd, want := r.Header.Get("Content-Disposition"), fmt.Sprintf("%s; filename=%q", disposition, name); cd != want {
			t.Errorf("%s: Content-Disposition %q, want %q", what, cd, want)
		}
		if csp, want := r.Header.Get("Content-Security-Policy"), "sandbox; default-src 'none'"; csp != want {
			t.Errorf("%s: Content-Security-Policy %q, want %q", what, csp, want)
		}
		if v := r.Header.Get("X-Content-Type-Options"); v != "nosniff" {
			t.Errorf("%s: X-Content-Type-Options %q, want nosniff", what, v)
		}
	}
	expectJSONError(t, "GET result?download=maybe", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result?download=maybe", "", nil),
		http.StatusBadRequest, `download="maybe": give download=0 to show the image, download=1 (the default) to download it`)
}
