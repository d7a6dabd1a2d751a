package pgstore

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/taskstore/taskstoretest"
)

// testOpenReleasedDatabase loads the dump of a database the previous release wrote (schema version 2, a
// task in every state; see testdata/README.md) into a fresh database and opens it: the migrations run,
// and taskstoretest.CheckReleased finds every task as that release read it and the work going on from
// where it was.
func testOpenReleasedDatabase(t *testing.T, pg *enginetest.Postgres) {
	ctx := t.Context()
	dsn := pg.NewDatabase(t)
	dump, err := os.ReadFile(filepath.Join("testdata", "release-schema2.sql"))
	if err != nil {
		t.Fatal(err)
	}
	// A connection of its own: the dump empties the search path of the session that runs it.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	// Without arguments pgx sends the simple protocol, which runs the whole file.
	if _, err := conn.Exec(ctx, string(dump)); err != nil {
		conn.Close(ctx)
		t.Fatalf("load the released dump: %v", err)
	}
	var version int
	if err := conn.QueryRow(ctx, `SELECT max(version) FROM public.schema_migrations`).Scan(&version); err != nil || version != 2 {
		conn.Close(ctx)
		t.Fatalf("the released dump is at schema version %d (%v), want 2", version, err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}

	released := taskstoretest.ReadReleased(t, filepath.Join("testdata", "release-schema2.json"))
	now, advance := released.Clock()
	s := openStore(t, dsn, Options{Now: now})
	steps, err := readMigrations(migrationFiles)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&version); err != nil || version != len(steps) {
		t.Fatalf("schema version after Open = %d (%v), want %d", version, err, len(steps))
	}
	taskstoretest.CheckReleased(t, s, released, advance)
}
