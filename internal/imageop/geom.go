package imageop

import (
	"context"
	"encoding/binary"
	"image"
)

// Orientations, as EXIF numbers them: how the stored pixels must be turned to show the image
// upright. The rotate and flip operations are the same transforms.
const (
	orientNormal     = 1
	orientFlipH      = 2 // mirror left and right
	orientRotate180  = 3
	orientFlipV      = 4 // mirror top and bottom
	orientTranspose  = 5 // mirror along the top-left to bottom-right diagonal
	orientRotate90   = 6 // clockwise
	orientTransverse = 7 // mirror along the other diagonal
	orientRotate270  = 8 // clockwise, so 90 counter-clockwise
)

// pixBuffer is an image's pixel bytes: bpp bytes per pixel, rows stride bytes apart, pix[0] the
// pixel at Min. Types without one (YCbCr) are converted before operations that need it.
type pixBuffer struct {
	pix         []byte
	stride, bpp int
	// like returns a new image of the same type (and palette) with bounds r.
	like func(r image.Rectangle) (image.Image, pixBuffer)
}

func bufferOf(img image.Image) (pixBuffer, bool) {
	switch m := img.(type) {
	case *image.NRGBA:
		return pixBuffer{m.Pix, m.Stride, 4, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewNRGBA(r)
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 4}
		}}, true
	case *image.RGBA:
		return pixBuffer{m.Pix, m.Stride, 4, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewRGBA(r)
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 4}
		}}, true
	case *image.CMYK:
		return pixBuffer{m.Pix, m.Stride, 4, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewCMYK(r)
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 4}
		}}, true
	case *image.Gray:
		return pixBuffer{m.Pix, m.Stride, 1, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewGray(r)
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 1}
		}}, true
	case *image.Paletted:
		return pixBuffer{m.Pix, m.Stride, 1, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewPaletted(r, m.Palette) // shared: palettes are replaced, never changed in place
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 1}
		}}, true
	case *image.Gray16:
		return pixBuffer{m.Pix, m.Stride, 2, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewGray16(r)
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 2}
		}}, true
	case *image.NRGBA64:
		return pixBuffer{m.Pix, m.Stride, 8, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewNRGBA64(r)
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 8}
		}}, true
	case *image.RGBA64:
		return pixBuffer{m.Pix, m.Stride, 8, func(r image.Rectangle) (image.Image, pixBuffer) {
			n := image.NewRGBA64(r)
			return n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 8}
		}}, true
	}
	return pixBuffer{}, false
}

// orient returns img turned by orientation o (orientNormal..orientRotate270). Mirrors and the half
// turn work in place; the others make a new image with width and height swapped, of the same type
// where it has a pixel buffer and NRGBA otherwise. It fails only once ctx ends.
func orient(ctx context.Context, img image.Image, o int) (image.Image, error) {
	if o <= orientNormal || o > orientRotate270 {
		return img, nil
	}
	b := img.Bounds()
	if b.Empty() {
		return img, nil
	}
	buf, ok := bufferOf(img)
	if o <= orientFlipV {
		if !ok {
			m, err := toNRGBA(ctx, img)
			if err != nil {
				return nil, err
			}
			img, buf = m, pixBuffer{pix: m.Pix, stride: m.Stride, bpp: 4}
		}
		var err error
		switch o {
		case orientFlipH:
			err = flipH(ctx, buf, b.Dx(), b.Dy())
		case orientFlipV:
			err = flipV(ctx, buf, b.Dx(), b.Dy())
		case orientRotate180:
			err = rotate180(ctx, buf, b.Dx(), b.Dy())
		}
		return img, err
	}
	r := image.Rect(0, 0, b.Dy(), b.Dx())
	var out image.Image
	var dst pixBuffer
	var load func(k, y int) []byte
	if ok {
		out, dst = buf.like(r)
		w := b.Dx() * buf.bpp
		load = func(_, y int) []byte { return buf.pix[y*buf.stride : y*buf.stride+w] }
	} else {
		n := image.NewNRGBA(r)
		out, dst = n, pixBuffer{pix: n.Pix, stride: n.Stride, bpp: 4}
		l := newRowLoader(img)
		var bufs [transposeBlock][]byte
		load = func(k, y int) []byte {
			if bufs[k] == nil {
				bufs[k] = make([]byte, 4*b.Dx())
			}
			l.load(y, bufs[k])
			return bufs[k]
		}
	}
	return out, transpose(ctx, dst, b.Dx(), b.Dy(), o, load)
}

