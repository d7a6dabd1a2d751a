package imageop

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
)

// estimateCase is one part of a task whose estimate is compared with what it measures: the decode
// of an input, one operation on the decoded input, or the encode of it.
type estimateCase struct {
	input string // png, png16, jpeg, gif, bmp, tiff
	part  string // "decode", "encode", or "op"
	spec  string // the chain; %d is replaced by the size, %h by half of it, %e by an eighth
}

func estimateCases() []estimateCase {
	var cs []estimateCase
	for _, in := range []string{"png", "png16", "jpeg", "gif", "bmp", "tiff"} {
		cs = append(cs, estimateCase{in, "decode", "convert:png"})
	}
	cs = append(cs,
		estimateCase{"png", "encode", "convert:png"},
		estimateCase{"png16", "encode", "convert:png"},
		estimateCase{"png", "encode", "convert:jpeg"},
		estimateCase{"jpeg", "encode", "convert:jpeg"},
	)
	for _, spec := range []string{
		"swap", "grayscale", "invert", "blur:0.5", "blur:2", "blur:6", "blur:20", "blur:100",
		"sharpen:1.5", "sharpen:10", "resize:%hx%h", "resize:%ex%e", "resize:%dx%h:exact",
		"resize:%hx%d:fill", "thumbnail:%e", "crop:%hx%h", "rotate:90", "rotate:180", "flip:h",
	} {
		cs = append(cs, estimateCase{"png", "op", spec})
	}
	for _, spec := range []string{"swap", "grayscale", "invert", "blur:2", "resize:%hx%h", "rotate:90", "flip:h"} {
		cs = append(cs, estimateCase{"jpeg", "op", spec})
	}
	for _, spec := range []string{"swap", "invert", "blur:2", "resize:%hx%h", "rotate:90", "rotate:180", "flip:v"} {
		cs = append(cs, estimateCase{"png16", "op", spec})
	}
	for _, spec := range []string{"swap", "blur:2", "rotate:90", "flip:h"} {
		cs = append(cs, estimateCase{"gif", "op", spec})
	}
	cs = append(cs, estimateCase{"gif", "encode", "convert:png"}, estimateCase{"gif", "encode", "convert:jpeg"})
	cs = append(cs, estimateCase{"jpeg-exif6", "decode", "convert:png"}, estimateCase{"jpeg-exif3", "decode", "convert:png"})
	return cs
}

func (c estimateCase) chain(t testing.TB, size int) Chain {
	spec := strings.NewReplacer("%d", fmt.Sprint(size), "%h", fmt.Sprint(size/2), "%e", fmt.Sprint(size/8)).Replace(c.spec)
	return mustChain(t, spec)
}

