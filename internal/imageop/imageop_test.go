package imageop

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
)

// parentRect has a non-zero (negative X) Min; subRect lies strictly inside it
// so a sub-image has a non-zero Min and a stride larger than its width.
var (
	parentRect = image.Rect(-3, 5, 17, 20)
	subRect    = image.Rect(2, 7, 13, 16)
)

// randNRGBA64 returns a colour whose 16-bit channels have distinct high and
// low bytes, so swapping the wrong byte pairs is caught; alpha is sometimes
// exactly 0 or 0xffff.
func randNRGBA64(rng *rand.Rand) color.NRGBA64 {
	c := color.NRGBA64{R: uint16(rng.Uint32()), G: uint16(rng.Uint32()), B: uint16(rng.Uint32()), A: uint16(rng.Uint32())}
	switch rng.IntN(4) {
	case 0:
		c.A = 0
	case 1:
		c.A = 0xffff
	}
	return c
}

// fillSet fills m through Set with random colours; the image's own model
// converts them, which keeps premultiplied types valid.
func fillSet(m draw.Image, rng *rand.Rand) {
	b := m.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			m.Set(x, y, randNRGBA64(rng))
		}
	}
}

func fillBytes(p []byte, rng *rand.Rand) {
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

type subImager interface {
	SubImage(image.Rectangle) image.Image
}

type imageCase struct {
	name string
	// make returns a fresh, randomly filled image with bounds parentRect.
	make func(rng *rand.Rand) image.Image
	// inPlace: SwapRedGreen must return the same image (same pointer).
	inPlace bool
	// exact: compare 16-bit RGBA() values; otherwise (converted types)
	// compare in 8-bit NRGBA terms, the precision of the *image.NRGBA result.
	exact bool
}

var imageCases = []imageCase{
	{"NRGBA", func(rng *rand.Rand) image.Image {
		m := image.NewNRGBA(parentRect)
		fillSet(m, rng)
		return m
	}, true, true},
	{"RGBA", func(rng *rand.Rand) image.Image {
		m := image.NewRGBA(parentRect)
		fillSet(m, rng)
		return m
	}, true, true},
	{"NRGBA64", func(rng *rand.Rand) image.Image {
		m := image.NewNRGBA64(parentRect)
		fillSet(m, rng)
		return m
	}, true, true},
	{"RGBA64", func(rng *rand.Rand) image.Image {
		m := image.NewRGBA64(parentRect)
		fillSet(m, rng)
		return m
	}, true, true},
	{"Paletted", func(rng *rand.Rand) image.Image {
		// Mixed entry types exercise every branch of swapPalette.
		pal := color.Palette{
			color.RGBA{10, 200, 30, 255}, color.RGBA{0, 0, 0, 0}, color.RGBA{40, 90, 20, 128},
			color.NRGBA{250, 5, 60, 77}, color.NRGBA{1, 2, 3, 0},
			color.RGBA64{0x1234, 0x5678, 0x0abc, 0xffff}, color.NRGBA64{0xfedc, 0x0102, 0x3344, 0x8000},
			color.YCbCr{100, 30, 200}, color.Gray{77},
		}
		m := image.NewPaletted(parentRect, pal)
		for i := range m.Pix {
			m.Pix[i] = uint8(rng.IntN(len(pal)))
		}
		return m
	}, true, true},
	{"Gray", func(rng *rand.Rand) image.Image {
		m := image.NewGray(parentRect)
		fillBytes(m.Pix, rng)
		return m
	}, true, true},
	{"Gray16", func(rng *rand.Rand) image.Image {
		m := image.NewGray16(parentRect)
		fillBytes(m.Pix, rng)
		return m
	}, true, true},
	{"YCbCr420", func(rng *rand.Rand) image.Image {
		m := image.NewYCbCr(parentRect, image.YCbCrSubsampleRatio420)
		fillBytes(m.Y, rng)
		fillBytes(m.Cb, rng)
		fillBytes(m.Cr, rng)
		return m
	}, false, false},
	{"YCbCr440", func(rng *rand.Rand) image.Image { // no draw fast path
		m := image.NewYCbCr(parentRect, image.YCbCrSubsampleRatio440)
		fillBytes(m.Y, rng)
		fillBytes(m.Cb, rng)
		fillBytes(m.Cr, rng)
		return m
	}, false, false},
	{"NYCbCrA", func(rng *rand.Rand) image.Image {
		m := image.NewNYCbCrA(parentRect, image.YCbCrSubsampleRatio444)
		fillBytes(m.Y, rng)
		fillBytes(m.Cb, rng)
		fillBytes(m.Cr, rng)
		fillBytes(m.A, rng)
		return m
	}, false, false},
	{"CMYK", func(rng *rand.Rand) image.Image {
		m := image.NewCMYK(parentRect)
		fillBytes(m.Pix, rng)
		return m
	}, false, false},
	{"Alpha", func(rng *rand.Rand) image.Image {
		m := image.NewAlpha(parentRect)
		fillBytes(m.Pix, rng)
		return m
	}, false, false},
}

// naiveSwap is the reference: per-pixel At, swap the premultiplied 16-bit
// R and G, store in an RGBA64 with the same bounds.
func naiveSwap(img image.Image) *image.RGBA64 {
	b := img.Bounds()
	ref := image.NewRGBA64(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			ref.SetRGBA64(x, y, color.RGBA64{R: uint16(g), G: uint16(r), B: uint16(bl), A: uint16(a)})
		}
	}
	return ref
}

