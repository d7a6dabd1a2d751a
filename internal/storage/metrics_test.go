package storage_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/storage"
)

// newMeteredStorage serves the storage with its metrics in reg, its requests observed as service.Run
// observes them.
func newMeteredStorage(t *testing.T, reg *metrics.Registry) *storageServer {
	t.Helper()
	blobs, err := fileblob.OpenWith(filepath.Join(t.TempDir(), "images"), fileblob.Options{SmallMax: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "blob store", blobs)
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(storage.NewServer(blobs, storage.WithMetrics(reg)), servicetest.Discard, httpapi.WithObserver(reg))
	srv.Start()
	t.Cleanup(srv.Close)
	return &storageServer{t: t, url: srv.URL, c: servicetest.NewHTTPClient(t)}
}

// Bytes and images stored count exactly what was stored, by state; bytes served what was sent.
func TestStorageMetrics(t *testing.T) {
	reg := metrics.New("storage")
	s := newMeteredStorage(t, reg)
	value := func(name string, labels ...string) float64 {
		return metricstest.Gather(t, reg.Gatherer()).Value(name, append([]string{"service", "storage"}, labels...)...)
	}
	check := func(what, name, state string, want float64) {
		t.Helper()
		if got := value(name, "state", state); got != want {
			t.Errorf("%s: %s{state=%q} = %v, want %v", what, name, state, got, want)
		}
	}
	upload := bytes.Repeat([]byte("upload-"), 1000) // 7000 bytes
	result := bytes.Repeat([]byte("r"), 1234)
	for _, state := range []string{"working", "finished"} {
		for _, name := range []string{"imgmill_storage_bytes_written_total", "imgmill_storage_objects_written_total", "imgmill_storage_bytes_served_total"} {
			check("at start", name, state, 0)
		}
	}

	s.expectText(s.send("7", "working", upload), 200, "success")
	check("after an upload", "imgmill_storage_bytes_written_total", "working", float64(len(upload)))
	check("after an upload", "imgmill_storage_objects_written_total", "working", 1)
	s.expectText(s.sendResult("7", "3", result), 200, "success")
	check("after a result", "imgmill_storage_bytes_written_total", "finished", float64(len(result)))
	check("after a result", "imgmill_storage_objects_written_total", "finished", 1)

	// Refused writes store nothing, and count nothing.
	s.expectText(s.sendResult("7", "2", result), 409, "Error: stale lease token for task 7")
	s.expectText(s.send("8", "working", nil), 400, "Error: empty image body")
	check("after refusals", "imgmill_storage_bytes_written_total", "finished", float64(len(result)))
	check("after refusals", "imgmill_storage_objects_written_total", "finished", 1)
	check("after refusals", "imgmill_storage_objects_written_total", "working", 1)

	s.expectImage("7", "working", upload)
	s.expectImage("7", "working", upload)
	check("after two downloads", "imgmill_storage_bytes_served_total", "working", float64(2*len(upload)))
	// A range request serves the range only.
	req := s.request("GET", "/getImage", imageQuery("7", "finished"), nil, 0)
	req.Header.Set("Range", "bytes=0-99")
	if r := s.do(req); r.Status != http.StatusPartialContent || len(r.Body) != 100 {
		t.Errorf("range request: %d with %d bytes, want 206 with 100", r.Status, len(r.Body))
	}
	check("after a range", "imgmill_storage_bytes_served_total", "finished", 100)
	s.get("9", "finished") // 404: nothing served
	check("after a miss", "imgmill_storage_bytes_served_total", "finished", 100)

	// What is held now, by state, follows the writes and the deletes.
	check("before a delete", "imgmill_storage_stored_bytes", "working", float64(len(upload)))
	check("before a delete", "imgmill_storage_stored_objects", "working", 1)
	check("before a delete", "imgmill_storage_stored_bytes", "finished", float64(len(result)))
	s.expectText(s.do(s.request("DELETE", "/images", url.Values{"id": {"7"}}, nil, 0)), 204, "")
	for _, state := range []string{"working", "finished"} {
		check("after a delete", "imgmill_storage_stored_bytes", state, 0)
		check("after a delete", "imgmill_storage_stored_objects", state, 0)
	}

	// The result (1234 bytes) was a segment record, the upload (7000) a file; the deleted record is dead.
	record := float64(fileblob.RecordSize("finished/7", len(result)))
	if total, live := value("imgmill_storage_segment_bytes"), value("imgmill_storage_segment_live_bytes"); total < record || live != 0 {
		t.Errorf("segment bytes %v, live %v; want at least the result's record (%v), none live", total, live, record)
	}

	if got := value("imgmill_http_requests_total", "route", "GET /getImage", "code", "200"); got != 2 {
		t.Errorf("GET /getImage 200 counted %v times, want 2", got)
	}
	if got := value("imgmill_http_requests_total", "route", "POST /sendImage", "code", "409"); got != 1 {
		t.Errorf("POST /sendImage 409 counted %v times, want 1", got)
	}
}
