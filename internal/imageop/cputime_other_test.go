//go:build !linux

package imageop

import "time"

// threadCPU is not available here: the CPU comparison is skipped.
func threadCPU() (time.Duration, bool) { return 0, false }
