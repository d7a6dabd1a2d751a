package imageop

import (
	"bytes"
	"context"
	"encoding/binary"
	"image"
	"image/color"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

// Fixtures: small images in every input format, generated here deterministically and committed
// under testdata/in (go test -run TestGolden -update rewrites them and the expected outputs).

// fixturePattern is the 32×24 input of the golden tests: testimage.Pattern's rows 4..28, so it has every
// kind of alpha (opaque, a ramp, mid values, and blocks fully transparent), R ≠ G almost
// everywhere, and it is not square, so a rotation or flip gone wrong shows.
func fixturePattern() *image.NRGBA {
	src := testimage.Pattern(32, 8)
	m := image.NewNRGBA(image.Rect(0, 0, 32, 24))
	draw.Draw(m, m.Rect, src, image.Pt(0, 4), draw.Src)
	return m
}

// opaquePattern is fixturePattern flattened onto white, for the formats without alpha.
func opaquePattern() *image.NRGBA {
	m := fixturePattern()
	must(m, rows(context.Background(), m, func(row []byte) {
		for i := 0; i+4 <= len(row); i += 4 {
			flatten(row[i : i+4])
		}
	}))
	return m
}

// uprightPattern is an opaque 24×16 image of large flat blocks with a marker in one corner, for the
// orientation fixtures: blocks survive JPEG nearly intact, and every turn or mirror of it differs.
func uprightPattern() *image.NRGBA {
	m := image.NewNRGBA(image.Rect(0, 0, 24, 16))
	for y := range 16 {
		for x := range 24 {
			c := color.NRGBA{R: uint8(40 + 200*(x/8)/2), G: uint8(60 + 160*(y/8)), B: 90, A: 255}
			if x < 8 && y < 8 {
				c = color.NRGBA{R: 250, G: 250, B: 20, A: 255} // the top-left marker
			}
			m.SetNRGBA(x, y, c)
		}
	}
	return m
}

// inverseOrient returns the stored image whose EXIF orientation o shows upright as m.
func inverseOrient(m *image.NRGBA, o int) *image.NRGBA {
	inv := map[int]int{1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[o]
	c := image.NewNRGBA(m.Rect)
	copy(c.Pix, m.Pix)
	return must(toNRGBA(context.Background(), must(orient(context.Background(), c, inv))))
}

func mustJPEG(t testing.TB, m image.Image, quality int) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, m, &jpeg.Options{Quality: quality}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// withExif returns jpg with an APP1 Exif segment after SOI whose IFD0 holds the orientation tag
// (after another tag, so the search is tested), in the given byte order.
func withExif(jpg []byte, orientation int, bigEndian bool) []byte {
	var bo binary.AppendByteOrder = binary.LittleEndian
	tiffHead := []byte("II*\x00")
	if bigEndian {
		bo, tiffHead = binary.BigEndian, []byte("MM\x00*")
	}
	t := append([]byte{}, tiffHead...)
	t = bo.AppendUint32(t, 8) // IFD0 right after the header
	t = bo.AppendUint16(t, 2) // two entries
	// ImageDescription-like ASCII entry of another tag, count 4, value inline.
	t = bo.AppendUint16(t, 0x010e)
	t = bo.AppendUint16(t, 2)
	t = bo.AppendUint32(t, 4)
	t = append(t, 'a', 'b', 'c', 0)
	// Orientation: SHORT, count 1, value in the first two bytes of the field.
	t = bo.AppendUint16(t, 0x0112)
	t = bo.AppendUint16(t, 3)
	t = bo.AppendUint32(t, 1)
	t = bo.AppendUint16(t, uint16(orientation))
	t = append(t, 0, 0)
	t = bo.AppendUint32(t, 0) // no next IFD
	payload := append([]byte("Exif\x00\x00"), t...)
	out := append([]byte{}, jpg[:2]...)
	out = append(out, 0xff, 0xe1)
	out = binary.BigEndian.AppendUint16(out, uint16(len(payload)+2))
	out = append(out, payload...)
	return append(out, jpg[2:]...)
}

// encodeWebPLossless writes m as a lossless WebP (VP8L) in the simplest legal way: no transforms,
// no colour cache, no back-references, and every channel coded with a fixed 8-bit prefix code. The
// files are large for WebP but small for 32×24 pixels, and Go has no WebP encoder.
func encodeWebPLossless(m *image.NRGBA) []byte {
	var bw bitWriter
	w, h := m.Rect.Dx(), m.Rect.Dy()
	bw.bits(uint32(w-1), 14)
	bw.bits(uint32(h-1), 14)
	bw.bits(1, 1) // alpha is used
	bw.bits(0, 3) // version
	bw.bits(0, 1) // no transform
	bw.bits(0, 1) // no colour cache
	bw.bits(0, 1) // no meta prefix codes
	// Prefix codes: green (256 literals + 24 length prefixes), red, blue, alpha, distance.
	for _, size := range []int{280, 256, 256, 256} {
		// A code-length code in which only lengths 0 and 8 occur, each with a 1-bit code:
		// kCodeLengthCodeOrder is 17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8, ..., so 12 entries
		// reach length 8.
		bw.bits(0, 1) // normal code
		bw.bits(8, 4) // 4+8 code length code lengths
		for _, l := range []int{17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8} {
			if l == 0 || l == 8 {
				bw.bits(1, 3)
			} else {
				bw.bits(0, 3)
			}
		}
		bw.bits(0, 1) // code lengths for the whole alphabet
		for s := range size {
			// Canonical codes: length 0 is "0", length 8 is "1".
			if s < 256 {
				bw.bits(1, 1)
			} else {
				bw.bits(0, 1)
			}
		}
	}
	bw.bits(1, 1) // distance: simple code
	bw.bits(0, 1) // one symbol
	bw.bits(0, 1) // of 1 bit
	bw.bits(0, 1) // symbol 0
	for y := range h {
		for x := range w {
			c := m.NRGBAAt(x, y)
			for _, v := range []uint8{c.G, c.R, c.B, c.A} {
				bw.code(v) // canonical 8-bit codes are the values themselves, sent MSB first
			}
		}
	}
	data := append([]byte{0x2f}, bw.flush()...)
	if len(data)%2 == 1 {
		data = append(data, 0)
	}
	out := []byte("RIFF")
	out = binary.LittleEndian.AppendUint32(out, uint32(4+8+len(data)))
	out = append(out, "WEBPVP8L"...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(data))) // padding byte included: harmless
	return append(out, data...)
}

// bitWriter packs bits least significant first, as VP8L reads them.
type bitWriter struct {
	buf  []byte
	acc  uint64
	nacc uint
}

func (b *bitWriter) bits(v uint32, n uint) {
	b.acc |= uint64(v) << b.nacc
	b.nacc += n
	for b.nacc >= 8 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc >>= 8
		b.nacc -= 8
	}
}

