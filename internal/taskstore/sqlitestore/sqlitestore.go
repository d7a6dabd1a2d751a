// Package sqlitestore is the embedded task store: a single SQLite database file (WAL mode) driven
// through modernc.org/sqlite, so the binary needs no cgo and no separate database server.
//
// Concurrency design: SQLite allows one writer at a time, so every write goes through one *sql.DB
// limited to a single connection; callers queue on Go's connection pool instead of spinning on
// SQLITE_BUSY. Reads (Get, List) use a second, query-only pool; in WAL mode readers work from a
// snapshot and never wait for the writer.
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"iter"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Options configures a Store.
type Options struct {
	// Now returns the current time; nil means time.Now. Tests inject a fake clock so lease
	// expiry can be checked without sleeping.
	Now func() time.Time
}

// Store is a taskstore.Store backed by a SQLite file. It is safe for concurrent use.
type Store struct {
	w   *sql.DB // the single writer connection
	r   *sql.DB // query-only readers
	now func() time.Time

	// Prepared statements for the hot paths. Those on w stay prepared on its one connection, so
	// a transaction's tx.StmtContext reuses them rather than re-preparing.
	create, activate, requeue, claim, finish, exists, set *sql.Stmt // on w
	get                                                   *sql.Stmt // on r
}

var _ taskstore.Store = (*Store)(nil)

// Index names are referenced by the query-plan test.
const (
	claimableIndex = "tasks_claimable"
	leaseIndex     = "tasks_lease"
)

// migrations returns the schema steps; element i upgrades a database from user_version i to i+1.
// A function rather than a package variable keeps the package free of mutable state.
func migrations() []string {
	return []string{
		// Times are unix nanoseconds; NULL means "zero time". id is the rowid alias, so MAX(id) is a
		// b-tree edge lookup. The partial indexes hold only the rows Claim looks for, so claiming
		// stays O(log n) however many finished tasks accumulate.
		`CREATE TABLE tasks (
			id          INTEGER PRIMARY KEY,
			state       INTEGER NOT NULL,
			pending     INTEGER NOT NULL,
			attempts    INTEGER NOT NULL DEFAULT 0,
			created_at  INTEGER NOT NULL,
			started_at  INTEGER,
			finished_at INTEGER,
			lease_until INTEGER
		) STRICT;
		CREATE INDEX ` + claimableIndex + ` ON tasks (id) WHERE state = 0 AND pending = 0;
		CREATE INDEX ` + leaseIndex + ` ON tasks (lease_until) WHERE state = 1;`,
	}
}

const (
	createSQL = `INSERT INTO tasks (id, state, pending, attempts, created_at)
		SELECT IFNULL(MAX(id), -1) + 1, 0, :pending, 0, :now FROM tasks
		RETURNING id`

	activateSQL = `UPDATE tasks SET pending = 0 WHERE id = :id`

	// requeueSQL returns lapsed leases to the queue so that claimSQL finds them through the
	// claimable index, in id order with the never-started tasks.
	requeueSQL = `UPDATE tasks SET state = 0, lease_until = NULL
		WHERE state = 1 AND lease_until <= :now`

	claimSQL = `UPDATE tasks
		SET state = 1, attempts = attempts + 1, started_at = :now, lease_until = :until
		WHERE id = (SELECT id FROM tasks WHERE state = 0 AND pending = 0 ORDER BY id LIMIT 1)
		RETURNING id, pending, attempts, created_at`

	// finishSQL accepts only a live lease: a lapsed one belongs to whoever claims the task next.
	finishSQL = `UPDATE tasks SET state = 2, finished_at = :now, lease_until = NULL
		WHERE id = :id AND state = 1 AND lease_until > :now
		RETURNING id`

	existsSQL = `SELECT 1 FROM tasks WHERE id = :id`

	setSQL = `UPDATE tasks SET
		state       = :state,
		started_at  = CASE WHEN :state = 1 THEN :now ELSE started_at END,
		lease_until = CASE WHEN :state = 1 THEN :until END,
		finished_at = CASE WHEN :state = 2 THEN :now END
		WHERE id = :id`

	// taskColumns reports a lapsed lease as not started without writing, so readers stay on the
	// read-only pool; the next Claim makes it so in the table.
	taskColumns = `id,
		CASE WHEN state = 1 AND lease_until <= :now THEN 0 ELSE state END,
		pending, attempts, created_at, started_at, finished_at,
		CASE WHEN state = 1 AND lease_until > :now THEN lease_until END`

	getSQL  = `SELECT ` + taskColumns + ` FROM tasks WHERE id = :id`
	listSQL = `SELECT ` + taskColumns + ` FROM tasks ORDER BY id`
)

