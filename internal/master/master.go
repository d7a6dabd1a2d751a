// Package master is the master service: the API for clients (/new, /isReady, /get) and for workers
// (/getNewTask, /registerTaskFinished), in front of the database and storage services.
package master

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/taskstore"
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
	id, err := s.db.NewTask(ctx, true, 0)
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

// task reads the task named by the id parameter.
func (s *server) task(r *http.Request) (client.Task, error) {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return client.Task{}, err
	}
	return s.db.GetByID(r.Context(), id)
}

func (s *server) handleIsReady(w http.ResponseWriter, r *http.Request) error {
	t, err := s.task(r)
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

// handleGet serves the finished image, but only of a finished task: a stale worker's result stored for a
// task that is still being redone (or that failed) is never served.
func (s *server) handleGet(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	t, err := s.db.GetByID(r.Context(), id)
	if client.IsStatus(err, http.StatusBadRequest) {
		return httpapi.Errorf(http.StatusNotFound, "no task with id %d", id)
	}
	if err != nil {
		return err
	}
	switch t.State {
	case client.StateFinished:
	case client.StateFailed:
		return httpapi.Errorf(http.StatusNotFound, "task %d failed: %s", id, t.Error)
	default:
		return httpapi.Errorf(http.StatusNotFound, "task %d is not finished", id)
	}
	img, err := s.storage.GetImage(r.Context(), id, client.Finished)
	if err != nil {
		return err
	}
	defer img.Close()
	return CopyImage(w, img)
}

func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	t, err := s.task(r)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, client.Status{ID: t.ID, State: taskstore.State(t.State).Word(),
		Attempts: t.Attempts, MaxAttempts: t.MaxAttempts, Error: t.Error,
		CreatedAt: t.CreatedAt, StartedAt: t.StartedAt, FinishedAt: t.FinishedAt})
}

// forward passes a worker-side call through to the database unchanged (finishing is /finishTask there).
func (s *server) forward(databasePath string) httpapi.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		reply, err := s.db.Forward(r.Context(), databasePath, r.URL.Query())
		if err != nil {
			return err
		}
		if strings.HasPrefix(reply, "{") {
			// Task JSON keeps the database's type (WriteText would label it text/plain).
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, err := io.WriteString(w, reply)
			return err
		}
		httpapi.WriteText(w, http.StatusOK, reply)
		return nil
	}
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
	return httpapi.WriteJSON(w, http.StatusOK, t)
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
