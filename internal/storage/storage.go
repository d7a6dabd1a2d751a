// Package storage is the storage service: image bytes over the reference wire API (/sendImage,
// /getImage), backed by a blobstore.Store.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/wire"
)

// NewServer returns the storage service's handler over blobs.
func NewServer(blobs blobstore.Store, opts ...Option) http.Handler {
	s := &server{blobs: blobs}
	for _, opt := range opts {
		opt(s)
	}
	s.metrics.watch(blobs, s.space)
	mux := httpapi.NewMux()
	addRoutes(mux, s)
	return mux
}

type server struct {
	blobs   blobstore.Store
	metrics *storageMetrics // nil: none (see WithMetrics)
	space   *spaceGuard     // nil: no floor of free space (see WithMinFree)
}

// handleSendImage stores an image. The optional token parameter is the lease token of the worker sending
// its result: the image is stored with it as its fence, and refused with 409 when the stored image has a
// larger one (a newer claim of the task already stored its result). No token is token 0, never refused.
func (s *server) handleSendImage(w http.ResponseWriter, r *http.Request) error {
	id, key, err := imageKey(r)
	if err != nil {
		return err
	}
	token, err := leaseToken(r)
	if err != nil {
		return err
	}
	if r.ContentLength == 0 {
		return httpapi.Errorf(http.StatusBadRequest, "empty image body")
	}
	state := r.URL.Query().Get("state")
	up, err := s.space.admit(r.Context(), state, r.ContentLength)
	if err != nil {
		s.metrics.refusedForSpace(state)
		return err
	}
	defer up.done()
	n, err := s.blobs.Put(r.Context(), key, up.body(&nonEmptyReader{r: r.Body}), r.ContentLength, token)
	if errors.Is(err, errEmptyBody) {
		// The failed stream left any image already stored under key untouched.
		return httpapi.Errorf(http.StatusBadRequest, "empty image body")
	}
	if errors.Is(err, blobstore.ErrStaleFence) {
		// The stored image, a newer claim's result, stays.
		return httpapi.Errorf(http.StatusConflict, "stale lease token for task %d", id)
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return httpapi.Errorf(http.StatusRequestEntityTooLarge, "image larger than %d bytes", tooBig.Limit)
		}
		return fmt.Errorf("store %s: %w", key, err)
	}
	s.metrics.stored(state, n)
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

// handleGetImage serves an image, with the lease token it was stored with in LeaseTokenHeader (none for 0).
func (s *server) handleGetImage(w http.ResponseWriter, r *http.Request) error {
	_, key, err := imageKey(r)
	if err != nil {
		return err
	}
	blob, err := s.blobs.Open(r.Context(), key)
	if errors.Is(err, blobstore.ErrNotFound) {
		return httpapi.Errorf(http.StatusNotFound, "no %s image for task %s", r.URL.Query().Get("state"), r.URL.Query().Get("id"))
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", key, err)
	}
	defer blob.Close()
	if blob.Fence != 0 {
		w.Header().Set(wire.LeaseTokenHeader, strconv.FormatInt(blob.Fence, 10))
	}
	// ServeContent streams from the blob, sniffs the Content-Type and answers range requests.
	http.ServeContent(s.metrics.serving(w, r.URL.Query().Get("state")), r, "", blob.ModTime, blob)
	return nil
}

