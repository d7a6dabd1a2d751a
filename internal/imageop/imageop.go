// Package imageop implements imgmill's image operations: decoding (PNG, JPEG,
// GIF, WebP, BMP, TIFF), chains of operations (ParseChain; the reference one,
// the default, swaps the red and green channels), and encoding (PNG, JPEG).
package imageop

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"

	"github.com/imgmill/imgmill/internal/pngenc"
)

// ErrDecode is wrapped by Process when the input is not a decodable image, so
// callers can tell bad input (a client error) from I/O failures.
var ErrDecode = errors.New("cannot decode image")

// SwapRedGreen swaps the red and green channels of img, keeping blue and
// alpha. Where the concrete type allows it the swap is done in place and img
// itself is returned:
//
//   - *image.NRGBA, *image.RGBA, *image.NRGBA64, *image.RGBA64: the pixels are
//     swapped in place (for premultiplied types swapping R and G keeps every
//     pixel valid, since both are scaled by the same alpha);
//   - *image.Paletted: the pixels are indices, so only the palette changes;
//     img gets a swapped copy of its palette, because palettes are often shared
//     (GIF frames, sub-images, palette.Plan9) and must not be mutated;
//   - *image.Gray, *image.Gray16: R == G already, so img is returned as is.
//
// Any other type (YCbCr, CMYK, ...) is converted to a new *image.NRGBA with
// the same bounds, which is swapped and returned; img is left untouched.
// Only the pixels inside img.Bounds() are touched, so sub-images are safe.
func SwapRedGreen(img image.Image) image.Image {
	out, _ := swapRedGreen(context.Background(), img) // fails only once its context ends
	return out
}

// swapRedGreen is SwapRedGreen that stops, with an error from stopped, once ctx ends.
func swapRedGreen(ctx context.Context, img image.Image) (image.Image, error) {
	switch m := img.(type) {
	case *image.NRGBA:
		return m, swap8(ctx, m.Pix, m.Stride, m.Rect)
	case *image.RGBA:
		return m, swap8(ctx, m.Pix, m.Stride, m.Rect)
	case *image.NRGBA64:
		return m, swap16(ctx, m.Pix, m.Stride, m.Rect)
	case *image.RGBA64:
		return m, swap16(ctx, m.Pix, m.Stride, m.Rect)
	case *image.Paletted:
		m.Palette = swapPalette(m.Palette)
		return m, nil
	case *image.Gray, *image.Gray16:
		return img, nil
	case *image.YCbCr:
		// draw has a fast path for YCbCr into RGBA but only a per-pixel one
		// into NRGBA. YCbCr is always opaque, and for opaque pixels RGBA and
		// NRGBA share the same bytes, so the RGBA buffer is reused as NRGBA.
		rgba, err := ycbcrToRGBA(ctx, m)
		if err != nil {
			return nil, err
		}
		return swapRedGreen(ctx, &image.NRGBA{Pix: rgba.Pix, Stride: rgba.Stride, Rect: rgba.Rect})
	default:
		b := img.Bounds()
		out := image.NewNRGBA(b)
		for y := b.Min.Y; y < b.Max.Y; y += ycbcrBand {
			if err := stopped(ctx); err != nil {
				return nil, err
			}
			band := image.Rect(b.Min.X, y, b.Max.X, min(y+ycbcrBand, b.Max.Y))
			draw.Draw(out, band, img, band.Min, draw.Src)
		}
		return swapRedGreen(ctx, out)
	}
}

// swap8 swaps bytes 0 and 1 of every 4-byte pixel of the r.Dx()×r.Dy()
// pixels in pix. pix[0] is the pixel at r.Min (PixOffset(Min) is always 0,
// SubImage reslices Pix), rows are stride bytes apart and the bytes between
// rows belong to pixels outside r, so they are skipped. Indexing through a
// 4-byte capped sub-slice measured faster than a re-slicing byte loop and
// 32/64-bit word tricks; the swap is memory-bound either way.
func swap8(ctx context.Context, pix []byte, stride int, r image.Rectangle) error {
	if r.Empty() {
		return nil
	}
	w := 4 * r.Dx()
	for y, off := r.Min.Y, 0; y < r.Max.Y; y, off = y+1, off+stride {
		if err := stopped(ctx); err != nil {
			return err
		}
		row := pix[off : off+w : off+w]
		for j := 0; j+4 <= len(row); j += 4 {
			p := row[j : j+4 : j+4]
			p[0], p[1] = p[1], p[0]
		}
	}
	return nil
}

// swap16 is swap8 for 8-byte pixels with 2-byte (big-endian) channels: the
// R and G byte pairs trade places.
func swap16(ctx context.Context, pix []byte, stride int, r image.Rectangle) error {
	if r.Empty() {
		return nil
	}
	w := 8 * r.Dx()
	for y, off := r.Min.Y, 0; y < r.Max.Y; y, off = y+1, off+stride {
		if err := stopped(ctx); err != nil {
			return err
		}
		row := pix[off : off+w : off+w]
		for j := 0; j+8 <= len(row); j += 8 {
			p := row[j : j+8 : j+8]
			p[0], p[1], p[2], p[3] = p[2], p[3], p[0], p[1]
		}
	}
	return nil
}

