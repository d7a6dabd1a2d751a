package filekv

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/kvstore/kvstoretest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	return openStoreAt(t, path, nil)
}

// openStoreAt opens the store at path with the clock now (nil: the real time).
func openStoreAt(t *testing.T, path string, now func() time.Time) *Store {
	t.Helper()
	s, err := Open(path, Options{Now: now})
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

func TestContract(t *testing.T) {
	kvstoretest.Run(t, func(t *testing.T, now func() time.Time) kvstore.Store {
		return openStoreAt(t, filepath.Join(t.TempDir(), "kv.json"), now)
	})
}

// The real-time suite too, on the real clock: it must hold for a store that expires entries exactly.
func TestContractRealTime(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for real expiries")
	}
	kvstoretest.RunRealTime(t, func(t *testing.T) kvstore.Store {
		return openStoreAt(t, filepath.Join(t.TempDir(), "kv.json"), nil)
	})
}

func TestReopenKeepsEntries(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.json")
	s := openStore(t, path)
	values := map[string]string{
		"services/worker/0": "10.0.0.5:8080",
		"config/motd":       "line 1\nline 2: ünïcode 🖼️ \"quoted\"",
		"deleted":           "x",
		"overwritten":       "old",
		"empty":             "",
	}
	for k, v := range values {
		if err := s.Set(ctx, k, v, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set(ctx, "overwritten", "new", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	// No Close: the entries must already be on disk when Set returns, as after a kill -9.
	before, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}

	r := openStore(t, path)
	after, err := r.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 4 || len(before) != 4 {
		t.Fatalf("reopened %d entries, had %d, want 4", len(after), len(before))
	}
	for i := range before {
		if before[i] != after[i] {
			t.Errorf("entry %d: %q before reopening, %q after", i, before[i], after[i])
		}
	}
	if _, err := r.Get(ctx, "deleted"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Errorf("deleted key came back: %v", err)
	}
	if v, err := r.Get(ctx, "overwritten"); err != nil || v != "new" {
		t.Errorf("overwritten = %q, %v; want %q", v, err, "new")
	}
	for _, st := range []*Store{s, r} {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestMissingFileIsEmpty(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "kv.json"))
	defer s.Close()
	list, err := s.List(context.Background(), "")
	if err != nil || len(list) != 0 {
		t.Fatalf("List = %v, %v; want empty", list, err)
	}
}

func TestCorruptFileIsAnError(t *testing.T) {
	for name, content := range map[string]string{
		"empty":           "",
		"truncated":       `{"version":1,"entries":{"a":"b"`,
		"garbage":         "\x00\x00\x00\x00",
		"null":            "null",
		"no entries":      `{"version":1}`,
		"null entries":    `{"version":1,"entries":null}`,
		"no version":      `{"entries":{"a":"b"}}`,
		"future version":  `{"version":3,"entries":{}}`,
		"version zero":    `{"version":0,"entries":{}}`,
		"version string":  `{"version":"2","entries":{}}`,
		"wrong type":      `{"version":1,"entries":{"a":1}}`,
		"array":           `[]`,
		"unknown field":   `{"version":1,"entries":{},"other":true}`,
		"trailing data":   `{"version":1,"entries":{}}}`,
		"two snapshots":   `{"version":1,"entries":{}} {"version":1,"entries":{}}`,
		"plain text file": "a=b\n",
		// Version 2: each entry an object with a value and, for an entry with a TTL, its expiry.
		"v2 no entries":        `{"version":2}`,
		"v2 null entries":      `{"version":2,"entries":null}`,
		"v2 entries of v1":     `{"version":2,"entries":{"a":"b"}}`,
		"v1 entries of v2":     `{"version":1,"entries":{"a":{"value":"b"}}}`,
		"v2 null entry":        `{"version":2,"entries":{"a":null}}`,
		"v2 no value":          `{"version":2,"entries":{"a":{}}}`,
		"v2 null value":        `{"version":2,"entries":{"a":{"value":null}}}`,
		"v2 wrong value type":  `{"version":2,"entries":{"a":{"value":1}}}`,
		"v2 bad expiry":        `{"version":2,"entries":{"a":{"value":"b","expires":"tomorrow"}}}`,
		"v2 numeric expiry":    `{"version":2,"entries":{"a":{"value":"b","expires":1700000000}}}`,
		"v2 unknown entry key": `{"version":2,"entries":{"a":{"value":"b","ttl":"10s"}}}`,
		"v2 unknown field":     `{"version":2,"entries":{},"other":true}`,
		"v2 trailing data":     `{"version":2,"entries":{}}x`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kv.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path, Options{})
			if err == nil {
				s.Close()
				t.Fatalf("Open of a corrupt file (%q) succeeded", content)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "corrupt") {
				t.Errorf("error %q does not say which file is corrupt", err)
			}
			// The damaged file is left for an operator to inspect, not replaced.
			if got, _ := os.ReadFile(path); string(got) != content {
				t.Errorf("Open changed the corrupt file to %q", got)
			}
		})
	}
}

