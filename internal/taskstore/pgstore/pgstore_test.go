package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// openStore opens a Store on dsn and closes it when tb ends.
func openStore(tb testing.TB, dsn string, opts Options) *Store {
	tb.Helper()
	s, err := Open(context.Background(), dsn, opts)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("Close: %v", err)
		}
	})
	return s
}

// TestContract runs the shared suite on one server, each subtest in a fresh database. The subtests run in
// parallel: NewDatabase is safe for concurrent use (an atomic sequence names the databases).
func TestContract(t *testing.T) {
	pg := enginetest.StartPostgres(t)
	taskstoretest.Run(t, func(t *testing.T, clock func() time.Time) taskstore.Store {
		s, err := Open(t.Context(), pg.NewDatabase(t), Options{Now: clock})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// TestStore runs the PostgreSQL-specific tests on one server; each subtest has its own database (and
// every check it makes on the server is confined to that database), so they run in parallel.
func TestStore(t *testing.T) {
	pg := enginetest.StartPostgres(t)
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, pg *enginetest.Postgres)
	}{
		{"SharedClaims", testSharedClaims},
		{"SharedCreates", testSharedCreates},
		{"SharedLapses", testSharedLapses},
		{"FailedCreateLeavesNoGap", testFailedCreateLeavesNoGap},
		{"Watch", testWatch},
		{"WatchEndsOnClose", testWatchEndsOnClose},
		{"Reopen", testReopen},
		{"ConcurrentOpen", testConcurrentOpen},
		{"NewerSchema", testNewerSchema},
		{"FailedMigrationIsAtomic", testFailedMigrationIsAtomic},
		{"MigrateFromV1", testMigrateFromV1},
		{"OpenReleasedDatabase", testOpenReleasedDatabase},
		{"OpenPermanentErrors", testOpenPermanentErrors},
		{"MaxConns", testMaxConns},
		{"QueryPlansUseIndexes", testQueryPlansUseIndexes},
		{"NonPositiveLease", testNonPositiveLease},
		{"ErrorsWrapped", testErrorsWrapped},
		{"ListPages", testListPages},
		{"Fill", testFill},
		{"TombstoneKeepsNothingPersonal", testTombstoneKeepsNothingPersonal},
		{"SharedUsage", testSharedUsage},
		{"MigrateFromV5", testMigrateFromV5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, pg)
		})
	}
}

// sharedPair opens two Stores, as two database services would, on one fresh database.
func sharedPair(t *testing.T, pg *enginetest.Postgres, now func() time.Time) [2]*Store {
	dsn := pg.NewDatabase(t)
	return [2]*Store{openStore(t, dsn, Options{Now: now}), openStore(t, dsn, Options{Now: now})}
}

