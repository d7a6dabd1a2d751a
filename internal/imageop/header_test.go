package imageop

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/imgmill/imgmill/internal/testimage"
	"golang.org/x/image/tiff"
)

func encodeJPEG(t testing.TB, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, image.NewRGBA(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeGIF(t testing.TB, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := gif.Encode(&b, testimage.Pattern(max(w, h), 1).SubImage(image.Rect(0, 0, w, h)), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// readHeader runs ReadHeader over in, delivered by wrap (nil: as is), and checks what every call must
// hold: the prefix is the start of in, and prefix plus the rest of the reader is all of in.
func readHeader(t *testing.T, in []byte, limit int, wrap func(io.Reader) io.Reader) (Header, []byte, error) {
	t.Helper()
	var r io.Reader = bytes.NewReader(in)
	if wrap != nil {
		r = wrap(r)
	}
	h, prefix, err := ReadHeader(r, limit)
	if !bytes.HasPrefix(in, prefix) {
		t.Fatalf("prefix (%d bytes) is not the start of the input", len(prefix))
	}
	rest, rerr := io.ReadAll(r)
	if rerr != nil {
		t.Fatalf("read the rest: %v", rerr)
	}
	if got := append(prefix, rest...); !bytes.Equal(got, in) {
		t.Fatalf("prefix (%d bytes) and rest (%d bytes) are not the input (%d bytes)", len(prefix), len(rest), len(in))
	}
	return h, prefix, err
}

func TestReadHeader(t *testing.T) {
	big := encodeJPEG(t, 40, 30)
	for _, tc := range []struct {
		name          string
		in            []byte
		format        string
		width, height int
		maxPrefix     int
		depth         int
	}{
		{"png", mustEncode(t, testimage.Pattern(37, 1)), "png", 37, 37, 512, 8},
		{"png header only", testimage.PNGHeader(3, 5), "png", 3, 5, testimage.PNGHeaderLen, 8},
		{"png huge", testimage.PaddedPNG(100_000, 100_000, 300), "png", 100_000, 100_000, 300, 8},
		{"png widest", testimage.PNGHeader(1<<31-1, 1), "png", 1<<31 - 1, 1, testimage.PNGHeaderLen, 8},
		{"jpeg", encodeJPEG(t, 17, 9), "jpeg", 17, 9, 1024, 8},
		{"jpeg after 200 KiB of metadata", testimage.InsertJPEGMetadata(big, 200<<10), "jpeg", 40, 30, MaxHeaderLen, 8},
		{"gif", encodeGIF(t, 12, 7), "gif", 12, 7, 1024, 8}, // a global colour table of 768 bytes follows the size
		{"png 16-bit", mustEncode(t, image.NewNRGBA64(image.Rect(0, 0, 5, 4))), "png", 5, 4, 512, 16},
		{"png 16-bit gray", mustEncode(t, image.NewGray16(image.Rect(0, 0, 5, 4))), "png", 5, 4, 512, 16},
		{"tiff 16-bit", mustTIFF(t, image.NewRGBA64(image.Rect(0, 0, 6, 3))), "tiff", 6, 3, 1024, 16},
		{"tiff", mustTIFF(t, image.NewNRGBA(image.Rect(0, 0, 6, 3))), "tiff", 6, 3, 1024, 8},
	} {
		for _, slow := range []bool{false, true} {
			name := tc.name
			var wrap func(io.Reader) io.Reader
			if slow {
				name += " one byte at a time"
				wrap = iotest.OneByteReader
			}
			t.Run(name, func(t *testing.T) {
				h, prefix, err := readHeader(t, tc.in, 0, wrap)
				if err != nil {
					t.Fatalf("ReadHeader: %v", err)
				}
				if want := (Header{Format: tc.format, Width: tc.width, Height: tc.height, Depth: tc.depth}); h != want {
					t.Errorf("header %+v, want %+v", h, want)
				}
				if len(prefix) > tc.maxPrefix {
					t.Errorf("read %d bytes to find the size, want at most %d", len(prefix), tc.maxPrefix)
				}
			})
		}
	}
}

func TestReadHeaderRefusals(t *testing.T) {
	valid := mustEncode(t, testimage.Pattern(16, 2))
	badCRC := testimage.PNGHeader(16, 16)
	badCRC[len(badCRC)-1] ^= 1
	jpg := encodeJPEG(t, 8, 8)
	for _, tc := range []struct {
		name  string
		in    []byte
		limit int
		msg   string // the whole error text, or its start when it ends with "..."
	}{
		{"empty", nil, 0, "empty image"},
		{"text", []byte("hello, this is not an image"), 0, NotImageMessage},
		{"short text", []byte("hi"), 0, NotImageMessage},
		{"bmp", append([]byte("BM"), make([]byte, 64)...), 0, NotImageMessage},
		{"png magic only", valid[:8], 0, "cannot read this PNG: the file is cut short: it ends after 8 bytes, before the image size (unexpected EOF): " + ResaveAdvice},
		{"png cut in IHDR", valid[:20], 0, "cannot read this PNG: the file is cut short: it ends after 20 bytes, before the image size (unexpected EOF): " + ResaveAdvice},
		{"png bad IHDR CRC", append(badCRC, valid[33:]...), 0, "cannot read this PNG: its header is malformed (png: invalid format: invalid checksum): " + ResaveAdvice},
		{"png zero width", testimage.PaddedPNG(0, 5, 100), 0, "cannot read this PNG: its header is malformed (png: invalid format: non-positive dimension): " + ResaveAdvice},
		{"png no IHDR", append([]byte(pngMagicForTest), make([]byte, 40)...), 0, "cannot read this PNG: its header is malformed ..."},
		{"jpeg cut before SOF", jpg[:40], 0, "cannot read this JPEG: the file is cut short: it ends after 40 bytes, before the image size ..."},
		{"jpeg magic only", jpg[:3], 0, "cannot read this JPEG: the file is cut short: it ends after 3 bytes, before the image size ..."},
		{"gif cut", []byte("GIF89a\x10\x00"), 0, "cannot read this GIF: the file is cut short: it ends after 8 bytes, before the image size ..."},
		{"jpeg metadata past the limit", testimage.InsertJPEGMetadata(jpg, 70_000), 64 << 10,
			"cannot read this JPEG: no image size within its first 65536 bytes (too much metadata before it): " + ResaveAdvice},
		{"jpeg metadata past MaxHeaderLen", testimage.InsertJPEGMetadata(jpg, MaxHeaderLen), 0,
			"cannot read this JPEG: no image size within its first 262144 bytes (too much metadata before it): " + ResaveAdvice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, prefix, err := readHeader(t, tc.in, tc.limit, nil)
			if !errors.Is(err, ErrDecode) || errors.Is(err, ErrTooLarge) {
				t.Fatalf("err = %v, want ErrDecode", err)
			}
			if start, ok := strings.CutSuffix(tc.msg, "..."); ok && !strings.HasPrefix(err.Error(), start) || !ok && err.Error() != tc.msg {
				t.Errorf("err = %q, want %q", err, tc.msg)
			}
			if max := max(tc.limit, MaxHeaderLen); len(prefix) > max {
				t.Errorf("read %d bytes, over the limit %d", len(prefix), max)
			}
		})
	}
}

const pngMagicForTest = "\x89PNG\r\n\x1a\n"

func TestReadHeaderReadError(t *testing.T) {
	readErr := errors.New("connection reset")
	in := testimage.InsertJPEGMetadata(encodeJPEG(t, 8, 8), 100_000)
	for _, n := range []int{0, 5, 20, 600, 70_000} {
		_, prefix, err := ReadHeader(io.MultiReader(bytes.NewReader(in[:n]), iotest.ErrReader(readErr)), 0)
		if !errors.Is(err, readErr) || errors.Is(err, ErrDecode) {
			t.Errorf("read error after %d bytes: err = %v, want the read error and not ErrDecode", n, err)
		}
		if !bytes.Equal(prefix, in[:min(n, len(prefix))]) || len(prefix) > n {
			t.Errorf("read error after %d bytes: prefix of %d bytes", n, len(prefix))
		}
	}
}

func TestCheckSize(t *testing.T) {
	for _, tc := range []struct {
		h        Header
		side     int
		pixels   int64
		msg      string
		tooLarge bool
	}{
		{Header{Format: "png", Width: 100_000, Height: 100_000, Depth: 8}, 16384, 50_000_000, "image is 100000x100000 pixels, over the limit of 16384 pixels per side: scale it down and upload it again", true},
		{Header{Format: "png", Width: 16384, Height: 1, Depth: 8}, 16384, 50_000_000, "", false},
		{Header{Format: "png", Width: 16385, Height: 1, Depth: 8}, 16384, 50_000_000, "image is 16385x1 pixels, over the limit of 16384 pixels per side: scale it down and upload it again", true},
		{Header{Format: "jpeg", Width: 1, Height: 16385, Depth: 8}, 16384, 0, "image is 1x16385 pixels, over the limit of 16384 pixels per side: scale it down and upload it again", true},
		{Header{Format: "gif", Width: 8000, Height: 7000, Depth: 8}, 16384, 50_000_000, "image is 8000x7000 pixels, over the limit of 50000000 pixels (50 MP) in all: scale it down and upload it again", true},
		{Header{Format: "gif", Width: 5000, Height: 10_000, Depth: 8}, 16384, 50_000_000, "", false},
		{Header{Format: "png", Width: 2000, Height: 1251, Depth: 8}, 0, 2_500_000, "image is 2000x1251 pixels, over the limit of 2500000 pixels (2.5 MP) in all: scale it down and upload it again", true},
		{Header{Format: "png", Width: 1 << 30, Height: 1 << 30, Depth: 8}, 0, 0, "", false},
		{Header{Format: "png", Width: 1 << 30, Height: 1 << 30, Depth: 8}, -1, -1, "", false},
	} {
		err := tc.h.CheckSize(tc.side, tc.pixels)
		if tc.tooLarge != errors.Is(err, ErrTooLarge) || errors.Is(err, ErrDecode) || err != nil && err.Error() != tc.msg {
			t.Errorf("%+v.CheckSize(%d, %d) = %v, want %q", tc.h, tc.side, tc.pixels, err, tc.msg)
		}
	}
}

// TestProcessMaxPixels checks the pixel limit: over it, Process fails with ErrTooLarge before it
// decodes anything, however large the image claims to be.
func TestProcessMaxPixels(t *testing.T) {
	in := mustEncode(t, testimage.Pattern(64, 4))
	for _, tc := range []struct {
		max int64
		ok  bool
	}{{4096, true}, {4095, false}, {0, true}, {-1, true}, {1, false}} {
		p := NewProcessor()
		p.MaxPixels = tc.max
		err := p.Process(io.Discard, bytes.NewReader(in))
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrTooLarge) {
			t.Errorf("MaxPixels %d, 64x64 image: err = %v, want ok %v", tc.max, err, tc.ok)
		}
		if !tc.ok && (errors.Is(err, ErrDecode) || err.Error() != "image is 64x64 pixels, over the limit of "+
			map[int64]string{4095: "4095 pixels in all", 1: "1 pixels in all"}[tc.max]+": "+ShrinkAdvice) {
			t.Errorf("MaxPixels %d: err = %q", tc.max, err)
		}
	}

	// A few hundred bytes that claim 10¹⁰ pixels (40 GB as RGBA) are refused without allocating them,
	// by the zero Processor too (DefaultMaxPixels).
	huge := testimage.PaddedPNG(100_000, 100_000, 300)
	for _, p := range []*Processor{NewProcessor(), {}} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		err := p.Process(io.Discard, bytes.NewReader(huge))
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrTooLarge) || err.Error() != "image is 100000x100000 pixels, over the limit of 50000000 pixels (50 MP) in all: scale it down and upload it again" {
			t.Errorf("Process of a 100000x100000 PNG: %v, want ErrTooLarge", err)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
			t.Errorf("Process of a 100000x100000 PNG allocated %d bytes", alloc)
		}
	}

	// At the limit exactly, the image is decoded.
	p := &Processor{MaxPixels: DefaultMaxPixels}
	if err := p.Process(io.Discard, bytes.NewReader(testimage.PaddedPNG(10_000, 5_000, 300))); !errors.Is(err, ErrDecode) {
		t.Errorf("Process of a 50 MP PNG header with junk after it: %v, want ErrDecode (decoding was tried)", err)
	}
}

