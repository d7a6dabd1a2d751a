package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// serve starts an httptest server for h, closed when the test ends.
func serve(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// deadAddr returns a loopback host:port on which nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// countingEndpoint is a fixed address that counts how often it is asked for, and how often it is told
// that it failed or answered.
type countingEndpoint struct {
	addr                    string
	asked, failed, answered atomic.Int64
}

func (e *countingEndpoint) Addr(context.Context) (string, error) {
	e.asked.Add(1)
	return e.addr, nil
}

func (e *countingEndpoint) Failed(addr string) {
	if addr == e.addr {
		e.failed.Add(1)
	}
}

func (e *countingEndpoint) Answered(addr string) {
	if addr == e.addr {
		e.answered.Add(1)
	}
}

// waitUntil polls cond until it holds, failing the test after 10s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shortRetries is ctx with a retry budget short enough for a test of a peer that never recovers.
func shortRetries(ctx context.Context) context.Context {
	return client.RetryFor(ctx, 400*time.Millisecond)
}

// wantStatus checks that err is (or wraps) an *httpapi.Error with the given status.
func wantStatus(t *testing.T, what string, err error, status int) {
	t.Helper()
	var e *httpapi.Error
	if !errors.As(err, &e) || e.Status != status {
		t.Errorf("%s: err = %v, want an *httpapi.Error with status %d", what, err, status)
	}
}

// fakeDatabase answers GET /getById with a finished task of the asked id and POST /newTask with 42,
// counting the requests it serves.
func fakeDatabase(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var served atomic.Int64
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/getById":
			httpapi.WriteText(w, http.StatusOK, `{"id":`+r.URL.Query().Get("id")+`,"state":2}`)
		case r.Method == http.MethodPost && r.URL.Path == "/newTask":
			httpapi.WriteText(w, http.StatusOK, "42")
		default:
			httpapi.WriteText(w, http.StatusNotFound, "Error: no endpoint "+r.URL.Path)
		}
	})
	return srv, &served
}

// fakeKV answers GET /get?key=<key> with whatever addr holds ("" answers 404), counting the lookups,
// and GET /list with the instances registered under key's instance prefix (none unless set).
type fakeKV struct {
	key       string
	addr      atomic.Value // string
	instances atomic.Value // []string
	lookups   atomic.Int64
	lists     atomic.Int64
	srv       *httptest.Server
}

func newFakeKV(t *testing.T, key string) *fakeKV {
	t.Helper()
	kv := &fakeKV{key: key}
	kv.addr.Store("")
	kv.instances.Store([]string(nil))
	kv.srv = serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/list" {
			kv.lists.Add(1)
			var b strings.Builder
			// Listed with an unrelated key too, as a reference kv service that ignores prefix would.
			b.WriteString("other : x\n")
			for _, a := range kv.instances.Load().([]string) {
				fmt.Fprintf(&b, "%s%s : %s\n", wire.InstancePrefix(kv.key), a, a)
			}
			httpapi.WriteText(w, http.StatusOK, b.String())
			return
		}
		if r.Method != http.MethodGet || r.URL.Path != "/get" || r.URL.Query().Get("key") != kv.key {
			httpapi.WriteText(w, http.StatusBadRequest, "Error: unexpected "+r.Method+" "+r.URL.String())
			return
		}
		kv.lookups.Add(1)
		addr := kv.addr.Load().(string)
		if addr == "" {
			httpapi.WriteText(w, http.StatusNotFound, "Error: no key "+kv.key)
			return
		}
		httpapi.WriteText(w, http.StatusOK, addr)
	})
	return kv
}

