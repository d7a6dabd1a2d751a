package frontend_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// refMaster is a stand-in of the reference design's master, for a frontend: /new, /isReady and /get
// only (a plain http.ServeMux: "404 page not found" for the rest), its refusals answered with 200 and
// an "Error: ..." body, as the reference passes on its database's and storage's errors.
type refMaster struct {
	mu       sync.Mutex
	uploads  [][]byte
	finished map[int64][]byte
}

func newRefMaster(t *testing.T) (*refMaster, string) {
	t.Helper()
	m := &refMaster{finished: map[int64][]byte{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/new", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			fmt.Fprint(w, "Error: "+err.Error())
			return
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		m.uploads = append(m.uploads, b)
		fmt.Fprint(w, len(m.uploads)-1)
	})
	mux.HandleFunc("/isReady", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
		m.mu.Lock()
		defer m.mu.Unlock()
		switch _, done := m.finished[id]; {
		case id < 0 || id >= int64(len(m.uploads)):
			fmt.Fprint(w, "Error: sql: no rows in result set")
		case done:
			fmt.Fprint(w, "1")
		default:
			fmt.Fprint(w, "0")
		}
	})
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
		m.mu.Lock()
		b, ok := m.finished[id]
		m.mu.Unlock()
		if !ok {
			fmt.Fprintf(w, "Error:open data/finished/%d: no such file or directory", id)
			return
		}
		w.Write(b)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return m, servicetest.Addr(srv.URL)
}

func (m *refMaster) finish(id int64, result []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finished[id] = result
}

// TestFrontendOnReferenceMaster: imgmill's frontend in front of the reference design's master. An
// unfinished task's image is not finished (never the master's error text served as an image), its
// state comes from /isReady, and the finished image is served.
func TestFrontendOnReferenceMaster(t *testing.T) {
	m, addr := newRefMaster(t)
	ids, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	hc := servicetest.NewHTTPClient(t)
	base := servicetest.Serve(t, frontend.NewServer(client.NewMaster(hc, client.Static(addr)), ids, frontend.Limits{})).URL
	get := func(path string) servicetest.Reply {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		return servicetest.MustDo(t, hc, req)
	}
	state := func(pub string) wire.Word {
		t.Helper()
		r := get("/api/tasks/" + pub)
		if r.Status != http.StatusOK {
			t.Fatalf("GET /api/tasks/%s: %d %q", pub, r.Status, r.Body)
		}
		var st wire.PublicStatus
		if err := json.Unmarshal([]byte(r.Body), &st); err != nil {
			t.Fatalf("status %q: %v", r.Body, err)
		}
		return st.State
	}

	upload := servicetest.EncodePNG(t, testimage.Pattern(8, 1))
	ct, body := form(t, part{field: frontend.UploadField, filename: "x.png", data: upload})
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/submitTask", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ct)
	r := servicetest.MustDo(t, hc, req)
	if r.Status != http.StatusOK {
		t.Fatalf("POST /submitTask: %d %q", r.Status, r.Body)
	}
	pub := r.Body
	if id, err := ids.Decode(pub); err != nil || id != 0 {
		t.Fatalf("public id %q is task %d, %v; want task 0", pub, id, err)
	}

	if r := get("/isReady?id=" + pub); r.Body != notReady {
		t.Errorf("/isReady of an unfinished task: %d %q, want %q", r.Status, r.Body, notReady)
	}
	if r := get("/getImage?id=" + pub); r.Status != http.StatusNotFound || r.Body != "Error: task is not finished" {
		t.Errorf("/getImage of an unfinished task: %d %q, want 404 not finished", r.Status, r.Body)
	}
	if r := get("/api/tasks/" + pub + "/result"); r.Status != http.StatusNotFound || strings.Contains(r.Body, "open data") {
		t.Errorf("/api/tasks/P/result of an unfinished task: %d %q, want 404 not finished", r.Status, r.Body)
	}
	if got := state(pub); got != wire.QueuedWord {
		t.Errorf("state of an unfinished task %q, want %q", got, wire.QueuedWord)
	}

	result := servicetest.EncodePNG(t, testimage.Pattern(8, 2))
	m.finish(0, result)
	if r := get("/isReady?id=" + pub); r.Body != ready {
		t.Errorf("/isReady of a finished task: %d %q, want %q", r.Status, r.Body, ready)
	}
	r = get("/getImage?id=" + pub)
	if r.Status != http.StatusOK || r.Body != string(result) {
		t.Errorf("/getImage of a finished task: %d, %d bytes; want 200 and the result's %d", r.Status, len(r.Body), len(result))
	}
	if cd := r.Header.Get("Content-Disposition"); !strings.HasPrefix(cd, "attachment") {
		t.Errorf("/getImage Content-Disposition %q, want an attachment", cd)
	}
	if got := state(pub); got != wire.FinishedWord {
		t.Errorf("state of a finished task %q, want %q", got, wire.FinishedWord)
	}

	// A task the master does not know, with a genuine public id.
	unknown := ids.Encode(5)
	if r := get("/isReady?id=" + unknown); r.Status != http.StatusNotFound || r.Body != noSuch {
		t.Errorf("/isReady of an unknown task: %d %q, want 404 %q", r.Status, r.Body, noSuch)
	}
}
