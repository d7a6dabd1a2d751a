package sqlitestore

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestBackup: a backup of a database in use (its last commits still in the WAL) opens with every task,
// at the schema version of the original, and is never written over an existing file.
func TestBackup(t *testing.T) {
	ctx := t.Context()
	s, path := openTemp(t, nil)
	defer closeStore(t, s)
	fill(t, s, 100)
	claimed, err := s.Claim(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(ctx, claimed.ID, claimed.Token); err != nil {
		t.Fatal(err)
	}
	keyed, _, err := s.CreateOnce(ctx, taskstore.CreateParams{Owner: "key:a"}, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(t.TempDir(), "backup.db")
	if err := Backup(ctx, path, dst); err != nil {
		t.Fatalf("Backup: %v", err)
	}
	if v := userVersion(t, dst); v != len(migrations()) {
		t.Fatalf("the backup has user_version %d, want %d", v, len(migrations()))
	}
	b, err := Open(ctx, dst, Options{})
	if err != nil {
		t.Fatalf("Open of the backup: %v", err)
	}
	defer closeStore(t, b)
	counts, err := b.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts.Finished != 1 || counts.Queued != 100 || counts.Total() != 101 {
		t.Fatalf("the backup counts %+v, want 1 finished and 100 queued", counts)
	}
	if got, err := b.Get(ctx, keyed.ID); err != nil || got.Owner != "key:a" || got.State != wire.NotStarted {
		t.Fatalf("Get(%d) in the backup = %+v, %v", keyed.ID, got, err)
	}
	if again, replayed, err := b.CreateOnce(ctx, taskstore.CreateParams{}, "k", time.Minute); err != nil || !replayed || again.ID != keyed.ID {
		t.Fatalf("the backup forgot the idempotency key: %+v, %v, %v", again, replayed, err)
	}

	if err := Backup(ctx, path, dst); err == nil {
		t.Error("Backup over an existing file succeeded")
	}
	missing := filepath.Join(t.TempDir(), "missing.db")
	if err := Backup(ctx, missing, filepath.Join(t.TempDir(), "x.db")); err == nil {
		t.Error("Backup of a missing database succeeded")
	}
}
