package storage_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/wire"
)

// BenchmarkHopStorageSendGet is one round trip of the storage hop, as the pipeline makes it for every
// image: a 64 px PNG (9-10 KiB) is sent under a new id (a new file, renamed into place and made durable
// by the shared flush) and read back. Over http the storage client talks to the service on loopback;
// over local a caller in the same process (imgmill serve) calls the service's Local API, the same
// server without HTTP. Client and service run in this process, so cpu-ns/op and allocs/op count both
// ends.
func BenchmarkHopStorageSendGet(b *testing.B) {
	for _, tr := range storageTransports {
		b.Run(tr.name, func(b *testing.B) {
			benchmarkSendGet(b, tr.open(b, filepath.Join(b.TempDir(), "images")))
		})
	}
}

// BenchmarkHopStorageGet reads one stored 64 px PNG back, over and over: the storage hop without the
// disk flush that dominates a send, so that what is left is the transport's own cost (and a read of
// a file the page cache holds).
func BenchmarkHopStorageGet(b *testing.B) {
	for _, tr := range storageTransports {
		b.Run(tr.name, func(b *testing.B) {
			st := tr.open(b, filepath.Join(b.TempDir(), "images"))
			img := servicetest.PatternPNG(b, 64, 1)
			ctx := context.Background()
			if err := st.SendImage(ctx, 1, wire.WorkingImage, bytes.NewReader(img), int64(len(img))); err != nil {
				b.Fatal(err)
			}
			var got bytes.Buffer
			b.SetBytes(int64(len(img)))
			b.ReportAllocs()
			cpu := servicetest.StartCPU()
			for b.Loop() {
				stored, err := st.GetImage(ctx, 1, wire.WorkingImage)
				if err != nil {
					b.Fatalf("get image: %v", err)
				}
				got.Reset()
				_, err = io.Copy(&got, stored)
				stored.Close()
				if err != nil || got.Len() != len(img) {
					b.Fatalf("image read back as %d bytes (%v), want the %d sent", got.Len(), err, len(img))
				}
			}
			cpu.Report(b)
		})
	}
}

// storageTransports open a storage service over a file blob store in dir, reached over HTTP on
// loopback, or in-process through its Local API.
var storageTransports = []struct {
	name string
	open func(b *testing.B, dir string) storageAPI
}{
	{"http", func(b *testing.B, dir string) storageAPI {
		url := servicetest.ServeStorage(b, dir, nil)
		return client.NewStorage(servicetest.NewHTTPClient(b), client.Static(servicetest.Addr(url)))
	}},
	{"local", func(b *testing.B, dir string) storageAPI {
		blobs, err := fileblob.Open(dir)
		if err != nil {
			b.Fatalf("fileblob.Open: %v", err)
		}
		servicetest.CloseAtCleanup(b, "blob store", blobs)
		svc, err := storage.NewService(storage.Config{Blobs: blobs})
		if err != nil {
			b.Fatal(err)
		}
		return svc.Local()
	}},
}

func benchmarkSendGet(b *testing.B, st storageAPI) {
	img := servicetest.PatternPNG(b, 64, 1)
	ctx := context.Background()
	var got bytes.Buffer
	id := int64(0)
	b.SetBytes(int64(len(img)))
	b.ReportAllocs()
	cpu := servicetest.StartCPU()
	for b.Loop() {
		id++
		if err := st.SendImage(ctx, id, wire.WorkingImage, bytes.NewReader(img), int64(len(img))); err != nil {
			b.Fatalf("send image %d: %v", id, err)
		}
		stored, err := st.GetImage(ctx, id, wire.WorkingImage)
		if err != nil {
			b.Fatalf("get image %d: %v", id, err)
		}
		got.Reset()
		_, err = io.Copy(&got, stored)
		stored.Close()
		if err != nil || !bytes.Equal(got.Bytes(), img) {
			b.Fatalf("image %d read back as %d bytes (%v), want the %d sent", id, got.Len(), err, len(img))
		}
	}
	cpu.Report(b)
}
