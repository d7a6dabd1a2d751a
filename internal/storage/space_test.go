package storage_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/storage"
)

// smallDisk is a file store on a pretend file system of capacity bytes: its free space is the capacity
// less what the store holds, whenever it is asked.
type smallDisk struct {
	*fileblob.Store
	capacity int64
}

func (d *smallDisk) FreeSpace(ctx context.Context) (free, size uint64, err error) {
	used := d.Usage("working").Bytes + d.Usage("finished").Bytes
	return uint64(max(d.capacity-used, 0)), 1 << 30, nil
}

// newSmallStorage serves the storage over a smallDisk of capacity bytes, with minFree and metrics in reg.
func newSmallStorage(t *testing.T, capacity int64, minFree storage.MinFree, reg *metrics.Registry) *storageServer {
	t.Helper()
	blobs, err := fileblob.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "blob store", blobs)
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(storage.NewServer(&smallDisk{Store: blobs, capacity: capacity},
		storage.WithMetrics(reg), storage.WithMinFree(minFree)), servicetest.Discard, httpapi.WithObserver(reg))
	srv.Start()
	t.Cleanup(srv.Close)
	return &storageServer{t: t, url: srv.URL, c: servicetest.NewHTTPClient(t)}
}

// Uploads are refused with 507 and Retry-After once they would leave less than --min-free; results
// still go in down to half of it; the metrics count what is held, the free space, the floor and the
// refusals.
func TestMinFree(t *testing.T) {
	reg := metrics.New("storage")
	s := newSmallStorage(t, 10000, storage.MinFree{Bytes: 4000}, reg)
	value := func(name string, labels ...string) float64 {
		return metricstest.Gather(t, reg.Gatherer()).Value(name, append([]string{"service", "storage"}, labels...)...)
	}
	check := func(name string, want float64, labels ...string) {
		t.Helper()
		if got := value(name, labels...); got != want {
			t.Errorf("%s%v = %v, want %v", name, labels, got, want)
		}
	}
	refused := func(r servicetest.Reply, body string) {
		t.Helper()
		s.expectText(r, http.StatusInsufficientStorage, body)
		if got := r.Header.Get("Retry-After"); got != "10" {
			t.Errorf("Retry-After %q, want 10", got)
		}
	}
	check("imgmill_storage_free_bytes", 10000)
	check("imgmill_storage_min_free_bytes", 4000)

	s.expectText(s.send("1", "working", bytes.Repeat([]byte("a"), 6000)), 200, "success") // leaves 4000: the floor
	refused(s.send("2", "working", []byte("b")),
		"Error: storage has 4000 B free, and this image of 1 B would take it below --min-free 4000 B; retry later")
	s.expectMissing("2", "working")
	s.expectText(s.sendResult("1", "1", bytes.Repeat([]byte("r"), 1500)), 200, "success") // leaves 2500
	refused(s.send("3", "working", []byte("c")), "Error: storage has 2.4 KiB free, below --min-free 3.9 KiB; retry later")
	refused(s.sendResult("3", "1", bytes.Repeat([]byte("r"), 501)),
		"Error: storage has 2.4 KiB free, and this image of 501 B would take it below half of --min-free 3.9 KiB, the floor for results; retry later")
	s.expectText(s.sendResult("3", "1", bytes.Repeat([]byte("r"), 500)), 200, "success") // leaves 2000: the results' floor
	s.expectImage("3", "finished", bytes.Repeat([]byte("r"), 500))

	check("imgmill_storage_space_refusals_total", 2, "state", "working")
	check("imgmill_storage_space_refusals_total", 1, "state", "finished")
	check("imgmill_storage_stored_bytes", 6000, "state", "working")
	check("imgmill_storage_stored_objects", 1, "state", "working")
	check("imgmill_storage_stored_bytes", 2000, "state", "finished")
	check("imgmill_storage_stored_objects", 2, "state", "finished")
	check("imgmill_storage_free_bytes", 2000)
	if got := value("imgmill_http_requests_total", "route", "POST /sendImage", "code", "507"); got != 3 {
		t.Errorf("POST /sendImage 507 counted %v times, want 3", got)
	}
}

