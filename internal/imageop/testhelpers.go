package imageop

// Helpers for tests in this and other packages and for `imgmill bench`; they
// live in a non-test file so the benchmark command can use them too.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
)

// EncodePNG encodes img as PNG with image/png at its default compression, as a client's own encoder
// would (the inputs of tests and benchmarks).
func EncodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// CheckSwapped reports whether result is orig with red and green swapped,
// comparing pixel by pixel in non-premultiplied 8-bit terms (both sides
// converted with color.NRGBAModel): result.R == orig.G, result.G == orig.R,
// B and A equal, and bounds equal. It returns an error naming the first
// mismatching pixel, or nil.
//
// Where both pixels are fully transparent the colour is only compared if both
// images store straight (NRGBA) colour: a premultiplied image cannot hold
// colour under alpha 0, so there is nothing to compare. NRGBA PNGs, such as
// an encoded testimage.Pattern, round trip exactly, colour under alpha 0 included.
func CheckSwapped(orig, result image.Image) error {
	if orig == nil || result == nil {
		return errors.New("imageop: CheckSwapped: nil image")
	}
	ob, rb := orig.Bounds(), result.Bounds()
	if ob != rb {
		return fmt.Errorf("imageop: bounds differ: orig %v, result %v", ob, rb)
	}
	// Fast path for the common case, which would otherwise allocate per pixel
	// through At.
	if o, ok := orig.(*image.NRGBA); ok {
		if r, ok := result.(*image.NRGBA); ok {
			return checkNRGBA(o, r)
		}
	}
	straight := orig.ColorModel() == color.NRGBAModel && result.ColorModel() == color.NRGBAModel
	for y := ob.Min.Y; y < ob.Max.Y; y++ {
		for x := ob.Min.X; x < ob.Max.X; x++ {
			o := color.NRGBAModel.Convert(orig.At(x, y)).(color.NRGBA)
			r := color.NRGBAModel.Convert(result.At(x, y)).(color.NRGBA)
			if o.A == 0 && r.A == 0 && !straight {
				continue
			}
			if err := comparePixel(x, y, o, r); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkNRGBA(orig, result *image.NRGBA) error {
	b := orig.Rect
	for y := b.Min.Y; y < b.Max.Y; y++ {
		oi, ri := orig.PixOffset(b.Min.X, y), result.PixOffset(b.Min.X, y)
		for x := b.Min.X; x < b.Max.X; x, oi, ri = x+1, oi+4, ri+4 {
			op, rp := orig.Pix[oi:oi+4:oi+4], result.Pix[ri:ri+4:ri+4]
			if rp[0] != op[1] || rp[1] != op[0] || rp[2] != op[2] || rp[3] != op[3] {
				return comparePixel(x, y,
					color.NRGBA{R: op[0], G: op[1], B: op[2], A: op[3]},
					color.NRGBA{R: rp[0], G: rp[1], B: rp[2], A: rp[3]})
			}
		}
	}
	return nil
}

func comparePixel(x, y int, o, r color.NRGBA) error {
	want := color.NRGBA{R: o.G, G: o.R, B: o.B, A: o.A}
	if r != want {
		return fmt.Errorf("imageop: pixel (%d,%d) not swapped: got %v, want %v (orig %v)", x, y, r, want, o)
	}
	return nil
}

// PNGHeaderLen is the length of a PNG's signature and IHDR chunk.
const PNGHeaderLen = 33

// PNGHeader returns the first 33 bytes of an 8-bit RGBA, non-interlaced PNG of width×height pixels: the
// signature and the IHDR chunk, with its CRC. Whatever follows, ReadHeader reads the image's size from
// it, so a few bytes can claim to be an image of any size (up to 2³¹-1 pixels a side).
func PNGHeader(width, height int) []byte {
	b := make([]byte, 0, PNGHeaderLen)
	b = append(b, "\x89PNG\r\n\x1a\n"...)
	b = binary.BigEndian.AppendUint32(b, 13) // IHDR data length
	chunk := len(b)
	b = append(b, "IHDR"...)
	b = binary.BigEndian.AppendUint32(b, uint32(width))
	b = binary.BigEndian.AppendUint32(b, uint32(height))
	b = append(b, 8, 6, 0, 0, 0) // bit depth 8, colour type RGBA, deflate, adaptive filtering, no interlace
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[chunk:]))
}

// PaddedPNG returns size bytes (at least 33) that start with PNGHeader(width, height) and go on with
// deterministic filler: an upload that passes every header check at exactly the size wanted, but does
// not decode.
func PaddedPNG(width, height, size int) []byte {
	b := PNGHeader(width, height)
	rng := rand.New(rand.NewPCG(uint64(size), 0x706e67)) // "png"
	for len(b) < size {
		b = append(b, byte(rng.Uint32()))
	}
	return b[:max(size, PNGHeaderLen)]
}

// InsertJPEGMetadata returns a copy of the JPEG jpg with APP1 segments (the Exif marker) holding n
// bytes of filler in all inserted right after its start-of-image marker, so the frame header that
// says the image's size comes after at least n more bytes. A segment holds at most 65533 bytes, so
// large n makes several.
func InsertJPEGMetadata(jpg []byte, n int) []byte {
	out := append([]byte{}, jpg[:2]...) // SOI
	for n > 0 {
		k := min(n, 65533)
		out = append(out, 0xff, 0xe1)
		out = binary.BigEndian.AppendUint16(out, uint16(k+2))
		for i := range k {
			out = append(out, byte(i%251))
		}
		n -= k
	}
	return append(out, jpg[2:]...)
}