// testSharedClaims: claimers on two Stores drain one queue; every task is handed out exactly once.
func testSharedClaims(t *testing.T, pg *enginetest.Postgres) {
	stores := sharedPair(t, pg, nil)
	const tasks, perStore = 600, 6
	for range tasks {
		if _, err := stores[0].Create(t.Context(), taskstore.CreateParams{}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu      sync.Mutex
		claimed = map[int64]int{}
		byStore [2]int
		wg      sync.WaitGroup
	)
	for i, s := range stores {
		for range perStore {
			wg.Go(func() {
				for {
					task, err := s.Claim(t.Context(), time.Hour)
					if errors.Is(err, taskstore.ErrNoTask) {
						return
					}
					if err != nil {
						t.Errorf("Claim: %v", err)
						return
					}
					mu.Lock()
					claimed[task.ID]++
					byStore[i]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for id := range int64(tasks) {
		if claimed[id] != 1 {
			t.Errorf("task %d claimed %d times, want once", id, claimed[id])
		}
	}
	if len(claimed) != tasks {
		t.Errorf("%d distinct tasks claimed, want %d", len(claimed), tasks)
	}
	t.Logf("claims by store: %v", byStore)
	if byStore[0] == 0 || byStore[1] == 0 {
		t.Errorf("one store claimed nothing (%v): the test did not exercise sharing", byStore)
	}
}

// testSharedCreates: concurrent Creates on two Stores get consecutive ids from 0, each once, and
// Counts on either agrees.
func testSharedCreates(t *testing.T, pg *enginetest.Postgres) {
	stores := sharedPair(t, pg, nil)
	const perStore, each = 4, 40
	ids := make(chan int64, 2*perStore*each)
	var wg sync.WaitGroup
	for _, s := range stores {
		for range perStore {
			wg.Go(func() {
				for range each {
					id, err := s.Create(t.Context(), taskstore.CreateParams{})
					if err != nil {
						t.Errorf("Create: %v", err)
						return
					}
					ids <- id
				}
			})
		}
	}
	wg.Wait()
	close(ids)
	if t.Failed() {
		t.FailNow()
	}
	var got []int64
	for id := range ids {
		got = append(got, id)
	}
	slices.Sort(got)
	for i, id := range got {
		if id != int64(i) {
			t.Fatalf("sorted ids[%d] = %d: not consecutive from 0", i, id)
		}
	}
	if len(got) != 2*perStore*each {
		t.Fatalf("got %d ids, want %d", len(got), 2*perStore*each)
	}
	for i, s := range stores {
		if c, err := s.Counts(t.Context()); err != nil || c != (taskstore.Counts{Queued: int64(len(got))}) {
			t.Errorf("store %d Counts = %+v, %v", i, c, err)
		}
	}
}

// testSharedLapses: leases taken on one Store lapse, and claimers on both Stores race to settle and
// reclaim them: each task is reclaimed exactly once, on its second attempt.
func testSharedLapses(t *testing.T, pg *enginetest.Postgres) {
	var mu sync.Mutex
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	stores := sharedPair(t, pg, clock)
	const tasks = 200
	for range tasks {
		if _, err := stores[0].Create(t.Context(), taskstore.CreateParams{}); err != nil {
			t.Fatal(err)
		}
		if _, err := stores[0].Claim(t.Context(), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()

	reclaimed := make(chan taskstore.Task, tasks)
	var wg sync.WaitGroup
	for _, s := range stores {
		for range 4 {
			wg.Go(func() {
				for {
					task, err := s.Claim(t.Context(), time.Minute)
					if errors.Is(err, taskstore.ErrNoTask) {
						return
					}
					if err != nil {
						t.Errorf("Claim: %v", err)
						return
					}
					reclaimed <- task
				}
			})
		}
	}
	wg.Wait()
	close(reclaimed)
	seen := map[int64]bool{}
	for task := range reclaimed {
		if seen[task.ID] || task.Attempts != 2 || task.Error != "lease lapsed on attempt 1 of 3" {
			t.Errorf("reclaimed %+v (seen before: %v)", task, seen[task.ID])
		}
		seen[task.ID] = true
	}
	if len(seen) != tasks {
		t.Errorf("%d tasks reclaimed, want %d", len(seen), tasks)
	}
}

// testFailedCreateLeavesNoGap: a Create that PostgreSQL rejects (text cannot hold NUL) gives its id
// back, where a sequence would have skipped it.
func testFailedCreateLeavesNoGap(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{})
	for i := range int64(3) {
		if _, err := s.Create(t.Context(), taskstore.CreateParams{Op: "bad\x00op"}); err == nil {
			t.Fatal("Create with a NUL in its op succeeded")
		}
		if id, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil || id != i {
			t.Fatalf("Create after a failed one = %d, %v; want %d", id, err, i)
		}
	}
}

// watchRecorder runs s.Watch until the test ends, counting notify calls on a channel.
type watchRecorder struct {
	notes  chan struct{}
	result chan error
	cancel context.CancelFunc
}

func startWatch(t *testing.T, s *Store) *watchRecorder {
	ctx, cancel := context.WithCancel(t.Context())
	w := &watchRecorder{notes: make(chan struct{}, 100), result: make(chan error, 1), cancel: cancel}
	go func() { w.result <- s.Watch(ctx, func() { w.notes <- struct{}{} }) }()
	t.Cleanup(func() {
		cancel()
		<-w.result
	})
	return w
}

func (w *watchRecorder) expect(t *testing.T, what string) {
	t.Helper()
	select {
	case <-w.notes:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no notification", what)
	}
}

// quiet checks that no notification arrives for a while; notifications go out at commit and arrive
// in milliseconds.
func (w *watchRecorder) quiet(t *testing.T, what string) {
	t.Helper()
	select {
	case <-w.notes:
		t.Fatalf("%s: unexpected notification", what)
	case <-time.After(300 * time.Millisecond):
	}
}

// testWatch: a Store's Watch hears of every way another Store makes a task claimable, and of nothing
// else; it reconnects when its connection is killed, and returns nil when its context ends.
func testWatch(t *testing.T, pg *enginetest.Postgres) {
	stores := sharedPair(t, pg, nil)
	a, b := stores[0], stores[1]
	ctx := t.Context()
	w := startWatch(t, a)
	w.expect(t, "start listening")

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	claim := func() taskstore.Task {
		t.Helper()
		task, err := b.Claim(ctx, time.Minute)
		must(err)
		return task
	}

	_, err := b.Create(ctx, taskstore.CreateParams{}) // 0
	must(err)
	w.expect(t, "Create on the other store")
	_, err = a.Create(ctx, taskstore.CreateParams{}) // 1
	must(err)
	w.quiet(t, "Create on the watching store itself")
	_, err = b.Create(ctx, taskstore.CreateParams{Pending: true}) // 2
	must(err)
	w.quiet(t, "Create of a pending task")
	must(b.Activate(ctx, 2, 0))
	w.expect(t, "Activate")
	must(b.Activate(ctx, 2, 0))
	w.quiet(t, "Activate of an active task")

	c := claim() // 0
	w.quiet(t, "Claim")
	must(b.Release(ctx, c.ID, c.Token))
	w.expect(t, "Release")
	c = claim() // 0
	_, err = b.Fail(ctx, c.ID, c.Token, "flaky", false)
	must(err)
	w.expect(t, "Fail with attempts left")
	c = claim() // 0
	_, err = b.Fail(ctx, c.ID, c.Token, "broken", true)
	must(err)
	w.quiet(t, "permanent Fail")
	must(b.Set(ctx, 0, wire.NotStarted, 0))
	w.expect(t, "Set NotStarted")
	must(b.Set(ctx, 0, wire.Finished, 0))
	w.quiet(t, "Set Finished")

	// Kill the listening session: Watch reconnects, says so, and hears the next Create.
	admin, err := pgx.Connect(ctx, pg.DSN(b.listen.Database))
	must(err)
	defer admin.Close(context.Background())
	var killed int
	must(admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query = 'LISTEN `+channel+`'`).Scan(&killed))
	if killed != 1 {
		t.Fatalf("terminated %d listening sessions, want 1", killed)
	}
	w.expect(t, "reconnect")
	_, err = b.Create(ctx, taskstore.CreateParams{})
	must(err)
	w.expect(t, "Create after the reconnect")

	w.cancel()
	select {
	case err := <-w.result:
		if err != nil {
			t.Fatalf("Watch returned %v when its context ended, want nil", err)
		}
		w.result <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return when its context ended")
	}
}

// testWatchEndsOnClose: closing the store ends its Watch with an error.
func testWatchEndsOnClose(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{})
	w := startWatch(t, s)
	w.expect(t, "start listening")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-w.result:
		if err == nil {
			t.Fatal("Watch returned nil after Close, want an error")
		}
		w.result <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after Close")
	}
	if err := s.Watch(t.Context(), func() {}); err == nil {
		t.Fatal("Watch on a closed store returned nil")
	}
}

// schemaVersions returns the versions recorded in schema_migrations.
func schemaVersions(t *testing.T, s *Store) []int {
	t.Helper()
	rows, err := s.pool.Query(t.Context(), `SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	return versions
}

func wantVersions(t *testing.T) []int {
	t.Helper()
	steps, err := readMigrations(migrationFiles)
	if err != nil {
		t.Fatal(err)
	}
	var v []int
	for _, m := range steps {
		v = append(v, m.version)
	}
	return v
}

// testReopen: opening a migrated database again applies nothing and keeps the tasks.
func testReopen(t *testing.T, pg *enginetest.Postgres) {
	dsn := pg.NewDatabase(t)
	s, err := Open(t.Context(), dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for range 3 {
		if _, err := s.Create(ctx, taskstore.CreateParams{Op: "grayscale"}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.Claim(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(ctx, c.ID, c.Token); err != nil {
		t.Fatal(err)
	}
	before := listAll(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, dsn, Options{})
	if got, want := schemaVersions(t, s), wantVersions(t); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations after reopen = %v, want %v", got, want)
	}
	if after := listAll(t, s); !slices.Equal(after, before) {
		t.Fatalf("tasks after reopen = %+v, before %+v", after, before)
	}
	if id, err := s.Create(ctx, taskstore.CreateParams{}); err != nil || id != 3 {
		t.Fatalf("Create after reopen = %d, %v; want 3", id, err)
	}
}

func listAll(t *testing.T, s *Store) []taskstore.Task {
	t.Helper()
	var out []taskstore.Task
	for task, err := range s.List(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, task)
	}
	return out
}

// testConcurrentOpen: instances starting together on an empty database all succeed, and the schema
// is applied once.
func testConcurrentOpen(t *testing.T, pg *enginetest.Postgres) {
	dsn := pg.NewDatabase(t)
	const n = 8
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { stores[i], errs[i] = Open(t.Context(), dsn, Options{}) })
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Errorf("Open #%d: %v", i, errs[i])
			continue
		}
		t.Cleanup(func() { s.Close() })
	}
	if t.Failed() {
		t.FailNow()
	}
	if got, want := schemaVersions(t, stores[0]), wantVersions(t); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations = %v, want %v", got, want)
	}
	for i, s := range stores {
		if id, err := s.Create(t.Context(), taskstore.CreateParams{}); err != nil || id != int64(i) {
			t.Fatalf("Create on store %d = %d, %v; want %d", i, id, err, i)
		}
	}
}

// testNewerSchema: a program refuses a database that a newer program migrated further.
func testNewerSchema(t *testing.T, pg *enginetest.Postgres) {
	dsn := pg.NewDatabase(t)
	s := openStore(t, dsn, Options{})
	if _, err := s.pool.Exec(t.Context(), `INSERT INTO schema_migrations VALUES (999, '0999_future.sql', now())`); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), dsn, Options{})
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open of a newer schema: %v, want a refusal", err)
	}
}

// testFailedMigrationIsAtomic: a step that fails leaves nothing of itself behind, and the version as
// it was.
func testFailedMigrationIsAtomic(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{})
	// The released steps, and a broken one after them.
	steps, err := readMigrations(migrationFiles)
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{}
	for _, m := range steps {
		fsys["migrations/"+m.name] = &fstest.MapFile{Data: []byte(m.sql)}
	}
	next := len(steps) + 1
	fsys[fmt.Sprintf("migrations/%04d_broken.sql", next)] = &fstest.MapFile{
		Data: []byte(`ALTER TABLE tasks ADD COLUMN extra text; SELECT 1/0;`)}
	if err := s.migrate(t.Context(), fsys); err == nil || !strings.Contains(err.Error(), fmt.Sprint("version ", next)) {
		t.Fatalf("migrate with a broken step: %v, want a failure of version %d", err, next)
	}
	var cols int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM information_schema.columns
		WHERE table_name = 'tasks' AND column_name = 'extra'`).Scan(&cols); err != nil || cols != 0 {
		t.Fatalf("the failed step left %d columns behind, %v", cols, err)
	}
	if got, want := schemaVersions(t, s), wantVersions(t); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations after the failed step = %v, want %v", got, want)
	}
}

func TestReadMigrations(t *testing.T) {
	if steps, err := readMigrations(migrationFiles); err != nil || len(steps) == 0 || steps[0].version != 1 {
		t.Fatalf("embedded migrations: %v, %v", steps, err)
	}
	for name, fsys := range map[string]fstest.MapFS{
		"gap":      {"migrations/0001_a.sql": {}, "migrations/0003_c.sql": {}},
		"no 1":     {"migrations/0002_b.sql": {}},
		"bad name": {"migrations/0001_a.sql": {}, "migrations/two.sql": {}},
		"not sql":  {"migrations/0001_a.txt": {}},
	} {
		if _, err := readMigrations(fsys); err == nil {
			t.Errorf("%s: readMigrations accepted it", name)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	// Nothing listens on a port just freed: Open still succeeds, at once, and the store says why it
	// cannot work yet. Close ends its connecting (goleak checks).
	addr := enginetest.FreeAddr(t)
	start := time.Now()
	s, err := Open(t.Context(), "postgres://postgres@"+addr+"/tasks?sslmode=disable", Options{})
	if err != nil {
		t.Fatalf("Open of an unreachable server: %v; want the store, waiting", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Open of an unreachable server took %v", d)
	}
	err = s.Ping(t.Context())
	if !fault.IsTransient(err) || !strings.Contains(err.Error(), addr+"/tasks") || !strings.Contains(err.Error(), "connect") {
		t.Errorf("Ping of an unreachable server: %v; want a transient connect error naming %s/tasks", err, addr)
	}
	t.Logf("unreachable: %v", err)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	for _, dsn := range []string{"postgres://postgres@127.0.0.1:notaport/db", "postgres://postgres@127.0.0.1/db?sslmode=bogus",
		"host=127.0.0.1 port=x", "mysql://x@y/z", "not a dsn"} {
		_, err := Open(t.Context(), dsn, Options{})
		if err == nil {
			t.Errorf("Open(%q) succeeded", dsn)
			continue
		}
		t.Logf("malformed %q: %v", dsn, err)
	}
	// The password does not show in the error.
	if _, err := Open(t.Context(), "postgres://u:s3cret@127.0.0.1:notaport/db", Options{}); err == nil ||
		strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Open with a malformed DSN holding a password: %v", err)
	}
	if _, err := Open(t.Context(), "postgres://postgres@"+addr+"/db", Options{MaxConns: -1}); err == nil {
		t.Error("Open with negative MaxConns succeeded")
	}
	// A context that ends bounds the connection attempt, and is the caller's: Open fails.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Open(ctx, "postgres://postgres@"+addr+"/db", Options{}); !errors.Is(err, context.Canceled) ||
		fault.IsTransient(err) {
		t.Errorf("Open with a canceled context: %v, want context.Canceled in the chain", err)
	}
}

// testOpenPermanentErrors: a server that answers, but refuses the store for good, fails Open at once.
func testOpenPermanentErrors(t *testing.T, pg *enginetest.Postgres) {
	for name, dsn := range map[string]string{
		"a database that does not exist": pg.DSN("no_such_database"),
		"a role that does not exist":     strings.Replace(pg.DSN("postgres"), "postgres@", "no_such_role@", 1),
	} {
		s, err := Open(t.Context(), dsn, Options{})
		if err == nil {
			s.Close()
			t.Errorf("Open of %s succeeded", name)
			continue
		}
		if fault.IsTransient(err) {
			t.Errorf("Open of %s: %v; want a permanent error", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

// TestOutage runs the outage contract on a server of its own, which stops and starts again.
func TestOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("server restart skipped with -short")
	}
	pg := enginetest.StartPostgres(t)
	taskstoretest.RunOutage(t, taskstoretest.Outage{
		Open: func(t *testing.T, clock func() time.Time) taskstore.Store {
			s, err := Open(t.Context(), pg.NewDatabase(t), Options{Now: clock})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return s
		},
		Break: func(*testing.T) { pg.Stop() },
		Mend:  func(t *testing.T) { pg.Restart(t) },
	})
}

// logRecorder is a slog.Handler that keeps the messages it is given.
type logRecorder struct {
	mu       sync.Mutex
	messages []string
	attrs    []map[string]string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	attrs := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.messages = append(r.messages, rec.Message)
	r.attrs = append(r.attrs, attrs)
	return nil
}

// find returns the attributes of each record with message msg.
func (r *logRecorder) find(msg string) []map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var found []map[string]string
	for i, m := range r.messages {
		if m == msg {
			found = append(found, r.attrs[i])
		}
	}
	return found
}

// awaitPing waits until s answers, at most a minute; the failures meanwhile must be transient.
func awaitPing(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := s.Ping(t.Context())
		switch {
		case err == nil:
			return
		case !fault.IsTransient(err):
			t.Fatalf("Ping: %v; want success or a transient error", err)
		case time.Now().After(deadline):
			t.Fatalf("the store did not become usable within a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOpenWhileDown: a store opened while its server is down opens anyway, says that it waits (in its
// errors and, not too often, in its log), and becomes usable by itself once the server is up.
func TestOpenWhileDown(t *testing.T) {
	if testing.Short() {
		t.Skip("server restart skipped with -short")
	}
	pg := enginetest.StartPostgres(t)
	dsn := pg.NewDatabase(t)
	pg.Stop()

	logs := &logRecorder{}
	opened := time.Now()
	s := openStore(t, dsn, Options{Logger: slog.New(logs)})
	ctx := t.Context()
	_, createErr := s.Create(ctx, taskstore.CreateParams{})
	_, countsErr := s.Counts(ctx)
	for name, err := range map[string]error{"Ping": s.Ping(ctx), "Create": createErr, "Counts": countsErr} {
		if !fault.IsTransient(err) || !strings.Contains(err.Error(), "waiting for PostgreSQL") {
			t.Errorf("%s before the server is up: %v; want a transient error saying the store waits", name, err)
		}
	}
	// The backoff tries many times in a few seconds; the log says so once per waitLogEvery.
	time.Sleep(3 * time.Second)
	waits := logs.find("pgstore: waiting for PostgreSQL")
	if len(waits) == 0 || waits[0]["where"] != s.where || waits[0]["err"] == "" {
		t.Fatalf("log while waiting: %v; want where %s and the error", waits, s.where)
	}
	if limit := 1 + int(time.Since(opened)/waitLogEvery); len(waits) > limit {
		t.Errorf("%d waiting messages in %v, want at most %d", len(waits), time.Since(opened), limit)
	}

	pg.Restart(t)
	awaitPing(t, s)
	if got, want := schemaVersions(t, s), wantVersions(t); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations = %v, want %v", got, want)
	}
	if id, err := s.Create(ctx, taskstore.CreateParams{}); err != nil || id != 0 {
		t.Fatalf("Create once the server is up = %d, %v; want 0", id, err)
	}
	if task, err := s.Claim(ctx, time.Minute); err != nil || task.ID != 0 {
		t.Fatalf("Claim once the server is up = %+v, %v", task, err)
	}
	if len(logs.find("pgstore: connected to PostgreSQL")) != 1 {
		t.Errorf("no log of the connection once the server was up")
	}
}

// TestClassify: the errors of an engine that cannot answer now are transient, out of space among them;
// the answers of the server to the request, and whatever follows the end of the caller's context, are
// returned as they are.
func TestClassify(t *testing.T) {
	live := context.Background()
	canceled, cancel := context.WithCancel(live)
	cancel()
	server := func(code string) error { return fmt.Errorf("query: %w", &pgconn.PgError{Code: code, Message: "m"}) }
	for _, tc := range []struct {
		name               string
		ctx                context.Context
		err                error
		transient, noSpace bool
	}{
		{"disk full", live, server("53100"), true, true},
		{"out of memory", live, server("53200"), true, false},
		{"too many connections", live, server("53300"), true, false},
		{"connection failure", live, server("08006"), true, false},
		{"admin shutdown", live, server("57P01"), true, false},
		{"crash shutdown", live, server("57P02"), true, false},
		{"starting up", live, server("57P03"), true, false},
		{"serialization failure", live, server("40001"), true, false},
		{"deadlock", live, server("40P01"), true, false},
		{"unique violation", live, server("23505"), false, false},
		{"authentication failed", live, server("28P01"), false, false},
		{"no such database", live, server("3D000"), false, false},
		{"query canceled", live, server("57014"), false, false},
		{"connection refused", live, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true, false},
		{"connection reset", live, fmt.Errorf("receive: %w", syscall.ECONNRESET), true, false},
		{"unexpected EOF", live, fmt.Errorf("receive: %w", io.ErrUnexpectedEOF), true, false},
		{"connection closed", live, fmt.Errorf("query: %w", pgconn.ErrConnClosed), true, false},
		{"a deadline of our own", live, fmt.Errorf("ping: %w", context.DeadlineExceeded), true, false},
		{"the caller's cancellation", canceled, fmt.Errorf("query: %w", context.Canceled), false, false},
		{"after the caller's cancellation", canceled, server("57P01"), false, false},
		{"no rows", live, pgx.ErrNoRows, false, false},
		{"a sentinel", live, taskstore.ErrNotFound, false, false},
		{"a local error", live, errors.New("cannot encode"), false, false},
	} {
		got := classify(tc.ctx, tc.err)
		if fault.IsTransient(got) != tc.transient || fault.IsNoSpace(got) != tc.noSpace || !errors.Is(got, tc.err) {
			t.Errorf("%s: classify(%v) = %v; want transient %v, out of space %v, wrapping the cause",
				tc.name, tc.err, got, tc.transient, tc.noSpace)
		}
		if !tc.transient && got != tc.err {
			t.Errorf("%s: classify changed a permanent error: %v", tc.name, got)
		}
	}
	if classify(live, nil) != nil {
		t.Error("classify(nil) is not nil")
	}
}

// testMigrateFromV1: a database of schema version 1 (before retries and idempotency keys) upgrades when
// a newer program opens it, keeps its tasks as they were, and works on with the new features.
func testMigrateFromV1(t *testing.T, pg *enginetest.Postgres) {
	ctx := t.Context()
	dsn := pg.NewDatabase(t)
	first, err := migrationFiles.ReadFile("migrations/0001_tasks.sql")
	if err != nil {
		t.Fatal(err)
	}
	old, err := open(ctx, dsn, Options{}, fstest.MapFS{"migrations/0001_tasks.sql": {Data: first}})
	if err != nil {
		t.Fatalf("open at version 1: %v", err)
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	ts := func(d time.Duration) time.Time { return now.Add(d) }
	// The rows as version 1's statements left them: queued, pending, in progress, lapsed, finished,
	// failed, and queued again after a failed attempt.
	if _, err := old.pool.Exec(ctx, `
		INSERT INTO tasks (id, state, pending, attempts, max_attempts, token, error, created_at, started_at,
			finished_at, lease_until, op) VALUES
		(0, 0, false, 0, 3, 0, '', $1, NULL, NULL, NULL, 'swap'),
		(1, 0, true, 0, 3, 0, '', $2, NULL, NULL, NULL, ''),
		(2, 1, false, 1, 3, 1, '', $3, $4, NULL, $5, 'grayscale'),
		(3, 1, false, 1, 3, 1, '', $6, $7, NULL, $8, ''),
		(4, 2, false, 1, 3, 1, '', $9, $9, $10, NULL, ''),
		(5, 3, false, 1, 1, 1, 'broken', $10, $10, $11, NULL, ''),
		(6, 0, false, 1, 3, 1, 'flaky', $11, $11, NULL, NULL, '')`,
		ts(-9*time.Hour), ts(-8*time.Hour), ts(-7*time.Hour), ts(-time.Minute), ts(time.Hour), ts(-6*time.Hour),
		ts(-time.Hour), ts(-time.Minute), ts(-5*time.Hour), ts(-4*time.Hour), ts(-3*time.Hour)); err != nil {
		t.Fatalf("insert version-1 rows: %v", err)
	}
	if _, err := old.pool.Exec(ctx, `UPDATE task_ids SET next_id = 7`); err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	clock := func() time.Time { return now }
	s := openStore(t, dsn, Options{Now: clock})
	if got, want := schemaVersions(t, s), wantVersions(t); !slices.Equal(got, want) {
		t.Fatalf("schema_migrations after the upgrade = %v, want %v", got, want)
	}
	taskstoretest.CheckUpgradedTasks(t, s, now)
	taskstoretest.CheckUpgradedWorks(t, s, now)
}

// testMaxConns: the pool never opens more sessions than MaxConns, however many callers wait, and 0
// means pgxpool's default.
func testMaxConns(t *testing.T, pg *enginetest.Postgres) {
	dsn := pg.NewDatabase(t)
	s := openStore(t, dsn, Options{MaxConns: 2})
	if got := s.pool.Stat().MaxConns(); got != 2 {
		t.Fatalf("pool MaxConns = %d, want 2", got)
	}
	admin, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				id, err := s.Create(ctx, taskstore.CreateParams{})
				if err == nil {
					_, err = s.Get(ctx, id)
				}
				if err == nil {
					_, err = s.Claim(ctx, time.Minute)
					// A claim whose snapshot predates another caller's newest task may find the older
					// ones locked by concurrent claims and none free (SKIP LOCKED): load, not a failure.
					if errors.Is(err, taskstore.ErrNoTask) {
						err = nil
					}
				}
				if err != nil && ctx.Err() == nil {
					t.Errorf("load: %v", err)
					return
				}
			}
		})
	}
	peak := 0
	for range 20 {
		var n int
		if err := admin.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'imgmill pgstore'`).Scan(&n); err != nil {
			t.Error(err)
			break
		}
		peak = max(peak, n)
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if peak == 0 || peak > 2 {
		t.Errorf("peak sessions of the store = %d, want 1 or 2", peak)
	}
	if n := s.pool.Stat().TotalConns(); n > 2 {
		t.Errorf("pool holds %d connections, want at most 2", n)
	}

	def := openStore(t, dsn, Options{})
	if got := def.pool.Stat().MaxConns(); got < 4 {
		t.Errorf("default pool MaxConns = %d, want pgxpool's default (at least 4)", got)
	}
}

// TestDurableAcrossKill: with fsync on, every acknowledged write survives the server's SIGKILL, and a
// Store rides out the server's restart (its pool replaces the broken connections).
func TestDurableAcrossKill(t *testing.T) {
	if testing.Short() {
		t.Skip("server restart skipped with -short")
	}
	pg := enginetest.StartPostgresWith(t, enginetest.StartPostgresOptions{Durable: true})
	s := openStore(t, pg.NewDatabase(t), Options{})
	ctx := t.Context()
	const n = 50
	for i := range n {
		if _, err := s.Create(ctx, taskstore.CreateParams{Op: fmt.Sprint("op", i)}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.Claim(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(ctx, c.ID, c.Token); err != nil {
		t.Fatal(err)
	}
	before := listAll(t, s)

	pg.Kill()
	pg.Restart(t)
	// The pool's connections died with the server; each failed call discards one, so within a few
	// calls the store works again.
	var counts taskstore.Counts
	for try := 0; ; try++ {
		if counts, err = s.Counts(ctx); err == nil || try == 20 {
			break
		}
		if !fault.IsTransient(err) {
			t.Fatalf("Counts after the restart: %v; want success or a transient error", err)
		}
	}
	if err != nil || counts != (taskstore.Counts{Queued: n - 1, Finished: 1}) {
		t.Fatalf("Counts after the restart = %+v, %v", counts, err)
	}
	if after := listAll(t, s); !slices.Equal(after, before) {
		t.Fatalf("tasks after kill and restart differ:\n got  %+v\n want %+v", after, before)
	}
	if id, err := s.Create(ctx, taskstore.CreateParams{}); err != nil || id != n {
		t.Fatalf("Create after the restart = %d, %v; want %d", id, err, n)
	}
}

// fill appends n claimable tasks in one statement, taking their ids from the counter as Create does;
// Create per task would take minutes for 1M.
func fill(tb testing.TB, s *Store, n int) { fillOwned(tb, s, n, 0) }

// fillOwned is fill with the tasks dealt round to owners "o0", "o1", ... (owner "" when owners is 0).
func fillOwned(tb testing.TB, s *Store, n, owners int) {
	tb.Helper()
	_, err := s.pool.Exec(context.Background(), `
		WITH next AS (UPDATE task_ids SET next_id = next_id + $1::bigint RETURNING next_id - $1::bigint AS first)
		INSERT INTO tasks (id, state, pending, attempts, max_attempts, created_at, owner)
		SELECT first + g, 0, false, 0, 3, $2,
			CASE WHEN $3::int = 0 THEN '' ELSE 'o' || (g % greatest($3::int, 1)) END
		FROM next, generate_series(0::bigint, $1::bigint - 1) g`,
		n, time.Now(), owners)
	if err != nil {
		tb.Fatalf("fill %d: %v", n, err)
	}
}

func testFill(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{})
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

// explain returns the plan PostgreSQL chooses for query with args.
func explain(t *testing.T, s *Store, query string, args pgx.NamedArgs) string {
	t.Helper()
	rows, err := s.pool.Query(t.Context(), "EXPLAIN "+query, args)
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, query)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// testQueryPlansUseIndexes checks, on a table shaped like a long-running one (mostly finished tasks,
// a short queue, a few in progress, pending and failed), that every statement finds its rows through
// an index and none reads the whole table.
func testQueryPlansUseIndexes(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{})
	ctx := t.Context()
	fillOwned(t, s, 100_000, 1000) // a claim must find the owner whose turn it is through an index
	for _, q := range []string{
		`UPDATE tasks SET state = 2, finished_at = created_at WHERE id < 99000`,
		// Live leases, as most are: a lease index that looked empty would be a cheap plan for Extend.
		`UPDATE tasks SET state = 1, lease_until = created_at + interval '1 hour', attempts = 1, token = 1
			WHERE id % 100 = 1 AND id >= 99000`,
		`UPDATE tasks SET pending = true WHERE id % 100 = 2 AND id >= 99000`,
		`UPDATE tasks SET state = 3 WHERE id % 1000 = 3`,
		`VACUUM ANALYZE tasks`,
		`VACUUM ANALYZE owners`,
	} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	now := time.Now()
	var (
		id = pgx.NamedArgs{"id": int64(99100), "token": int64(1), "now": now, "until": now, "origin": "x",
			"reason": "x", "permanent": false, "state": int16(1), "waits": []time.Duration{time.Second},
			"key": "k", "stale": int64(99100)}
		timed = pgx.NamedArgs{"now": now, "until": now, "cutoff": now}
	)
	for _, tc := range []struct {
		name, query string
		index       string // one of these, separated by |
		args        pgx.NamedArgs
	}{
		{"claim", claimSQL, claimableIndex, timed},
		{"claim's turn", claimSQL, turnIndex, timed},
		{"sweep", sweepSQL, leaseIndex, timed},
		{"settle", settleSQL, retryIndex, timed},
		{"find key", findKeySQL, keyIndex, id},
		{"clear key", clearKeySQL, primaryKey + "|" + keyIndex, id},
		{"retry", retrySQL, primaryKey, id},
		{"abandon", abandonSQL, primaryKey, id},
		{"expire", expireSQL, pendingIndex, timed},
		// The lease index holds only in-progress tasks, as few as the workers: with few of them the
		// planner may walk it rather than the primary key, and either is cheap.
		{"extend", extendSQL, primaryKey + "|" + leaseIndex, id},
		{"finish", finishSQL, primaryKey, id},
		{"fail", failSQL, primaryKey, id},
		{"release", releaseSQL, primaryKey + "|" + leaseIndex, id},
		{"set", setSQL, primaryKey, id},
		{"activate", activateSQL, primaryKey, id},
		{"probe", probeSQL, primaryKey, id},
		{"get", getSQL, primaryKey, id},
		{"list", listSQL, primaryKey, pgx.NamedArgs{"from": int64(5000), "now": now, "limit": listPage}},
	} {
		plan := explain(t, s, tc.query, tc.args)
		if !slices.ContainsFunc(strings.Split(tc.index, "|"), func(index string) bool {
			return strings.Contains(plan, " using "+index+" on ")
		}) {
			t.Errorf("%s plan does not use %s:\n%s", tc.name, tc.index, plan)
		}
		if strings.Contains(plan, "Seq Scan on tasks") {
			t.Errorf("%s plan reads the whole table:\n%s", tc.name, plan)
		}
		t.Logf("%s plan:\n%s", tc.name, plan)
	}

	// Counts adds up several parts, each through its own partial index: none reads the table.
	plan := explain(t, s, countsSQL, timed)
	for _, index := range []string{claimableIndex, retryIndex, pendingIndex, leaseIndex, failedIndex} {
		if !strings.Contains(plan, " using "+index+" on tasks") {
			t.Errorf("counts plan does not use %s:\n%s", index, plan)
		}
	}
	if strings.Contains(plan, "Seq Scan on tasks") || strings.Contains(plan, primaryKey) {
		t.Errorf("counts plan reads the whole table:\n%s", plan)
	}
	t.Logf("counts plan:\n%s", plan)
}

func testNonPositiveLease(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{})
	ctx := t.Context()
	if _, err := s.Create(ctx, taskstore.CreateParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, 0); err == nil {
		t.Error("Claim with zero lease succeeded")
	}
	if err := s.Set(ctx, 0, wire.InProgress, -time.Second); err == nil {
		t.Error("Set InProgress with negative lease succeeded")
	}
	if task, err := s.Get(ctx, 0); err != nil || task.State != wire.NotStarted || task.Attempts != 0 ||
		task.Token != 0 {
		t.Errorf("after rejected calls: %+v, %v", task, err)
	}
	c, err := s.Claim(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Extend(ctx, 0, c.Token, 0); err == nil {
		t.Error("Extend with zero lease succeeded")
	}
	if task, err := s.Get(ctx, 0); err != nil || !task.LeaseUntil.Equal(c.LeaseUntil) {
		t.Errorf("after rejected Extend: %+v, %v", task, err)
	}
	if _, err := s.ExpirePending(ctx, -time.Second); err == nil {
		t.Error("ExpirePending with a negative age succeeded")
	}
}

func testErrorsWrapped(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{})
	// ErrNoTask is the normal idle answer; it should arrive bare.
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
	if _, err := s.Counts(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Counts with canceled context: %v, want context.Canceled in the chain", err)
	}
}

// testListPages: List crosses page boundaries without losing or repeating a task, holds no
// connection between pages (so a one-connection pool can serve calls from inside the loop), and
// holds none after an early stop.
func testListPages(t *testing.T, pg *enginetest.Postgres) {
	s := openStore(t, pg.NewDatabase(t), Options{MaxConns: 1})
	const n = 3*listPage + 7
	fill(t, s, n)
	ctx := t.Context()
	next := int64(0)
	for task, err := range s.List(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if task.ID != next {
			t.Fatalf("List yielded id %d, want %d", task.ID, next)
		}
		if got := s.pool.Stat().AcquiredConns(); got != 0 {
			t.Fatalf("during List %d connections acquired, want 0", got)
		}
		if task.ID%listPage == 0 {
			if err := s.Set(ctx, task.ID, wire.Finished, 0); err != nil {
				t.Fatalf("Set inside List: %v", err)
			}
		}
		next++
	}
	if next != n {
		t.Fatalf("List yielded %d tasks, want %d", next, n)
	}
	for range s.List(ctx) {
		break
	}
	if got := s.pool.Stat().AcquiredConns(); got != 0 {
		t.Fatalf("after breaking out of List %d connections acquired, want 0", got)
	}
	if c, err := s.Counts(ctx); err != nil || c.Finished != 4 || c.Queued != n-4 {
		t.Fatalf("Counts = %+v, %v", c, err)
	}
}

// BenchmarkClaim measures one Claim (settle lapsed leases and claim, one round trip) plus the Finish
// of the claimed task, with a short and a long queue, of one owner and of 10,000 owners taking turns;
// with index-driven claims all should cost about the same. The server runs with fsync off, so this is
// the statements' cost, not the disk's.
func BenchmarkClaim(b *testing.B) {
	pg := enginetest.StartPostgres(b)
	for _, tc := range []struct {
		name           string
		queued, owners int
	}{
		{"queued=1000", 1_000, 0},
		{"queued=1000000", 1_000_000, 0},
		{"queued=1000000/owners=10000", 1_000_000, 10_000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.queued > 1_000 && testing.Short() {
				b.Skip("1M-task queue skipped with -short")
			}
			s := openStore(b, pg.NewDatabase(b), Options{})
			fillOwned(b, s, tc.queued, tc.owners)
			ctx := context.Background()
			for _, q := range []string{`VACUUM ANALYZE tasks`, `VACUUM ANALYZE owners`} {
				if _, err := s.pool.Exec(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			left, owner := tc.queued, ""
			for b.Loop() {
				if left == 0 {
					// Requeue everything so the queue depth stays what the name says.
					b.StopTimer()
					if _, err := s.pool.Exec(ctx, `UPDATE tasks SET state = 0, lease_until = NULL, finished_at = NULL`); err != nil {
						b.Fatal(err)
					}
					left = tc.queued
					b.StartTimer()
				}
				task, err := s.Claim(ctx, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				if tc.owners > 1 && task.Owner == owner {
					b.Fatalf("claimed two tasks of %s in a row: owners must take turns", owner)
				}
				if _, err := s.Finish(ctx, task.ID, task.Token); err != nil {
					b.Fatal(err)
				}
				left--
				owner = task.Owner
			}
		})
	}
}

// BenchmarkCounts measures Counts on a table of 1M tasks: mostly finished with a short queue (a
// long-running service), and all queued.
func BenchmarkCounts(b *testing.B) {
	pg := enginetest.StartPostgres(b)
	for _, tc := range []struct {
		name     string
		finished string
	}{
		{"finished=999000/queued=1000", `UPDATE tasks SET state = 2, finished_at = created_at WHERE id < 999000`},
		{"queued=1000000", ``},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if testing.Short() {
				b.Skip("1M-task table skipped with -short")
			}
			s := openStore(b, pg.NewDatabase(b), Options{})
			fill(b, s, 1_000_000)
			ctx := context.Background()
			for _, q := range []string{tc.finished, `VACUUM ANALYZE tasks`} {
				if _, err := s.pool.Exec(ctx, q); q != "" && err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				if _, err := s.Counts(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// testTombstoneKeepsNothingPersonal: a tombstone keeps nothing of who asked for what (owner, operation,
// error, idempotency key, size), and its owner's rows (usage, and the turn) go once it keeps nothing.
func testTombstoneKeepsNothingPersonal(t *testing.T, pg *enginetest.Postgres) {
	ctx := t.Context()
	s := openStore(t, pg.NewDatabase(t), Options{})
	taskstoretest.CheckTombstoneKeepsNothing(t, s, func(id int64) (taskstoretest.TombstoneRow, error) {
		var r taskstoretest.TombstoneRow
		var key *string
		err := s.pool.QueryRow(ctx, `SELECT state, owner, op, error, name, idem_key, size FROM tasks WHERE id = $1`, id).
			Scan(&r.State, &r.Owner, &r.Op, &r.Error, &r.Name, &key, &r.Size)
		r.KeyKept = key != nil
		return r, err
	}, func(table, owner string) (int, error) {
		var n int
		err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE owner = $1`, owner).Scan(&n)
		return n, err
	})
}

// testSharedUsage: two Stores creating, activating and deleting one owner's tasks at once keep its
// usage exact.
func testSharedUsage(t *testing.T, pg *enginetest.Postgres) {
	ctx := t.Context()
	stores := sharedPair(t, pg, nil)
	const perStore = 40
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perStore {
				id, err := s.Create(ctx, taskstore.CreateParams{Pending: true, Owner: "shared"})
				if err == nil {
					err = s.Activate(ctx, id, 10)
				}
				if err == nil && j%2 == i%2 {
					err = s.Delete(ctx, id)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	u, err := stores[0].Usage(ctx, "shared")
	if err != nil {
		t.Fatal(err)
	}
	if want := (taskstore.Usage{Tasks: perStore, Bytes: perStore * 10}); u != want {
		t.Errorf("Usage = %+v, want %+v", u, want)
	}
}

// testMigrateFromV5: a database of schema version 5 (before usage) upgrades with every owner's tasks
// counted, tombstones stripped of their owner, and owners that keep nothing forgotten.
func testMigrateFromV5(t *testing.T, pg *enginetest.Postgres) {
	ctx := t.Context()
	dsn := pg.NewDatabase(t)
	fsys := fstest.MapFS{}
	for _, name := range []string{"0001_tasks.sql", "0002_retries.sql", "0003_owners.sql", "0004_cancel_delete.sql", "0005_retention.sql"} {
		b, err := migrationFiles.ReadFile("migrations/" + name)
		if err != nil {
			t.Fatal(err)
		}
		fsys["migrations/"+name] = &fstest.MapFile{Data: b}
	}
	old, err := open(ctx, dsn, Options{}, fsys)
	if err != nil {
		t.Fatalf("open at version 5: %v", err)
	}
	// Version 5's own triggers keep owners as the rows go in: alice has a queued and a finished task,
	// bob a queued one, carol only a tombstone (queued once, then deleted).
	for _, q := range []string{
		`INSERT INTO tasks (id, state, pending, attempts, max_attempts, created_at, owner) VALUES
			(0, 0, false, 0, 3, now(), 'alice'), (1, 2, false, 1, 3, now(), 'alice'),
			(2, 0, false, 0, 3, now(), 'bob'), (3, 0, false, 0, 3, now(), 'carol')`,
		`UPDATE tasks SET state = 5, op = '', error = '', finished_at = now() WHERE id = 3`,
		`UPDATE task_ids SET next_id = 4`,
	} {
		if _, err := old.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}

	s := openStore(t, dsn, Options{})
	taskstoretest.CheckUsageUpgraded(t, s, func() (owner string, carol int, err error) {
		err = s.pool.QueryRow(ctx, `SELECT owner, (SELECT count(*) FROM owners WHERE owner = 'carol') FROM tasks WHERE id = 3`).
			Scan(&owner, &carol)
		return owner, carol, err
	})
}
