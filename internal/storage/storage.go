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
	return newServer(blobs, opts...).handler()
}

func newServer(blobs blobstore.Store, opts ...Option) *server {
	s := &server{blobs: blobs}
	for _, opt := range opts {
		opt(s)
	}
	s.metrics.watch(blobs, s.space)
	return s
}

func (s *server) handler() http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, s)
	return mux
}

// server is one storage service: its HTTP handlers and its in-process API (Local) both call its core
// methods (store, open, remove, list), which hold every check, refusal and metric.
type server struct {
	blobs   blobstore.Store
	metrics *storageMetrics // nil: none (see WithMetrics)
	space   *spaceGuard     // nil: no floor of free space (see WithMinFree)
}

// handleSendImage stores an image (see store). The optional token parameter is the lease token of the
// worker sending its result.
func (s *server) handleSendImage(w http.ResponseWriter, r *http.Request) error {
	id, err := imageID(r)
	if err != nil {
		return err
	}
	token, err := leaseToken(r)
	if err != nil {
		return err
	}
	if err := s.store(r.Context(), id, r.URL.Query().Get("state"), token, r.Body, r.ContentLength); err != nil {
		return err
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

// store keeps body, size bytes (-1: unknown), as the image of task id in state, once there is room for it
// (the space guard: 507 with Retry-After), fenced by token: the image is stored with it as its fence, and
// refused with 409 when the stored image has a larger one (a newer claim of the task already stored its
// result). Token 0 is no fence, never refused. An empty body is refused (400) and leaves any image
// stored under the key untouched.
func (s *server) store(ctx context.Context, id int64, state string, token int64, body io.Reader, size int64) error {
	key, err := blobKey(id, state)
	if err != nil {
		return err
	}
	if size == 0 {
		return httpapi.Errorf(http.StatusBadRequest, "empty image body")
	}
	up, err := s.space.admit(ctx, state, size)
	if err != nil {
		s.metrics.refusedForSpace(state)
		return err
	}
	defer up.done()
	n, err := s.blobs.Put(ctx, key, up.body(&nonEmptyReader{r: body}), size, token)
	if errors.Is(err, errEmptyBody) {
		// The failed stream left any image already stored under key untouched.
		return httpapi.Errorf(http.StatusBadRequest, "empty image body")
	}
	if errors.Is(err, blobstore.ErrStaleFence) {
		// The stored image, a newer claim's result, stays.
		return httpapi.Errorf(http.StatusConflict, "stale lease token for task %d", id)
	}
	if errors.Is(err, blobstore.ErrSizeMismatch) {
		// Only a caller in this process can announce a wrong size: net/http reads exactly Content-Length.
		return fmt.Errorf("%w: %w", httpapi.Errorf(http.StatusBadRequest, "image body is not the %d bytes announced", size), err)
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return httpapi.Errorf(http.StatusRequestEntityTooLarge, "image larger than %d bytes", tooBig.Limit)
		}
		return fmt.Errorf("store %s: %w", key, err)
	}
	s.metrics.stored(state, n)
	return nil
}

// handleGetImage serves an image, with the lease token it was stored with in LeaseTokenHeader (none for 0).
func (s *server) handleGetImage(w http.ResponseWriter, r *http.Request) error {
	id, err := imageID(r)
	if err != nil {
		return err
	}
	state := r.URL.Query().Get("state")
	blob, err := s.open(r.Context(), id, state)
	if err != nil {
		return err
	}
	defer blob.Close()
	if blob.Fence != 0 {
		w.Header().Set(wire.LeaseTokenHeader, strconv.FormatInt(blob.Fence, 10))
	}
	// ServeContent streams from the blob, sniffs the Content-Type and answers range requests.
	http.ServeContent(s.metrics.serving(w, state), r, "", blob.ModTime, blob)
	return nil
}

// open opens the image of task id in state, or answers 404.
func (s *server) open(ctx context.Context, id int64, state string) (*blobstore.Blob, error) {
	key, err := blobKey(id, state)
	if err != nil {
		return nil, err
	}
	blob, err := s.blobs.Open(ctx, key)
	if errors.Is(err, blobstore.ErrNotFound) {
		return nil, httpapi.Errorf(http.StatusNotFound, "no %s image for task %d", state, id)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	return blob, nil
}

// handleDeleteImages removes both images of a task, the upload and the result (additive), or only the one
// its optional state parameter names, and answers 204 once they are gone from the blob store; images that
// are not there are no error, so a repeated delete answers 204 too.
func (s *server) handleDeleteImages(w http.ResponseWriter, r *http.Request) error {
	states := []string{wire.WorkingImage, wire.FinishedImage}
	var id int64
	var err error
	if r.URL.Query().Has("state") {
		if id, err = imageID(r); err != nil {
			return err
		}
		states = []string{r.URL.Query().Get("state")}
	} else if id, err = httpapi.QueryID(r, "id"); err != nil {
		return err
	}
	if err := s.remove(r.Context(), id, states...); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// remove deletes the images of task id in states; images that are not there are no error.
func (s *server) remove(ctx context.Context, id int64, states ...string) error {
	for _, state := range states {
		key, err := blobKey(id, state)
		if err != nil {
			return err
		}
		if err := s.blobs.Delete(ctx, key); err != nil {
			return fmt.Errorf("delete %s: %w", key, err)
		}
	}
	return nil
}

// handleList answers a page of the stored blobs (additive), in key order, for the consistency checks
// (the master's orphan sweep, imgmill fsck): see list. The limit parameter is optional.
func (s *server) handleList(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	limit := wire.MaxBlobPage
	if raw := q.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > wire.MaxBlobPage {
			return badLimit(raw)
		}
		limit = n
	}
	page, err := s.list(r.Context(), q.Get("prefix"), q.Get("after"), limit)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, page)
}

// list returns a page of the stored blobs, in key order: prefix ("" for all) keeps the keys that start
// with it, after ("" from the start) is the previous page's next cursor, limit (1 to wire.MaxBlobPage)
// the most blobs in the page. Next is set when more blobs may follow.
func (s *server) list(ctx context.Context, prefix, after string, limit int) (wire.BlobPage, error) {
	if limit < 1 || limit > wire.MaxBlobPage {
		return wire.BlobPage{}, badLimit(strconv.Itoa(limit))
	}
	page := wire.BlobPage{Blobs: make([]wire.BlobInfo, 0, min(limit, 64))}
	for e, err := range s.blobs.List(ctx, prefix, after) {
		if err != nil {
			return wire.BlobPage{}, fmt.Errorf("list blobs: %w", err)
		}
		if len(page.Blobs) == limit {
			// One more exists: the page is full and the listing goes on after its last key.
			page.Next = page.Blobs[limit-1].Key
			break
		}
		page.Blobs = append(page.Blobs, wire.BlobInfo{Key: e.Key, Size: e.Size, ModTime: e.ModTime.UTC()})
	}
	return page, nil
}

func badLimit(raw string) error {
	return httpapi.Errorf(http.StatusBadRequest, "limit must be a whole number from 1 to %d, got %q", wire.MaxBlobPage, raw)
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

// imageID validates the reference id and state parameters and returns the id.
func imageID(r *http.Request) (int64, error) {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return 0, err
	}
	_, err = blobKey(id, r.URL.Query().Get("state"))
	return id, err
}

// blobKey names the blob of the image of task id in state, refusing (400) what the wire API would.
func blobKey(id int64, state string) (string, error) {
	if id < 0 {
		return "", httpapi.Errorf(http.StatusBadRequest, "id must be a non-negative decimal integer, got %q", strconv.FormatInt(id, 10))
	}
	if state != wire.WorkingImage && state != wire.FinishedImage {
		return "", httpapi.Errorf(http.StatusBadRequest, "state must be %q or %q, got %q", wire.WorkingImage, wire.FinishedImage, state)
	}
	return state + "/" + strconv.FormatInt(id, 10), nil
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

// Config configures a Service.
type Config struct {
	service.Options
	KV *client.KV // where the service registers; nil: it does not
	// Blobs is the blob store, opened by the caller (see package engines), who closes it after Run.
	Blobs blobstore.Store
	// MinFree is the free space kept on Blobs' file system (see MinFree; zero: none). An object store
	// has no free space to keep: the check is off there.
	MinFree MinFree
}

// Service is one storage service: served over HTTP by Run, and to callers in this process by Local,
// both on the same server (its space guard, fences and metrics).
type Service struct {
	cfg     Config
	srv     *server
	metrics *metrics.Registry
}

// NewService builds the storage service on cfg.Blobs.
func NewService(cfg Config) (*Service, error) {
	if cfg.Blobs == nil {
		return nil, errors.New("storage: no blob store")
	}
	if _, ok := cfg.Blobs.(blobstore.FreeSpacer); !ok && cfg.MinFree != (MinFree{}) && cfg.Logger != nil {
		cfg.Logger.Info("--min-free is not checked: the blob store has no file system of its own", "min_free", cfg.MinFree.String())
	}
	reg := metrics.New("storage")
	return &Service{cfg: cfg, srv: newServer(cfg.Blobs, WithMetrics(reg), WithMinFree(cfg.MinFree)), metrics: reg}, nil
}

// Run serves the service's wire API until ctx ends, registered in the kv store as storageAddress (when
// there is one). Call it once.
func (s *Service) Run(ctx context.Context) error {
	spec := service.Spec{Handler: s.srv.handler(), Ready: s.cfg.Blobs.Ping, Internal: true, Metrics: s.metrics}
	if s.cfg.KV != nil {
		spec.RegisterAs, spec.KV = wire.StorageKey, s.cfg.KV
	}
	return service.Run(ctx, s.cfg.Spec(spec))
}

// Local returns the service's API for callers in this process (see Local). It works whether or not
// Run is serving.
func (s *Service) Local() *Local { return &Local{s: s.srv} }

// Run serves the storage service on cfg.Blobs until ctx ends, registered in the kv store as
// storageAddress.
func Run(ctx context.Context, cfg Config) error {
	s, err := NewService(cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}
