package fileblob

import (
	"bufio"
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
//
// The blob files are copied first and the segment files (segment.go) after, record by whole record,
// under a shared lock that holds the store's compactor off, so that no segment is compacted away before
// it is copied, and a blob that switched forms during the copy is found in one or the other.
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
		case d.IsDir() && path == filepath.Join(dir, segmentsDir):
			return filepath.SkipDir // copied below
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
	small, smallBytes, err := copySegments(ctx, filepath.Join(dir, segmentsDir), dst)
	if err != nil {
		return 0, 0, fmt.Errorf("fileblob: copy %s to %s: %w", dir, dst, err)
	}
	blobs, size = blobs+small, size+smallBytes
	for _, d := range dirs {
		if err := atomicfile.SyncDir(d); err != nil {
			return 0, 0, fmt.Errorf("fileblob: copy to %s: %w", dst, err)
		}
	}
	return blobs, size, nil
}

// copySegments copies the whole records of the segments in dir into dst's segments directory, and
// returns how many blobs and bytes they hold that dst has no file for.
func copySegments(ctx context.Context, dir, dst string) (blobs, size int64, err error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil // a store that never kept blobs in segments
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return 0, 0, err
	}
	defer lock.Close()
	if err := lockShared(lock); err != nil {
		return 0, 0, fmt.Errorf("lock segments: %w", err)
	}
	defer unlockFile(lock)
	out := filepath.Join(dst, segmentsDir)
	if err := os.Mkdir(out, 0o755); err != nil {
		return 0, 0, err
	}
	// What the copied records hold, replayed as Open would: key -> size, or -1-size for a moved key.
	held := make(map[string]int64)
	last := 0
	for {
		nums, err := segmentFiles(dir)
		if err != nil {
			return 0, 0, err
		}
		copied := false
		for _, n := range nums {
			if n <= last {
				continue
			}
			if err := copySegment(ctx, filepath.Join(dir, segmentName(n)), filepath.Join(out, segmentName(n)), held); err != nil {
				return 0, 0, err
			}
			last, copied = n, true
		}
		// The active segment may have rolled over while it was copied: go on with the new ones.
		if !copied {
			break
		}
	}
	if err := atomicfile.SyncDir(out); err != nil {
		return 0, 0, err
	}
	for key, n := range held {
		if _, err := os.Lstat(filepath.Join(dst, filepath.FromSlash(key))); err == nil {
			continue // the file wins, and was counted
		}
		if n < 0 {
			n = -1 - n // moved, and the file was not there: Open brings the record back
		}
		blobs, size = blobs+1, size+n
	}
	return blobs, size, nil
}

// copySegment copies the whole, valid records of the segment src to the new file dst, and fsyncs it.
func copySegment(ctx context.Context, src, dst string, held map[string]int64) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriterSize(out, 1<<20)
	_, err = scanRecords(in, fi.Size(), func(rec *record, _ int64) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch rec.op {
		case opPut:
			held[rec.key] = int64(len(rec.data))
		case opDelete:
			delete(held, rec.key)
		case opMoved:
			if n, ok := held[rec.key]; ok && n >= 0 {
				held[rec.key] = -1 - n
			}
		}
		_, err := w.Write(encodeRecord(rec.op, rec.key, rec.fence, rec.mod, rec.data))
		return err
	})
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Sync()
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