// Open opens (creating if needed) the task database at path and migrates its schema.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		// Two pools must reach the same database, so it has to be a plain file path.
		return nil, fmt.Errorf("sqlitestore: open %q: need a file path", path)
	}
	s := &Store{now: opts.Now}
	if s.now == nil {
		s.now = time.Now
	}

	// Pragmas go in the DSN so that every connection the pools (re)open gets them.
	// synchronous(FULL) fsyncs the WAL on every commit: an id answered to a client survives
	// kill -9 and power loss. _txlock=immediate takes the write lock at BEGIN, so a transaction
	// never fails to upgrade a read lock (another process might hold the file too).
	var err error
	s.w, err = sql.Open("sqlite", dsn(path,
		"_pragma=busy_timeout(5000)",
		"_pragma=journal_mode(WAL)",
		"_pragma=synchronous(FULL)",
		"_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %q: %w", path, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxIdleTime(0) // keep the one connection, and the statements prepared on it

	if err := s.init(ctx, path); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlitestore: open %q: %w", path, err), s.Close())
	}
	return s, nil
}

func (s *Store) init(ctx context.Context, path string) error {
	// journal_mode is a property of the file; read it back because SQLite silently keeps the old
	// mode where WAL is impossible (e.g. some network file systems).
	var mode string
	if err := s.w.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
		return fmt.Errorf("read journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, want wal", mode)
	}
	if err := s.migrate(ctx); err != nil {
		return err
	}

	// The reader pool is opened after the writer put the file in WAL mode. It is not capped: a
	// List consumer may call Get while iterating, which a full, capped pool would deadlock.
	var err error
	s.r, err = sql.Open("sqlite", dsn(path,
		"_pragma=busy_timeout(5000)",
		"_pragma=query_only(1)"))
	if err != nil {
		return err
	}
	s.r.SetMaxIdleConns(4)
	if err := s.r.PingContext(ctx); err != nil {
		return fmt.Errorf("open reader: %w", err)
	}

	for _, p := range []struct {
		db    *sql.DB
		stmt  **sql.Stmt
		query string
	}{
		{s.w, &s.create, createSQL},
		{s.w, &s.activate, activateSQL},
		{s.w, &s.requeue, requeueSQL},
		{s.w, &s.claim, claimSQL},
		{s.w, &s.finish, finishSQL},
		{s.w, &s.exists, existsSQL},
		{s.w, &s.set, setSQL},
		{s.r, &s.get, getSQL},
	} {
		if *p.stmt, err = p.db.PrepareContext(ctx, p.query); err != nil {
			return fmt.Errorf("prepare %q: %w", firstLine(p.query), err)
		}
	}
	return nil
}