// swapPalette returns a swapped copy of p, keeping each entry's concrete
// type where it is known so encoders see the same kind of colours.
func swapPalette(p color.Palette) color.Palette {
	if p == nil {
		return nil
	}
	out := make(color.Palette, len(p))
	for i, c := range p {
		switch c := c.(type) {
		case color.RGBA:
			out[i] = color.RGBA{R: c.G, G: c.R, B: c.B, A: c.A}
		case color.NRGBA:
			out[i] = color.NRGBA{R: c.G, G: c.R, B: c.B, A: c.A}
		case color.RGBA64:
			out[i] = color.RGBA64{R: c.G, G: c.R, B: c.B, A: c.A}
		case color.NRGBA64:
			out[i] = color.NRGBA64{R: c.G, G: c.R, B: c.B, A: c.A}
		default:
			// Premultiplied 16-bit values are exact for any colour, and
			// swapping premultiplied R and G is still a valid colour.
			r, g, b, a := c.RGBA()
			out[i] = color.RGBA64{R: uint16(g), G: uint16(r), B: uint16(b), A: uint16(a)}
		}
	}
	return out
}

// Processor runs the decode → operations → encode pipeline. It is safe for
// concurrent use; one Processor is meant to be shared by all requests so they
// share its PNG encoders' buffer pools. The zero value is usable too. Set the
// fields before the first call.
type Processor struct {
	// MaxPixels bounds the images Process and Apply decode and make, in pixels
	// (width × height), and with it the memory one call takes: the size is read
	// from the image's header before any pixel is decoded. 0 means
	// DefaultMaxPixels, a negative value no limit.
	MaxPixels int64
	// PNGCompression is the PNG encoder's effort; the zero value is
	// png.DefaultCompression.
	PNGCompression png.CompressionLevel
	// JPEGQuality is the quality (1..100) of JPEG output when the chain's
	// convert does not give one; 0 means DefaultJPEGQuality.
	JPEGQuality int

	pngEnc *pngEncoders // nil for the zero Processor: no reuse
}

// NewProcessor returns a Processor with its own PNG encoders and their buffer pools.
func NewProcessor() *Processor {
	e := new(pngEncoders)
	for i := range e {
		e[i].CompressionLevel = png.CompressionLevel(-i)
	}
	return &Processor{pngEnc: e}
}

// pngEncoders holds a PNG encoder, with its pools, for each png.CompressionLevel, at index -level
// (DefaultCompression 0 to BestCompression -3), so that PNGCompression may be set after
// NewProcessor.
type pngEncoders [4]pngenc.Encoder

// get returns the encoder for level: a new one, with nothing to reuse, if e is nil or level is
// not one of the four.
func (e *pngEncoders) get(level png.CompressionLevel) *pngenc.Encoder {
	if i := -int(level); e != nil && i >= 0 && i < len(e) {
		return &e[i]
	}
	return &pngenc.Encoder{CompressionLevel: level}
}

// Process decodes an image from src (any format Decode reads: PNG, JPEG, GIF
// (first frame), WebP, BMP, TIFF; a JPEG turned upright as its EXIF orientation
// says), swaps its red and green channels and writes the result to dst as PNG,
// whatever the input's format. If src is not a decodable image the error wraps
// ErrDecode; if it has more pixels than MaxPixels, ErrTooLarge, and nothing is
// decoded. A read error from src itself is returned wrapped as is (not as
// ErrDecode), as are write errors on dst. On error, dst may have received
// partial output.
func (p *Processor) Process(dst io.Writer, src io.Reader) error {
	_, err := p.apply(context.Background(), dst, src, Chain{}, "png")
	return err
}

// errReader records the first non-EOF error returned by r.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(b []byte) (int, error) {
	n, err := e.r.Read(b)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// SniffLen is the number of leading bytes Sniff needs to recognise every
// supported format (it accepts fewer, but may then fail to recognise one).
const SniffLen = 18

// Magic numbers of the formats Decode reads. Format names match those
// returned by image.Decode.
var magics = []struct {
	format string
	magic  string
}{
	{"png", "\x89PNG\r\n\x1a\n"},
	{"jpeg", "\xff\xd8\xff"}, // SOI marker followed by the next marker's 0xff
	{"gif", "GIF87a"},
	{"gif", "GIF89a"},
	{"tiff", "II*\x00"}, // little-endian
	{"tiff", "MM\x00*"}, // big-endian
}

// Sniff identifies a PNG, JPEG, GIF, WebP, BMP or TIFF from the first bytes of
// a file (pass at least SniffLen bytes when available), so uploads that are not
// images can be refused before they are stored. It only checks magic numbers:
// ok means the file claims to be that format, not that it decodes.
func Sniff(header []byte) (format string, ok bool) {
	for _, m := range magics {
		if bytes.HasPrefix(header, []byte(m.magic)) {
			return m.format, true
		}
	}
	// RIFF container, any size, of type WEBP.
	if len(header) >= 12 && string(header[:4]) == "RIFF" && string(header[8:12]) == "WEBP" {
		return "webp", true
	}
	// "BM" alone is too weak (text can start with it): the DIB header that follows the 14-byte
	// file header must have one of the sizes its versions define.
	if len(header) >= 18 && string(header[:2]) == "BM" {
		switch binary.LittleEndian.Uint32(header[14:18]) {
		case 12, 16, 40, 52, 56, 64, 108, 124:
			return "bmp", true
		}
	}
	return "", false
}