// snapshot records every pixel of img in 16-bit terms.
func snapshot(img image.Image) map[image.Point]color.RGBA64 {
	b := img.Bounds()
	s := make(map[image.Point]color.RGBA64, b.Dx()*b.Dy())
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			s[image.Pt(x, y)] = color.RGBA64{uint16(r), uint16(g), uint16(bl), uint16(a)}
		}
	}
	return s
}

func nrgbaOf(c color.Color) color.NRGBA { return color.NRGBAModel.Convert(c).(color.NRGBA) }

func TestSwapRedGreenTypes(t *testing.T) {
	for _, tc := range imageCases {
		for _, sub := range []bool{false, true} {
			name := tc.name + "/full"
			if sub {
				name = tc.name + "/sub"
			}
			t.Run(name, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(1, uint64(len(name))))
				parent := tc.make(rng)
				img := parent
				if sub {
					img = parent.(subImager).SubImage(subRect)
					if img.Bounds() != subRect {
						t.Fatalf("sub-image bounds %v, want %v", img.Bounds(), subRect)
					}
				}
				want := naiveSwap(img)
				before := snapshot(parent)
				var origPal, palBefore color.Palette
				if p, ok := img.(*image.Paletted); ok {
					origPal, palBefore = p.Palette, slices.Clone(p.Palette)
				}

				got := SwapRedGreen(img)

				if got.Bounds() != img.Bounds() {
					t.Fatalf("bounds %v, want %v", got.Bounds(), img.Bounds())
				}
				if tc.inPlace {
					if got != img {
						t.Fatalf("got a new %T, want the input swapped in place", got)
					}
				} else if _, ok := got.(*image.NRGBA); !ok {
					t.Fatalf("got %T, want *image.NRGBA", got)
				}
				b := img.Bounds()
				for y := b.Min.Y; y < b.Max.Y; y++ {
					for x := b.Min.X; x < b.Max.X; x++ {
						if tc.exact {
							r, g, bl, a := got.At(x, y).RGBA()
							gc := color.RGBA64{uint16(r), uint16(g), uint16(bl), uint16(a)}
							if wc := want.RGBA64At(x, y); gc != wc {
								t.Fatalf("pixel (%d,%d) = %v, want %v", x, y, gc, wc)
							}
						} else if gc, wc := nrgbaOf(got.At(x, y)), nrgbaOf(want.At(x, y)); gc != wc {
							t.Fatalf("pixel (%d,%d) = %v, want %v", x, y, gc, wc)
						}
					}
				}
				// Pixels outside the swapped bounds must be untouched, and
				// converted types must leave their input alone entirely.
				after := snapshot(parent)
				for p, c := range before {
					if (p.In(b) && tc.inPlace) || after[p] == c {
						continue
					}
					if _, pal := parent.(*image.Paletted); pal && p.In(b) {
						continue
					}
					t.Fatalf("pixel %v outside the swap changed: %v -> %v", p, c, after[p])
				}
				if origPal != nil {
					// The original palette slice (possibly shared, here with
					// the parent of a sub-image) must not change; the image
					// gets a swapped copy instead.
					if !slices.Equal(origPal, palBefore) {
						t.Fatal("original palette mutated; want a swapped copy")
					}
					if slices.Equal(got.(*image.Paletted).Palette, palBefore) {
						t.Fatal("palette not swapped")
					}
				}
			})
		}
	}
}