func (s *Store) migrate(ctx context.Context) (err error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer rollback(tx, &err)
	var version int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return fmt.Errorf("migrate: read user_version: %w", err)
	}
	steps := migrations()
	schemaVersion := len(steps)
	if version > schemaVersion {
		return fmt.Errorf("migrate: schema version %d is newer than this program's %d", version, schemaVersion)
	}
	for v := version; v < schemaVersion; v++ {
		if _, err := tx.ExecContext(ctx, steps[v]); err != nil {
			return fmt.Errorf("migrate to version %d: %w", v+1, err)
		}
	}
	if version < schemaVersion {
		// PRAGMA takes no bound parameters; schemaVersion is an int we computed.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion)); err != nil {
			return fmt.Errorf("migrate: set user_version: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	return nil
}

// rollback ends tx if it was not committed, adding a rollback failure to *err. It is meant for
// defer, so every return path releases the single writer connection.
func rollback(tx *sql.Tx, err *error) {
	if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
		*err = errors.Join(*err, rbErr)
	}
}

// dsn builds a SQLite URI for path with the given query parameters. The file: form makes SQLite
// parse the query, so path characters that are special in a URI are escaped.
func dsn(path string, params ...string) string {
	r := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")
	return "file:" + r.Replace(path) + "?" + strings.Join(params, "&")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// Create adds a not-started task and returns its id.
func (s *Store) Create(ctx context.Context, pending bool) (int64, error) {
	// One writer connection serializes inserts, so MAX(id)+1 yields consecutive ids.
	var id int64
	err := s.create.QueryRowContext(ctx, sql.Named("pending", pending), sql.Named("now", nanos(s.now()))).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("sqlitestore: create: %w", err)
	}
	return id, nil
}

// Activate makes a pending task claimable.
func (s *Store) Activate(ctx context.Context, id int64) error {
	res, err := s.activate.ExecContext(ctx, sql.Named("id", id))
	if err != nil {
		return fmt.Errorf("sqlitestore: activate %d: %w", id, err)
	}
	// SQLite counts matched rows, so an already active task still reports 1.
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("sqlitestore: activate %d: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("sqlitestore: activate %d: %w", id, taskstore.ErrNotFound)
	}
	return nil
}

// Get returns one task.
func (s *Store) Get(ctx context.Context, id int64) (taskstore.Task, error) {
	t, err := scanTask(s.get.QueryRowContext(ctx, sql.Named("id", id), sql.Named("now", nanos(s.now()))))
	if errors.Is(err, sql.ErrNoRows) {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: get %d: %w", id, taskstore.ErrNotFound)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: get %d: %w", id, err)
	}
	return t, nil
}

// Claim takes the lowest-id claimable task and leases it for lease.
func (s *Store) Claim(ctx context.Context, lease time.Duration) (t taskstore.Task, err error) {
	if lease <= 0 {
		// A non-positive lease would hand out a task that is already lapsed.
		return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: lease %v is not positive", lease)
	}
	now := s.now()
	until := now.Add(lease)

	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: %w", err)
	}
	defer rollback(tx, &err)
	if _, err := tx.StmtContext(ctx, s.requeue).ExecContext(ctx, sql.Named("now", nanos(now))); err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: requeue lapsed leases: %w", err)
	}
	var created int64
	err = tx.StmtContext(ctx, s.claim).QueryRowContext(ctx,
		sql.Named("now", nanos(now)), sql.Named("until", nanos(until)),
	).Scan(&t.ID, &t.Pending, &t.Attempts, &created)
	if errors.Is(err, sql.ErrNoRows) {
		// Commit anyway: the requeue is correct on its own and saves the next caller the work.
		if err := tx.Commit(); err != nil {
			return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: commit: %w", err)
		}
		return taskstore.Task{}, taskstore.ErrNoTask
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: commit: %w", err)
	}
	t.State = taskstore.InProgress
	t.CreatedAt = fromNanos(created)
	t.StartedAt = fromNanos(nanos(now))
	t.LeaseUntil = fromNanos(nanos(until))
	return t, nil
}

