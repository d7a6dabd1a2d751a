//go:build !linux && !darwin

package fault

// Writable cannot tell without statfs; writes still report a full disk.
func Writable(what, dir string) error { return nil }

// Room cannot tell without statfs.
func Room(dir string) (uint64, bool) { return 0, false }
