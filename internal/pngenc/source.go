package pngenc

import (
	"encoding/binary"
	"image"
	"image/color"
)

// PNG colour types.
const (
	ctGray           = 0
	ctTrueColor      = 2
	ctPaletted       = 3
	ctTrueColorAlpha = 6
)

// source reads an image's rows as PNG scanlines, in the colour type and bit
// depth image/png would choose for it.
type source struct {
	w, h      int
	colorType byte
	depth     byte             // bits per sample
	bpp       int              // bytes per pixel, for the filters (paletted images go unfiltered)
	rowLen    int              // bytes in a scanline, without its filter type
	pal       [256]color.NRGBA // PLTE and tRNS, for paletted images: npal entries
	npal      int

	pix    []byte // the image's Pix
	stride int
	conv   int // how rows of pix become scanlines: one of the conv constants
}

// How a source's rows of Pix become scanlines.
const (
	convNone       = iota // the same bytes
	convRGB               // 8-bit RGBA to RGB
	convUnpremul8         // 8-bit premultiplied RGBA to straight
	convRGB16             // 16-bit RGBA to RGB
	convUnpremul16        // 16-bit premultiplied RGBA to straight
	convPack              // 8-bit palette indices to depth bits each
)

// row returns row y (0 at the top) as a scanline: a slice of Pix where its
// bytes are the scanline's, else buf (rowLen bytes) filled in.
func (s *source) row(y int, buf []byte) []byte {
	off := y * s.stride
	switch s.conv {
	case convRGB:
		rgbRow(buf, s.pix[off:off+4*s.w])
	case convUnpremul8:
		unpremultiply8(buf, s.pix[off:off+4*s.w])
	case convRGB16:
		rgb16Row(buf, s.pix[off:off+8*s.w])
	case convUnpremul16:
		unpremultiply16(buf, s.pix[off:off+8*s.w])
	case convPack:
		packRow(buf, s.pix[off:off+s.w], uint(s.depth))
	default:
		return s.pix[off : off+s.rowLen : off+s.rowLen]
	}
	return buf[:s.rowLen]
}

// newSource returns the source for img, or false if img is not one of the
// types with a fast path, or is one image/png refuses to encode.
func newSource(img image.Image) (source, bool) {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w <= 0 || h <= 0 || int64(w) >= 1<<32 || int64(h) >= 1<<32 {
		return source{}, false // image/png returns the error
	}
	s := source{w: w, h: h, depth: 8}
	switch m := img.(type) {
	case *image.NRGBA:
		s.rgba8(m.Pix, m.Stride, true)
	case *image.RGBA:
		s.rgba8(m.Pix, m.Stride, false)
	case *image.NRGBA64:
		s.rgba16(m.Pix, m.Stride, true)
	case *image.RGBA64:
		s.rgba16(m.Pix, m.Stride, false)
	case *image.Gray:
		s.colorType, s.bpp, s.rowLen = ctGray, 1, w
		s.pix, s.stride = m.Pix, m.Stride
	case *image.Gray16:
		s.colorType, s.depth, s.bpp, s.rowLen = ctGray, 16, 2, 2*w
		s.pix, s.stride = m.Pix, m.Stride
	case *image.Paletted:
		// image/png fails on these (or panics, for a nil palette).
		if len(m.Palette) == 0 || len(m.Palette) > 256 {
			return source{}, false
		}
		s.paletted(m)
	default:
		return source{}, false
	}
	return s, true
}

// rgba8 sets s up for 8-bit RGBA pixels, straight or premultiplied: RGB if
// all are opaque, else straight RGBA.
func (s *source) rgba8(pix []byte, stride int, straight bool) {
	s.pix, s.stride = pix, stride
	switch {
	case opaque(pix, stride, 4*s.w, s.h, 4):
		s.colorType, s.bpp, s.conv = ctTrueColor, 3, convRGB
	case straight:
		s.colorType, s.bpp = ctTrueColorAlpha, 4
	default:
		s.colorType, s.bpp, s.conv = ctTrueColorAlpha, 4, convUnpremul8
	}
	s.rowLen = s.bpp * s.w
}

// rgba16 is rgba8 for 16-bit (big-endian) samples.
func (s *source) rgba16(pix []byte, stride int, straight bool) {
	s.pix, s.stride, s.depth = pix, stride, 16
	switch {
	case opaque(pix, stride, 8*s.w, s.h, 8):
		s.colorType, s.bpp, s.conv = ctTrueColor, 6, convRGB16
	case straight:
		s.colorType, s.bpp = ctTrueColorAlpha, 8
	default:
		s.colorType, s.bpp, s.conv = ctTrueColorAlpha, 8, convUnpremul16
	}
	s.rowLen = s.bpp * s.w
}

