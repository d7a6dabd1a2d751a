package storage_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// BenchmarkHopStorageSendGet is one round trip of the storage hop over HTTP on loopback, as the
// pipeline makes it for every image: the storage client sends a 64 px PNG (9-10 KiB) under a new id
// (a new file, renamed into place and made durable by the shared flush) and reads it back. Client and
// service run in this process, so cpu-ns/op and allocs/op count both ends. It is the number an
// in-process transport is compared with.
func BenchmarkHopStorageSendGet(b *testing.B) {
	url := servicetest.ServeStorage(b, filepath.Join(b.TempDir(), "images"), nil)
	st := client.NewStorage(servicetest.NewHTTPClient(b), client.Static(servicetest.Addr(url)))
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
