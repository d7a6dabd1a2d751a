//go:build !linux

package fileblob

import (
	"io"
	"os"

	"github.com/imgmill/imgmill/internal/groupsync"
)

// fileSystemFlush: without syncfs, each Put fsyncs its own file and directory.
func fileSystemFlush(string) (*groupsync.Syncer, io.Closer, error) { return nil, nil, nil }

// datasync makes f's content durable.
func datasync(f *os.File) error { return f.Sync() }

// allocate gives f size bytes of disk space by writing them.
func allocate(f *os.File, size int64) error {
	_, err := f.WriteAt(make([]byte, size), 0)
	return err
}
