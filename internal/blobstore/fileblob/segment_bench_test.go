package fileblob_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// BenchmarkPutGetSmall is what the pipeline does with every 64 px image's two blobs: a 10 KB blob Put
// under a new key (durable when Put returns) and read back whole. files: a file each, created, renamed and
// covered by the shared syncfs; segment: appended to a segment file covered by a shared fdatasync
// (OpenWith with SmallMax). clients=1 is one writer; clients=16 runs 16 per CPU (RunParallel), so
// that the shared flushes cover several Puts each, as under the bench's clients. cpu-ns/op counts the whole process's CPU.
func BenchmarkPutGetSmall(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	stores := []struct {
		name string
		open func(dir string) (*fileblob.Store, error)
	}{
		{"files", fileblob.Open},
		{"segment", func(dir string) (*fileblob.Store, error) {
			return fileblob.OpenWith(dir, fileblob.Options{SmallMax: 64 << 10})
		}},
	}
	for _, st := range stores {
		for _, par := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/clients=%d", st.name, par), func(b *testing.B) {
				s, err := st.open(b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				ctx := context.Background()
				var next atomic.Int64
				b.SetBytes(int64(len(data)))
				b.ReportAllocs()
				b.SetParallelism(par)
				cpu := servicetest.StartCPU()
				b.RunParallel(func(pb *testing.PB) {
					var got bytes.Buffer
					for pb.Next() {
						key := fmt.Sprintf("working/%d", next.Add(1))
						if _, err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
							b.Error(err)
							return
						}
						blob, err := s.Open(ctx, key)
						if err != nil {
							b.Error(err)
							return
						}
						got.Reset()
						_, err = io.Copy(&got, blob)
						blob.Close()
						if err != nil || got.Len() != len(data) {
							b.Errorf("read back %d bytes (%v), want %d", got.Len(), err, len(data))
							return
						}
					}
				})
				cpu.Report(b)
			})
		}
	}
}
