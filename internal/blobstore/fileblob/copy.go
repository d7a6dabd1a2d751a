package fileblob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imgmill/imgmill/internal/atomicfile"
)

// Copy copies the blobs of the store rooted at dir into the new directory dst, each with its fence: a
// backup, or a move to another disk, which stays a store Open accepts. It only reads dir, so the Store
// that owns it may go on serving and writing meanwhile: a blob replaced during the copy is copied whole,
// old or new, with the fence of the version copied (both read from one open file), and the temporary
// files of writes in progress are left out. It returns how many blobs and bytes it copied.
func Copy(ctx context.Context, dir, dst string) (blobs, size int64, err error) {
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		return 0, 0, fmt.Errorf("fileblob: copy to %s: the directory exists, or cannot be checked (%v)", dst, err)
	}
	var dirs []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			dirs = append(dirs, target)
			return os.Mkdir(target, 0o755)
		case !d.Type().IsRegular():
			return nil
		}
		if temp, _ := filepath.Match(tempPattern, d.Name()); temp {
			return nil
		}
		n, err := copyBlob(ctx, path, target)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted since it was listed
		}
		if err != nil {
			return err
		}
		blobs, size = blobs+1, size+n
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("fileblob: copy %s to %s: %w", dir, dst, err)
	}
	for _, d := range dirs {
		if err := atomicfile.SyncDir(d); err != nil {
			return 0, 0, fmt.Errorf("fileblob: copy to %s: %w", dst, err)
		}
	}
	return blobs, size, nil
}

// copyBlob copies the blob file src, with its fence, to the new file dst, and fsyncs it.
func copyBlob(ctx context.Context, src, dst string) (n int64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return 0, err
	}
	fence, err := fileFence(in)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", src, err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if n, err = io.Copy(out, contextReader{ctx, in}); err != nil {
		return 0, fmt.Errorf("copy %s: %w", src, err)
	}
	if fence > 0 {
		if err := setFence(out, fence); err != nil {
			return 0, fmt.Errorf("%s: %w", dst, err)
		}
	}
	return n, out.Sync()
}

// contextReader stops a long copy when ctx ends.
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
