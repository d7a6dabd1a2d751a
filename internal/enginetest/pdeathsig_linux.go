package enginetest

import "syscall"

// setPdeathsig makes the kernel kill an engine when the test binary dies (a test timeout's panic, a
// SIGKILL), so no engine outlives the tests that started it.
func setPdeathsig(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
