package pngenc

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
)

var levels = []png.CompressionLevel{png.DefaultCompression, png.BestSpeed, png.BestCompression, png.NoCompression}

// testCase is an image to encode; lossy is the difference allowed, per
// 16-bit channel in premultiplied terms, between the decoded output and the
// input: 0 but for premultiplied inputs with translucent pixels, which PNG's
// straight alpha cannot always hold exactly (image/png loses the same).
type testCase struct {
	name  string
	img   image.Image
	lossy uint32
}

// testCases returns every supported type at several sizes and origins,
// opaque and not, filled from rng.
func testCases(rng *rand.Rand) []testCase {
	var cs []testCase
	rects := []image.Rectangle{
		image.Rect(0, 0, 1, 1), image.Rect(0, 0, 3, 7), image.Rect(0, 0, 7, 3), image.Rect(0, 0, 17, 5),
		image.Rect(-5, 3, 12, 16), // non-zero origin
		image.Rect(0, 0, 130, 9),  // rows of hundreds of bytes
		image.Rect(10, 20, 51, 33),
	}
	for _, r := range rects {
		for _, sub := range []bool{false, true} {
			for _, opaque := range []bool{true, false} {
				name := fmt.Sprintf("%v", r)
				if sub {
					name += "/sub"
				}
				if opaque {
					name += "/opaque"
				}
				add := func(kind string, img image.Image, lossy uint32) {
					cs = append(cs, testCase{kind + "/" + name, img, lossy})
				}
				mk := func(r image.Rectangle) image.Rectangle { return r }
				if sub { // a sub-image: Pix starts mid-buffer, Stride exceeds the row
					mk = func(r image.Rectangle) image.Rectangle { return r.Inset(-3) }
				}
				// Straight 8-bit.
				n := image.NewNRGBA(mk(r))
				fill(rng, n.Pix, 4, 1, opaque)
				add("NRGBA", subImage(n, r), 0)
				// Premultiplied 8-bit: valid premultiplied pixels.
				m := image.NewRGBA(mk(r))
				fill(rng, m.Pix, 4, 1, opaque)
				premultiply8(m.Pix)
				add("RGBA", subImage(m, r), lossyIf(!opaque, 0x101))
				// 16-bit.
				n64 := image.NewNRGBA64(mk(r))
				fill(rng, n64.Pix, 8, 2, opaque)
				add("NRGBA64", subImage(n64, r), 0)
				m64 := image.NewRGBA64(mk(r))
				fill(rng, m64.Pix, 8, 2, opaque)
				premultiply16(m64.Pix)
				add("RGBA64", subImage(m64, r), lossyIf(!opaque, 1))
				if !opaque {
					continue // the rest has no alpha, or has it in the palette
				}
				g := image.NewGray(mk(r))
				fill(rng, g.Pix, 1, 0, false)
				add("Gray", subImage(g, r), 0)
				g16 := image.NewGray16(mk(r))
				fill(rng, g16.Pix, 2, 0, false)
				add("Gray16", subImage(g16, r), 0)
				for _, size := range []int{1, 2, 3, 5, 16, 17, 256} {
					for _, transparent := range []bool{false, true} {
						pal := randomPalette(rng, size, transparent)
						p := image.NewPaletted(mk(r), pal)
						for i := range p.Pix {
							p.Pix[i] = uint8(rng.IntN(size))
						}
						kind := fmt.Sprintf("Paletted%d", size)
						if transparent {
							kind += "/tRNS"
						}
						add(kind, subImage(p, r), 0)
					}
				}
			}
		}
	}
	return cs
}

func lossyIf(b bool, v uint32) uint32 {
	if b {
		return v
	}
	return 0
}

// fill fills pix with random pixels of size bytes, whose last alphaBytes bytes
// are alpha: all 0xff if opaque, else a mix of 0, 0xff and anything.
func fill(rng *rand.Rand, pix []byte, size, alphaBytes int, opaque bool) {
	for i := range pix {
		pix[i] = byte(rng.Uint32())
	}
	if alphaBytes == 0 {
		return
	}
	for i := size - alphaBytes; i < len(pix); i += size {
		a := pix[i : i+alphaBytes]
		switch v := rng.IntN(4); {
		case opaque || v == 0:
			for j := range a {
				a[j] = 0xff
			}
		case v == 1:
			clear(a)
		}
	}
}

