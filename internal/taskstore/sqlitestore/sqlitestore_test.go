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

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/taskstoretest"
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

func TestContract(t *testing.T) {
	taskstoretest.Run(t, func(t *testing.T, clock func() time.Time) taskstore.Store {
		s, _ := openTemp(t, clock)
		return s
	})
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
		if _, err := s.Create(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, time.Hour); err != nil {
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

	s, err := Open(ctx, path, Options{})
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
	if id, err := s.Create(ctx, false); err != nil || id != 4 {
		t.Fatalf("Create after reopen = %d, %v; want 4", id, err)
	}
	if task, err := s.Claim(ctx, time.Hour); err != nil || task.ID != 2 {
		t.Fatalf("Claim after reopen = %+v, %v; want task 2", task, err)
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
	if sync != 2 {
		t.Errorf("writer synchronous = %d, want 2 (FULL)", sync)
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
	if _, err := s.Create(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(t.Context(), 0); err == nil {
		t.Error("Claim with zero lease succeeded")
	}
	if err := s.Set(t.Context(), 0, taskstore.InProgress, -time.Second); err == nil {
		t.Error("Set InProgress with negative lease succeeded")
	}
	if task, err := s.Get(t.Context(), 0); err != nil || task.State != taskstore.NotStarted || task.Attempts != 0 {
		t.Errorf("after rejected calls: %+v, %v", task, err)
	}
}

// TestListReleasesConnection checks that breaking out of List closes the rows, which the generic
// suite can only observe indirectly.
func TestListReleasesConnection(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	for range 3 {
		if _, err := s.Create(t.Context(), false); err != nil {
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
	if _, err := s.Create(ctx, false); !errors.Is(err, context.Canceled) {
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
	now := sql.Named("now", int64(0))
	for _, tc := range []struct {
		name, query, index string
		args               []any
	}{
		{"claim", claimSQL, claimableIndex, []any{now, sql.Named("until", int64(1))}},
		{"requeue", requeueSQL, leaseIndex, []any{now}},
	} {
		plan := queryPlan(t, s, tc.query, tc.args...)
		text := strings.Join(plan, "\n")
		if !strings.Contains(text, tc.index) {
			t.Errorf("%s plan does not use %s:\n%s", tc.name, tc.index, text)
		}
		for _, line := range plan {
			// "SCAN tasks USING COVERING INDEX x" walks the partial index and stops at LIMIT 1;
			// a bare "SCAN tasks" reads the whole table.
			if strings.TrimSpace(line) == "SCAN tasks" {
				t.Errorf("%s plan has a full table scan:\n%s", tc.name, text)
			}
		}
		t.Logf("%s plan:\n%s", tc.name, text)
	}
}

// fill appends n claimable tasks in one statement; Create per task would take minutes for 1M.
func fill(tb testing.TB, s *Store, n int) {
	tb.Helper()
	_, err := s.w.ExecContext(context.Background(), `
		WITH RECURSIVE seq(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM seq WHERE x + 1 < :n)
		INSERT INTO tasks (id, state, pending, attempts, created_at)
		SELECT (SELECT IFNULL(MAX(id), -1) + 1 FROM tasks) + x, 0, 0, 0, :now FROM seq`,
		sql.Named("n", n), sql.Named("now", time.Now().UnixNano()))
	if err != nil {
		tb.Fatalf("fill %d: %v", n, err)
	}
}

func TestFill(t *testing.T) {
	s, _ := openTemp(t, nil)
	defer closeStore(t, s)
	if _, err := s.Create(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	fill(t, s, 10)
	if id, err := s.Create(t.Context(), false); err != nil || id != 11 {
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