func TestValidSnapshotLoads(t *testing.T) {
	for name, content := range map[string]string{
		// Hand-written, with whitespace and escapes: what an operator restoring a backup might write.
		"version 1": "{\n  \"version\": 1,\n  \"entries\": {\"a\": \"x\\ny\", \"b\": \"\\u00e9\"}\n}\n",
		"version 2": "{\n  \"version\": 2,\n  \"entries\": {\"a\": {\"value\": \"x\\ny\"},\n" +
			"  \"b\": {\"expires\": \"2999-01-02T03:04:05+01:00\", \"value\": \"\\u00e9\"}}\n}\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kv.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			s := openStore(t, path)
			defer s.Close()
			list, err := s.List(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			want := []kvstore.Entry{{Key: "a", Value: "x\ny"}, {Key: "b", Value: "é"}}
			if len(list) != 2 || list[0] != want[0] || list[1] != want[1] {
				t.Fatalf("List = %q, want %q", list, want)
			}
		})
	}
}

// readSnapshot decodes the snapshot file at path as version 2.
func readSnapshot(t *testing.T, path string) snapshot {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var snap snapshot
	if err := json.Unmarshal(data, &snap); err != nil {
		t.Fatalf("snapshot %s: %v", data, err)
	}
	return snap
}

// A version 1 snapshot loads without expiry, and the next write rewrites it as version 2.
func TestUpgradesVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"entries":{"config":"x","databaseAddress":"127.0.0.1:3001"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	clock := kvstoretest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	s := openStoreAt(t, path, clock.Now)
	defer s.Close()
	clock.Advance(100 * 365 * 24 * time.Hour) // version 1 entries never expire
	if v, err := s.Get(ctx, "databaseAddress"); err != nil || v != "127.0.0.1:3001" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := s.Set(ctx, "databaseAddress", "127.0.0.1:4001", 15*time.Second); err != nil {
		t.Fatal(err)
	}
	snap := readSnapshot(t, path)
	if snap.Version != 2 || len(snap.Entries) != 2 {
		t.Fatalf("rewritten snapshot: version %d, %d entries; want version 2, 2 entries", snap.Version, len(snap.Entries))
	}
	if e := snap.Entries["config"]; e == nil || e.Value == nil || *e.Value != "x" || !e.Expires.IsZero() {
		t.Errorf("config entry rewritten as %+v", e)
	}
	want := clock.Now().Add(15 * time.Second)
	if e := snap.Entries["databaseAddress"]; e == nil || e.Value == nil || *e.Value != "127.0.0.1:4001" || !e.Expires.Equal(want) {
		t.Errorf("databaseAddress entry written as %+v, want expiry %v", e, want)
	}
}