func premultiply8(pix []byte) {
	for i := 0; i < len(pix); i += 4 {
		a := uint32(pix[i+3])
		for c := range 3 {
			pix[i+c] = uint8(uint32(pix[i+c]) * a / 255)
		}
	}
}

func premultiply16(pix []byte) {
	for i := 0; i < len(pix); i += 8 {
		a := uint32(binary.BigEndian.Uint16(pix[i+6:]))
		for c := 0; c < 6; c += 2 {
			binary.BigEndian.PutUint16(pix[i+c:], uint16(uint32(binary.BigEndian.Uint16(pix[i+c:]))*a/0xffff))
		}
	}
}

// randomPalette returns n colours, of assorted color types; with
// transparent, some of them are not opaque.
func randomPalette(rng *rand.Rand, n int, transparent bool) color.Palette {
	pal := make(color.Palette, n)
	for i := range pal {
		c := color.NRGBA{uint8(rng.Uint32()), uint8(rng.Uint32()), uint8(rng.Uint32()), 0xff}
		if transparent && rng.IntN(3) == 0 {
			c.A = uint8(rng.Uint32())
		}
		switch i % 3 {
		case 0:
			pal[i] = c
		case 1:
			pal[i] = color.Gray{c.R} // opaque whatever transparent says
		default:
			if c.A == 0xff {
				pal[i] = color.RGBA{c.R, c.G, c.B, 0xff} // premultiplied, lossless only if opaque
			} else {
				pal[i] = c
			}
		}
	}
	return pal
}

func subImage(img image.Image, r image.Rectangle) image.Image {
	if img.Bounds() == r {
		return img
	}
	return img.(interface {
		SubImage(image.Rectangle) image.Image
	}).SubImage(r)
}

func encode(t testing.TB, enc *Encoder, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := enc.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cases := testCases(rng)
	for _, level := range levels {
		enc := &Encoder{CompressionLevel: level}
		for _, c := range cases {
			t.Run(fmt.Sprintf("level%d/%s", level, c.name), func(t *testing.T) {
				checkEncode(t, enc, c.img, c.lossy)
			})
		}
	}
}

// checkEncode encodes img with enc, checks that image/png decodes it to img's
// pixels (within lossy, in 16-bit premultiplied terms) and to exactly the
// pixels it decodes from image/png's own encoding of img, that every chunk
// but the image data (IHDR: size, bit depth, colour type; PLTE, tRNS) is
// image/png's byte for byte, and that the image data inflates to image/png's
// filtered rows.
func checkEncode(t *testing.T, enc *Encoder, img image.Image, lossy uint32) {
	t.Helper()
	var got, want bytes.Buffer
	if err := enc.Encode(&got, img); err != nil {
		t.Fatal(err)
	}
	std := png.Encoder{CompressionLevel: enc.CompressionLevel}
	if err := std.Encode(&want, img); err != nil {
		t.Fatal(err)
	}
	gotChunks, wantChunks := chunks(t, got.Bytes()), chunks(t, want.Bytes())
	if g, w := gotChunks[0], wantChunks[0]; g.name != "IHDR" || !bytes.Equal(g.data, w.data) {
		t.Fatalf("IHDR %x, image/png's %x", g.data, w.data)
	}
	if g, w := nonIDAT(gotChunks), nonIDAT(wantChunks); g != w {
		t.Fatalf("chunks but IDAT:\n%s\nimage/png's:\n%s", g, w)
	}
	if g, w := inflateIDAT(t, gotChunks), inflateIDAT(t, wantChunks); !bytes.Equal(g, w) {
		t.Fatalf("filtered rows differ from image/png's:\n%x\n%x", g[:min(len(g), 64)], w[:min(len(w), 64)])
	}
	dec, err := png.Decode(&got)
	if err != nil {
		t.Fatal(err)
	}
	stdDec, err := png.Decode(&want)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	if dec.Bounds() != image.Rect(0, 0, b.Dx(), b.Dy()) {
		t.Fatalf("decoded bounds %v, want %v", dec.Bounds(), b.Size())
	}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			in := img.At(x, y)
			out := dec.At(x-b.Min.X, y-b.Min.Y)
			if g, w := nrgba64(out), nrgba64(stdDec.At(x-b.Min.X, y-b.Min.Y)); g != w {
				t.Fatalf("pixel (%d,%d) decodes to %v, image/png's output to %v (input %v)", x, y, g, w, in)
			}
			if lossy == 0 {
				if g, w := nrgba64(out), nrgba64(in); g != w {
					t.Fatalf("pixel (%d,%d) decodes to %v, want %v", x, y, g, w)
				}
				continue
			}
			gr, gg, gb, ga := out.RGBA()
			wr, wg, wb, wa := in.RGBA()
			if ga != wa || diff(gr, wr) > lossy || diff(gg, wg) > lossy || diff(gb, wb) > lossy {
				t.Fatalf("pixel (%d,%d) decodes to %v, want %v within %d", x, y, out, in, lossy)
			}
		}
	}
}

