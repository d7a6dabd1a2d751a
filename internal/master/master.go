// Package master is the master service: the API for clients (/new, /isReady, /get) and for workers
// (/getNewTask, /registerTaskFinished), in front of the database and storage services.
package master

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/service"
)

// DefaultMaxUpload is the largest upload accepted by default.
const DefaultMaxUpload = 256 << 20

// NewServer returns the master's handler. maxUpload bounds an upload's size in bytes.
func NewServer(db *client.Database, storage *client.Storage, maxUpload int64) http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, &server{db: db, storage: storage, maxUpload: maxUpload})
	return mux
}

type server struct {
	db        *client.Database
	storage   *client.Storage
	maxUpload int64
}

// handleNew stores an upload and answers its id. The task is created pending, the image streamed to
// storage, and only then is the task made claimable, so no worker can claim a task whose image does not
// exist yet; the id is answered only after both are durable.
func (s *server) handleNew(w http.ResponseWriter, r *http.Request) error {
	if r.ContentLength > s.maxUpload {
		return httpapi.Errorf(http.StatusRequestEntityTooLarge, "image larger than %d bytes", s.maxUpload)
	}
	body := bufio.NewReaderSize(http.MaxBytesReader(w, r.Body, s.maxUpload), 32<<10)
	head, err := body.Peek(imageop.SniffLen)
	if len(head) == 0 {
		if err != nil && !errors.Is(err, io.EOF) {
			return uploadError(err)
		}
		return httpapi.Errorf(http.StatusBadRequest, "empty image: send the image bytes as the request body")
	}
	if _, ok := imageop.Sniff(head); !ok {
		return httpapi.Errorf(http.StatusUnsupportedMediaType, "not a PNG, JPEG or GIF image")
	}
	ctx := r.Context()
	id, err := s.db.NewTask(ctx, true)
	if err != nil {
		return fmt.Errorf("create task: %w", err)
	}
	if err := s.storage.SendImage(ctx, id, client.Working, body, r.ContentLength); err != nil {
		return uploadError(err)
	}
	if err := s.db.ActivateTask(ctx, id); err != nil {
		return fmt.Errorf("activate task %d: %w", id, err)
	}
	httpapi.WriteText(w, http.StatusOK, strconv.FormatInt(id, 10))
	return nil
}

// uploadError reports a failed upload: too large is the client's fault, the rest is ours.
func uploadError(err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return httpapi.Errorf(http.StatusRequestEntityTooLarge, "image larger than %d bytes", tooBig.Limit)
	}
	return fmt.Errorf("store image: %w", err)
}

func (s *server) handleIsReady(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	t, err := s.db.GetByID(r.Context(), id)
	if err != nil {
		return err
	}
	answer := "0"
	if t.State == client.StateFinished {
		answer = "1"
	}
	httpapi.WriteText(w, http.StatusOK, answer)
	return nil
}

func (s *server) handleGet(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	img, err := s.storage.GetImage(r.Context(), id, client.Finished)
	if err != nil {
		return err
	}
	defer img.Close()
	return CopyImage(w, img)
}

// CopyImage streams a peer's image reply to w with its type and length.
func CopyImage(w http.ResponseWriter, img *client.Image) error {
	if img.ContentType != "" {
		w.Header().Set("Content-Type", img.ContentType)
	}
	if img.Size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(img.Size, 10))
	}
	if _, err := io.Copy(w, img); err != nil {
		return fmt.Errorf("stream image: %w", err)
	}
	return nil
}

func (s *server) handleGetNewTask(w http.ResponseWriter, r *http.Request) error {
	wait, err := httpapi.QueryDuration(r, "wait", client.MaxWait)
	if err != nil {
		return err
	}
	t, err := s.db.GetNewTask(r.Context(), wait)
	if err != nil {
		return err
	}
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
	return nil
}

// Config configures Run.
type Config struct {
	Addr      string
	Advertise string
	KV        *client.KV
	HTTP      *http.Client
	MaxUpload int64
	Logger    *slog.Logger
}

// Run serves the master until ctx ends, registered in the kv store as masterAddress; it finds the
// database and storage through the kv store.
func Run(ctx context.Context, cfg Config) error {
	maxUpload := cfg.MaxUpload
	if maxUpload <= 0 {
		maxUpload = DefaultMaxUpload
	}
	db := client.NewDatabase(cfg.HTTP, client.NewResolver(cfg.KV, client.DatabaseKey, client.ResolveTTL))
	storage := client.NewStorage(cfg.HTTP, client.NewResolver(cfg.KV, client.StorageKey, client.ResolveTTL))
	return service.Run(ctx, service.Spec{
		Addr: cfg.Addr, Handler: NewServer(db, storage, maxUpload), Logger: cfg.Logger,
		RegisterAs: client.MasterKey, KV: cfg.KV, Advertise: cfg.Advertise,
	})
}
