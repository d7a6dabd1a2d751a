package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/enginetest"
)

// runMainEnv makes this test binary run main, so the tests below check the program itself: its exit
// codes, what it says on stderr, and that it stops cleanly on SIGTERM.
const runMainEnv = "IMGMILL_CMD_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// imgmill returns the command that runs main with args, its output in out, tied to the test binary.
func imgmill(t *testing.T, out *deploytest.SyncBuffer, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "IMGMILL_TOKEN=", "IMGMILL_INSECURE=")
	cmd.Stdout, cmd.Stderr = out, out
	return cmd
}

// start starts main with args, killed at the end of the test if it still runs; exited closes when it ends.
func start(t *testing.T, out *deploytest.SyncBuffer, args ...string) (cmd *exec.Cmd, exited <-chan struct{}) {
	t.Helper()
	cmd = imgmill(t, out, args...)
	exited, err := enginetest.StartTied(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return cmd, exited
}

// run runs main with args to its end and returns its exit code and output.
func run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out deploytest.SyncBuffer
	cmd := imgmill(t, &out, args...)
	exited, err := enginetest.StartTied(cmd)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("imgmill %v did not end within 2 minutes:\n%s", args, out.String())
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

func TestExitCodes(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"help"}, 0, "serve"},
		{nil, 2, "imgmill: "},                         // no command: the usage, and exit code 2
		{[]string{"no-such-command"}, 2, "imgmill: "}, // a usage error
		{[]string{"kv", "--addr", "0.0.0.0:0", "--data", t.TempDir()}, 1, "imgmill: refusing to listen on 0.0.0.0:0 without a token"},
	} {
		code, out := run(t, c.args...)
		if code != c.code || !strings.Contains(out, c.says) {
			t.Errorf("imgmill %v: exit code %d, output:\n%s\nwant exit code %d and %q", c.args, code, out, c.code, c.says)
		}
	}
}

// A service stops on SIGTERM and exits 0.
func TestStopsOnSIGTERM(t *testing.T) {
	addr := enginetest.FreeAddr(t)
	var out deploytest.SyncBuffer
	cmd, exited := start(t, &out, "kv", "--addr", addr, "--data", filepath.Join(t.TempDir(), "kv"))
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-exited:
			t.Fatalf("kv exited before it listened: %v\n%s", cmd.ProcessState, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("kv not listening on %s within a minute:\n%s", addr, out.String())
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatalf("kv did not stop within a minute of SIGTERM:\n%s", out.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("kv exited with %d after SIGTERM, want 0:\n%s", code, out.String())
	}
}
