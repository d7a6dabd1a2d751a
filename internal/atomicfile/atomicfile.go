// Package atomicfile writes files so that a crash at any moment leaves either the old file or the complete
// new one: write to a temporary file in the same directory, fsync it, rename it over the target, fsync the
// directory.
//
// Write does it in one call. Create, Fill, Sync and Commit do it in steps, for a caller that works on the
// temporary file before publishing it (sets extended attributes on it) or checks something before the
// rename; Abort discards it. The temporary file is named "." + the target's base name + ".tmp-" + random
// digits, which a reader of the directory can use to remove what a crash left behind.
package atomicfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
)

// Write streams r into path atomically and durably and returns the number of bytes written. The
// directory must exist. When r fails or ctx ends, the target is left untouched.
func Write(ctx context.Context, path string, r io.Reader) (int64, error) {
	return WritePerm(ctx, path, r, 0o600)
}

// WritePerm is Write for a file created with perm, less the umask (0o666: what a user's own tools
// would create, 0644 under the usual umask).
func WritePerm(ctx context.Context, path string, r io.Reader, perm os.FileMode) (int64, error) {
	t, err := CreatePerm(path, perm)
	if err != nil {
		return 0, err
	}
	defer t.Abort()
	n, err := t.Fill(ctx, r)
	if err != nil {
		return n, err
	}
	return n, t.Commit()
}

// errFinished is the error of using a Temp after Commit or Abort.
var errFinished = errors.New("atomicfile: temporary file already committed or aborted")

// Temp is a temporary file beside its target that Commit publishes at the target and Abort discards. Use
// it from one goroutine at a time, and defer Abort right after Create: it removes the file on every path
// where Commit was not reached or failed, and does nothing after a successful Commit.
type Temp struct {
	f        *os.File
	path     string // the target
	dir      string // its directory
	closed   bool   // f is closed (by Sync or Abort)
	synced   bool   // f was fsynced and closed without error
	finished bool   // renamed over path, or removed: the temporary name is no longer ours
}

// Create creates an empty temporary file in path's directory, which must exist, readable by its owner
// only.
func Create(path string) (*Temp, error) { return CreatePerm(path, 0o600) }

// CreatePerm is Create with the file's permissions perm, less the umask: the kernel applies it when
// the file is created, so no process-wide umask is read or changed.
func CreatePerm(path string, perm os.FileMode) (*Temp, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	for range 100 {
		name := filepath.Join(dir, "."+base+".tmp-"+strconv.FormatUint(uint64(rand.Uint32()), 10))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create temporary file: %w", err)
		}
		return &Temp{f: f, path: path, dir: dir}, nil
	}
	return nil, fmt.Errorf("create temporary file in %s: too many names taken", dir)
}

// File returns the open temporary file, to set attributes on before Sync. Writes should go through Fill;
// the file must not be closed or renamed by the caller.
func (t *Temp) File() *os.File { return t.f }

// Fill appends r to the temporary file until r ends, r fails or ctx ends, and returns the number of bytes
// written.
func (t *Temp) Fill(ctx context.Context, r io.Reader) (int64, error) {
	if t.closed || t.finished {
		return 0, errFinished
	}
	n, err := io.Copy(t.f, contextReader{ctx, r})
	if err != nil {
		return n, fmt.Errorf("write %s: %w", t.base(), err)
	}
	return n, nil
}

// Sync fsyncs and closes the temporary file, making its content and attributes durable; after it, File
// must not be used. Commit calls it when it has not been called; calling it first lets the fsync happen
// before the caller takes whatever lock guards its Commit. It does nothing the second time.
func (t *Temp) Sync() error {
	if t.synced {
		return nil
	}
	if t.closed || t.finished {
		return errFinished
	}
	if err := t.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", t.base(), err)
	}
	t.closed = true // whatever Close returns: a closed file cannot be closed again
	if err := t.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", t.base(), err)
	}
	t.synced = true
	return nil
}

// Commit syncs the temporary file (unless Sync did), renames it over the target and fsyncs the directory.
// When the rename fails, the temporary file is left for Abort to remove; once the rename has been done,
// the error can only be the directory's fsync, and the new content is at the target.
func (t *Temp) Commit() error {
	if t.finished {
		return errFinished
	}
	if err := t.Sync(); err != nil {
		return err
	}
	if err := os.Rename(t.f.Name(), t.path); err != nil {
		return fmt.Errorf("rename %s: %w", t.base(), err)
	}
	t.finished = true
	return SyncDir(t.dir)
}

// CommitFlush is Commit with the durability left to flush: it closes the temporary file without an
// fsync, renames it over the target, then calls flush, which must make the content, attributes and
// rename durable (a syncfs of the file system, which concurrent writers share: see groupsync). Until
// flush returns, a crash may leave the target renamed but its content incomplete, so a caller may only
// acknowledge the write, and rely on the target, after CommitFlush returned nil.
func (t *Temp) CommitFlush(flush func() error) error {
	if t.closed || t.finished {
		return errFinished
	}
	t.closed = true
	if err := t.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", t.base(), err)
	}
	if err := os.Rename(t.f.Name(), t.path); err != nil {
		return fmt.Errorf("rename %s: %w", t.base(), err)
	}
	t.finished = true
	if err := flush(); err != nil {
		return fmt.Errorf("flush %s: %w", t.base(), err)
	}
	return nil
}

// Abort closes and removes the temporary file unless Commit renamed it. It is safe to call more than once
// and after Commit.
func (t *Temp) Abort() {
	if !t.closed {
		t.closed = true
		t.f.Close()
	}
	if !t.finished {
		t.finished = true
		os.Remove(t.f.Name())
	}
}

func (t *Temp) base() string { return filepath.Base(t.path) }

// SyncDir fsyncs a directory so that a rename or a new entry in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// contextReader stops a long copy when the context ends (a client that went away mid-upload).
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
