package service_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var discard = slog.New(slog.DiscardHandler)

const (
	// testTTL is the registration TTL of the services under test, renewed every testRenew.
	testTTL   = 1200 * time.Millisecond
	testRenew = testTTL / 3
	// heal bounds how long a lost registration may take to come back: a few renew periods.
	heal = 5 * testRenew
	// testKey is the discovery key the services under test register under.
	testKey = "testAddress"
	// greeting is what the services under test answer.
	greeting = "hello from the service"
)

// kvServer is a real kv service (kvservice over filekv) on an httptest server, behind a handler the
// test can swap: for a kv store that restarted with its data lost, or one that is not up yet.
type kvServer struct {
	kv *client.KV
	hc *http.Client
	h  atomic.Pointer[http.Handler]
}

func startKV(t *testing.T) *kvServer {
	t.Helper()
	ks := &kvServer{}
	ks.restartEmpty(t)
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*ks.h.Load()).ServeHTTP(w, r)
	}), discard)
	srv.Start()
	t.Cleanup(srv.Close)
	ks.hc = httpapi.NewClient()
	t.Cleanup(ks.hc.CloseIdleConnections)
	ks.kv = client.NewKV(ks.hc, strings.TrimPrefix(srv.URL, "http://"))
	return ks
}

// restartEmpty replaces the kv service with a new one over a new, empty store.
func (ks *kvServer) restartEmpty(t *testing.T) {
	t.Helper()
	store, err := filekv.Open(filepath.Join(t.TempDir(), "kv.json"), filekv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("close kv store: %v", err)
		}
	})
	h := kvservice.NewServer(store)
	ks.h.Store(&h)
}

// down makes the kv service answer every request with 503.
func (ks *kvServer) down() {
	h := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: not started")
	}))
	ks.h.Store(&h)
}

