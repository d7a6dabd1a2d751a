//go:build !linux && !darwin

package fileblob

import (
	"errors"
	"os"
)

// Fences live in extended attributes, which this package reaches on Linux and macOS only; elsewhere Open
// fails rather than run without fencing.
var errFencesUnsupported = errors.New("fences need extended attributes, supported on Linux and macOS only")

func setFence(*os.File, int64) error    { return errFencesUnsupported }
func fileFence(*os.File) (int64, error) { return 0, errFencesUnsupported }
func pathFence(string) (int64, error)   { return 0, errFencesUnsupported }
func checkFenceSupport(string) error    { return errFencesUnsupported }
