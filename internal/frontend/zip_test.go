package frontend_test

import (
	"archive/zip"
	"bytes"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestTasksZip: the zip holds each finished result byte for byte, stored, under its download name,
// once however often its id is given; a MISSING.txt lists the tasks not finished and the ids of no
// task, with the reason.
func TestTasksZip(t *testing.T) {
	s := newStack(t)
	var pubs []string
	results := map[string][]byte{}
	for i := range 3 {
		pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, int64(30+i))))
		results[pub] = servicetest.PatternPNG(t, 16+i, int64(40+i))
		s.finish(t, s.internal(t, pub), results[pub])
		pubs = append(pubs, pub)
	}
	queued := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 50)))
	const bad = "not-a-task"
	r := s.call(t, http.MethodGet, "/api/tasks.zip?ids="+strings.Join([]string{pubs[0], queued, pubs[1], bad, pubs[0], pubs[2]}, ","), "", nil)
	if r.Status != http.StatusOK || r.Header.Get("Content-Type") != "application/zip" ||
		r.Header.Get("Content-Disposition") != `attachment; filename="imgmill-results.zip"` {
		t.Fatalf("GET /api/tasks.zip: %d %v", r.Status, r.Header)
	}
	zr, err := zip.NewReader(strings.NewReader(r.Body), int64(len(r.Body)))
	if err != nil {
		t.Fatalf("the answer is no zip: %v", err)
	}
	var names []string
	for _, f := range zr.File {
		names = append(names, f.Name)
		b := readEntry(t, f)
		if f.Name == frontend.MissingName {
			for _, want := range []string{queued + "\tqueued", bad + "\tno such task"} {
				if !strings.Contains(string(b), want+"\n") {
					t.Errorf("%s %q lacks the line %q", f.Name, b, want)
				}
			}
			continue
		}
		if f.Method != zip.Store {
			t.Errorf("entry %s: method %d, want stored (%d)", f.Name, f.Method, zip.Store)
		}
		var pub string
		for _, p := range pubs {
			if f.Name == frontend.DownloadName(wire.Status{Op: "swap"}, p, "image/png") {
				pub = p
			}
		}
		if pub == "" || !bytes.Equal(b, results[pub]) {
			t.Errorf("entry %s (%d bytes) is no task's result (task %q)", f.Name, len(b), pub)
		}
		delete(results, pub)
	}
	if len(results) != 0 || len(names) != 4 || names[3] != frontend.MissingName {
		t.Errorf("entries %v, want the 3 results then %s", names, frontend.MissingName)
	}

	// Nothing finished: the zip holds MISSING.txt alone. Refusals before the zip are JSON.
	r = s.call(t, http.MethodGet, "/api/tasks.zip?ids="+queued, "", nil)
	if zr, err := zip.NewReader(strings.NewReader(r.Body), int64(len(r.Body))); r.Status != http.StatusOK || err != nil ||
		len(zr.File) != 1 || zr.File[0].Name != frontend.MissingName {
		t.Errorf("zip of a queued task: %d, %v", r.Status, err)
	}
	expectJSONError(t, "no ids", s.call(t, http.MethodGet, "/api/tasks.zip", "", nil), http.StatusBadRequest,
		"no task ids: give them as ?ids=ID1,ID2,...")
}

func readEntry(t *testing.T, f *zip.File) []byte {
	t.Helper()
	rc, err := f.Open()
	if err != nil {
		t.Fatalf("entry %s: %v", f.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("entry %s: %v (its CRC is checked at its end)", f.Name, err)
	}
	return b
}

func TestUniqueName(t *testing.T) {
	taken := map[string]bool{}
	var got []string
	for _, name := range []string{"leaf-resize.png", "leaf-resize.png", "leaf-resize.png", "MISSING.txt", "noext", "noext"} {
		got = append(got, frontend.UniqueName(name, taken))
	}
	want := []string{"leaf-resize.png", "leaf-resize (2).png", "leaf-resize (3).png", "MISSING.txt", "noext", "noext (2)"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("names %q, want %q", got, want)
	}
}

// TestTasksZipStreams: a zip of 20 results of 1 MiB each is streamed: the whole test process (the
// frontend, master and storage serving it, and the client reading it) allocates well under the 20 MiB
// it carries, so neither the archive nor a result is held whole anywhere.
func TestTasksZipStreams(t *testing.T) {
	const n, size = 20, 1 << 20
	s := newStack(t)
	pubs := s.newTasks(t, n)
	for _, pub := range pubs {
		s.finish(t, s.internal(t, pub), paddedPNG(t, size))
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.frontendURL+"/api/tasks.zip?ids="+strings.Join(pubs, ","), nil)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := s.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if err != nil || resp.StatusCode != http.StatusOK || got < n*size {
		t.Fatalf("GET /api/tasks.zip: %d, %d bytes, %v; want 200 and over %d bytes", resp.StatusCode, got, err, n*size)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("a zip of %d bytes: %d bytes allocated in the whole process", got, allocated)
	if allocated > n*size/4 {
		t.Errorf("serving a zip of %d bytes allocated %d bytes, want well under (at most a quarter)", got, allocated)
	}
}
