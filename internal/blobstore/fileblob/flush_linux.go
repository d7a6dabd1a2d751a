package fileblob

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/imgmill/imgmill/internal/groupsync"
)

// fileSystemFlush returns a shared flush of the file system holding dir: one syncfs(2) writes back every
// dirty file and directory on it and waits for the disk, so the Puts in flight (content, fence attribute
// and rename) become durable together, where fsyncs of each file and directory would cost a disk flush
// each.
func fileSystemFlush(dir string) (*groupsync.Syncer, io.Closer, error) {
	root, err := os.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	return groupsync.New(func() error {
		if err := unix.Syncfs(int(root.Fd())); err != nil {
			return fmt.Errorf("syncfs: %w", err)
		}
		return nil
	}), root, nil
}

// datasync makes f's content and size durable (fdatasync(2)), without its other metadata.
func datasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// allocate gives f size bytes of disk space (fallocate(2)), so that removing it frees them.
func allocate(f *os.File, size int64) error { return unix.Fallocate(int(f.Fd()), 0, 0, size) }
