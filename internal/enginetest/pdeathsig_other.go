//go:build !linux

package enginetest

import "syscall"

// setPdeathsig: only Linux can tie a child's life to its parent's; elsewhere cleanup must stop it.
func setPdeathsig(*syscall.SysProcAttr) {}
