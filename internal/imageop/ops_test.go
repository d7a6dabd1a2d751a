package imageop

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
	"golang.org/x/image/draw"
)

// Each operation is checked on every image type of imageCases (in imageop_test.go), whole and as a
// sub-image with a non-zero Min and a stride wider than its rows, against a naive per-pixel
// reference computed on the input converted to straight 8-bit RGBA.

// eachImage calls f with a fresh random image of every type, whole and as a sub-image.
func eachImage(t *testing.T, f func(t *testing.T, img image.Image)) {
	for _, tc := range imageCases {
		for _, sub := range []bool{false, true} {
			name := tc.name
			if sub {
				name += "/sub"
			}
			t.Run(name, func(t *testing.T) {
				img := tc.make(rand.New(rand.NewPCG(7, uint64(len(name)))))
				if sub {
					img = img.(subImager).SubImage(subRect)
				}
				f(t, img)
			})
		}
	}
}

// isStraight reports whether img stores straight (not premultiplied) colour, so that colour under
// alpha 0 survives and is compared.
func isStraight(img image.Image) bool {
	switch img.(type) {
	case *image.RGBA, *image.RGBA64, *image.Alpha, *image.Alpha16:
		return false
	}
	return true
}

func TestRowLoader(t *testing.T) {
	eachImage(t, func(t *testing.T, img image.Image) {
		got := cloneNRGBA(img)
		b := img.Bounds()
		// The converters' own rounding may differ from color.NRGBAModel's by one step.
		tol := 1
		switch img.(type) {
		case *image.NRGBA, *image.Gray, *image.Paletted, *image.Gray16, *image.NRGBA64:
			tol = 0
		}
		for y := range b.Dy() {
			for x := range b.Dx() {
				w := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
				g := got.NRGBAAt(x, y)
				if m, ok := img.(*image.NRGBA64); ok {
					// NRGBAModel rounds through premultiplied colour; the loader takes the high bytes.
					c := m.NRGBA64At(b.Min.X+x, b.Min.Y+y)
					w = color.NRGBA{R: uint8(c.R >> 8), G: uint8(c.G >> 8), B: uint8(c.B >> 8), A: uint8(c.A >> 8)}
				}
				if w.A == 0 {
					// NRGBAModel goes through premultiplied colour, which has none under alpha 0;
					// the loader keeps a straight type's.
					w = color.NRGBA{R: g.R, G: g.G, B: g.B}
				}
				if d := maxChannelDiff(g, w); d > tol {
					t.Fatalf("pixel (%d,%d) = %v, want %v", x, y, g, w)
				}
			}
		}
	})
}

func maxChannelDiff(a, b color.NRGBA) int {
	d := 0
	for _, p := range [][2]uint8{{a.R, b.R}, {a.G, b.G}, {a.B, b.B}, {a.A, b.A}} {
		d = max(d, int(p[0])-int(p[1]), int(p[1])-int(p[0]))
	}
	return d
}

// refTone is the per-pixel reference of the tone operations and swap.
func refTone(spec string, c color.NRGBA) color.NRGBA {
	name, arg, _ := strings.Cut(spec, ":")
	v, _ := strconv.ParseFloat(arg, 64)
	f := func(ch uint8) uint8 {
		x := float64(ch)
		switch name {
		case "invert":
			x = 255 - x
		case "brightness":
			x += v / 100 * 255
		case "contrast":
			x = (x-127.5)*(1+v/100) + 127.5
		case "gamma":
			x = 255 * math.Pow(x/255, 1/v)
		}
		return uint8(min(max(math.Round(x), 0), 255))
	}
	switch name {
	case "swap":
		return color.NRGBA{R: c.G, G: c.R, B: c.B, A: c.A}
	case "grayscale":
		y := uint8((19595*uint32(c.R) + 38470*uint32(c.G) + 7471*uint32(c.B) + 1<<15) >> 16)
		return color.NRGBA{R: y, G: y, B: y, A: c.A}
	}
	return color.NRGBA{R: f(c.R), G: f(c.G), B: f(c.B), A: c.A}
}

