package imageop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"runtime"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
)

func mustChain(t testing.TB, spec string) Chain {
	t.Helper()
	c, err := ParseChain(spec)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func apply(t testing.TB, p *Processor, in []byte, spec string) (image.Image, string) {
	t.Helper()
	var out bytes.Buffer
	ct, err := p.Apply(&out, bytes.NewReader(in), mustChain(t, spec))
	if err != nil {
		t.Fatalf("Apply(%q): %v", spec, err)
	}
	if f, _ := Sniff(out.Bytes()); ContentType(f) != ct {
		t.Fatalf("Apply(%q) reported %q for a %q", spec, ct, f)
	}
	return decodeAny(t, out.Bytes()), ct
}

func TestApplyContentTypes(t *testing.T) {
	p := NewProcessor()
	want := map[string]string{"pattern.png": "image/png", "pattern.jpg": "image/jpeg", "pattern.gif": "image/png",
		"pattern.webp": "image/png", "pattern.bmp": "image/png", "pattern.tiff": "image/png"}
	for name, data := range inputFixtures(t) {
		for spec, ct := range map[string]string{"": want[name], "grayscale": want[name], "convert:jpeg": "image/jpeg",
			"convert:png": "image/png", "convert:jpeg:20,rotate:90": "image/jpeg"} {
			if _, got := apply(t, p, data, spec); got != ct {
				t.Errorf("%s, %q: %s, want %s", name, spec, got, ct)
			}
		}
	}
}

// TestProcessKeepsPNG: Process is the default chain, but always writes PNG, as it always did.
func TestProcessKeepsPNG(t *testing.T) {
	data := inputFixtures(t)["pattern.jpg"]
	var out bytes.Buffer
	if err := NewProcessor().Process(&out, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if f, _ := Sniff(out.Bytes()); f != "png" {
		t.Fatalf("Process of a JPEG wrote %q", f)
	}
	orig, _ := jpeg.Decode(bytes.NewReader(data))
	if err := testimage.CheckSwapped(orig, decodeAny(t, out.Bytes())); err != nil {
		t.Fatal(err)
	}
}

func TestApplyMaxPixels(t *testing.T) {
	// The header claims 100x100, and junk follows: an error wrapping ErrTooLarge and not ErrDecode
	// shows the chain was refused from the header, before decoding.
	junk := testimage.PaddedPNG(100, 100, 300)
	for _, tc := range []struct {
		spec string
		max  int64
		msg  string
	}{
		{"resize:101x100:exact", 10_000, "resize:101x100:exact would make the 100x100 image 101x100 pixels, over the limit of 10000 pixels in all: choose a smaller size"},
		{"resize:16384x16384", 0, "resize:16384x16384 would make the 100x100 image 16384x16384 pixels, over the limit of 50000000 pixels (50 MP) in all: choose a smaller size"},
		{"crop:10x10+5+5,resize:8000x8000,thumbnail:10", 0, "resize:8000x8000 would make the 10x10 image 8000x8000 pixels, over the limit of 50000000 pixels (50 MP) in all: choose a smaller size"},
		{"crop:10x10+100+0", 0, "crop:10x10+100+0 lies outside the 100x100 image"},
	} {
		p := &Processor{MaxPixels: tc.max}
		_, err := p.Apply(io.Discard, bytes.NewReader(junk), mustChain(t, tc.spec))
		if err == nil || errors.Is(err, ErrDecode) || err.Error() != tc.msg {
			t.Errorf("%q: %v, want %q", tc.spec, err, tc.msg)
		}
	}
	// Within the limit, the same chains are tried (and fail on the junk).
	for _, spec := range []string{"resize:100x100:exact", "thumbnail:16384", "resize:16384x16384"} {
		p := &Processor{MaxPixels: -1}
		if spec != "resize:16384x16384" {
			p.MaxPixels = 10_000
		}
		if _, err := p.Apply(io.Discard, bytes.NewReader(junk), mustChain(t, spec)); !errors.Is(err, ErrDecode) {
			t.Errorf("%q: %v, want ErrDecode", spec, err)
		}
	}
	// A real image: the refused resize allocates nothing like its size.
	in := mustEncode(t, testimage.Pattern(64, 1))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := NewProcessor().Apply(io.Discard, bytes.NewReader(in), mustChain(t, "resize:16384x16384:exact"))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("resize of 64x64 to 16384x16384: %v", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("refused resize allocated %d bytes", alloc)
	}
}

// TestApplyOrientedSizes: sizes are planned on the upright image, not the stored one.
func TestApplyOrientedSizes(t *testing.T) {
	in := orientFixture(t, 6) // stored 16x24, upright 24x16
	img, _ := apply(t, NewProcessor(), in, "crop:4x4+20+12")
	if img.Bounds().Size() != image.Pt(4, 4) {
		t.Fatalf("crop of the upright image: %v", img.Bounds())
	}
	_, err := (&Processor{MaxPixels: 383}).Apply(io.Discard, bytes.NewReader(in), Chain{})
	if !errors.Is(err, ErrTooLarge) || err.Error() != "image is 16x24 pixels, over the limit of 383 pixels in all: scale it down and upload it again" {
		t.Errorf("%v", err)
	}
}

func TestApplyJPEGOptions(t *testing.T) {
	in := mustEncode(t, opaquePattern())
	size := func(p *Processor, spec string) int {
		var out bytes.Buffer
		if _, err := p.Apply(&out, bytes.NewReader(in), mustChain(t, spec)); err != nil {
			t.Fatal(err)
		}
		return out.Len()
	}
	def, q10, q100 := size(NewProcessor(), "convert:jpeg"), size(NewProcessor(), "convert:jpeg:10"), size(NewProcessor(), "convert:jpeg:100")
	if !(q10 < def && def < q100) || size(NewProcessor(), "convert:jpeg:85") != def {
		t.Errorf("JPEG sizes: quality 10 %d, default %d, 100 %d", q10, def, q100)
	}
	if got := size(&Processor{JPEGQuality: 10}, "convert:jpeg"); got != q10 {
		t.Errorf("Processor.JPEGQuality 10: %d bytes, want %d", got, q10)
	}
	if got := size(&Processor{JPEGQuality: 10}, "convert:jpeg:100"); got != q100 {
		t.Errorf("the chain's quality does not override the Processor's: %d bytes, want %d", got, q100)
	}
	fast, best := size(&Processor{PNGCompression: png.BestSpeed}, "invert"), size(&Processor{PNGCompression: png.BestCompression}, "invert")
	if fast <= best {
		t.Errorf("PNG sizes: best speed %d, best compression %d", fast, best)
	}
}

// TestApplyJPEGFlattens: JPEG has no alpha; transparent pixels come out white, not black, whatever
// the image type.
func TestApplyJPEGFlattens(t *testing.T) {
	m := image.NewNRGBA(image.Rect(0, 0, 16, 16))
	for i := range 16 * 8 {
		m.Pix[4*i], m.Pix[4*i+3] = 200, 0 // top half: transparent (hidden red)
	}
	for i := 16 * 8; i < 16*16; i++ {
		m.Pix[4*i+2], m.Pix[4*i+3] = 255, 255 // bottom half: opaque blue
	}
	pal := image.NewPaletted(m.Rect, color.Palette{color.NRGBA{R: 200}, color.NRGBA{B: 255, A: 255}})
	copy(pal.Pix[16*8:], bytes.Repeat([]byte{1}, 16*8))
	for _, img := range []image.Image{cloneImage(m), premul(m), pal} {
		var out bytes.Buffer
		if err := NewProcessor().encode(context.Background(), &out, img, "jpeg", 95); err != nil {
			t.Fatal(err)
		}
		got := decodeAny(t, out.Bytes())
		top := color.NRGBAModel.Convert(got.At(8, 2)).(color.NRGBA)
		bottom := color.NRGBAModel.Convert(got.At(8, 13)).(color.NRGBA)
		if top.R < 245 || top.G < 245 || top.B < 245 || bottom.B < 240 || bottom.R > 15 {
			t.Errorf("%T: top %v, want white; bottom %v, want blue", img, top, bottom)
		}
	}
}

func TestApplyErrors(t *testing.T) {
	p := NewProcessor()
	valid := mustEncode(t, testimage.Pattern(64, 1))
	readErr := errors.New("connection reset")
	_, err := p.Apply(io.Discard, &failingReader{bytes.NewReader(valid[:len(valid)/2]), readErr}, mustChain(t, "blur"))
	if !errors.Is(err, readErr) || errors.Is(err, ErrDecode) {
		t.Errorf("read failure: %v", err)
	}
	writeErr := errors.New("disk full")
	for _, spec := range []string{"invert", "convert:jpeg"} {
		_, err = p.Apply(failingWriter{writeErr}, bytes.NewReader(valid), mustChain(t, spec))
		if !errors.Is(err, writeErr) || errors.Is(err, ErrDecode) {
			t.Errorf("write failure: %v", err)
		}
	}
	if _, err := p.Apply(io.Discard, bytes.NewReader([]byte("hello")), Chain{}); !errors.Is(err, ErrDecode) || err.Error() != NotImageMessage {
		t.Errorf("not an image: %v", err)
	}
	// Pixels that do not decode behind a good header: the format first, then what to do, as a worker
	// reports it for the task's public error.
	broken := append(bytes.Clone(valid[:33]), make([]byte, 64)...)
	want := "cannot read this PNG: png: invalid format: invalid checksum: " + ResaveAdvice
	if _, err := p.Apply(io.Discard, bytes.NewReader(broken), Chain{}); !errors.Is(err, ErrDecode) || err.Error() != want {
		t.Errorf("broken pixels: %v, want %q", err, want)
	}
}

// TestApplyChains runs chains that mix every kind of operation on every input format, checking
// the output's size against the plan.
func TestApplyChains(t *testing.T) {
	p := NewProcessor()
	for name, data := range inputFixtures(t) {
		for _, tc := range []struct {
			spec string
			size image.Point
		}{
			{"resize:80x60,grayscale,sharpen:1.5", image.Pt(80, 60)},
			{"rotate:90,crop:10x20+2+3,flip:h,blur:2,convert:jpeg:70", image.Pt(10, 20)},
			{"thumbnail:8,invert,brightness:10,contrast:-10,gamma:1.2", image.Pt(8, 6)},
			{"resize:10x10:fill,rotate:270,flip:v,swap", image.Pt(10, 10)},
			{"crop:16x16,resize:x64,blur:20", image.Pt(64, 64)},
		} {
			img, _ := apply(t, p, data, tc.spec)
			if img.Bounds().Size() != tc.size {
				t.Errorf("%s, %q: %v, want %v", name, tc.spec, img.Bounds().Size(), tc.size)
			}
		}
	}
}

// TestApplyConcurrent shares one Processor across goroutines running different chains; run with
// -race.
func TestApplyConcurrent(t *testing.T) {
	p := NewProcessor()
	fx := inputFixtures(t)
	inputs := [][]byte{fx["pattern.png"], fx["pattern.jpg"], fx["pattern.gif"], fx["pattern.webp"]}
	specs := []string{"", "resize:20x20:fill,sharpen", "grayscale,convert:jpeg", "rotate:90,blur:3", "thumbnail:10,invert"}
	want := make([][]byte, len(inputs)*len(specs))
	for i := range want {
		var out bytes.Buffer
		if _, err := p.Apply(&out, bytes.NewReader(inputs[i%len(inputs)]), mustChain(t, specs[i/len(inputs)])); err != nil {
			t.Fatal(err)
		}
		want[i] = out.Bytes()
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*len(want))
	for w := range 8 {
		wg.Go(func() {
			for k := range want {
				i := (k + w) % len(want)
				var out bytes.Buffer
				if _, err := p.Apply(&out, bytes.NewReader(inputs[i%len(inputs)]), mustChain(t, specs[i/len(inputs)])); err != nil {
					errs <- err
				} else if !bytes.Equal(out.Bytes(), want[i]) {
					errs <- fmt.Errorf("case %d: different output under concurrency", i)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
