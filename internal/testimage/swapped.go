package testimage

import (
	"errors"
	"fmt"
	"image"
	"image/color"
)

// CheckSwapped reports whether result is orig with red and green swapped (imgmill's default
// operation), comparing pixel by pixel in non-premultiplied 8-bit terms (both sides converted with
// color.NRGBAModel): result.R == orig.G, result.G == orig.R, B and A equal, and bounds equal. It returns
// an error naming the first mismatching pixel, or nil.
//
// Where both pixels are fully transparent the colour is only compared if both images store straight
// (NRGBA) colour: a premultiplied image cannot hold colour under alpha 0, so there is nothing to
// compare. NRGBA PNGs, such as an encoded Pattern, round trip exactly, colour under alpha 0 included.
func CheckSwapped(orig, result image.Image) error {
	if orig == nil || result == nil {
		return errors.New("testimage: CheckSwapped: nil image")
	}
	ob, rb := orig.Bounds(), result.Bounds()
	if ob != rb {
		return fmt.Errorf("testimage: bounds differ: orig %v, result %v", ob, rb)
	}
	// Fast path for the common case, which would otherwise allocate per pixel through At.
	if o, ok := orig.(*image.NRGBA); ok {
		if r, ok := result.(*image.NRGBA); ok {
			return checkNRGBA(o, r)
		}
	}
	straight := orig.ColorModel() == color.NRGBAModel && result.ColorModel() == color.NRGBAModel
	for y := ob.Min.Y; y < ob.Max.Y; y++ {
		for x := ob.Min.X; x < ob.Max.X; x++ {
			o := color.NRGBAModel.Convert(orig.At(x, y)).(color.NRGBA)
			r := color.NRGBAModel.Convert(result.At(x, y)).(color.NRGBA)
			if o.A == 0 && r.A == 0 && !straight {
				continue
			}
			if err := comparePixel(x, y, o, r); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkNRGBA(orig, result *image.NRGBA) error {
	b := orig.Rect
	for y := b.Min.Y; y < b.Max.Y; y++ {
		oi, ri := orig.PixOffset(b.Min.X, y), result.PixOffset(b.Min.X, y)
		for x := b.Min.X; x < b.Max.X; x, oi, ri = x+1, oi+4, ri+4 {
			op, rp := orig.Pix[oi:oi+4:oi+4], result.Pix[ri:ri+4:ri+4]
			if rp[0] != op[1] || rp[1] != op[0] || rp[2] != op[2] || rp[3] != op[3] {
				return comparePixel(x, y,
					color.NRGBA{R: op[0], G: op[1], B: op[2], A: op[3]},
					color.NRGBA{R: rp[0], G: rp[1], B: rp[2], A: rp[3]})
			}
		}
	}
	return nil
}

func comparePixel(x, y int, o, r color.NRGBA) error {
	want := color.NRGBA{R: o.G, G: o.R, B: o.B, A: o.A}
	if r != want {
		return fmt.Errorf("testimage: pixel (%d,%d) not swapped: got %v, want %v (orig %v)", x, y, r, want, o)
	}
	return nil
}