func mustTIFF(t testing.TB, m image.Image) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := tiff.Encode(&b, m, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestReadHeaderOrientation(t *testing.T) {
	jpg := encodeJPEG(t, 17, 9)
	for _, tc := range []struct {
		in   []byte
		want int
	}{{jpg, 0}, {withExif(jpg, 1, false), 0}, {withExif(jpg, 6, false), 6}, {withExif(jpg, 3, true), 3}, {mustEncode(t, testimage.Pattern(5, 1)), 0}} {
		h, _, err := ReadHeader(bytes.NewReader(tc.in), 0)
		if err != nil || h.Orientation != tc.want || h.Width != 17 && h.Format == "jpeg" {
			t.Errorf("ReadHeader = %+v, %v; want orientation %d, the stored 17x9", h, err, tc.want)
		}
	}
}

// cutStream is a source whose read fails as a stream cut off mid-way does, wrapped by its caller.
type cutStream struct{ data []byte }

func (c *cutStream) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, fmt.Errorf("image storage unavailable: %w", io.ErrUnexpectedEOF)
	}
	n := copy(p, c.data)
	c.data = c.data[n:]
	return n, nil
}

// A source that fails is a read error, not an image that ended: neither "empty image" nor a truncated
// header (both permanent), whether it failed before the first byte or within the header.
func TestReadHeaderSourceCutOff(t *testing.T) {
	full := testimage.PNGHeader(64, 64)
	for _, n := range []int{0, 10} {
		_, _, err := ReadHeader(&cutStream{data: full[:n]}, 0)
		if err == nil || errors.Is(err, ErrDecode) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("source cut after %d bytes: %v, want its read error, not ErrDecode", n, err)
		}
	}
}