// TestSwapPalettedSharedPalette checks that a palette shared by two images is
// not mutated when one of them is swapped.
func TestSwapPalettedSharedPalette(t *testing.T) {
	pal := color.Palette{color.RGBA{1, 2, 3, 255}, color.RGBA{200, 100, 50, 255}}
	a := image.NewPaletted(image.Rect(0, 0, 2, 1), pal)
	a.Pix[1] = 1
	bImg := image.NewPaletted(image.Rect(0, 0, 2, 1), pal)
	bImg.Pix[1] = 1
	pixBefore := slices.Clone(a.Pix)
	SwapRedGreen(a)
	if got, want := a.At(1, 0), (color.RGBA{100, 200, 50, 255}); got != want {
		t.Fatalf("swapped image pixel = %v, want %v", got, want)
	}
	if got, want := bImg.At(1, 0), (color.RGBA{200, 100, 50, 255}); got != want {
		t.Fatalf("other image sharing the palette changed: %v, want %v", got, want)
	}
	if pal[1] != (color.RGBA{200, 100, 50, 255}) {
		t.Fatal("shared palette slice mutated")
	}
	if !bytes.Equal(a.Pix, pixBefore) {
		t.Fatal("paletted pixels (indices) changed")
	}
}

func TestSwapEmpty(t *testing.T) {
	r := image.Rect(4, 4, 4, 9) // zero width, non-zero Min
	for _, img := range []image.Image{
		image.NewNRGBA(r), image.NewRGBA(r), image.NewNRGBA64(r), image.NewRGBA64(r),
		image.NewPaletted(r, nil), image.NewGray(r), image.NewCMYK(r),
		image.NewYCbCr(r, image.YCbCrSubsampleRatio420),
	} {
		if got := SwapRedGreen(img); got.Bounds() != img.Bounds() {
			t.Errorf("%T: bounds %v, want %v", img, got.Bounds(), img.Bounds())
		}
	}
}