// waitFor polls the registration until it is want ("" for absent) or timeout passes, and returns how long
// that took.
func (ks *kvServer) waitFor(t *testing.T, want string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var got string
	var err error
	for {
		got, err = ks.kv.Get(t.Context(), testKey)
		switch {
		case want == "" && client.IsStatus(err, http.StatusNotFound):
			return time.Since(start)
		case want != "" && err == nil && got == want:
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("after %v the registration is %q, %v; want %q", timeout, got, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitRegistered polls until a registration appears and returns it.
func (ks *kvServer) waitRegistered(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		addr, err := ks.kv.Get(t.Context(), testKey)
		if err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("not registered after 5s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runService runs a service that registers under testKey in ks with testTTL. stop ends it and returns
// Run's error; it is also called when the test ends.
func runService(t *testing.T, ks *kvServer, advertise string) (stop func() error) {
	t.Helper()
	return runServiceReady(t, ks, advertise, nil)
}

// runServiceReady is runService with a readiness check (nil: always ready).
func runServiceReady(t *testing.T, ks *kvServer, advertise string, ready func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, service.Spec{
			Addr: "127.0.0.1:0",
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				httpapi.WriteText(w, http.StatusOK, greeting)
			}),
			Logger:          discard,
			RegisterAs:      testKey,
			KV:              ks.kv,
			Advertise:       advertise,
			RegistrationTTL: testTTL,
			Ready:           ready,
		})
	}()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = errors.New("Run did not return 10s after its context ended")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

// Run registers the address it listens on, in host:port form, and that address reaches the service.
func TestRunRegistersItsAddress(t *testing.T) {
	ks := startKV(t)
	runService(t, ks, "")
	addr := ks.waitRegistered(t)
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("registered %q, want 127.0.0.1:port", addr)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ks.hc.Do(req)
	if err != nil {
		t.Fatalf("the registered address %s does not answer: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != greeting {
		t.Fatalf("the registered address %s answers %q, %v; want %q", addr, b, err, greeting)
	}
}

// A registration the kv store lost, by a removal or a restart with its data gone, comes back within a
// few renew periods.
func TestRegistrationHeals(t *testing.T) {
	const addr = "10.9.8.7:6543"
	ks := startKV(t)
	runService(t, ks, addr)
	ks.waitFor(t, addr, 5*time.Second)

	if err := ks.kv.Remove(t.Context(), testKey); err != nil {
		t.Fatal(err)
	}
	took := ks.waitFor(t, addr, heal)
	t.Logf("back %v after a removal (renew period %v)", took, testRenew)

	ks.restartEmpty(t)
	took = ks.waitFor(t, addr, heal)
	t.Logf("back %v after a kv restart with its data lost", took)
}

// A service that starts before the kv store answers keeps retrying, and registers within a few renew
// periods of the kv store coming up (the retry backoff is capped at the renew period).
func TestRegistersOnceKVIsUp(t *testing.T) {
	const addr = "10.9.8.7:6544"
	ks := startKV(t)
	ks.down()
	runService(t, ks, addr)
	time.Sleep(3 * testRenew) // long enough for several failed attempts and the backoff to grow
	ks.restartEmpty(t)
	took := ks.waitFor(t, addr, heal)
	t.Logf("registered %v after the kv store came up", took)
}

// Once Run's context ends the registration is no longer renewed and expires within the TTL.
func TestRegistrationExpiresAfterStop(t *testing.T) {
	const addr = "10.9.8.7:6545"
	ks := startKV(t)
	stop := runService(t, ks, addr)
	ks.waitFor(t, addr, 5*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	took := ks.waitFor(t, "", testTTL+time.Second)
	t.Logf("expired %v after the service stopped (TTL %v)", took, testTTL)
	// And it stays gone: nothing renews it any more.
	time.Sleep(testRenew)
	ks.waitFor(t, "", 0)
}

// A service that is not ready (its engine is away) is not registered, drops out of discovery when it
// stops being ready, and comes back as soon as it is ready again.
func TestRegisteredOnlyWhileReady(t *testing.T) {
	const addr = "10.9.8.7:6546"
	ks := startKV(t)
	var ready atomic.Bool
	runServiceReady(t, ks, addr, func(context.Context) error {
		if ready.Load() {
			return nil
		}
		return errors.New("engine unreachable")
	})
	time.Sleep(3 * testRenew)
	ks.waitFor(t, "", 0) // never registered while not ready
	ready.Store(true)
	ks.waitFor(t, addr, heal)
	ready.Store(false)
	took := ks.waitFor(t, "", testTTL+heal)
	t.Logf("dropped out %v after it stopped being ready (TTL %v)", took, testTTL)
	ready.Store(true)
	ks.waitFor(t, addr, heal)
}

// On a kv store without expiry (the reference design's ignores ttl), a service that stops being ready
// removes its instance key, so that clients stop listing it; the reference key, which another instance
// may hold, stays.
func TestNotReadyOnKVWithoutExpiry(t *testing.T) {
	const addr = "10.9.8.7:6547"
	ks := startKV(t)
	inner := *ks.h.Load()
	noExpiry := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		q.Del("ttl")
		r.URL.RawQuery = q.Encode()
		inner.ServeHTTP(w, r)
	}))
	ks.h.Store(&noExpiry)
	var ready atomic.Bool
	ready.Store(true)
	runServiceReady(t, ks, addr, func(context.Context) error {
		if ready.Load() {
			return nil
		}
		return errors.New("engine unreachable")
	})
	instanceKey := wire.InstancePrefix(testKey) + addr
	listed := func() bool {
		v, err := ks.kv.Get(t.Context(), instanceKey)
		return err == nil && v == addr
	}
	if !servicetest.PollFor(heal, listed) {
		t.Fatal("the instance key was not registered")
	}
	ready.Store(false)
	if !servicetest.PollFor(heal, func() bool { return !listed() }) {
		t.Fatalf("the instance key is still listed %v after the service stopped being ready", heal)
	}
	time.Sleep(testTTL + testRenew) // past any expiry: the kv store has none
	ks.waitFor(t, addr, 0)
	ready.Store(true)
	if !servicetest.PollFor(heal, listed) {
		t.Error("the instance key did not come back once the service was ready again")
	}
}

func TestRegistrationTTLConstant(t *testing.T) {
	// The TTL must fit under the kv service's cap, and its renew period be long enough not to load kv.
	if service.RegistrationTTL > kvservice.MaxTTL || service.RegistrationTTL/3 < time.Second {
		t.Fatalf("RegistrationTTL %v: want at most %v and a renew period of at least 1s", service.RegistrationTTL, kvservice.MaxTTL)
	}
}

// A service that is not ready says what it waits for, again every few seconds, and says when it is
// ready; its liveness probe answers all along, its readiness probe only once it is ready.
func TestNotReadySaysWhatItWaitsFor(t *testing.T) {
	var logs logBuffer
	var ready atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	check := func(context.Context) error {
		if ready.Load() {
			return nil
		}
		return errors.New("waiting for PostgreSQL at db:5432: connection refused")
	}
	ks := startKV(t)
	go func() {
		done <- service.Run(ctx, service.Spec{Addr: addr, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			Ready: check, RegisterAs: testKey, KV: ks.kv, RegistrationTTL: testTTL})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	probe := func(path string) int {
		t.Helper()
		resp, err := ks.hc.Get("http://" + addr + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitLog := func(what string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !strings.Contains(logs.String(), what) {
			if time.Now().After(deadline) {
				t.Fatalf("the log never said %q:\n%s", what, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog(`msg="not ready: waiting for what it depends on`)
	waitLog("connection refused")
	if live, healthy := probe("/livez"), probe("/healthz"); live != http.StatusOK || healthy != http.StatusServiceUnavailable {
		t.Errorf("while not ready: /livez %d, /healthz %d; want 200 and 503", live, healthy)
	}
	ks.waitFor(t, "", 0) // not registered meanwhile
	ready.Store(true)
	waitLog("msg=ready")
	ks.waitFor(t, addr, heal)
	if healthy := probe("/healthz"); healthy != http.StatusOK {
		t.Errorf("once ready: /healthz %d, want 200", healthy)
	}
}
