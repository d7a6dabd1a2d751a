package imageop

import (
	"context"
	"fmt"
	"image"
	"math"

	"golang.org/x/image/draw"
)

// Blur, sharpen, resize and thumbnail are all separable filters: each output pixel is a weighted sum
// of a range of source columns, then of a range of source rows. One engine runs them all, in integer
// arithmetic on premultiplied colour (so transparent pixels' hidden colours do not bleed into their
// neighbours), a row at a time: the horizontal pass of a source row is kept only while output rows
// still need it, so the memory besides source and destination is a few rows, not an image.

// wbits is the fixed-point precision of filter weights: one output's weights sum to 1<<wbits.
const wbits = 14

// taps is a 1-D filter from n source coordinates to len(lo) output coordinates: output i is the sum
// of w[off[i]+k] × source lo[i]+k. For every filter here lo and lo+count are non-decreasing in i.
type taps struct {
	lo  []int32
	off []int32 // len(lo)+1 entries
	w   []int32
	// kernel, for a Gaussian: the weights of every output at least len(kernel)/2 from either end,
	// which then reads sources i-len(kernel)/2 .. i+len(kernel)/2. The horizontal pass runs those
	// outputs a kernel tap at a time across the row, which is much faster than pixel by pixel.
	kernel []int32
}

func (t *taps) len() int              { return len(t.lo) }
func (t *taps) count(i int) int       { return int(t.off[i+1] - t.off[i]) }
func (t *taps) hi(i int) int          { return int(t.lo[i]) + t.count(i) - 1 }
func (t *taps) weights(i int) []int32 { return t.w[t.off[i]:t.off[i+1]] }

// maxWeight bounds the sum of one output's absolute weights, relative to their sum, so that the
// int32 accumulators cannot overflow: 65025 × 1.4 × 2¹⁴ × 1.4 < 2³¹. Catmull-Rom's negative lobes
// reach about 1.2; Gaussians and tents are all positive.
const maxWeight = 1.4

// newTaps quantises a filter whose output i takes weights(i) (any positive total) from source
// coordinates lo, lo+1, ...
func newTaps(n int, weights func(i int) (lo int, w []float64)) taps {
	t := taps{lo: make([]int32, n), off: make([]int32, n+1)}
	for i := range n {
		lo, ws := weights(i)
		total := 0.0
		for _, w := range ws {
			total += w
		}
		sum, abs, big := int32(0), int32(0), 0
		start := len(t.w)
		for k, w := range ws {
			q := int32(math.Round(w / total * (1 << wbits)))
			t.w = append(t.w, q)
			sum += q
			abs += max(q, -q)
			if q > t.w[start+big] {
				big = k
			}
		}
		// Rounding may leave the sum off by a little; the largest weight absorbs it, so that a flat
		// image stays exactly flat.
		t.w[start+big] += 1<<wbits - sum
		if float64(abs) > maxWeight*(1<<wbits) {
			panic(fmt.Sprintf("imageop: filter weights sum to %d in absolute value", abs)) // a bug in a kernel
		}
		t.lo[i] = int32(lo)
		t.off[i+1] = int32(len(t.w))
	}
	return t
}

// resampleTaps maps sn source coordinates onto dn with kernel k, stretched when shrinking so that
// every source pixel counts (as golang.org/x/image/draw's kernel scalers do, with pixel centres at
// half-integers).
func resampleTaps(dn, sn int, k *draw.Kernel) taps {
	scale := float64(sn) / float64(dn)
	half, argScale := k.Support, 1.0
	if scale > 1 {
		half *= scale
		argScale = 1 / scale
	}
	var buf []float64
	return newTaps(dn, func(i int) (int, []float64) {
		center := (float64(i)+0.5)*scale - 0.5
		first := -1
		buf = buf[:0]
		for c := max(0, int(math.Floor(center-half))); c < min(sn, int(math.Ceil(center+half))+1); c++ {
			t := math.Abs(center-float64(c)) * argScale
			if t >= k.Support {
				if first >= 0 {
					break
				}
				continue
			}
			if first < 0 {
				first = c
			}
			buf = append(buf, k.At(t))
		}
		if first < 0 || len(buf) == 0 { // cannot happen for a support of at least 1/2; nearest pixel
			return min(max(int(math.Round(center)), 0), sn-1), []float64{1}
		}
		return first, buf
	})
}

// gaussRadius is how far a Gaussian of standard deviation sigma is sampled, 3 sigma: the weights
// beyond it sum to under 0.3%.
func gaussRadius(sigma float64) int { return max(1, int(math.Ceil(3*sigma))) }