func TestPatternProperties(t *testing.T) {
	const size = 256
	m := testimage.Pattern(size, 42)
	if m.Bounds() != image.Rect(0, 0, size, size) {
		t.Fatalf("bounds %v", m.Bounds())
	}
	if !bytes.Equal(m.Pix, testimage.Pattern(size, 42).Pix) {
		t.Fatal("same seed gave different images")
	}
	if bytes.Equal(m.Pix, testimage.Pattern(size, 43).Pix) {
		t.Fatal("different seeds gave the same image")
	}
	var alpha0, alpha255, alphaMid, rEqG int
	for i := 0; i < len(m.Pix); i += 4 {
		switch a := m.Pix[i+3]; {
		case a == 0:
			alpha0++
		case a == 255:
			alpha255++
		default:
			alphaMid++
		}
		if m.Pix[i] == m.Pix[i+1] {
			rEqG++
		}
	}
	n := size * size
	if alpha0 == 0 || alpha255 == 0 || alphaMid == 0 {
		t.Fatalf("alpha kinds: 0:%d 255:%d mid:%d, want all present", alpha0, alpha255, alphaMid)
	}
	if rEqG > n/10 {
		t.Fatalf("R == G in %d of %d pixels; a missed swap would go unnoticed", rEqG, n)
	}
	if got := testimage.Pattern(4, 1); !hasAlphaKinds(got) {
		t.Fatal("size 4 lacks alpha 0, 255 or in-between")
	}
	data, err := testimage.EncodePNG(m)
	if err != nil {
		t.Fatal(err)
	}
	// Photo-like: compressible, but far from trivially so.
	ratio := float64(len(data)) / float64(len(m.Pix))
	t.Logf("PNG %d bytes for %d raw (%.2f)", len(data), len(m.Pix), ratio)
	if ratio < 0.15 || ratio > 0.9 {
		t.Fatalf("compression ratio %.2f, want photo-like (0.15..0.9)", ratio)
	}
	if got := testimage.Pattern(0, 1).Bounds(); !got.Empty() {
		t.Fatalf("size 0 gave bounds %v", got)
	}
}

func hasAlphaKinds(m *image.NRGBA) bool {
	var z, f, mid bool
	for i := 3; i < len(m.Pix); i += 4 {
		z = z || m.Pix[i] == 0
		f = f || m.Pix[i] == 255
		mid = mid || (m.Pix[i] != 0 && m.Pix[i] != 255)
	}
	return z && f && mid
}

func mustEncode(t testing.TB, img image.Image) []byte {
	t.Helper()
	data, err := testimage.EncodePNG(img)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func process(t testing.TB, p *Processor, in []byte) image.Image {
	t.Helper()
	var out bytes.Buffer
	if err := p.Process(&out, bytes.NewReader(in)); err != nil {
		t.Fatalf("Process: %v", err)
	}
	if f, ok := Sniff(out.Bytes()); !ok || f != "png" {
		t.Fatalf("output is not PNG (sniffed %q, %v)", f, ok)
	}
	img, err := png.Decode(&out)
	if err != nil {
		t.Fatalf("decoding output: %v", err)
	}
	return img
}

func TestProcessRoundTrip(t *testing.T) {
	p := NewProcessor()
	for _, size := range []int{1, 37, 128} {
		orig := testimage.Pattern(size, int64(size))
		got := process(t, p, mustEncode(t, orig))
		if err := testimage.CheckSwapped(orig, got); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
	}
	// The zero value works as well.
	orig := testimage.Pattern(16, 5)
	if err := testimage.CheckSwapped(orig, process(t, &Processor{}, mustEncode(t, orig))); err != nil {
		t.Fatalf("zero Processor: %v", err)
	}
}

// TestProcessFormats feeds each registered format and other PNG flavours
// through Process and checks the output against the decoded input.
func TestProcessFormats(t *testing.T) {
	pattern := testimage.Pattern(48, 9)
	opaque := image.NewRGBA(pattern.Bounds())
	draw.Draw(opaque, opaque.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	draw.Draw(opaque, opaque.Bounds(), pattern, image.Point{}, draw.Over)

	enc := func(f func(io.Writer) error) []byte {
		var b bytes.Buffer
		if err := f(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	n64 := image.NewNRGBA64(pattern.Bounds())
	draw.Draw(n64, n64.Bounds(), pattern, image.Point{}, draw.Src)
	gray := image.NewGray(pattern.Bounds())
	draw.Draw(gray, gray.Bounds(), pattern, image.Point{}, draw.Src)
	cases := map[string][]byte{
		"jpeg":      enc(func(w io.Writer) error { return jpeg.Encode(w, opaque, nil) }),
		"jpeg-gray": enc(func(w io.Writer) error { return jpeg.Encode(w, gray, nil) }),
		"gif":       enc(func(w io.Writer) error { return gif.Encode(w, pattern, nil) }),
		"png-rgb":   mustEncode(t, opaque),
		"png-16bit": mustEncode(t, n64),
		"png-gray":  mustEncode(t, gray),
	}
	p := NewProcessor()
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			orig, _, err := image.Decode(bytes.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			if err := testimage.CheckSwapped(orig, process(t, p, in)); err != nil {
				t.Fatalf("%T input: %v", orig, err)
			}
		})
	}
}

func TestProcessDecodeErrors(t *testing.T) {
	valid := mustEncode(t, testimage.Pattern(64, 1))
	corrupt := slices.Clone(valid)
	corrupt[len(corrupt)/2] ^= 0xff // breaks a chunk CRC or the zlib stream
	cases := map[string][]byte{
		"empty":         nil,
		"garbage":       []byte("this is not an image, just some text"),
		"png-magic":     valid[:8],
		"truncated-33":  valid[:33],
		"truncated-mid": valid[:len(valid)/2],
		"truncated-end": valid[:len(valid)-1],
		"corrupt":       corrupt,
		"jpeg-magic":    {0xff, 0xd8, 0xff, 0xe0, 0, 0},
	}
	p := NewProcessor()
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := p.Process(&out, bytes.NewReader(in))
			if !errors.Is(err, ErrDecode) {
				t.Fatalf("err = %v, want ErrDecode", err)
			}
		})
	}
}