func TestResolverLooksMovedPeerUpAgain(t *testing.T) {
	ctx := t.Context()
	hc := servicetest.NewHTTPClient(t)
	kv := newFakeKV(t, wire.DatabaseKey)
	first, firstServed := fakeDatabase(t)
	kv.addr.Store(servicetest.Addr(first.URL))
	db := client.NewDatabase(hc, client.NewResolver(client.NewKV(hc, servicetest.Addr(kv.srv.URL)), wire.DatabaseKey, time.Hour))

	for range 2 {
		if task, err := db.GetByID(ctx, 7); err != nil || task.ID != 7 || task.State != wire.Finished {
			t.Fatalf("GetByID(7) = %+v, %v; want task 7 finished", task, err)
		}
	}
	if n := kv.lookups.Load(); n != 1 {
		t.Errorf("%d kv lookups for two calls, want 1 (the address is cached)", n)
	}
	if n := firstServed.Load(); n != 2 {
		t.Errorf("first database served %d requests, want 2", n)
	}

	// The database moves: the cached address stops answering, the kv store has the new one.
	first.Close()
	second, secondServed := fakeDatabase(t)
	kv.addr.Store(servicetest.Addr(second.URL))
	if task, err := db.GetByID(ctx, 8); err != nil || task.ID != 8 {
		t.Fatalf("GetByID(8) after the move = %+v, %v; want task 8 from the new address", task, err)
	}
	if n := kv.lookups.Load(); n != 2 {
		t.Errorf("%d kv lookups after the move, want 2 (one more, after the failed connection)", n)
	}
	if n := secondServed.Load(); n != 1 {
		t.Errorf("new database served %d requests, want 1", n)
	}

	// A call that must not be repeated is still retried when the connection could not even be made.
	// (Not when a kept-alive connection breaks under it: the peer may have acted on the request. So the
	// pooled connections to the old address go first.)
	second.Close()
	hc.CloseIdleConnections()
	third, thirdServed := fakeDatabase(t)
	kv.addr.Store(servicetest.Addr(third.URL))
	if id, err := db.NewTask(ctx, client.NewTaskParams{}); err != nil || id != 42 {
		t.Fatalf("NewTask after a second move = %d, %v; want 42", id, err)
	}
	if n := thirdServed.Load(); n != 1 {
		t.Errorf("third database served %d requests, want exactly 1 /newTask", n)
	}
}

// TestResolverSpreadsAcrossInstances: calls go round-robin to every registered instance; one that
// stops answering is dropped at once and the rest carry on; a new lookup brings in new instances.
func TestResolverSpreadsAcrossInstances(t *testing.T) {
	ctx := t.Context()
	hc := servicetest.NewHTTPClient(t)
	kv := newFakeKV(t, wire.DatabaseKey)
	var dbs []*httptest.Server
	var served []*atomic.Int64
	var addrs []string
	for range 3 {
		srv, n := fakeDatabase(t)
		dbs, served, addrs = append(dbs, srv), append(served, n), append(addrs, servicetest.Addr(srv.URL))
	}
	kv.instances.Store(addrs)
	kv.addr.Store(addrs[0])
	const ttl = 300 * time.Millisecond
	db := client.NewDatabase(hc, client.NewResolver(client.NewKV(hc, servicetest.Addr(kv.srv.URL)), wire.DatabaseKey, ttl))
	for i := range 30 {
		if task, err := db.GetByID(ctx, int64(i)); err != nil || task.ID != int64(i) {
			t.Fatalf("GetByID(%d) = %+v, %v", i, task, err)
		}
	}
	for i, n := range served {
		if n.Load() != 10 {
			t.Errorf("instance %d served %d of 30 calls, want 10 (round-robin)", i, n.Load())
		}
	}
	if n := kv.lookups.Load(); n != 0 {
		t.Errorf("%d lookups of the reference key, want 0 (instances were listed)", n)
	}

	// Instance 1 dies: every call still succeeds, and it gets none after the failed connection.
	dbs[1].Close()
	hc.CloseIdleConnections()
	before := served[1].Load()
	for i := range 20 {
		if _, err := db.GetByID(ctx, int64(i)); err != nil {
			t.Fatalf("GetByID with one instance dead: %v", err)
		}
	}
	if n := served[1].Load(); n != before {
		t.Errorf("dead instance served %d more calls", n-before)
	}
	if got := served[0].Load() + served[2].Load(); got != 20+20 {
		t.Errorf("live instances served %d calls, want 40", got)
	}

	// After the cache's ttl the kv store is asked again, in the background while the known instances
	// keep answering: a fourth instance joins.
	srv4, served4 := fakeDatabase(t)
	kv.instances.Store([]string{addrs[0], addrs[2], servicetest.Addr(srv4.URL)})
	time.Sleep(ttl + 50*time.Millisecond)
	lists := kv.lists.Load()
	if _, err := db.GetByID(ctx, 1); err != nil {
		t.Fatalf("GetByID with a stale list: %v", err)
	}
	waitUntil(t, func() bool { return kv.lists.Load() > lists })
	time.Sleep(50 * time.Millisecond) // the lookup's answer is stored just after it is served
	for i := range 9 {
		if _, err := db.GetByID(ctx, int64(i)); err != nil {
			t.Fatalf("GetByID after a new instance joined: %v", err)
		}
	}
	if n := served4.Load(); n != 3 {
		t.Errorf("new instance served %d of 9 calls, want 3", n)
	}
}

