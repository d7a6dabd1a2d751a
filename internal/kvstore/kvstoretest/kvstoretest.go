// Package kvstoretest is the contract suite every kvstore.Store implementation must pass, so that filekv
// and etcdkv behave the same to the kv service: Run for a store that takes a clock (its TTLs are checked
// on a fake one), RunRealTime for one whose expiry follows the real time.
package kvstoretest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/kvstore"
)

// Clock is a fake clock for the TTL tests: it stands still until Advance. It is safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock set to start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time; pass it where a store takes its clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Run runs the contract suite against a store whose expiry is decided by a clock it is given. open must
// return a fresh, empty store for each call, whose expiry is decided by now (the suite's fake clock) and
// never by the real time; Run closes it when the subtest ends (and checks that Close succeeds), so open
// must not close it itself. The TTL subtests check expiry to the nanosecond. The subtests run in parallel,
// so open must be safe for concurrent use.
func Run(t *testing.T, open func(t *testing.T, now func() time.Time) kvstore.Store) {
	t.Helper()
	run(t, false, func(t *testing.T) (kvstore.Store, *Clock) {
		t.Helper()
		// An arbitrary start, far from the real time, so a store that reads the real clock fails.
		clock := NewClock(time.Date(2031, time.March, 4, 5, 6, 7, 8, time.UTC))
		return open(t, clock.Now), clock
	})
}

// RealTimeGrace is how long after its expiry RunRealTime lets an entry linger: a server expires entries
// on its own schedule (etcd's leader looks for expired leases every 500ms and revokes them through raft),
// and, like etcd, may round a ttl up to whole seconds and to its minimum TTL.
const RealTimeGrace = 5 * time.Second

// RunRealTime runs the contract suite against a store whose expiry follows the real clock and which
// cannot be given another (etcd's leases). open must return a fresh store for each call, empty as far as
// the store's methods can see, and must not close it (RunRealTime does); it is called from concurrent
// subtests, so it must be safe for concurrent use.
//
// The TTL subtests check the same behaviours as Run's with real TTLs of 2 to 8 seconds: an entry must be
// there until its ttl has passed since the Set began and gone within RealTimeGrace after that. They run
// concurrently, which keeps the suite about ten seconds long.
func RunRealTime(t *testing.T, open func(t *testing.T) kvstore.Store) {
	t.Helper()
	run(t, true, func(t *testing.T) (kvstore.Store, *Clock) {
		t.Helper()
		return open(t), nil
	})
}

// run runs the suite on the stores of open, which returns a nil clock for a real-time store.
func run(t *testing.T, realTime bool, open func(t *testing.T) (kvstore.Store, *Clock)) {
	t.Helper()
	fresh := func(t *testing.T) (kvstore.Store, *Clock) {
		t.Helper()
		s, clock := open(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s, clock
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s kvstore.Store)
	}{
		{"SetGet", testSetGet},
		{"GetMissing", testGetMissing},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"List", testList},
		{"ListPrefix", testListPrefix},
		{"ListIsACopy", testListIsACopy},
		{"Values", testValues},
		{"CancelledContext", testCancelledContext},
		{"Ping", testPing},
		{"ConcurrentSets", testConcurrentSets},
		{"SetIfAbsent", testSetIfAbsent},
		{"SetIfAbsentConcurrent", testSetIfAbsentConcurrent},
	}
	// Every subtest has a store (and a clock) of its own, so they run in parallel.
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, _ := fresh(t)
			tc.fn(t, s)
		})
	}
	// Each TTL behaviour is checked twice over: on the fake clock to the nanosecond, and on the real
	// clock within RealTimeGrace.
	ttlTests := []struct {
		name string
		fake func(t *testing.T, s kvstore.Store, c *Clock)
		real func(t *testing.T, s kvstore.Store)
	}{
		{"TTLExpiry", testTTLExpiry, realTTLExpiry},
		{"SetIfAbsentAfterExpiry", testSetIfAbsentAfterExpiry, realSetIfAbsentAfterExpiry},
		{"TTLRenewal", testTTLRenewal, realTTLRenewal},
		{"TTLReplaced", testTTLReplaced, realTTLReplaced},
		{"TTLCleared", testTTLCleared, realTTLCleared},
		{"TTLListOmitsExpired", testTTLListOmitsExpired, realTTLListOmitsExpired},
		{"TTLDeleteExpired", testTTLDeleteExpired, realTTLDeleteExpired},
		{"TTLCancelledContext", testTTLCancelledContext, realTTLCancelledContext},
	}
	if !realTime {
		for _, tc := range ttlTests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				s, c := fresh(t)
				tc.fake(t, s, c)
			})
		}
		return
	}
	// Concurrent t.Run calls rather than t.Parallel: the subtests mostly sleep, and -parallel (GOMAXPROCS
	// by default) would run them a few at a time.
	var wg sync.WaitGroup
	for _, tc := range ttlTests {
		wg.Go(func() {
			t.Run(tc.name, func(t *testing.T) {
				s, _ := fresh(t)
				tc.real(t, s)
			})
		})
	}
	wg.Wait()
}