// encodeInput makes a size×size opaque photo-like image in the input's format.
func encodeInput(t testing.TB, input string, size int) []byte {
	m := opaqueNRGBA(size, 7)
	var b bytes.Buffer
	var err error
	switch input {
	case "png":
		err = (&Processor{}).encode(context.Background(), &b, m, "png", 0)
	case "png16":
		m16 := image.NewNRGBA64(m.Rect)
		for i, v := range m.Pix {
			m16.Pix[2*i], m16.Pix[2*i+1] = v, v^0x5a
		}
		err = (&Processor{}).encode(context.Background(), &b, m16, "png", 0)
	case "jpeg":
		err = jpeg.Encode(&b, m, &jpeg.Options{Quality: 85})
	case "jpeg-exif3", "jpeg-exif6":
		err = jpeg.Encode(&b, m, &jpeg.Options{Quality: 85})
		b = *bytes.NewBuffer(withExif(b.Bytes(), int(input[len(input)-1]-'0'), false))
	case "gif":
		err = gif.Encode(&b, m, nil)
	case "bmp":
		err = bmp.Encode(&b, m)
	case "tiff":
		err = tiff.Encode(&b, m, &tiff.Options{Compression: tiff.Deflate})
	}
	if err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// inputCache keeps the encoded inputs, which take longer to make than most parts take to run.
type inputCache map[string][]byte

func (c *inputCache) get(t testing.TB, input string, size int) []byte {
	key := fmt.Sprint(input, size)
	if b, ok := (*c)[key]; ok {
		return b
	}
	if *c == nil {
		*c = inputCache{}
	}
	(*c)[key] = encodeInput(t, input, size)
	return (*c)[key]
}

// cloneAny copies the decoded types the cases make, so each run starts from a fresh image.
func cloneAny(img image.Image) image.Image {
	switch m := img.(type) {
	case *image.NRGBA:
		return &image.NRGBA{Pix: bytes.Clone(m.Pix), Stride: m.Stride, Rect: m.Rect}
	case *image.RGBA:
		return &image.RGBA{Pix: bytes.Clone(m.Pix), Stride: m.Stride, Rect: m.Rect}
	case *image.NRGBA64:
		return &image.NRGBA64{Pix: bytes.Clone(m.Pix), Stride: m.Stride, Rect: m.Rect}
	case *image.RGBA64:
		return &image.RGBA64{Pix: bytes.Clone(m.Pix), Stride: m.Stride, Rect: m.Rect}
	case *image.YCbCr:
		c := *m
		c.Y, c.Cb, c.Cr = bytes.Clone(m.Y), bytes.Clone(m.Cb), bytes.Clone(m.Cr)
		return &c
	case *image.Paletted:
		return &image.Paletted{Pix: bytes.Clone(m.Pix), Stride: m.Stride, Rect: m.Rect, Palette: m.Palette}
	}
	panic(fmt.Sprintf("cloneAny: %T", img))
}

// heldBytes is the size of img's pixel buffers.
func heldBytes(img image.Image) int64 {
	switch m := img.(type) {
	case *image.YCbCr:
		return int64(len(m.Y) + len(m.Cb) + len(m.Cr))
	case *image.Gray:
		return int64(len(m.Pix))
	}
	buf, ok := bufferOf(img)
	if !ok {
		panic(fmt.Sprintf("heldBytes: %T", img))
	}
	return int64(len(buf.pix))
}

// measured is what one part of a task took: the least thread CPU time of several runs (none where
// it cannot be had), and the bytes held at its peak, taken as the bytes of the image it starts
// from plus every byte it allocates (runtime.MemStats.TotalAlloc), which is the peak when, as here,
// it frees nothing it allocates before it ends.
type measured struct {
	cpu    time.Duration
	memory int64
}

// measure runs each of the runs functions prepare returns, on a thread of its own with the garbage
// collector off, so that what is measured is the function's own work (the collector's would land
// on other threads, and its assists on this one, at random).
func measure(t testing.TB, runs int, prepare func() (run func(), held int64)) measured {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	m := measured{cpu: -1}
	for range runs {
		run, held := prepare()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start, ok := threadCPU()
		run()
		end, _ := threadCPU()
		runtime.ReadMemStats(&after)
		if ok && (m.cpu < 0 || end-start < m.cpu) {
			m.cpu = end - start
		}
		m.memory = max(m.memory, held+int64(after.TotalAlloc-before.TotalAlloc))
	}
	return m
}

// decodeSteps is the decode step of est, with the turn upright that follows it for a JPEG's EXIF
// orientation, which Decode does too.
func decodeSteps(est Estimate) StepEstimate {
	s := est.Steps[0]
	if t := est.Steps[1]; strings.HasPrefix(t.Name, "turn upright") {
		s.Name += ", " + t.Name
		s.CPU += t.CPU
		s.Memory = max(s.Memory, t.Memory)
	}
	return s
}

// measureCase measures the part of c on a size×size input and returns it with the estimate's step.
func measureCase(t testing.TB, inputs *inputCache, c estimateCase, size, runs int) (measured, StepEstimate) {
	data := inputs.get(t, c.input, size)
	h, _, err := ReadHeader(bytes.NewReader(data), 0)
	if err != nil && c.input == "tiff" { // the directory after the pixels: Decode reads it whole
		var cfg image.Config
		cfg, err = tiff.DecodeConfig(bytes.NewReader(data))
		h = Header{Format: "tiff", Width: cfg.Width, Height: cfg.Height, Depth: depth(cfg.ColorModel)}
	}
	if err != nil {
		t.Fatal(err)
	}
	chain := c.chain(t, size)
	est := chain.Estimate(h)
	ctx := context.Background()
	switch c.part {
	case "decode":
		return measure(t, runs, func() (func(), int64) {
			return func() {
				if _, _, err := decode(ctx, bytes.NewReader(data), 0, nil); err != nil {
					t.Fatal(err)
				}
			}, 0
		}), decodeSteps(est)
	case "encode":
		img := decodeAny(t, data)
		p := &Processor{}
		format := chain.OutputFormat(h.Format)
		return measure(t, runs, func() (func(), int64) {
			in := cloneAny(img)
			return func() {
				if err := p.encode(ctx, io.Discard, in, format, 0); err != nil {
					t.Fatal(err)
				}
			}, heldBytes(in)
		}), est.Steps[len(est.Steps)-1]
	}
	img := decodeAny(t, data)
	o := chain.steps()[0]
	return measure(t, runs, func() (func(), int64) {
		in := cloneAny(img)
		return func() {
			if _, err := o.apply(ctx, in); err != nil {
				t.Fatal(err)
			}
		}, heldBytes(in)
	}), est.Steps[1]
}

// TestEstimateMatchesMeasured holds the cost model to what the code takes: for every decoder, encoder
// and operation at three sizes, the estimate's CPU time and peak memory must be within a factor of 2
// of the measured ones. CPU time is the thread's own (user and system), the least of three runs, so
// that other processes on a busy machine do not count; memory is what the part allocates on top of
// its input (see measured). Under the race detector the code runs several times slower, so only
// memory is compared there, at two sizes.
func TestEstimateMatchesMeasured(t *testing.T) {
	sizes := []int{256, 1024, 2048}
	switch {
	case raceEnabled:
		sizes = []int{256, 512} // memory only: enough to tell pixels from fixed buffers
	case testing.Short():
		sizes = []int{256, 512, 1024}
	}
	// Under the race detector sync.Pool drops what it is given at random, so buffers that are pooled
	// (the PNG encoder's, zlib's) are allocated afresh and the measure overstates the memory held.
	minMemRatio := 0.5
	if raceEnabled {
		minMemRatio = 0.25
	}
	_, cpuOK := threadCPU()
	checkCPU := cpuOK && !raceEnabled
	switch {
	case raceEnabled:
		t.Log("the race detector is on: comparing memory only, not CPU time (the detector slows the pixel loops several times over)")
	case !cpuOK:
		t.Log("no per-thread CPU time on this platform: comparing memory only")
	}
	verbose := os.Getenv("IMGMILL_ESTIMATE_TABLE") != ""
	var inputs inputCache
	for _, c := range estimateCases() {
		name := c.input + "/" + c.part
		if c.part == "op" || c.part == "encode" {
			name += "/" + strings.ReplaceAll(c.spec, "%", "")
		}
		t.Run(name, func(t *testing.T) {
			for _, size := range sizes {
				runs := 3
				if !checkCPU {
					runs = 1
				}
				got, est := measureCase(t, &inputs, c, size, runs)
				// Other processes sharing the core's caches and memory bandwidth slow the thread
				// down too: measure again, up to twice, when it took much longer than estimated.
				for retry := 0; checkCPU && retry < 2 && float64(est.CPU) < 0.5*float64(got.cpu); retry++ {
					again, _ := measureCase(t, &inputs, c, size, runs)
					got.cpu = min(got.cpu, again.cpu)
				}
				cpuRatio := float64(est.CPU) / float64(got.cpu)
				memRatio := float64(est.Memory) / float64(got.memory)
				if verbose {
					t.Logf("%-40s est %8.2f ms measured %8.2f ms (%.2f)  est %7.1f MB measured %7.1f MB (%.2f)",
						est.Name, ms(est.CPU), ms(got.cpu), cpuRatio, mb(est.Memory), mb(got.memory), memRatio)
				}
				if checkCPU && est.CPU == 0 && got.cpu > time.Millisecond {
					// Steps the model takes for free (a crop, a resize to the same size) only make a
					// new image header.
					t.Errorf("%s: estimated no CPU, measured %.2f ms", est.Name, ms(got.cpu))
				}
				if checkCPU && est.CPU > 0 && (cpuRatio < 0.5 || cpuRatio > 2) {
					t.Errorf("%s: estimated %.2f ms of CPU, measured %.2f ms: %.2f times", est.Name, ms(est.CPU), ms(got.cpu), cpuRatio)
				}
				if memRatio < minMemRatio || memRatio > 2 {
					t.Errorf("%s: estimated %.1f MB held, measured %.1f MB: %.2f times", est.Name, mb(est.Memory), mb(got.memory), memRatio)
				}
			}
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
func mb(n int64) float64         { return float64(n) / 1e6 }