// Expiry times are absolute: a store reopened later expires an entry when it was due, not ttl after the
// restart, and one reopened after the expiry does not bring the entry back.
func TestExpirySurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.json")
	clock := kvstoretest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600)))
	s := openStoreAt(t, path, clock.Now)
	if err := s.Set(ctx, "storageAddress", "127.0.0.1:3002", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "config", "permanent", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The file holds the absolute expiry.
	snap := readSnapshot(t, path)
	if e := snap.Entries["storageAddress"]; e == nil || !e.Expires.Equal(clock.Now().Add(10*time.Second)) {
		t.Fatalf("storageAddress written as %+v", e)
	}
	if e := snap.Entries["config"]; e == nil || !e.Expires.IsZero() {
		t.Fatalf("config written as %+v", e)
	}

	clock.Advance(9 * time.Second)
	r := openStoreAt(t, path, clock.Now)
	if v, err := r.Get(ctx, "storageAddress"); err != nil || v != "127.0.0.1:3002" {
		t.Fatalf("after restart Get = %q, %v", v, err)
	}
	clock.Advance(time.Second)
	if _, err := r.Get(ctx, "storageAddress"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("entry outlived its expiry across a restart: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	r = openStoreAt(t, path, clock.Now)
	defer r.Close()
	list, err := r.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0] != (kvstore.Entry{Key: "config", Value: "permanent"}) {
		t.Fatalf("List after expiry and restart = %q", list)
	}
}

// Expired entries are dropped from the snapshot by the next write, so renewals of ever new keys do not
// make it grow; a write that only drops expired entries (a Delete of one) is written too.
func TestWritesPurgeExpired(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.json")
	clock := kvstoretest.NewClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	s := openStoreAt(t, path, clock.Now)
	defer s.Close()
	for _, k := range []string{"a", "b", "c"} {
		if err := s.Set(ctx, k, "v", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set(ctx, "keep", "v", 0); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	// Nothing was written since they expired: still in the file.
	if n := len(readSnapshot(t, path).Entries); n != 4 {
		t.Fatalf("%d entries in the file before a write, want 4", n)
	}
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	snap := readSnapshot(t, path)
	if len(snap.Entries) != 1 || snap.Entries["keep"] == nil {
		t.Fatalf("after a write the file holds %d entries, want only keep", len(snap.Entries))
	}
	// A Set that changes nothing, with nothing expired, writes nothing.
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "keep", "v", 0); err != nil {
		t.Fatal(err)
	}
	// A rewrite renames a new file over the snapshot.
	if after, err := os.Stat(path); err != nil || !os.SameFile(info, after) {
		t.Errorf("a Set that changed nothing rewrote the snapshot")
	}
}

func TestOpenNeedsDirectory(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing", "kv.json"), Options{}); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
	if _, err := Open("", Options{}); err == nil {
		t.Fatal("Open of an empty path succeeded")
	}
}

func TestOpenRemovesStaleTempFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kv.json")
	stale := filepath.Join(dir, ".kv.json.tmp-12345")
	other := filepath.Join(dir, ".other.json.tmp-1") // another file's: not ours to remove
	for _, p := range []string{stale, other} {
		if err := os.WriteFile(p, []byte(`{"version":1,"entries":{"half`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := openStore(t, path)
	defer s.Close()
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temporary file survived Open: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("Open removed another file's temporary file: %v", err)
	}
}

func TestRefusesWhatJSONCannotCarry(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.json")
	s := openStore(t, path)
	defer s.Close()
	for _, tc := range []struct{ key, value string }{
		{"", "empty key"},
		{"bad\xffkey", "v"},
		{"k", "bad\xffvalue"},
	} {
		if err := s.Set(ctx, tc.key, tc.value, 0); err == nil {
			t.Errorf("Set(%q, %q) succeeded", tc.key, tc.value)
		}
	}
	if list, _ := s.List(ctx, ""); len(list) != 0 {
		t.Errorf("refused entries were stored: %q", list)
	}
}

// A failed snapshot write must leave memory as it was, agreeing with the file.
func TestFailedWriteChangesNothing(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.json")
	s := openStore(t, path)
	defer s.Close()
	if err := s.Set(ctx, "k", "old", 0); err != nil {
		t.Fatal(err)
	}
	// A non-empty directory where the snapshot goes: the rename fails, even for root.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "k", "new", 0); err == nil {
		t.Fatal("Set succeeded although the snapshot could not be written")
	}
	if err := s.Set(ctx, "k", "old", time.Minute); err == nil {
		t.Fatal("Set of a ttl succeeded although the snapshot could not be written")
	}
	if err := s.Set(ctx, "other", "new", 0); err == nil {
		t.Fatal("Set of a new key succeeded although the snapshot could not be written")
	}
	if err := s.Delete(ctx, "k"); err == nil {
		t.Fatal("Delete succeeded although the snapshot could not be written")
	}
	if v, err := s.Get(ctx, "k"); err != nil || v != "old" {
		t.Fatalf("after failed writes Get = %q, %v; want %q", v, err, "old")
	}
	if _, err := s.Get(ctx, "other"); !errors.Is(err, kvstore.ErrNotFound) {
		t.Fatalf("a key whose Set failed is visible: %v", err)
	}
}

func TestClosed(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, filepath.Join(t.TempDir(), "kv.json"))
	if err := s.Set(ctx, "k", "v", 0); err != nil {
		t.Fatal(err)
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
	if _, err := s.Get(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if _, err := s.List(ctx, ""); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close = %v, want ErrClosed", err)
	}
	if err := s.Delete(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Delete after Close = %v, want ErrClosed", err)
	}
}

// TestOutage runs the outage part of the contract on a disk that fills up, and on one remounted
// read-only: writes fail as out of space, or unavailable, until it is fixed, and reads, served from
// memory, go on working.
func TestOutage(t *testing.T) {
	for name, o := range enginetest.DiskOutages(1<<20, func(t *testing.T, dir string) kvstore.Store {
		return openStore(t, filepath.Join(dir, "kv.json"))
	}) {
		t.Run(name, func(t *testing.T) { kvstoretest.RunOutage(t, o) })
	}
}

// A write that fails on a full disk changes nothing, in memory or on disk: a restart finds what was
// there before it.
func TestFullDiskChangesNothing(t *testing.T) {
	ctx := t.Context()
	disk := enginetest.SmallDisk(t, 1<<20)
	path := filepath.Join(disk.Dir(), "kv.json")
	s := openStore(t, path)
	defer s.Close()
	if err := s.Set(ctx, "k", "old", 0); err != nil {
		t.Fatal(err)
	}
	disk.Fill(t)
	if err := s.Set(ctx, "k", "new", 0); !fault.IsNoSpace(err) {
		t.Fatalf("Set on a full disk = %v, want an out-of-space error", err)
	}
	if err := s.Set(ctx, "k", "old", 0); err != nil {
		t.Errorf("a Set that changes nothing writes nothing, so a full disk does not fail it: %v", err)
	}
	if v, err := s.Get(ctx, "k"); err != nil || v != "old" {
		t.Errorf("Get after the failed Set = %q, %v; want %q", v, err, "old")
	}
	if found, _ := filepath.Glob(filepath.Join(disk.Dir(), ".kv.json.tmp-*")); len(found) != 0 {
		t.Errorf("the failed write left temporary files: %v", found)
	}
	r := openStore(t, path) // a restart, with the disk still full: reads work
	defer r.Close()
	if v, err := r.Get(ctx, "k"); err != nil || v != "old" {
		t.Errorf("after a restart Get = %q, %v; want %q", v, err, "old")
	}
}

// Ping of a closed store is ErrClosed, a mistake of the caller, not an outage; the contract suite checks
// Ping otherwise.
func TestPingAfterClose(t *testing.T) {
	s := openStore(t, filepath.Join(t.TempDir(), "kv.json"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); !errors.Is(err, ErrClosed) || fault.IsTransient(err) {
		t.Errorf("Ping after Close = %v, want ErrClosed, not transient", err)
	}
}
