package filekv

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/kvstore/kvstoretest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return s
}

func TestContract(t *testing.T) {
	kvstoretest.Run(t, func(t *testing.T) kvstore.Store {
		return openStore(t, filepath.Join(t.TempDir(), "kv.json"))
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
		if err := s.Set(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Set(ctx, "overwritten", "new"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	// No Close: the entries must already be on disk when Set returns, as after a kill -9.
	before, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}

	r := openStore(t, path)
	after, err := r.List(ctx)
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
	list, err := s.List(context.Background())
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
		"future version":  `{"version":2,"entries":{}}`,
		"wrong type":      `{"version":1,"entries":{"a":1}}`,
		"array":           `[]`,
		"unknown field":   `{"version":1,"entries":{},"other":true}`,
		"trailing data":   `{"version":1,"entries":{}}}`,
		"two snapshots":   `{"version":1,"entries":{}} {"version":1,"entries":{}}`,
		"plain text file": "a=b\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kv.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path)
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
	path := filepath.Join(t.TempDir(), "kv.json")
	// Hand-written, with whitespace and escapes: what an operator restoring a backup might write.
	content := "{\n  \"version\": 1,\n  \"entries\": {\"a\": \"x\\ny\", \"b\": \"\\u00e9\"}\n}\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, path)
	defer s.Close()
	list, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []kvstore.Entry{{Key: "a", Value: "x\ny"}, {Key: "b", Value: "é"}}
	if len(list) != 2 || list[0] != want[0] || list[1] != want[1] {
		t.Fatalf("List = %q, want %q", list, want)
	}
}

func TestOpenNeedsDirectory(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing", "kv.json")); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
	if _, err := Open(""); err == nil {
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
		if err := s.Set(ctx, tc.key, tc.value); err == nil {
			t.Errorf("Set(%q, %q) succeeded", tc.key, tc.value)
		}
	}
	if list, _ := s.List(ctx); len(list) != 0 {
		t.Errorf("refused entries were stored: %q", list)
	}
}

// A failed snapshot write must leave memory as it was, agreeing with the file.
func TestFailedWriteChangesNothing(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.json")
	s := openStore(t, path)
	defer s.Close()
	if err := s.Set(ctx, "k", "old"); err != nil {
		t.Fatal(err)
	}
	// A non-empty directory where the snapshot goes: the rename fails, even for root.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(path, "blocker"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "k", "new"); err == nil {
		t.Fatal("Set succeeded although the snapshot could not be written")
	}
	if err := s.Set(ctx, "other", "new"); err == nil {
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
	if err := s.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Set(ctx, "k", "w"); !errors.Is(err, ErrClosed) {
		t.Errorf("Set after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
	if _, err := s.List(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close = %v, want ErrClosed", err)
	}
	if err := s.Delete(ctx, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Delete after Close = %v, want ErrClosed", err)
	}
}
