package frontend

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/image/draw"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/pngenc"
)

// Thumbnails (?w=N on /api/tasks/{id}/result and /source): the page's previews, so that it never
// fetches a full image to fill a small box.
const (
	// ThumbParam is the query parameter asking for a thumbnail at most that many pixels wide, from
	// MinThumbWidth to MaxThumbWidth.
	ThumbParam    = "w"
	MinThumbWidth = 16
	MaxThumbWidth = 1024
	// Headers of a thumbnail (and, for X-Image-Bytes, of a full image): the full image's size in
	// pixels and bytes, so that a page can show them without fetching it.
	ImageWidthHeader  = "X-Image-Width"
	ImageHeightHeader = "X-Image-Height"
	ImageBytesHeader  = "X-Image-Bytes"
)

// thumbCacheBytes bounds the thumbnails kept in memory; thumbQuality is the JPEG quality of an opaque
// thumbnail's.
const (
	thumbCacheBytes = 32 << 20
	thumbQuality    = 82
)

// thumbWidth reads the w parameter of r: 0 when absent.
func thumbWidth(r *http.Request) (int, error) {
	v := r.URL.Query().Get(ThumbParam)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < MinThumbWidth || n > MaxThumbWidth {
		return 0, httpapi.Errorf(http.StatusBadRequest, "%s=%q: give a thumbnail width from %d to %d pixels, or leave %s out for the full image",
			ThumbParam, v, MinThumbWidth, MaxThumbWidth, ThumbParam)
	}
	return n, nil
}

// thumbETag is the ETag of the thumbnail width wide of the image whose ETag is etag.
func thumbETag(etag string, width int) string {
	return strings.TrimSuffix(etag, `"`) + "-w" + strconv.Itoa(width) + `"`
}

// thumb is a made thumbnail and what it says of its full image.
type thumb struct {
	body          []byte
	contentType   string
	width, height int   // of the full image
	fullBytes     int64 // of the full image; -1 when unknown
}

// thumbKey names a thumbnail in the cache: the image's ETag changes when the image does.
type thumbKey struct {
	id    int64
	kind  string
	width int
	etag  string
}

// thumbnailer makes thumbnails, at most GOMAXPROCS at once (each decodes a full image, up to the
// pixel limit), and keeps the latest in a cache bounded in bytes.
type thumbnailer struct {
	maxPixels int64 // the largest image decoded, as the master allows (never unlimited: a thumbnail's memory is bounded)
	slots     chan struct{}
	png       pngenc.Encoder
	cache     *thumbCache
}

// newThumbnailer makes thumbnails of images of up to maxPixels pixels (the master's limit; 0 or less: the
// default one).
func newThumbnailer(maxPixels int64) *thumbnailer {
	if maxPixels <= 0 {
		maxPixels = imageop.DefaultMaxPixels
	}
	return &thumbnailer{maxPixels: maxPixels, slots: make(chan struct{}, runtime.GOMAXPROCS(0)), cache: newThumbCache(thumbCacheBytes)}
}

// make decodes the image in r, under the master's pixel limit, and scales it to at most width pixels
// wide, never enlarging it: a JPEG when it is opaque, else a PNG. It waits for a free slot, or for ctx
// to end.
func (t *thumbnailer) make(ctx context.Context, r io.Reader, width int) (*thumb, error) {
	select {
	case t.slots <- struct{}{}:
		defer func() { <-t.slots }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	src, _, err := imageop.DecodeContext(ctx, r, t.maxPixels)
	switch {
	case errors.Is(err, imageop.ErrTooLarge):
		return nil, httpapi.Errorf(http.StatusRequestEntityTooLarge, "no thumbnail: %v", err)
	case errors.Is(err, imageop.ErrDecode):
		return nil, httpapi.Errorf(http.StatusUnprocessableEntity, "no thumbnail: %v", err)
	case err != nil && ctx.Err() != nil:
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: httpapi.UnavailableRetryAfter,
			Msg: "the image could not be read, retry later"}, err)
	}
	b := src.Bounds()
	out := &thumb{width: b.Dx(), height: b.Dy()}
	dst := scale(src, width)
	var buf bytes.Buffer
	if opaque(src) {
		out.contentType = "image/jpeg"
		err = jpeg.Encode(&buf, dst, &jpeg.Options{Quality: thumbQuality})
	} else {
		out.contentType = "image/png"
		err = t.png.EncodeContext(ctx, &buf, dst)
	}
	if err != nil {
		return nil, fmt.Errorf("thumbnail: %w", err)
	}
	out.body = buf.Bytes()
	return out, nil
}

