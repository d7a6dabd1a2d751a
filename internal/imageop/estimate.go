package imageop

import (
	"fmt"
	"image/png"
	"math"
	"time"
)

// Estimate is what running a chain on an image is expected to cost, worked out from its header
// alone, so that a task too costly to run can be refused before anything is stored, and a worker can
// give a task a deadline and admit it by its memory.
type Estimate struct {
	CPU    time.Duration  // CPU time on one core of decode + every step + encode
	Memory int64          // peak bytes held at once (input, output and scratch buffers of the costliest moment, decoder included)
	Steps  []StepEstimate // "decode <format> WxH", "turn upright ..." for a JPEG's EXIF orientation, each operation as its canonical spec "on WxH", "encode <format> WxH"
}

// StepEstimate is one step's part of an Estimate: its CPU time, and the bytes held while it runs
// (the image it starts from included).
type StepEstimate struct {
	Name   string
	CPU    time.Duration
	Memory int64
}

// Costliest returns the name of the steps whose CPU time adds up to the most (steps of the same name,
// an operation repeated on the same size, count together), the CPU time of one of them, and how many
// there are.
func (e Estimate) Costliest() (name string, each time.Duration, times int) {
	var best time.Duration
	for i, s := range e.Steps {
		n, seen := 0, false
		for j, o := range e.Steps {
			if o.Name == s.Name {
				seen = seen || j < i
				n++
			}
		}
		if !seen && time.Duration(n)*s.CPU > best {
			best, name, each, times = time.Duration(n)*s.CPU, s.Name, s.CPU, n
		}
	}
	return name, each, times
}

// Peak returns the step during which the most memory is held.
func (e Estimate) Peak() StepEstimate {
	var best StepEstimate
	for _, s := range e.Steps {
		if s.Memory > best.Memory {
			best = s
		}
	}
	return best
}

// The cost model's constants: nanoseconds of CPU time on one core per unit of work, measured on the
// development machine (x86-64, Go 1.26; TestEstimateMatchesMeasured compares them with what the code
// takes now, BenchmarkEstimate too), and bytes of the buffers the code allocates. Separable filters
// (blur, sharpen, resize, thumbnail) are counted by the taps they multiply: per source pixel loaded,
// per output of the horizontal pass and tap, per output of the vertical pass and tap, per output
// pixel written.
const (
	nsDecodePNG8   = 29.0 // per pixel, 8-bit RGBA, photo-like
	nsDecodePNG16  = 80.0 // per pixel, 16-bit RGBA, whose low bytes are noise
	nsDecodeJPEG   = 9.0  // per pixel, baseline 4:2:0
	nsDecodeGIF    = 6.0
	nsDecodeWebP   = 15.0 // not measured (Go has no WebP encoder to make one): about a JPEG's and a half
	nsDecodeBMP    = 1.2
	nsDecodeTIFF   = 32.0 // per pixel, deflate-compressed strips
	nsEncodeJPEG   = 22.0 // per pixel, from YCbCr or RGBA
	nsEncodePNG8   = 60.0 // per pixel at the default compression
	nsEncodePNG16  = 290.0
	nsEncodePNG1   = 40.0 // paletted or gray, a byte a pixel
	nsSwap8        = 0.6  // per pixel, in place
	nsSwap16       = 0.45
	nsLUT          = 2.0  // per pixel: invert, brightness, contrast, gamma, grayscale
	nsFromYCbCr    = 2.5  // per pixel converted to RGBA
	nsFrom16       = 1.5  // per pixel converted from 16-bit to NRGBA
	nsLoadRow      = 4.5  // per source pixel a separable filter loads and premultiplies
	nsTapKernel    = 0.85 // per output pixel and tap of a Gaussian's horizontal pass
	nsTapResample  = 1.7  // per output pixel and tap of a resampling horizontal pass
	nsTapVertical  = 0.85 // per output pixel and tap of the vertical pass
	nsEmit         = 4.6  // per output pixel unpremultiplied
	nsSharpen      = 3.0  // per pixel of the unsharp mask's own arithmetic
	nsTranspose    = 3.0  // per pixel of a quarter turn of 4-byte pixels
	nsMirror       = 1.0  // per 4 bytes of a flip or half turn
	nsFlipH        = 1.6  // per pixel of a horizontal flip of 4-byte pixels
	nsMirror1      = 0.5  // per pixel of a flip or half turn of 1-byte pixels
	nsMirror16     = 3.5  // per pixel of a horizontal flip or half turn of 8-byte pixels
	decoderScratch = 32 << 10
	pngEncScratch  = 1 << 20 // zlib's window and hash chains, rows, the batch and chunk buffers
	// tiffHeld is how many times its pixels' bytes decoding a TIFF holds: the file, read whole, the
	// garbage of the buffer it grew in, and the strips decompressed one at a time.
	tiffHeld = 5
)

