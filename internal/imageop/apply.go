package imageop

import (
	"context"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"math"

	"golang.org/x/image/draw"
)

// Apply decodes an image from src (any format Decode reads, turned upright), runs chain on it and
// writes the result to dst in chain.OutputFormat of the input's format, returning the result's
// Content-Type ("image/png" or "image/jpeg").
//
// MaxPixels bounds the input and every image the chain makes on the way: the sizes are worked out
// from the header, so a chain that would exceed it (a resize to 16384x16384 of a small image) fails
// with ErrTooLarge before anything is decoded. Errors are as Process's, and a crop that misses the
// image wraps ErrBadOp. On error, dst may have received partial output.
func (p *Processor) Apply(dst io.Writer, src io.Reader, chain Chain) (contentType string, err error) {
	return p.apply(context.Background(), dst, src, chain, "")
}

// ApplyContext is Apply that stops soon after ctx ends (within milliseconds for every operation, and
// for decoding and encoding but where a decoder works without reading: see docs/ARCHITECTURE.md),
// returning an error that wraps context.Cause(ctx)'s and ctx.Err(), so errors.Is(err,
// context.DeadlineExceeded) holds for a deadline.
func (p *Processor) ApplyContext(ctx context.Context, dst io.Writer, src io.Reader, chain Chain) (contentType string, err error) {
	return p.apply(ctx, dst, src, chain, "")
}

func (p *Processor) apply(ctx context.Context, dst io.Writer, src io.Reader, chain Chain, format string) (string, error) {
	ct, err := p.run(ctx, dst, src, chain, format)
	if err != nil {
		// Whatever failed once ctx ended (a read, a write, a loop) failed because it ended.
		if serr := stopped(ctx); serr != nil {
			return "", serr
		}
	}
	return ct, err
}

func (p *Processor) run(ctx context.Context, dst io.Writer, src io.Reader, chain Chain, format string) (string, error) {
	maxPixels := pixelLimit(p.MaxPixels)
	steps := chain.steps()
	img, input, err := decode(ctx, src, maxPixels, func(w, h int) error {
		_, _, err := planSizes(steps, w, h, maxPixels)
		return err
	})
	if err != nil {
		return "", err
	}
	for _, o := range steps {
		b := img.Bounds()
		// Checked again on the decoded image, whose size may differ from its header's (a GIF's
		// first frame may be smaller than the screen).
		if _, _, err := planSizes([]op{o}, b.Dx(), b.Dy(), maxPixels); err != nil {
			return "", err
		}
		if err := stopped(ctx); err != nil {
			return "", err
		}
		if img, err = o.apply(ctx, img); err != nil {
			return "", err
		}
	}
	if format == "" {
		format = chain.OutputFormat(input)
	}
	if err := p.encode(ctx, dst, img, format, chain.quality); err != nil {
		return "", fmt.Errorf("imageop: encoding %s: %w", format, err)
	}
	return ContentType(format), nil
}

// planSizes follows a w×h image through steps and returns its final size, or an error wrapping
// ErrTooLarge for the first step that would make an image of more than maxPixels pixels (0: no
// limit), or ErrBadOp for one that cannot apply.
func planSizes(steps []op, w, h int, maxPixels int64) (int, int, error) {
	for _, o := range steps {
		nw, nh, err := o.size(w, h)
		if err != nil {
			return 0, 0, err
		}
		if maxPixels > 0 && int64(nw)*int64(nh) > maxPixels {
			return 0, 0, &imageError{kind: ErrTooLarge, msg: fmt.Sprintf(
				"%s would make the %dx%d image %dx%d pixels, over the limit of %d pixels%s in all: choose a smaller size",
				o, w, h, nw, nh, maxPixels, megapixels(maxPixels))}
		}
		w, h = nw, nh
	}
	return w, h, nil
}

// size is the size o makes of a w×h image.
func (o op) size(w, h int) (int, int, error) {
	switch o.kind {
	case opResize:
		dw, dh, _ := o.resizeGeometry(w, h)
		return dw, dh, nil
	case opThumbnail:
		dw, dh := o.thumbnailSize(w, h)
		return dw, dh, nil
	case opCrop:
		r, err := o.cropRect(w, h)
		return r.Dx(), r.Dy(), err
	case opRotate:
		if o.w != 180 {
			return h, w, nil
		}
	}
	return w, h, nil
}