// TestKVClientSpreadsAcrossKVInstances: NewKV with several addresses spreads calls and survives one
// kv instance being down.
func TestKVClientSpreadsAcrossKVInstances(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	a, b := newFakeKV(t, "k"), newFakeKV(t, "k")
	a.addr.Store("va")
	b.addr.Store("vb")
	kv := client.NewKV(hc, servicetest.Addr(a.srv.URL)+","+servicetest.Addr(b.srv.URL))
	seen := map[string]int{}
	for range 10 {
		v, err := kv.Get(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		seen[v]++
	}
	if seen["va"] != 5 || seen["vb"] != 5 {
		t.Errorf("answers %v, want 5 from each kv instance", seen)
	}
	a.srv.Close()
	hc.CloseIdleConnections()
	for range 5 {
		if v, err := kv.Get(t.Context(), "k"); err != nil || v != "vb" {
			t.Fatalf("Get with one kv instance down = %q, %v; want vb", v, err)
		}
	}
}

// TestResolverPeerNotRegistered: a peer nobody registered is a transient failure (registrations come
// back within seconds of a kv store restart): 503, looked up again on every retry until the deadline.
func TestResolverPeerNotRegistered(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	kv := newFakeKV(t, wire.StorageKey) // holds no address
	st := client.NewStorage(hc, client.NewResolver(client.NewKV(hc, servicetest.Addr(kv.srv.URL)), wire.StorageKey, time.Hour))
	_, err := st.GetImage(shortRetries(t.Context()), 1, wire.WorkingImage)
	wantStatus(t, "GetImage with no storage registered", err, http.StatusServiceUnavailable)
	if n := kv.lookups.Load(); n < 2 {
		t.Errorf("%d kv lookups, want one per attempt, at least 2", n)
	}

	// Registered later: the next call finds it.
	srv, _ := fakeDatabase(t)
	kv.addr.Store(servicetest.Addr(srv.URL))
	if _, err := st.GetImage(t.Context(), 1, wire.WorkingImage); !client.IsStatus(err, http.StatusNotFound) {
		t.Errorf("GetImage once registered: %v, want the peer's own 404", err)
	}
}

// TestResolverKeepsKnownInstancesWhileKVIsAway: discovery is not in the data path. With the kv store
// gone, or answering that nothing is registered (it restarted empty), calls go on to the instances
// already known, well past the list's ttl.
func TestResolverKeepsKnownInstancesWhileKVIsAway(t *testing.T) {
	for _, how := range []string{"kv store down", "kv store lost the registrations"} {
		t.Run(how, func(t *testing.T) {
			ctx := t.Context()
			hc := servicetest.NewHTTPClient(t)
			kv := newFakeKV(t, wire.DatabaseKey)
			srv, served := fakeDatabase(t)
			kv.instances.Store([]string{servicetest.Addr(srv.URL)})
			const ttl = 50 * time.Millisecond
			db := client.NewDatabase(hc, client.NewResolver(client.NewKV(hc, servicetest.Addr(kv.srv.URL)), wire.DatabaseKey, ttl))
			if _, err := db.GetByID(ctx, 1); err != nil {
				t.Fatal(err)
			}
			if how == "kv store down" {
				kv.srv.Close()
			} else {
				kv.instances.Store([]string(nil))
			}
			for i := range 10 {
				time.Sleep(ttl)
				if task, err := db.GetByID(ctx, int64(i)); err != nil || task.ID != int64(i) {
					t.Fatalf("GetByID(%d) %s after the list's ttl: %+v, %v", i, how, task, err)
				}
			}
			if n := served.Load(); n != 11 {
				t.Errorf("the known instance served %d calls, want 11", n)
			}
		})
	}
}

// TestBreakerAvoidsAFailedInstance: an instance that fails a connection gets no calls for a while even
// though the kv store still lists it (its registration has not lapsed yet); every call succeeds on the
// others, the calls that met the failure included.
func TestBreakerAvoidsAFailedInstance(t *testing.T) {
	ctx := t.Context()
	hc := servicetest.NewHTTPClient(t)
	kv := newFakeKV(t, wire.DatabaseKey)
	var broken atomic.Int64
	dead := serve(t, func(w http.ResponseWriter, r *http.Request) {
		broken.Add(1)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close() // the connection breaks: as a process dying under the request
		}
	})
	live, served := fakeDatabase(t)
	kv.instances.Store([]string{servicetest.Addr(dead.URL), servicetest.Addr(live.URL)})
	db := client.NewDatabase(hc, client.NewResolver(client.NewKV(hc, servicetest.Addr(kv.srv.URL)), wire.DatabaseKey, 10*time.Millisecond))
	for i := range 40 {
		if task, err := db.GetByID(ctx, int64(i)); err != nil || task.ID != int64(i) {
			t.Fatalf("GetByID(%d) with one instance broken: %+v, %v", i, task, err)
		}
	}
	if n := broken.Load(); n != 1 {
		t.Errorf("the broken instance got %d calls, want 1: avoided after its first failure", n)
	}
	if n := served.Load(); n != 40 {
		t.Errorf("the live instance served %d calls, want 40", n)
	}
}