func nrgba64(c color.Color) color.NRGBA64 { return color.NRGBA64Model.Convert(c).(color.NRGBA64) }

func diff(a, b uint32) uint32 { return max(a, b) - min(a, b) }

type chunk struct {
	name string
	data []byte
}

// chunks splits a PNG into its chunks, checking the signature and CRCs.
func chunks(t *testing.T, b []byte) []chunk {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("no PNG signature: %q", b[:min(len(b), 8)])
	}
	b = b[8:]
	var cs []chunk
	for len(b) > 0 {
		if len(b) < 12 {
			t.Fatalf("truncated chunk: %x", b)
		}
		n := int(binary.BigEndian.Uint32(b))
		if 12+n > len(b) {
			t.Fatalf("chunk %q of %d bytes, %d left", b[4:8], n, len(b)-12)
		}
		c := chunk{string(b[4:8]), b[8 : 8+n]}
		if crc := binary.BigEndian.Uint32(b[8+n:]); crc != crc32.ChecksumIEEE(b[4:8+n]) {
			t.Fatalf("chunk %q: bad CRC", c.name)
		}
		cs = append(cs, c)
		b = b[12+n:]
	}
	if len(cs) == 0 || cs[len(cs)-1].name != "IEND" {
		t.Fatal("no IEND at the end")
	}
	return cs
}

// inflateIDAT returns the data of the IDAT chunks, decompressed.
func inflateIDAT(t *testing.T, cs []chunk) []byte {
	t.Helper()
	var z []byte
	for _, c := range cs {
		if c.name == "IDAT" {
			z = append(z, c.data...)
		}
	}
	r, err := zlib.NewReader(bytes.NewReader(z))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// nonIDAT describes the chunks, merging runs of IDAT into one.
func nonIDAT(cs []chunk) string {
	var s string
	for i, c := range cs {
		if c.name == "IDAT" {
			if i == 0 || cs[i-1].name != "IDAT" {
				s += "IDAT...\n"
			}
			continue
		}
		s += fmt.Sprintf("%s %x\n", c.name, c.data)
	}
	return s
}

// TestLarge encodes images big enough to take several IDAT chunks and
// several writes, at every level, and checks that small ones take one write.
func TestLarge(t *testing.T) {
	for _, level := range levels {
		enc := &Encoder{CompressionLevel: level}
		t.Run(fmt.Sprint(level), func(t *testing.T) {
			checkEncode(t, enc, testimage.Pattern(300, 2), 0)
			checkEncode(t, enc, opaquePattern(300, 3), 0)
			var w countingWriter
			if err := enc.Encode(&w, testimage.Pattern(300, 2)); err != nil {
				t.Fatal(err)
			}
			// Every write but the last has at least a chunk's worth.
			if w.writes < 2 || w.writes > 1+w.n/idatSize {
				t.Errorf("%d bytes in %d writes", w.n, w.writes)
			}
			w = countingWriter{}
			if err := enc.Encode(&w, testimage.Pattern(64, 2)); err != nil {
				t.Fatal(err)
			}
			if w.writes != 1 {
				t.Errorf("small image: %d bytes in %d writes", w.n, w.writes)
			}
		})
	}
}

type countingWriter struct{ n, writes int }

func (w *countingWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	w.writes++
	return len(b), nil
}

// TestFallback: types without a fast path are encoded by image/png, with the
// same level, byte for byte; and so are its errors.
func TestFallback(t *testing.T) {
	ycc := image.NewYCbCr(image.Rect(1, 2, 20, 13), image.YCbCrSubsampleRatio420)
	rng := rand.New(rand.NewPCG(3, 4))
	fill(rng, ycc.Y, 1, 0, false)
	fill(rng, ycc.Cb, 1, 0, false)
	cmyk := image.NewCMYK(image.Rect(0, 0, 9, 4))
	fill(rng, cmyk.Pix, 1, 0, false)
	alpha := image.NewAlpha(image.Rect(0, 0, 9, 4))
	fill(rng, alpha.Pix, 1, 1, false)
	for _, level := range levels {
		enc := &Encoder{CompressionLevel: level}
		std := &png.Encoder{CompressionLevel: level}
		for _, img := range []image.Image{ycc, cmyk, alpha} {
			var got, want bytes.Buffer
			if err := enc.Encode(&got, img); err != nil {
				t.Fatal(err)
			}
			if err := std.Encode(&want, img); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Errorf("level %d, %T: not image/png's output", level, img)
			}
		}
	}
	for _, img := range []image.Image{
		image.NewNRGBA(image.Rect(0, 0, 0, 5)),
		image.NewGray(image.Rect(3, 3, 3, 3)),
		image.NewPaletted(image.Rect(0, 0, 2, 2), color.Palette{}),
		image.NewPaletted(image.Rect(0, 0, 2, 2), make(color.Palette, 257)),
	} {
		err := new(Encoder).Encode(&bytes.Buffer{}, img)
		var fe png.FormatError
		if !errors.As(err, &fe) {
			t.Errorf("%T %v: error %v, want a png.FormatError", img, img.Bounds(), err)
		}
	}
}

