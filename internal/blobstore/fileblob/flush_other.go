//go:build !linux

package fileblob

import (
	"io"

	"github.com/imgmill/imgmill/internal/groupsync"
)

// fileSystemFlush: without syncfs, each Put fsyncs its own file and directory.
func fileSystemFlush(string) (*groupsync.Syncer, io.Closer, error) { return nil, nil, nil }
