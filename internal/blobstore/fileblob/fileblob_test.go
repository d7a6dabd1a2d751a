package fileblob

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/blobstoretest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	return s
}

func TestContract(t *testing.T) {
	blobstoretest.Run(t, func(t *testing.T) blobstore.Store {
		return openStore(t, t.TempDir())
	})
}

// tempFiles lists the temporary files under dir.
func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ok, _ := filepath.Match(tempPattern, d.Name()); ok {
			found = append(found, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLayout(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if _, err := s.Put(context.Background(), "working/42", strings.NewReader("pixels"), 6, 0); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "working", "42"))
	if err != nil {
		t.Fatalf("the blob is not at dir/working/42: %v", err)
	}
	if string(got) != "pixels" {
		t.Fatalf("dir/working/42 = %q", got)
	}
}

func TestOpenRemovesStaleTempFiles(t *testing.T) {
	dir := t.TempDir()
	// What a crash during Puts leaves: atomicfile's temporary files next to complete blobs.
	stale := []string{
		filepath.Join(dir, ".42.tmp-123456"),
		filepath.Join(dir, "working", ".42.tmp-987"),
		filepath.Join(dir, "working", "deep", ".7.tmp-1"),
		filepath.Join(dir, ".fence-check.tmp-42"), // Open's own check of extended attributes
	}
	for _, p := range stale {
		writeFile(t, p, "partial")
	}
	writeFile(t, filepath.Join(dir, "working", "42"), "complete")
	writeFile(t, filepath.Join(dir, "working", "deep", "7"), "seven")
	// Not atomicfile's: left alone.
	writeFile(t, filepath.Join(dir, ".keep"), "mine")

	s := openStore(t, dir)
	for _, p := range stale {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("stale temporary file %s survived Open (%v)", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ".keep")); err != nil {
		t.Errorf("Open removed a file that is not a temporary file: %v", err)
	}
	for key, want := range map[string]string{"working/42": "complete", "working/deep/7": "seven"} {
		b, err := s.Open(context.Background(), key)
		if err != nil {
			t.Fatalf("Open(%q): %v", key, err)
		}
		got, err := io.ReadAll(b)
		b.Close()
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", key, got, err, want)
		}
	}
}

func TestOpenCreatesDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	s := openStore(t, dir)
	if _, err := s.Put(context.Background(), "k", strings.NewReader("v"), 1, 0); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("Open did not create %s: %v", dir, err)
	}
}

func TestOpenRefusesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	writeFile(t, path, "x")
	if _, err := Open(path); err == nil {
		t.Fatal("Open of a regular file succeeded")
	}
}

// failAfter serves n bytes of zeros, then fails.
type failAfter struct{ n int }

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("boom")
	}
	k := min(len(p), f.n)
	clear(p[:k])
	f.n -= k
	return k, nil
}

