package imageop

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/imgmill/imgmill/internal/testimage"
	"golang.org/x/image/tiff"
)

func TestDecodeFormats(t *testing.T) {
	want := map[string]string{"pattern.png": "png", "pattern.jpg": "jpeg", "pattern.gif": "gif", "pattern.webp": "webp",
		"pattern.bmp": "bmp", "pattern.tiff": "tiff"}
	for name, data := range inputFixtures(t) {
		for _, slow := range []bool{false, true} {
			var r io.Reader = bytes.NewReader(data)
			if slow {
				r = iotest.OneByteReader(r)
			}
			img, format, err := Decode(r, 0)
			if err != nil || format != want[name] || img.Bounds().Size() != image.Pt(32, 24) {
				t.Errorf("%s: %q %v, %v", name, format, err, img)
			}
		}
		// Cut short, every format is refused as bad input, never with a panic or a read error.
		for _, n := range []int{len(data) / 3, 2 * len(data) / 3} {
			_, _, err := Decode(bytes.NewReader(data[:n]), 0)
			if !errors.Is(err, ErrDecode) {
				t.Errorf("%s cut to %d bytes: %v, want ErrDecode", name, n, err)
			}
		}
		// Over the limit: refused from the header.
		_, _, err := Decode(bytes.NewReader(data), 32*24-1)
		if !errors.Is(err, ErrTooLarge) || err.Error() != "image is 32x24 pixels, over the limit of 767 pixels in all: scale it down and upload it again" {
			t.Errorf("%s over the limit: %v", name, err)
		}
	}
}

