package imageop

import (
	"bytes"
	"flag"
	"fmt"
	"image"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the fixtures in testdata/in and the expected outputs in testdata/golden")

// tolerance bounds the difference between an output and its golden file, per 8-bit channel of
// straight RGBA: the largest difference and the mean one.
type tolerance struct {
	max  int
	mean float64
}

var (
	exact = tolerance{}
	// kernel: filters whose weights come from float math (Gaussian, Catmull-Rom, tent), quantised
	// to 14 bits; a last-bit difference in math.Exp on another platform may move a weight by one.
	kernel = tolerance{max: 1, mean: 0.05}
	// lossy: JPEG output or input; Go's codec is deterministic, but not promised to stay so.
	lossy = tolerance{max: 12, mean: 1}
)

type goldenCase struct {
	input, spec string
	tol         tolerance
}

// goldenCases: every operation on the PNG input (lossless, with alpha), the default and a chain on
// every input format, and a few operations on the JPEG and GIF inputs, which take other paths
// (YCbCr, paletted).
func goldenCases() []goldenCase {
	var cs []goldenCase
	for _, c := range []struct {
		spec string
		tol  tolerance
	}{
		{"swap", exact}, {"grayscale", exact}, {"invert", exact},
		{"brightness:-20", exact}, {"brightness:35.5", exact}, {"contrast:30", exact}, {"contrast:-60", exact},
		{"gamma:2.2", exact}, {"gamma:0.5", exact},
		{"blur:1.5", kernel}, {"blur:12", kernel}, {"sharpen:1.5", kernel}, {"sharpen:1:3", kernel},
		{"resize:20x20", kernel}, {"resize:20x20:fill", kernel}, {"resize:20x12:exact", kernel}, {"resize:64x", kernel},
		{"thumbnail:16", kernel}, {"thumbnail:100", exact},
		{"crop:10x8+3+4", exact}, {"crop:10x8", exact}, {"crop:40x40+20+20", exact},
		{"rotate:90", exact}, {"rotate:180", exact}, {"rotate:270", exact}, {"flip:h", exact}, {"flip:v", exact},
		{"resize:24x18,grayscale,sharpen:1.5", kernel},
		{"convert:jpeg:90", lossy}, {"invert,convert:jpeg", lossy},
	} {
		cs = append(cs, goldenCase{"pattern.png", c.spec, c.tol})
	}
	for _, in := range []string{"pattern.jpg", "pattern.gif", "pattern.webp", "pattern.bmp", "pattern.tiff"} {
		tol := exact
		if in == "pattern.jpg" {
			tol = lossy
		}
		cs = append(cs, goldenCase{in, "", tol}, goldenCase{in, "rotate:270,contrast:20,thumbnail:12", kernel})
		if in == "pattern.jpg" {
			cs[len(cs)-1].tol = lossy
		}
	}
	for _, spec := range []string{"grayscale", "invert", "gamma:1.8", "rotate:90", "flip:v", "crop:9x7+1+2", "blur:2", "resize:40x30:exact", "convert:png"} {
		cs = append(cs, goldenCase{"pattern.jpg", spec, lossy})
		tol := exact
		if strings.HasPrefix(spec, "blur") || strings.HasPrefix(spec, "resize") {
			tol = kernel
		}
		cs = append(cs, goldenCase{"pattern.gif", spec, tol})
	}
	return cs
}

// goldenName names a case's expected output: the input's format and the spec, with the
// characters that do not belong in file names replaced.
func goldenName(c goldenCase, contentType string) string {
	spec := c.spec
	if spec == "" {
		spec = "default"
	}
	spec = strings.NewReplacer(":", "-", ",", "_", "+", "p", ".", "d").Replace(spec)
	return strings.TrimPrefix(filepath.Ext(c.input), ".") + "_" + spec + Extension(contentType)
}

func TestGolden(t *testing.T) {
	inDir, goldDir := filepath.Join("testdata", "in"), filepath.Join("testdata", "golden")
	if *update {
		for _, d := range []string{inDir, goldDir} {
			if err := os.RemoveAll(d); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for name, data := range inputFixtures(t) {
			writeFile(t, filepath.Join(inDir, name), data)
		}
		for o := 1; o <= 8; o++ {
			writeFile(t, filepath.Join(inDir, fmt.Sprintf("orient-%d.jpg", o)), orientFixture(t, o))
		}
	}
	p := NewProcessor()
	for _, c := range goldenCases() {
		t.Run(c.input+"/"+c.spec, func(t *testing.T) {
			t.Parallel() // a Processor is safe for concurrent use; each case has a golden file of its own
			chain, err := ParseChain(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			in := readFile(t, filepath.Join(inDir, c.input))
			var out bytes.Buffer
			ct, err := p.Apply(&out, bytes.NewReader(in), chain)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			format, _ := Sniff(out.Bytes())
			if want := chain.OutputFormat(map[string]string{".png": "png", ".jpg": "jpeg"}[filepath.Ext(c.input)]); format != want || ct != ContentType(want) {
				t.Fatalf("output is %q, served as %q; want %s", format, ct, want)
			}
			name := filepath.Join(goldDir, goldenName(c, ct))
			if *update {
				writeFile(t, name, out.Bytes())
			}
			compareImages(t, decodeAny(t, out.Bytes()), decodeAny(t, readFile(t, name)), c.tol)
		})
	}
}

// TestGoldenDecode checks that the input fixtures decode to the pattern they were made from: exactly
// for the lossless formats (BMP was written opaque: x/image/bmp's reader ignores BMP alpha), loosely
// for JPEG. GIF quantises to a palette: its goldens are its outputs.
func TestGoldenDecode(t *testing.T) {
	for name, want := range map[string]struct {
		img *image.NRGBA
		tol tolerance
	}{
		"pattern.png":  {fixturePattern(), exact},
		"pattern.webp": {fixturePattern(), exact},
		"pattern.bmp":  {opaquePattern(), exact},
		"pattern.tiff": {fixturePattern(), exact},
		"pattern.jpg":  {opaquePattern(), tolerance{max: 48, mean: 5}}, // quality 90 of a noisy pattern
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			img, _, err := Decode(bytes.NewReader(readFile(t, filepath.Join("testdata", "in", name))), 0)
			if err != nil {
				t.Fatal(err)
			}
			compareImages(t, img, want.img, want.tol)
		})
	}
}

// TestGoldenOrientation decodes the eight orientation fixtures (stored turned, with the EXIF tag
// that turns them back) and expects the same upright image from each.
func TestGoldenOrientation(t *testing.T) {
	want := uprightPattern()
	for o := 1; o <= 8; o++ {
		t.Run(fmt.Sprint(o), func(t *testing.T) {
			t.Parallel() // want is only read
			data := readFile(t, filepath.Join("testdata", "in", fmt.Sprintf("orient-%d.jpg", o)))
			if got := jpegOrientation(data); got != o {
				t.Fatalf("orientation read as %d", got)
			}
			img, format, err := Decode(bytes.NewReader(data), 0)
			if err != nil || format != "jpeg" {
				t.Fatalf("Decode: %q, %v", format, err)
			}
			compareImages(t, img, want, tolerance{max: 16, mean: 1.5})
		})
	}
}

// orientFixture is uprightPattern stored turned so that EXIF orientation o shows it upright; even
// orientations get a big-endian Exif block, odd ones little-endian.
func orientFixture(t testing.TB, o int) []byte {
	return withExif(mustJPEG(t, inverseOrient(uprightPattern(), o), 95), o, o%2 == 0)
}

func writeFile(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("%v (go test -run TestGolden -update makes the fixtures)", err)
	}
	return data
}

