//go:build unix

package fileblob

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// tryLockExclusive takes f's exclusive lock if nobody holds it (the compactor); false when taken.
func tryLockExclusive(f *os.File) (bool, error) {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return false, nil
	}
	return err == nil, err
}

// lockShared waits for f's shared lock (a backup).
func lockShared(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_SH) }

func unlockFile(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_UN) }
