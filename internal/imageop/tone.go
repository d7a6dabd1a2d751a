package imageop

import (
	"context"
	"image"
	"image/color"
	"math"
)

// Tone operations change each pixel's colour on its own, keeping alpha. They work in place on the
// types where that is cheap (NRGBA, Gray, and a paletted image's palette) and convert the others to
// NRGBA once.

// lut maps an 8-bit channel value to another; tone operations apply one to R, G and B alike.
type lut [256]uint8

func makeLUT(f func(v float64) float64) *lut {
	var t lut
	for i := range t {
		t[i] = uint8(min(max(math.Round(f(float64(i))), 0), 255))
	}
	return &t
}

func invertLUT() *lut { return makeLUT(func(v float64) float64 { return 255 - v }) }

// brightnessLUT adds pct percent of full scale to every channel.
func brightnessLUT(pct float64) *lut {
	d := pct / 100 * 255
	return makeLUT(func(v float64) float64 { return v + d })
}

// contrastLUT scales the distance from mid-grey by 1+pct/100: -100 makes the image flat grey, +100
// doubles the contrast.
func contrastLUT(pct float64) *lut {
	f := 1 + pct/100
	return makeLUT(func(v float64) float64 { return (v-127.5)*f + 127.5 })
}

// gammaLUT applies v^(1/g) on the 0..1 scale: g > 1 lightens the mid-tones, g < 1 darkens them.
func gammaLUT(g float64) *lut {
	return makeLUT(func(v float64) float64 { return 255 * math.Pow(v/255, 1/g) })
}

// applyLUT maps R, G and B of every pixel of img through t.
func applyLUT(ctx context.Context, img image.Image, t *lut) (image.Image, error) {
	switch m := img.(type) {
	case *image.Gray:
		w := m.Rect.Dx()
		for y := range m.Rect.Dy() {
			if err := stopped(ctx); err != nil {
				return nil, err
			}
			row := m.Pix[y*m.Stride : y*m.Stride+w]
			for i, v := range row {
				row[i] = t[v]
			}
		}
		return m, nil
	case *image.Paletted:
		return mapPalette(m, func(p *[4]byte) { p[0], p[1], p[2] = t[p[0]], t[p[1]], t[p[2]] }), nil
	}
	m, err := toNRGBA(ctx, img)
	if err != nil {
		return nil, err
	}
	return m, rows(ctx, m, func(row []byte) {
		for i := 0; i+4 <= len(row); i += 4 {
			p := row[i : i+3 : i+3]
			p[0], p[1], p[2] = t[p[0]], t[p[1]], t[p[2]]
		}
	})
}

// luma is the Rec. 601 luma of 8-bit R, G and B, with color.GrayModel's weights.
func luma(r, g, b uint8) uint8 {
	return uint8((19595*uint32(r) + 38470*uint32(g) + 7471*uint32(b) + 1<<15) >> 16)
}

// grayscale replaces each pixel's colour by its luma, keeping alpha.
func grayscale(ctx context.Context, img image.Image) (image.Image, error) {
	switch m := img.(type) {
	case *image.Gray, *image.Gray16:
		return img, nil
	case *image.YCbCr:
		// A JPEG's Y plane is already the luma (with the same Rec. 601 weights), and its pixels
		// start at the image's Min like a Gray's: keep it and drop the chroma, without a copy.
		return &image.Gray{Pix: m.Y, Stride: m.YStride, Rect: m.Rect}, nil
	case *image.Paletted:
		return mapPalette(m, func(p *[4]byte) {
			y := luma(p[0], p[1], p[2])
			p[0], p[1], p[2] = y, y, y
		}), nil
	}
	m, err := toNRGBA(ctx, img)
	if err != nil {
		return nil, err
	}
	return m, rows(ctx, m, func(row []byte) {
		for i := 0; i+4 <= len(row); i += 4 {
			p := row[i : i+3 : i+3]
			y := luma(p[0], p[1], p[2])
			p[0], p[1], p[2] = y, y, y
		}
	})
}

// mapPalette gives m a mapped copy of its palette, as straight NRGBA colours: the pixels are
// indices and stay as they are, and the palette may be shared (see SwapRedGreen), so it is not
// changed in place.
func mapPalette(m *image.Paletted, f func(p *[4]byte)) *image.Paletted {
	out := make(color.Palette, len(m.Palette))
	for i, c := range m.Palette {
		n := color.NRGBAModel.Convert(c).(color.NRGBA)
		p := [4]byte{n.R, n.G, n.B, n.A}
		f(&p)
		out[i] = color.NRGBA{R: p[0], G: p[1], B: p[2], A: p[3]}
	}
	m.Palette = out
	return m
}
