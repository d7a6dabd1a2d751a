package sqlitestore

import (
	"path/filepath"
	"testing"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// The real fsync follows the WAL when SQLite replaces the file.
func TestWALSyncReopensTheWAL(t *testing.T) {
	s, path := openTemp(t, nil)
	defer closeStore(t, s)
	if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil { // a durable commit: opens the WAL
		t.Fatal(err)
	}
	if s.durable.f == nil {
		t.Fatal("no WAL file held after a durable commit")
	}
	held := s.durable.f
	if filepath.Base(s.durable.path) != filepath.Base(path)+"-wal" {
		t.Fatalf("syncing %s, want the WAL of %s", s.durable.path, path)
	}
	s.durable.f = nil // as if never opened
	held.Close()
	if err := s.durable.sync(); err != nil {
		t.Fatal(err)
	}
	if s.durable.f == nil {
		t.Fatal("WAL not reopened")
	}
}
