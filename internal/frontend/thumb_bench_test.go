package frontend

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"math/rand/v2"
	"testing"

	"golang.org/x/image/draw"

	"github.com/imgmill/imgmill/internal/pngenc"
)

// photo is a width×height opaque image with gradients and noise, as a photo's pixels are.
func photo(width, height int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, width, height))
	rng := rand.New(rand.NewPCG(1, 2))
	for y := range height {
		for x := range width {
			n := uint8(rng.IntN(32))
			img.SetNRGBA(x, y, color.NRGBA{R: uint8(x/8) + n, G: uint8(y/6) + n, B: uint8((x+y)/16) + n, A: 255})
		}
	}
	return img
}

// BenchmarkThumbnail: a 480 px thumbnail of a 2048×1536 result, as PNG and as JPEG: decode, scale,
// encode (the cache is not involved).
func BenchmarkThumbnail(b *testing.B) {
	src := photo(2048, 1536)
	var pngBytes, jpegBytes bytes.Buffer
	if err := new(pngenc.Encoder).Encode(&pngBytes, src); err != nil {
		b.Fatal(err)
	}
	if err := jpeg.Encode(&jpegBytes, src, &jpeg.Options{Quality: 90}); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{{"png", pngBytes.Bytes()}, {"jpeg", jpegBytes.Bytes()}} {
		b.Run(c.name, func(b *testing.B) {
			t := newThumbnailer(0)
			b.SetBytes(int64(len(c.data)))
			for b.Loop() {
				th, err := t.make(b.Context(), bytes.NewReader(c.data), 480)
				if err != nil || th.width != 2048 || th.contentType != "image/jpeg" {
					b.Fatalf("%+v %v", th, err)
				}
			}
		})
	}
}

// BenchmarkThumbnailScale: the scaling step alone, 2048×1536 to 480×360, by the kernels that could
// do it, and scale (thumb.go), which uses two of them.
func BenchmarkThumbnailScale(b *testing.B) {
	var jpegBytes bytes.Buffer
	if err := jpeg.Encode(&jpegBytes, photo(2048, 1536), &jpeg.Options{Quality: 90}); err != nil {
		b.Fatal(err)
	}
	ycc, err := jpeg.Decode(&jpegBytes)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []struct {
		name   string
		scaler draw.Scaler
	}{{"ApproxBiLinear", draw.ApproxBiLinear}, {"BiLinear", draw.BiLinear}, {"CatmullRom", draw.CatmullRom}} {
		for _, src := range []struct {
			name string
			img  image.Image
		}{{"nrgba", photo(2048, 1536)}, {"ycbcr", ycc}} {
			b.Run(k.name+"/"+src.name, func(b *testing.B) {
				dst := image.NewRGBA(scaledRect(src.img.Bounds(), 480))
				for b.Loop() {
					k.scaler.Scale(dst, dst.Rect, src.img, src.img.Bounds(), draw.Src, nil)
				}
			})
		}
	}
	for _, src := range []struct {
		name string
		img  image.Image
	}{{"nrgba", photo(2048, 1536)}, {"ycbcr", ycc}} {
		b.Run("scale/"+src.name, func(b *testing.B) {
			for b.Loop() {
				scale(src.img, 480)
			}
		})
	}
}
