package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// ErrStaleToken is wrapped by SendResult's error when storage refused the result because it holds one
// stored with a larger lease token: the task was claimed again since, and the newer result stays.
var ErrStaleToken = errors.New("stale lease token")

// ErrNoDeletes is wrapped by the error of a delete when storage has no DELETE /images: the reference
// design's storage, which keeps every image. The images stay; callers go on without removing them.
var ErrNoDeletes = errors.New("storage cannot delete images (the reference design's storage keeps them)")

// Storage is a client of the storage service.
type Storage struct{ p peer }

// NewStorage returns a storage client reaching the service through ep.
func NewStorage(hc *http.Client, ep Endpoint) *Storage {
	return &Storage{peer{name: "storage", http: hc, ep: ep}}
}

// SendImage streams r (size bytes, or -1 when unknown) into storage under id and state, unfenced (lease
// token 0): the way uploads are stored. A worker stores its result with SendResult.
func (c *Storage) SendImage(ctx context.Context, id int64, state string, r io.Reader, size int64) error {
	return c.sendImage(ctx, imageQuery(id, state), r, size)
}

// SendResult streams r (size bytes, or -1 when unknown) into storage as the finished image of task id,
// written under the lease token of the worker's claim. Storage refuses it, and SendResult returns an error
// wrapping ErrStaleToken (and carrying status 409), when it holds a result stored with a larger token. Token
// 0 (a worker that knows no tokens) is never refused.
func (c *Storage) SendResult(ctx context.Context, id int64, token int64, r io.Reader, size int64) error {
	if token < 0 {
		return fmt.Errorf("send result of task %d: negative lease token %d", id, token)
	}
	q := imageQuery(id, wire.FinishedImage)
	if token != 0 {
		q.Set("token", strconv.FormatInt(token, 10))
	}
	err := c.sendImage(ctx, q, r, size)
	if IsStatus(err, http.StatusConflict) {
		return fmt.Errorf("%w: %w", ErrStaleToken, err)
	}
	return err
}

// sendImage posts an image. Storing the same bytes under the same key and token again changes nothing, so
// the call may be retried (when the body can be replayed).
func (c *Storage) sendImage(ctx context.Context, q url.Values, r io.Reader, size int64) error {
	reply, err := c.p.sendLong(ctx, call{method: http.MethodPost, path: "/sendImage", query: q,
		body: r, size: size, idempotent: true})
	return expectSuccess(reply.body, err)
}

// DeleteImages removes both images of task id, its upload and its result; images that are not there are
// no error.
func (c *Storage) DeleteImages(ctx context.Context, id int64) error {
	_, err := c.p.sendText(ctx, call{method: http.MethodDelete, path: "/images", query: idQuery(id), idempotent: true})
	return noDeletes(err)
}

// noDeletes marks a delete's err with ErrNoDeletes when storage has no such endpoint.
func noDeletes(err error) error {
	if IsNoEndpoint(err) {
		return fmt.Errorf("%w: %w", ErrNoDeletes, err)
	}
	return err
}

// Addr is the address of the storage instance calls go to now, to name it in logs.
func (c *Storage) Addr(ctx context.Context) (string, error) { return c.p.ep.Addr(ctx) }

// DeleteResult removes the result of task id, if any.
func (c *Storage) DeleteResult(ctx context.Context, id int64) error {
	return c.DeleteImage(ctx, id, wire.FinishedImage)
}

// DeleteImage removes the image of task id in state (wire.WorkingImage or wire.FinishedImage), if any.
func (c *Storage) DeleteImage(ctx context.Context, id int64, state string) error {
	_, err := c.p.sendText(ctx, call{method: http.MethodDelete, path: "/images",
		query: imageQuery(id, state), idempotent: true})
	return noDeletes(err)
}