// pngLevelFactor scales nsEncodePNG8 and nsEncodePNG16 for the Processor's compression level.
func pngLevelFactor(level int) float64 {
	switch png.CompressionLevel(level) {
	case png.NoCompression: // stored blocks, no filtering
		return 0.05
	case png.BestSpeed:
		return 0.9
	case png.BestCompression:
		return 1.15
	}
	return 1
}

// pixKind is how the image is held between steps, as far as cost goes.
type pixKind uint8

const (
	kindRGBA8    pixKind = iota // NRGBA, RGBA, and what converts to them alike (paletted, gray)
	kindRGBA16                  // NRGBA64, RGBA64 (16-bit PNG and TIFF)
	kindYCbCr                   // a JPEG's or a lossy WebP's planes
	kindGray                    // a JPEG made grayscale keeps its Y plane
	kindPaletted                // a GIF: tone operations and swap change only its palette
)

// bytesPerPixel of each kind, as the estimate counts them (a JPEG's planes between 4:2:0's 1.5 and
// 4:2:2's 2 bytes a pixel; 4:4:4 takes 3).
func (k pixKind) bytesPerPixel() float64 {
	switch k {
	case kindRGBA16:
		return 8
	case kindYCbCr:
		return 1.75
	case kindGray, kindPaletted:
		return 1
	}
	return 4
}

// modelImage is the image the estimate follows through the chain.
type modelImage struct {
	w, h int
	kind pixKind
	held int64 // bytes of the buffer behind it (a crop keeps its whole source's)
}

func (m modelImage) px() float64 { return float64(m.w) * float64(m.h) }

func bytesOf(k pixKind, w, h int) int64 { return int64(k.bytesPerPixel() * float64(w) * float64(h)) }

// Estimate follows an image of header h through the chain (sizes as Apply works them out), with the
// Processor's default settings but for JPEG quality, which matters little.
func (c Chain) Estimate(h Header) Estimate {
	return c.estimate(h, 0)
}

// Estimate is Chain.Estimate for p's PNG compression level.
func (p *Processor) Estimate(c Chain, h Header) Estimate {
	return c.estimate(h, int(p.PNGCompression))
}

func (c Chain) estimate(h Header, pngLevel int) Estimate {
	var e Estimate
	add := func(name string, ns float64, mem int64) {
		cpu := time.Duration(math.Min(ns, math.MaxInt64/2))
		e.Steps = append(e.Steps, StepEstimate{Name: name, CPU: cpu, Memory: mem})
		e.CPU = min(e.CPU+cpu, math.MaxInt64/2)
		e.Memory = max(e.Memory, mem)
	}
	img := decodeModel(h)
	add(fmt.Sprintf("decode %s %dx%d", h.Format, h.Width, h.Height), decodeNS(h)*img.px(), decodeHeld(h, img))
	if h.Orientation > orientNormal && h.Orientation <= orientRotate270 {
		// Decode turns the image upright: into a new NRGBA, as the planes have no pixel buffer.
		name := fmt.Sprintf("turn upright (EXIF orientation %d) %dx%d", h.Orientation, img.w, img.h)
		ns, mem, out := toRGBA8(img)
		if h.Orientation >= orientTranspose {
			ns += nsTranspose * img.px()
			out.w, out.h = img.h, img.w
		} else {
			ns += nsFlipH * img.px()
		}
		img = out
		add(name, ns, mem)
	}
	for _, o := range c.steps() {
		name := fmt.Sprintf("%s on %dx%d", o, img.w, img.h)
		var ns float64
		var mem int64
		ns, mem, img = o.model(img)
		add(name, ns, mem)
	}
	format := c.OutputFormat(h.Format)
	ns, mem := encodeModel(img, format, pngLevel)
	add(fmt.Sprintf("encode %s %dx%d", format, img.w, img.h), ns, mem)
	return e
}

// decodeModel is the image a decoder makes of h.
func decodeModel(h Header) modelImage {
	k := kindRGBA8
	switch {
	case h.Depth == 16:
		k = kindRGBA16
	case h.Format == "jpeg":
		k = kindYCbCr
	}
	if h.Format == "gif" {
		k = kindPaletted
	}
	m := modelImage{w: h.Width, h: h.Height, kind: k}
	m.held = bytesOf(k, m.w, m.h)
	return m
}

// decodeHeld is the bytes decoding m holds at its peak.
func decodeHeld(h Header, m modelImage) int64 {
	if h.Format == "tiff" {
		return tiffHeld*m.held + decoderScratch
	}
	return m.held + decoderScratch
}

