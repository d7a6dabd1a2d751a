package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/cli"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
)

const testToken = "imgmill-test-token-0123456789-abcdefgh"

// kv on a non-loopback address without a token refuses to start and says how to fix it.
func TestKVRefusesNonLoopbackWithoutToken(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var stderr deploytest.SyncBuffer
		err := cli.Run(ctx, []string{"imgmill", "kv", "--addr", addr, "--data", t.TempDir()}, func(string) string { return "" },
			io.Discard, &stderr)
		ranOut := ctx.Err() != nil
		cancel()
		if err == nil {
			t.Fatalf("kv --addr %s without a token started", addr)
		}
		for _, want := range []string{"refusing to listen on " + addr + " without a token", "--token", "IMGMILL_TOKEN", "--insecure"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("kv --addr %s: %q does not say %q", addr, err, want)
			}
		}
		if ranOut {
			t.Errorf("kv --addr %s ran until the deadline instead of refusing", addr)
		}
	}
}

var listeningAddr = regexp.MustCompile(`msg=listening .*addr=(\S+)`)

// runKVAnywhere runs `imgmill kv --addr 0.0.0.0:0` with env and returns the loopback address it listens on and
// its log; it is stopped, and must exit cleanly, when the test ends.
func runKVAnywhere(t *testing.T, env map[string]string) (addr string, log *deploytest.SyncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	log = &deploytest.SyncBuffer{}
	go func() {
		done <- cli.Run(ctx, []string{"imgmill", "kv", "--addr", "0.0.0.0:0", "--data", t.TempDir()},
			func(k string) string { return env[k] }, io.Discard, log)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("kv: %v", err)
		}
	})
	var m []string
	if !servicetest.PollFor(10*time.Second, func() bool {
		select {
		case err := <-done:
			done <- err
			return true
		default:
		}
		m = listeningAddr.FindStringSubmatch(log.String())
		return m != nil
	}) || m == nil {
		t.Fatalf("kv is not listening:\n%s", log.String())
	}
	_, port, err := net.SplitHostPort(m[1])
	if err != nil {
		t.Fatalf("listening on %q: %v", m[1], err)
	}
	return "127.0.0.1:" + port, log
}

// With IMGMILL_INSECURE kv starts anyway, warns, and asks for nothing; with IMGMILL_TOKEN it starts
// quietly and requires the token.
func TestKVInsecureOrToken(t *testing.T) {
	plain := servicetest.NewHTTPClient(t)
	authed := httpapi.NewClient(httpapi.WithToken(testToken))
	t.Cleanup(authed.CloseIdleConnections)

	addr, log := runKVAnywhere(t, map[string]string{"IMGMILL_INSECURE": "true"})
	if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "without a token") {
		t.Errorf("--insecure logged no warning:\n%s", log.String())
	}
	if r := servicetest.Call(t, plain, http.MethodGet, "http://"+addr+"/list", nil); r.Status != 200 {
		t.Errorf("insecure kv: GET /list = %d %q, want 200", r.Status, r.Body)
	}

	addr, log = runKVAnywhere(t, map[string]string{"IMGMILL_TOKEN": testToken})
	if strings.Contains(log.String(), "level=WARN") {
		t.Errorf("kv with a token warned:\n%s", log.String())
	}
	r := servicetest.Call(t, plain, http.MethodGet, "http://"+addr+"/list", nil)
	if r.Status != http.StatusUnauthorized || r.Body != httpapi.UnauthorizedText {
		t.Errorf("kv with a token, GET /list without it = %d %q, want 401", r.Status, r.Body)
	}
	if r := servicetest.Call(t, authed, http.MethodGet, "http://"+addr+"/list", nil); r.Status != 200 {
		t.Errorf("kv with a token, GET /list with it = %d %q, want 200", r.Status, r.Body)
	}
}