// apply runs o on img, in place where it can; img must not be used afterwards. Once ctx ends it
// stops with an error from stopped, leaving img partly changed.
func (o op) apply(ctx context.Context, img image.Image) (image.Image, error) {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	if w == 0 || h == 0 {
		return img, nil
	}
	switch o.kind {
	case opSwap:
		return swapRedGreen(ctx, img)
	case opGrayscale:
		return grayscale(ctx, img)
	case opInvert:
		return applyLUT(ctx, img, invertLUT())
	case opBrightness:
		return applyLUT(ctx, img, brightnessLUT(o.f))
	case opContrast:
		return applyLUT(ctx, img, contrastLUT(o.f))
	case opGamma:
		return applyLUT(ctx, img, gammaLUT(o.f))
	case opBlur:
		return blur(ctx, img, o.f)
	case opSharpen:
		return sharpen(ctx, img, o.f, o.g)
	case opResize:
		dw, dh, r := o.resizeGeometry(w, h)
		if dw == w && dh == h && r.Dx() == w && r.Dy() == h {
			return img, nil
		}
		return resample(ctx, img, r, dw, dh, draw.CatmullRom)
	case opThumbnail:
		dw, dh := o.thumbnailSize(w, h)
		if dw == w && dh == h {
			return img, nil
		}
		return resample(ctx, img, image.Rect(0, 0, w, h), dw, dh, draw.BiLinear)
	case opCrop:
		r, err := o.cropRect(w, h)
		if err != nil {
			return nil, err
		}
		return cropTo(ctx, img, r)
	case opRotate:
		switch o.w {
		case 90:
			return orient(ctx, img, orientRotate90)
		case 270:
			return orient(ctx, img, orientRotate270)
		}
		return orient(ctx, img, orientRotate180)
	case opFlip:
		if o.vertical {
			return orient(ctx, img, orientFlipV)
		}
		return orient(ctx, img, orientFlipH)
	}
	return nil, fmt.Errorf("imageop: operation %v not implemented", o) // a bug: ParseChain made it
}

// resizeGeometry is the size a resize makes of a w×h image and the part of the image it scales
// (all of it, but for fill).
func (o op) resizeGeometry(w, h int) (dw, dh int, src image.Rectangle) {
	src = image.Rect(0, 0, w, h)
	fw, fh := float64(w), float64(h)
	switch o.mode {
	case modeExact:
		return o.w, o.h, src
	case modeFill:
		// Scale to cover the box, and take from the source only the part that lands in it.
		s := max(float64(o.w)/fw, float64(o.h)/fh)
		cw := min(w, max(1, int(math.Round(float64(o.w)/s))))
		ch := min(h, max(1, int(math.Round(float64(o.h)/s))))
		x0, y0 := (w-cw)/2, (h-ch)/2
		return o.w, o.h, image.Rect(x0, y0, x0+cw, y0+ch)
	}
	// Fit; an open side (0) does not constrain, and neither side may pass MaxSide.
	s := min(MaxSide/fw, MaxSide/fh)
	if o.w > 0 {
		s = min(s, float64(o.w)/fw)
	}
	if o.h > 0 {
		s = min(s, float64(o.h)/fh)
	}
	return max(1, int(math.Round(fw*s))), max(1, int(math.Round(fh*s))), src
}

// thumbnailSize fits w×h inside the box, never enlarging.
func (o op) thumbnailSize(w, h int) (int, int) {
	s := min(float64(o.w)/float64(w), float64(o.h)/float64(h))
	if s >= 1 {
		return w, h
	}
	return max(1, int(math.Round(float64(w)*s))), max(1, int(math.Round(float64(h)*s)))
}

// cropRect is the part of a w×h image a crop keeps, clipped to the image.
func (o op) cropRect(w, h int) (image.Rectangle, error) {
	if o.centered {
		cw, ch := min(o.w, w), min(o.h, h)
		x0, y0 := (w-cw)/2, (h-ch)/2
		return image.Rect(x0, y0, x0+cw, y0+ch), nil
	}
	r := image.Rect(o.x, o.y, o.x+o.w, o.y+o.h).Intersect(image.Rect(0, 0, w, h))
	if r.Empty() {
		return image.Rectangle{}, badOp("%s lies outside the %dx%d image", o, w, h)
	}
	return r, nil
}

