//go:build linux || darwin

package fileblob

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgmill/imgmill/internal/blobstore"
)

// rawFence returns the fence attribute of the file at path, ok false when it has none.
func rawFence(t *testing.T, path string) (value string, ok bool) {
	t.Helper()
	buf := make([]byte, 64)
	n, err := unix.Getxattr(path, fenceAttr, buf)
	if errors.Is(err, errNoAttr) {
		return "", false
	}
	if err != nil {
		t.Fatalf("getxattr %s: %v", path, err)
	}
	return string(buf[:n]), true
}

func setRawFence(t *testing.T, path, value string) {
	t.Helper()
	if err := unix.Setxattr(path, fenceAttr, []byte(value), 0); err != nil {
		t.Fatalf("setxattr %s: %v", path, err)
	}
}

func openBlob(t *testing.T, s *Store, key string) (data []byte, fence int64) {
	t.Helper()
	b, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer b.Close()
	data, err = io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return data, b.Fence
}

// The file holds exactly the blob's bytes; the fence is in its extended attribute, absent for fence 0.
func TestFenceLayout(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	path := filepath.Join(dir, "finished", "42")
	if _, err := s.Put(ctx, "finished/42", strings.NewReader("pixels"), 6, 42); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(path); err != nil || string(got) != "pixels" {
		t.Fatalf("dir/finished/42 = %q, %v; want the bare bytes", got, err)
	}
	if v, ok := rawFence(t, path); !ok || v != "42" {
		t.Fatalf("%s = %q (present %v), want %q", fenceAttr, v, ok, "42")
	}
	if _, err := s.Put(ctx, "finished/42", strings.NewReader("unfenced"), 8, 0); err != nil {
		t.Fatal(err)
	}
	if v, ok := rawFence(t, path); ok {
		t.Fatalf("an unfenced blob carries %s = %q", fenceAttr, v)
	}
}

// Blobs written before fences existed have no attribute: fence 0, so any fence may replace them.
func TestLegacyBlobHasFenceZero(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "finished", "1"), "legacy")
	s := openStore(t, dir)
	if data, fence := openBlob(t, s, "finished/1"); string(data) != "legacy" || fence != 0 {
		t.Fatalf("legacy blob = %q fence %d, want %q fence 0", data, fence, "legacy")
	}
	if _, err := s.Put(context.Background(), "finished/1", strings.NewReader("new"), 3, 1); err != nil {
		t.Fatalf("fenced Put over a legacy blob: %v", err)
	}
	if data, fence := openBlob(t, s, "finished/1"); string(data) != "new" || fence != 1 {
		t.Fatalf("after Put = %q fence %d, want %q fence 1", data, fence, "new")
	}
}

// A fence attribute Put cannot have written is not guessed at: Open and fenced Puts fail, changing
// nothing. An unfenced Put, which never looks at fences, still replaces the blob.
func TestMalformedFence(t *testing.T) {
	for _, value := range []string{"garbage", "", "0", "-3", "12x", " 7", strings.Repeat("9", 30)} {
		dir := t.TempDir()
		s := openStore(t, dir)
		ctx := context.Background()
		path := filepath.Join(dir, "finished", "1")
		if _, err := s.Put(ctx, "finished/1", strings.NewReader("stored"), 6, 5); err != nil {
			t.Fatal(err)
		}
		setRawFence(t, path, value)
		if b, err := s.Open(ctx, "finished/1"); err == nil {
			b.Close()
			t.Errorf("%q: Open succeeded with fence %d", value, b.Fence)
		} else if errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("%q: Open = %v, want a malformed fence error", value, err)
		}
		_, err := s.Put(ctx, "finished/1", strings.NewReader("fenced"), 6, 1<<40)
		if err == nil || errors.Is(err, blobstore.ErrStaleFence) {
			t.Errorf("%q: fenced Put = %v, want a malformed fence error", value, err)
		}
		if got, _ := os.ReadFile(path); string(got) != "stored" {
			t.Errorf("%q: a failed Put changed the blob to %q", value, got)
		}
		if v, _ := rawFence(t, path); v != value {
			t.Errorf("%q: a failed Put changed the fence to %q", value, v)
		}
		if found := tempFiles(t, dir); len(found) != 0 {
			t.Errorf("%q: the failed Put left temporary files: %v", value, found)
		}
		if _, err := s.Put(ctx, "finished/1", strings.NewReader("unfenced"), 8, 0); err != nil {
			t.Errorf("%q: unfenced Put: %v", value, err)
		}
		if data, fence := openBlob(t, s, "finished/1"); string(data) != "unfenced" || fence != 0 {
			t.Errorf("%q: after the unfenced Put = %q fence %d", value, data, fence)
		}
	}
}

// A crash after a fenced Put wrote its temporary file, before the rename, leaves the stored blob and
// its fence as they were; the next Open removes the temporary file with its higher fence.
func TestCrashBeforeRenameKeepsFence(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	if _, err := s.Put(ctx, "finished/7", strings.NewReader("fence five"), 10, 5); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "finished", ".7.tmp-99")
	writeFile(t, tmp, "fence nine, never renamed")
	setRawFence(t, tmp, "9")

	s = openStore(t, dir) // the restart
	if _, err := os.Lstat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the interrupted Put's temporary file survived Open: %v", err)
	}
	if data, fence := openBlob(t, s, "finished/7"); string(data) != "fence five" || fence != 5 {
		t.Fatalf("after the crash = %q fence %d, want %q fence 5", data, fence, "fence five")
	}
	if _, err := s.Put(ctx, "finished/7", strings.NewReader("x"), 1, 4); !errors.Is(err, blobstore.ErrStaleFence) {
		t.Fatalf("Put with fence 4 = %v, want ErrStaleFence", err)
	}
	if _, err := s.Put(ctx, "finished/7", strings.NewReader("fence six"), 9, 6); err != nil {
		t.Fatalf("Put with fence 6: %v", err)
	}
}

func TestOpenLeavesNoTempFiles(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir)
	openStore(t, dir)
	if found := tempFiles(t, dir); len(found) != 0 {
		t.Fatalf("Open left temporary files: %v", found)
	}
}

func TestStalePutLeavesNoTempFile(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	ctx := context.Background()
	if _, err := s.Put(ctx, "finished/1", strings.NewReader("ten"), 3, 10); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("z"), 1<<20)
	if _, err := s.Put(ctx, "finished/1", bytes.NewReader(data), int64(len(data)), 9); !errors.Is(err, blobstore.ErrStaleFence) {
		t.Fatalf("stale Put = %v", err)
	}
	if found := tempFiles(t, dir); len(found) != 0 {
		t.Fatalf("a refused Put left temporary files: %v", found)
	}
}

// The per-key locks are freed once nobody holds or waits for them.
func TestKeyLocksFreed(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			key := []string{"a", "b", "c/d"}[i%3]
			if _, err := s.Put(ctx, key, strings.NewReader("v"), 1, int64(i)); err != nil && !errors.Is(err, blobstore.ErrStaleFence) {
				t.Error(err)
			}
			if i%5 == 0 {
				if err := s.Delete(ctx, key); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	if len(s.keys.m) != 0 {
		t.Fatalf("%d key locks left after every Put returned", len(s.keys.m))
	}
}
