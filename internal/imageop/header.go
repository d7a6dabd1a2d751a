package imageop

import (
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"strconv"
	"strings"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"
)

// MaxHeaderLen is how far into an image ReadHeader looks for its size. PNG's IHDR ends at byte 33,
// GIF's logical screen at byte 13, BMP's and WebP's sizes come within the first 30 bytes, but a
// JPEG's frame header (SOF) may follow metadata segments (Exif, ICC profiles, thumbnails) of up to
// 64 KiB each, and a TIFF's image directory may be anywhere (writers often put it after the pixels).
const MaxHeaderLen = 256 << 10

// DefaultMaxPixels is the largest image, in pixels (width × height), Processor decodes by default:
// 50 megapixels, 200 MB as 8-bit RGBA and 400 MB at 16 bits per channel.
const DefaultMaxPixels = 50_000_000

// ErrTooLarge is wrapped by the errors of CheckSize and Process for an image over a size limit.
var ErrTooLarge = errors.New("image too large")

// Header is what an image's first bytes say about it.
type Header struct {
	Format        string // "png", "jpeg", "gif", "webp", "bmp" or "tiff", as Sniff and image.Decode name them
	Width, Height int
	// Depth is the bits per channel, 8 or 16: 16 where the format says so (PNG's IHDR bit depth,
	// TIFF's BitsPerSample), 8 otherwise. A 16-bit image decodes to 8 bytes a pixel.
	Depth int
	// Orientation is a JPEG's EXIF orientation when it is not upright (2-8: Decode turns the
	// image, so Width and Height are as stored, swapped from 5 on), 0 otherwise.
	Orientation int
}

// Pixels is the image's pixel count, width × height.
func (h Header) Pixels() int64 { return int64(h.Width) * int64(h.Height) }

// ShrinkAdvice ends a refusal of an image over the pixel limits: what to do about it.
const ShrinkAdvice = "scale it down and upload it again"

// CheckSize returns an error wrapping ErrTooLarge when the image is wider or taller than maxSide or
// has more than maxPixels pixels; a limit <= 0 is not checked.
func (h Header) CheckSize(maxSide int, maxPixels int64) error {
	if maxSide > 0 && (h.Width > maxSide || h.Height > maxSide) {
		return &imageError{kind: ErrTooLarge, msg: fmt.Sprintf("image is %dx%d pixels, over the limit of %d pixels per side: "+ShrinkAdvice,
			h.Width, h.Height, maxSide)}
	}
	if maxPixels > 0 && h.Pixels() > maxPixels {
		return &imageError{kind: ErrTooLarge, msg: fmt.Sprintf("image is %dx%d pixels, over the limit of %d pixels%s in all: "+ShrinkAdvice,
			h.Width, h.Height, maxPixels, megapixels(maxPixels))}
	}
	return nil
}

// megapixels spells n pixels in megapixels for a message, " (50 MP)" or " (2.5 MP)"; nothing below
// 0.1 MP.
func megapixels(n int64) string {
	if n < 100_000 {
		return ""
	}
	return " (" + strconv.FormatFloat(math.Round(float64(n)/1e4)/100, 'f', -1, 64) + " MP)"
}

// imageError is an error about the image itself (not about reading it) or about an operation that
// wraps kind: ErrDecode, ErrTooLarge or ErrBadOp. Its text stands alone, without kind's.
type imageError struct {
	kind error
	msg  string
	// tooLong: the header's size is past the limit ReadHeader was given (Decode reads a TIFF whole
	// then).
	tooLong bool
}

func (e *imageError) Error() string { return e.msg }
func (e *imageError) Unwrap() error { return e.kind }

// The words of the errors about an image that cannot be read: the reason first, then what to do.
// NotImageMessage is the whole text of ReadHeader's error for bytes that are not an image of a format
// Decode reads at all. Every other such error says which format it is about, after UnreadablePrefix,
// and ends with ResaveAdvice.
const (
	NotImageMessage  = "this file is not an image imgmill reads (PNG, JPEG, GIF, WebP, BMP, TIFF): choose an image file"
	UnreadablePrefix = "cannot read this "
	ResaveAdvice     = "save it as PNG or JPEG and upload it again"
)

// unreadable is the error for an image of format name (as formatName spells it) that cannot be read,
// for the reason why.
func unreadable(name, why string, args ...any) *imageError {
	return &imageError{kind: ErrDecode, msg: UnreadablePrefix + name + ": " + fmt.Sprintf(why, args...) + ": " + ResaveAdvice}
}

