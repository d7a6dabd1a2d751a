package atomicfile

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
)

// listDir returns the names in dir, sorted.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// wantOnly fails unless dir holds exactly names: no temporary file left over.
func wantOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	slices.Sort(names)
	if got := listDir(t, dir); !slices.Equal(got, names) {
		t.Fatalf("%s holds %q, want %q", dir, got, names)
	}
}

func wantContent(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s = %q, want %q", path, got, want)
	}
}

func writeString(t *testing.T, path, content string) {
	t.Helper()
	n, err := Write(context.Background(), path, strings.NewReader(content))
	if err != nil {
		t.Fatalf("Write(%s): %v", path, err)
	}
	if n != int64(len(content)) {
		t.Fatalf("Write(%s) = %d bytes, want %d", path, n, len(content))
	}
}

// createFilled creates the temporary file for path and fills it with content; the test's end aborts it.
func createFilled(t *testing.T, path, content string) *Temp {
	t.Helper()
	tmp, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tmp.Abort)
	if _, err := tmp.Fill(context.Background(), strings.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	return tmp
}

var errBoom = errors.New("boom")

// failingReader serves n bytes, then fails with errBoom.
func failingReader(n int) io.Reader {
	return io.MultiReader(strings.NewReader(strings.Repeat("x", n)), iotest.ErrReader(errBoom))
}

func TestWriteRoundTrip(t *testing.T) {
	for _, content := range []string{"hello, world", "", strings.Repeat("large ", 100<<10)} {
		dir := t.TempDir()
		path := filepath.Join(dir, "snapshot")
		writeString(t, path, content)
		wantContent(t, path, content)
		wantOnly(t, dir, "snapshot")
	}
}

func TestWriteOverwrites(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	writeString(t, path, "a longer old version")
	writeString(t, path, "new")
	wantContent(t, path, "new")
	wantOnly(t, dir, "snapshot")
}

// A path without a directory is in the working directory.
func TestWriteRelativePath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	writeString(t, "here", "relative")
	wantContent(t, filepath.Join(dir, "here"), "relative")
	wantOnly(t, dir, "here")
}

func TestWriteFailingReaderKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	writeString(t, path, "old")
	n, err := Write(context.Background(), path, failingReader(100<<10))
	if !errors.Is(err, errBoom) {
		t.Fatalf("Write with a failing reader = %v, want %v", err, errBoom)
	}
	if n != 100<<10 {
		t.Errorf("Write with a failing reader reported %d bytes, want %d", n, 100<<10)
	}
	wantContent(t, path, "old")
	wantOnly(t, dir, "snapshot")
}

func TestWriteFailingReaderNoTarget(t *testing.T) {
	dir := t.TempDir()
	if _, err := Write(context.Background(), filepath.Join(dir, "new"), failingReader(10)); err == nil {
		t.Fatal("Write with a failing reader succeeded")
	}
	wantOnly(t, dir)
}

func TestWriteCancelledContextKeepsOld(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	writeString(t, path, "old")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Write(ctx, path, strings.NewReader("new"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Write with a cancelled context = %v, want %v", err, context.Canceled)
	}
	wantContent(t, path, "old")
	wantOnly(t, dir, "snapshot")
}

// cancelAfter cancels its context once it has served its first read.
type cancelAfter struct {
	cancel context.CancelFunc
	served bool
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.served {
		return len(p), nil // endless: only the context stops the copy
	}
	c.served = true
	c.cancel()
	return copy(p, "first"), nil
}

func TestWriteContextEndsMidStream(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	writeString(t, path, "old")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := Write(ctx, path, &cancelAfter{cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Write whose context ends mid-stream = %v, want %v", err, context.Canceled)
	}
	wantContent(t, path, "old")
	wantOnly(t, dir, "snapshot")
}

func TestWriteMissingDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := Write(context.Background(), filepath.Join(dir, "no", "such"), strings.NewReader("x")); err == nil {
		t.Fatal("Write into a missing directory succeeded")
	}
	wantOnly(t, dir)
}

// The temporary file's name is what the stores' clean-up of crashed writes looks for.
func TestTempName(t *testing.T) {
	dir := t.TempDir()
	tmp := createFilled(t, filepath.Join(dir, "42"), "")
	name := filepath.Base(tmp.File().Name())
	if filepath.Dir(tmp.File().Name()) != dir {
		t.Errorf("temporary file %s is not in %s", tmp.File().Name(), dir)
	}
	if ok, _ := filepath.Match(".42.tmp-*", name); !ok {
		t.Errorf("temporary file name %q does not match %q", name, ".42.tmp-*")
	}
}

func TestAbortRemovesTemp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	writeString(t, path, "old")
	tmp := createFilled(t, path, "discarded")
	wantOnly(t, dir, "snapshot", filepath.Base(tmp.File().Name()))
	tmp.Abort()
	tmp.Abort() // a second time is harmless
	wantContent(t, path, "old")
	wantOnly(t, dir, "snapshot")
	if _, err := tmp.Fill(context.Background(), strings.NewReader("x")); err == nil {
		t.Error("Fill after Abort succeeded")
	}
	if err := tmp.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	wantOnly(t, dir, "snapshot")
}