// tiffWithLateDirectory is an uncompressed TIFF of size×size pixels: Go's encoder writes the pixels
// first, so the directory that holds the size is past size×size×4 bytes.
func tiffWithLateDirectory(t testing.TB, size int) []byte {
	var b bytes.Buffer
	if err := tiff.Encode(&b, testimage.Pattern(size, 3), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestDecodeTIFFDirectoryPastHeader(t *testing.T) {
	data := tiffWithLateDirectory(t, 300) // the directory at about 360 KB
	at := binary.LittleEndian.Uint32(data[4:8])
	_, prefix, err := ReadHeader(bytes.NewReader(data), 0)
	want := "cannot read this TIFF: its image directory starts at byte 360008, past the first 262144 bytes: save it as PNG or JPEG and upload it again"
	if !errors.Is(err, ErrDecode) || err.Error() != want || at != 360008 {
		t.Errorf("ReadHeader: %v, want %q", err, want)
	}
	if len(prefix) > 512 {
		t.Errorf("ReadHeader read %d bytes to learn the directory lies past the limit", len(prefix))
	}
	// Decode reads such a TIFF whole, as its decoder does anyway, and checks its size from there.
	img, format, err := Decode(bytes.NewReader(data), 0)
	if err != nil || format != "tiff" {
		t.Fatalf("Decode: %q, %v", format, err)
	}
	compareImages(t, img, testimage.Pattern(300, 3), exact)
	if _, _, err := Decode(bytes.NewReader(data), 300*300-1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Decode over the limit: %v", err)
	}
	// A file bigger than any image within the limit could be is refused without reading it all.
	if _, _, err := Decode(bytes.NewReader(data), 1000); !errors.Is(err, ErrTooLarge) ||
		err.Error() != "TIFF file over 278144 bytes, more than an image of at most 1000 pixels takes" {
		t.Errorf("Decode of a file too large for the limit: %v", err)
	}
	readErr := errors.New("connection reset")
	if _, _, err := Decode(io.MultiReader(bytes.NewReader(data[:300_000]), iotest.ErrReader(readErr)), 0); !errors.Is(err, readErr) || errors.Is(err, ErrDecode) {
		t.Errorf("Decode with a read error: %v", err)
	}
}

func TestJPEGOrientation(t *testing.T) {
	jpg := mustJPEG(t, uprightPattern(), 90)
	xmp := func(b []byte) []byte { // an XMP APP1 segment before everything else
		payload := []byte("http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>")
		out := append([]byte{}, b[:2]...)
		out = append(out, 0xff, 0xe1)
		out = binary.BigEndian.AppendUint16(out, uint16(len(payload)+2))
		return append(append(out, payload...), b[2:]...)
	}
	exif := withExif(jpg, 6, false)
	for _, tc := range []struct {
		name string
		data []byte
		want int
	}{
		{"none", jpg, 1},
		{"little-endian", withExif(jpg, 6, false), 6},
		{"big-endian", withExif(jpg, 8, true), 8},
		{"after XMP", xmp(withExif(jpg, 3, true)), 3},
		{"after 200 KiB of other metadata", testimage.InsertJPEGMetadata(withExif(jpg, 5, false), 200<<10), 5},
		{"out of range", withExif(jpg, 9, false), 1},
		{"zero", withExif(jpg, 0, false), 1},
		{"fill bytes", append([]byte{0xff, 0xd8, 0xff, 0xff}, withExif(jpg, 7, false)[3:]...), 7},
		{"segment cut short", exif[:30], 1},
		{"not a JPEG", []byte("GIF89a........"), 1},
		{"empty", nil, 1},
	} {
		if got := jpegOrientation(tc.data); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	// Malformed Exif payloads mean no orientation, never a panic.
	ifd := exif[4+2+6:] // past SOI, APP1 marker and length, "Exif\0\0"
	for _, p := range [][]byte{
		nil, []byte("Exif\x00\x00"), []byte("Exif\x00\x00II*\x00"), []byte("Exif\x00\x00XX*\x00\x08\x00\x00\x00"),
		append([]byte("Exif\x00\x00"), ifd[:8]...),                                         // IFD offset past the end
		append([]byte("Exif\x00\x00"), ifd[:12]...),                                        // entries cut
		append([]byte("Exif\x00\x00II*\x00\xff\xff\xff\xff"), ifd[8:]...),                  // huge offset
		append(append([]byte("Exif\x00\x00"), ifd[:10]...), bytes.Repeat([]byte{0}, 5)...), // entries zeroed
	} {
		if o, ok := exifOrientation(p); ok {
			t.Errorf("exifOrientation(%q) = %d", p, o)
		}
	}
}

func FuzzJPEGOrientation(f *testing.F) {
	jpg := mustJPEG(f, uprightPattern(), 50)
	f.Add(withExif(jpg, 6, false)[:200])
	f.Add(withExif(jpg, 3, true)[:200])
	f.Fuzz(func(t *testing.T, b []byte) {
		if o := jpegOrientation(b); o < 1 || o > 8 {
			t.Fatalf("orientation %d", o)
		}
	})
}

func TestSniffFormats(t *testing.T) {
	pad := func(s string) []byte { return append([]byte(s), make([]byte, SniffLen)...)[:max(len(s), SniffLen)] }
	dib := func(size uint32) []byte {
		b := append([]byte("BM"), make([]byte, 12)...)
		return binary.LittleEndian.AppendUint32(b, size)
	}
	for _, tc := range []struct {
		name   string
		header []byte
		format string
	}{
		{"webp", pad("RIFF\x10\x00\x00\x00WEBPVP8 "), "webp"},
		{"riff wave", pad("RIFF\x10\x00\x00\x00WAVEfmt "), ""},
		{"webp short", []byte("RIFF\x10\x00\x00\x00WEB"), ""},
		{"bmp v3", dib(40), "bmp"},
		{"bmp v5", dib(124), "bmp"},
		{"bmp core", dib(12), "bmp"},
		{"bm text", pad("BMW owners club, est. 1999"), ""},
		{"bm short", []byte("BM\x00\x00"), ""},
		{"tiff le", pad("II*\x00\x08\x00\x00\x00"), "tiff"},
		{"tiff be", pad("MM\x00*\x00\x00\x00\x08"), "tiff"},
		{"bigtiff", pad("II+\x00"), ""},
	} {
		if f, ok := Sniff(tc.header); f != tc.format || ok != (tc.format != "") {
			t.Errorf("%s: Sniff = %q, %v; want %q", tc.name, f, ok, tc.format)
		}
	}
	// Every fixture is recognised from its first SniffLen bytes, as image.Decode names it.
	for name, data := range inputFixtures(t) {
		_, want, err := image.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := Sniff(data[:SniffLen]); !ok || got != want {
			t.Errorf("%s: Sniff = %q, %v; want %q", name, got, ok, want)
		}
	}
}

func TestReadHeaderFormats(t *testing.T) {
	fx := inputFixtures(t)
	for _, name := range []string{"pattern.webp", "pattern.bmp", "pattern.tiff"} {
		for _, slow := range []bool{false, true} {
			var wrap func(io.Reader) io.Reader
			if slow {
				wrap = iotest.OneByteReader
			}
			h, _, err := readHeader(t, fx[name], 0, wrap)
			if err != nil || h.Width != 32 || h.Height != 24 || "pattern."+h.Format != name {
				t.Errorf("%s: %+v, %v", name, h, err)
			}
		}
	}
	for _, tc := range []struct {
		name string
		in   []byte
		msg  string
	}{
		{"webp cut", fx["pattern.webp"][:16], "cannot read this WebP: the file is cut short: it ends after 16 bytes, before the image size ..."},
		{"bmp cut", fx["pattern.bmp"][:20], "cannot read this BMP: the file is cut short: it ends after 20 bytes, before the image size ..."},
		{"tiff cut", fx["pattern.tiff"][:100], "cannot read this TIFF: the file is cut short: it ends after 100 bytes, before the image size ..."},
		{"tiff empty directory", []byte("II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"), "cannot read this TIFF: its header is malformed ..."},
		{"bmp unsupported", append(dibHeader(64), make([]byte, 64)...), "cannot read this BMP: its header is malformed (bmp: unsupported BMP image): " + ResaveAdvice},
	} {
		_, _, err := readHeader(t, tc.in, 0, nil)
		if start, ok := strings.CutSuffix(tc.msg, "..."); !errors.Is(err, ErrDecode) ||
			ok && !strings.HasPrefix(err.Error(), start) || !ok && err.Error() != tc.msg {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.msg)
		}
	}
}

func dibHeader(size uint32) []byte {
	b := append([]byte("BM"), make([]byte, 12)...)
	return binary.LittleEndian.AppendUint32(b, size)
}

func TestContentType(t *testing.T) {
	for _, f := range Formats() {
		ct := ContentType(f)
		if ct == "" || Extension(ct) == "" {
			t.Errorf("%s: %q, extension %q", f, ct, Extension(ct))
		}
	}
	if ContentType("png") != "image/png" || ContentType("jpeg") != "image/jpeg" || ContentType("xcf") != "" {
		t.Error("ContentType")
	}
}

// TestDecodeContext: DecodeContext decodes as Decode does, and stops once its context ends, with an
// error wrapping the context's and not ErrDecode (the image is not at fault).
func TestDecodeContext(t *testing.T) {
	img := testimage.Pattern(32, 1)
	b, err := testimage.EncodePNG(img)
	if err != nil {
		t.Fatal(err)
	}
	got, format, err := DecodeContext(t.Context(), bytes.NewReader(b), 0)
	if err != nil || format != "png" || got.Bounds() != img.Bounds() {
		t.Fatalf("DecodeContext: %v %q %v", got.Bounds(), format, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := DecodeContext(ctx, bytes.NewReader(b), 0); !errors.Is(err, context.Canceled) || errors.Is(err, ErrDecode) {
		t.Errorf("DecodeContext after its context ended: %v, want context.Canceled and not ErrDecode", err)
	}
}
