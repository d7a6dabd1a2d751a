package client

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Image states in storage (reference names).
const (
	Working  = "working"
	Finished = "finished"
)

// Storage is a client of the storage service.
type Storage struct{ p peer }

// NewStorage returns a storage client reaching the service through ep.
func NewStorage(hc *http.Client, ep Endpoint) *Storage {
	return &Storage{peer{name: "storage", http: hc, ep: ep}}
}

// SendImage streams r (size bytes, or -1 when unknown) into storage under id and state.
func (c *Storage) SendImage(ctx context.Context, id int64, state string, r io.Reader, size int64) error {
	return expectSuccess(c.p.textNoTimeout(ctx, http.MethodPost, "/sendImage", imageQuery(id, state), r, size))
}

// Image is a streamed image reply; the caller must Close it.
type Image struct {
	io.ReadCloser
	Size        int64 // -1 when unknown
	ContentType string
}

// GetImage opens the image stored under id and state.
func (c *Storage) GetImage(ctx context.Context, id int64, state string) (*Image, error) {
	return openImage(ctx, c.p, "/getImage", imageQuery(id, state))
}

func imageQuery(id int64, state string) url.Values {
	return url.Values{"id": {strconv.FormatInt(id, 10)}, "state": {state}}
}

func openImage(ctx context.Context, p peer, path string, q url.Values) (*Image, error) {
	resp, err := p.do(ctx, http.MethodGet, path, q, nil, 0)
	if err != nil {
		return nil, err
	}
	return &Image{ReadCloser: resp.Body, Size: resp.ContentLength, ContentType: resp.Header.Get("Content-Type")}, nil
}
