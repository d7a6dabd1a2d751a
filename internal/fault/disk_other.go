//go:build !linux && !darwin

package fault

import "errors"

// Writable cannot tell without statfs; writes still report a full disk.
func Writable(what, dir string) error { return nil }

// Room cannot tell without statfs.
func Room(dir string) (uint64, bool) { return 0, false }

// Space cannot tell without statfs.
func Space(dir string) (free, size uint64, err error) {
	return 0, 0, errors.ErrUnsupported
}
