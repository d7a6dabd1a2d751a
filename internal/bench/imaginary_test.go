package bench

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/worker"
)

// fakeImaginary answers POST /convert?type=png as imaginary does: the uploaded image re-encoded as PNG.
// wrong, when set, may replace the answer to the i-th request (counted from 0).
type fakeImaginary struct {
	t        *testing.T
	requests atomic.Int64
	wrong    func(i int64, w http.ResponseWriter) bool
}

func (f *fakeImaginary) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := f.requests.Add(1) - 1
	if r.Method != http.MethodPost || r.URL.Path != "/convert" || r.URL.Query().Get("type") != "png" || r.Header.Get("Content-Type") != "image/png" {
		f.t.Errorf("request %s %s (Content-Type %q), want POST /convert?type=png with an image/png body", r.Method, r.URL, r.Header.Get("Content-Type"))
		http.Error(w, "unexpected request", http.StatusNotFound)
		return
	}
	img, err := png.Decode(r.Body)
	if err != nil {
		f.t.Errorf("request %d: the body is not a PNG: %v", i, err)
		http.Error(w, "not a PNG", http.StatusNotAcceptable)
		return
	}
	if f.wrong != nil && f.wrong(i, w) {
		return
	}
	w.Header().Set("Content-Type", "image/png")
	if err := png.Encode(w, img); err != nil {
		f.t.Errorf("encode: %v", err)
	}
}

// TestRunComparesImaginary drives the in-process pipeline and then a fake libvips server with the same
// images and clients: every image reaches the server once, and the report has its line and ratio.
func TestRunComparesImaginary(t *testing.T) {
	fake := &fakeImaginary{t: t}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{Size: 24, N: 20, Clients: 3, Worker: worker.Config{Concurrency: 2}, Out: &out, CompareImaginary: srv.URL + "/"})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	if got := fake.requests.Load(); got != 20 {
		t.Errorf("the server got %d requests, want 20", got)
	}
	if res.Imaginary.Images != 20 || res.Imaginary.Elapsed <= 0 || res.ImaginaryRatio <= 0 || res.Verified != 20 {
		t.Errorf("result %+v", res)
	}
	for _, want := range []string{"imaginary: 20 images in ", "ratio pipeline/imaginary: ", "every answer a 24x24 PNG"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

// Without --compare-imaginary nothing is compared and the report says nothing of it.
func TestRunWithoutImaginary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{Size: 16, N: 4, Clients: 2, Worker: worker.Config{Concurrency: 1}, Out: &out})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	if res.Imaginary != (Throughput{}) || res.ImaginaryRatio != 0 || strings.Contains(out.String(), "imaginary") {
		t.Errorf("compared with nothing to compare with: %+v\n%s", res, out.String())
	}
}

// A server that answers wrongly, even once, fails the comparison with the image named.
func TestImaginaryWrongAnswers(t *testing.T) {
	_, encoded, err := generate(16, 12)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, want string
		wrong      func(w http.ResponseWriter)
	}{
		{"not a PNG", "image 5: the answer is not a PNG", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "image/png")
			io.WriteString(w, "\xff\xd8\xff not a png")
		}},
		{"wrong size", "image 5: the answer is 8x16, want 16x16", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "image/png")
			png.Encode(w, image.NewNRGBA(image.Rect(0, 0, 8, 16)))
		}},
		{"refused", "406 Not Acceptable: Unsupported media type", func(w http.ResponseWriter) {
			http.Error(w, "Unsupported media type", http.StatusNotAcceptable)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fake := &fakeImaginary{t: t, wrong: func(i int64, w http.ResponseWriter) bool {
				if i != 5 {
					return false
				}
				c.wrong(w)
				return true
			}}
			srv := httptest.NewServer(fake)
			defer srv.Close()
			// One client, so that the 6th request is image 5's.
			_, err := runImaginary(t.Context(), strings.TrimPrefix(srv.URL, "http://"), encoded, 16, 1)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	t.Run("all right", func(t *testing.T) {
		fake := &fakeImaginary{t: t}
		srv := httptest.NewServer(fake)
		defer srv.Close()
		got, err := runImaginary(t.Context(), srv.URL, encoded, 16, 4)
		if err != nil || got.Images != len(encoded) || fake.requests.Load() != int64(len(encoded)) {
			t.Errorf("runImaginary: %+v, %v; %d requests, want %d", got, err, fake.requests.Load(), len(encoded))
		}
	})
}

// A URL that cannot be imaginary's is refused before the pipeline runs; a path prefix is kept.
func TestImaginaryEndpoint(t *testing.T) {
	for base, want := range map[string]string{
		"127.0.0.1:9000":              "http://127.0.0.1:9000/convert?type=png",
		"http://127.0.0.1:9000/":      "http://127.0.0.1:9000/convert?type=png",
		"https://img.example/api/v1/": "https://img.example/api/v1/convert?type=png",
	} {
		if got, err := imaginaryEndpoint(base); err != nil || got != want {
			t.Errorf("imaginaryEndpoint(%q) = %q, %v; want %q", base, got, err, want)
		}
	}
	for _, bad := range []string{"ftp://host/", "http://", "http://[::1"} {
		if got, err := imaginaryEndpoint(bad); err == nil {
			t.Errorf("imaginaryEndpoint(%q) = %q, want an error", bad, got)
		}
	}
	if _, err := Run(context.Background(), Config{Size: 8, N: 1, Clients: 1, Out: io.Discard, CompareImaginary: "ftp://host/"}); err == nil || !strings.Contains(err.Error(), "--compare-imaginary") {
		t.Errorf("Run with a bad URL: %v", err)
	}
}