// flaky answers the first failures requests with status and the rest with ok, counting them all.
func flaky(t *testing.T, failures int64, status int, ok func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var seen atomic.Int64
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if seen.Add(1) <= failures {
			httpapi.WriteText(w, status, "Error: "+http.StatusText(status))
			return
		}
		ok(w, r)
	})
	return srv, &seen
}

func TestIdempotentCallRetriedOnGatewayErrors(t *testing.T) {
	for _, status := range []int{http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusInsufficientStorage} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			srv, seen := flaky(t, 2, status, func(w http.ResponseWriter, r *http.Request) {
				httpapi.WriteText(w, http.StatusOK, `{"id":3,"state":1,"token":9}`)
			})
			db := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
			task, err := db.GetByID(t.Context(), 3)
			if err != nil || task.ID != 3 || task.Token != 9 {
				t.Fatalf("GetByID = %+v, %v; want task 3 after two %d answers", task, err, status)
			}
			if n := seen.Load(); n != 3 {
				t.Errorf("%d requests, want 3", n)
			}
		})
	}
}

// TestRetriesEndAtTheDeadline: a peer that stays unavailable is retried, with backoff, until the call's
// retry budget ends, and then its 503 is returned.
func TestRetriesEndAtTheDeadline(t *testing.T) {
	srv, seen := flaky(t, 1000, http.StatusServiceUnavailable, nil)
	db := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
	start := time.Now()
	_, err := db.GetByID(shortRetries(t.Context()), 3)
	wantStatus(t, "GetByID from a database that is always unavailable", err, http.StatusServiceUnavailable)
	if n := seen.Load(); n < 2 || n > 20 {
		t.Errorf("%d requests within a 400ms budget, want a few (backoff from 50ms)", n)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("gave up after %v, long past its 400ms budget", el)
	}

	// A context deadline bounds the retries as well.
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := db.GetByID(ctx, 3); !client.IsStatus(err, http.StatusServiceUnavailable) {
		t.Errorf("GetByID with a deadline: %v, want the last 503", err)
	}
}

