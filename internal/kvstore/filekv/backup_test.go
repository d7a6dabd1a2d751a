package filekv

import (
	"path/filepath"
	"testing"
	"time"
)

// TestBackup: the copy keeps the entries without a TTL and drops the registrations.
func TestBackup(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "kv.json")
	s := openStore(t, path)
	defer s.Close()
	if err := s.Set(ctx, "publicIDSecret", "s3cret", 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "databaseAddress/127.0.0.1:3001", "127.0.0.1:3001", time.Minute); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "kv.json")
	if n, err := Backup(path, dst); err != nil || n != 1 {
		t.Fatalf("Backup = %d, %v; want 1 entry", n, err)
	}
	c := openStore(t, dst)
	defer c.Close()
	if v, err := c.Get(ctx, "publicIDSecret"); err != nil || v != "s3cret" {
		t.Errorf("Get(publicIDSecret) in the copy = %q, %v", v, err)
	}
	if entries, err := c.List(ctx, "databaseAddress"); err != nil || len(entries) != 0 {
		t.Errorf("the copy lists registrations %v (%v)", entries, err)
	}
	if _, err := Backup(path, dst); err == nil {
		t.Error("Backup over an existing file succeeded")
	}
	if _, err := Backup(filepath.Join(t.TempDir(), "missing.json"), filepath.Join(t.TempDir(), "x.json")); err == nil {
		t.Error("Backup of a missing file succeeded")
	}
}
