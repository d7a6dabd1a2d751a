package sqlitestore

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgmill/imgmill/internal/taskstore/taskstoretest"
)

// TestOpenReleasedDatabase opens a task database written by the previous release (schema version 5, a
// task in every state; see testdata/README.md): the migrations run, and taskstoretest.CheckReleased
// finds every task as that release read it and the work going on from where it was.
func TestOpenReleasedDatabase(t *testing.T) {
	gz, err := os.ReadFile(filepath.Join("testdata", "release-schema5.db.gz"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	db, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tasks.db")
	if err := os.WriteFile(path, db, 0o644); err != nil {
		t.Fatal(err)
	}
	if v := userVersion(t, path); v != 5 {
		t.Fatalf("the released file has user_version %d, want 5", v)
	}
	released := taskstoretest.ReadReleased(t, filepath.Join("testdata", "release-schema5.json"))
	now, advance := released.Clock()
	s, err := Open(t.Context(), path, Options{Now: now})
	if err != nil {
		t.Fatalf("Open of the released database: %v", err)
	}
	defer closeStore(t, s)
	if v := userVersion(t, path); v != len(migrations()) {
		t.Fatalf("user_version after Open = %d, want %d", v, len(migrations()))
	}
	checkIndexes(t, s)
	taskstoretest.CheckReleased(t, s, released, advance)
}