// gaussTaps is a Gaussian blur over n coordinates. At the edges the weights that would fall outside
// are left out and the rest renormalised, so edges keep their brightness.
func gaussTaps(n int, sigma float64) taps {
	r := gaussRadius(sigma)
	k := make([]float64, 2*r+1)
	for d := -r; d <= r; d++ {
		k[d+r] = math.Exp(-float64(d*d) / (2 * sigma * sigma))
	}
	t := newTaps(n, func(i int) (int, []float64) {
		lo, hi := max(0, i-r), min(n-1, i+r)
		return lo, k[lo-(i-r) : hi-(i-r)+1]
	})
	if n > 2*r {
		t.kernel = t.weights(r)
	}
	return t
}

// separable filters src into dst: h maps src's columns onto dst's, v its rows. dst may be src itself
// (when src is an *image.NRGBA) if every output row's sources include that row, as a blur's do: a
// source row is always read before the output row of the same index is written.
//
// finish, if not nil, writes each output row: it gets the filtered row (straight RGBA) and the
// destination row, which still holds the source's row when filtering in place.
//
// It checks ctx once per output row (pulling) or source row (pushing), and returns an error from stopped once it
// has ended, leaving dst partly written.
func separable(ctx context.Context, src image.Image, dst *image.NRGBA, h, v *taps, finish func(out, dstRow []byte)) error {
	sw, sh := src.Bounds().Dx(), src.Bounds().Dy()
	dw, dh := h.len(), v.len()
	if dw == 0 || dh == 0 || sw == 0 || sh == 0 {
		return nil
	}
	ld := newRowLoader(src)
	srow := make([]byte, 4*sw)
	pm := make([]int32, 4*sw)
	var out []byte
	if finish != nil {
		out = make([]byte, 4*dw)
	}

	// [x0, x1) are the outputs a Gaussian computes a tap at a time: each tap's sources, for the
	// whole range, are pm shifted.
	x0, x1 := dw, dw
	var shifted [][]int32
	if k := h.kernel; k != nil {
		x0, x1 = len(k)/2, dw-len(k)/2
		for j := range k {
			shifted = append(shifted, pm[4*j:4*j+4*(x1-x0)])
		}
	}
	// hpass filters source row y horizontally into row, premultiplied, on the scale of 255×255.
	hpass := func(y int, row []int32) {
		ld.load(y, srow)
		for i := 0; i+4 <= len(srow); i += 4 {
			s, p := srow[i:i+4:i+4], pm[i:i+4:i+4]
			a := int32(s[3])
			p[0], p[1], p[2], p[3] = int32(s[0])*a, int32(s[1])*a, int32(s[2])*a, a*255
		}
		const half = 1 << (wbits - 1)
		if k := h.kernel; k != nil {
			in := row[4*x0 : 4*x1]
			clear(in)
			macRows(in, shifted, k)
			for i, v := range in {
				in[i] = (v + half) >> wbits
			}
		}
		for x := 0; x < dw; x++ {
			if x == x0 {
				x = x1 - 1 // the interior is done
				continue
			}
			ws := h.weights(x)
			s := pm[4*h.lo[x] : 4*(int(h.lo[x])+len(ws))]
			var r, g, b, a int32
			for k, w := range ws {
				p := s[4*k : 4*k+4 : 4*k+4]
				r += w * p[0]
				g += w * p[1]
				b += w * p[2]
				a += w * p[3]
			}
			o := row[4*x : 4*x+4 : 4*x+4]
			o[0], o[1], o[2], o[3] = (r+half)>>wbits, (g+half)>>wbits, (b+half)>>wbits, (a+half)>>wbits
		}
	}
	emit := func(y int, acc []int32) {
		row := dst.Pix[y*dst.Stride : y*dst.Stride+4*dw]
		o := row
		if finish != nil {
			o = out
		}
		unpremultiplyAcc(o, acc)
		if finish != nil {
			finish(out, row)
		}
	}

	// Either keep the horizontal passes of the source rows that the current output row needs
	// (pull), or keep the sums of the output rows that the current source row contributes to
	// (push), whichever is fewer rows: pull when enlarging, push when shrinking a lot.
	pull := 0
	for y := range dh {
		pull = max(pull, v.count(y))
	}
	push := maxOverlap(v, sh)
	if pull <= push {
		ring := make([][]int32, pull)
		for i := range ring {
			ring[i] = make([]int32, 4*dw)
		}
		acc := make([]int32, 4*dw)
		srcs := make([][]int32, 0, pull)
		next := 0
		for y := range dh {
			if err := stopped(ctx); err != nil {
				return err
			}
			lo := int(v.lo[y])
			for ; next <= v.hi(y); next++ {
				if next >= lo {
					hpass(next, ring[next%pull])
				}
			}
			clear(acc)
			srcs = srcs[:0]
			for k := range v.count(y) {
				srcs = append(srcs, ring[(lo+k)%pull])
			}
			macRows(acc, srcs, v.weights(y))
			emit(y, acc)
		}
		return nil
	}
	ring := make([][]int32, push)
	for i := range ring {
		ring[i] = make([]int32, 4*dw)
	}
	hrow := make([]int32, 4*dw)
	first, next := 0, 0 // output rows [first, next) are being summed
	for r := range sh {
		if err := stopped(ctx); err != nil {
			return err
		}
		for next < dh && int(v.lo[next]) <= r {
			clear(ring[next%push])
			next++
		}
		if first == next {
			continue // no output row needs this source row
		}
		hpass(r, hrow)
		for y := first; y < next; y++ {
			if k := r - int(v.lo[y]); k < v.count(y) {
				addScaled(ring[y%push], hrow, v.w[int(v.off[y])+k])
			}
		}
		for first < next && v.hi(first) == r {
			emit(first, ring[first%push])
			first++
		}
	}
	return nil
}