// TestRetryAfterIsHonoured: a peer's Retry-After sets the wait before the next attempt; one longer than
// what is left of the call's budget ends the call at once with that answer, for the caller to pass on.
func TestRetryAfterIsHonoured(t *testing.T) {
	var times []time.Time
	var mu sync.Mutex
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, time.Now())
		n := len(times)
		mu.Unlock()
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: busy")
			return
		}
		httpapi.WriteText(w, http.StatusOK, `{"id":3,"state":2}`)
	})
	db := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
	if _, err := db.GetByID(client.RetryFor(t.Context(), 10*time.Second), 3); err != nil {
		t.Fatalf("GetByID: %v", err)
	}
	mu.Lock()
	if len(times) != 2 || times[1].Sub(times[0]) < 900*time.Millisecond {
		t.Errorf("%d requests, the second %v after the first; want 2, at least Retry-After (1s) apart", len(times), times[len(times)-1].Sub(times[0]))
	}
	mu.Unlock()

	var seen atomic.Int64
	asks := serve(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		w.Header().Set("Retry-After", "30")
		httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: busy")
	})
	longDB := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(asks.URL)))
	start := time.Now()
	_, err := longDB.GetByID(t.Context(), 3)
	var e *httpapi.Error
	if !errors.As(err, &e) || e.Status != 503 || e.RetryAfter != 30*time.Second {
		t.Errorf("GetByID = %v, want the peer's 503 with its Retry-After of 30s", err)
	}
	if el := time.Since(start); el > 5*time.Second || seen.Load() != 1 {
		t.Errorf("%d requests in %v: a Retry-After past the budget ends the call at once", seen.Load(), el)
	}
}

func TestNotRetried(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		call   func(ctx context.Context, db *client.Database) error
	}{
		{"NewTask 503", http.StatusServiceUnavailable, func(ctx context.Context, db *client.Database) error {
			_, err := db.NewTask(ctx, client.NewTaskParams{Pending: true})
			return err
		}},
		{"GetNewTask 503", http.StatusServiceUnavailable, func(ctx context.Context, db *client.Database) error {
			_, err := db.GetNewTask(ctx, 0)
			return err
		}},
		{"GetByID 500", http.StatusInternalServerError, func(ctx context.Context, db *client.Database) error {
			_, err := db.GetByID(ctx, 1)
			return err
		}},
		{"FinishTask 409", http.StatusConflict, func(ctx context.Context, db *client.Database) error {
			return db.FinishTask(ctx, 1, 2)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, seen := flaky(t, 1000, tc.status, nil)
			db := client.NewDatabase(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
			wantStatus(t, tc.name, tc.call(t.Context(), db), tc.status)
			if n := seen.Load(); n != 1 {
				t.Errorf("%d requests, want exactly 1 (no retry)", n)
			}
		})
	}
}

func TestUnreachablePeer(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(ctx context.Context, db *client.Database) error
	}{
		{"GetByID", func(ctx context.Context, db *client.Database) error {
			_, err := db.GetByID(ctx, 1)
			return err
		}},
		// Not idempotent, but a connection that was never made sent nothing.
		{"NewTask", func(ctx context.Context, db *client.Database) error {
			_, err := db.NewTask(ctx, client.NewTaskParams{})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := &countingEndpoint{addr: deadAddr(t)}
			db := client.NewDatabase(servicetest.NewHTTPClient(t), ep)
			err := tc.call(shortRetries(t.Context()), db)
			wantStatus(t, tc.name+" of a peer not listening", err, http.StatusServiceUnavailable)
			var e *httpapi.Error
			if errors.As(err, &e) && e.RetryAfter <= 0 {
				t.Errorf("%v carries no Retry-After", err)
			}
			n := ep.asked.Load()
			if n < 2 {
				t.Errorf("%d attempts, want a retry at least", n)
			}
			if f := ep.failed.Load(); f != n {
				t.Errorf("told of %d failures, want one per failed connection (%d)", f, n)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// randomBytes returns n bytes that no truncation or reordering leaves equal.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{1, 2, 3}).Read(b) // never fails
	return b
}

// bodyServer fails the first request with fail, then stores each body it reads (with the request's token
// parameter) and answers "success".
type bodyServer struct {
	mu     sync.Mutex
	seen   int
	bodies [][]byte
	errs   []error
	tokens []string
	srv    *httptest.Server
}

func newBodyServer(t *testing.T, fail func(t *testing.T, w http.ResponseWriter, r *http.Request)) *bodyServer {
	t.Helper()
	s := &bodyServer{}
	s.srv = serve(t, func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen++
		first := s.seen == 1
		s.mu.Unlock()
		if first {
			fail(t, w, r)
			return
		}
		b, err := io.ReadAll(r.Body)
		s.mu.Lock()
		s.bodies, s.errs = append(s.bodies, b), append(s.errs, err)
		s.tokens = append(s.tokens, r.URL.Query().Get("token"))
		s.mu.Unlock()
		httpapi.WriteText(w, http.StatusOK, "success")
	})
	return s
}

func TestBodyReplayedOnRetry(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		fail func(t *testing.T, w http.ResponseWriter, r *http.Request)
	}{
		{"connection dropped", 256 << 10, func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			conn.Close()
		}},
		// A peer may refuse before it reads the body, while the client is still sending it. The body must
		// be big enough for the abandoned attempt to still be sending when the retry starts.
		{"503 before reading", 8 << 20, func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: busy")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newBodyServer(t, tc.fail)
			data := randomBytes(tc.size)
			st := client.NewStorage(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(s.srv.URL)))
			r := bytes.NewReader(data)
			if err := st.SendImage(t.Context(), 5, wire.WorkingImage, r, int64(len(data))); err != nil {
				t.Fatalf("SendImage: %v", err)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.seen != 2 || len(s.bodies) != 1 {
				t.Fatalf("%d requests, %d bodies read; want 2 requests, the second read", s.seen, len(s.bodies))
			}
			if s.errs[0] != nil || !bytes.Equal(s.bodies[0], data) {
				t.Errorf("retried body: %d bytes (read error %v), want the %d bytes sent", len(s.bodies[0]), s.errs[0], len(data))
			}
		})
	}
}

