package storage_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/wire"
)

// Local works on the very server that serves HTTP: an image stored through either is read through the
// other, with its fence, and the service's metrics count both.
func TestLocalSharesTheServer(t *testing.T) {
	svc, addr, hc := serve(t, storage.Config{Blobs: openFiles(t)})
	remote, local := client.NewStorage(hc, client.Static(addr)), svc.Local()

	if err := local.SendResult(t.Context(), 1, 7, strings.NewReader("in-process"), 10); err != nil {
		t.Fatalf("Local.SendResult: %v", err)
	}
	expectImage(t, remote, 1, wire.FinishedImage, "in-process", 7)
	err := remote.SendResult(t.Context(), 1, 6, strings.NewReader("older claim"), 11)
	if !errors.Is(err, client.ErrStaleToken) {
		t.Errorf("over HTTP, SendResult with a token older than the one stored in-process = %v, want ErrStaleToken", err)
	}
	if err := remote.SendImage(t.Context(), 2, wire.WorkingImage, strings.NewReader("over HTTP"), 9); err != nil {
		t.Fatalf("SendImage over HTTP: %v", err)
	}
	expectImage(t, local, 2, wire.WorkingImage, "over HTTP", 0)

	fams := metricstest.Scrape(t, hc, "http://"+addr+"/metrics")
	for _, c := range []struct {
		name, state string
		want        float64
	}{
		{"imgmill_storage_objects_written_total", wire.FinishedImage, 1}, // in-process
		{"imgmill_storage_objects_written_total", wire.WorkingImage, 1},  // over HTTP
		{"imgmill_storage_bytes_served_total", wire.WorkingImage, 9},     // read in-process
		{"imgmill_storage_bytes_served_total", wire.FinishedImage, 10},   // read over HTTP
	} {
		if got := fams.Value(c.name, "state", c.state); got != c.want {
			t.Errorf("%s{state=%q} = %v, want %v", c.name, c.state, got, c.want)
		}
	}
	if addr, err := local.Addr(t.Context()); addr != storage.LocalAddr || err != nil {
		t.Errorf("Local.Addr = %q, %v; want %q", addr, err, storage.LocalAddr)
	}
}

// A caller in this process can announce a size its body does not have (over HTTP, net/http keeps body
// and Content-Length together): the image is refused as bad input and nothing is stored.
func TestLocalSizeMismatch(t *testing.T) {
	svc, err := storage.NewService(storage.Config{Blobs: openFiles(t)})
	if err != nil {
		t.Fatal(err)
	}
	st := svc.Local()
	for _, c := range []struct {
		body string
		size int64
	}{{"short", 10}, {"longer than announced", 4}} {
		err := st.SendImage(t.Context(), 1, wire.WorkingImage, strings.NewReader(c.body), c.size)
		if !client.IsStatus(err, http.StatusBadRequest) || !errors.Is(err, blobstore.ErrSizeMismatch) {
			t.Errorf("SendImage of %d bytes announced as %d = %v, want 400 wrapping ErrSizeMismatch", len(c.body), c.size, err)
		}
		expectNone(t, st, 1, wire.WorkingImage)
	}
}

func TestNewServiceWithoutBlobStore(t *testing.T) {
	if _, err := storage.NewService(storage.Config{}); err == nil {
		t.Error("NewService without a blob store succeeded")
	}
}