func decodeNS(h Header) float64 {
	switch h.Format {
	case "png":
		if h.Depth == 16 {
			return nsDecodePNG16
		}
		return nsDecodePNG8
	case "jpeg":
		return nsDecodeJPEG
	case "gif":
		return nsDecodeGIF
	case "webp":
		return nsDecodeWebP
	case "bmp":
		return nsDecodeBMP
	case "tiff":
		if h.Depth == 16 {
			return 2 * nsDecodeTIFF
		}
		return nsDecodeTIFF
	}
	return nsDecodePNG8
}

// toRGBA8 is what converting m to NRGBA costs, in place or into a new buffer, as toNRGBA does.
func toRGBA8(m modelImage) (ns float64, mem int64, out modelImage) {
	out = modelImage{w: m.w, h: m.h, kind: kindRGBA8}
	switch m.kind {
	case kindRGBA8:
		return 0, m.held, m
	case kindYCbCr:
		ns = nsFromYCbCr
	default:
		ns = nsFrom16
	}
	out.held = bytesOf(kindRGBA8, m.w, m.h)
	return ns * m.px(), m.held + out.held, out
}

// model is what o costs on m: CPU nanoseconds, bytes held while it runs, and the image it makes.
func (o op) model(m modelImage) (float64, int64, modelImage) {
	if m.w == 0 || m.h == 0 {
		return 0, m.held, m
	}
	px := m.px()
	switch o.kind {
	case opSwap:
		switch m.kind {
		case kindRGBA16:
			return nsSwap16 * px, m.held, m
		case kindGray, kindPaletted:
			return 0, m.held, m
		}
		ns, mem, out := toRGBA8(m)
		return ns + nsSwap8*px, mem, out
	case opGrayscale:
		switch m.kind {
		case kindYCbCr: // keeps the Y plane
			return 0, m.held, modelImage{w: m.w, h: m.h, kind: kindGray, held: m.held}
		case kindGray, kindPaletted:
			return 0, m.held, m
		}
		ns, mem, out := toRGBA8(m)
		return ns + nsLUT*px, mem, out
	case opInvert, opBrightness, opContrast, opGamma:
		switch m.kind {
		case kindGray:
			return nsLUT / 4 * px, m.held, m
		case kindPaletted:
			return 0, m.held, m
		}
		ns, mem, out := toRGBA8(m)
		return ns + nsLUT*px, mem, out
	case opBlur, opSharpen:
		ns, mem, out := toRGBA8(m)
		bns, scratch := blurModel(m.w, m.h, o.f)
		ns += bns
		if o.kind == opSharpen {
			ns += nsSharpen * px
		}
		return ns, mem + scratch, out
	case opResize:
		dw, dh, r := o.resizeGeometry(m.w, m.h)
		if dw == m.w && dh == m.h && r.Dx() == m.w && r.Dy() == m.h {
			return 0, m.held, m
		}
		return resizeModel(m, r.Dx(), r.Dy(), dw, dh, 2) // Catmull-Rom
	case opThumbnail:
		dw, dh := o.thumbnailSize(m.w, m.h)
		if dw == m.w && dh == m.h {
			return 0, m.held, m
		}
		return resizeModel(m, m.w, m.h, dw, dh, 1) // bilinear
	case opCrop:
		r, err := o.cropRect(m.w, m.h)
		if err != nil {
			return 0, m.held, m
		}
		return 0, m.held, modelImage{w: r.Dx(), h: r.Dy(), kind: m.kind, held: m.held}
	case opRotate, opFlip:
		if o.kind == opRotate && o.w != 180 {
			k := m.kind
			ns := nsTranspose * px
			if k == kindYCbCr {
				k, ns = kindRGBA8, ns+nsFromYCbCr*px
			}
			out := modelImage{w: m.h, h: m.w, kind: k, held: bytesOf(k, m.h, m.w)}
			switch k {
			case kindRGBA16:
				ns *= 2.5
			case kindPaletted, kindGray:
				ns *= 0.45
			}
			return ns, m.held + out.held, out
		}
		ns, mem, out := 0.0, m.held, m
		if m.kind == kindYCbCr {
			ns, mem, out = toRGBA8(m)
		}
		mirror := nsMirror * out.kind.bytesPerPixel() / 4
		horizontal := !(o.kind == opFlip && o.vertical) // reverses rows
		switch {
		case out.kind.bytesPerPixel() == 1:
			mirror = nsMirror1
		case out.kind == kindRGBA16 && horizontal:
			mirror = nsMirror16 // reversing a row of 8-byte pixels goes a byte at a time
		case o.kind == opFlip && horizontal:
			mirror = nsFlipH // reverses each row in place, half of it read twice
		}
		return ns + mirror*px, mem, out
	}
	return 0, m.held, m
}

