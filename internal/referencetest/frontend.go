package referencetest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/imgmill/imgmill/internal/wire"
)

// maxForm is what the frontend reads of a form into memory; the rest goes to temporary files.
const maxForm = 32 << 20

// Frontend is the reference frontend: /submitTask takes a multipart form's "uploadfile" and answers the
// master's id as text, which is also the id /isReady and /getImage take (the reference has no public
// ids). /isReady answers in words ("Your image is ready." when the master's says 1, else "Your image is
// not ready yet."), /getImage passes the master's /get on.
type Frontend struct {
	peers peers
	mux   *http.ServeMux
}

// NewFrontend returns a frontend finding the master through the kv store at kvAddr.
func NewFrontend(kvAddr string) *Frontend {
	f := &Frontend{peers: newPeers(kvAddr), mux: http.NewServeMux()}
	f.mux.HandleFunc("/submitTask", f.submitTask)
	f.mux.HandleFunc("/isReady", f.isReady)
	f.mux.HandleFunc("/getImage", f.getImage)
	return f
}

func (f *Frontend) ServeHTTP(w http.ResponseWriter, r *http.Request) { f.mux.ServeHTTP(w, r) }

// Start serves the frontend on a free loopback port until the test ends and returns its host:port.
func (f *Frontend) Start(t testing.TB) string {
	t.Helper()
	t.Cleanup(f.peers.closeIdle) // after the server's close, which runs first
	return serve(t, f)
}

func (f *Frontend) submitTask(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(maxForm); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	file, _, err := r.FormFile("uploadfile")
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	defer file.Close()
	img, err := io.ReadAll(file)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	a, err := f.peers.to(r.Context(), wire.MasterKey, http.MethodPost, "/new", nil, bytes.NewReader(img))
	if err != nil {
		fail(w, http.StatusInternalServerError, fmt.Errorf("master: %w", err))
		return
	}
	text(w, a.status, string(a.body))
}

// The frontend's answers to /isReady.
const (
	Ready    = "Your image is ready."
	NotReady = "Your image is not ready yet."
)

func (f *Frontend) isReady(w http.ResponseWriter, r *http.Request) {
	a, err := f.askMaster(r, "/isReady")
	if err != nil {
		fail(w, http.StatusInternalServerError, fmt.Errorf("master: %w", err))
		return
	}
	if a.status != http.StatusOK {
		text(w, a.status, string(a.body))
		return
	}
	if string(a.body) == "1" {
		text(w, http.StatusOK, Ready)
		return
	}
	text(w, http.StatusOK, NotReady)
}

func (f *Frontend) getImage(w http.ResponseWriter, r *http.Request) {
	a, err := f.askMaster(r, "/get")
	if err != nil {
		fail(w, http.StatusInternalServerError, fmt.Errorf("master: %w", err))
		return
	}
	if ct := a.header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(a.status)
	w.Write(a.body)
}

// askMaster calls the master's path with the request's id.
func (f *Frontend) askMaster(r *http.Request, path string) (answer, error) {
	return f.peers.to(r.Context(), wire.MasterKey, http.MethodGet, path, url.Values{"id": {r.URL.Query().Get("id")}}, nil)
}
