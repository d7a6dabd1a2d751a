// Package frontend is the public web frontend: the upload page and the reference paths (/submitTask,
// /isReady, /getImage), in front of the master.
package frontend

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/service"
)

//go:embed assets/index.html
var indexHTML []byte

// UploadField is the reference multipart field that carries the file.
const UploadField = "uploadfile"

// NewServer returns the frontend's handler in front of m.
func NewServer(m *client.Master) http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, &server{master: m})
	return mux
}

type server struct{ master *client.Master }

func (s *server) handleIndex() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		w.Write(indexHTML)
	})
}

// handleSubmitTask streams the uploadfile part of a multipart form to the master, never holding the
// whole file, and answers the id.
func (s *server) handleSubmitTask(w http.ResponseWriter, r *http.Request) error {
	mr, err := r.MultipartReader()
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "expected a multipart/form-data upload with the file in field %q", UploadField)
	}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return httpapi.Errorf(http.StatusBadRequest, "no file in field %q", UploadField)
		}
		if err != nil {
			return httpapi.Errorf(http.StatusBadRequest, "malformed multipart body: %v", err)
		}
		if part.FormName() != UploadField {
			part.Close()
			continue
		}
		id, err := s.master.New(r.Context(), part, -1)
		part.Close()
		if err != nil {
			return err
		}
		httpapi.WriteText(w, http.StatusOK, strconv.FormatInt(id, 10))
		return nil
	}
}

func (s *server) handleIsReady(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	ready, err := s.master.IsReady(r.Context(), id)
	if err != nil {
		return err
	}
	answer := "Your image is not ready yet."
	if ready {
		answer = "Your image is ready."
	}
	httpapi.WriteText(w, http.StatusOK, answer)
	return nil
}

func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	st, err := s.master.Status(r.Context(), id)
	if err != nil {
		return err
	}
	return httpapi.WriteJSON(w, http.StatusOK, st)
}

func (s *server) handleGetImage(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	img, err := s.master.Get(r.Context(), id)
	if err != nil {
		return err
	}
	defer img.Close()
	w.Header().Set("Content-Disposition", fmt.Sprintf("inline; filename=\"imgmill-%d.png\"", id))
	return master.CopyImage(w, img)
}

// Config configures Run.
type Config struct {
	Addr   string
	KV     *client.KV
	HTTP   *http.Client
	Logger *slog.Logger
}

// Run serves the frontend until ctx ends; it finds the master through the kv store.
func Run(ctx context.Context, cfg Config) error {
	m := client.NewMaster(cfg.HTTP, client.NewResolver(cfg.KV, client.MasterKey, client.ResolveTTL))
	return service.Run(ctx, service.Spec{Addr: cfg.Addr, Handler: NewServer(m), Logger: cfg.Logger})
}