var errBoom = errors.New("boom")

// failWriter fails once more than n bytes were written to it.
type failWriter struct{ n int }

func (w *failWriter) Write(b []byte) (int, error) {
	if len(b) > w.n {
		return 0, errBoom
	}
	w.n -= len(b)
	return len(b), nil
}

func TestWriteError(t *testing.T) {
	imgs := []image.Image{testimage.Pattern(8, 1), testimage.Pattern(400, 1), image.NewYCbCr(image.Rect(0, 0, 8, 8), image.YCbCrSubsampleRatio444)}
	for _, level := range levels {
		enc := &Encoder{CompressionLevel: level}
		for _, img := range imgs {
			for _, n := range []int{0, 100, 70000, 200000} {
				var full countingWriter
				if err := enc.Encode(&full, img); err != nil {
					t.Fatal(err)
				}
				err := enc.Encode(&failWriter{n}, img)
				if n >= full.n {
					if err != nil {
						t.Errorf("%T %v, level %d, fails after %d of %d bytes: %v", img, img.Bounds(), level, n, full.n, err)
					}
					continue
				}
				if !errors.Is(err, errBoom) {
					t.Errorf("%T %v, level %d, failing after %d bytes: error %v, want %v", img, img.Bounds(), level, n, err, errBoom)
				}
			}
		}
	}
	// The encoder still works after errors.
	checkEncode(t, &Encoder{}, testimage.Pattern(40, 1), 0)
}