// ReadHeader reads from r the first bytes of a PNG, JPEG, GIF, WebP, BMP or TIFF, as many as it
// takes to learn the image's format and size (at most limit; <= 0 means MaxHeaderLen), without
// decoding any pixels. It returns the header and every byte it read: the image is prefix followed
// by the rest of r (io.MultiReader(bytes.NewReader(prefix), r)), so nothing is lost for storing or
// decoding it.
//
// An image whose first bytes do not say its size returns an error wrapping ErrDecode: not an image
// (the text is NotImageMessage), a header that ends early (truncated), a malformed one, or no size
// within limit bytes (a JPEG after that much metadata, a TIFF whose directory lies further in). A
// read error of r is returned as it is, not as ErrDecode. The prefix is returned with errors too;
// it is empty only when r held nothing.
func ReadHeader(r io.Reader, limit int) (h Header, prefix []byte, err error) {
	if limit <= 0 {
		limit = MaxHeaderLen
	}
	const first = 512 // every PNG and GIF header, and most JPEG ones without Exif
	buf := make([]byte, 0, min(first, limit))
	eof := false
	for {
		if !eof && len(buf) < limit {
			if len(buf) == cap(buf) {
				grown := make([]byte, len(buf), min(2*cap(buf), limit))
				copy(grown, buf)
				buf = grown
			}
			n, rerr := io.ReadFull(r, buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			switch {
			// ReadFull's own end-of-input values, compared as such: a source whose read failed with
			// an error that wraps io.ErrUnexpectedEOF (a stream cut off mid-way) failed, it did not end.
			case rerr == io.EOF || rerr == io.ErrUnexpectedEOF:
				eof = true
			case rerr != nil:
				return Header{}, buf, rerr
			}
		}
		if len(buf) == 0 {
			return Header{}, buf, &imageError{kind: ErrDecode, msg: "empty image"}
		}
		format, ok := Sniff(buf)
		if !ok {
			if len(buf) < SniffLen && !eof {
				continue
			}
			return Header{}, buf, &imageError{kind: ErrDecode, msg: NotImageMessage}
		}
		name := formatName(format)
		if format == "tiff" && len(buf) >= 8 {
			// Bytes 4-8 say where the directory holding the size starts: do not read up to the
			// limit for one that lies past it.
			if at := tiffDirectory(buf); at+2 > int64(limit) {
				e := unreadable(name, "its image directory starts at byte %d, past the first %d bytes", at, limit)
				e.tooLong = true
				return Header{}, buf, e
			}
		}
		pr := &prefixReader{b: buf}
		cfg, derr := decodeConfig(format, pr)
		switch {
		case derr == nil && (cfg.Width <= 0 || cfg.Height <= 0):
			return Header{}, buf, unreadable(name, "it has no pixels (%dx%d)", cfg.Width, cfg.Height)
		case derr == nil:
			h := Header{Format: format, Width: cfg.Width, Height: cfg.Height, Depth: depth(cfg.ColorModel)}
			if format == "jpeg" {
				if o := jpegOrientation(buf); o != orientNormal {
					h.Orientation = o
				}
			}
			return h, buf, nil
		case !pr.hitEnd:
			return Header{}, buf, unreadable(name, "its header is malformed (%v)", derr)
		case eof:
			return Header{}, buf, unreadable(name, "the file is cut short: it ends after %d bytes, before the image size (%v)", len(buf), derr)
		case len(buf) >= limit:
			e := unreadable(name, "no image size within its first %d bytes (too much metadata before it)", limit)
			e.tooLong = true
			return Header{}, buf, e
		}
		// The decoder wants more than has been read so far: read on and try again.
	}
}

// depth is the bits per channel of an image whose decoder reports colour model m: 16 for the
// 16-bit models the PNG and TIFF decoders report, 8 otherwise.
func depth(m color.Model) int {
	switch m {
	case color.RGBA64Model, color.NRGBA64Model, color.Gray16Model, color.Alpha16Model:
		return 16
	}
	return 8
}

func decodeConfig(format string, r io.Reader) (image.Config, error) {
	switch format {
	case "png":
		return png.DecodeConfig(r)
	case "jpeg":
		return jpeg.DecodeConfig(r)
	case "gif":
		return gif.DecodeConfig(r)
	case "webp":
		return webp.DecodeConfig(r)
	case "bmp":
		return bmp.DecodeConfig(r)
	case "tiff":
		return tiff.DecodeConfig(r)
	}
	return image.Config{}, fmt.Errorf("unknown format %q", format)
}

// formatName is how messages spell a format.
func formatName(format string) string {
	if format == "webp" {
		return "WebP"
	}
	return strings.ToUpper(format)
}

// tiffDirectory is the offset of a TIFF's first image directory, from its 8-byte header.
func tiffDirectory(h []byte) int64 {
	if string(h[:2]) == "MM" {
		return int64(binary.BigEndian.Uint32(h[4:8]))
	}
	return int64(binary.LittleEndian.Uint32(h[4:8]))
}

// prefixReader reads b and records whether a reader asked for more than b holds. It is an
// io.ByteReader so that the GIF decoder reads it directly, without a read-ahead buffer that would ask
// for bytes it does not need, and an io.ReaderAt so that the TIFF decoder does not copy it into a
// buffer of its own (growing by 10 MB at a time towards whatever offset the file names).
type prefixReader struct {
	b      []byte
	off    int
	hitEnd bool
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if p.off >= len(p.b) {
		p.hitEnd = true
		return 0, io.EOF
	}
	n := copy(b, p.b[p.off:])
	p.off += n
	return n, nil
}

func (p *prefixReader) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 || off >= int64(len(p.b)) {
		p.hitEnd = true
		return 0, io.EOF
	}
	n := copy(b, p.b[off:])
	if n < len(b) {
		p.hitEnd = true
		return n, io.EOF
	}
	return n, nil
}

func (p *prefixReader) ReadByte() (byte, error) {
	if p.off >= len(p.b) {
		p.hitEnd = true
		return 0, io.EOF
	}
	p.off++
	return p.b[p.off-1], nil
}
