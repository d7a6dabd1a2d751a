package enginetest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sleeperEnv makes this test binary a child that sleeps until it is killed.
const sleeperEnv = "IMGMILL_ENGINETEST_SLEEPER"

func TestMain(m *testing.M) {
	if os.Getenv(sleeperEnv) == "1" {
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), sleeperEnv+"=1")
	return cmd
}

// The kernel kills a tied child when the thread that started it exits, and the Go runtime ends a thread
// when a goroutine locked to it returns. A child started with StartTied by such a goroutine must live on
// after that thread is gone: StartTied starts it from a thread of its own.
func TestStartTiedOutlivesTheCallersThread(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("only Linux ties a child to its parent")
	}
	type started struct {
		cmd    *exec.Cmd
		exited <-chan struct{}
		tid    int
		err    error
	}
	var s started
	// While this goroutine holds its thread, the one below runs on another: this one may hold the main
	// thread, which the runtime never ends.
	runtime.LockOSThread()
	for try := 0; ; try++ {
		ch := make(chan started, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends when this goroutine returns
			if tid := unix.Gettid(); tid == os.Getpid() {
				// The main thread is never ended; try again on another.
				runtime.UnlockOSThread()
				ch <- started{tid: tid}
				return
			}
			cmd := sleeper(t)
			exited, err := StartTied(cmd)
			ch <- started{cmd: cmd, exited: exited, tid: unix.Gettid(), err: err}
		}()
		if s = <-ch; s.cmd != nil || try == 10 {
			break
		}
	}
	runtime.UnlockOSThread()
	if s.cmd == nil {
		t.Fatal("every goroutine ran on the main thread")
	}
	if s.err != nil {
		t.Fatal(s.err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
	})
	// The calling goroutine's thread ends once it has returned.
	task := fmt.Sprintf("/proc/self/task/%d", s.tid)
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d of the starting goroutine did not end", s.tid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Had it started the child, the kernel would have sent SIGKILL as the thread ended.
	select {
	case <-s.exited:
		t.Fatalf("the child died with the thread of the goroutine that asked for it: %v", s.cmd.ProcessState)
	case <-time.After(2 * time.Second):
	}
}