func set(t *testing.T, s kvstore.Store, key, value string) {
	t.Helper()
	setTTL(t, s, key, value, 0)
}

func setTTL(t *testing.T, s kvstore.Store, key, value string, ttl time.Duration) {
	t.Helper()
	if err := s.Set(context.Background(), key, value, ttl); err != nil {
		t.Fatalf("Set(%q, %q, %v): %v", key, value, ttl, err)
	}
}

func wantValue(t *testing.T, s kvstore.Store, key, want string) {
	t.Helper()
	got, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if got != want {
		t.Fatalf("Get(%q) = %q, want %q", key, got, want)
	}
}

func wantNotFound(t *testing.T, s kvstore.Store, key string) {
	t.Helper()
	got, err := s.Get(context.Background(), key)
	if !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, got, err)
	}
}

func wantList(t *testing.T, s kvstore.Store, want []kvstore.Entry) {
	t.Helper()
	wantListPrefix(t, s, "", want)
}

func wantListPrefix(t *testing.T, s kvstore.Store, prefix string, want []kvstore.Entry) {
	t.Helper()
	got, err := s.List(context.Background(), prefix)
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	if len(got) != len(want) || (len(want) > 0 && !slices.Equal(got, want)) {
		t.Fatalf("List(%q) = %q, want %q", prefix, got, want)
	}
}

func testSetGet(t *testing.T, s kvstore.Store) {
	set(t, s, "services/worker/0", "10.0.0.5:8080")
	set(t, s, "config/lease", "30s")
	wantValue(t, s, "services/worker/0", "10.0.0.5:8080")
	wantValue(t, s, "config/lease", "30s")
	// The empty value is a value, not an absence.
	set(t, s, "empty", "")
	wantValue(t, s, "empty", "")
}

func testGetMissing(t *testing.T, s kvstore.Store) {
	wantNotFound(t, s, "nope")
	set(t, s, "services/a", "x")
	wantNotFound(t, s, "services")    // a prefix of a key is not a key
	wantNotFound(t, s, "services/a/") // nor is a longer one
	wantNotFound(t, s, "Services/a")  // keys are case-sensitive
}

func testOverwrite(t *testing.T, s kvstore.Store) {
	set(t, s, "k", "a much longer first value")
	set(t, s, "k", "v2")
	wantValue(t, s, "k", "v2")
	set(t, s, "k", "")
	wantValue(t, s, "k", "")
	wantList(t, s, []kvstore.Entry{{Key: "k", Value: ""}})
}

func testDelete(t *testing.T, s kvstore.Store) {
	ctx := context.Background()
	set(t, s, "a", "1")
	set(t, s, "b", "2")
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, s, "a")
	wantValue(t, s, "b", "2")
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatalf("second Delete = %v, want nil", err)
	}
	if err := s.Delete(ctx, "never"); err != nil {
		t.Fatalf("Delete of a missing key = %v, want nil", err)
	}
	wantList(t, s, []kvstore.Entry{{Key: "b", Value: "2"}})
	set(t, s, "a", "again")
	wantValue(t, s, "a", "again")
}

