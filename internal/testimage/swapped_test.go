package testimage

import (
	"bytes"
	"image"
	"image/draw"
	"image/png"
	"strings"
	"testing"
)

// swapped returns a copy of img with red and green swapped, as imgmill's default operation makes it.
func swapped(img *image.NRGBA) *image.NRGBA {
	out := image.NewNRGBA(img.Rect)
	copy(out.Pix, img.Pix)
	for i := 0; i < len(out.Pix); i += 4 {
		out.Pix[i], out.Pix[i+1] = out.Pix[i+1], out.Pix[i]
	}
	return out
}

func TestCheckSwapped(t *testing.T) {
	orig := Pattern(32, 3)
	good := swapped(orig)
	if err := CheckSwapped(orig, good); err != nil {
		t.Fatalf("correct swap rejected: %v", err)
	}

	// A deliberately broken pixel is reported by position, on both the NRGBA fast path and the generic
	// At path.
	broken := swapped(orig)
	i := broken.PixOffset(5, 7)
	broken.Pix[i+2] ^= 1 // blue off by one
	broken.Pix[i+3] = 255
	err := CheckSwapped(orig, broken)
	if err == nil || !strings.Contains(err.Error(), "(5,7)") {
		t.Fatalf("broken pixel: err = %v, want one naming (5,7)", err)
	}
	generic := image.NewNRGBA64(broken.Rect)
	draw.Draw(generic, generic.Rect, broken, image.Point{}, draw.Src)
	err = CheckSwapped(orig, generic)
	if err == nil || !strings.Contains(err.Error(), "(5,7)") {
		t.Fatalf("broken pixel, generic path: err = %v, want one naming (5,7)", err)
	}

	if CheckSwapped(orig, orig) == nil {
		t.Fatal("unswapped image accepted")
	}
	if CheckSwapped(orig, good.SubImage(image.Rect(0, 0, 31, 32))) == nil {
		t.Fatal("different bounds accepted")
	}
	if CheckSwapped(nil, good) == nil {
		t.Fatal("nil original accepted")
	}

	// Colour under alpha 0: compared between straight-alpha images, ignored when the result is
	// premultiplied (it cannot hold that colour).
	o := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	o.Pix = []byte{10, 20, 30, 0}
	r := image.NewNRGBA(o.Rect)
	r.Pix = []byte{10, 20, 30, 0} // not swapped
	if CheckSwapped(o, r) == nil {
		t.Fatal("unswapped colour under alpha 0 accepted between NRGBA images")
	}
	if err := CheckSwapped(o, image.NewRGBA(o.Rect)); err != nil {
		t.Fatalf("premultiplied transparent pixel rejected: %v", err)
	}
}

func TestEncodePNGRoundTrip(t *testing.T) {
	orig := Pattern(20, 5)
	data, err := EncodePNG(orig)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	// Colour under alpha 0 included: CheckSwapped relies on NRGBA PNGs round tripping exactly.
	if got, ok := img.(*image.NRGBA); !ok || got.Rect != orig.Rect || !bytes.Equal(got.Pix, orig.Pix) {
		t.Fatalf("EncodePNG did not round trip the pattern exactly (decoded a %T)", img)
	}
}

func TestPaddedPNG(t *testing.T) {
	for _, size := range []int{0, PNGHeaderLen, 300} {
		b := PaddedPNG(7, 9, size)
		if want := max(size, PNGHeaderLen); len(b) != want {
			t.Errorf("PaddedPNG(7, 9, %d) is %d bytes, want %d", size, len(b), want)
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(b))
		if err != nil || cfg.Width != 7 || cfg.Height != 9 {
			t.Errorf("PaddedPNG(7, 9, %d): header says %dx%d (%v), want 7x9", size, cfg.Width, cfg.Height, err)
		}
	}
}
