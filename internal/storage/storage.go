// Package storage is the storage service: image bytes over the reference wire API (/sendImage,
// /getImage), backed by a blobstore.Store.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/blobstore/s3blob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/service"
)

// NewServer returns the storage service's handler over blobs.
func NewServer(blobs blobstore.Store, opts ...Option) http.Handler {
	s := &server{blobs: blobs}
	for _, opt := range opts {
		opt(s)
	}
	mux := httpapi.NewMux()
	addRoutes(mux, s)
	return mux
}

type server struct {
	blobs   blobstore.Store
	metrics *storageMetrics // nil: none (see WithMetrics)
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
	n, err := s.blobs.Put(r.Context(), key, &nonEmptyReader{r: r.Body}, r.ContentLength, token)
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
	s.metrics.stored(r.URL.Query().Get("state"), n)
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
		w.Header().Set(client.LeaseTokenHeader, strconv.FormatInt(blob.Fence, 10))
	}
	// ServeContent streams from the blob, sniffs the Content-Type and answers range requests.
	http.ServeContent(s.metrics.serving(w, r.URL.Query().Get("state")), r, "", blob.ModTime, blob)
	return nil
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
	if state != client.Working && state != client.Finished {
		return 0, "", httpapi.Errorf(http.StatusBadRequest, "state must be %q or %q, got %q", client.Working, client.Finished, state)
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

// Config configures Run.
type Config struct {
	Addr      string
	Advertise string
	KV        *client.KV
	DataDir   string
	// Blobs is the blob store: "" for files under DataDir/images, or an S3 URL
	// (s3://BUCKET?endpoint=http://HOST:PORT&access_key=K&secret_key=S) that several storage services
	// may share; Getenv supplies AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY when the URL has no keys.
	Blobs  string
	Getenv func(string) string
	Logger *slog.Logger
	// Token, when set, is the shared secret every request must carry (Authorization: Bearer); Insecure
	// lets the service listen on a non-loopback address without one. See service.Spec.
	Token    string
	Insecure bool
	// Pprof serves the net/http/pprof handlers under /debug/pprof/ (see service.Spec).
	Pprof bool
}

// Run serves the storage service on its blob store (see Config.Blobs) until ctx ends, registered in the
// kv store as storageAddress.
func Run(ctx context.Context, cfg Config) error {
	blobs, err := OpenStore(ctx, cfg.Blobs, cfg.DataDir, cfg.Getenv, cfg.Logger)
	if err != nil {
		return err
	}
	defer blobs.Close()
	reg := metrics.New("storage")
	return service.Run(ctx, service.Spec{
		Addr: cfg.Addr, Handler: NewServer(blobs, WithMetrics(reg)), Logger: cfg.Logger, Ready: blobs.Ping,
		RegisterAs: client.StorageKey, KV: cfg.KV, Advertise: cfg.Advertise,
		Token: cfg.Token, Internal: true, Insecure: cfg.Insecure,
		Metrics: reg, Pprof: cfg.Pprof,
	})
}

// OpenStore opens the blob store blobs names: "" for files under dataDir/images, or an s3:// URL (the
// bucket is created when missing). A misconfigured store is an error here, at start; an unreachable one
// is not: the service starts, answers 503 and waits for it.
func OpenStore(ctx context.Context, blobs, dataDir string, getenv func(string) string, logger *slog.Logger) (blobstore.Store, error) {
	if blobs == "" {
		dir := filepath.Join(dataDir, "images")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("storage data dir: %w", err)
		}
		store, err := fileblob.Open(dir)
		if err != nil {
			return nil, fmt.Errorf("open blob store: %w", err)
		}
		return store, nil
	}
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	cfg, err := s3blob.ParseURL(blobs, getenv)
	if err != nil {
		return nil, fmt.Errorf("--blobs: %w", err)
	}
	cfg.Logger = logger // it says so while it waits for S3
	store, err := s3blob.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open blob store %s: %w", cfg, err)
	}
	return store, nil
}