type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

type failingWriter struct{ err error }

func (f failingWriter) Write([]byte) (int, error) { return 0, f.err }

// TestProcessIOErrors checks that I/O failures are not reported as ErrDecode.
func TestProcessIOErrors(t *testing.T) {
	valid := mustEncode(t, testimage.Pattern(64, 1))
	p := NewProcessor()

	readErr := errors.New("connection reset")
	err := p.Process(io.Discard, &failingReader{bytes.NewReader(valid[:len(valid)/2]), readErr})
	if !errors.Is(err, readErr) || errors.Is(err, ErrDecode) {
		t.Fatalf("read failure: err = %v, want the read error and not ErrDecode", err)
	}

	writeErr := errors.New("disk full")
	err = p.Process(failingWriter{writeErr}, bytes.NewReader(valid))
	if !errors.Is(err, writeErr) || errors.Is(err, ErrDecode) {
		t.Fatalf("write failure: err = %v, want the write error and not ErrDecode", err)
	}
}

func TestSniff(t *testing.T) {
	pad := func(s string) []byte { return append([]byte(s), make([]byte, SniffLen)...)[:max(len(s), SniffLen)] }
	tests := []struct {
		name   string
		header []byte
		format string
		ok     bool
	}{
		{"png", pad("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "png", true},
		{"png-exact-magic", []byte("\x89PNG\r\n\x1a\n"), "png", true},
		{"png-short", []byte("\x89PNG\r\n\x1a"), "", false},
		{"png-bad-crlf", pad("\x89PNG\n\n\x1a\n"), "", false},
		{"jpeg-jfif", pad("\xff\xd8\xff\xe0\x00\x10JFIF\x00"), "jpeg", true},
		{"jpeg-exif", pad("\xff\xd8\xff\xe1"), "jpeg", true},
		{"jpeg-short", []byte("\xff\xd8"), "", false},
		{"gif87a", pad("GIF87a"), "gif", true},
		{"gif89a", pad("GIF89a"), "gif", true},
		{"gif-bad-version", pad("GIF88a"), "", false},
		{"webp", pad("RIFF\x00\x00\x00\x00WEBPVP8 "), "webp", true},
		{"bmp without a DIB header", pad("BM"), "", false},
		{"text", pad("hello, world"), "", false},
		{"html", pad("<!DOCTYPE html>"), "", false},
		{"empty", nil, "", false},
	}
	for _, tt := range tests {
		format, ok := Sniff(tt.header)
		if format != tt.format || ok != tt.ok {
			t.Errorf("%s: Sniff = %q, %v; want %q, %v", tt.name, format, ok, tt.format, tt.ok)
		}
	}

	// Real encoder output: Sniff must agree with the name image.Decode uses.
	m := testimage.Pattern(8, 1)
	var j, g bytes.Buffer
	if err := jpeg.Encode(&j, m, nil); err != nil {
		t.Fatal(err)
	}
	if err := gif.Encode(&g, m, nil); err != nil {
		t.Fatal(err)
	}
	for _, data := range [][]byte{mustEncode(t, m), j.Bytes(), g.Bytes()} {
		_, want, err := image.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := Sniff(data[:SniffLen]); !ok || got != want {
			t.Errorf("Sniff(%q...) = %q, %v; want %q", data[:4], got, ok, want)
		}
	}
}

// TestProcessConcurrent shares one Processor (and its buffer pool) across
// goroutines; run with -race.
func TestProcessConcurrent(t *testing.T) {
	p := NewProcessor()
	const workers, iters = 8, 4
	inputs := make([][]byte, workers)
	origs := make([]*image.NRGBA, workers)
	for i := range inputs {
		origs[i] = testimage.Pattern(24+8*i, int64(i))
		inputs[i] = mustEncode(t, origs[i])
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*iters)
	for w := range workers {
		wg.Go(func() {
			for it := range iters {
				k := (w + it) % workers
				var out bytes.Buffer
				if err := p.Process(&out, bytes.NewReader(inputs[k])); err != nil {
					errs <- err
					continue
				}
				got, err := png.Decode(&out)
				if err == nil {
					err = testimage.CheckSwapped(origs[k], got)
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d input %d: %w", w, k, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

var benchSizes = []int{64, 256, 2048}

func BenchmarkSwap(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			m := testimage.Pattern(size, 1)
			b.SetBytes(int64(len(m.Pix)))
			b.ReportAllocs()
			for b.Loop() {
				SwapRedGreen(m) // in place; swapping back and forth is fine
			}
		})
	}
}

// BenchmarkProcess measures decode + swap + encode; MB/s is in raw pixel
// bytes (4 per pixel) so it compares with BenchmarkSwap.
func BenchmarkProcess(b *testing.B) {
	p := NewProcessor()
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			in := mustEncode(b, testimage.Pattern(size, 1))
			b.SetBytes(int64(4 * size * size))
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Process(io.Discard, bytes.NewReader(in)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestParsePNGCompression(t *testing.T) {
	for name, want := range map[string]png.CompressionLevel{"": png.DefaultCompression, "default": png.DefaultCompression,
		"speed": png.BestSpeed, "best": png.BestCompression, "none": png.NoCompression} {
		if got, err := ParsePNGCompression(name); err != nil || got != want {
			t.Errorf("ParsePNGCompression(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := ParsePNGCompression("fast"); err == nil {
		t.Error("ParsePNGCompression(fast) succeeded")
	}
}

// BenchmarkProcessCompression is the floor's work (decode, swap, encode a 256 px PNG) at each PNG
// compression level: go test -bench ProcessCompression -count 6 | benchstat -col /level
func BenchmarkProcessCompression(b *testing.B) {
	src, err := testimage.EncodePNG(testimage.Pattern(256, 1))
	if err != nil {
		b.Fatal(err)
	}
	for _, level := range []string{"default", "speed", "none"} {
		b.Run("level="+level, func(b *testing.B) {
			p := NewProcessor()
			p.PNGCompression, _ = ParsePNGCompression(level)
			var out bytes.Buffer
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				out.Reset()
				if err := p.Process(&out, bytes.NewReader(src)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(out.Len()), "out-bytes")
		})
	}
}
