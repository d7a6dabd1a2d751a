// Package atomicfile writes files so that a crash at any moment leaves either the old file or the complete
// new one: write to a temporary file in the same directory, fsync it, rename it over the target, fsync the
// directory.
package atomicfile

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write streams r into path atomically and durably and returns the number of bytes written. The
// directory must exist. When r fails or ctx ends, the target is left untouched.
func Write(ctx context.Context, path string, r io.Reader) (n int64, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("create temp file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	n, err = io.Copy(tmp, contextReader{ctx, r})
	if err != nil {
		return n, fmt.Errorf("write %s: %w", base, err)
	}
	if err = tmp.Sync(); err != nil {
		return n, fmt.Errorf("sync %s: %w", base, err)
	}
	if err = tmp.Close(); err != nil {
		return n, fmt.Errorf("close %s: %w", base, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return n, fmt.Errorf("rename %s: %w", base, err)
	}
	if err = SyncDir(dir); err != nil {
		return n, err
	}
	return n, nil
}

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