// paletted sets s up for m, with as few bits per pixel as its palette needs,
// as image/png does.
func (s *source) paletted(m *image.Paletted) {
	s.colorType, s.pix, s.stride = ctPaletted, m.Pix, m.Stride
	s.npal = len(m.Palette)
	for i, c := range m.Palette {
		s.pal[i] = color.NRGBAModel.Convert(c).(color.NRGBA)
	}
	switch n := len(m.Palette); {
	case n <= 2:
		s.depth = 1
	case n <= 4:
		s.depth = 2
	case n <= 16:
		s.depth = 4
	}
	if s.depth == 8 {
		s.bpp, s.rowLen = 1, s.w
		return
	}
	s.conv, s.rowLen = convPack, (int(s.depth)*s.w+7)/8
}

// opaque reports whether every pixel of the h rows of n bytes of pix, stride
// apart, has its alpha at the maximum: the last byte of each size-byte pixel
// for 8-bit samples (size 4), the last two for 16-bit ones (size 8). Eight
// bytes are checked at a time.
func opaque(pix []byte, stride, n, h, size int) bool {
	mask := uint64(0xff000000_ff000000)
	if size == 8 {
		mask = 0xffff0000_00000000
	}
	for y := range h {
		row := pix[y*stride : y*stride+n]
		for len(row) >= 8 {
			if binary.LittleEndian.Uint64(row)&mask != mask {
				return false
			}
			row = row[8:]
		}
		if len(row) == 4 && row[3] != 0xff {
			return false
		}
	}
	return true
}

// rgbRow copies the RGB of the RGBA pixels in src to dst.
func rgbRow(dst, src []byte) {
	for len(src) >= 4 && len(dst) >= 3 {
		d, s := dst[:3:3], src[:4:4]
		d[0], d[1], d[2] = s[0], s[1], s[2]
		dst, src = dst[3:], src[4:]
	}
}

// rgb16Row copies the RGB of the 16-bit RGBA pixels in src to dst.
func rgb16Row(dst, src []byte) {
	for len(src) >= 8 && len(dst) >= 6 {
		copy(dst[:6], src[:6])
		dst, src = dst[6:], src[8:]
	}
}

// unpremultiply8 converts the premultiplied RGBA pixels in src to straight
// ones in dst, rounding exactly as image/png does.
func unpremultiply8(dst, src []byte) {
	for len(src) >= 4 && len(dst) >= 4 {
		d, s := (*[4]byte)(dst), (*[4]byte)(src)
		switch a := s[3]; a {
		case 0:
			*d = [4]byte{}
		case 0xff:
			*d = *s
		default:
			// As image/png: 0x101 widens to 16 bits, 0xffff and the division
			// by alpha undo the premultiplication.
			const m = 0x101 * 0xffff
			a := uint32(a) * 0x101
			d[0] = uint8((uint32(s[0]) * m / a) >> 8)
			d[1] = uint8((uint32(s[1]) * m / a) >> 8)
			d[2] = uint8((uint32(s[2]) * m / a) >> 8)
			d[3] = s[3]
		}
		dst, src = dst[4:], src[4:]
	}
}

// unpremultiply16 is unpremultiply8 for 16-bit samples, rounding as
// color.NRGBA64Model, which image/png uses.
func unpremultiply16(dst, src []byte) {
	for len(src) >= 8 && len(dst) >= 8 {
		d, s := (*[8]byte)(dst), (*[8]byte)(src)
		switch a := uint32(s[6])<<8 | uint32(s[7]); a {
		case 0:
			*d = [8]byte{}
		case 0xffff:
			*d = *s
		default:
			for c := 0; c < 6; c += 2 {
				v := (uint32(s[c])<<8 | uint32(s[c+1])) * 0xffff / a
				d[c], d[c+1] = uint8(v>>8), uint8(v)
			}
			d[6], d[7] = s[6], s[7]
		}
		dst, src = dst[8:], src[8:]
	}
}

// packRow packs the palette indices in src, d bits each, into dst, high bits
// first. As in image/png, an index too large for d bits is not masked.
func packRow(dst, src []byte, d uint) {
	perByte := 8 / int(d)
	i := 0
	for len(src) >= perByte {
		var a byte
		for _, p := range src[:perByte] {
			a = a<<d | p
		}
		dst[i] = a
		i++
		src = src[perByte:]
	}
	if len(src) > 0 {
		var a byte
		for _, p := range src {
			a = a<<d | p
		}
		dst[i] = a << (d * uint(perByte-len(src)))
	}
}
