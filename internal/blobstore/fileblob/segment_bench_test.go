package fileblob_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
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

// BenchmarkOpenSegments is a start of a store holding 20,000 small images (10 KB each, 200 MB in 16 MiB
// segments): with the sealed segments' hint files (headers only), and without them (every segment read
// and checked). The page cache holds the segments either way, so the difference is CPU, and on a cold
// disk the reading of 200 MB more.
func BenchmarkOpenSegments(b *testing.B) {
	dir := b.TempDir()
	s, err := fileblob.OpenWith(dir, fileblob.Options{SmallMax: 64 << 10})
	if err != nil {
		b.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 1000)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := next.Add(1); i <= 20000; i = next.Add(1) {
				if _, err := s.Put(context.Background(), fmt.Sprintf("working/%d", i), bytes.NewReader(data), int64(len(data)), 0); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	s.Close()
	hints, _ := filepath.Glob(filepath.Join(dir, ".segments", "*.hint"))
	for _, withHints := range []bool{true, false} {
		b.Run(fmt.Sprintf("hints=%v", withHints), func(b *testing.B) {
			if !withHints {
				for _, h := range hints {
					os.Remove(h)
				}
			}
			cpu := servicetest.StartCPU()
			for b.Loop() {
				s, err := fileblob.OpenWith(dir, fileblob.Options{SmallMax: 64 << 10})
				if err != nil {
					b.Fatal(err)
				}
				if u := s.Usage("working"); u.Objects != 20000 {
					b.Fatalf("%d blobs after open, want 20000", u.Objects)
				}
				s.Close()
			}
			cpu.Report(b)
		})
	}
}
