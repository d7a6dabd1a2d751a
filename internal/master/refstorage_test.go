package master_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
)

// referenceStorage is a stand-in of the reference design's storage: /sendImage and /getImage only (a
// plain http.ServeMux: "404 page not found" for the rest), a missing image answered with 400 and the
// error of the file it could not open.
func referenceStorage(t *testing.T) string {
	t.Helper()
	var mu sync.Mutex
	images := map[string][]byte{}
	mux := http.NewServeMux()
	mux.HandleFunc("/sendImage", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		mu.Lock()
		images[r.URL.Query().Get("state")+"/"+r.URL.Query().Get("id")] = b
		mu.Unlock()
		fmt.Fprint(w, "success")
	})
	mux.HandleFunc("/getImage", func(w http.ResponseWriter, r *http.Request) {
		key := r.URL.Query().Get("state") + "/" + r.URL.Query().Get("id")
		mu.Lock()
		b, ok := images[key]
		mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "Error: open data/%s: no such file or directory", key)
			return
		}
		w.Write(b)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return servicetest.Addr(srv.URL)
}

// TestMasterOnReferenceStorage: imgmill's master in front of the reference design's storage. A result
// that is not there (a reference worker marks a task finished without storing one) is 404, not the
// storage's 400; a delete succeeds although that storage cannot delete (the images stay), rather than
// pass its missing endpoint on as a 404.
func TestMasterOnReferenceStorage(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{MasterStorageAddr: referenceStorage(t)})
	ctx := t.Context()
	upload := servicetest.EncodePNG(t, testimage.Pattern(8, 4))
	id, err := s.Master.New(ctx, bytes.NewReader(upload), int64(len(upload)))
	if err != nil {
		t.Fatal(err)
	}
	src, err := s.Master.Source(ctx, id)
	if err != nil {
		t.Fatalf("GET /source: %v", err)
	}
	b, err := io.ReadAll(src)
	src.Close()
	if err != nil || !bytes.Equal(b, upload) {
		t.Errorf("GET /source read %d bytes, %v; want the upload's %d", len(b), err, len(upload))
	}

	// Finished with no result stored.
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v, %v; want task %d", task, err, id)
	}
	if err := s.Database.FinishTask(ctx, task.ID, task.Token); err != nil {
		t.Fatal(err)
	}
	r := servicetest.Call(t, s.HTTP, http.MethodGet, fmt.Sprintf("%s/get?id=%d", s.MasterURL, id), nil)
	if r.Status != http.StatusNotFound {
		t.Errorf("GET /get of a finished task without a result: %d %q, want 404", r.Status, r.Body)
	}

	if err := s.Master.Delete(ctx, id); err != nil {
		t.Fatalf("DELETE /task with a storage that cannot delete: %v", err)
	}
	if _, err := s.Database.GetByID(ctx, id); err == nil {
		t.Errorf("the database still holds task %d", id)
	}
}
