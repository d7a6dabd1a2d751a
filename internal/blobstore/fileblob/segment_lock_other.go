//go:build !unix

package fileblob

import "os"

// Without flock a backup cannot hold the compactor off: compaction does not run.
func tryLockExclusive(*os.File) (bool, error) { return false, nil }
func lockShared(*os.File) error               { return nil }
func unlockFile(*os.File) error               { return nil }
