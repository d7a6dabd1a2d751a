package enginetest

import (
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
)

// TieToTest makes cmd die with the test binary that starts it, even when that binary dies without
// running its cleanups (a -timeout panic, a SIGKILL): on Linux the kernel sends cmd SIGKILL then. It
// also puts cmd in a process group of its own, so that a stop can signal whatever cmd starts, too.
//
// The kernel sends that signal when the thread that started cmd exits, not the process, and the Go
// runtime ends a thread whenever a goroutine locked to it returns: cmd must be started from a goroutine
// locked to its thread until cmd has exited. StartTied does that; use TieToTest alone only where
// something else starts cmd that way (chromedp's ExecAllocator does).
func TieToTest(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	setPdeathsig(cmd.SysProcAttr)
}

// StartTied starts cmd tied to the test binary (see TieToTest) and waits for it, both on one goroutine
// locked to its OS thread, so that the thread outlives cmd. The returned channel is closed once cmd has
// exited and was waited for; cmd.ProcessState is set then.
func StartTied(cmd *exec.Cmd) (exited <-chan struct{}, err error) {
	TieToTest(cmd)
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread() // only after Wait: the thread may end once cmd has
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait() // the exit status is in cmd.ProcessState, for the caller
		close(done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return done, nil
}

// combinedOutputTied runs cmd to its end tied to the test binary (see TieToTest) and returns what it
// wrote to stdout and stderr. The calling goroutine stays locked to its thread while cmd runs.
func combinedOutputTied(cmd *exec.Cmd) ([]byte, error) {
	TieToTest(cmd)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.CombinedOutput()
}
