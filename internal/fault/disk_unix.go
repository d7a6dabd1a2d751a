//go:build linux || darwin

package fault

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Writable checks that this process can write data to the file system holding dir now, with two system
// calls, for what's health check: nil, or why not, classified as Disk does: read-only (EROFS:
// unavailable), full (ENOSPC: no room for data, or no inode for a new file; root may use the blocks
// reserved for it), or whatever else access(2) or statfs(2) met.
func Writable(what, dir string) error {
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return Disk(what, fmt.Errorf("access %s: %w", dir, err))
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Disk(what, fmt.Errorf("statfs %s: %w", dir, err))
	}
	// Some file systems (btrfs) report no inode counts at all: Files 0 means unknown, not none.
	if room(st) == 0 || (st.Files > 0 && st.Ffree == 0) {
		return NoSpace(what, fmt.Errorf("the file system of %s is full: %w", dir, unix.ENOSPC))
	}
	return nil
}

// Room returns how many bytes this process may still write on the file system holding dir, and false
// when it cannot tell.
func Room(dir string) (uint64, bool) {
	free, _, err := Space(dir)
	return free, err == nil
}

// Space returns how many bytes this process may still write on the file system holding dir (as Room)
// and the file system's size in bytes, with one statfs(2).
func Space(dir string) (free, size uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return room(st) * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}

// room is the number of free blocks this process may use: root may use the ones reserved for it.
func room(st unix.Statfs_t) uint64 {
	if os.Geteuid() == 0 {
		return st.Bfree
	}
	return st.Bavail
}