func TestResultBodyReplayedOnRetry(t *testing.T) {
	// SendResult starts from where the reader is, and its token goes with every attempt.
	var firstToken atomic.Value
	s := newBodyServer(t, func(t *testing.T, w http.ResponseWriter, r *http.Request) {
		firstToken.Store(r.URL.Query().Get("token"))
		httpapi.WriteText(w, http.StatusBadGateway, "Error: storage unavailable")
	})
	data := randomBytes(100 << 10)
	r := bytes.NewReader(data)
	if _, err := r.Seek(10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	st := client.NewStorage(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(s.srv.URL)))
	if err := st.SendResult(t.Context(), 5, 17, r, int64(len(data)-10)); err != nil {
		t.Fatalf("SendResult: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bodies) != 1 {
		t.Fatalf("%d bodies read, want 1 (the retry's)", len(s.bodies))
	}
	if !bytes.Equal(s.bodies[0], data[10:]) {
		t.Errorf("retried result body differs from the bytes after the reader's position")
	}
	if tok, _ := firstToken.Load().(string); tok != "17" || s.tokens[0] != "17" {
		t.Errorf("token parameters %q then %q, want 17 both times", tok, s.tokens[0])
	}
}

func TestUnreplayableBodyNotRetried(t *testing.T) {
	var seen atomic.Int64
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: busy")
	})
	st := client.NewStorage(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
	body := io.MultiReader(bytes.NewReader([]byte("not seekable")))
	err := st.SendImage(t.Context(), 1, wire.WorkingImage, body, -1)
	wantStatus(t, "SendImage of a stream", err, http.StatusServiceUnavailable)
	if n := seen.Load(); n != 1 {
		t.Errorf("%d requests, want 1: a stream cannot be sent again", n)
	}
}

func TestCancelStopsRetrying(t *testing.T) {
	t.Run("during backoff", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		// The peer answers 503, and the caller gives up just after the answer arrived.
		var seen atomic.Int64
		hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			seen.Add(1)
			cancel()
			return &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{},
				Body: io.NopCloser(strings.NewReader("Error: busy")), Request: r}, nil
		})}
		ep := &countingEndpoint{addr: "127.0.0.1:1"}
		db := client.NewDatabase(hc, ep)
		if _, err := db.GetByID(ctx, 1); err == nil {
			t.Fatal("GetByID succeeded with a cancelled context")
		}
		if n, m := seen.Load(), ep.asked.Load(); n != 1 || m != 1 {
			t.Errorf("%d requests, %d attempts; want 1 of each: no retry after the context ended", n, m)
		}
	})
	t.Run("during a request", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var seen atomic.Int64
		arrived := make(chan struct{}, 10)
		srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
			seen.Add(1)
			arrived <- struct{}{}
			<-r.Context().Done() // hang until the caller goes away
		})
		ep := &countingEndpoint{addr: servicetest.Addr(srv.URL)}
		db := client.NewDatabase(servicetest.NewHTTPClient(t), ep)
		go func() {
			select {
			case <-arrived:
				cancel()
			case <-ctx.Done():
			}
		}()
		start := time.Now()
		_, err := db.GetByID(ctx, 1)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("GetByID = %v, want context.Canceled", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("GetByID took %v to give up after its context was cancelled", el)
		}
		if n := seen.Load(); n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
		if n := ep.failed.Load(); n != 0 {
			t.Errorf("told of %d failures: a cancelled call says nothing about the peer", n)
		}
	})
}

