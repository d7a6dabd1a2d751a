package deploytest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/cli"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/httpapi"
)

// childEnv makes a test binary act as the imgmill binary, so system tests start real service processes
// without a separate build step.
const childEnv = "IMGMILL_TEST_RUN_MAIN"

// Main is the TestMain of a package whose tests start a Deployment: in a process the deployment started
// it runs imgmill (as cmd/imgmill's main does), otherwise the tests.
func Main(m *testing.M) {
	if os.Getenv(childEnv) != "1" {
		os.Exit(m.Run())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.Run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgmill: %v\n", err)
		os.Exit(cli.ExitCode(err))
	}
	os.Exit(0)
}

// ServeApp runs `imgmill serve` in-process on free ports with a temporary data directory and args, waits
// until every service and the frontend are ready, and returns the addresses of the frontend, kv,
// database, storage and master; the app stops when the test ends, and must stop cleanly. What serve logs
// goes to log (nil: discarded).
func ServeApp(t *testing.T, log io.Writer, args ...string) []string {
	t.Helper()
	addrs := enginetest.FreeAddrs(t, 5)
	if log == nil {
		log = io.Discard
	}
	data := t.TempDir() // before the Cleanup below, so removed only after the app stopped
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cli.Run(ctx, append([]string{"imgmill", "serve", "--data", data, "--frontend-addr", addrs[0], "--kv-addr", addrs[1],
			"--database-addr", addrs[2], "--storage-addr", addrs[3], "--master-addr", addrs[4]}, args...),
			func(string) string { return "" }, io.Discard, log)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	})
	readyCtx, readyCancel := context.WithTimeout(ctx, time.Minute)
	defer readyCancel()
	if err := allinone.WaitReady(readyCtx, addrs[1], httpapi.WithToken(flagValue(args, "--token"))); err != nil {
		t.Fatal(err)
	}
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	WaitHealthy(t, readyCtx, hc, addrs[0])
	return addrs
}

// flagValue is the value args give the flag name ("--name value" or "--name=value"), or "".
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
