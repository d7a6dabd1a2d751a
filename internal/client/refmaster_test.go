package client_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// referencePeer serves mux as a service of the reference design would: a plain http.ServeMux, so any
// other path answers 404 "404 page not found".
func referencePeer(t *testing.T, mux *http.ServeMux) string {
	t.Helper()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return servicetest.Addr(srv.URL)
}

// wantMsg checks that err carries status and the message msg.
func wantMsg(t *testing.T, what string, err error, status int, msg string) {
	t.Helper()
	wantStatus(t, what, err, status)
	var e *httpapi.Error
	if errors.As(err, &e) && e.Msg != msg {
		t.Errorf("%s: message %q, want %q", what, e.Msg, msg)
	}
}

// TestReferenceMasterRefusalsIn200: the reference design's master answers its refusals with 200 and an
// "Error: ..." body; the client reads each as the error it is.
func TestReferenceMasterRefusalsIn200(t *testing.T) {
	const image = "\x89PNG\r\n\x1a\nnot really, but an image's first bytes"
	var finishes, statuses atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		statuses.Add(1)
		http.NotFound(w, r) // as the reference's mux answers a path it lacks
	})
	mux.HandleFunc("/getNewTask", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "Error: "+wire.NoTaskMessage)
	})
	mux.HandleFunc("/registerTaskFinished", func(w http.ResponseWriter, r *http.Request) {
		n := finishes.Add(1)
		switch {
		case r.URL.Query().Get("id") == "2":
			fmt.Fprint(w, "Error: task not found")
		case n <= 2:
			fmt.Fprint(w, "Error: dial tcp 127.0.0.1:3002: connect: connection refused")
		default:
			fmt.Fprint(w, "success")
		}
	})
	mux.HandleFunc("/isReady", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("id") {
		case "7":
			fmt.Fprint(w, "1")
		case "8":
			fmt.Fprint(w, "0")
		case "98":
			// The database's refusal passed on with its status.
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `Error: No task with id "98".`)
		default:
			fmt.Fprint(w, "Error: sql: no rows in result set")
		}
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if id != "7" {
			fmt.Fprintf(w, "Error:open data/finished/%s: no such file or directory", id)
			return
		}
		fmt.Fprint(w, image)
	})
	m := client.NewMaster(servicetest.NewHTTPClient(t), client.Static(referencePeer(t, mux)))
	ctx := t.Context()

	_, err := m.GetNewTask(ctx, 0)
	if !client.IsNoTask(err) {
		t.Errorf("GetNewTask: %v, want no task", err)
	}

	if err := m.FinishTask(ctx, 1, 0); err != nil {
		t.Errorf("FinishTask after two transient refusals: %v", err)
	}
	if n := finishes.Load(); n != 3 {
		t.Errorf("%d calls of /registerTaskFinished, want 3 (two refused, transient)", n)
	}
	finishes.Store(0)
	wantStatus(t, "FinishTask of an unknown task", m.FinishTask(ctx, 2, 0), http.StatusNotFound)
	if n := finishes.Load(); n != 1 {
		t.Errorf("%d calls of /registerTaskFinished for an unknown task, want 1 (not retried)", n)
	}

	if ready, err := m.IsReady(ctx, 7); err != nil || !ready {
		t.Errorf("IsReady(7) = %v, %v; want true", ready, err)
	}
	_, err = m.IsReady(ctx, 99)
	wantMsg(t, "IsReady of an unknown task", err, http.StatusNotFound, "no task with id 99")
	_, err = m.IsReady(ctx, 98)
	wantMsg(t, "IsReady of an unknown task, refused with 400", err, http.StatusBadRequest, "no task with id 98")

	img, err := m.Get(ctx, 7)
	if err != nil {
		t.Fatalf("Get(7): %v", err)
	}
	b, err := io.ReadAll(img)
	img.Close()
	if err != nil || string(b) != image {
		t.Errorf("Get(7) read %q, %v; want the image", b, err)
	}
	_, err = m.Get(ctx, 8)
	wantMsg(t, "Get of an unfinished task", err, http.StatusNotFound, "task 8 is not finished")

	// No /status: the state comes from /isReady.
	for id, want := range map[int64]wire.Word{7: wire.FinishedWord, 8: wire.QueuedWord} {
		st, err := m.Status(ctx, id)
		if err != nil || st.State != want || st.ID != id {
			t.Errorf("Status(%d) = %+v, %v; want state %s", id, st, err, want)
		}
	}
	_, err = m.Status(ctx, 99)
	wantMsg(t, "Status of an unknown task", err, http.StatusNotFound, "no task with id 99")
	if n := statuses.Load(); n != 1 {
		t.Errorf("/status asked %d times for 3 statuses, want once: the master is known to lack it", n)
	}

	// A missing additive endpoint is told from a refusal of imgmill's own.
	_, err = m.FailTask(ctx, 1, 0, "broken", false)
	if !client.IsNoEndpoint(err) {
		t.Errorf("FailTask at the reference master: %v, want no such endpoint", err)
	}
	if client.IsNoEndpoint(httpapi.Errorf(http.StatusNotFound, "no task with id 3")) {
		t.Error("imgmill's 404 for an unknown task taken for a missing endpoint")
	}
}

// TestReferenceStorageMissingImage: the reference design's storage answers a missing image with 400 and
// the error of the file it could not open; that is not found. A 400 that says something else stays 400.
func TestReferenceStorageMissingImage(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/getImage", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		w.WriteHeader(http.StatusBadRequest)
		if q.Get("state") != wire.WorkingImage {
			fmt.Fprint(w, "Error: state must be working or finished")
			return
		}
		fmt.Fprintf(w, "Error: open data/%s/%s: no such file or directory", q.Get("state"), q.Get("id"))
	})
	st := client.NewStorage(servicetest.NewHTTPClient(t), client.Static(referencePeer(t, mux)))
	_, err := st.GetImage(t.Context(), 5, wire.WorkingImage)
	wantStatus(t, "GetImage of a missing image", err, http.StatusNotFound)
	if err != nil && !strings.Contains(err.Error(), "no such file") {
		t.Errorf("GetImage of a missing image: %v, want the storage's words kept", err)
	}
	_, err = st.GetImage(t.Context(), 5, "elsewhere")
	wantStatus(t, "GetImage with a bad state", err, http.StatusBadRequest)
}
