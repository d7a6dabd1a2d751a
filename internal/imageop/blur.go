package imageop

import (
	"context"
	"image"
	"math"

	"golang.org/x/image/draw"
)

// maxExactSigma is the largest blur computed with an exact Gaussian kernel (of 2×18+1 taps). Beyond
// it the cost would grow with sigma, so the image is shrunk, blurred by what remains and enlarged
// back, at a cost independent of sigma and within a few levels of the exact result.
const maxExactSigma = 6

// blur applies a Gaussian blur of standard deviation sigma pixels, in place where img is NRGBA.
func blur(ctx context.Context, img image.Image, sigma float64) (*image.NRGBA, error) {
	m, err := toNRGBA(ctx, img)
	if err != nil {
		return nil, err
	}
	return m, blurInto(ctx, m, sigma, nil)
}

// sharpen applies an unsharp mask: each colour moves away from its blurred value by amount times
// the difference. Alpha is kept.
func sharpen(ctx context.Context, img image.Image, sigma, amount float64) (*image.NRGBA, error) {
	m, err := toNRGBA(ctx, img)
	if err != nil {
		return nil, err
	}
	amt := int32(math.Round(amount * 256))
	return m, blurInto(ctx, m, sigma, func(blurred, row []byte) {
		for i := 0; i+4 <= len(row); i += 4 {
			o, b := row[i:i+3:i+3], blurred[i:i+3:i+3]
			for c := range 3 {
				v := int32(o[c])
				o[c] = uint8(min(max(v+(amt*(v-int32(b[c]))+128)>>8, 0), 255))
			}
		}
	})
}

// blurInto blurs m in place; finish, if not nil, writes each blurred row instead (see separable).
func blurInto(ctx context.Context, m *image.NRGBA, sigma float64, finish func(out, dstRow []byte)) error {
	w, h := m.Rect.Dx(), m.Rect.Dy()
	if w == 0 || h == 0 {
		return nil
	}
	// Beyond maxExactSigma each axis is shrunk by f (to about sigma/3, but keeping at least 16
	// pixels: an axis that would keep fewer is short enough to blur exactly). Shrinking with a tent
	// filter and enlarging back with linear interpolation each add a variance of f²/6 pixels², so
	// the small image is blurred by what is left of sigma². The small image is about 1/f² of m.
	sw, sh := w, h
	if sigma > maxExactSigma {
		sw, sh = shrunk(w, sigma), shrunk(h, sigma)
	}
	if sw == w && sh == h {
		ht, vt := gaussTaps(w, sigma), gaussTaps(h, sigma)
		return separable(ctx, m, m, &ht, &vt, finish)
	}
	small := image.NewNRGBA(image.Rect(0, 0, sw, sh))
	dx, dy := resampleTaps(sw, w, draw.BiLinear), resampleTaps(sh, h, draw.BiLinear)
	if err := separable(ctx, m, small, &dx, &dy, nil); err != nil {
		return err
	}
	rest := func(n, sn int) float64 {
		if n == sn {
			return sigma // not shrunk: nothing added
		}
		f := float64(n) / float64(sn)
		return math.Sqrt(max(sigma*sigma/(f*f)-1.0/3, 0.25))
	}
	gx, gy := gaussTaps(sw, rest(w, sw)), gaussTaps(sh, rest(h, sh))
	if err := separable(ctx, small, small, &gx, &gy, nil); err != nil {
		return err
	}
	ux, uy := resampleTaps(w, sw, draw.BiLinear), resampleTaps(h, sh, draw.BiLinear)
	return separable(ctx, small, m, &ux, &uy, finish)
}

// shrunk is the length an axis of n pixels is shrunk to for a blur of sigma: n itself when the
// factor would be under 2.
func shrunk(n int, sigma float64) int {
	f := min(sigma/3, float64(n)/16)
	if f < 2 {
		return n
	}
	return max(1, int(math.Round(float64(n)/f)))
}

// resample returns the part r of img (relative to its top-left corner) scaled to dw×dh with kernel
// k, as a new NRGBA image. The caller has checked dw×dh against the pixel limit.
func resample(ctx context.Context, img image.Image, r image.Rectangle, dw, dh int, k *draw.Kernel) (*image.NRGBA, error) {
	src, err := cropTo(ctx, img, r)
	if err != nil {
		return nil, err
	}
	dst := image.NewNRGBA(image.Rect(0, 0, dw, dh))
	ht, vt := resampleTaps(dw, r.Dx(), k), resampleTaps(dh, r.Dy(), k)
	return dst, separable(ctx, src, dst, &ht, &vt, nil)
}