// maxOverlap is the largest number of output rows of v that one of the n source rows contributes to.
func maxOverlap(v *taps, n int) int {
	d := make([]int32, n+1)
	for y := range v.len() {
		d[v.lo[y]]++
		d[v.hi(y)+1]--
	}
	best, cur := int32(0), int32(0)
	for _, x := range d {
		cur += x
		best = max(best, cur)
	}
	return int(best)
}

// macRows adds Σ ws[k]·rows[k] to acc, element by element. Taking the rows four at a time loads
// and stores acc a quarter as often as one at a time.
func macRows(acc []int32, rows [][]int32, ws []int32) {
	k := 0
	for ; k+4 <= len(ws); k += 4 {
		w0, w1, w2, w3 := ws[k], ws[k+1], ws[k+2], ws[k+3]
		r0, r1, r2, r3 := rows[k][:len(acc)], rows[k+1][:len(acc)], rows[k+2][:len(acc)], rows[k+3][:len(acc)]
		for i := range acc {
			acc[i] += w0*r0[i] + w1*r1[i] + w2*r2[i] + w3*r3[i]
		}
	}
	for ; k+2 <= len(ws); k += 2 {
		w0, w1 := ws[k], ws[k+1]
		r0, r1 := rows[k][:len(acc)], rows[k+1][:len(acc)]
		for i := range acc {
			acc[i] += w0*r0[i] + w1*r1[i]
		}
	}
	if k < len(ws) {
		addScaled(acc, rows[k], ws[k])
	}
}

func addScaled(acc, row []int32, w int32) {
	row = row[:len(acc)]
	for i, v := range row {
		acc[i] += w * v
	}
}

// unpremultiplyAcc converts sums of premultiplied values (on the scale of 255×255×2^wbits) to
// straight 8-bit RGBA, clamping the overshoot of kernels with negative lobes.
func unpremultiplyAcc(dst []byte, acc []int32) {
	const one = 255 * 255 << wbits // an opaque pixel's alpha sum
	const unit = 255 << wbits      // one step of 8-bit alpha or of opaque colour
	for i := 0; i+4 <= len(acc); i += 4 {
		s, d := acc[i:i+4:i+4], dst[i:i+4:i+4]
		a := s[3]
		if a == one { // opaque: no division by alpha needed
			d[0] = clampUnit(s[0])
			d[1] = clampUnit(s[1])
			d[2] = clampUnit(s[2])
			d[3] = 255
			continue
		}
		a8 := (a + unit/2) / unit
		if a8 <= 0 {
			d[0], d[1], d[2], d[3] = 0, 0, 0, 0
			continue
		}
		d[3] = uint8(min(a8, 255))
		// One division rather than three; the explicit conversions keep the compiler from fusing
		// the multiply and add (as it may on arm64), so every platform rounds the same.
		inv := 255 / float64(a)
		d[0] = uint8(min(max(float64(float64(s[0])*inv)+0.5, 0), 255))
		d[1] = uint8(min(max(float64(float64(s[1])*inv)+0.5, 0), 255))
		d[2] = uint8(min(max(float64(float64(s[2])*inv)+0.5, 0), 255))
	}
}

// clampUnit is an opaque colour sum as an 8-bit value.
func clampUnit(v int32) uint8 {
	const unit = 255 << wbits
	if v <= 0 {
		return 0
	}
	return uint8(min((v+unit/2)/unit, 255))
}
