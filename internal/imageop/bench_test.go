package imageop

import (
	"bytes"
	"context"
	"image"
	"io"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
)

// benchSpecs are the operations benchmarked on a 1024x1024 image; MB/s counts the input's pixels
// at 4 bytes each.
var benchSpecs = []string{
	"swap", "grayscale", "invert", "brightness:20", "contrast:30", "gamma:2.2",
	"blur:2", "blur:20", "sharpen:1.5", "resize:800x600", "resize:2048x2048", "resize:512x512:fill",
	"thumbnail:128", "crop:512x512+100+100", "rotate:90", "rotate:180", "flip:h", "flip:v",
}

func BenchmarkOps(b *testing.B) {
	const size = 1024
	nrgba := testimage.Pattern(size, 1)
	ycc := image.NewYCbCr(nrgba.Rect, image.YCbCrSubsampleRatio420)
	jpg := decodeAny(b, mustJPEG(b, opaqueNRGBA(size, 1), 85)).(*image.YCbCr)
	for _, input := range []string{"NRGBA", "YCbCr"} {
		for _, spec := range benchSpecs {
			if input == "YCbCr" && !strings.HasPrefix(spec, "grayscale") && !strings.HasPrefix(spec, "rotate:90") &&
				!strings.HasPrefix(spec, "resize:800") && !strings.HasPrefix(spec, "thumbnail") && !strings.HasPrefix(spec, "blur:2") {
				continue
			}
			b.Run(input+"/"+spec, func(b *testing.B) {
				c := mustChain(b, spec)
				o := c.steps()[0]
				b.SetBytes(4 * size * size)
				b.ReportAllocs()
				var src image.Image = nrgba
				if input == "YCbCr" {
					// Operations on YCbCr leave it alone (they convert) but for grayscale, which
					// takes its Y plane: a fresh copy each time costs little next to the rest.
					src = ycc
				}
				for b.Loop() {
					if input == "YCbCr" {
						copy(ycc.Y, jpg.Y)
						copy(ycc.Cb, jpg.Cb)
						copy(ycc.Cr, jpg.Cr)
					}
					if _, err := o.apply(context.Background(), src); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkApply measures whole tasks: decode, a typical chain, encode.
func BenchmarkApply(b *testing.B) {
	const size = 1024
	pngIn := mustEncode(b, testimage.Pattern(size, 1))
	jpgIn := mustJPEG(b, opaqueNRGBA(size, 1), 85)
	p := NewProcessor()
	for _, tc := range []struct{ name, spec string }{
		{"jpeg/swap", ""},
		{"jpeg/resize:800x600,grayscale,sharpen:1.5", "resize:800x600,grayscale,sharpen:1.5"},
		{"jpeg/thumbnail:256", "thumbnail:256"},
		{"png/swap", ""},
		{"png/resize:800x600,grayscale,sharpen:1.5", "resize:800x600,grayscale,sharpen:1.5"},
		{"png/rotate:90,convert:jpeg", "rotate:90,convert:jpeg"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			in := pngIn
			if strings.HasPrefix(tc.name, "jpeg") {
				in = jpgIn
			}
			c := mustChain(b, tc.spec)
			b.SetBytes(4 * size * size)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Apply(io.Discard, bytes.NewReader(in), c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecode is the floor under BenchmarkApply: decoding alone.
func BenchmarkDecode(b *testing.B) {
	const size = 1024
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"png", mustEncode(b, testimage.Pattern(size, 1))},
		{"jpeg", mustJPEG(b, opaqueNRGBA(size, 1), 85)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(4 * size * size)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Decode(bytes.NewReader(tc.data), 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
