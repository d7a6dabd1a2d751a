package imageop

// Float reference implementations the integer filters are checked against.

import (
	"image"
	"math"

	"golang.org/x/image/draw"
)

// premul returns img's pixels premultiplied, 8-bit, as the RGBA type stores them.
func premul(img image.Image) *image.RGBA {
	b := img.Bounds()
	out := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(out, out.Rect, img, b.Min, draw.Src)
	return out
}

// diffStats compares two images of the same size channel by channel.
func diffStats(a, b *image.RGBA) (maxd int, mean float64) {
	sum := 0
	for i := range a.Pix {
		d := int(a.Pix[i]) - int(b.Pix[i])
		d = max(d, -d)
		maxd = max(maxd, d)
		sum += d
	}
	return maxd, float64(sum) / float64(len(a.Pix))
}

// refGauss is a float64 Gaussian blur of m on premultiplied colour, with the same edge
// renormalisation as gaussTaps, separable, returned premultiplied.
func refGauss(m *image.NRGBA, sigma float64) *image.RGBA {
	w, h := m.Rect.Dx(), m.Rect.Dy()
	r := int(math.Ceil(3 * sigma))
	p := make([][4]float64, w*h)
	for y := range h {
		for x := range w {
			c := m.NRGBAAt(m.Rect.Min.X+x, m.Rect.Min.Y+y)
			a := float64(c.A) / 255
			p[y*w+x] = [4]float64{float64(c.R) * a, float64(c.G) * a, float64(c.B) * a, float64(c.A)}
		}
	}
	pass := func(src [][4]float64, n, m int, at func(i, j int) int) [][4]float64 {
		out := make([][4]float64, len(src))
		for j := range m {
			for i := range n {
				var acc [4]float64
				tot := 0.0
				for d := -r; d <= r; d++ {
					k := i + d
					if k < 0 || k >= n {
						continue
					}
					wt := math.Exp(-float64(d*d) / (2 * sigma * sigma))
					tot += wt
					s := src[at(k, j)]
					for c := range 4 {
						acc[c] += wt * s[c]
					}
				}
				for c := range 4 {
					out[at(i, j)][c] = acc[c] / tot
				}
			}
		}
		return out
	}
	p = pass(p, w, h, func(i, j int) int { return j*w + i })
	p = pass(p, h, w, func(i, j int) int { return i*w + j })
	out := image.NewRGBA(image.Rect(0, 0, w, h))
	for i, v := range p {
		for c := range 4 {
			out.Pix[4*i+c] = uint8(min(max(math.Round(v[c]), 0), 255))
		}
	}
	return out
}
