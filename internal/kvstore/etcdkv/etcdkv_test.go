package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/kvstore/kvstoretest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openStore opens a store on endpoints in namespace prefix and closes it when t ends.
func openStore(t *testing.T, endpoints []string, prefix string) *Store {
	t.Helper()
	s, err := Open(t.Context(), Options{Endpoints: endpoints, Prefix: prefix, DialTimeout: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// TestContract runs the contract suite on one single-member cluster, each subtest in a namespace of its
// own so that it sees an empty store. Its TTL subtests mostly sleep: it runs in parallel with
// TestUnreachable, which mostly waits too.
func TestContract(t *testing.T) {
	t.Parallel()
	cluster := enginetest.StartEtcd(t, 1)
	kvstoretest.RunRealTime(t, func(t *testing.T) kvstore.Store {
		s, err := Open(t.Context(), Options{Endpoints: cluster.Endpoints(), Prefix: "contract/" + t.Name() + "/",
			Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s // RunRealTime closes it
	})
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want []string
		err  string // a part of the error; "" for none
	}{
		{"etcd://127.0.0.1:2379", []string{"127.0.0.1:2379"}, ""},
		{"etcd://a:1,b:2,c:3", []string{"a:1", "b:2", "c:3"}, ""},
		{"ETCD://localhost:2379", []string{"localhost:2379"}, ""},
		{"etcd://[::1]:2379,10.0.0.1:2379", []string{"[::1]:2379", "10.0.0.1:2379"}, ""},
		{"", nil, "not a URL"},
		{"127.0.0.1:2379", nil, "not a URL"},
		{"http://127.0.0.1:2379", nil, `scheme "http" is not etcd`},
		{"https://127.0.0.1:2379", nil, `scheme "https" is not etcd`},
		{"etcd://", nil, "no endpoint"},
		{"etcd://127.0.0.1", nil, `"127.0.0.1" is not HOST:PORT`},
		{"etcd://a:1,b", nil, `"b" is not HOST:PORT`},
		{"etcd://a:1,,b:2", nil, `"" is not HOST:PORT`},
		{"etcd://a:1,", nil, `"" is not HOST:PORT`},
		{"etcd://:2379", nil, "no valid host"},
		{"etcd://user@a:2379", nil, "no valid host"},
		{"etcd://a:0", nil, "no valid port"},
		{"etcd://a:65536", nil, "no valid port"},
		{"etcd://a:port", nil, "no valid port"},
		{"etcd://a:2379/", nil, "no valid port"},
		{"etcd://a:2379?x=1", nil, "no valid port"},
		{"etcd://a:1,a:1", nil, "twice"},
	} {
		got, err := ParseURL(tc.raw)
		switch {
		case tc.err == "" && (err != nil || !slices.Equal(got, tc.want)):
			t.Errorf("ParseURL(%q) = %q, %v; want %q", tc.raw, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseURL(%q) = %q, %v; want an error with %q", tc.raw, got, err, tc.err)
		}
	}
}

// Renewals keep the entry's lease alive instead of granting new ones, and every lease its key leaves is
// revoked: the cluster holds one lease per entry with a ttl, however often and however concurrently they
// are renewed.
func TestLeasesDoNotLeak(t *testing.T) {
	ctx := t.Context()
	cluster := enginetest.StartEtcd(t, 1)
	s := openStore(t, cluster.Endpoints(), "leases/")
	leases := func() int {
		t.Helper()
		resp, err := s.client.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Leases)
	}
	wantLeases := func(n int) {
		t.Helper()
		if got := leases(); got != n {
			t.Fatalf("%d leases, want %d", got, n)
		}
	}
	leaseOf := func(key string) clientv3.LeaseID {
		t.Helper()
		resp, err := s.client.Get(ctx, "leases/"+key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v, %v", key, resp, err)
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	set := func(key, value string, ttl time.Duration) {
		t.Helper()
		if err := s.Set(ctx, key, value, ttl); err != nil {
			t.Fatal(err)
		}
	}
	wantLeases(0)

	set("reg", "a", 10*time.Second)
	first := leaseOf("reg")
	for range 50 {
		set("reg", "a", 10*time.Second)
	}
	if id := leaseOf("reg"); id != first {
		t.Errorf("a renewal moved the entry to lease %x from %x", id, first)
	}
	if ttl, err := s.client.TimeToLive(ctx, first); err != nil || ttl.GrantedTTL != 10 {
		t.Errorf("TimeToLive = %+v, %v; want a granted TTL of 10s", ttl, err)
	}
	wantLeases(1)

	// Another value, then another ttl: a new lease each time, the old one revoked.
	set("reg", "b", 10*time.Second)
	second := leaseOf("reg")
	set("reg", "b", 20*time.Second)
	if third := leaseOf("reg"); second == first || third == second {
		t.Errorf("leases %x, %x, %x: want a new one for a new value and a new ttl", first, second, third)
	}
	if ttl, err := s.client.TimeToLive(ctx, first); err != nil || ttl.TTL != -1 {
		t.Errorf("the replaced lease: TimeToLive = %+v, %v; want it revoked", ttl, err)
	}
	wantLeases(1)

	// A ttl below the cluster's minimum (2s with the default election timeout) gets the minimum, and
	// renewals keep that lease too.
	set("short", "x", 300*time.Millisecond)
	short := leaseOf("short")
	for range 5 {
		set("short", "x", 300*time.Millisecond)
	}
	if id := leaseOf("short"); id != short {
		t.Errorf("a renewal below the minimum TTL moved the entry to lease %x from %x", id, short)
	}
	wantLeases(2)

	// Permanent again, deleted: no lease left.
	set("reg", "b", 0)
	if id := leaseOf("reg"); id != clientv3.NoLease {
		t.Errorf("permanent entry on lease %x", id)
	}
	if err := s.Delete(ctx, "short"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetIfAbsent(ctx, "secret", "s"); err != nil {
		t.Fatal(err)
	}
	wantLeases(0)

	// Several kv services renewing one registration at once, from its first Set on.
	var wg sync.WaitGroup
	errs := make(chan error, 8*20)
	for range 8 {
		wg.Go(func() {
			for range 20 {
				if err := s.Set(ctx, "shared", "addr", 10*time.Second); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantLeases(1)
	if err := s.Delete(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	wantLeases(0)
}

// eventually retries fn, each try bounded by a few seconds, until it succeeds or within passes, and
// returns how long that took.
func eventually(t *testing.T, within time.Duration, what string, fn func(ctx context.Context) error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil {
			return time.Since(start)
		}
		t.Logf("%s: failed after %v: %v", what, time.Since(start).Round(time.Millisecond), err)
		if time.Since(start) > within {
			t.Fatalf("%s: still failing after %v: %v", what, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// works writes and reads through s, with every kind of call that needs the cluster's leader.
func works(s *Store, round string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if err := s.Set(ctx, "config", "v"+round, 0); err != nil {
			return err
		}
		if v, err := s.Get(ctx, "config"); err != nil || v != "v"+round {
			return fmt.Errorf("Get = %q, %v; want %q", v, err, "v"+round)
		}
		if v, err := s.SetIfAbsent(ctx, "secret/"+round, "s"+round); err != nil || v != "s"+round {
			return fmt.Errorf("SetIfAbsent = %q, %v", v, err)
		}
		// A registration and its renewal: a lease granted, then kept alive.
		for range 2 {
			if err := s.Set(ctx, "services/x", "addr"+round, 10*time.Second); err != nil {
				return err
			}
		}
		return nil
	}
}

// leader returns the index of the cluster's leader among endpoints.
func leader(t *testing.T, s *Store, endpoints []string) int {
	t.Helper()
	var i int
	eventually(t, 10*time.Second, "find the leader", func(ctx context.Context) error {
		for j, ep := range endpoints {
			st, err := s.client.Status(ctx, ep)
			if err == nil && st.Leader == st.Header.MemberId {
				i = j
				return nil
			}
		}
		return errors.New("no member says it is the leader")
	})
	return i
}

// A client given the three members keeps working when one is killed (the leader, the hardest case), and
// the member rejoins when restarted: the cluster then needs it for a quorum when another one is killed.
func TestFailover(t *testing.T) {
	cluster := enginetest.StartEtcd(t, 3)
	endpoints := cluster.Endpoints()
	s := openStore(t, endpoints, "failover/")
	eventually(t, 5*time.Second, "before any kill", works(s, "0"))

	first := leader(t, s, endpoints)
	cluster.Member(first).Kill()
	took := eventually(t, 10*time.Second, "with the leader killed", works(s, "1"))
	t.Logf("working again %v after the leader was killed", took.Round(time.Millisecond))

	cluster.Member(first).Restart(t)
	// The restarted member caught up with what was written while it was down.
	alone := openStore(t, []string{cluster.Member(first).Endpoint()}, "failover/")
	eventually(t, 10*time.Second, "read through the restarted member", func(ctx context.Context) error {
		if v, err := alone.Get(ctx, "config"); err != nil || v != "v1" {
			return fmt.Errorf("Get = %q, %v; want %q", v, err, "v1")
		}
		return nil
	})

	second := (first + 1) % len(endpoints)
	cluster.Member(second).Kill()
	took = eventually(t, 10*time.Second, "with another member killed", works(s, "2"))
	t.Logf("working again %v after a second member was killed", took.Round(time.Millisecond))
}

// A cluster that cannot be reached is no reason to fail Open: the store opens and fails its calls as
// unavailable, each within the dial timeout. The end of the caller's context still fails Open. It
// shares nothing with TestContract, so they run in parallel.
func TestUnreachable(t *testing.T) {
	t.Parallel()
	dead := enginetest.FreeAddr(t) // nothing listens there
	s, err := Open(t.Context(), Options{Endpoints: []string{dead}, DialTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatalf("Open of a dead endpoint = %v, want a store that waits for it", err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for name, call := range map[string]func() error{
		"Ping":        func() error { return s.Ping(ctx) },
		"Set":         func() error { return s.Set(ctx, "k", "v", 0) },
		"Set a ttl":   func() error { return s.Set(ctx, "k", "v", time.Minute) },
		"SetIfAbsent": func() error { _, err := s.SetIfAbsent(ctx, "k", "v"); return err },
		"Get":         func() error { _, err := s.Get(ctx, "k"); return err },
		"List":        func() error { _, err := s.List(ctx, ""); return err },
		"Delete":      func() error { return s.Delete(ctx, "k") },
	} {
		if err := call(); !fault.IsTransient(err) || fault.IsNoSpace(err) {
			t.Errorf("%s on a dead endpoint = %v, want a transient (unavailable) error", name, err)
		} else if name == "Ping" {
			t.Log(err)
		}
	}

	short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = Open(short, Options{Endpoints: []string{dead, enginetest.FreeAddr(t)}, DialTimeout: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) || fault.IsTransient(err) {
		t.Errorf("Open with an expiring context = %v, want the caller's context.DeadlineExceeded", err)
	}

	if _, err := Open(t.Context(), Options{}); err == nil {
		t.Error("Open without endpoints succeeded")
	}
}

// TestOutage runs the outage part of the contract on a cluster of three that loses its quorum (two
// members killed: the third answers, without a leader), and on one whose only member is killed; each
// subtest on a cluster of its own.
func TestOutage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members int
		killed  []int
	}{
		{"QuorumLost", 3, []int{1, 2}},
		{"AllDown", 1, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kvstoretest.RunOutage(t, kvstoretest.Outage{
				Engine: func(t *testing.T) kvstoretest.Engine {
					cluster := enginetest.StartEtcd(t, tc.members)
					return kvstoretest.Engine{
						Open: func(t *testing.T) kvstore.Store {
							s, err := Open(t.Context(), Options{Endpoints: cluster.Endpoints(), Prefix: "outage/",
								DialTimeout: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
							if err != nil {
								t.Fatalf("Open: %v", err)
							}
							return s
						},
						Down: func(testing.TB) {
							for _, i := range tc.killed {
								cluster.Member(i).Kill()
							}
						},
						Up: func(t testing.TB) {
							for _, i := range tc.killed {
								cluster.Member(i).Restart(t)
							}
						},
					}
				},
				OpenWhileDown: true,
			})
		})
	}
}

func TestClosed(t *testing.T) {
	ctx := t.Context()
	cluster := enginetest.StartEtcd(t, 1)
	s, err := Open(ctx, Options{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "k", "v", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Set(ctx, "k", "w", 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Set after Close = %v, want ErrClosed", err)
	}
	if _, err := s.SetIfAbsent(ctx, "k", "w"); !errors.Is(err, ErrClosed) {
		t.Errorf("SetIfAbsent after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if _, err := s.List(ctx, ""); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close = %v, want ErrClosed", err)
	}
	if err := s.Delete(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Delete after Close = %v, want ErrClosed", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, ErrClosed) || fault.IsTransient(err) {
		t.Errorf("Ping after Close = %v, want ErrClosed, not transient", err)
	}
	// The default namespace: the entry is in etcd under imgmill/.
	r := openStore(t, cluster.Endpoints(), "")
	if resp, err := r.client.Get(ctx, "imgmill/k"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Errorf("imgmill/k in etcd: %v, %v", resp, err)
	}
}
