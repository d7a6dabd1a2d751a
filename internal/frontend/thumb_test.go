package frontend_test

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
)

// gradient is a width×height PNG, opaque or with a transparent column.
func gradient(t testing.TB, width, height int, transparent bool) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, width, height))
	for y := range height {
		for x := range width {
			img.SetNRGBA(x, y, color.NRGBA{R: uint8(x), G: uint8(y), B: uint8(x + y), A: 255})
		}
	}
	if transparent {
		for y := range height {
			img.SetNRGBA(0, y, color.NRGBA{})
		}
	}
	b, err := testimage.EncodePNG(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectThumb checks a thumbnail answer: its type, its size, the full image's headers and the cache
// headers; it returns the ETag.
func expectThumb(t *testing.T, what string, r servicetest.Reply, contentType string, w, h int, full image.Point, fullBytes int) string {
	t.Helper()
	if r.Status != http.StatusOK || r.Header.Get("Content-Type") != contentType {
		t.Fatalf("%s: %d %s %q, want 200 %s", what, r.Status, r.Header.Get("Content-Type"), r.Body[:min(len(r.Body), 200)], contentType)
	}
	decode := png.Decode
	if contentType == "image/jpeg" {
		decode = jpeg.Decode
	}
	img, err := decode(strings.NewReader(r.Body))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if got := img.Bounds().Size(); got != image.Pt(w, h) {
		t.Errorf("%s: %v, want %dx%d", what, got, w, h)
	}
	for name, want := range map[string]string{
		frontend.ImageWidthHeader: strconv.Itoa(full.X), frontend.ImageHeightHeader: strconv.Itoa(full.Y),
		frontend.ImageBytesHeader: strconv.Itoa(fullBytes), "Cache-Control": immutable,
		"Content-Disposition": "inline", "X-Content-Type-Options": "nosniff",
	} {
		if got := r.Header.Get(name); got != want {
			t.Errorf("%s: %s %q, want %q", what, name, got, want)
		}
	}
	return r.Header.Get("ETag")
}

// TestThumbnails: ?w=N gives an image at most N wide, its aspect kept and never enlarged, JPEG when
// opaque and PNG otherwise, with the full image's size in headers, an ETag of its own, cacheable for
// good, 304 to a client holding it, and made once (the cache answers the next request).
func TestThumbnails(t *testing.T) {
	s, rec := newRecordedStack(t)
	source := gradient(t, 300, 200, true)
	pub := s.created(t, s.createRaw(t, "", source))
	result := gradient(t, 600, 300, false)
	s.finish(t, s.internal(t, pub), result)
	base := "/api/tasks/" + pub

	full := s.call(t, http.MethodGet, base+"/result", "", nil)
	if full.Header.Get(frontend.ImageBytesHeader) != strconv.Itoa(len(result)) {
		t.Errorf("full result: %s %q, want %d", frontend.ImageBytesHeader, full.Header.Get(frontend.ImageBytesHeader), len(result))
	}
	// HEAD answers the full image's type and length with no body (the page asks it for the format).
	head := s.call(t, http.MethodHead, base+"/result", "", nil)
	if head.Status != http.StatusOK || head.Body != "" || head.Header.Get("Content-Length") != strconv.Itoa(len(result)) ||
		head.Header.Get("Content-Type") != "image/png" {
		t.Errorf("HEAD result: %d, %d bytes of body, Content-Length %q, type %q; want 200, none, %d, image/png",
			head.Status, len(head.Body), head.Header.Get("Content-Length"), head.Header.Get("Content-Type"), len(result))
	}
	r, asked := getCached(t, s, rec, base+"/result?w=200", "")
	etag := expectThumb(t, "result?w=200", r, "image/jpeg", 200, 100, image.Pt(600, 300), len(result))
	if etag == full.Header.Get("ETag") || !strings.HasSuffix(etag, `-w200"`) {
		t.Errorf("thumbnail ETag %q, want one of its own (the full image's is %q)", etag, full.Header.Get("ETag"))
	}
	if !slices.Contains(asked, "/get") {
		t.Errorf("the first thumbnail asked the master for %v, want the image", asked)
	}
	again, asked := getCached(t, s, rec, base+"/result?w=200", "")
	if again.Body != r.Body || !slices.Equal(asked, []string{"/status"}) {
		t.Errorf("the same thumbnail again: %d bytes (first %d), asked the master %v, want the cached one after [/status]", len(again.Body), len(r.Body), asked)
	}
	nm, asked := getCached(t, s, rec, base+"/result?w=200", etag)
	expectNotModified(t, "result?w=200 held", nm, asked, etag)
	if nm, _ := getCached(t, s, rec, base+"/result?w=201", etag); nm.Status != http.StatusOK {
		t.Errorf("w=201 with the w=200 ETag: %d, want 200 (another thumbnail)", nm.Status)
	}
	// Never enlarged; a transparent source is a PNG.
	expectThumb(t, "result?w=1024", s.call(t, http.MethodGet, base+"/result?w=1024", "", nil), "image/jpeg", 600, 300, image.Pt(600, 300), len(result))
	expectThumb(t, "source?w=120", s.call(t, http.MethodGet, base+"/source?w=120", "", nil), "image/png", 120, 80, image.Pt(300, 200), len(source))

	for _, w := range []string{"abc", "15", "1025", "-1", "480px"} {
		expectJSONError(t, "w="+w, s.call(t, http.MethodGet, base+"/result?w="+w, "", nil), http.StatusBadRequest,
			`w="`+w+`": give a thumbnail width from 16 to 1024 pixels, or leave w out for the full image`)
	}
}

// TestThumbnailRefusals: a result too large to decode (by its header: nothing is allocated) is 413, one
// that does not decode 422, one not finished 404, as for the full image.
func TestThumbnailRefusals(t *testing.T) {
	s := newStack(t)
	pubs := s.newTasks(t, 3)
	s.finish(t, s.internal(t, pubs[0]), testimage.PNGHeader(100_000, 100_000))
	s.finish(t, s.internal(t, pubs[1]), append(testimage.PNGHeader(64, 64), bytes.Repeat([]byte{7}, 100)...))
	for i, want := range []int{http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity, http.StatusNotFound} {
		r := s.call(t, http.MethodGet, "/api/tasks/"+pubs[i]+"/result?w=100", "", nil)
		if r.Status != want || !strings.HasPrefix(r.Body, `{"error":"`) || r.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("task %d: %d %q (Cache-Control %q), want %d, a JSON error, no-store", i, r.Status, r.Body, r.Header.Get("Cache-Control"), want)
		}
	}

	// The limit is the master's (as the frontend is told it), not the default one.
	small := newStackWith(t, frontend.Limits{MaxPixels: 1000})
	pub := small.newTasks(t, 1)[0]
	small.finish(t, small.internal(t, pub), gradient(t, 40, 30, false)) // 1200 pixels
	if r := small.call(t, http.MethodGet, "/api/tasks/"+pub+"/result?w=20", "", nil); r.Status != http.StatusRequestEntityTooLarge {
		t.Errorf("a 40x30 result under a 1000-pixel limit: %d %q, want 413", r.Status, r.Body)
	}
}

// TestThumbCacheBound: the cache keeps the latest thumbnails up to its bound in bytes, and none
// larger than it.
func TestThumbCacheBound(t *testing.T) {
	kept, total := frontend.ThumbCacheBound(100, []int{40, 40, 40, 150, 10, 30})
	// 40+40 fit; the third 40 drops the first; 150 is never kept; 10 fits (90); 30 drops the second.
	if want := []int{2, 4, 5}; !slices.Equal(kept, want) || total != 80 {
		t.Errorf("kept %v (%d bytes), want %v (80 bytes)", kept, total, want)
	}
}
