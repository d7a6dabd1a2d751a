package enginetest

import "syscall"

// setPdeathsig has the kernel SIGKILL the child when the thread that started it exits, which every
// thread does when the test binary dies (a -timeout panic, a SIGKILL).
func setPdeathsig(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
