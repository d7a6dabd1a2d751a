package referencetest

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/imgmill/imgmill/internal/wire"
)

// Storage is the reference image storage: one file per image under a directory, /sendImage and
// /getImage. A missing image answers 400 with the file system's words: "Error: open DIR/finished/7: no
// such file or directory".
type Storage struct {
	dir string
	mux *http.ServeMux
}

// NewStorage returns a storage keeping its images under dir.
func NewStorage(dir string) *Storage {
	s := &Storage{dir: dir, mux: http.NewServeMux()}
	s.mux.HandleFunc("/sendImage", s.sendImage)
	s.mux.HandleFunc("/getImage", s.getImage)
	return s
}

func (s *Storage) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Start serves the storage on a free loopback port until the test ends, registers it in the kv store at
// kvAddr under wire.StorageKey, and returns its host:port.
func (s *Storage) Start(t testing.TB, kvAddr string) string {
	t.Helper()
	addr := serve(t, s)
	register(t, kvAddr, wire.StorageKey, addr)
	return addr
}

// path is the file of the image the id and state parameters name.
func (s *Storage) path(r *http.Request) (string, error) {
	q := r.URL.Query()
	id, err := strconv.ParseInt(q.Get("id"), 10, 64)
	if err != nil || id < 0 {
		return "", errors.New("bad id")
	}
	state := q.Get("state")
	if state != wire.WorkingImage && state != wire.FinishedImage {
		return "", errors.New("bad state")
	}
	return filepath.Join(s.dir, state, strconv.FormatInt(id, 10)), nil
}

func (s *Storage) sendImage(w http.ResponseWriter, r *http.Request) {
	path, err := s.path(r)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if err := writeFile(path, r); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	text(w, http.StatusOK, "success")
}

// writeFile stores the request's body at path through a temporary file, so that a reader never sees half
// an image.
func writeFile(path string, r *http.Request) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // gone after the rename
	n, err := f.ReadFrom(r.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n == 0 {
		err = errors.New("empty image")
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func (s *Storage) getImage(w http.ResponseWriter, r *http.Request) {
	path, err := s.path(r)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	w.Header().Set("Content-Type", http.DetectContentType(b))
	w.Write(b)
}