// transposeBlock is how many source rows transpose takes at a time.
const transposeBlock = 16

// transpose writes the w×h source, read a row at a time through load (the k-th row of a block, so
// a loader can keep one buffer per k), into dst (h×w) turned by o, one of the four orientations
// that swap width and height. Source row sy becomes destination column dx, so rows are taken in
// blocks: the block's pixels for one source column land side by side in one destination row,
// instead of each in a cache line of its own.
func transpose(ctx context.Context, dst pixBuffer, w, h, o int, load func(k, y int) []byte) error {
	bpp := dst.bpp
	var src [transposeBlock][]byte
	for y0 := 0; y0 < h; y0 += transposeBlock {
		if err := stopped(ctx); err != nil {
			return err
		}
		n := min(transposeBlock, h-y0)
		for k := range n {
			src[k] = load(k, y0+k)
		}
		for sx := range w {
			dy := sx
			if o == orientTransverse || o == orientRotate270 {
				dy = w - 1 - sx
			}
			row := dst.pix[dy*dst.stride : dy*dst.stride+h*bpp]
			for k := range n {
				dx := y0 + k
				if o == orientRotate90 || o == orientTransverse {
					dx = h - 1 - dx
				}
				switch bpp {
				case 4:
					binary.LittleEndian.PutUint32(row[4*dx:], binary.LittleEndian.Uint32(src[k][4*sx:]))
				case 1:
					row[dx] = src[k][sx]
				default:
					copy(row[dx*bpp:dx*bpp+bpp], src[k][sx*bpp:])
				}
			}
		}
	}
	return nil
}

func flipV(ctx context.Context, b pixBuffer, w, h int) error {
	n := w * b.bpp
	for y := range h / 2 {
		if err := stopped(ctx); err != nil {
			return err
		}
		top := b.pix[y*b.stride : y*b.stride+n]
		bot := b.pix[(h-1-y)*b.stride : (h-1-y)*b.stride+n]
		for i := range top {
			top[i], bot[i] = bot[i], top[i]
		}
	}
	return nil
}

func flipH(ctx context.Context, b pixBuffer, w, h int) error {
	for y := range h {
		if err := stopped(ctx); err != nil {
			return err
		}
		row := b.pix[y*b.stride : y*b.stride+w*b.bpp]
		reverseRow(row, row, b.bpp)
	}
	return nil
}

func rotate180(ctx context.Context, b pixBuffer, w, h int) error {
	n := w * b.bpp
	for y := range h / 2 {
		if err := stopped(ctx); err != nil {
			return err
		}
		top := b.pix[y*b.stride : y*b.stride+n]
		bot := b.pix[(h-1-y)*b.stride : (h-1-y)*b.stride+n]
		reverseRow(top, bot, b.bpp)
	}
	if h%2 == 1 {
		mid := b.pix[(h/2)*b.stride : (h/2)*b.stride+n]
		reverseRow(mid, mid, b.bpp)
	}
	return nil
}

// reverseRow swaps pixel i of a with pixel n-1-i of b, for rows a and b of n pixels of bpp bytes;
// with a == b it reverses the row.
func reverseRow(a, b []byte, bpp int) {
	n := len(a) / bpp
	same := &a[0] == &b[0]
	for i := range n {
		j := n - 1 - i
		if same && j <= i {
			break
		}
		switch bpp {
		case 4:
			p, q := binary.LittleEndian.Uint32(a[4*i:]), binary.LittleEndian.Uint32(b[4*j:])
			binary.LittleEndian.PutUint32(a[4*i:], q)
			binary.LittleEndian.PutUint32(b[4*j:], p)
		case 1:
			a[i], b[j] = b[j], a[i]
		default:
			pa, pb := a[i*bpp:i*bpp+bpp], b[j*bpp:j*bpp+bpp]
			for k := range bpp {
				pa[k], pb[k] = pb[k], pa[k]
			}
		}
	}
}

// cropTo returns the part of img inside r, in coordinates relative to img's top-left corner, which
// must lie within img. The standard types share img's pixels; others are converted to NRGBA first.
func cropTo(ctx context.Context, img image.Image, r image.Rectangle) (image.Image, error) {
	b := img.Bounds()
	r = r.Add(b.Min)
	if r == b {
		return img, nil
	}
	if s, ok := img.(interface {
		SubImage(image.Rectangle) image.Image
	}); ok {
		return s.SubImage(r), nil
	}
	m, err := toNRGBA(ctx, img)
	if err != nil {
		return nil, err
	}
	return m.SubImage(r), nil
}