func (b *bitWriter) code(v uint8) {
	for i := 7; i >= 0; i-- {
		b.bits(uint32(v>>i)&1, 1)
	}
}

func (b *bitWriter) flush() []byte {
	if b.nacc > 0 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc, b.nacc = 0, 0
	}
	return b.buf
}

// inputFixtures encodes fixturePattern in every input format.
func inputFixtures(t testing.TB) map[string][]byte {
	t.Helper()
	m := fixturePattern()
	enc := func(f func(*bytes.Buffer) error) []byte {
		var b bytes.Buffer
		if err := f(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	return map[string][]byte{
		"pattern.png":  mustEncode(t, m),
		"pattern.jpg":  mustJPEG(t, opaquePattern(), 90),
		"pattern.gif":  enc(func(b *bytes.Buffer) error { return gif.Encode(b, m, nil) }),
		"pattern.webp": encodeWebPLossless(m),
		"pattern.bmp":  enc(func(b *bytes.Buffer) error { return bmp.Encode(b, opaquePattern()) }),
		"pattern.tiff": enc(func(b *bytes.Buffer) error {
			return tiff.Encode(b, m, &tiff.Options{Compression: tiff.Deflate})
		}),
	}
}

// must returns v, and panics with err if there is one: for calls that fail only once a context
// ends, made with one that never does.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