// Without a floor nothing is refused, and the free space is not reported (nothing checks it).
func TestNoMinFree(t *testing.T) {
	reg := metrics.New("storage")
	s := newSmallStorage(t, 100, storage.MinFree{}, reg)
	s.expectText(s.send("1", "working", bytes.Repeat([]byte("a"), 1000)), 200, "success")
	fams := metricstest.Gather(t, reg.Gatherer())
	if fams.Has("imgmill_storage_free_bytes") || fams.Has("imgmill_storage_min_free_bytes") {
		t.Error("free space gauges without --min-free")
	}
	if got := fams.Value("imgmill_storage_stored_bytes", "state", "working"); got != 1000 {
		t.Errorf("stored bytes %v, want 1000", got)
	}
}

// On a real small disk (a tmpfs): uploads are refused with 507 before the disk is full, while a result
// and a database file beside the store still fit; once space is freed, uploads are accepted again.
func TestMinFreeOnASmallDisk(t *testing.T) {
	const mib = 1 << 20
	disk := enginetest.SmallDisk(t, 16*mib)
	blobs, err := fileblob.Open(disk.Dir())
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "blob store", blobs)
	s := &storageServer{t: t, c: servicetest.NewHTTPClient(t),
		url: servicetest.Serve(t, storage.NewServer(blobs, storage.WithMinFree(storage.MinFree{Percent: 25}))).URL}
	image := bytes.Repeat([]byte("i"), mib)

	accepted := 0
	var refusal servicetest.Reply
	for i := range 16 {
		r := s.send(strconv.Itoa(i), "working", image)
		if r.Status != http.StatusOK {
			refusal = r
			break
		}
		accepted++
	}
	if refusal.Status != http.StatusInsufficientStorage || !strings.HasPrefix(refusal.Body, "Error: storage has ") ||
		!strings.HasSuffix(refusal.Body, "below --min-free 4194304 B; retry later") || refusal.Header.Get("Retry-After") == "" {
		t.Fatalf("after %d uploads of 1 MiB on a 16 MiB disk: %d %q (Retry-After %q), want 507 below --min-free 4 MiB",
			accepted, refusal.Status, refusal.Body, refusal.Header.Get("Retry-After"))
	}
	if accepted < 8 {
		t.Errorf("only %d uploads of 1 MiB accepted on a 16 MiB disk with 4 MiB kept free", accepted)
	}
	room, ok := fault.Room(disk.Dir())
	t.Logf("%d uploads of 1 MiB accepted, then %q; %d bytes left on the disk", accepted, refusal.Body, room)
	if !ok || room < 3*mib {
		t.Errorf("%d bytes left on the disk when uploads are refused, want about 4 MiB", room)
	}
	// What the floor keeps: results of work already done, and a database on the same disk.
	s.expectText(s.sendResult("0", "1", image), 200, "success")
	db := filepath.Join(filepath.Dir(disk.Dir()), "tasks.db")
	if err := os.WriteFile(db, image, 0o600); err != nil {
		t.Fatalf("a database file of 1 MiB beside the refused uploads: %v", err)
	}

	for i := range accepted {
		if err := blobs.Delete(t.Context(), "working/"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Within a second (the free space is measured at most once a second), uploads are accepted again.
	deadline := time.Now().Add(30 * time.Second)
	for r := s.send("100", "working", image); r.Status != http.StatusOK; r = s.send("100", "working", image) {
		if r.Status != http.StatusInsufficientStorage || time.Now().After(deadline) {
			t.Fatalf("an upload once space was freed: %d %q", r.Status, r.Body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.expectImage("100", "working", image)
}
