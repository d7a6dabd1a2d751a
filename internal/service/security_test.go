package service_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/servicetest"
)

func TestLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:3001":       true,
		"127.1.2.3:3001":       true,
		"localhost:3001":       true,
		"LOCALHOST:3001":       true,
		"[::1]:3001":           true,
		"[::ffff:127.0.0.1]:1": true,
		":3001":                false,
		"0.0.0.0:3001":         false,
		"[::]:3001":            false,
		"10.0.0.5:3001":        false,
		"192.168.1.2:0":        false,
		"[fe80::1%eth0]:3001":  false,
		"example.com:3001":     false,
		"127.0.0.1":            false, // not host:port: Listen would fail anyway
		"":                     false,
	} {
		if got := service.LoopbackAddr(addr); got != want {
			t.Errorf("LoopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
}

// logBuffer is a logger's output, safe to read while the service writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startSpec runs spec (registered under testKey in a fresh kv service) and returns the address it
// registered; the service is stopped, and Run must return nil, when the test ends.
func startSpec(t *testing.T, spec service.Spec) string {
	t.Helper()
	ks := startKV(t)
	spec.RegisterAs, spec.KV, spec.RegistrationTTL = testKey, ks.kv, testTTL
	if spec.Handler == nil {
		mux := httpapi.NewMux()
		mux.Handle("GET /healthz", httpapi.Livez())
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			httpapi.WriteText(w, http.StatusOK, greeting)
		})
		spec.Handler = mux
	}
	if spec.Logger == nil {
		spec.Logger = discard
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- service.Run(ctx, spec) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return 10s after its context ended")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		select {
		case err := <-done:
			done <- err // for the cleanup
			t.Fatalf("Run returned before registering: %v", err)
		default:
		}
		if addr, err := ks.kv.Get(t.Context(), testKey); err == nil {
			return addr
		} else if time.Now().After(deadline) {
			t.Fatalf("not registered after 5s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An internal service without a token refuses a non-loopback address before listening, and says why and
// how to fix it.
func TestRunRefusesNonLoopbackWithoutToken(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := service.Run(ctx, service.Spec{Addr: addr, Internal: true, Handler: httpapi.Livez(), Logger: discard})
		cancel()
		if err == nil {
			t.Fatalf("Run on %s without a token = nil, want a refusal", addr)
		}
		for _, want := range []string{addr, "without a token", "not a loopback address", "--token", "IMGMILL_TOKEN", "--insecure"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Run on %s: %q does not mention %q", addr, err, want)
			}
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Run on %s served until the deadline instead of refusing: %v", addr, err)
		}
	}
	// A token that cannot go into a header is refused too.
	err := service.Run(context.Background(), service.Spec{Addr: "127.0.0.1:0", Internal: true, Token: "two words",
		Handler: httpapi.Livez(), Logger: discard})
	if err == nil || !strings.Contains(err.Error(), "token") {
		t.Errorf("Run with token %q = %v, want a refusal", "two words", err)
	}
	// So is a short one, whether it guards everything or only /metrics, before anything listens.
	for _, spec := range []service.Spec{{Token: "x"}, {OpsToken: "short-ops-token"}} {
		spec.Addr, spec.Handler, spec.Logger = "127.0.0.1:0", httpapi.Livez(), discard
		err := service.Run(context.Background(), spec)
		if err == nil || !strings.Contains(err.Error(), "of at least 32 characters): use a long random one, e.g. from `openssl rand -base64 32`") {
			t.Errorf("Run with a short token (%+v) = %v, want a refusal naming the length", spec, err)
		}
	}
}

// --insecure lets it listen anyway, with a warning, and without auth.
func TestRunInsecureWarns(t *testing.T) {
	var log logBuffer
	addr := startSpec(t, service.Spec{Addr: "0.0.0.0:0", Internal: true, Insecure: true,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if out := log.String(); !strings.Contains(out, "level=WARN") || !strings.Contains(out, "without a token") {
		t.Errorf("no warning logged:\n%s", out)
	}
	hc := servicetest.NewHTTPClient(t)
	if r := servicetest.Call(t, hc, http.MethodGet, "http://"+addr+"/", nil); r.Status != 200 || r.Body != greeting {
		t.Errorf("GET / = %d %q, want 200 %q", r.Status, r.Body, greeting)
	}
}

// Loopback without a token, and the public frontend anywhere, start as before: no refusal, no auth.
func TestRunWithoutTokenWhereAllowed(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	for name, spec := range map[string]service.Spec{
		"internal on loopback":    {Addr: "127.0.0.1:0", Internal: true},
		"public on all addresses": {Addr: "0.0.0.0:0"},
	} {
		t.Run(name, func(t *testing.T) {
			var log logBuffer
			spec.Logger = slog.New(slog.NewTextHandler(&log, nil))
			addr := startSpec(t, spec)
			if r := servicetest.Call(t, hc, http.MethodGet, "http://"+addr+"/", nil); r.Status != 200 || r.Body != greeting {
				t.Errorf("GET / = %d %q, want 200 %q", r.Status, r.Body, greeting)
			}
			if strings.Contains(log.String(), "level=WARN") {
				t.Errorf("unexpected warning:\n%s", log.String())
			}
		})
	}
}

// With a token an internal service listens anywhere and requires the token on everything but /healthz.
func TestRunWithToken(t *testing.T) {
	const token = "t0ken-for-the-test-0123456789abcdefg"
	addr := startSpec(t, service.Spec{Addr: "0.0.0.0:0", Internal: true, Token: token})
	url := "http://" + addr
	plain := servicetest.NewHTTPClient(t)
	authed := httpapi.NewClient(httpapi.WithToken(token))
	t.Cleanup(authed.CloseIdleConnections)
	wrong := httpapi.NewClient(httpapi.WithToken("not-" + token))
	t.Cleanup(wrong.CloseIdleConnections)

	for name, hc := range map[string]*http.Client{"no token": plain, "wrong token": wrong} {
		r := servicetest.Call(t, hc, http.MethodGet, url+"/", nil)
		if r.Status != http.StatusUnauthorized || r.Body != httpapi.UnauthorizedText || r.Header.Get("WWW-Authenticate") != "Bearer" {
			t.Errorf("%s: GET / = %d %q (WWW-Authenticate %q), want 401 %q", name, r.Status, r.Body,
				r.Header.Get("WWW-Authenticate"), httpapi.UnauthorizedText)
		}
		if r := servicetest.Call(t, hc, http.MethodGet, url+"/healthz", nil); r.Status != 200 || r.Body != "ok" {
			t.Errorf("%s: GET /healthz = %d %q, want 200 ok", name, r.Status, r.Body)
		}
	}
	if r := servicetest.Call(t, authed, http.MethodGet, url+"/", nil); r.Status != 200 || r.Body != greeting {
		t.Errorf("with the token: GET / = %d %q, want 200 %q", r.Status, r.Body, greeting)
	}
}

// Spec.Timeouts reach the server: a client that sends no headers is cut off after ReadHeader.
func TestRunTimeouts(t *testing.T) {
	addr := startSpec(t, service.Spec{Addr: "127.0.0.1:0", Timeouts: httpapi.ServerTimeouts{ReadHeader: 300 * time.Millisecond}})
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	conn.SetReadDeadline(start.Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("a silent connection is still open after 5s with ReadHeader 300ms")
		}
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("a silent connection was closed after %v, want about 300ms", took)
	}
}
