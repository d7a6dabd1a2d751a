package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/taskstoretest"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func openTemp(tb testing.TB, now func() time.Time) (*Store, string) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "tasks.db")
	s, err := Open(context.Background(), path, Options{Now: now})
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	return s, path
}

// TestContract runs the shared suite, each subtest on a database file of its own. It runs in parallel
// with TestBusyIsUnavailable, which mostly waits.
func TestContract(t *testing.T) {
	t.Parallel()
	taskstoretest.Run(t, func(t *testing.T, clock func() time.Time) taskstore.Store {
		s, _ := openTemp(t, clock)
		return s
	})
}

// TestDiskFull runs the outage contract on a disk that fills up: writes fail as out of space, reads go
// on, and once space is freed everything works again with nothing acknowledged lost.
func TestDiskFull(t *testing.T) {
	// Room for the database, its WAL and shared memory, with plenty to spare: the filler takes the rest.
	disk := enginetest.SmallDisk(t, 16<<20)
	taskstoretest.RunOutage(t, taskstoretest.Outage{
		Open: func(t *testing.T, clock func() time.Time) taskstore.Store {
			s, err := Open(t.Context(), filepath.Join(disk.Dir(), "tasks.db"), Options{Now: clock})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return s
		},
		Break:   func(t *testing.T) { disk.Fill(t) },
		Mend:    func(t *testing.T) { disk.Free(t) },
		NoSpace: true,
	})
}

// TestOpenOnFullDisk: opening a new database on a full disk fails as out of space, which passes once
// space is freed.
func TestOpenOnFullDisk(t *testing.T) {
	disk := enginetest.SmallDisk(t, 1<<20)
	path := filepath.Join(disk.Dir(), "tasks.db")
	disk.Fill(t)
	if s, err := Open(t.Context(), path, Options{}); !fault.IsNoSpace(err) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("Open on a full disk: %v; want an out-of-space error", err)
	}
	disk.Free(t)
	s, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatalf("Open once space is freed: %v", err)
	}
	defer closeStore(t, s)
	if id, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil || id != 0 {
		t.Fatalf("Create = %d, %v; want 0", id, err)
	}
}

