package deploytest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/enginetest"
)

// parentEnv makes TestServicesDieWithTheTestBinary the parent of the check: it starts a service through
// a Deployment, writes the service's pid into the file the variable names, and waits to be killed.
const parentEnv = "IMGMILL_DEPLOYTEST_PARENT"

// TestServicesDieWithTheTestBinary runs this test binary as a parent that starts a service through a
// Deployment, kills the parent with SIGKILL (as a -timeout panic or an impatient user would end it,
// with no cleanup run), and checks that the service goes with it.
func TestServicesDieWithTheTestBinary(t *testing.T) {
	if pidFile := os.Getenv(parentEnv); pidFile != "" {
		actAsParent(t, pidFile)
		return
	}
	if runtime.GOOS != "linux" {
		t.Skip("only Linux ties a child to its parent")
	}
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "service.pid")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	parent := exec.Command(exe, "-test.run=^TestServicesDieWithTheTestBinary$", "-test.v")
	// The parent's temporary directories go under ours: a killed parent cannot remove them.
	parent.Env = append(os.Environ(), parentEnv+"="+pidFile, "TMPDIR="+dir)
	var out SyncBuffer
	parent.Stdout, parent.Stderr = &out, &out
	parentExited, err := enginetest.StartTied(parent)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		parent.Process.Kill()
		<-parentExited
		if t.Failed() {
			t.Logf("parent's output:\n%s", Tail(out.String(), 4000))
		}
	})

	var pid int
	deadline := time.Now().Add(2 * time.Minute) // the parent starts a test binary: slow on a busy machine
	for pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
				t.Fatalf("pid file %q: %v", b, err)
			}
			break
		}
		select {
		case <-parentExited:
			t.Fatalf("the parent exited (%v) before it started the service", parent.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the parent did not start the service within 2 minutes")
		}
	}
	child, err := readStat(pid)
	if err != nil {
		t.Fatalf("the service %d: %v", pid, err)
	}
	if child.ppid != parent.Process.Pid {
		t.Fatalf("process %d is a child of %d, not of the parent %d", pid, child.ppid, parent.Process.Pid)
	}
	t.Cleanup(func() {
		// Should it have survived the parent, it must not survive this test.
		if now, err := readStat(pid); err == nil && now.start == child.start {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	parent.Process.Signal(syscall.SIGKILL)
	<-parentExited
	killed := time.Now()
	for {
		now, err := readStat(pid)
		if errors.Is(err, os.ErrNotExist) || (err == nil && (now.start != child.start || now.state == "Z" || now.state == "X")) {
			t.Logf("the service was gone %v after its parent was killed", time.Since(killed).Round(time.Millisecond))
			return
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if time.Since(killed) > time.Minute {
			t.Fatalf("the service %d (state %s) still runs a minute after the test binary that started it was killed", pid, now.state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// actAsParent starts a service through a Deployment, tells its pid through pidFile, and waits to be
// killed.
func actAsParent(t *testing.T, pidFile string) {
	d := New(t)
	d.MustStart("kv", "kv", "--addr", d.KVAddr, "--data", filepath.Join(d.Dir, "kv"))
	ctx, cancel := Within(t, 5*time.Minute)
	defer cancel()
	WaitHealthy(t, ctx, d.HC, d.KVAddr)
	tmp := pidFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(d.PID("kv"))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, pidFile); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Minute) // the test that started this process kills it long before
	t.Fatal("the parent was not killed")
}

// procStat is what the check reads of /proc/PID/stat.
type procStat struct {
	state string // R, S, Z (a zombie: dead, not yet reaped), ...
	ppid  int
	start string // the start time in clock ticks since boot: tells a reused pid apart
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// pid (comm) state ppid pgrp ... with starttime the 22nd field; comm may hold spaces and parens.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: ppid %q: %w", pid, fields[1], err)
	}
	return procStat{state: fields[0], ppid: ppid, start: fields[19]}, nil
}
