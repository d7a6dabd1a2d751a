package client_test

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// TestNoEndpointTellsGoMuxFromImgmill404: only the bare body of Go's default mux marks a missing
// endpoint; imgmill's own 404s ("Error: ...") are answers about the thing asked for.
func TestNoEndpointTellsGoMuxFromImgmill404(t *testing.T) {
	mux := http.NewServeMux() // Go's default 404 for everything but /getById
	mux.Handle("GET /getById", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return httpapi.Errorf(http.StatusNotFound, "404 page not found") // in imgmill's words
	}))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	db := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))

	_, err := db.CancelTask(t.Context(), 1)
	if !client.IsNoEndpoint(err) || !client.IsStatus(err, http.StatusNotFound) {
		t.Errorf("cancel at a peer without /cancelTask: %v, want a missing endpoint with status 404", err)
	}
	_, err = db.GetByID(t.Context(), 1)
	if client.IsNoEndpoint(err) || !client.IsStatus(err, http.StatusNotFound) {
		t.Errorf("an imgmill 404: %v, want a plain 404, not a missing endpoint", err)
	}
}

// TestDatabaseReferenceAskedOncePerAddress: whether the database is the reference design's is asked
// once per address and then remembered, for either answer.
func TestDatabaseReferenceAskedOncePerAddress(t *testing.T) {
	for _, c := range []struct {
		name      string
		healthz   bool
		reference bool
	}{{"reference", false, true}, {"imgmill", true, false}} {
		t.Run(c.name, func(t *testing.T) {
			var probes atomic.Int64
			mux := http.NewServeMux()
			if c.healthz {
				mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				probes.Add(1)
				mux.ServeHTTP(w, r)
			}))
			defer srv.Close()
			db := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
			for range 3 {
				reference, err := db.Reference(t.Context())
				if err != nil || reference != c.reference {
					t.Fatalf("Reference = %v, %v; want %v", reference, err, c.reference)
				}
			}
			if n := probes.Load(); n != 1 {
				t.Errorf("%d requests to find out, want 1", n)
			}
		})
	}
}

// TestDatabaseReferenceUnreachable: a database that cannot be reached is a transient error, not a
// verdict.
func TestDatabaseReferenceUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := servicetest.Addr(srv.URL)
	srv.Close()
	db := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(addr))
	if _, err := db.Reference(client.RetryFor(t.Context(), 100*time.Millisecond)); !client.IsStatus(err, http.StatusServiceUnavailable) {
		t.Errorf("Reference of an unreachable database: %v, want 503", err)
	}
}

// TestStorageHasImage: present, missing in imgmill's words (404) or the reference's (400), and asked
// again with GET of a storage that refuses HEAD.
func TestStorageHasImage(t *testing.T) {
	for _, c := range []struct {
		name   string
		status int // of the answer to HEAD; 0: like GET
		want   bool
	}{{"held", 200, true}, {"imgmill missing", 404, false}, {"reference missing", 400, false}, {"GET only", 405, true}} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/getImage" || r.URL.Query().Get("id") != "7" || r.URL.Query().Get("state") != "finished" {
					http.NotFound(w, r)
					return
				}
				if r.Method == http.MethodHead && c.status != 200 {
					http.Error(w, "Error: no", c.status)
					return
				}
				w.Write([]byte("image"))
			}))
			defer srv.Close()
			st := client.NewStorage(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
			held, err := st.HasImage(t.Context(), 7, "finished")
			if err != nil || held != c.want {
				t.Errorf("HasImage = %v, %v; want %v", held, err, c.want)
			}
		})
	}
}