func TestFailedPutLeavesNoTempFile(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if _, err := s.Put(context.Background(), "working/1", &failAfter{n: 100 << 10}, -1, 0); err == nil {
		t.Fatal("Put with a failing reader succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Put(ctx, "working/2", strings.NewReader("data"), 4, 0); err == nil {
		t.Fatal("Put with a cancelled context succeeded")
	}
	if found := tempFiles(t, dir); len(found) != 0 {
		t.Fatalf("failed Puts left temporary files: %v", found)
	}
}

func TestPutSizeMismatch(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.Put(ctx, "k", strings.NewReader("old"), 3, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		data string
		size int64
	}{
		{"short", 10},      // a truncated upload
		{"longer than", 4}, // more than announced
		{"", 1},
		{"x", 0},
	} {
		_, err := s.Put(ctx, "k", strings.NewReader(tc.data), tc.size, 0)
		if !errors.Is(err, blobstore.ErrSizeMismatch) {
			t.Errorf("Put(%d bytes, size %d) = %v, want a size mismatch", len(tc.data), tc.size, err)
		}
	}
	if _, err := s.Put(ctx, "k", strings.NewReader("x"), -2, 0); err == nil {
		t.Error("Put with size -2 succeeded")
	}
	b, err := s.Open(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, _ := io.ReadAll(b); string(got) != "old" {
		t.Fatalf("after rejected Puts the blob is %q, want %q", got, "old")
	}
}

// A file store cannot hold both "a" and "a/b": the clash must be a clean error that changes nothing.
func TestKeyPrefixClash(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.Put(ctx, "a", strings.NewReader("blob a"), -1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "a/b", strings.NewReader("blob a/b"), -1, 0); err == nil {
		t.Error(`Put("a/b") over the blob "a" succeeded`)
	}
	if _, err := s.Put(ctx, "c/d", strings.NewReader("blob c/d"), -1, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "c", strings.NewReader("blob c"), -1, 0); err == nil {
		t.Error(`Put("c") over the prefix of "c/d" succeeded`)
	}
	for key, want := range map[string]string{"a": "blob a", "c/d": "blob c/d"} {
		b, err := s.Open(ctx, key)
		if err != nil {
			t.Fatalf("Open(%q): %v", key, err)
		}
		got, _ := io.ReadAll(b)
		b.Close()
		if string(got) != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if _, err := s.Open(ctx, "c"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf(`Open("c") = %v, want ErrNotFound`, err)
	}
}

// The longest segment ValidateKey accepts still fits a file name, temporary name included; a longer one
// is refused as an invalid key.
func TestLongSegment(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := context.Background()
	key := "working/" + strings.Repeat("y", 200)
	if _, err := s.Put(ctx, key, bytes.NewReader([]byte("v")), 1, 0); err != nil {
		t.Errorf("Put with a 200-byte segment: %v", err)
	}
	key = "working/" + strings.Repeat("x", 201)
	if _, err := s.Put(ctx, key, bytes.NewReader([]byte("v")), 1, 0); !errors.Is(err, blobstore.ErrInvalidKey) {
		t.Errorf("Put with a 201-byte segment = %v, want ErrInvalidKey", err)
	}
	if _, err := s.Open(ctx, key); !errors.Is(err, blobstore.ErrInvalidKey) {
		t.Errorf("Open with a 201-byte segment = %v, want ErrInvalidKey", err)
	}
}

// smallDiskSize is the size of the tmpfs of the outage tests: a few of the suite's blobs fit.
const smallDiskSize = 16 << 20

// TestOutage runs the outage part of the contract on a disk that fills up, and on one remounted
// read-only: writes fail as out of space, or unavailable, until it is fixed; reads go on working, and a
// store opens on such a disk.
func TestOutage(t *testing.T) {
	for mode, opts := range storeModes {
		for name, o := range enginetest.DiskOutages(smallDiskSize, func(t *testing.T, dir string) blobstore.Store { return openWith(t, dir, opts) }) {
			if name == "ReadOnly" && opts.SmallMax > 0 {
				// The disk cannot be remounted read-only while the segment files are open for writing
				// (neither can SQLite's); a read-only disk's failed writes are those of a failed flush,
				// TestSegmentFailedFlush and TestSegmentOpenReadOnly.
				continue
			}
			t.Run(mode+"/"+name, func(t *testing.T) { blobstoretest.RunOutage(t, o) })
		}
	}
}

// A Put that fails on a full disk leaves the blob it would have replaced, with its fence, and no
// temporary file; Ping says the disk is full, and once there is room again the same Put goes through.
func TestFullDisk(t *testing.T) {
	ctx := t.Context()
	disk := enginetest.SmallDisk(t, smallDiskSize)
	s := openStore(t, disk.Dir())
	defer s.Close()
	if _, err := s.Put(ctx, "finished/1", strings.NewReader("old"), 3, 5); err != nil {
		t.Fatal(err)
	}
	disk.Fill(t)
	data := bytes.Repeat([]byte("x"), 100<<10)
	for _, size := range []int64{int64(len(data)), -1} {
		if _, err := s.Put(ctx, "finished/1", bytes.NewReader(data), size, 6); !fault.IsNoSpace(err) {
			t.Fatalf("Put (size %d) on a full disk = %v, want an out-of-space error", size, err)
		}
	}
	if err := s.Ping(ctx); !fault.IsNoSpace(err) {
		t.Errorf("Ping of a full disk = %v, want an out-of-space error", err)
	}
	if got, fence := openBlob(t, s, "finished/1"); string(got) != "old" || fence != 5 {
		t.Errorf("after failed Puts the blob is %q with fence %d, want %q with fence 5", got, fence, "old")
	}
	if found := tempFiles(t, disk.Dir()); len(found) != 0 {
		t.Errorf("failed Puts left temporary files: %v", found)
	}
	disk.Free(t)
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping once there is room: %v", err)
	}
	if _, err := s.Put(ctx, "finished/1", bytes.NewReader(data), int64(len(data)), 6); err != nil {
		t.Fatalf("Put once there is room: %v", err)
	}
}

// Ping of a store whose directory is gone (its disk unmounted, say) reports the store unavailable; the
// contract suite checks Ping otherwise.
func TestPingWithoutDirectory(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, filepath.Join(dir, "blobs"))
	defer s.Close()
	if err := os.RemoveAll(filepath.Join(dir, "blobs")); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); !fault.IsTransient(err) || fault.IsNoSpace(err) {
		t.Errorf("Ping of a removed directory = %v, want an unavailable error", err)
	}
}