// Abort after Sync (the file closed, not yet renamed) still removes it.
func TestAbortAfterSync(t *testing.T) {
	dir := t.TempDir()
	tmp := createFilled(t, filepath.Join(dir, "snapshot"), "synced")
	if err := tmp.Sync(); err != nil {
		t.Fatal(err)
	}
	tmp.Abort()
	wantOnly(t, dir)
}

func TestCommitMakesVisible(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	writeString(t, path, "old")
	tmp := createFilled(t, path, "new ")
	// Fill may be called more than once; File is there for attributes.
	if _, err := tmp.Fill(context.Background(), strings.NewReader("content")); err != nil {
		t.Fatal(err)
	}
	if err := tmp.File().Chmod(0o600); err != nil {
		t.Fatal(err)
	}
	wantContent(t, path, "old") // nothing visible before Commit
	if err := tmp.Commit(); err != nil {
		t.Fatal(err)
	}
	wantContent(t, path, "new content")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode set through File = %v, want %v", fi.Mode().Perm(), os.FileMode(0o600))
	}
	tmp.Abort() // after Commit: must not touch the published file
	tmp.Abort()
	wantContent(t, path, "new content")
	wantOnly(t, dir, "snapshot")
	if err := tmp.Commit(); err == nil {
		t.Error("a second Commit succeeded")
	}
}

// Sync before Commit, as a caller does to fsync outside its lock; Commit then only renames.
func TestSyncThenCommit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	tmp := createFilled(t, path, "data")
	if err := tmp.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Sync(); err != nil {
		t.Fatalf("a second Sync: %v", err)
	}
	if _, err := tmp.Fill(context.Background(), strings.NewReader("more")); err == nil {
		t.Error("Fill after Sync succeeded")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the target exists before Commit: %v", err)
	}
	if err := tmp.Commit(); err != nil {
		t.Fatal(err)
	}
	wantContent(t, path, "data")
	wantOnly(t, dir, "snapshot")
}

// A failed rename leaves the target as it was and the temporary file for Abort to remove.
func TestCommitRenameFails(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target")
	// A non-empty directory where the file goes: the rename fails, even for root.
	if err := os.MkdirAll(filepath.Join(path, "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := createFilled(t, path, "data")
	if err := tmp.Commit(); err == nil {
		t.Fatal("Commit over a non-empty directory succeeded")
	}
	tmp.Abort()
	wantOnly(t, dir, "target")
	wantOnly(t, path, "child")
}

// Many Writes in a row leave one file with the last content and nothing else.
func TestNoLeftovers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot")
	ctx := context.Background()
	for i := range 20 {
		if i%3 == 2 {
			if _, err := Write(ctx, path, failingReader(i)); err == nil {
				t.Fatal("Write with a failing reader succeeded")
			}
			continue
		}
		writeString(t, path, strings.Repeat("x", i))
	}
	wantContent(t, path, strings.Repeat("x", 19))
	wantOnly(t, dir, "snapshot")
}

// CommitFlush publishes the file and then calls flush (when the rename is done), passing on its error.
func TestCommitFlush(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "target")
	for _, flushErr := range []error{nil, errors.New("disk gone")} {
		tmp, err := Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tmp.Fill(t.Context(), strings.NewReader("new content")); err != nil {
			t.Fatal(err)
		}
		var sawTarget bool
		err = tmp.CommitFlush(func() error {
			b, _ := os.ReadFile(path)
			sawTarget = string(b) == "new content"
			return flushErr
		})
		tmp.Abort()
		if !sawTarget {
			t.Error("flush ran before the rename")
		}
		if !errors.Is(err, flushErr) || (flushErr == nil) != (err == nil) {
			t.Errorf("CommitFlush = %v, want %v", err, flushErr)
		}
		if err := tmp.CommitFlush(func() error { return nil }); err == nil {
			t.Error("a second CommitFlush succeeded")
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the target", len(entries))
	}
}

// TestWritePermHonoursUmask: WritePerm's file has perm less the umask, and Write's stays private.
func TestWritePermHonoursUmask(t *testing.T) {
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	dir := t.TempDir()
	for _, c := range []struct {
		write func(path string) error
		want  os.FileMode
	}{
		{func(p string) error { _, err := WritePerm(t.Context(), p, strings.NewReader("x"), 0o666); return err }, 0o640},
		{func(p string) error { _, err := Write(t.Context(), p, strings.NewReader("x")); return err }, 0o600},
	} {
		path := filepath.Join(dir, "f"+c.want.String())
		if err := c.write(path); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != c.want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), c.want)
		}
	}
}
