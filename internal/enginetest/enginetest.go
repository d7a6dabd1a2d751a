// Package enginetest provisions real engines (PostgreSQL, MinIO, etcd) for the tests of the backends that
// use them: it finds the engine's program, installs it when it is missing and the machine allows
// (root with apt-get, or the Go toolchain for MinIO), starts it on free loopback ports in a temporary
// directory, and stops it when the test ends.
//
// When an engine cannot be provisioned the test is skipped with the reason, except under CI=true, where
// it fails: CI must run every suite. With -short, the quick check, no engine is started and the tests
// that need one are skipped.
//
// Every process the tests start here, and through StartTied in other packages, dies with the test
// binary even when that is killed before its cleanups run (see TieToTest).
package enginetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// CI reports whether the tests run under CI=true, where a missing engine is a failure, not a skip.
func CI(getenv func(string) string) bool { return getenv("CI") == "true" }

// Unavailable ends t because engine cannot be provisioned: a skip that says why, or under CI=true a
// failure.
func Unavailable(t testing.TB, engine string, err error) {
	t.Helper()
	if CI(os.Getenv) {
		t.Fatalf("%s is required under CI=true but cannot be provisioned: %v", engine, err)
	}
	t.Skipf("SKIPPED: %s cannot be provisioned on this machine (%v); install it or run as root to run this suite", engine, err)
}

// skipShort skips t under -short, the quick check: a real engine takes seconds to start, and the tests
// on one are among the slowest.
func skipShort(t testing.TB, engine string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("SKIPPED: %s is not started with -short", engine)
	}
}

// FreeAddr returns a free loopback host:port. Another process could take it before it is used; good
// enough for tests on one machine.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// FreeAddrs returns n distinct free loopback addresses (host:port). Another process could take one
// before it is used; good enough for tests on one machine.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		defer ln.Close() // held until all are found, so they differ
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs
}

// withInstallLock runs fn holding a machine-wide lock, so parallel test binaries don't run apt-get or
// go install at the same time. flock locks belong to the open file, so two tests of one binary exclude
// each other too.
func withInstallLock(fn func() error) error {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "imgmill-enginetest-install.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("install lock: %w", err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("install lock: %w", err)
	}
	return fn()
}

// firstExisting returns the first of paths (glob patterns) that names an executable file.
func firstExisting(patterns ...string) (string, bool) {
	for _, p := range patterns {
		matches, _ := filepath.Glob(p)
		for i := len(matches) - 1; i >= 0; i-- { // the newest version sorts last
			if st, err := os.Stat(matches[i]); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return matches[i], true
			}
		}
		if path, err := exec.LookPath(p); err == nil && filepath.Base(p) == p {
			return path, true
		}
	}
	return "", false
}

// DebianProgram finds a program by the given glob patterns (or names on $PATH), installing Debian
// package pkg first when none exists and this process may (root, apt-get present).
func DebianProgram(ctx context.Context, pkg string, patterns ...string) (string, error) {
	if p, ok := firstExisting(patterns...); ok {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("%s not found and not root, so Debian's %s cannot be installed", patterns[0], pkg)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("%s not found and no apt-get to install %s", patterns[0], pkg)
	}
	err := withInstallLock(func() error {
		if _, ok := firstExisting(patterns...); ok {
			return nil // another test binary installed it while we waited
		}
		// Not tied to the test binary (see TieToTest): apt-get killed halfway would leave dpkg's
		// database for an administrator to repair, so it finishes even if the test binary dies.
		env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		install := func() ([]byte, error) {
			cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-qq", pkg)
			cmd.Env = env
			return cmd.CombinedOutput()
		}
		if _, err := install(); err == nil {
			return nil
		}
		update := exec.CommandContext(ctx, "apt-get", "update", "-qq")
		update.Env = env
		if out, err := update.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get update: %w: %s", err, tail(out))
		}
		if out, err := install(); err != nil {
			return fmt.Errorf("apt-get install %s: %w: %s", pkg, err, tail(out))
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if p, ok := firstExisting(patterns...); ok {
		return p, nil
	}
	return "", fmt.Errorf("installed %s but found none of %v", pkg, patterns)
}

func tail(b []byte) string {
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Process is an engine process started by Start.
type Process struct {
	Cmd *exec.Cmd
	Log string // the file its output goes to
	// done is closed when the process has exited.
	done <-chan struct{}
}

// Start starts cmd with its output in logFile, tied to the test binary (StartTied: in its own process
// group, so a stop takes its children too, and killed with the test binary), and stops it when t ends:
// SIGTERM, then SIGKILL after 10s. A test that fails prints the log's tail.
func Start(t testing.TB, cmd *exec.Cmd, logFile string) *Process {
	t.Helper()
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatalf("create %s: %v", logFile, err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	exited, err := StartTied(cmd)
	out.Close() // the process has its own descriptor of the file
	if err != nil {
		t.Fatal(err)
	}
	p := &Process{Cmd: cmd, Log: logFile, done: exited}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(logFile); err == nil {
				t.Logf("%s log (tail):\n%s", filepath.Base(cmd.Path), tail(b))
			}
		}
		p.Stop()
	})
	return p
}

// Stop ends the process gracefully (SIGTERM to its group, SIGKILL after 10s) and waits for it. A paused
// process is continued after the SIGTERM, so that it handles it.
func (p *Process) Stop() {
	p.signal(syscall.SIGTERM)
	p.signal(syscall.SIGCONT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
	}
}

// Kill ends the process with SIGKILL at once (a crash) and waits for it.
func (p *Process) Kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// Pause stops the process and its group with SIGSTOP, as a hung engine or one stalled by its disk: it
// keeps its ports and connections, so the kernel still accepts connections and takes requests, but
// nothing answers them. Clients time out rather than being refused. Resume continues it; Stop and Kill
// end it paused or not.
func (p *Process) Pause() { p.signal(syscall.SIGSTOP) }

// Resume continues a process that Pause stopped (SIGCONT).
func (p *Process) Resume() { p.signal(syscall.SIGCONT) }

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.done }

func (p *Process) signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	if err := syscall.Kill(-p.Cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.Cmd.Process.Signal(sig)
	}
}

// WaitTCP waits until addr accepts TCP connections, the process exits, or timeout passes.
func (p *Process) WaitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before listening on %s (see %s)", filepath.Base(p.Cmd.Path), addr, p.Log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %s: %w", filepath.Base(p.Cmd.Path), addr, timeout, err)
		}
	}
}