// Usage counts what Open finds (not the temporary files of interrupted writes) and follows every Put,
// replacement and Delete; refused and failed writes change nothing.
func TestUsage(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "working", "1"), "12345")
	writeFile(t, filepath.Join(dir, "working", "2"), "123")
	writeFile(t, filepath.Join(dir, "working", ".3.tmp-99"), "interrupted")
	writeFile(t, filepath.Join(dir, "finished", "1"), "1")
	s := openStore(t, dir)
	defer s.Close()
	check := func(what, prefix string, objects, bytes int64) {
		t.Helper()
		if got, want := s.Usage(prefix), (blobstore.Usage{Objects: objects, Bytes: bytes}); got != want {
			t.Errorf("%s: Usage(%q) = %+v, want %+v", what, prefix, got, want)
		}
	}
	check("at Open", "working", 2, 8)
	check("at Open", "finished", 1, 1)
	check("at Open", "other", 0, 0)

	put := func(key, content string, fence int64) error {
		_, err := s.Put(ctx, key, strings.NewReader(content), int64(len(content)), fence)
		return err
	}
	if err := put("working/4", "1234567", 0); err != nil {
		t.Fatal(err)
	}
	check("a new blob", "working", 3, 15)
	if err := put("working/1", "12", 0); err != nil {
		t.Fatal(err)
	}
	check("a replaced blob", "working", 3, 12)
	if err := put("finished/1", "123456", 9); err != nil {
		t.Fatal(err)
	}
	if err := put("finished/1", "123456789", 8); !errors.Is(err, blobstore.ErrStaleFence) {
		t.Fatalf("stale fence: %v", err)
	}
	if _, err := s.Put(ctx, "finished/2", &failAfter{n: 3}, -1, 0); err == nil {
		t.Fatal("a failing stream was stored")
	}
	check("refused and failed writes", "finished", 1, 6)
	for _, key := range []string{"working/2", "working/2", "working/9"} {
		if err := s.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	check("deleted (twice) and a missing one", "working", 2, 9)
}

// FreeSpace sees the file system's size and what is left of it.
func TestFreeSpace(t *testing.T) {
	disk := enginetest.SmallDisk(t, smallDiskSize)
	s := openStore(t, disk.Dir())
	defer s.Close()
	free, size, err := s.FreeSpace(t.Context())
	if err != nil || size < smallDiskSize || free > size || free < smallDiskSize/2 {
		t.Fatalf("FreeSpace of an empty disk of %d bytes = %d, %d, %v", smallDiskSize, free, size, err)
	}
	disk.Fill(t)
	if free, _, err := s.FreeSpace(t.Context()); err != nil || free != 0 {
		t.Errorf("FreeSpace of a full disk = %d, %v; want 0", free, err)
	}
}

// TestListSkipsTemporaryFiles: the temporary file of a Put in progress, and files whose names are no
// keys, are not blobs.
func TestListSkipsTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	if _, err := s.Put(ctx, "working/1", strings.NewReader("one"), 3, 0); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".2.tmp-123", "UPPER", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, "working", name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	for e, err := range s.List(ctx, "", "") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, e.Key)
	}
	if strings.Join(keys, ",") != "working/1" {
		t.Errorf("List = %q, want only working/1", keys)
	}
}
