package worker_test

import (
	"bytes"
	"context"
	"image"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// A worker in the storage's process reads and stores images through storage.Local, while the master
// reaches the same storage over HTTP: the task is processed and its result stored under its claim's
// token, as with the HTTP client.
func TestWorkerWithStorageInProcess(t *testing.T) {
	dir := t.TempDir()
	blobs, err := fileblob.Open(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "blob store", blobs)
	addr := enginetest.FreeAddr(t)
	svc, err := storage.NewService(storage.Config{Options: service.Options{Addr: addr, Logger: servicetest.Discard}, Blobs: blobs})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopStorage := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- svc.Run(runCtx) }()
	t.Cleanup(func() {
		stopStorage()
		if err := <-served; err != nil {
			t.Errorf("storage service: %v", err)
		}
	})
	hc := servicetest.NewHTTPClient(t)
	if !servicetest.PollFor(30*time.Second, func() bool { return client.CheckHealth(runCtx, hc, addr) == nil }) {
		t.Fatalf("the storage service at %s never answered", addr)
	}
	overHTTP := client.NewStorage(hc, client.Static(addr))

	dbURL, stopDatabase := servicetest.ServeDatabase(t, filepath.Join(dir, "tasks.db"), database.Policy{Lease: servicetest.StackLease})
	db := client.NewDatabase(hc, client.Static(servicetest.Addr(dbURL)))
	masterURL := servicetest.Serve(t, master.NewServer(db, overHTTP, master.Limits{})).URL
	t.Cleanup(stopDatabase) // end long polls before the master's server waits for them
	m := client.NewMaster(hc, client.Static(servicetest.Addr(masterURL)))

	startWorker(t, worker.Config{Master: m, Storage: svc.Local(), Concurrency: 1, Wait: time.Second, Logger: servicetest.Discard})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	src := testimage.Pattern(40, 7).SubImage(image.Rect(0, 0, 40, 24))
	data := servicetest.EncodePNG(t, src)
	up, err := m.Upload(ctx, bytes.NewReader(data), int64(len(data)), client.UploadParams{Op: "rotate:90"})
	if err != nil {
		t.Fatal(err)
	}
	task := waitTask(ctx, t, db, up.ID, "finished", func(t wire.Task) bool { return t.State == wire.Finished })

	img, err := overHTTP.GetImage(ctx, up.ID, wire.FinishedImage)
	if err != nil {
		t.Fatalf("the result over HTTP: %v", err)
	}
	defer img.Close()
	if img.Token == 0 || img.Token != task.Token {
		t.Errorf("result stored with token %d, want the claim's %d", img.Token, task.Token)
	}
	result, format, err := image.Decode(img)
	if err != nil {
		t.Fatalf("decode the result: %v", err)
	}
	if format != "png" || result.Bounds().Dx() != 24 || result.Bounds().Dy() != 40 {
		t.Errorf("result is a %s of %v, want a 24x40 png (rotated)", format, result.Bounds())
	}
}