func testList(t *testing.T, s kvstore.Store) {
	wantList(t, s, nil)
	// Inserted out of order; sorted by byte order ("B" < "a", "a" < "a/b" < "ab").
	for _, e := range []kvstore.Entry{
		{Key: "services/worker/1", Value: "10.0.0.6:8080"},
		{Key: "ab", Value: "3"},
		{Key: "a", Value: "1"},
		{Key: "B", Value: "upper"},
		{Key: "a/b", Value: "2"},
		{Key: "services/worker/0", Value: "10.0.0.5:8080"},
		{Key: "gone", Value: "deleted below"},
	} {
		set(t, s, e.Key, e.Value)
	}
	set(t, s, "a", "1 overwritten")
	if err := s.Delete(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
	wantList(t, s, []kvstore.Entry{
		{Key: "B", Value: "upper"},
		{Key: "a", Value: "1 overwritten"},
		{Key: "a/b", Value: "2"},
		{Key: "ab", Value: "3"},
		{Key: "services/worker/0", Value: "10.0.0.5:8080"},
		{Key: "services/worker/1", Value: "10.0.0.6:8080"},
	})
}

// List with a prefix returns the entries whose key starts with it, byte for byte: not path segments.
func testListPrefix(t *testing.T, s kvstore.Store) {
	for _, k := range []string{
		"services/worker/1", "services/worker/0", "services/workers", "services/master", "services",
		"service", "servicesX", "Services/worker/2", "config/x", "unicode/日本語", "unicode/日", "unicode/月",
	} {
		set(t, s, k, "value of "+k)
	}
	e := func(keys ...string) []kvstore.Entry {
		var entries []kvstore.Entry
		for _, k := range keys {
			entries = append(entries, kvstore.Entry{Key: k, Value: "value of " + k})
		}
		return entries
	}
	wantListPrefix(t, s, "services/", e("services/master", "services/worker/0", "services/worker/1", "services/workers"))
	wantListPrefix(t, s, "services/worker", e("services/worker/0", "services/worker/1", "services/workers"))
	wantListPrefix(t, s, "services/worker/", e("services/worker/0", "services/worker/1"))
	wantListPrefix(t, s, "service", e("service", "services", "services/master", "services/worker/0",
		"services/worker/1", "services/workers", "servicesX"))
	wantListPrefix(t, s, "services/worker/0", e("services/worker/0")) // a key is a prefix of itself
	wantListPrefix(t, s, "services/worker/0/", nil)
	wantListPrefix(t, s, "S", e("Services/worker/2")) // case-sensitive
	wantListPrefix(t, s, "unicode/日", e("unicode/日", "unicode/日本語"))
	wantListPrefix(t, s, "nope", nil)
	wantListPrefix(t, s, "", e("Services/worker/2", "config/x", "service", "services", "services/master",
		"services/worker/0", "services/worker/1", "services/workers", "servicesX",
		"unicode/日", "unicode/日本語", "unicode/月"))
	if err := s.Delete(context.Background(), "services/worker/1"); err != nil {
		t.Fatal(err)
	}
	wantListPrefix(t, s, "services/worker/", e("services/worker/0"))
}

func testListIsACopy(t *testing.T, s kvstore.Store) {
	set(t, s, "a", "1")
	got, err := s.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	got[0].Value = "changed by the caller"
	wantValue(t, s, "a", "1")
	wantList(t, s, []kvstore.Entry{{Key: "a", Value: "1"}})
}

func testValues(t *testing.T, s kvstore.Store) {
	values := []string{
		"with spaces  and\ttabs",
		"host:port:and:more::colons",
		"line one\nline two\r\nline three\n",
		"unicode: héllo wörld, 日本語, emoji 🖼️, rtl עברית",
		`quotes " ' and backslashes \ \\ \n`,
		`{"json": ["inside", 1]}`,
		"=;,&?#%00 <html>",
		" leading and trailing spaces ",
		"\x00\x01\x1f control \x7f",
		strings.Repeat("long value ", 10000),
	}
	for i, v := range values {
		set(t, s, fmt.Sprintf("v/%d", i), v)
	}
	// Keys of the kind the kv service uses, with the same awkward characters.
	keys := []string{"with space", "host:port", "unicode/日本語", "dots.and-dashes_and/slashes"}
	for _, k := range keys {
		set(t, s, k, "value of "+k)
	}
	for i, v := range values {
		wantValue(t, s, fmt.Sprintf("v/%d", i), v)
	}
	for _, k := range keys {
		wantValue(t, s, k, "value of "+k)
	}
	list, err := s.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, e := range list {
		var i int
		if _, err := fmt.Sscanf(e.Key, "v/%d", &i); err == nil {
			seen++
			if e.Value != values[i] {
				t.Errorf("List entry %q = %q, want %q", e.Key, e.Value, values[i])
			}
		}
	}
	if seen != len(values) || len(list) != len(values)+len(keys) {
		t.Errorf("List has %d entries (%d values), want %d (%d values)", len(list), seen, len(values)+len(keys), len(values))
	}
}

// testPing: Ping answers while the engine is up, and a cancelled call is not an outage.
func testPing(t *testing.T, s kvstore.Store) { enginetest.CheckPing(t, s.Ping) }

func testCancelledContext(t *testing.T, s kvstore.Store) {
	set(t, s, "k", "old")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Set(ctx, "k", "new", 0); err == nil {
		t.Error("Set with a cancelled context succeeded")
	}
	if err := s.Set(ctx, "other", "new", 0); err == nil {
		t.Error("Set of a new key with a cancelled context succeeded")
	}
	if err := s.Delete(ctx, "k"); err == nil {
		t.Error("Delete with a cancelled context succeeded")
	}
	wantValue(t, s, "k", "old")
	wantNotFound(t, s, "other")
}

func testConcurrentSets(t *testing.T, s kvstore.Store) {
	const goroutines, perGoroutine = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*perGoroutine)
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				key := fmt.Sprintf("g%02d/k%02d", g, i)
				if err := s.Set(context.Background(), key, "value "+key, 0); err != nil {
					errs <- fmt.Errorf("Set(%q): %w", key, err)
				}
				// Readers run alongside the writers, and see their own writes.
				if _, err := s.List(context.Background(), ""); err != nil {
					errs <- fmt.Errorf("list: %w", err)
				}
				prefix := fmt.Sprintf("g%02d/", g)
				if own, err := s.List(context.Background(), prefix); err != nil {
					errs <- fmt.Errorf("List(%q): %w", prefix, err)
				} else if len(own) != i+1 {
					errs <- fmt.Errorf("List(%q) after %d Sets = %q", prefix, i+1, own)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var want []kvstore.Entry
	for g := range goroutines {
		for i := range perGoroutine {
			key := fmt.Sprintf("g%02d/k%02d", g, i)
			want = append(want, kvstore.Entry{Key: key, Value: "value " + key})
			wantValue(t, s, key, "value "+key)
		}
	}
	wantList(t, s, want)
}

// An entry set with a ttl is there until ttl has passed, and gone from that instant on.
func testTTLExpiry(t *testing.T, s kvstore.Store, c *Clock) {
	setTTL(t, s, "masterAddress", "127.0.0.1:3003", 10*time.Second)
	set(t, s, "config", "permanent")
	wantValue(t, s, "masterAddress", "127.0.0.1:3003")
	c.Advance(10*time.Second - time.Nanosecond)
	wantValue(t, s, "masterAddress", "127.0.0.1:3003")
	wantList(t, s, []kvstore.Entry{{Key: "config", Value: "permanent"}, {Key: "masterAddress", Value: "127.0.0.1:3003"}})
	c.Advance(time.Nanosecond)
	wantNotFound(t, s, "masterAddress")
	wantList(t, s, []kvstore.Entry{{Key: "config", Value: "permanent"}})
	// Expiry is not undone by time passing or by writes to other keys.
	c.Advance(time.Hour)
	set(t, s, "other", "x")
	wantNotFound(t, s, "masterAddress")
	wantValue(t, s, "config", "permanent")
}

// Setting a key again with a ttl renews it from the time of that Set, also with the same value.
func testTTLRenewal(t *testing.T, s kvstore.Store, c *Clock) {
	setTTL(t, s, "k", "v", 10*time.Second)
	c.Advance(8 * time.Second)
	setTTL(t, s, "k", "v", 10*time.Second) // renewed: now expires at 18s
	c.Advance(8 * time.Second)             // 16s: past the first expiry
	wantValue(t, s, "k", "v")
	setTTL(t, s, "k", "v2", 3*time.Second) // a shorter ttl replaces the longer one: expires at 19s
	c.Advance(2 * time.Second)
	wantValue(t, s, "k", "v2")
	c.Advance(time.Second)
	wantNotFound(t, s, "k")
	// An expired key set again lives again.
	setTTL(t, s, "k", "v3", time.Second)
	wantValue(t, s, "k", "v3")
	// A permanent key set with a ttl starts to expire.
	set(t, s, "p", "x")
	setTTL(t, s, "p", "x", time.Second)
	c.Advance(time.Second)
	wantNotFound(t, s, "p")
	wantNotFound(t, s, "k")
}

// Any change of ttl or value replaces the expiry: a shorter ttl, also with the same value, cuts the
// entry's life short, and a longer one extends it.
func testTTLReplaced(t *testing.T, s kvstore.Store, c *Clock) {
	setTTL(t, s, "same", "v", time.Hour)
	setTTL(t, s, "same", "v", 2*time.Second)
	setTTL(t, s, "changed", "v", time.Hour)
	setTTL(t, s, "changed", "v2", 2*time.Second)
	setTTL(t, s, "longer", "v", 2*time.Second)
	setTTL(t, s, "longer", "v", time.Hour)
	c.Advance(2*time.Second - time.Nanosecond)
	wantValue(t, s, "changed", "v2")
	c.Advance(time.Nanosecond)
	wantNotFound(t, s, "same")
	wantNotFound(t, s, "changed")
	wantValue(t, s, "longer", "v")
	c.Advance(time.Hour - 2*time.Second)
	wantNotFound(t, s, "longer")
}

// A Set without a ttl (zero or negative) makes the entry permanent again.
func testTTLCleared(t *testing.T, s kvstore.Store, c *Clock) {
	setTTL(t, s, "zero", "v", 10*time.Second)
	set(t, s, "zero", "v") // same value, no ttl
	setTTL(t, s, "negative", "v", 10*time.Second)
	setTTL(t, s, "negative", "w", -time.Second)
	setTTL(t, s, "never", "v", -time.Nanosecond)
	c.Advance(24 * time.Hour)
	wantValue(t, s, "zero", "v")
	wantValue(t, s, "negative", "w")
	wantValue(t, s, "never", "v")
	wantList(t, s, []kvstore.Entry{{Key: "negative", Value: "w"}, {Key: "never", Value: "v"}, {Key: "zero", Value: "v"}})
}

func testTTLListOmitsExpired(t *testing.T, s kvstore.Store, c *Clock) {
	setTTL(t, s, "a", "1", 3*time.Second)
	setTTL(t, s, "b", "2", time.Second)
	set(t, s, "c", "3")
	setTTL(t, s, "d", "4", 2*time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "a", Value: "1"}, {Key: "b", Value: "2"}, {Key: "c", Value: "3"}, {Key: "d", Value: "4"}})
	wantListPrefix(t, s, "b", []kvstore.Entry{{Key: "b", Value: "2"}})
	c.Advance(time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "a", Value: "1"}, {Key: "c", Value: "3"}, {Key: "d", Value: "4"}})
	wantListPrefix(t, s, "b", nil)
	c.Advance(time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "a", Value: "1"}, {Key: "c", Value: "3"}})
	c.Advance(time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "c", Value: "3"}})
	if err := s.Delete(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	wantList(t, s, nil)
}