// handleDeleteImages removes both images of a task, the upload and the result (additive), or only the one
// its optional state parameter names, and answers 204 once they are gone from the blob store; images that
// are not there are no error, so a repeated delete answers 204 too.
func (s *server) handleDeleteImages(w http.ResponseWriter, r *http.Request) error {
	states := []string{wire.WorkingImage, wire.FinishedImage}
	var id int64
	var err error
	if r.URL.Query().Has("state") {
		if id, _, err = imageKey(r); err != nil {
			return err
		}
		states = []string{r.URL.Query().Get("state")}
	} else if id, err = httpapi.QueryID(r, "id"); err != nil {
		return err
	}
	for _, state := range states {
		key := state + "/" + strconv.FormatInt(id, 10)
		if err := s.blobs.Delete(r.Context(), key); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleList answers a page of the stored blobs (additive), in key order, for the consistency checks
// (the master's orphan sweep, imgmill fsck): prefix (optional) keeps the keys that start with it, after
// (optional) is the previous page's next cursor, limit (default and at most wire.MaxBlobPage) the most blobs in
// the page. Next is set when more blobs may follow.
func (s *server) handleList(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit := wire.MaxBlobPage
	if raw := q.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > wire.MaxBlobPage {
			return httpapi.Errorf(http.StatusBadRequest, "limit must be a whole number from 1 to %d, got %q", wire.MaxBlobPage, raw)
		}
		limit = n
	}
	page := wire.BlobPage{Blobs: make([]wire.BlobInfo, 0, min(limit, 64))}
	for e, err := range s.blobs.List(r.Context(), q.Get("prefix"), q.Get("after")) {
		if err != nil {
			return fmt.Errorf("list blobs: %w", err)
		}
		if len(page.Blobs) == limit {
			// One more exists: the page is full and the listing goes on after its last key.
			page.Next = page.Blobs[limit-1].Key
			break
		}
		page.Blobs = append(page.Blobs, wire.BlobInfo{Key: e.Key, Size: e.Size, ModTime: e.ModTime.UTC()})
	}
	return httpapi.WriteJSON(w, http.StatusOK, page)
}

// errEmptyBody fails an upload whose body (chunked, so of unknown length) turns out empty, so that Put
// discards it instead of replacing a stored image with nothing.
var errEmptyBody = errors.New("empty image body")

// nonEmptyReader fails with errEmptyBody when its stream ends before the first byte.
type nonEmptyReader struct {
	r    io.Reader
	seen bool
}

func (e *nonEmptyReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if n > 0 {
		e.seen = true
	}
	if err == io.EOF && !e.seen {
		return n, errEmptyBody
	}
	return n, err
}

// imageKey validates the reference id and state parameters and names the blob.
func imageKey(r *http.Request) (id int64, key string, err error) {
	id, err = httpapi.QueryID(r, "id")
	if err != nil {
		return 0, "", err
	}
	state := r.URL.Query().Get("state")
	if state != wire.WorkingImage && state != wire.FinishedImage {
		return 0, "", httpapi.Errorf(http.StatusBadRequest, "state must be %q or %q, got %q", wire.WorkingImage, wire.FinishedImage, state)
	}
	return id, state + "/" + strconv.FormatInt(id, 10), nil
}

// leaseToken parses the optional token parameter, digits only; absent is 0.
func leaseToken(r *http.Request) (int64, error) {
	q := r.URL.Query()
	if !q.Has("token") {
		return 0, nil
	}
	raw := q.Get("token")
	token, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || raw == "" || strings.Trim(raw, "0123456789") != "" {
		// ParseInt alone would take "+7" and "-0".
		return 0, httpapi.Errorf(http.StatusBadRequest, "token must be a non-negative decimal integer, got %q", raw)
	}
	return token, nil
}

// DefaultAddr is the storage service's listen address unless told otherwise (the reference's port).
const DefaultAddr = "127.0.0.1:3002"

// Config configures Run.
type Config struct {
	service.Options
	KV *client.KV // where the service registers
	// Blobs is the blob store, opened by the caller (see package engines), who closes it after Run.
	Blobs blobstore.Store
	// MinFree is the free space kept on Blobs' file system (see MinFree; zero: none). An object store
	// has no free space to keep: the check is off there.
	MinFree MinFree
}

// Run serves the storage service on cfg.Blobs until ctx ends, registered in the kv store as
// storageAddress.
func Run(ctx context.Context, cfg Config) error {
	reg := metrics.New("storage")
	if _, ok := cfg.Blobs.(blobstore.FreeSpacer); !ok && cfg.MinFree != (MinFree{}) && cfg.Logger != nil {
		cfg.Logger.Info("--min-free is not checked: the blob store has no file system of its own", "min_free", cfg.MinFree.String())
	}
	return service.Run(ctx, cfg.Spec(service.Spec{
		Handler: NewServer(cfg.Blobs, WithMetrics(reg), WithMinFree(cfg.MinFree)), Ready: cfg.Blobs.Ping,
		RegisterAs: wire.StorageKey, KV: cfg.KV, Internal: true, Metrics: reg,
	}))
}