// TestBusyIsUnavailable: a database another process keeps locked past the busy timeout is unavailable
// for now, not broken. It waits out the timeout on a database of its own, in parallel with TestContract.
func TestBusyIsUnavailable(t *testing.T) {
	t.Parallel()
	s, path := openTemp(t, nil)
	defer closeStore(t, s)
	other, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	// The writer waits out its busy timeout (5s), then gives up.
	_, err = s.Create(t.Context(), taskstore.CreateParams{})
	if !fault.IsTransient(err) || fault.IsNoSpace(err) {
		t.Fatalf("Create while another process holds the write lock: %v; want unavailable (fault)", err)
	}
	t.Logf("locked: %v", err)
	if _, err := conn.ExecContext(t.Context(), `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	if id, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil || id != 0 {
		t.Fatalf("Create once the lock is gone = %d, %v; want 0", id, err)
	}
}

func closeStore(tb testing.TB, s *Store) {
	tb.Helper()
	if err := s.Close(); err != nil {
		tb.Fatalf("Close: %v", err)
	}
}

func TestReopenKeepsTasks(t *testing.T) {
	ctx := t.Context()
	s, path := openTemp(t, nil)
	for range 3 {
		if _, err := s.Create(ctx, taskstore.CreateParams{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, taskstore.CreateParams{Pending: true}); err != nil {
		t.Fatal(err)
	}
	c, err := s.Claim(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(ctx, 0, c.Token); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fail(ctx, 1, 0, "flaky", false); err != nil {
		t.Fatal(err)
	}
	before := map[int64]taskstore.Task{}
	for task, err := range s.List(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		before[task.ID] = task
	}
	closeStore(t, s)

	s, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer closeStore(t, s)
	n := 0
	for task, err := range s.List(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if b := before[task.ID]; b != task {
			t.Errorf("task %d after reopen = %+v, before %+v", task.ID, task, b)
		}
		n++
	}
	if n != len(before) {
		t.Fatalf("reopened store has %d tasks, want %d", n, len(before))
	}
	if id, err := s.Create(ctx, taskstore.CreateParams{}); err != nil || id != 4 {
		t.Fatalf("Create after reopen = %d, %v; want 4", id, err)
	}
	if task, err := s.Claim(ctx, time.Hour); err != nil || task.ID != 1 || task.Attempts != 2 || task.Error != "flaky" {
		t.Fatalf("Claim after reopen = %+v, %v; want task 1 on its second attempt", task, err)
	}
}

func TestPragmas(t *testing.T) {
	ctx := t.Context()
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	for _, db := range []struct {
		name string
		db   *sql.DB
	}{{"writer", s.w}, {"reader", s.r}} {
		var mode string
		var busy int
		if err := db.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := db.db.QueryRowContext(ctx, `PRAGMA busy_timeout`).Scan(&busy); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || busy != 5000 {
			t.Errorf("%s: journal_mode=%s busy_timeout=%d, want wal 5000", db.name, mode, busy)
		}
	}
	var sync, version int
	if err := s.w.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync); err != nil {
		t.Fatal(err)
	}
	if sync != 1 {
		t.Errorf("writer synchronous = %d, want 1 (NORMAL; durable commits fsync the WAL themselves)", sync)
	}
	if err := s.w.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version != len(migrations()) {
		t.Errorf("user_version = %d, want %d", version, len(migrations()))
	}
	if _, err := s.r.ExecContext(ctx, `INSERT INTO tasks (state, pending, created_at) VALUES (0, 0, 0)`); err == nil {
		t.Error("reader pool accepted a write")
	}
}

func TestOpenRejectsNewerSchema(t *testing.T) {
	s, path := openTemp(t, nil)
	if _, err := s.w.ExecContext(t.Context(), `PRAGMA user_version = 99`); err != nil {
		t.Fatal(err)
	}
	closeStore(t, s)
	if s, err := Open(t.Context(), path, Options{}); err == nil {
		s.Close()
		t.Fatal("Open of a newer schema succeeded")
	}
}

func TestOpenRejectsNonFile(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file::memory:"} {
		if s, err := Open(t.Context(), p, Options{}); err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

func TestPathWithURICharacters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odd?name#with%25.db")
	s, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	var file string
	if err := s.r.QueryRowContext(t.Context(), `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&file); err != nil {
		t.Fatal(err)
	}
	if file != path {
		t.Fatalf("reader opened %q, want %q", file, path)
	}
}

