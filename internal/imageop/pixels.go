package imageop

import (
	"context"
	"image"
	"image/color"
	"image/draw"
)

// Most operations work on straight-alpha 8-bit RGBA, the byte layout of *image.NRGBA. A rowLoader
// converts any image to that form one row at a time, so that operations which build a new image
// anyway (resize, rotate) read the decoded image directly instead of converting it whole first.
// Rows are relative: row 0 is the image's top row, and a row holds Bounds().Dx() pixels.
type rowLoader struct {
	img image.Image
	r   image.Rectangle
	pal *[256][4]byte // *image.Paletted: the palette as NRGBA bytes; indices past its end are transparent
}

func newRowLoader(img image.Image) *rowLoader {
	l := &rowLoader{img: img, r: img.Bounds()}
	if p, ok := img.(*image.Paletted); ok {
		l.pal = nrgbaPalette(p.Palette)
	}
	return l
}

// nrgbaPalette converts a palette once, so that paletted rows convert by table look-up.
func nrgbaPalette(p color.Palette) *[256][4]byte {
	var t [256][4]byte
	for i, c := range p[:min(len(p), 256)] {
		n := color.NRGBAModel.Convert(c).(color.NRGBA)
		t[i] = [4]byte{n.R, n.G, n.B, n.A}
	}
	return &t
}

// load writes row y of the image into dst, 4 bytes per pixel.
func (l *rowLoader) load(y int, dst []byte) {
	w := l.r.Dx()
	dst = dst[: 4*w : 4*w]
	switch m := l.img.(type) {
	case *image.NRGBA:
		copy(dst, m.Pix[y*m.Stride:])
	case *image.RGBA:
		unpremultiplyRow(dst, m.Pix[y*m.Stride:y*m.Stride+4*w])
	case *image.Gray:
		src := m.Pix[y*m.Stride : y*m.Stride+w]
		for i, g := range src {
			p := dst[4*i : 4*i+4 : 4*i+4]
			p[0], p[1], p[2], p[3] = g, g, g, 255
		}
	case *image.Paletted:
		src := m.Pix[y*m.Stride : y*m.Stride+w]
		for i, c := range src {
			copy(dst[4*i:4*i+4], l.pal[c][:])
		}
	case *image.YCbCr:
		drawRow(dst, l.r, y, m)
	case *image.NYCbCrA:
		// The colour is the YCbCr part's and straight (not premultiplied), so the alpha plane just
		// replaces the opaque alpha that drawing the YCbCr part leaves.
		drawRow(dst, l.r, y, &m.YCbCr)
		a := m.A[y*m.AStride : y*m.AStride+w]
		for i, v := range a {
			dst[4*i+3] = v
		}
	case *image.CMYK:
		src := m.Pix[y*m.Stride : y*m.Stride+4*w]
		for i := 0; i < len(src); i += 4 {
			p := dst[i : i+4 : i+4]
			p[0], p[1], p[2] = color.CMYKToRGB(src[i], src[i+1], src[i+2], src[i+3])
			p[3] = 255
		}
	case *image.Gray16:
		src := m.Pix[y*m.Stride : y*m.Stride+2*w]
		for i := range w {
			g := src[2*i]
			p := dst[4*i : 4*i+4 : 4*i+4]
			p[0], p[1], p[2], p[3] = g, g, g, 255
		}
	case *image.NRGBA64:
		src := m.Pix[y*m.Stride : y*m.Stride+8*w]
		for i := range w {
			s := src[8*i : 8*i+8 : 8*i+8]
			p := dst[4*i : 4*i+4 : 4*i+4]
			p[0], p[1], p[2], p[3] = s[0], s[2], s[4], s[6] // the high bytes, as color.NRGBAModel does
		}
	case *image.RGBA64:
		src := m.Pix[y*m.Stride : y*m.Stride+8*w]
		for i := range w {
			s := src[8*i : 8*i+8 : 8*i+8]
			p := dst[4*i : 4*i+4 : 4*i+4]
			if s[6] == 0xff && s[7] == 0xff { // opaque, the usual case (16-bit RGB PNG or TIFF)
				p[0], p[1], p[2], p[3] = s[0], s[2], s[4], 255
				continue
			}
			c := color.NRGBAModel.Convert(color.RGBA64{
				R: uint16(s[0])<<8 | uint16(s[1]), G: uint16(s[2])<<8 | uint16(s[3]),
				B: uint16(s[4])<<8 | uint16(s[5]), A: uint16(s[6])<<8 | uint16(s[7]),
			}).(color.NRGBA)
			p[0], p[1], p[2], p[3] = c.R, c.G, c.B, c.A
		}
	default:
		// The rarer types: exact but slow, one interface call per pixel.
		for i := range w {
			c := color.NRGBAModel.Convert(m.At(l.r.Min.X+i, l.r.Min.Y+y)).(color.NRGBA)
			p := dst[4*i : 4*i+4 : 4*i+4]
			p[0], p[1], p[2], p[3] = c.R, c.G, c.B, c.A
		}
	}
}