// encode writes img to w as format, "png" or "jpeg"; quality 0 means the Processor's. It stops
// once ctx ends.
func (p *Processor) encode(ctx context.Context, w io.Writer, img image.Image, format string, quality int) (err error) {
	if format == "jpeg" {
		if quality == 0 {
			quality = p.JPEGQuality
		}
		if quality <= 0 || quality > 100 {
			quality = DefaultJPEGQuality
		}
		m, ferr := forJPEG(ctx, img)
		if ferr != nil {
			return ferr
		}
		defer func() {
			if r := recover(); r != nil {
				a, ok := r.(abortEncode)
				if !ok {
					panic(r)
				}
				err = a.err
			}
		}()
		return jpeg.Encode(&jpegWriter{ctxWriter{ctx, w}}, m, &jpeg.Options{Quality: quality})
	}
	m, err := forPNG(ctx, img)
	if err != nil {
		return err
	}
	return p.pngEnc.get(p.PNGCompression).EncodeContext(ctx, &ctxWriter{ctx, w}, m)
}

// forPNG converts the types the PNG encoder hands to image/png, which reads them only through At,
// pixel by pixel.
func forPNG(ctx context.Context, img image.Image) (image.Image, error) {
	switch img.(type) {
	case *image.YCbCr, *image.NYCbCrA, *image.CMYK:
		return toNRGBA(ctx, img)
	}
	return img, nil
}

// forJPEG returns img in a form the JPEG encoder reads fast (YCbCr, Gray, RGBA), with transparent
// pixels flattened onto white, since JPEG has no alpha (the encoder alone would make them black).
// It works in place where it can; img must not be used afterwards.
func forJPEG(ctx context.Context, img image.Image) (image.Image, error) {
	switch m := img.(type) {
	case *image.YCbCr, *image.Gray:
		return img, nil
	case *image.RGBA:
		return m, rows(ctx, &image.NRGBA{Pix: m.Pix, Stride: m.Stride, Rect: m.Rect}, func(row []byte) {
			for i := 0; i+4 <= len(row); i += 4 {
				p := row[i : i+4 : i+4]
				if a := p[3]; a != 255 { // premultiplied: over white adds 255-a to each channel
					w := 255 - uint32(a)
					p[0] = uint8(min(uint32(p[0])+w, 255))
					p[1] = uint8(min(uint32(p[1])+w, 255))
					p[2] = uint8(min(uint32(p[2])+w, 255))
					p[3] = 255
				}
			}
		})
	case *image.Paletted:
		// The encoder reads paletted images per pixel, but they are small, usually.
		return mapPalette(m, func(p *[4]byte) { flatten(p[:]) }), nil
	}
	m, err := toNRGBA(ctx, img)
	if err != nil {
		return nil, err
	}
	err = rows(ctx, m, func(row []byte) {
		for i := 0; i+4 <= len(row); i += 4 {
			flatten(row[i : i+4 : i+4])
		}
	})
	return &image.RGBA{Pix: m.Pix, Stride: m.Stride, Rect: m.Rect}, err // opaque now, so the same bytes
}

// flatten composes a straight RGBA pixel onto white.
func flatten(p []byte) {
	a := uint32(p[3])
	if a == 255 {
		return
	}
	for c := range 3 {
		p[c] = uint8((uint32(p[c])*a + 255*(255-a) + 127) / 255)
	}
	p[3] = 255
}

// CheckSize follows a w×h image (as its header says) through the chain and refuses, before anything is
// decoded or stored, a chain that would make an image of more than maxPixels pixels (ErrTooLarge; 0: no
// limit) or that cannot apply to an image of that size (ErrBadOp, e.g. a crop outside it). A JPEG's
// EXIF orientation may swap w and h; pixel counts, and so this check, do not change with it.
func (c Chain) CheckSize(w, h int, maxPixels int64) error {
	_, _, err := planSizes(c.steps(), w, h, maxPixels)
	return err
}

// ParsePNGCompression reads a PNG compression level by name: default, speed, best or none.
func ParsePNGCompression(name string) (png.CompressionLevel, error) {
	switch name {
	case "", "default":
		return png.DefaultCompression, nil
	case "speed":
		return png.BestSpeed, nil
	case "best":
		return png.BestCompression, nil
	case "none":
		return png.NoCompression, nil
	}
	return 0, fmt.Errorf("PNG compression %q: want default, speed, best or none", name)
}

// PNGCompressionName is the name ParsePNGCompression takes for level.
func PNGCompressionName(level png.CompressionLevel) string {
	switch level {
	case png.BestSpeed:
		return "speed"
	case png.BestCompression:
		return "best"
	case png.NoCompression:
		return "none"
	}
	return "default"
}
