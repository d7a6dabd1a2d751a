package frontend_test

import (
	"mime"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

const pub = "MQgmGVnF9Y69abcdefghijklmnopqrstuvwxyz01234"

func TestDownloadName(t *testing.T) {
	long := strings.Repeat("ğ", 150) + ".jpg" // 304 bytes
	for _, c := range []struct {
		name, op, contentType string
		want                  string
	}{
		{"leaf.jpg", "resize:800x600", "image/png", "leaf-resize-800x600.png"},
		{"leaf.jpg", "resize:800x600,sharpen:1.5", "image/jpeg", "leaf-resize-800x600_sharpen-1.5.jpg"},
		{"leaf.jpg", "resize:800x600|sharpen:1.5", "image/png", "leaf-resize-800x600_sharpen-1.5.png"},
		{"leaf.jpg", "", "image/png", "leaf-swap.png"},
		{"", "grayscale", "image/png", "imgmill-MQgmGVnF9Y69-grayscale.png"},
		{"leaf", "grayscale", "", "leaf-grayscale.png"},                          // no extension; unknown type
		{".png", "grayscale", "image/png", "imgmill-MQgmGVnF9Y69-grayscale.png"}, // nothing but an extension
		{"ğüş.jpg", "grayscale", "image/png", "ğüş-grayscale.png"},
		{`a"b.png`, "grayscale", "image/png", "a_b-grayscale.png"},
		{"x\r\ny.png", "grayscale", "image/png", "x__y-grayscale.png"},
		{"../../etc/passwd", "grayscale", "image/png", "_.._etc_passwd-grayscale.png"},
		{`..\..\boot.ini`, "grayscale", "image/png", "_.._boot-grayscale.png"},
		{"a<b>c:d|e?f*.png", "grayscale", "image/png", "a_b_c_d_e_f_-grayscale.png"},
		{"...hidden.png", "grayscale", "image/png", "hidden-grayscale.png"},
		{"leaf.jpg", "x:\"/\\\u00e9", "image/png", "leaf-x-.png"},
	} {
		got := frontend.DownloadName(wire.Status{Name: c.name, Op: c.op}, pub, c.contentType)
		if got != c.want {
			t.Errorf("DownloadName(name %q, op %q, %q) = %q, want %q", c.name, c.op, c.contentType, got, c.want)
		}
	}
	got := frontend.DownloadName(wire.Status{Name: long, Op: "grayscale"}, pub, "image/png")
	if !utf8.ValidString(got) || len(got) > 255 || !strings.HasPrefix(got, "ğğ") || !strings.HasSuffix(got, "-grayscale.png") {
		t.Errorf("DownloadName of a %d-byte name = %q (%d bytes), want valid UTF-8 under 255 bytes", len(long), got, len(got))
	}
}

func TestSourceName(t *testing.T) {
	for _, c := range []struct{ name, contentType, want string }{
		{"leaf.jpg", "image/jpeg", "leaf.jpg"},
		{"leaf.jpg", "image/png", "leaf.png"}, // the type says what it is
		{"leaf.html", "text/html", "leaf"},    // never a page by its name
		{"", "image/png", "imgmill-MQgmGVnF9Y69-source.png"},
		{".png", "image/png", "imgmill-MQgmGVnF9Y69-source.png"},
	} {
		if got := frontend.SourceName(wire.Status{Name: c.name}, pub, c.contentType); got != c.want {
			t.Errorf("SourceName(%q, %q) = %q, want %q", c.name, c.contentType, got, c.want)
		}
	}
}

func TestContentDisposition(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"leaf-swap.png", `attachment; filename="leaf-swap.png"`},
		{"my leaf (1)-swap.png", `attachment; filename="my leaf (1)-swap.png"`},
		{"ğüş-swap.png", `attachment; filename="gus-swap.png"; filename*=UTF-8''%C4%9F%C3%BC%C5%9F-swap.png`},
		{"a b;c%-swap.png", `attachment; filename="a b;c%-swap.png"`},
		{"ü a'b;c%.png", `attachment; filename="u a'b;c%.png"; filename*=UTF-8''%C3%BC%20a%27b%3Bc%25.png`},
		{"ağacı 日本.png", `attachment; filename="agac_ __.png"; filename*=UTF-8''a%C4%9Fac%C4%B1%20%E6%97%A5%E6%9C%AC.png`}, // no plain form: _
	} {
		got := frontend.ContentDisposition("attachment", c.name)
		if got != c.want {
			t.Errorf("ContentDisposition(%q) = %s, want %s", c.name, got, c.want)
		}
		// What a client that knows filename* makes of it: the name itself.
		if _, params, err := mime.ParseMediaType(got); err != nil || params["filename"] != c.name {
			t.Errorf("ContentDisposition(%q) parses to %v, %v", c.name, params, err)
		}
	}
}

// TestDownloadNamesServed: the upload's name, from the multipart filename or ?name=, is on the status
// and names the result's and the source's downloads, on /api/tasks and on /getImage.
func TestDownloadNamesServed(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 7)
	for _, c := range []struct {
		what, wantName, wantResult, wantSource string
		create                                 func() string
	}{
		{"multipart", "ğüş leaf.png", `attachment; filename="gus leaf-grayscale.png"; filename*=UTF-8''%C4%9F%C3%BC%C5%9F%20leaf-grayscale.png`,
			`inline; filename="gus leaf.png"; filename*=UTF-8''%C4%9F%C3%BC%C5%9F%20leaf.png`,
			func() string {
				return s.created(t, s.createForm(t, "?op=grayscale", part{field: frontend.FileField, filename: "C:\\photos\\ğüş leaf.png", data: img}))
			}},
		{"raw body", "cat.png", `attachment; filename="cat-grayscale.png"`, `inline; filename="cat.png"`,
			func() string { return s.created(t, s.createRaw(t, "?op=grayscale&name=..%2Fcat.png", img)) }},
	} {
		pub := c.create()
		r := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil)
		if !strings.Contains(r.Body, `"name":"`+c.wantName+`"`) {
			t.Errorf("%s: status %s lacks name %q", c.what, r.Body, c.wantName)
		}
		s.finish(t, s.internal(t, pub), img)
		for path, want := range map[string]string{"/api/tasks/" + pub + "/result": c.wantResult, "/getImage?id=" + pub: c.wantResult,
			"/api/tasks/" + pub + "/source": c.wantSource} {
			if got := s.call(t, http.MethodGet, path, "", nil).Header.Get("Content-Disposition"); got != want {
				t.Errorf("%s: %s Content-Disposition %s, want %s", c.what, path, got, want)
			}
		}
	}
	// The reference form's file name too.
	r := s.submit(t, part{field: frontend.UploadField, filename: "form.jpg", data: img})
	p := s.parsePublicID(t, r.Body)
	if st := s.call(t, http.MethodGet, "/status?id="+p, "", nil); !strings.Contains(st.Body, `"name":"form.jpg"`) {
		t.Errorf("status of a /submitTask upload %s lacks its name", st.Body)
	}
}