// drawRow converts row y of a YCbCr image with image/draw, which has a fast path from YCbCr to RGBA;
// YCbCr is opaque, and opaque RGBA and NRGBA bytes are the same.
func drawRow(dst []byte, r image.Rectangle, y int, m *image.YCbCr) {
	row := &image.RGBA{Pix: dst, Stride: len(dst), Rect: image.Rect(r.Min.X, r.Min.Y+y, r.Max.X, r.Min.Y+y+1)}
	draw.Draw(row, row.Rect, m, row.Rect.Min, draw.Src)
}

// unpremultiplyRow converts premultiplied RGBA bytes to straight ones; dst may be src.
func unpremultiplyRow(dst, src []byte) {
	for i := 0; i+4 <= len(src); i += 4 {
		s := src[i : i+4 : i+4]
		d := dst[i : i+4 : i+4]
		switch a := uint32(s[3]); a {
		case 255:
			copy(d, s)
		case 0:
			d[0], d[1], d[2], d[3] = 0, 0, 0, 0
		default:
			d[0] = uint8(min((uint32(s[0])*255+a/2)/a, 255))
			d[1] = uint8(min((uint32(s[1])*255+a/2)/a, 255))
			d[2] = uint8(min((uint32(s[2])*255+a/2)/a, 255))
			d[3] = uint8(a)
		}
	}
}

// toNRGBA returns img as an *image.NRGBA with the same bounds: img itself when it is one, its own
// pixels reinterpreted after unpremultiplying them in place for an *image.RGBA (img must not be
// used afterwards), and a converted copy otherwise. It fails only once ctx ends.
func toNRGBA(ctx context.Context, img image.Image) (*image.NRGBA, error) {
	switch m := img.(type) {
	case *image.NRGBA:
		return m, nil
	case *image.RGBA:
		w := 4 * m.Rect.Dx()
		for y := range m.Rect.Dy() {
			if err := stopped(ctx); err != nil {
				return nil, err
			}
			row := m.Pix[y*m.Stride : y*m.Stride+w]
			unpremultiplyRow(row, row)
		}
		return &image.NRGBA{Pix: m.Pix, Stride: m.Stride, Rect: m.Rect}, nil
	case *image.YCbCr:
		out, err := ycbcrToRGBA(ctx, m)
		if err != nil {
			return nil, err
		}
		return &image.NRGBA{Pix: out.Pix, Stride: out.Stride, Rect: out.Rect}, nil
	}
	b := img.Bounds()
	out := image.NewNRGBA(b)
	l := newRowLoader(img)
	for y := range b.Dy() {
		if err := stopped(ctx); err != nil {
			return nil, err
		}
		l.load(y, out.Pix[y*out.Stride:])
	}
	return out, nil
}

// ycbcrBand is how many rows a conversion with image/draw converts per call: few calls (each has a fixed
// cost), yet a check of the context every few milliseconds at the widest.
const ycbcrBand = 64

// ycbcrToRGBA converts m with image/draw's fast path from YCbCr to RGBA, a band of rows at a time.
func ycbcrToRGBA(ctx context.Context, m *image.YCbCr) (*image.RGBA, error) {
	out := image.NewRGBA(m.Rect)
	for y := m.Rect.Min.Y; y < m.Rect.Max.Y; y += ycbcrBand {
		if err := stopped(ctx); err != nil {
			return nil, err
		}
		band := image.Rect(m.Rect.Min.X, y, m.Rect.Max.X, min(y+ycbcrBand, m.Rect.Max.Y))
		draw.Draw(out, band, m, band.Min, draw.Src)
	}
	return out, nil
}

// rows calls f with each row of m's pixels, 4 bytes per pixel, in order, until ctx ends.
func rows(ctx context.Context, m *image.NRGBA, f func(row []byte)) error {
	w := 4 * m.Rect.Dx()
	for y := range m.Rect.Dy() {
		if err := stopped(ctx); err != nil {
			return err
		}
		f(m.Pix[y*m.Stride : y*m.Stride+w : y*m.Stride+w])
	}
	return nil
}