// TestConcurrent shares one Encoder among goroutines encoding different
// images (run with -race).
func TestConcurrent(t *testing.T) {
	enc := &Encoder{}
	imgs := []image.Image{testimage.Pattern(50, 1), opaquePattern(130, 2), testimage.Pattern(7, 3), image.NewGray(image.Rect(0, 0, 90, 3))}
	want := make([][]byte, len(imgs))
	for i, img := range imgs {
		want[i] = encode(t, enc, img)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				k := (g + i) % len(imgs)
				var buf bytes.Buffer
				if err := enc.Encode(&buf, imgs[k]); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf.Bytes(), want[k]) {
					errs <- fmt.Errorf("image %d: output differs from the first encoding", k)
					return
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

// TestChooseFilter checks the filter choice against image/png's way: filter
// the row five ways, and take the first least sum in its order. Rows are
// long enough for every code path (8 bytes at a time, the remainder,
// Paeth's early stop, the sums' flushes).
func TestChooseFilter(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for k := range 3000 {
		bpp := []int{1, 2, 3, 4, 6, 8}[rng.IntN(6)]
		n := bpp * (1 + rng.IntN(100))
		if k%50 == 0 {
			n = bpp * (1 + rng.IntN(2000))
		}
		cur, prev := make([]byte, n), make([]byte, n)
		// Smooth rows, noisy rows and rows of few values make every filter win sometimes.
		spread := []int{2, 8, 64, 256}[rng.IntN(4)]
		base := rng.IntN(256)
		for i := range cur {
			cur[i] = byte(base + rng.IntN(spread))
			prev[i] = byte(base + rng.IntN(spread))
		}
		switch rng.IntN(5) {
		case 0:
			copy(prev, cur)
		case 1:
			for i := range cur { // a gradient: Paeth's case
				cur[i] = byte(i/bpp + base + rng.IntN(2))
			}
		}
		want, best := -1, 0
		var wantOut []byte
		for _, ft := range []int{ftUp, ftPaeth, ftNone, ftSub, ftAverage} {
			f := specFilter(ft, cur, prev, bpp)
			sum := 0
			for _, v := range f {
				sum += int(abs(int(int8(v))))
			}
			if want < 0 || sum < best {
				want, best, wantOut = ft, sum, f
			}
		}
		out := make([]byte, n)
		if got := chooseFilter(out, cur, prev, bpp); got != want {
			t.Fatalf("bpp %d, cur %x, prev %x: filter %d, want %d", bpp, cur, prev, got, want)
		}
		if want == ftPaeth && !bytes.Equal(out, wantOut) {
			t.Fatalf("bpp %d, cur %x, prev %x: Paeth filtered to %x, want %x", bpp, cur, prev, out, wantOut)
		}
	}
}

// TestFilters checks every filter against the PNG specification.
func TestFilters(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 1000 {
		bpp := []int{1, 2, 3, 4, 6, 8}[rng.IntN(6)]
		n := 1 + rng.IntN(600)
		cur, prev := make([]byte, n), make([]byte, n)
		for i := range cur {
			cur[i], prev[i] = byte(rng.Uint32()), byte(rng.Uint32())
		}
		for ft := ftNone; ft <= ftPaeth; ft++ {
			out := make([]byte, n+1)
			out[n] = 0xaa
			filterRow(out[:n], ft, cur, prev, bpp)
			if want := specFilter(ft, cur, prev, bpp); !bytes.Equal(out[:n], want) || out[n] != 0xaa {
				t.Fatalf("filter %d, bpp %d, cur %x, prev %x: %x, want %x", ft, bpp, cur, prev, out[:n], want)
			}
			if got := unfilter(ft, out[:n], prev, bpp); !bytes.Equal(got, cur) {
				t.Fatalf("filter %d, bpp %d: %x unfilters to %x, want %x", ft, bpp, out[:n], got, cur)
			}
		}
	}
}

// TestPaeth checks both Paeth predictors, the one for a byte and the one for
// 8 bytes at a time, against the specification's, on every a and b and many
// c.
func TestPaeth(t *testing.T) {
	const bpp = 8
	cur, prev, out := make([]byte, 2*bpp), make([]byte, 2*bpp), make([]byte, 2*bpp)
	for a := range 256 {
		for b := range 256 {
			for c := 0; c < 256+bpp; c += bpp {
				for i := range bpp {
					ci := min(c+i, 255)
					if got, want := paeth(a, b, ci), specPaeth(uint8(a), uint8(b), uint8(ci)); got != want {
						t.Fatalf("paeth(%d, %d, %d) = %d, want %d", a, b, ci, got, want)
					}
					// Lane i: left a, up b, upper left ci; cur is 0 so the output is -prediction.
					cur[i], prev[bpp+i], prev[i] = uint8(a), uint8(b), uint8(ci)
				}
				paethSegment(out, cur, prev, bpp, bpp, 2*bpp)
				for i := range bpp {
					if got, want := -out[bpp+i], specPaeth(uint8(a), uint8(b), prev[i]); got != want {
						t.Fatalf("8-byte paeth(%d, %d, %d) = %d, want %d", a, b, prev[i], got, want)
					}
				}
			}
		}
	}
}

// specFilter filters cur a byte at a time, as the PNG specification says.
func specFilter(ft int, cur, prev []byte, bpp int) []byte {
	out := make([]byte, len(cur))
	for i, x := range cur {
		var a, b, c byte
		if i >= bpp {
			a, c = cur[i-bpp], prev[i-bpp]
		}
		b = prev[i]
		switch ft {
		case ftNone:
			out[i] = x
		case ftSub:
			out[i] = x - a
		case ftUp:
			out[i] = x - b
		case ftAverage:
			out[i] = x - byte((int(a)+int(b))/2)
		case ftPaeth:
			out[i] = x - specPaeth(a, b, c)
		}
	}
	return out
}

func unfilter(ft int, f, prev []byte, bpp int) []byte {
	cur := make([]byte, len(f))
	for i := range f {
		var a, b, c byte
		if i >= bpp {
			a, c = cur[i-bpp], prev[i-bpp]
		}
		b = prev[i]
		switch ft {
		case ftNone:
			cur[i] = f[i]
		case ftSub:
			cur[i] = f[i] + a
		case ftUp:
			cur[i] = f[i] + b
		case ftAverage:
			cur[i] = f[i] + byte((int(a)+int(b))/2)
		case ftPaeth:
			cur[i] = f[i] + specPaeth(a, b, c)
		}
	}
	return cur
}

func specPaeth(a, b, c byte) byte {
	p := int(a) + int(b) - int(c)
	pa, pb, pc := abs(p-int(a)), abs(p-int(b)), abs(p-int(c))
	if pa <= pb && pa <= pc {
		return a
	} else if pb <= pc {
		return b
	}
	return c
}

// TestUnpremultiply8 checks every alpha and every premultiplied value it
// allows against image/png's conversion, through the encoder.
func TestUnpremultiply8(t *testing.T) {
	m := image.NewRGBA(image.Rect(0, 0, 256, 256))
	for a := range 256 {
		for v := range 256 {
			p := min(v, a)
			copy(m.Pix[4*(256*a+v):], []byte{uint8(p), uint8(a - p), uint8(p / 2), uint8(a)})
		}
	}
	checkEncode(t, &Encoder{CompressionLevel: png.BestSpeed}, m, 0x101)
}

// TestLevels: no compression is the largest, best compression the smallest.
func TestLevels(t *testing.T) {
	img := testimage.Pattern(128, 1)
	size := func(l png.CompressionLevel) int { return len(encode(t, &Encoder{CompressionLevel: l}, img)) }
	none, speed, def, best := size(png.NoCompression), size(png.BestSpeed), size(png.DefaultCompression), size(png.BestCompression)
	if none < len(img.Pix) || none <= speed || none <= def || best > speed || best > def {
		t.Errorf("sizes: none %d, speed %d, default %d, best %d (raw %d)", none, speed, def, best, len(img.Pix))
	}
}

// FuzzEncode encodes images of every fast-path type made from the fuzzer's
// bytes and checks them as TestRoundTrip does.
func FuzzEncode(f *testing.F) {
	f.Add(uint8(0), uint8(3), uint8(7), uint8(0), []byte{1, 2, 3, 4, 250, 255, 0, 128})
	f.Add(uint8(1), uint8(1), uint8(1), uint8(1), []byte{0xff})
	f.Add(uint8(6), uint8(9), uint8(2), uint8(2), []byte{0, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(uint8(0x87), uint8(5), uint8(5), uint8(3), []byte{9, 9, 9, 0})
	f.Fuzz(func(t *testing.T, kind, w, h, level uint8, data []byte) {
		if len(data) == 0 {
			return
		}
		r := image.Rect(int(w%5), int(h%3), int(w%5)+1+int(w%70), int(h%3)+1+int(h%40))
		var (
			img   image.Image
			pix   []byte
			fix   = func() {}
			lossy uint32
		)
		switch kind % 8 {
		case 0:
			m := image.NewNRGBA(r)
			img, pix = m, m.Pix
		case 1:
			m := image.NewRGBA(r)
			img, pix, lossy = m, m.Pix, 0x101
			fix = func() { premultiply8(m.Pix) }
		case 2:
			m := image.NewGray(r)
			img, pix = m, m.Pix
		case 3:
			m := image.NewGray16(r)
			img, pix = m, m.Pix
		case 4:
			m := image.NewNRGBA64(r)
			img, pix = m, m.Pix
		case 5:
			m := image.NewRGBA64(r)
			img, pix, lossy = m, m.Pix, 1
			fix = func() { premultiply16(m.Pix) }
		default:
			n := 1 + int(data[0])
			pal := make(color.Palette, n)
			for i := range pal {
				c := data[(3*i)%len(data)]
				pal[i] = color.NRGBA{c, byte(i), byte(n), c | kind&0x80} // kind's high bit: opaque
			}
			m := image.NewPaletted(r, pal)
			img, pix = m, m.Pix
			fix = func() {
				for i, v := range m.Pix {
					m.Pix[i] = byte(int(v) % n)
				}
			}
		}
		for i := range pix {
			pix[i] = data[i%len(data)] ^ byte(i/len(data))
		}
		fix()
		checkEncode(t, &Encoder{CompressionLevel: levels[level%4]}, img, lossy)
	})
}
