//go:build !linux

package enginetest

import "syscall"

// setPdeathsig: only Linux can tie a child's life to its parent's; elsewhere the tests' cleanups must
// stop it, which a killed test binary does not run.
func setPdeathsig(*syscall.SysProcAttr) {}