// taps is about how many source pixels one output of a resampling filter of the given support reads
// along an axis of sn source pixels made dn: the support's width, stretched when shrinking.
func tapsFor(sn, dn int, support float64) float64 {
	scale := max(float64(sn)/float64(dn), 1)
	return min(2*support*scale, float64(sn))
}

// separableNS is what separable costs: sw×sh source pixels loaded, dw×dh written, with ht and vt taps
// an output along each axis; kernel is a Gaussian's fast horizontal pass.
func separableNS(sw, sh, dw, dh int, ht, vt float64, kernel bool) float64 {
	s, d := float64(sw)*float64(sh), float64(dw)*float64(dh)
	tapH := nsTapResample
	if kernel {
		tapH = nsTapKernel
	}
	return s*nsLoadRow + float64(sh)*float64(dw)*ht*tapH + d*vt*nsTapVertical + d*nsEmit
}

// separableScratch is the rows separable keeps: a source row as bytes and premultiplied, and the
// horizontal passes of rows rows of dw outputs (as int32 per channel).
func separableScratch(sw, dw int, rows float64) int64 {
	return int64(20*float64(sw) + 16*float64(dw)*(rows+2))
}

// blurModel is the CPU time and scratch memory of blurInto on a w×h image, following what it does:
// an exact Gaussian of 2⌈3σ⌉+1 taps up to maxExactSigma, else shrink, blur what remains, enlarge.
func blurModel(w, h int, sigma float64) (float64, int64) {
	sw, sh := w, h
	if sigma > maxExactSigma {
		sw, sh = shrunk(w, sigma), shrunk(h, sigma)
	}
	if sw == w && sh == h {
		t := float64(2*gaussRadius(sigma) + 1)
		ht, vt := min(t, float64(w)), min(t, float64(h))
		return separableNS(w, h, w, h, ht, vt, w > int(t)), separableScratch(w, w, vt)
	}
	rest := func(n, sn int) float64 {
		if n == sn {
			return sigma
		}
		f := float64(n) / float64(sn)
		return math.Sqrt(max(sigma*sigma/(f*f)-1.0/3, 0.25))
	}
	gx, gy := float64(2*gaussRadius(rest(w, sw))+1), float64(2*gaussRadius(rest(h, sh))+1)
	ns := separableNS(w, h, sw, sh, tapsFor(w, sw, 1), tapsFor(h, sh, 1), false) +
		separableNS(sw, sh, sw, sh, min(gx, float64(sw)), min(gy, float64(sh)), sw > int(gx)) +
		separableNS(sw, sh, w, h, 2, 2, false)
	small := bytesOf(kindRGBA8, sw, sh)
	return ns, small + separableScratch(w, w, max(gy, tapsFor(h, sh, 1)))
}

// resizeModel is resample's cost: sw×sh pixels of m scaled to dw×dh, with a kernel of the given
// support, into a new NRGBA.
func resizeModel(m modelImage, sw, sh, dw, dh int, support float64) (float64, int64, modelImage) {
	ht, vt := tapsFor(sw, dw, support), tapsFor(sh, dh, support)
	ns := separableNS(sw, sh, dw, dh, ht, vt, false)
	if m.kind == kindYCbCr {
		ns += nsFromYCbCr * float64(sw) * float64(sh)
	}
	out := modelImage{w: dw, h: dh, kind: kindRGBA8, held: bytesOf(kindRGBA8, dw, dh)}
	// separable keeps the fewer of the rows one output needs and the outputs one source row feeds.
	rows := min(vt, vt*float64(dh)/float64(sh)+1)
	return ns, m.held + out.held + separableScratch(sw, dw, rows), out
}

// encodeModel is what writing m as format costs.
func encodeModel(m modelImage, format string, pngLevel int) (float64, int64) {
	px := m.px()
	if format == "jpeg" {
		ns, mem := 0.0, m.held
		switch m.kind {
		case kindRGBA16:
			ns, mem, _ = toRGBA8(m)
		case kindPaletted:
			ns = nsEncodeJPEG / 2 * px // image/jpeg reads paletted pixels one interface call at a time
		}
		return ns + nsEncodeJPEG*px, mem + decoderScratch
	}
	ns, mem := 0.0, m.held
	if m.kind == kindYCbCr {
		ns, mem, _ = toRGBA8(m)
	}
	perPixel, bpp := nsEncodePNG8, int64(4)
	switch m.kind {
	case kindRGBA16:
		perPixel, bpp = nsEncodePNG16, 8
	case kindPaletted, kindGray:
		perPixel, bpp = nsEncodePNG1, 1
	}
	return ns + perPixel*pngLevelFactor(pngLevel)*px, mem + pngEncScratch + 3*bpp*int64(m.w)
}