func testTTLDeleteExpired(t *testing.T, s kvstore.Store, c *Clock) {
	ctx := context.Background()
	setTTL(t, s, "k", "v", time.Second)
	setTTL(t, s, "live", "v", time.Minute)
	c.Advance(2 * time.Second)
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete of an expired key = %v, want nil", err)
	}
	wantNotFound(t, s, "k")
	// Deleting a key with a ttl before it expires removes it at once.
	if err := s.Delete(ctx, "live"); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, s, "live")
	set(t, s, "k", "again")
	c.Advance(time.Hour)
	wantValue(t, s, "k", "again")
	wantList(t, s, []kvstore.Entry{{Key: "k", Value: "again"}})
}

func testTTLCancelledContext(t *testing.T, s kvstore.Store, c *Clock) {
	setTTL(t, s, "k", "v", 10*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A renewal that fails renews nothing.
	c.Advance(5 * time.Second)
	if err := s.Set(ctx, "k", "v", 10*time.Second); err == nil {
		t.Error("Set with a cancelled context succeeded")
	}
	c.Advance(5 * time.Second)
	wantNotFound(t, s, "k")
}

// SetIfAbsent stores only into an absent key and always answers what the key holds afterwards.
func testSetIfAbsent(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	got, err := s.SetIfAbsent(ctx, "secret", "first")
	if err != nil || got != "first" {
		t.Fatalf("SetIfAbsent on an absent key = %q, %v; want \"first\"", got, err)
	}
	got, err = s.SetIfAbsent(ctx, "secret", "second")
	if err != nil || got != "first" {
		t.Fatalf("SetIfAbsent on a held key = %q, %v; want the stored \"first\"", got, err)
	}
	wantValue(t, s, "secret", "first")
	set(t, s, "secret", "replaced")
	if got, _ := s.SetIfAbsent(ctx, "secret", "third"); got != "replaced" {
		t.Errorf("SetIfAbsent after Set = %q, want \"replaced\"", got)
	}
	if err := s.Delete(ctx, "secret"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.SetIfAbsent(ctx, "secret", "fourth"); got != "fourth" {
		t.Errorf("SetIfAbsent after Delete = %q, want \"fourth\"", got)
	}
}

// Many concurrent SetIfAbsent calls agree on one winner, and the store holds it.
func testSetIfAbsentConcurrent(t *testing.T, s kvstore.Store) {
	const n = 16
	answers := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { answers[i], errs[i] = s.SetIfAbsent(t.Context(), "k", fmt.Sprintf("v%d", i)) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if answers[i] != answers[0] {
			t.Fatalf("callers disagree: %q and %q", answers[0], answers[i])
		}
	}
	wantValue(t, s, "k", answers[0])
}

// An expired entry counts as absent.
func testSetIfAbsentAfterExpiry(t *testing.T, s kvstore.Store, c *Clock) {
	setTTL(t, s, "k", "old", time.Second)
	if got, _ := s.SetIfAbsent(t.Context(), "k", "new"); got != "old" {
		t.Fatalf("SetIfAbsent on a live entry = %q, want \"old\"", got)
	}
	c.Advance(time.Second)
	if got, _ := s.SetIfAbsent(t.Context(), "k", "new"); got != "new" {
		t.Fatalf("SetIfAbsent on an expired entry = %q, want \"new\"", got)
	}
	c.Advance(time.Hour)
	wantValue(t, s, "k", "new") // stored without expiry
}

// setTTLAt is setTTL that returns when the Set began: the entry may not expire before that time + ttl.
func setTTLAt(t *testing.T, s kvstore.Store, key, value string, ttl time.Duration) time.Time {
	t.Helper()
	began := time.Now()
	setTTL(t, s, key, value, ttl)
	return began
}

// waitExpired waits for key, set with ttl by a Set that began at since, to expire. It fails if the entry
// went before since + ttl, or is still there RealTimeGrace after that.
func waitExpired(t *testing.T, s kvstore.Store, key string, since time.Time, ttl time.Duration) {
	t.Helper()
	due := since.Add(ttl)
	deadline := due.Add(RealTimeGrace)
	time.Sleep(time.Until(due) - 100*time.Millisecond) // nothing to see before, bar an early expiry
	for {
		_, err := s.Get(context.Background(), key)
		seen := time.Now()
		if errors.Is(err, kvstore.ErrNotFound) {
			if seen.Before(due) {
				t.Fatalf("%q (ttl %v) expired %v after its Set began", key, ttl, seen.Sub(since))
			}
			return
		}
		if err != nil {
			t.Fatalf("Get(%q): %v", key, err)
		}
		if seen.After(deadline) {
			t.Fatalf("%q (ttl %v) still there %v after its Set began", key, ttl, seen.Sub(since))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sleepUntil sleeps until the real time is at.
func sleepUntil(at time.Time) { time.Sleep(time.Until(at)) }

// waitAnExpiry sets a key with a short ttl and waits for it to expire: when it has, so would have any
// entry that was given the same ttl before it.
func waitAnExpiry(t *testing.T, s kvstore.Store) {
	t.Helper()
	const ttl = 2 * time.Second
	since := setTTLAt(t, s, "clock", "tick", ttl)
	waitExpired(t, s, "clock", since, ttl)
	// The store expires entries due together one by one (etcd: a revoke each); give the others a moment.
	time.Sleep(time.Second)
}

func realTTLExpiry(t *testing.T, s kvstore.Store) {
	const ttl = 2 * time.Second
	since := setTTLAt(t, s, "masterAddress", "127.0.0.1:3003", ttl)
	set(t, s, "config", "permanent")
	wantValue(t, s, "masterAddress", "127.0.0.1:3003")
	wantList(t, s, []kvstore.Entry{{Key: "config", Value: "permanent"}, {Key: "masterAddress", Value: "127.0.0.1:3003"}})
	waitExpired(t, s, "masterAddress", since, ttl)
	wantList(t, s, []kvstore.Entry{{Key: "config", Value: "permanent"}})
	set(t, s, "other", "x")
	wantNotFound(t, s, "masterAddress")
	wantValue(t, s, "config", "permanent")
}

// The same value with the same ttl again renews the entry from that Set.
func realTTLRenewal(t *testing.T, s kvstore.Store) {
	const ttl = 3 * time.Second
	since := setTTLAt(t, s, "k", "v", ttl)
	sleepUntil(since.Add(2 * time.Second))
	renewed := setTTLAt(t, s, "k", "v", ttl)
	// A second past the first expiry, a second before the renewed one.
	sleepUntil(since.Add(ttl + time.Second))
	wantValue(t, s, "k", "v")
	// And the renewal lasts ttl, not longer.
	waitExpired(t, s, "k", renewed, ttl)
}

func realTTLReplaced(t *testing.T, s kvstore.Store) {
	const short, long = 2 * time.Second, time.Minute
	setTTL(t, s, "same", "v", long)
	setTTL(t, s, "changed", "v", long)
	setTTL(t, s, "longer", "v", short)
	set(t, s, "permanent", "x")
	since := time.Now()
	setTTL(t, s, "same", "v", short)      // same value, shorter ttl
	setTTL(t, s, "changed", "v2", short)  // another value, shorter ttl
	setTTL(t, s, "permanent", "x", short) // a permanent key starts to expire
	setTTL(t, s, "longer", "v", long)     // same value, longer ttl
	wantValue(t, s, "changed", "v2")
	for _, k := range []string{"same", "changed", "permanent"} {
		waitExpired(t, s, k, since, short)
	}
	wantValue(t, s, "longer", "v")
	// An expired key set again lives again.
	setTTL(t, s, "same", "v3", short)
	wantValue(t, s, "same", "v3")
}

func realTTLCleared(t *testing.T, s kvstore.Store) {
	const ttl = 2 * time.Second
	setTTL(t, s, "zero", "v", ttl)
	set(t, s, "zero", "v") // same value, no ttl
	setTTL(t, s, "negative", "v", ttl)
	setTTL(t, s, "negative", "w", -time.Second)
	setTTL(t, s, "never", "v", -time.Nanosecond)
	waitAnExpiry(t, s)
	wantValue(t, s, "zero", "v")
	wantValue(t, s, "negative", "w")
	wantValue(t, s, "never", "v")
	wantList(t, s, []kvstore.Entry{{Key: "negative", Value: "w"}, {Key: "never", Value: "v"}, {Key: "zero", Value: "v"}})
}

// Expiries three seconds apart, so that an entry lingering after its expiry does not reach the next.
func realTTLListOmitsExpired(t *testing.T, s kvstore.Store) {
	sinceA := setTTLAt(t, s, "a", "1", 8*time.Second)
	sinceB := setTTLAt(t, s, "b", "2", 2*time.Second)
	set(t, s, "c", "3")
	sinceD := setTTLAt(t, s, "d", "4", 5*time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "a", Value: "1"}, {Key: "b", Value: "2"}, {Key: "c", Value: "3"}, {Key: "d", Value: "4"}})
	wantListPrefix(t, s, "b", []kvstore.Entry{{Key: "b", Value: "2"}})
	waitExpired(t, s, "b", sinceB, 2*time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "a", Value: "1"}, {Key: "c", Value: "3"}, {Key: "d", Value: "4"}})
	wantListPrefix(t, s, "b", nil)
	waitExpired(t, s, "d", sinceD, 5*time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "a", Value: "1"}, {Key: "c", Value: "3"}})
	waitExpired(t, s, "a", sinceA, 8*time.Second)
	wantList(t, s, []kvstore.Entry{{Key: "c", Value: "3"}})
	if err := s.Delete(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	wantList(t, s, nil)
}