// applySpec parses a one-operation spec and applies it.
func applySpec(t testing.TB, spec string, img image.Image) image.Image {
	t.Helper()
	c, err := ParseChain(spec)
	if err != nil {
		t.Fatal(err)
	}
	steps := c.steps()
	if len(steps) != 1 {
		t.Fatalf("%q: %d steps", spec, len(steps))
	}
	out, err := steps[0].apply(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestToneOps(t *testing.T) {
	for _, spec := range []string{"swap", "grayscale", "invert", "brightness:-37.5", "brightness:60", "contrast:45",
		"contrast:-80", "gamma:2.2", "gamma:0.45"} {
		t.Run(spec, func(t *testing.T) {
			t.Parallel() // every image is made afresh
			eachImage(t, func(t *testing.T, img image.Image) {
				in := cloneNRGBA(img)
				got := cloneNRGBA(applySpec(t, spec, img))
				tol, straight := 0, isStraight(img)
				if _, ok := img.(*image.NYCbCrA); ok && spec == "swap" {
					// SwapRedGreen converts through image/draw, which premultiplies and rounds
					// differently.
					tol, straight = 1, false
				}
				ycc, _ := img.(*image.YCbCr)
				for y := range in.Rect.Dy() {
					for x := range in.Rect.Dx() {
						c := in.NRGBAAt(x, y)
						w, g := refTone(spec, c), got.NRGBAAt(x, y)
						if ycc != nil && spec == "grayscale" {
							// The Y plane: the luma before conversion to RGB clamps (which random
							// YCbCr often needs; a photo's pixels rarely).
							v := ycc.Y[ycc.YOffset(ycc.Rect.Min.X+x, ycc.Rect.Min.Y+y)]
							w = color.NRGBA{R: v, G: v, B: v, A: 255}
						}
						if c.A == 0 && !straight {
							continue
						}
						if maxChannelDiff(g, w) > tol {
							t.Fatalf("pixel (%d,%d) %v: got %v, want %v", x, y, c, g, w)
						}
					}
				}
			})
		})
	}
}

// refGeometry maps output pixels to input pixels for the geometric operations.
func refGeometry(spec string, in *image.NRGBA) *image.NRGBA {
	w, h := in.Rect.Dx(), in.Rect.Dy()
	var ow, oh int
	var src func(x, y int) (int, int)
	switch spec {
	case "rotate:90":
		ow, oh, src = h, w, func(x, y int) (int, int) { return y, h - 1 - x }
	case "rotate:180":
		ow, oh, src = w, h, func(x, y int) (int, int) { return w - 1 - x, h - 1 - y }
	case "rotate:270":
		ow, oh, src = h, w, func(x, y int) (int, int) { return w - 1 - y, x }
	case "flip:h":
		ow, oh, src = w, h, func(x, y int) (int, int) { return w - 1 - x, y }
	case "flip:v":
		ow, oh, src = w, h, func(x, y int) (int, int) { return x, h - 1 - y }
	case "transpose":
		ow, oh, src = h, w, func(x, y int) (int, int) { return y, x }
	case "transverse":
		ow, oh, src = h, w, func(x, y int) (int, int) { return w - 1 - y, h - 1 - x }
	case "crop:4x3+2+5":
		ow, oh, src = 4, 3, func(x, y int) (int, int) { return x + 2, y + 5 }
	case "crop:7x5":
		ow, oh, src = 7, 5, func(x, y int) (int, int) { return x + (w-7)/2, y + (h-5)/2 }
	default:
		panic(spec)
	}
	out := image.NewNRGBA(image.Rect(0, 0, ow, oh))
	for y := range oh {
		for x := range ow {
			sx, sy := src(x, y)
			out.SetNRGBA(x, y, in.NRGBAAt(sx, sy))
		}
	}
	return out
}

func TestGeometryOps(t *testing.T) {
	for _, spec := range []string{"rotate:90", "rotate:180", "rotate:270", "flip:h", "flip:v", "transpose", "transverse",
		"crop:4x3+2+5", "crop:7x5"} {
		t.Run(spec, func(t *testing.T) {
			t.Parallel() // every image is made afresh
			eachImage(t, func(t *testing.T, img image.Image) {
				want := refGeometry(spec, cloneNRGBA(img))
				var got image.Image
				switch spec {
				case "transpose":
					got = must(orient(context.Background(), img, orientTranspose))
				case "transverse":
					got = must(orient(context.Background(), img, orientTransverse))
				default:
					got = applySpec(t, spec, img)
				}
				compareImages(t, got, want, exact)
			})
		})
	}
}

// opaqueNRGBA is testimage.Pattern with every alpha 255.
func opaqueNRGBA(size int, seed int64) *image.NRGBA {
	m := testimage.Pattern(size, seed)
	for i := 3; i < len(m.Pix); i += 4 {
		m.Pix[i] = 255
	}
	return m
}

// TestBlurReference compares blur with a float Gaussian on premultiplied colour. Up to sigma 6 the
// kernel is exact and only rounding differs; beyond, blur shrinks, blurs and enlarges, which is an
// approximation.
func TestBlurReference(t *testing.T) {
	src := testimage.Pattern(96, 3)
	for _, sigma := range []float64{0.1, 0.5, 1, 2.5, 6, 6.5, 10, 20, 50, 100} {
		tol := tolerance{max: 2, mean: 0.3}
		if sigma > maxExactSigma {
			tol = tolerance{max: 8, mean: 1}
		}
		for _, typ := range []string{"NRGBA sub-image", "YCbCr", "Paletted"} {
			t.Run(fmt.Sprintf("%v/%s", sigma, typ), func(t *testing.T) {
				t.Parallel() // src is only read: blur and the reference work on copies
				var img image.Image = src.SubImage(image.Rect(5, 3, 90, 80))
				switch typ {
				case "YCbCr":
					y := image.NewYCbCr(image.Rect(0, 0, 41, 37), image.YCbCrSubsampleRatio420)
					fillBytes(y.Y, rand.New(rand.NewPCG(1, 2)))
					fillBytes(y.Cb, rand.New(rand.NewPCG(1, 3)))
					fillBytes(y.Cr, rand.New(rand.NewPCG(1, 4)))
					img = y
				case "Paletted":
					img = imageCases[4].make(rand.New(rand.NewPCG(1, 5)))
				}
				want := refGauss(cloneNRGBA(img), sigma)
				got := must(blur(context.Background(), cloneImage(img), sigma))
				if md, mean := diffStats(premul(got), want); md > tol.max || mean > tol.mean {
					t.Errorf("differs from the reference by up to %d, %.3f on average; tolerance %d, %.2f", md, mean, tol.max, tol.mean)
				}
			})
		}
	}
}

// cloneImage copies an NRGBA (sub-)image so that an in-place operation leaves the original alone;
// other types are returned as they are (the operations convert them).
func cloneImage(img image.Image) image.Image {
	if m, ok := img.(*image.NRGBA); ok {
		c := image.NewNRGBA(m.Rect)
		draw.Draw(c, c.Rect, m, m.Rect.Min, draw.Src)
		return c
	}
	return img
}

func TestSharpenReference(t *testing.T) {
	src := opaqueNRGBA(64, 5)
	for _, p := range [][2]float64{{1, 1}, {1.5, 2}, {0.5, 0.5}, {8, 1}} {
		t.Run(fmt.Sprint(p), func(t *testing.T) {
			t.Parallel() // src is only read: sharpen works on a copy
			blurred := refGauss(src, p[0])
			got := must(sharpen(context.Background(), cloneImage(src), p[0], p[1]))
			tol := int(math.Ceil(2*p[1])) + 1 // blur's rounding, amplified
			if p[0] > maxExactSigma {
				tol = int(math.Ceil(8*p[1])) + 1
			}
			worst := 0
			for i := range src.Pix {
				if i%4 == 3 {
					continue
				}
				o := float64(src.Pix[i])
				want := min(max(math.Round(o+p[1]*(o-float64(blurred.Pix[i]))), 0), 255)
				worst = max(worst, int(math.Abs(want-float64(got.Pix[i]))))
			}
			if worst > tol {
				t.Errorf("differs from the reference by up to %d, tolerance %d", worst, tol)
			}
		})
	}
}

// TestResizeReference compares the resampler with golang.org/x/image/draw's kernel scalers, on
// opaque images (on edges of transparency draw leaves invalid premultiplied colours that this
// package clamps, so they differ there by design).
func TestResizeReference(t *testing.T) {
	src := opaqueNRGBA(97, 3)
	pal := imageCases[4].make(rand.New(rand.NewPCG(9, 9))).(*image.Paletted)
	pal.Palette = mapPalette(pal, func(p *[4]byte) { p[3] = 255 }).Palette
	ycc := image.NewYCbCr(image.Rect(0, 0, 61, 47), image.YCbCrSubsampleRatio422)
	for _, p := range [][]byte{ycc.Y, ycc.Cb, ycc.Cr} {
		fillBytes(p, rand.New(rand.NewPCG(3, uint64(len(p)))))
	}
	for _, in := range []image.Image{src, src.SubImage(image.Rect(3, 7, 90, 60)), pal, ycc} {
		for _, sz := range [][2]int{{40, 30}, {200, 150}, {97, 10}, {13, 200}, {1, 1}, {5, 97}, {300, 1}, {1, 300}} {
			for _, k := range []*draw.Kernel{draw.CatmullRom, draw.BiLinear} {
				got := must(resample(context.Background(), in, image.Rect(0, 0, in.Bounds().Dx(), in.Bounds().Dy()), sz[0], sz[1], k))
				want := image.NewRGBA(image.Rect(0, 0, sz[0], sz[1]))
				k.Scale(want, want.Rect, in, in.Bounds(), draw.Src, nil)
				if md, mean := diffStats(premul(got), want); md > 1 || mean > 0.3 {
					t.Errorf("%T %v to %v: differs from x/image/draw by up to %d, %.3f on average", in, in.Bounds(), sz, md, mean)
				}
			}
		}
	}
}

// TestResizeTransparency: the colour of transparent pixels must not bleed into visible ones.
func TestResizeTransparency(t *testing.T) {
	m := image.NewNRGBA(image.Rect(0, 0, 40, 40))
	for y := range 40 {
		for x := range 40 {
			if x < 20 {
				m.SetNRGBA(x, y, color.NRGBA{R: 255, A: 0}) // invisible red
			} else {
				m.SetNRGBA(x, y, color.NRGBA{B: 255, A: 255})
			}
		}
	}
	for _, img := range []image.Image{
		must(resample(context.Background(), m, m.Rect, 13, 13, draw.CatmullRom)), must(resample(context.Background(), m, m.Rect, 97, 97, draw.CatmullRom)),
		must(blur(context.Background(), cloneImage(m), 3)), must(blur(context.Background(), cloneImage(m), 20)), must(sharpen(context.Background(), cloneImage(m), 2, 2)),
	} {
		n := img.(*image.NRGBA)
		for y := range n.Rect.Dy() {
			for x := range n.Rect.Dx() {
				if c := n.NRGBAAt(x, y); c.A > 0 && c.R > 0 && c.A > 16 {
					t.Fatalf("%v: pixel (%d,%d) = %v: red from transparent pixels", n.Rect, x, y, c)
				}
			}
		}
	}
}

func TestTaps(t *testing.T) {
	check := func(name string, tp taps, n int) {
		t.Helper()
		for i := range tp.len() {
			sum := int32(0)
			for _, w := range tp.weights(i) {
				sum += w
			}
			if sum != 1<<wbits {
				t.Fatalf("%s: output %d weights sum to %d", name, i, sum)
			}
			if tp.lo[i] < 0 || tp.hi(i) >= n || i > 0 && (tp.lo[i] < tp.lo[i-1] || tp.hi(i) < tp.hi(i-1)) {
				t.Fatalf("%s: output %d reads %d..%d of %d, after %d..%d", name, i, tp.lo[i], tp.hi(i), n, tp.lo[max(i-1, 0)], tp.hi(max(i-1, 0)))
			}
		}
	}
	sizes := []int{1, 2, 3, 5, 7, 16, 31, 100, 257, 1000}
	for _, dn := range sizes {
		for _, sn := range sizes {
			// newTaps panics if Catmull-Rom's negative lobes could overflow the accumulators.
			check(fmt.Sprintf("catmull-rom %d->%d", sn, dn), resampleTaps(dn, sn, draw.CatmullRom), sn)
			check(fmt.Sprintf("bilinear %d->%d", sn, dn), resampleTaps(dn, sn, draw.BiLinear), sn)
		}
		for _, sigma := range []float64{0.1, 1, 6, 30} {
			check(fmt.Sprintf("gauss %d sigma %v", dn, sigma), gaussTaps(dn, sigma), dn)
		}
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		spec   string
		w, h   int
		ow, oh int
		src    image.Rectangle // for resize: the part scaled
	}{
		{"resize:800x600", 4000, 3000, 800, 600, image.Rect(0, 0, 4000, 3000)},
		{"resize:800x800", 4000, 3000, 800, 600, image.Rect(0, 0, 4000, 3000)},
		{"resize:800x", 4000, 3000, 800, 600, image.Rect(0, 0, 4000, 3000)},
		{"resize:x300", 4000, 3000, 400, 300, image.Rect(0, 0, 4000, 3000)},
		{"resize:8000x8000", 4000, 3000, 8000, 6000, image.Rect(0, 0, 4000, 3000)},
		{"resize:x16384", 100, 1, 16384, 164, image.Rect(0, 0, 100, 1)}, // no side over MaxSide
		{"resize:100x100:fill", 4000, 3000, 100, 100, image.Rect(500, 0, 3500, 3000)},
		{"resize:300x100:fill", 4000, 3000, 300, 100, image.Rect(0, 833, 4000, 2166)},
		{"resize:100x100:fill", 1, 1, 100, 100, image.Rect(0, 0, 1, 1)},
		{"resize:30x20:exact", 4000, 3000, 30, 20, image.Rect(0, 0, 4000, 3000)},
		{"resize:10x10", 1000, 1, 10, 1, image.Rect(0, 0, 1000, 1)}, // at least one pixel
		{"thumbnail:128", 4000, 3000, 128, 96, image.Rectangle{}},
		{"thumbnail:128", 100, 50, 100, 50, image.Rectangle{}}, // never enlarges
		{"thumbnail:64x32", 100, 100, 32, 32, image.Rectangle{}},
		{"crop:10x20+5+5", 100, 100, 10, 20, image.Rectangle{}},
		{"crop:10x20+95+95", 100, 100, 5, 5, image.Rectangle{}}, // clipped
		{"crop:500x20", 100, 100, 100, 20, image.Rectangle{}},
		{"rotate:90", 30, 20, 20, 30, image.Rectangle{}},
		{"rotate:180", 30, 20, 30, 20, image.Rectangle{}},
		{"rotate:270", 30, 20, 20, 30, image.Rectangle{}},
		{"blur:3", 30, 20, 30, 20, image.Rectangle{}},
	} {
		c, err := ParseChain(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		o := c.ops[0]
		if w, h, err := o.size(tc.w, tc.h); err != nil || w != tc.ow || h != tc.oh {
			t.Errorf("%s of %dx%d: %dx%d (%v), want %dx%d", tc.spec, tc.w, tc.h, w, h, err, tc.ow, tc.oh)
		}
		if o.kind == opResize {
			if _, _, src := o.resizeGeometry(tc.w, tc.h); src != tc.src {
				t.Errorf("%s of %dx%d scales %v, want %v", tc.spec, tc.w, tc.h, src, tc.src)
			}
		}
	}
	c, _ := ParseChain("crop:10x10+100+0")
	if _, _, err := c.ops[0].size(100, 50); !errors.Is(err, ErrBadOp) || err.Error() != "crop:10x10+100+0 lies outside the 100x50 image" {
		t.Errorf("crop outside: %v", err)
	}
}
