package pngenc

import (
	"context"
	"fmt"
	"image"
	"image/draw"
	_ "image/jpeg" // for PNGENC_CORPUS
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
)

// opaquePattern is testimage.Pattern with every alpha 255, so it encodes as RGB.
func opaquePattern(size int, seed int64) *image.NRGBA {
	m := testimage.Pattern(size, seed)
	for i := 3; i < len(m.Pix); i += 4 {
		m.Pix[i] = 255
	}
	return m
}

var benchSizes = []int{64, 256, 2048}

// BenchmarkEncode compares image/png and pngenc at default compression on
// testimage.Pattern (RGBA with alpha); MB/s counts the input's pixels at 4 bytes.
func BenchmarkEncode(b *testing.B) {
	for _, size := range benchSizes {
		img := testimage.Pattern(size, 1)
		for _, name := range []string{"stdlib", "pngenc"} {
			b.Run(fmt.Sprintf("%s/%d", name, size), func(b *testing.B) {
				benchEncode(b, newBenchEncoder(name, png.DefaultCompression), img)
			})
		}
	}
}

// BenchmarkEncodeLevels compares image/png and pngenc at every level, on a
// 256 px testimage.Pattern, with alpha and without (RGB output).
func BenchmarkEncodeLevels(b *testing.B) {
	named := []struct {
		name  string
		level png.CompressionLevel
	}{{"default", png.DefaultCompression}, {"speed", png.BestSpeed}, {"best", png.BestCompression}, {"none", png.NoCompression}}
	for _, kind := range []string{"rgba", "rgb"} {
		img := testimage.Pattern(256, 1)
		if kind == "rgb" {
			img = opaquePattern(256, 1)
		}
		for _, l := range named {
			for _, name := range []string{"stdlib", "pngenc"} {
				b.Run(fmt.Sprintf("%s/%s/%s", kind, l.name, name), func(b *testing.B) {
					benchEncode(b, newBenchEncoder(name, l.level), img)
				})
			}
		}
	}
}

type encoder interface {
	Encode(io.Writer, image.Image) error
}

func newBenchEncoder(name string, level png.CompressionLevel) encoder {
	if name == "stdlib" {
		return &png.Encoder{CompressionLevel: level, BufferPool: &stdPool{}}
	}
	return &Encoder{CompressionLevel: level}
}

// benchEncode encodes img to a writer that only counts, so that the
// allocations reported are the encoder's.
func benchEncode(b *testing.B, enc encoder, img image.Image) {
	var out countingWriter
	b.SetBytes(int64(4 * img.Bounds().Dx() * img.Bounds().Dy()))
	b.ReportAllocs()
	for b.Loop() {
		out = countingWriter{}
		if err := enc.Encode(&out, img); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(out.n), "out-bytes")
}

// BenchmarkParams is how levelParams was chosen: klauspost levels -2
// (Huffman only) to 9, with adaptive and fixed row filters, on testimage.Pattern
// with alpha and without, and on the PNG and JPEG files PNGENC_CORPUS names
// (space-separated globs; photos and screenshots or logos, say); image/png's
// levels are the yardstick. testimage.Pattern is noise over gradients, harder on
// LZ matching than most pictures: the files tell more.
//
//	PNGENC_CORPUS='/photos/*.jpg /shots/*.png' go test -run XXX -bench Params -benchtime 10x
func BenchmarkParams(b *testing.B) {
	type input struct {
		name string
		img  image.Image
	}
	inputs := []input{{"pattern-rgba", testimage.Pattern(256, 1)}, {"pattern-rgb", opaquePattern(256, 1)}}
	for _, glob := range strings.Fields(os.Getenv("PNGENC_CORPUS")) {
		names, err := filepath.Glob(glob)
		if err != nil {
			b.Fatal(err)
		}
		for _, name := range names {
			img, err := decodeFile(name)
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			inputs = append(inputs, input{filepath.Base(name), img})
		}
	}
	for _, in := range inputs {
		src, ok := newSource(in.img)
		if !ok {
			b.Fatalf("%s: %T has no fast path", in.name, in.img)
		}
		for _, l := range []png.CompressionLevel{png.DefaultCompression, png.BestSpeed, png.BestCompression} {
			b.Run(fmt.Sprintf("%s/stdlib%d", in.name, l), func(b *testing.B) {
				benchEncode(b, newBenchEncoder("stdlib", l), in.img)
			})
		}
		for zl := -2; zl <= 9; zl++ {
			if zl == 0 {
				continue
			}
			for _, f := range []int{filterAdaptive, ftNone, ftSub, ftUp, ftAverage, ftPaeth} {
				b.Run(fmt.Sprintf("%s/z%d/f%d", in.name, zl, f), func(b *testing.B) {
					s := new(state)
					p := params{zlevel: zl, filter: f}
					var out countingWriter
					b.SetBytes(int64(4 * src.w * src.h))
					for b.Loop() {
						out = countingWriter{}
						if err := s.encode(context.Background(), &out, &src, p); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(out.n), "out-bytes")
				})
			}
		}
	}
}

// decodeFile decodes a PNG or JPEG file, converted as imageop does for types
// without a fast path.
func decodeFile(name string) (image.Image, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		return nil, err
	}
	if _, ok := newSource(img); !ok {
		m := image.NewNRGBA(img.Bounds())
		draw.Draw(m, m.Rect, img, m.Rect.Min, draw.Src)
		img = m
	}
	return img, nil
}