func TestNonPositiveLease(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(t.Context(), 0); err == nil {
		t.Error("Claim with zero lease succeeded")
	}
	if err := s.Set(t.Context(), 0, wire.InProgress, -time.Second); err == nil {
		t.Error("Set InProgress with negative lease succeeded")
	}
	if task, err := s.Get(t.Context(), 0); err != nil || task.State != wire.NotStarted || task.Attempts != 0 ||
		task.Token != 0 {
		t.Errorf("after rejected calls: %+v, %v", task, err)
	}
	c, err := s.Claim(t.Context(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Extend(t.Context(), 0, c.Token, 0); err == nil {
		t.Error("Extend with zero lease succeeded")
	}
	if task, err := s.Get(t.Context(), 0); err != nil || !task.LeaseUntil.Equal(c.LeaseUntil) {
		t.Errorf("after rejected Extend: %+v, %v", task, err)
	}
	if _, err := s.ExpirePending(t.Context(), -time.Second); err == nil {
		t.Error("ExpirePending with a negative age succeeded")
	}
}

// TestListReleasesConnection checks that breaking out of List closes the rows, which the generic
// suite can only observe indirectly.
func TestListReleasesConnection(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	for range 3 {
		if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, err := range s.List(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		if n := s.r.Stats().InUse; n != 1 {
			t.Fatalf("during List %d reader connections in use, want 1", n)
		}
		break
	}
	if n := s.r.Stats().InUse; n != 0 {
		t.Fatalf("after breaking out of List %d reader connections in use, want 0", n)
	}
}

func TestErrorsWrapped(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	// ErrNoTask is the normal idle answer; it should arrive bare, not joined with rollback noise.
	if _, err := s.Claim(t.Context(), time.Minute); err != taskstore.ErrNoTask {
		t.Errorf("Claim on empty store = %v, want exactly ErrNoTask", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Create(ctx, taskstore.CreateParams{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Create with canceled context: %v, want context.Canceled in the chain", err)
	}
	if _, err := s.Claim(ctx, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("Claim with canceled context: %v, want context.Canceled in the chain", err)
	}
}

// queryPlan returns the EXPLAIN QUERY PLAN detail lines for query, run on the writer connection
// where the real statement runs.
func queryPlan(t *testing.T, s *Store, query string, args ...any) []string {
	t.Helper()
	rows, err := s.w.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, detail)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

func TestQueryPlansUseIndexes(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	fill(t, s, 1000)
	if _, err := s.w.ExecContext(t.Context(), `UPDATE tasks SET pending = 1 WHERE id % 100 = 0`); err != nil {
		t.Fatal(err)
	}
	var (
		now       = sql.Named("now", int64(0))
		until     = sql.Named("until", int64(1))
		id        = sql.Named("id", int64(7))
		token     = sql.Named("token", int64(1))
		byRowid   = "INTEGER PRIMARY KEY"
		failArgs  = []any{id, token, now, sql.Named("reason", "x"), sql.Named("permanent", false)}
		retryArgs = []any{id, token, now, sql.Named("reason", "x"), sql.Named("waits", "[1]")}
		setArgs   = []any{id, sql.Named("state", int64(1)), now, until}
		tokenArgs = []any{id, token, now}
	)
	for _, tc := range []struct {
		name, query, index string
		args               []any
	}{
		{"claim", claimSQL, claimableIndex, []any{now, until}},
		{"claim's turn", claimSQL, turnIndex, []any{now, until}},
		{"sweep", sweepSQL, leaseIndex, []any{now}},
		{"settle", settleSQL, retryIndex, []any{now}},
		{"find key", findKeySQL, keyIndex, []any{sql.Named("key", "k"), now}},
		{"clear key", clearKeySQL, byRowid, []any{id}},
		{"create with a key", createKeyedSQL, keyIndex, []any{sql.Named("pending", true), sql.Named("max_attempts", 3), now,
			sql.Named("op", ""), sql.Named("owner", ""), sql.Named("name", ""), sql.Named("key", "k")}},
		{"retry", retrySQL, byRowid, retryArgs},
		{"abandon", abandonSQL, byRowid, []any{id, now, sql.Named("reason", "x")}},
		{"expire", expireSQL, pendingIndex, []any{now, sql.Named("cutoff", int64(0))}},
		{"extend", extendSQL, byRowid, append(tokenArgs, until)},
		{"finish", finishSQL, byRowid, tokenArgs},
		{"fail", failSQL, byRowid, failArgs},
		{"release", releaseSQL, byRowid, tokenArgs},
		{"set", setSQL, byRowid, setArgs},
		{"activate", activateSQL, byRowid, []any{id, sql.Named("size", int64(1))}},
		{"probe", probeSQL, byRowid, []any{id}},
		{"get", getSQL, byRowid, []any{id, now}},
	} {
		plan := queryPlan(t, s, tc.query, tc.args...)
		text := strings.Join(plan, "\n")
		if !strings.Contains(text, tc.index) {
			t.Errorf("%s plan does not use %s:\n%s", tc.name, tc.index, text)
		}
		for _, line := range plan {
			// "SCAN tasks USING COVERING INDEX x" walks the partial index and stops at LIMIT 1;
			// a bare "SCAN tasks" reads the whole table.
			if l := strings.TrimSpace(line); l == "SCAN tasks" || l == "SCAN owners" {
				t.Errorf("%s plan has a full table scan:\n%s", tc.name, text)
			}
		}
		t.Logf("%s plan:\n%s", tc.name, text)
	}

	// Counts adds up several parts, each through its own partial index (the total through the
	// primary key's edge): none reads the table.
	plan := queryPlan(t, s, countsSQL, now)
	text := strings.Join(plan, "\n")
	for _, index := range []string{claimableIndex, retryIndex, pendingIndex, leaseIndex, failedIndex} {
		if !strings.Contains(text, index) {
			t.Errorf("counts plan does not use %s:\n%s", index, text)
		}
	}
	for _, line := range plan {
		if l := strings.TrimSpace(line); l == "SCAN tasks" || l == "SCAN tasks USING INTEGER PRIMARY KEY" {
			t.Errorf("counts plan reads the whole table:\n%s", text)
		}
	}
	t.Logf("counts plan:\n%s", text)
}

// v1Schema is schema version 1 as released (git show 7205ebf:internal/taskstore/sqlitestore/sqlitestore.go),
// copied rather than taken from migrations() so that the test keeps checking the upgrade of real
// version-1 files whatever later steps do.
const v1Schema = `CREATE TABLE tasks (
		id          INTEGER PRIMARY KEY,
		state       INTEGER NOT NULL,
		pending     INTEGER NOT NULL,
		attempts    INTEGER NOT NULL DEFAULT 0,
		created_at  INTEGER NOT NULL,
		started_at  INTEGER,
		finished_at INTEGER,
		lease_until INTEGER
	) STRICT;
	CREATE INDEX tasks_claimable ON tasks (id) WHERE state = 0 AND pending = 0;
	CREATE INDEX tasks_lease ON tasks (lease_until) WHERE state = 1;
	PRAGMA user_version = 1;`

// createV1 writes a version-1 database file at path, runs extra (more DDL, if any) and inserts rows,
// each (id, state, pending, attempts, created_at, started_at, finished_at, lease_until).
func createV1(t *testing.T, path, extra string, rows [][8]any) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), `PRAGMA journal_mode = WAL;`+v1Schema+extra); err != nil {
		t.Fatalf("create v1 schema: %v", err)
	}
	for _, r := range rows {
		if _, err := db.ExecContext(t.Context(), `INSERT INTO tasks
			(id, state, pending, attempts, created_at, started_at, finished_at, lease_until)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, r[:]...); err != nil {
			t.Fatalf("insert v1 row %v: %v", r, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func userVersion(t *testing.T, path string) int {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v int
	if err := db.QueryRowContext(t.Context(), `PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMigrateFromV1(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "v1.db")
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) int64 { return now.Add(d).UnixNano() }
	nul := sql.NullInt64{}
	createV1(t, path, "", [][8]any{
		{0, 0, 0, 0, at(-9 * time.Hour), nul, nul, nul},                               // queued
		{1, 0, 1, 0, at(-8 * time.Hour), nul, nul, nul},                               // pending
		{2, 1, 0, 2, at(-7 * time.Hour), at(-time.Minute), nul, at(time.Hour)},        // in progress, live, second attempt
		{3, 1, 0, 1, at(-6 * time.Hour), at(-time.Hour), nul, at(-time.Minute)},       // in progress, lapsed
		{4, 2, 0, 1, at(-5 * time.Hour), at(-5 * time.Hour), at(-4 * time.Hour), nul}, // finished
		{5, 1, 0, 3, at(-4 * time.Hour), at(-2 * time.Hour), nul, at(-time.Hour)},     // lapsed on its third attempt
		{6, 0, 0, 1, at(-3 * time.Hour), at(-3 * time.Hour), nul, nul},                // requeued after a lapse
		{7, 1, 0, 0, at(-2 * time.Hour), at(-time.Minute), nul, at(time.Hour)},        // set in progress by hand
	})
	if v := userVersion(t, path); v != 1 {
		t.Fatalf("hand-made v1 file has user_version %d", v)
	}

	clock := func() time.Time { return now }
	s, err := Open(ctx, path, Options{Now: clock})
	if err != nil {
		t.Fatalf("Open of a v1 database: %v", err)
	}
	ts := func(d time.Duration) time.Time { return now.Add(d) }
	want := []taskstore.Task{
		{ID: 0, State: wire.NotStarted, MaxAttempts: 3, CreatedAt: ts(-9 * time.Hour)},
		{ID: 1, State: wire.NotStarted, Pending: true, MaxAttempts: 3, CreatedAt: ts(-8 * time.Hour)},
		{ID: 2, State: wire.InProgress, Attempts: 2, MaxAttempts: 3, Token: 2, CreatedAt: ts(-7 * time.Hour),
			StartedAt: ts(-time.Minute), LeaseUntil: ts(time.Hour)},
		{ID: 3, State: wire.NotStarted, Attempts: 1, MaxAttempts: 3, Token: 1, Error: "lease lapsed on attempt 1 of 3",
			CreatedAt: ts(-6 * time.Hour), StartedAt: ts(-time.Hour)},
		{ID: 4, State: wire.Finished, Attempts: 1, MaxAttempts: 3, Token: 1, CreatedAt: ts(-5 * time.Hour),
			StartedAt: ts(-5 * time.Hour), FinishedAt: ts(-4 * time.Hour)},
		{ID: 5, State: wire.Failed, Attempts: 3, MaxAttempts: 3, Token: 3, Error: "lease lapsed on attempt 3 of 3",
			CreatedAt: ts(-4 * time.Hour), StartedAt: ts(-2 * time.Hour), FinishedAt: ts(-time.Hour)},
		{ID: 6, State: wire.NotStarted, Attempts: 1, MaxAttempts: 3, Token: 1, CreatedAt: ts(-3 * time.Hour),
			StartedAt: ts(-3 * time.Hour)},
		{ID: 7, State: wire.InProgress, MaxAttempts: 3, Token: 1, CreatedAt: ts(-2 * time.Hour),
			StartedAt: ts(-time.Minute), LeaseUntil: ts(time.Hour)},
	}
	check := func(when string) {
		t.Helper()
		n := 0
		for task, err := range s.List(ctx) {
			if err != nil {
				t.Fatal(err)
			}
			if task.ID >= int64(len(want)) || task != want[task.ID] {
				t.Fatalf("%s: task %d = %+v\nwant %+v", when, task.ID, task, want[min(task.ID, int64(len(want)-1))])
			}
			n++
		}
		if n != len(want) {
			t.Fatalf("%s: %d tasks, want %d", when, n, len(want))
		}
	}
	check("after migration")
	var version int
	if err := s.w.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil || version != len(migrations()) {
		t.Fatalf("user_version after migration = %d, %v; want %d", version, err, len(migrations()))
	}
	checkIndexes(t, s)
	// The migrated tasks are counted as List reports them: 0, 3 and 6 queued (3 lapsed with attempts
	// left), 1 pending, 2 and 7 processing, 4 finished, 5 failed (lapsed on its last attempt).
	if c, err := s.Counts(ctx); err != nil ||
		c != (taskstore.Counts{Queued: 3, Pending: 1, Processing: 2, Finished: 1, Failed: 1}) {
		t.Fatalf("Counts after migration = %+v, %v", c, err)
	}
	closeStore(t, s)

	// Reopening runs no migration again and changes nothing.
	s, err = Open(ctx, path, Options{Now: clock})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer closeStore(t, s)
	check("after reopen")

	// The migrated store works on: a reference worker holding task 2 from before the upgrade finishes
	// it without a token, and the token the migration gave it is current.
	if _, err := s.Finish(ctx, 2, 0); err != nil {
		t.Fatalf("Finish of a v1 claim without a token: %v", err)
	}
	if _, err := s.Finish(ctx, 2, 2); err != nil {
		t.Fatalf("Finish of a v1 claim with its migrated token: %v", err)
	}
	if _, err := s.Finish(ctx, 2, 1); !errors.Is(err, taskstore.ErrStaleToken) {
		t.Fatalf("Finish of a v1 claim with a lower token: %v, want ErrStaleToken", err)
	}
	for _, w := range []struct {
		id, token int64
		attempts  int
	}{{0, 1, 1}, {3, 2, 2}, {6, 2, 2}} {
		task, err := s.Claim(ctx, time.Minute)
		if err != nil || task.ID != w.id || task.Token != w.token || task.Attempts != w.attempts {
			t.Fatalf("Claim = %+v, %v; want task %d with token %d on attempt %d", task, err, w.id, w.token, w.attempts)
		}
	}
	if task, err := s.Claim(ctx, time.Minute); !errors.Is(err, taskstore.ErrNoTask) {
		t.Fatalf("Claim with nothing claimable = %+v, %v", task, err)
	}
	if id, err := s.Create(ctx, taskstore.CreateParams{MaxAttempts: 5}); err != nil || id != 8 {
		t.Fatalf("Create after migration = %d, %v; want 8", id, err)
	}
	if task, err := s.Get(ctx, 8); err != nil || task.MaxAttempts != 5 {
		t.Fatalf("Get(8) = %+v, %v", task, err)
	}
	if n, err := s.ExpirePending(ctx, time.Hour); err != nil || n != 1 {
		t.Fatalf("ExpirePending of the v1 pending task = %d, %v; want 1", n, err)
	}
	if err := s.Activate(ctx, 1, 0); !errors.Is(err, taskstore.ErrNotPending) {
		t.Fatalf("Activate of the expired v1 pending task: %v, want ErrNotPending", err)
	}
}

// TestMigrationIsAtomic: a step that fails halfway leaves the version-1 database as it was.
func TestMigrationIsAtomic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v1.db")
	// A column the v2 step will try to add again, after adding two others.
	createV1(t, path, `ALTER TABLE tasks ADD COLUMN error TEXT;`, [][8]any{
		{0, 0, 0, 0, time.Now().UnixNano(), sql.NullInt64{}, sql.NullInt64{}, sql.NullInt64{}},
	})
	if s, err := Open(t.Context(), path, Options{}); err == nil {
		s.Close()
		t.Fatal("Open succeeded although the migration cannot")
	} else if !strings.Contains(err.Error(), "migrate to version 2") {
		t.Fatalf("Open error = %v, want a failed migration to version 2", err)
	}
	if v := userVersion(t, path); v != 1 {
		t.Fatalf("user_version after the failed migration = %d, want 1", v)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var cols int
	if err := db.QueryRowContext(t.Context(), `SELECT count(*) FROM pragma_table_info('tasks')
		WHERE name IN ('max_attempts', 'token')`).Scan(&cols); err != nil || cols != 0 {
		t.Fatalf("the failed migration left %d of its columns behind, %v", cols, err)
	}
	var n int
	if err := db.QueryRowContext(t.Context(), `SELECT count(*) FROM tasks`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d tasks after the failed migration, %v; want 1", n, err)
	}
}

// checkIndexes checks that the database has every index of the current schema, the claimable one in
// its latest form.
func checkIndexes(t *testing.T, s *Store) {
	t.Helper()
	for _, index := range []string{claimableIndex, leaseIndex, pendingIndex, failedIndex, retryIndex, keyIndex} {
		var def string
		if err := s.w.QueryRowContext(t.Context(), `SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?`,
			index).Scan(&def); err != nil {
			t.Fatalf("index %s: %v", index, err)
		}
		if index == claimableIndex && !strings.Contains(def, "retry_at IS NULL") {
			t.Fatalf("claimable index: %s; want it to leave out tasks waiting to be retried", def)
		}
	}
}

// createV4 writes a database file of schema version 4 at path, as the program that released it did
// (released steps never change), and inserts rows, each (id, state, pending, attempts, max_attempts,
// token, error, created_at, started_at, finished_at, lease_until, op).
func createV4(t *testing.T, path string, rows [][12]any) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), `PRAGMA journal_mode = WAL`); err != nil {
		t.Fatal(err)
	}
	for v, step := range migrations()[:4] {
		if _, err := db.ExecContext(t.Context(), step); err != nil {
			t.Fatalf("schema step %d: %v", v+1, err)
		}
	}
	if _, err := db.ExecContext(t.Context(), `PRAGMA user_version = 4`); err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if _, err := db.ExecContext(t.Context(), `INSERT INTO tasks (id, state, pending, attempts, max_attempts,
			token, error, created_at, started_at, finished_at, lease_until, op) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			r[:]...); err != nil {
			t.Fatalf("insert v4 row %v: %v", r, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestMigrateFromV4: a database of schema version 4 (before retries and idempotency keys) upgrades in
// place, keeps its tasks as they were, and works on with the new features.
func TestMigrateFromV4(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "v4.db")
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) int64 { return now.Add(d).UnixNano() }
	nul := sql.NullInt64{}
	createV4(t, path, [][12]any{
		{0, 0, 0, 0, 3, 0, "", at(-9 * time.Hour), nul, nul, nul, "swap"},                                 // queued
		{1, 0, 1, 0, 3, 0, "", at(-8 * time.Hour), nul, nul, nul, ""},                                     // pending
		{2, 1, 0, 1, 3, 1, "", at(-7 * time.Hour), at(-time.Minute), nul, at(time.Hour), "grayscale"},     // in progress
		{3, 1, 0, 1, 3, 1, "", at(-6 * time.Hour), at(-time.Hour), nul, at(-time.Minute), ""},             // lapsed
		{4, 2, 0, 1, 3, 1, "", at(-5 * time.Hour), at(-5 * time.Hour), at(-4 * time.Hour), nul, ""},       // finished
		{5, 3, 0, 1, 1, 1, "broken", at(-4 * time.Hour), at(-4 * time.Hour), at(-3 * time.Hour), nul, ""}, // failed
		{6, 0, 0, 1, 3, 1, "flaky", at(-3 * time.Hour), at(-3 * time.Hour), nul, nul, ""},                 // queued again
	})
	if v := userVersion(t, path); v != 4 {
		t.Fatalf("hand-made v4 file has user_version %d", v)
	}
	clock := func() time.Time { return now }
	for _, reopen := range []bool{false, true} {
		s, err := Open(ctx, path, Options{Now: clock})
		if err != nil {
			t.Fatalf("Open of a v4 database (reopen %v): %v", reopen, err)
		}
		taskstoretest.CheckUpgradedTasks(t, s, now)
		checkIndexes(t, s)
		closeStore(t, s)
	}
	if v := userVersion(t, path); v != len(migrations()) {
		t.Fatalf("user_version after migration = %d, want %d", v, len(migrations()))
	}

	// The new features work on the migrated tasks: the claim from before the upgrade reports a
	// transient failure, and the task waits while the others are claimed in id order.
	s, err := Open(ctx, path, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer closeStore(t, s)
	taskstoretest.CheckUpgradedWorks(t, s, now)
}

// fill appends n claimable tasks in one statement; Create per task would take minutes for 1M.
func fill(tb testing.TB, s *Store, n int) { fillOwned(tb, s, n, 0) }

// fillOwned is fill with the tasks dealt round to owners "o0", "o1", ... (owner "" when owners is 0).
func fillOwned(tb testing.TB, s *Store, n, owners int) {
	tb.Helper()
	_, err := s.w.ExecContext(context.Background(), `
		WITH RECURSIVE seq(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM seq WHERE x + 1 < :n)
		INSERT INTO tasks (id, state, pending, attempts, created_at, owner)
		SELECT (SELECT IFNULL(MAX(id), -1) + 1 FROM tasks) + x, 0, 0, 0, :now,
			IIF(:owners = 0, '', 'o' || (x % MAX(:owners, 1))) FROM seq`,
		sql.Named("n", n), sql.Named("now", time.Now().UnixNano()), sql.Named("owners", owners))
	if err != nil {
		tb.Fatalf("fill %d: %v", n, err)
	}
}

func TestFill(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	if _, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil {
		t.Fatal(err)
	}
	fill(t, s, 10)
	if id, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil || id != 11 {
		t.Fatalf("Create after fill = %d, %v; want 11", id, err)
	}
	for want := range int64(12) {
		if task, err := s.Claim(t.Context(), time.Minute); err != nil || task.ID != want {
			t.Fatalf("Claim = %+v, %v; want id %d", task, err, want)
		}
	}
}

// BenchmarkClaim measures one Claim (requeue sweep + claim, one fsync'd transaction) with a short
// and a long queue; with index-driven claims the two should cost about the same.
func BenchmarkClaim(b *testing.B) {
	for _, queued := range []int{1_000, 1_000_000} {
		b.Run(fmt.Sprintf("queued=%d", queued), func(b *testing.B) {
			s, _ := openTemp(b, nil)
			defer closeStore(b, s)
			fill(b, s, queued)
			ctx := context.Background()
			left := queued
			for b.Loop() {
				if left == 0 {
					// Requeue everything so the queue depth stays what the name says.
					b.StopTimer()
					if _, err := s.w.ExecContext(ctx, `UPDATE tasks SET state = 0, lease_until = NULL`); err != nil {
						b.Fatal(err)
					}
					left = queued
					b.StartTimer()
				}
				if _, err := s.Claim(ctx, time.Hour); err != nil {
					b.Fatal(err)
				}
				left--
			}
		})
	}
}

// A tombstone keeps nothing of who asked for what: not the owner, the operation, the error, the name, the
// idempotency key nor the size; and its owner's rows (usage, and the turn) go once it keeps nothing.
func TestTombstoneKeepsNothingPersonal(t *testing.T) {
	ctx := t.Context()
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	taskstoretest.CheckTombstoneKeepsNothing(t, s, func(id int64) (taskstoretest.TombstoneRow, error) {
		var r taskstoretest.TombstoneRow
		var key sql.NullString
		err := s.w.QueryRowContext(ctx, `SELECT state, owner, op, error, name, idem_key, size FROM tasks WHERE id = ?`, id).
			Scan(&r.State, &r.Owner, &r.Op, &r.Error, &r.Name, &key, &r.Size)
		r.KeyKept = key.Valid
		return r, err
	}, func(table, owner string) (int, error) {
		var n int
		err := s.w.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table+` WHERE owner = ?`, owner).Scan(&n)
		return n, err
	})
}

// TestMigrateFromV8: a database of schema version 8 (before usage) upgrades with every owner's tasks
// counted, tombstones stripped of their owner, and owners that keep nothing forgotten.
func TestMigrateFromV8(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "v8.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for v, step := range migrations()[:8] {
		if _, err := db.ExecContext(ctx, step); err != nil {
			t.Fatalf("schema step %d: %v", v+1, err)
		}
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano()
	// Version 8's own triggers keep owners as the rows go in: alice has a queued and a finished task,
	// bob a queued one, carol only a tombstone (queued once, then deleted).
	for _, q := range []string{
		`INSERT INTO tasks (id, state, pending, created_at, owner) VALUES (0, 0, 0, :now, 'alice'), (1, 2, 0, :now, 'alice'),
			(2, 0, 0, :now, 'bob'), (3, 0, 0, :now, 'carol')`,
		`UPDATE tasks SET state = 5, op = '', error = '', finished_at = :now WHERE id = 3`,
		`PRAGMA user_version = 8`,
	} {
		if _, err := db.ExecContext(ctx, q, sql.Named("now", now)); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatalf("Open of a v8 database: %v", err)
	}
	defer closeStore(t, s)
	taskstoretest.CheckUsageUpgraded(t, s, func() (owner string, carol int, err error) {
		err = s.w.QueryRowContext(ctx, `SELECT owner, (SELECT COUNT(*) FROM owners WHERE owner = 'carol') FROM tasks WHERE id = 3`).
			Scan(&owner, &carol)
		return owner, carol, err
	})
}
