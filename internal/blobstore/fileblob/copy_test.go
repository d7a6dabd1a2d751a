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
// With small blobs in segments, the copy holds both forms: the small blobs and a large one, and a key
// that a large blob replaced.
func TestCopy(t *testing.T) {
	for mode, o := range storeModes {
		t.Run(mode, func(t *testing.T) { testCopy(t, o) })
	}
}

func testCopy(t *testing.T, o Options) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "images")
	s, err := OpenWith(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := strings.Repeat("large", 20<<10)
	if _, err := s.Put(ctx, "finished/4", strings.NewReader("small first"), 11, 2); err != nil {
		t.Fatal(err)
	}
	blobs := map[string]struct {
		data  string
		fence int64
	}{"working/1": {"upload", 0}, "finished/1": {"result", 7}, "finished/2": {"other result", 1 << 40}, "finished/3": {big, 3}, "finished/4": {big, 4}}
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
	if n != 5 || size != int64(len("upload")+len("result")+len("other result")+2*len(big)) {
		t.Errorf("Copy = %d blobs, %d bytes; want 5 and the sum of their sizes", n, size)
	}
	if _, err := os.Stat(filepath.Join(dst, "finished", ".3.tmp-123")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file was copied: %v", err)
	}
	c, err := OpenWith(dst, o)
	if err != nil {
		t.Fatalf("open the copy: %v", err)
	}
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
