package fileblob

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/blobstore"
)

// TestCopy: a copy of a store in use opens as a store with the same blobs and fences, without the
// temporary files of writes in progress, and is never made over an existing directory.
func TestCopy(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "images")
	s := openStore(t, dir)
	defer s.Close()
	blobs := map[string]struct {
		data  string
		fence int64
	}{"working/1": {"upload", 0}, "finished/1": {"result", 7}, "finished/2": {"other result", 1 << 40}}
	for key, b := range blobs {
		if _, err := s.Put(ctx, key, strings.NewReader(b.data), int64(len(b.data)), b.fence); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "finished", ".3.tmp-123"), "half a write")

	dst := filepath.Join(t.TempDir(), "copy")
	n, size, err := Copy(ctx, dir, dst)
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	if n != 3 || size != int64(len("upload")+len("result")+len("other result")) {
		t.Errorf("Copy = %d blobs, %d bytes; want 3 and the sum of their sizes", n, size)
	}
	if _, err := os.Stat(filepath.Join(dst, "finished", ".3.tmp-123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file was copied: %v", err)
	}
	c := openStore(t, dst)
	defer c.Close()
	for key, want := range blobs {
		b, err := c.Open(ctx, key)
		if err != nil {
			t.Fatalf("Open(%s) in the copy: %v", key, err)
		}
		data, err := io.ReadAll(b)
		b.Close()
		if err != nil || string(data) != want.data || b.Fence != want.fence {
			t.Errorf("%s in the copy: %q, fence %d, %v; want %q, fence %d", key, data, b.Fence, err, want.data, want.fence)
		}
	}
	// The copy fences like the original: a stale writer is refused.
	if _, err := c.Put(ctx, "finished/1", strings.NewReader("stale"), 5, 6); !errors.Is(err, blobstore.ErrStaleFence) {
		t.Errorf("stale Put in the copy: %v, want ErrStaleFence", err)
	}
	if _, _, err := Copy(ctx, dir, dst); err == nil {
		t.Error("Copy over an existing directory succeeded")
	}
}