// scale returns img scaled to at most width wide. CatmullRom alone takes about as long as the decode
// (120 ms for 2048 px to 480 px), ApproxBiLinear a twentieth of it but aliases when it shrinks much: so
// ApproxBiLinear shrinks to twice the width, and CatmullRom the rest (BenchmarkThumbnailScale).
func scale(img image.Image, width int) *image.RGBA {
	b := img.Bounds()
	if b.Dx() > 2*width {
		mid := image.NewRGBA(scaledRect(b, 2*width))
		draw.ApproxBiLinear.Scale(mid, mid.Rect, img, b, draw.Src, nil)
		img, b = mid, mid.Rect
	}
	dst := image.NewRGBA(scaledRect(b, width))
	draw.CatmullRom.Scale(dst, dst.Rect, img, b, draw.Src, nil)
	return dst
}

// scaledRect is the rectangle of b scaled to at most width wide, its aspect kept, never enlarged.
func scaledRect(b image.Rectangle, width int) image.Rectangle {
	w, h := b.Dx(), b.Dy()
	if w <= width {
		return image.Rect(0, 0, w, h)
	}
	return image.Rect(0, 0, width, max(1, (h*width+w/2)/w))
}

// opaque reports whether img has no transparent pixel (an image type that cannot tell is taken as
// transparent: a PNG keeps whatever it has).
func opaque(img image.Image) bool {
	o, ok := img.(interface{ Opaque() bool })
	return ok && o.Opaque()
}

// serveThumb answers a thumbnail width wide of task id's image of kind ("result" or "source"), opened
// by open; etag is the thumbnail's ("" while the image has none: it is not cached then).
func (s *server) serveThumb(w http.ResponseWriter, r *http.Request, id int64, kind, etag string, width int,
	open func(context.Context, int64) (*client.Image, error),
) error {
	key := thumbKey{id: id, kind: kind, width: width, etag: etag}
	th, ok := s.thumbs.cache.get(key)
	if !ok {
		img, err := open(r.Context(), id)
		if err != nil {
			return publicError(err, id)
		}
		defer img.Close()
		if th, err = s.thumbs.make(r.Context(), img, width); err != nil {
			return err
		}
		th.fullBytes = img.Size
		if etag != "" {
			s.thumbs.cache.put(key, th)
		}
	}
	h := w.Header()
	h.Set("Content-Type", th.contentType)
	h.Set("Content-Length", strconv.Itoa(len(th.body)))
	h.Set("Content-Disposition", "inline")
	h.Set("Content-Security-Policy", resultCSP)
	h.Set(ImageWidthHeader, strconv.Itoa(th.width))
	h.Set(ImageHeightHeader, strconv.Itoa(th.height))
	if th.fullBytes >= 0 {
		h.Set(ImageBytesHeader, strconv.FormatInt(th.fullBytes, 10))
	}
	if etag != "" {
		cacheable(h, etag)
	}
	_, err := w.Write(th.body)
	return err
}

// thumbCache keeps the most recently used thumbnails up to max bytes in all.
type thumbCache struct {
	max int64

	mu    sync.Mutex
	bytes int64
	order *list.List // of *thumbEntry, most recently used first
	byKey map[thumbKey]*list.Element
}

type thumbEntry struct {
	key thumbKey
	th  *thumb
}

func newThumbCache(max int64) *thumbCache {
	return &thumbCache{max: max, order: list.New(), byKey: map[thumbKey]*list.Element{}}
}

func (c *thumbCache) get(key thumbKey) (*thumb, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byKey[key]
	if e == nil {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*thumbEntry).th, true
}

// put keeps th under key, dropping the least recently used thumbnails beyond max; one larger than
// max is not kept.
func (c *thumbCache) put(key thumbKey, th *thumb) {
	size := int64(len(th.body))
	if size > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.byKey[key]; e != nil { // made twice at once: keep one
		return
	}
	c.byKey[key] = c.order.PushFront(&thumbEntry{key: key, th: th})
	c.bytes += size
	for c.bytes > c.max {
		last := c.order.Back()
		old := last.Value.(*thumbEntry)
		c.order.Remove(last)
		delete(c.byKey, old.key)
		c.bytes -= int64(len(old.th.body))
	}
}