// ListBlobs returns one page of the blobs in storage whose keys start with prefix, in key order, from
// the first after the cursor after ("" from the start); limit <= 0 takes storage's default page. Pass the
// page's Next as after for the following one; an empty Next ends the listing.
func (c *Storage) ListBlobs(ctx context.Context, prefix, after string, limit int) (wire.BlobPage, error) {
	q := url.Values{}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	reply, err := c.p.sendText(ctx, call{method: http.MethodGet, path: "/list", query: q, idempotent: true})
	return jsonReply[wire.BlobPage]("a page of blobs", reply, err)
}

// Image is a streamed image reply; the caller must Close it.
type Image struct {
	io.ReadCloser
	Size        int64 // -1 when unknown
	ContentType string
	// Token is the lease token the image was stored with (wire.LeaseTokenHeader); 0 when none.
	Token int64
}

// GetImage opens the image stored under id and state. The reference design's storage answers a missing
// image with 400 and the error of the file it could not open ("Error: open data/working/7: no such
// file or directory"): that is imgmill's 404, while its own 400s (a bad id or state) say nothing of
// the kind and stay 400.
func (c *Storage) GetImage(ctx context.Context, id int64, state string) (*Image, error) {
	img, err := openImage(ctx, c.p, call{method: http.MethodGet, path: "/getImage", query: imageQuery(id, state)})
	var e *httpapi.Error
	if errors.As(err, &e) && e.Status == http.StatusBadRequest && SaysNotFound(e.Msg) {
		return nil, fmt.Errorf("%w (%s answered 400)", httpapi.Errorf(http.StatusNotFound, "%s", e.Msg), c.p.name)
	}
	return img, err
}

// HasImage reports whether storage holds the image of task id in state, asking for its headers only
// (HEAD). A missing image is 404 from imgmill's storage and 400 from the reference design's.
func (c *Storage) HasImage(ctx context.Context, id int64, state string) (bool, error) {
	r, err := c.p.send(ctx, call{method: http.MethodHead, path: "/getImage", query: imageQuery(id, state), idempotent: true,
		headerTimeout: CallTimeout})
	if IsStatus(err, http.StatusMethodNotAllowed) || IsStatus(err, http.StatusNotImplemented) {
		// A storage that serves GET only: the image is opened, and closed unread.
		r, err = c.p.send(ctx, call{method: http.MethodGet, path: "/getImage", query: imageQuery(id, state), idempotent: true,
			headerTimeout: imageHeaderTimeout})
	}
	switch {
	case IsStatus(err, http.StatusNotFound) || IsStatus(err, http.StatusBadRequest):
		return false, nil
	case err != nil:
		return false, err
	}
	r.stream.Body.Close()
	return true, nil
}

func imageQuery(id int64, state string) url.Values {
	return url.Values{"id": {strconv.FormatInt(id, 10)}, "state": {state}}
}

// openImage sends c, a GET of an image, and opens the image it answers. With c.errorIn200, a 200 whose
// body begins "Error:" is the refusal it says (RefusedIn200), not an image: no image format begins so.
func openImage(ctx context.Context, p peer, c call) (*Image, error) {
	c.idempotent, c.headerTimeout = true, imageHeaderTimeout
	r, err := p.send(ctx, c)
	if err != nil {
		return nil, err
	}
	resp := r.stream
	if c.errorIn200 {
		br := bufio.NewReader(resp.Body)
		if head, _ := br.Peek(len("Error:")); string(head) == "Error:" {
			defer resp.Body.Close()
			b, _ := io.ReadAll(io.LimitReader(br, 4096))
			return nil, refusalIn200(c, string(b))
		}
		resp.Body = struct {
			io.Reader
			io.Closer
		}{br, resp.Body}
	}
	var token int64
	if raw := resp.Header.Get(wire.LeaseTokenHeader); raw != "" {
		token, err = strconv.ParseInt(raw, 10, 64)
		if err != nil || token < 0 {
			resp.Body.Close()
			return nil, &httpapi.Error{Status: http.StatusBadGateway,
				Msg: fmt.Sprintf("%s sent a malformed %s header %q", p.name, wire.LeaseTokenHeader, raw)}
		}
	}
	return &Image{ReadCloser: resp.Body, Size: resp.ContentLength, ContentType: resp.Header.Get("Content-Type"), Token: token}, nil
}