func decodeAny(t testing.TB, data []byte) image.Image {
	t.Helper()
	img, _, err := Decode(bytes.NewReader(data), -1)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// compareImages compares got and want in straight 8-bit RGBA, colour under alpha 0 included.
func compareImages(t testing.TB, got, want image.Image, tol tolerance) {
	t.Helper()
	g, w := cloneNRGBA(got), cloneNRGBA(want)
	if g.Rect.Size() != w.Rect.Size() {
		t.Fatalf("size %v, want %v", g.Rect.Size(), w.Rect.Size())
	}
	maxd, sum, at := 0, 0, image.Point{}
	for y := range g.Rect.Dy() {
		for x := range 4 * g.Rect.Dx() {
			d := int(g.Pix[y*g.Stride+x]) - int(w.Pix[y*w.Stride+x])
			d = max(d, -d)
			sum += d
			if d > maxd {
				maxd, at = d, image.Pt(x/4, y)
			}
		}
	}
	mean := float64(sum) / float64(4*g.Rect.Dx()*g.Rect.Dy())
	if maxd > tol.max || mean > tol.mean {
		t.Errorf("differs by up to %d (at %v: got %v, want %v), %.3f on average; tolerance %d, %.3f",
			maxd, at, g.NRGBAAt(g.Rect.Min.X+at.X, g.Rect.Min.Y+at.Y), w.NRGBAAt(w.Rect.Min.X+at.X, w.Rect.Min.Y+at.Y),
			mean, tol.max, tol.mean)
	}
}

// cloneNRGBA converts img to a new NRGBA at (0,0), leaving img alone.
func cloneNRGBA(img image.Image) *image.NRGBA {
	b := img.Bounds()
	out := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	l := newRowLoader(img)
	for y := range b.Dy() {
		l.load(y, out.Pix[y*out.Stride:])
	}
	return out
}
