package imageop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	"golang.org/x/image/bmp"
	"golang.org/x/image/tiff"
	"golang.org/x/image/webp"
)

// Formats lists the formats Decode reads, as Header.Format and Decode name them.
func Formats() []string { return []string{"png", "jpeg", "gif", "webp", "bmp", "tiff"} }

// ContentType is the media type of an image format as Decode and Sniff name it ("png" is
// "image/png"), or "" for an unknown one.
func ContentType(format string) string {
	switch format {
	case "png", "jpeg", "gif", "webp", "bmp", "tiff":
		return "image/" + format
	}
	return ""
}

// pixelLimit is the limit a MaxPixels-style setting means: 0 is DefaultMaxPixels, negative none
// (returned as 0, which CheckSize does not check).
func pixelLimit(maxPixels int64) int64 {
	switch {
	case maxPixels == 0:
		return DefaultMaxPixels
	case maxPixels < 0:
		return 0
	}
	return maxPixels
}

// Decode reads a PNG, JPEG, GIF (its first frame), WebP, BMP or TIFF from r and returns it with its
// format's name. It reads the header first and refuses an image of more than maxPixels pixels
// (0 means DefaultMaxPixels, negative no limit) with an error wrapping ErrTooLarge before decoding,
// so before allocating its pixels. A JPEG is turned upright as its EXIF orientation says.
//
// Input that is not a decodable image gives an error wrapping ErrDecode; a read error of r is
// returned wrapped as it is, not as ErrDecode.
func Decode(r io.Reader, maxPixels int64) (image.Image, string, error) {
	return decode(context.Background(), r, pixelLimit(maxPixels), nil)
}

// DecodeContext is Decode that stops once ctx ends (reading r fails, and the error wraps ctx's).
func DecodeContext(ctx context.Context, r io.Reader, maxPixels int64) (image.Image, string, error) {
	return decode(ctx, r, pixelLimit(maxPixels), nil)
}

// decode is Decode with the limit already resolved (0: none). check, if not nil, is called with the
// upright width and height once they are known and before the pixels are decoded; its error is
// returned as is. Once ctx ends, reading src fails, and so decoding stops (an error wrapping
// stopped's).
func decode(ctx context.Context, src io.Reader, maxPixels int64, check func(w, h int) error) (image.Image, string, error) {
	er := &errReader{r: &ctxReader{ctx, src}}
	h, prefix, err := ReadHeader(er, MaxHeaderLen)
	if err != nil {
		if er.err != nil {
			return nil, "", fmt.Errorf("imageop: reading image: %w", er.err)
		}
		var ie *imageError
		if format, _ := Sniff(prefix); format == "tiff" && errors.As(err, &ie) && ie.tooLong {
			return decodeWholeTIFF(ctx, io.MultiReader(bytes.NewReader(prefix), er), er, maxPixels, check)
		}
		if errors.Is(err, ErrDecode) {
			return nil, "", err
		}
		return nil, "", fmt.Errorf("imageop: reading image: %w", err)
	}
	if err := h.CheckSize(0, maxPixels); err != nil {
		return nil, "", err
	}
	o := max(h.Orientation, orientNormal)
	if check != nil {
		w, ht := h.Width, h.Height
		if o >= orientTranspose {
			w, ht = ht, w
		}
		if err := check(w, ht); err != nil {
			return nil, "", err
		}
	}
	// The structure's budget is checked again here for tasks whose upload did not check it.
	sr := CheckStructure(h.Format, io.MultiReader(bytes.NewReader(prefix), er))
	img, err := decodeFormat(h.Format, sr)
	if err != nil {
		// Decoders report reader failures and malformed data the same way; errReader tells them
		// apart. A clean io.EOF is not recorded: a truncated image is bad input, not an I/O failure.
		if er.err != nil {
			return nil, "", fmt.Errorf("imageop: reading image: %w", er.err)
		}
		if serr := sr.Err(); serr != nil {
			return nil, "", fmt.Errorf("%w: %w", ErrDecode, serr)
		}
		return nil, "", unreadable(formatName(h.Format), "%v", err)
	}
	if img, err = orient(ctx, img, o); err != nil {
		return nil, "", err
	}
	return img, h.Format, nil
}

func decodeFormat(format string, r io.Reader) (image.Image, error) {
	switch format {
	case "png":
		return png.Decode(r)
	case "jpeg":
		return jpeg.Decode(r)
	case "gif":
		return gif.Decode(r) // the first frame
	case "webp":
		return webp.Decode(r)
	case "bmp":
		return bmp.Decode(r)
	case "tiff":
		return tiff.Decode(r)
	}
	return nil, fmt.Errorf("unknown format %q", format)
}

// decodeWholeTIFF decodes a TIFF whose size is stored past what ReadHeader reads: the TIFF decoder
// holds the whole file in memory anyway, so it is read first and its size checked from there. A
// file larger than the largest allowed image could take, at 16 bytes a pixel, is refused unread.
func decodeWholeTIFF(ctx context.Context, r io.Reader, er *errReader, maxPixels int64, check func(w, h int) error) (image.Image, string, error) {
	limit := int64(-1)
	if maxPixels > 0 && maxPixels < (1<<62)/16 {
		limit = 16*maxPixels + MaxHeaderLen
		r = io.LimitReader(r, limit+1)
	}
	data, err := io.ReadAll(r)
	if er.err != nil {
		return nil, "", fmt.Errorf("imageop: reading image: %w", er.err)
	}
	if err != nil {
		return nil, "", fmt.Errorf("imageop: reading image: %w", err)
	}
	if limit >= 0 && int64(len(data)) > limit {
		return nil, "", &imageError{kind: ErrTooLarge, msg: fmt.Sprintf(
			"TIFF file over %d bytes, more than an image of at most %d pixels%s takes", limit, maxPixels, megapixels(maxPixels))}
	}
	cfg, err := tiff.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return nil, "", unreadable("TIFF", "%v", err)
	}
	h := Header{Format: "tiff", Width: cfg.Width, Height: cfg.Height, Depth: depth(cfg.ColorModel)}
	if err := h.CheckSize(0, maxPixels); err != nil {
		return nil, "", err
	}
	if check != nil {
		if err := check(h.Width, h.Height); err != nil {
			return nil, "", err
		}
	}
	// The decoder reads the strips or tiles one at a time, through one that fails once ctx ends.
	br := bytes.NewReader(data)
	img, err := tiff.Decode(&ctxReaderAt{ctxReader{ctx, br}, br})
	if err != nil {
		if serr := stopped(ctx); serr != nil {
			return nil, "", fmt.Errorf("imageop: reading image: %w", serr)
		}
		return nil, "", unreadable("TIFF", "%v", err)
	}
	return img, "tiff", nil
}