// Finish marks an in-progress task with a live lease finished.
func (s *Store) Finish(ctx context.Context, id int64) error {
	var got int64
	err := s.finish.QueryRowContext(ctx, sql.Named("id", id), sql.Named("now", nanos(s.now()))).Scan(&got)
	if err == nil {
		return nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("sqlitestore: finish %d: %w", id, err)
	}
	// Tasks are never deleted, so checking existence after the failed update is race-free.
	if err := s.checkExists(ctx, id); err != nil {
		return fmt.Errorf("sqlitestore: finish %d: %w", id, err)
	}
	return fmt.Errorf("sqlitestore: finish %d: %w", id, taskstore.ErrNotInProgress)
}

func (s *Store) checkExists(ctx context.Context, id int64) error {
	var one int
	err := s.exists.QueryRowContext(ctx, sql.Named("id", id)).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return taskstore.ErrNotFound
	}
	return err
}

// Set overwrites a task's state; InProgress starts a lease of the given length.
func (s *Store) Set(ctx context.Context, id int64, state taskstore.State, lease time.Duration) error {
	if !state.Valid() {
		return fmt.Errorf("sqlitestore: set %d to %d: %w", id, int(state), taskstore.ErrInvalidState)
	}
	now := s.now()
	var until any // NULL unless in progress
	if state == taskstore.InProgress {
		if lease <= 0 {
			return fmt.Errorf("sqlitestore: set %d in progress: lease %v is not positive", id, lease)
		}
		until = nanos(now.Add(lease))
	}
	res, err := s.set.ExecContext(ctx,
		sql.Named("id", id), sql.Named("state", int64(state)),
		sql.Named("now", nanos(now)), sql.Named("until", until))
	if err != nil {
		return fmt.Errorf("sqlitestore: set %d: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("sqlitestore: set %d: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("sqlitestore: set %d: %w", id, taskstore.ErrNotFound)
	}
	return nil
}

// List yields every task in id order. It streams from one read snapshot; stopping early closes
// the rows and returns the connection to the pool.
func (s *Store) List(ctx context.Context) iter.Seq2[taskstore.Task, error] {
	return func(yield func(taskstore.Task, error) bool) {
		rows, err := s.r.QueryContext(ctx, listSQL, sql.Named("now", nanos(s.now())))
		if err != nil {
			yield(taskstore.Task{}, fmt.Errorf("sqlitestore: list: %w", err))
			return
		}
		defer rows.Close()
		for rows.Next() {
			t, err := scanTask(rows)
			if err != nil {
				yield(taskstore.Task{}, fmt.Errorf("sqlitestore: list: %w", err))
				return
			}
			if !yield(t, nil) {
				return
			}
		}
		if err := rows.Err(); err != nil {
			yield(taskstore.Task{}, fmt.Errorf("sqlitestore: list: %w", err))
		}
	}
}

// Close closes the statements and both pools.
func (s *Store) Close() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.create, s.activate, s.requeue, s.claim, s.finish, s.exists, s.set, s.get} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if s.r != nil {
		errs = append(errs, s.r.Close())
	}
	// The writer closes last so that, as the last connection, it checkpoints the WAL into the
	// main file and removes the -wal and -shm files.
	if s.w != nil {
		errs = append(errs, s.w.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sqlitestore: close: %w", err)
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanTask(sc scanner) (taskstore.Task, error) {
	var (
		t                          taskstore.Task
		state                      int64
		created                    int64
		started, finished, leaseTo sql.NullInt64
	)
	if err := sc.Scan(&t.ID, &state, &t.Pending, &t.Attempts, &created, &started, &finished, &leaseTo); err != nil {
		return taskstore.Task{}, err
	}
	t.State = taskstore.State(state)
	t.CreatedAt = fromNanos(created)
	t.StartedAt = fromNullNanos(started)
	t.FinishedAt = fromNullNanos(finished)
	t.LeaseUntil = fromNullNanos(leaseTo)
	return t, nil
}

// nanos converts t to the stored form, unix nanoseconds (valid for years 1678 to 2262).
func nanos(t time.Time) int64 { return t.UnixNano() }

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

func fromNullNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return fromNanos(n.Int64)
}