func TestCheckHealth(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	healthy := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/healthz" {
			httpapi.Livez().ServeHTTP(w, r)
			return
		}
		httpapi.WriteText(w, http.StatusNotFound, "Error: no endpoint "+r.URL.Path)
	})
	if err := client.CheckHealth(t.Context(), hc, servicetest.Addr(healthy.URL)); err != nil {
		t.Errorf("CheckHealth of a healthy service: %v", err)
	}
	var seen atomic.Int64
	sick := serve(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		httpapi.WriteText(w, http.StatusInternalServerError, "Error: internal error")
	})
	wantStatus(t, "CheckHealth of a failing service", client.CheckHealth(t.Context(), hc, servicetest.Addr(sick.URL)), http.StatusInternalServerError)
	if n := seen.Load(); n != 1 {
		t.Errorf("%d health probes of a service answering 500, want 1", n)
	}
	wantStatus(t, "CheckHealth of nothing", client.CheckHealth(t.Context(), hc, deadAddr(t)), http.StatusServiceUnavailable)
}

// TestStreamRetriedElsewhereWhenNothingWasSent: a body that cannot be read twice (an upload streamed on)
// still goes to another instance when the connection to the first could not be made: nothing of it was
// read. Once sent, it is never sent again (TestUnreplayableBodyNotRetried).
func TestStreamRetriedElsewhereWhenNothingWasSent(t *testing.T) {
	// newBodyServer's first request is never a real one here: the dead address takes each first try.
	s := newBodyServer(t, func(t *testing.T, w http.ResponseWriter, r *http.Request) {
		t.Errorf("the live instance failed its first request on purpose, but it should get only good ones")
	})
	s.seen = 1 // every request it gets is to be read
	data := randomBytes(64 << 10)
	st := client.NewStorage(servicetest.NewHTTPClient(t), client.NewAddrs([]string{deadAddr(t), servicetest.Addr(s.srv.URL)}))
	for i := range 4 {
		body := io.MultiReader(bytes.NewReader(data)) // not seekable
		if err := st.SendImage(t.Context(), int64(i), wire.WorkingImage, body, -1); err != nil {
			t.Fatalf("upload %d with one instance down: %v", i, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, b := range s.bodies {
		if !bytes.Equal(b, data) {
			t.Errorf("body %d: %d bytes, want the %d sent", i, len(b), len(data))
		}
	}
}

// TestBrokenSourceIsNotThePeersFault: when the stream being passed on breaks (the uploading client went
// away), the call fails with IsBodyError, is not retried, and the peer is not marked as failed.
func TestBrokenSourceIsNotThePeersFault(t *testing.T) {
	var seen atomic.Int64
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		io.Copy(io.Discard, r.Body)
		httpapi.WriteText(w, http.StatusBadRequest, "Error: truncated")
	})
	ep := &countingEndpoint{addr: servicetest.Addr(srv.URL)}
	st := client.NewStorage(servicetest.NewHTTPClient(t), ep)
	broken := io.MultiReader(bytes.NewReader(randomBytes(1<<20)), iotest.ErrReader(io.ErrUnexpectedEOF))
	err := st.SendImage(t.Context(), 1, wire.WorkingImage, broken, -1)
	if !client.IsBodyError(err) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("SendImage with a broken source: %v, want a body error wrapping the source's", err)
	}
	if n := ep.failed.Load(); n != 0 {
		t.Errorf("the peer was marked failed %d times for its caller's broken stream", n)
	}
	if n := seen.Load(); n > 1 {
		t.Errorf("%d requests, want at most 1", n)
	}
}