func realTTLDeleteExpired(t *testing.T, s kvstore.Store) {
	ctx := context.Background()
	const ttl = 2 * time.Second
	since := setTTLAt(t, s, "k", "v", ttl)
	setTTL(t, s, "live", "v", time.Minute)
	waitExpired(t, s, "k", since, ttl)
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatalf("Delete of an expired key = %v, want nil", err)
	}
	wantNotFound(t, s, "k")
	// Deleting a key with a ttl before it expires removes it at once.
	if err := s.Delete(ctx, "live"); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, s, "live")
	set(t, s, "k", "again")
	waitAnExpiry(t, s)
	wantValue(t, s, "k", "again")
	wantList(t, s, []kvstore.Entry{{Key: "k", Value: "again"}})
}

func realTTLCancelledContext(t *testing.T, s kvstore.Store) {
	const ttl = 2 * time.Second
	since := setTTLAt(t, s, "k", "v", ttl)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A renewal that fails renews nothing; had this one renewed, the entry would outlive waitExpired.
	if err := s.Set(ctx, "k", "v", time.Minute); err == nil {
		t.Error("Set with a cancelled context succeeded")
	}
	waitExpired(t, s, "k", since, ttl)
}

func realSetIfAbsentAfterExpiry(t *testing.T, s kvstore.Store) {
	const ttl = 2 * time.Second
	since := setTTLAt(t, s, "k", "old", ttl)
	if got, _ := s.SetIfAbsent(t.Context(), "k", "new"); got != "old" {
		t.Fatalf("SetIfAbsent on a live entry = %q, want \"old\"", got)
	}
	waitExpired(t, s, "k", since, ttl)
	if got, _ := s.SetIfAbsent(t.Context(), "k", "new"); got != "new" {
		t.Fatalf("SetIfAbsent on an expired entry = %q, want \"new\"", got)
	}
	waitAnExpiry(t, s)
	wantValue(t, s, "k", "new") // stored without expiry
}
