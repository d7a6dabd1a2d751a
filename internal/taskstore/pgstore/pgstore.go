// Package pgstore is the task store on PostgreSQL, which several database services can share: the
// same semantics as sqlitestore (the embedded store), with claims that are safe across instances.
//
// Concurrency design: every write is one statement in its own transaction, except Claim's two (settle
// lapsed leases, then claim), which go together in one batch: one round trip. Claim picks the
// lowest claimable id through a partial index with FOR UPDATE SKIP LOCKED, so concurrent claimers, in
// one process or many, each take a different task without waiting for each other; the settling of
// lapsed leases skips locked rows the same way, so claims never wait on locks at all. Guarded writes
// (Extend, Finish, Fail, Release) are single UPDATEs on the primary key; when one matches nothing a
// probe read explains why. Everything relies on READ COMMITTED, where an UPDATE re-checks its
// condition on a row that changed under it, so the pool's sessions are pinned to it.
//
// Fencing: each task carries its own token, raised by one with every claim (Claim or Set InProgress)
// in the same UPDATE that claims it.
//
// Ids come from a one-row counter updated in Create's own statement: consecutive from 0 with no gaps,
// because a Create that fails gives its id back; the price is that Creates, across all instances,
// commit one at a time.
//
// Times come from Options.Now, never from PostgreSQL's clock.
//
// Wake-ups: statements that make a task claimable NOTIFY the other Stores (see Watch), so database
// services sharing the database hear of work another one accepted.
package pgstore

import (
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/taskstore"
)

// migrationFiles are the schema steps, NNNN_name.sql from 0001 up without gaps. A step, once released,
// never changes: databases out there were built by it.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// Options configures a Store.
type Options struct {
	// MaxConns caps the connection pool; 0 means pgxpool's default (pool_max_conns in the DSN, else
	// the larger of 4 and the number of CPUs). Watch uses one connection more, of its own.
	MaxConns int32
	// Now returns the current time; nil means time.Now. Tests inject a fake clock so lease expiry can
	// be checked without sleeping.
	Now func() time.Time
	// Logger receives migrations and Watch's reconnects; nil discards them.
	Logger *slog.Logger
}

// Store is a taskstore.Store backed by PostgreSQL. It is safe for concurrent use, and several Stores,
// in one process or many, can share one database.
type Store struct {
	pool   *pgxpool.Pool
	listen *pgx.ConnConfig // for Watch's dedicated connection
	now    func() time.Time
	log    *slog.Logger
	// origin tags this Store's notifications, so that its own Watch skips them: the database service
	// wakes its own waiters in-process.
	origin string
	// done ends when Close is called, and with it any Watch.
	done context.Context
	shut context.CancelFunc
}

var (
	_ taskstore.Store   = (*Store)(nil)
	_ taskstore.Watcher = (*Store)(nil)
)

const (
	// channel is the NOTIFY channel of tasks made claimable.
	channel = "imgmill_tasks"
	// migrateLock is the advisory lock key ("imgmill" in ASCII) that serializes migrations of one
	// database, so instances starting together do not race.
	migrateLock int64 = 0x696d676d696c6c
	// defaultConnectTimeout bounds a connection attempt when the DSN sets no connect_timeout, so an
	// unreachable server fails Open rather than hanging on the operating system's TCP timeout.
	defaultConnectTimeout = 10 * time.Second
	// listPage is how many tasks List reads per query.
	listPage = 500
)

// Index names, referenced by the query-plan test.
const (
	claimableIndex = "tasks_claimable"
	leaseIndex     = "tasks_lease"
	pendingIndex   = "tasks_pending"
	failedIndex    = "tasks_failed"
	primaryKey     = "tasks_pkey"
)

// Row invariants, as in sqlitestore:
//
//   - lease_until is the end of the latest claim's lease while that claim is open. Finish, Fail,
//     Release, Set and ExpirePending close it (NULL); a lapse does not, so a not-started or failed
//     row with a lease_until is one whose holder's lease lapsed and who may still report (see
//     heldBy). Readers report LeaseUntil only for in-progress rows.
//   - A row in state 1 whose lease_until <= now has lapsed. Readers compute what Claim's sweep
//     will make of it: state 0 with attempts left, else 3 with finished_at = lease_until, and in
//     both cases error = lapsedError.
//
// Parameters carry explicit casts: PostgreSQL infers a parameter's type from its first use, and a
// parameter used in a CASE or compared with a literal would otherwise come out as text or int4.
const (
	// lapsedError is why an attempt whose lease lapsed failed.
	lapsedError = `format('lease lapsed on attempt %s of %s', attempts, max_attempts)`
	// expiredError is why ExpirePending failed a task.
	expiredError = "upload never completed"
	// setFailedError is the reason Set(Failed) records when the task has none yet.
	setFailedError = "set to failed"

	// liveLease: in progress and not lapsed.
	liveLease = `state = 1 AND lease_until > @now::timestamptz`
	// liveHeldBy admits the holder of a live lease (Extend, Release); token 0 admits anyone.
	liveHeldBy = liveLease + ` AND (@token::bigint = 0 OR token = @token::bigint)`
	// heldBy admits whoever may report the outcome of the latest claim (Finish, Fail): with token 0
	// the holder of a live lease; with a token, its holder as long as the claim is still open, lapsed
	// or not, because nobody claimed the task since (that would have changed the token).
	heldBy = `(CASE WHEN @token::bigint = 0 THEN ` + liveLease + `
		ELSE token = @token::bigint AND state <> 2 AND lease_until IS NOT NULL END)`

	// returnColumns are a row's fields as scanTask expects them, for RETURNING after a write that
	// leaves the row consistent (no lapsed lease to compute).
	returnColumns = `id, state, pending, attempts, max_attempts, token, error, created_at, started_at, finished_at,
		CASE WHEN state = 1 THEN lease_until END, op`

	// taskColumns computes a lapsed lease's outcome without writing, so reads stay reads; the next
	// Claim makes it so in the table, with the same values.
	taskColumns = `id,
		CASE WHEN state = 1 AND lease_until <= @now::timestamptz
			THEN CASE WHEN attempts >= max_attempts THEN 3 ELSE 0 END
			ELSE state END,
		pending, attempts, max_attempts, token,
		CASE WHEN state = 1 AND lease_until <= @now::timestamptz THEN ` + lapsedError + ` ELSE error END,
		created_at, started_at,
		CASE WHEN state = 1 AND lease_until <= @now::timestamptz AND attempts >= max_attempts THEN lease_until
			ELSE finished_at END,
		CASE WHEN state = 1 AND lease_until > @now::timestamptz THEN lease_until END,
		op`

	// createSQL takes the next id from the counter row, whose lock queues concurrent Creates until
	// each commits, so ids are consecutive and a failed Create leaves no gap.
	createSQL = `WITH next AS (UPDATE task_ids SET next_id = next_id + 1 RETURNING next_id - 1 AS id)
		INSERT INTO tasks (id, state, pending, attempts, max_attempts, created_at, op)
		SELECT id, 0, @pending::boolean, 0, @max_attempts::integer, @now::timestamptz, @op::text FROM next
		RETURNING id, ` + wakeIfClaimable

	// wakeIfClaimable, in RETURNING, announces to the other instances' Watch that the written row is
	// claimable, if it is; the notification goes out at commit.
	wakeIfClaimable = `tasks_wake(state = 0 AND NOT pending, '` + channel + `', @origin::text)`

	// activateSQL writes only a pending task that did not fail (expire) before its upload completed;
	// activating an active task is a no-op, told apart by the probe.
	activateSQL = `UPDATE tasks SET pending = false WHERE id = @id::bigint AND pending AND state <> 3
		RETURNING ` + wakeIfClaimable

	// sweepSQL settles lapsed leases so that claimSQL finds the retries through the claimable index,
	// in id order with the never-started tasks. It keeps lease_until: the claim stays open. It skips
	// rows another transaction holds: another claimer settling them, or a late Finish that is about to.
	sweepSQL = `UPDATE tasks SET
		state       = CASE WHEN attempts >= max_attempts THEN 3 ELSE 0 END,
		finished_at = CASE WHEN attempts >= max_attempts THEN lease_until END,
		error       = ` + lapsedError + `
		WHERE id IN (SELECT id FROM tasks WHERE state = 1 AND lease_until <= @now::timestamptz
			FOR UPDATE SKIP LOCKED)`

	// claimSQL locks the lowest claimable id that nobody else is claiming, and claims it.
	claimSQL = `UPDATE tasks
		SET state = 1, attempts = attempts + 1, token = token + 1,
			started_at = @now::timestamptz, lease_until = @until::timestamptz
		WHERE id = (SELECT id FROM tasks WHERE state = 0 AND NOT pending ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING ` + returnColumns

	extendSQL = `UPDATE tasks SET lease_until = @until::timestamptz
		WHERE id = @id::bigint AND ` + liveHeldBy + `
		RETURNING ` + returnColumns

	// finishSQL clears the last attempt's error: a finished task has none.
	finishSQL = `UPDATE tasks SET state = 2, finished_at = @now::timestamptz, lease_until = NULL, error = ''
		WHERE id = @id::bigint AND ` + heldBy

	failSQL = `UPDATE tasks SET
		state       = CASE WHEN @permanent::boolean OR attempts >= max_attempts THEN 3 ELSE 0 END,
		finished_at = CASE WHEN @permanent::boolean OR attempts >= max_attempts THEN @now::timestamptz END,
		lease_until = NULL,
		error       = @reason::text
		WHERE id = @id::bigint AND ` + heldBy + `
		RETURNING ` + returnColumns + `, ` + wakeIfClaimable

	// releaseSQL takes back the attempt the claim counted; GREATEST guards a count an operator's Set
	// may have left lower.
	releaseSQL = `UPDATE tasks SET state = 0, attempts = GREATEST(attempts - 1, 0), lease_until = NULL
		WHERE id = @id::bigint AND ` + liveHeldBy + `
		RETURNING ` + wakeIfClaimable

	// setSQL overwrites the state. InProgress is a claim: it counts an attempt and issues a token.
	setSQL = `UPDATE tasks SET
		state       = @state::smallint,
		attempts    = attempts + CASE WHEN @state::smallint = 1 THEN 1 ELSE 0 END,
		token       = token + CASE WHEN @state::smallint = 1 THEN 1 ELSE 0 END,
		started_at  = CASE WHEN @state::smallint = 1 THEN @now::timestamptz ELSE started_at END,
		lease_until = CASE WHEN @state::smallint = 1 THEN @until::timestamptz END,
		finished_at = CASE WHEN @state::smallint IN (2, 3) THEN @now::timestamptz END,
		error       = CASE @state::smallint WHEN 2 THEN ''
			WHEN 3 THEN CASE WHEN error = '' THEN '` + setFailedError + `' ELSE error END
			ELSE error END
		WHERE id = @id::bigint
		RETURNING ` + wakeIfClaimable

	// expireSQL fails pending tasks that are still waiting (not started, or set in progress by hand
	// and lapsed); the partial index holds only those. Rows another transaction holds are left for the
	// next call, so two instances expiring at once never wait on each other.
	expireSQL = `UPDATE tasks SET state = 3, finished_at = @now::timestamptz, lease_until = NULL, error = '` + expiredError + `'
		WHERE id IN (SELECT id FROM tasks WHERE pending AND state < 2 AND created_at <= @cutoff::timestamptz
			AND (state = 0 OR lease_until <= @now::timestamptz) FOR UPDATE SKIP LOCKED)`

	// probeSQL explains why a guarded update matched no row.
	probeSQL = `SELECT state, token, pending FROM tasks WHERE id = @id::bigint`

	getSQL = `SELECT ` + taskColumns + ` FROM tasks WHERE id = @id::bigint`
	// listSQL reads one page; List walks the primary key page by page.
	listSQL = `SELECT ` + taskColumns + ` FROM tasks WHERE id >= @from::bigint ORDER BY id LIMIT @limit::integer`

	// countsSQL reads, in one snapshot (one statement), the parts Counts adds up; each part walks a
	// partial index, never the table: the total is the id counter because ids are consecutive from 0
	// and tasks are never deleted, and finished is what remains. Lapsed leases are split as taskColumns
	// does: attempts left, queued again; none left, failed.
	countsSQL = `SELECT
		(SELECT next_id FROM task_ids),
		(SELECT count(*) FROM tasks WHERE state = 0 AND NOT pending),
		(SELECT count(*) FROM tasks WHERE pending AND state < 2 AND state = 0),
		(SELECT count(*) FROM tasks WHERE state = 1),
		(SELECT count(*) FROM tasks WHERE state = 1 AND lease_until <= @now::timestamptz AND attempts < max_attempts),
		(SELECT count(*) FROM tasks WHERE state = 1 AND lease_until <= @now::timestamptz AND attempts >= max_attempts),
		(SELECT count(*) FROM tasks WHERE state = 3)`
)

// Open connects to the PostgreSQL database at dsn (a postgres:// URL or key=value string, as pgx
// takes it), checks that it answers, and migrates its schema.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors redact the password.
		return nil, fmt.Errorf("pgstore: open: %w", err)
	}
	if opts.MaxConns < 0 {
		return nil, fmt.Errorf("pgstore: open: MaxConns %d is negative", opts.MaxConns)
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
		cfg.MinConns = min(cfg.MinConns, cfg.MaxConns)
	}
	cc := cfg.ConnConfig
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = defaultConnectTimeout
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "imgmill pgstore" // tells operators whose sessions these are
	}
	// The claim and fencing statements rely on READ COMMITTED (see the package comment), whatever the
	// database's default.
	cc.RuntimeParams["default_transaction_isolation"] = "read committed"
	where := fmt.Sprintf("%s:%d/%s", cc.Host, cc.Port, cc.Database)

	s := &Store{listen: cc.Copy(), now: opts.Now, log: opts.Logger, origin: rand.Text()}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.done, s.shut = context.WithCancel(context.Background())
	s.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		s.shut()
		return nil, fmt.Errorf("pgstore: open %s: %w", where, err)
	}
	// The pool connects lazily; a ping makes a bad address or credentials fail here, not at the first task.
	if err := s.pool.Ping(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("pgstore: open %s: connect: %w", where, err)
	}
	if err := s.migrate(ctx, migrationFiles); err != nil {
		s.Close()
		return nil, fmt.Errorf("pgstore: open %s: %w", where, err)
	}
	return s, nil
}

// migration is one schema step.
type migration struct {
	version int
	name    string
	sql     string
}

// readMigrations returns the steps in fsys's migrations directory, checking they are numbered 1, 2, ...
func readMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, "migrations")
	if err != nil {
		return nil, err
	}
	var steps []migration
	for _, e := range entries { // ReadDir sorts by name, so by number
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration %q is not named NNNN_name.sql", e.Name())
		}
		if v != len(steps)+1 {
			return nil, fmt.Errorf("migration %q: want version %d", e.Name(), len(steps)+1)
		}
		b, err := fs.ReadFile(fsys, path.Join("migrations", e.Name()))
		if err != nil {
			return nil, err
		}
		steps = append(steps, migration{version: v, name: e.Name(), sql: string(b)})
	}
	return steps, nil
}

// migrate brings the schema up to date in one transaction, under an advisory lock so that instances
// starting together apply each step once; a step that fails leaves the schema as it was.
func (s *Store) migrate(ctx context.Context, fsys fs.FS) error {
	steps, err := readMigrations(fsys)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// Explicitly READ COMMITTED: after waiting for the lock, the next statement must see what the
	// instance that held it committed.
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// A no-op after Commit; a failed rollback closes the connection, which ends the transaction too.
	defer tx.Rollback(ctx)

	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLock); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var version int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		return fmt.Errorf("migrate: read version: %w", err)
	}
	if version > len(steps) {
		return fmt.Errorf("migrate: schema version %d is newer than this program's %d", version, len(steps))
	}
	for _, m := range steps[version:] {
		// Without arguments pgx sends the simple protocol, which runs a file of several statements.
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("migrate to version %d (%s): %w", m.version, m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
			m.version, m.name, s.now()); err != nil {
			return fmt.Errorf("migrate to version %d: record: %w", m.version, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("migrate: commit: %w", err)
	}
	if version < len(steps) {
		s.log.Info("pgstore: migrated task schema", "from", version, "to", len(steps))
	}
	return nil
}

// Create adds a not-started task and returns its id.
func (s *Store) Create(ctx context.Context, p taskstore.CreateParams) (int64, error) {
	maxAttempts := p.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = taskstore.DefaultMaxAttempts
	}
	var id int64
	var woke bool
	err := s.pool.QueryRow(ctx, createSQL, pgx.NamedArgs{"pending": p.Pending, "max_attempts": maxAttempts,
		"now": s.now(), "op": p.Op, "origin": s.origin}).Scan(&id, &woke)
	if err != nil {
		return 0, fmt.Errorf("pgstore: create: %w", err)
	}
	return id, nil
}

// Activate makes a pending task claimable.
func (s *Store) Activate(ctx context.Context, id int64) error {
	// The update matches only a pending, not failed task. The probe tells the other cases apart; it
	// runs after the update, so an operator's Set in between can make it see a pending task that the
	// update would now match: then update again.
	for range 3 {
		var woke bool
		err := s.pool.QueryRow(ctx, activateSQL, pgx.NamedArgs{"id": id, "origin": s.origin}).Scan(&woke)
		if err == nil {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("pgstore: activate %d: %w", id, err)
		}
		state, _, pending, err := s.probeRow(ctx, id)
		switch {
		case err != nil:
			return fmt.Errorf("pgstore: activate %d: %w", id, err)
		case !pending:
			return nil // already active
		case state == taskstore.Failed:
			return fmt.Errorf("pgstore: activate %d: %w", id, taskstore.ErrNotPending)
		}
	}
	return fmt.Errorf("pgstore: activate %d: the task kept changing under the update", id)
}

// Get returns one task.
func (s *Store) Get(ctx context.Context, id int64) (taskstore.Task, error) {
	t, err := scanTask(s.pool.QueryRow(ctx, getSQL, pgx.NamedArgs{"id": id, "now": s.now()}))
	if errors.Is(err, pgx.ErrNoRows) {
		return taskstore.Task{}, fmt.Errorf("pgstore: get %d: %w", id, taskstore.ErrNotFound)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: get %d: %w", id, err)
	}
	return t, nil
}

// Claim settles lapsed leases, then takes the lowest-id claimable task and leases it for lease. Both
// statements go in one batch: one round trip, one implicit transaction.
func (s *Store) Claim(ctx context.Context, lease time.Duration) (taskstore.Task, error) {
	if lease <= 0 {
		// A non-positive lease would hand out a task that is already lapsed.
		return taskstore.Task{}, fmt.Errorf("pgstore: claim: lease %v is not positive", lease)
	}
	now := s.now()
	b := &pgx.Batch{}
	b.Queue(sweepSQL, pgx.NamedArgs{"now": now})
	b.Queue(claimSQL, pgx.NamedArgs{"now": now, "until": now.Add(lease)})
	br := s.pool.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close() // reports the same failure
		return taskstore.Task{}, fmt.Errorf("pgstore: claim: settle lapsed leases: %w", err)
	}
	t, err := scanTask(br.QueryRow())
	// The batch commits when its results are closed: only then is the claim (or the sweep) made.
	if cerr := br.Close(); cerr != nil && (err == nil || errors.Is(err, pgx.ErrNoRows)) {
		return taskstore.Task{}, fmt.Errorf("pgstore: claim: commit: %w", cerr)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return taskstore.Task{}, taskstore.ErrNoTask
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: claim: %w", err)
	}
	return t, nil
}

// Extend renews the live lease of an in-progress task to lease from now.
func (s *Store) Extend(ctx context.Context, id, token int64, lease time.Duration) (taskstore.Task, error) {
	if lease <= 0 {
		return taskstore.Task{}, fmt.Errorf("pgstore: extend %d: lease %v is not positive", id, lease)
	}
	now := s.now()
	t, err := scanTask(s.pool.QueryRow(ctx, extendSQL, pgx.NamedArgs{"id": id, "token": token, "now": now,
		"until": now.Add(lease)}))
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.refusal(ctx, id, token)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: extend %d: %w", id, err)
	}
	return t, nil
}

// Finish marks the task finished; see taskstore.Store for who may.
func (s *Store) Finish(ctx context.Context, id, token int64) error {
	tag, err := s.pool.Exec(ctx, finishSQL, pgx.NamedArgs{"id": id, "token": token, "now": s.now()})
	if err == nil && tag.RowsAffected() == 0 {
		var state taskstore.State
		if state, err = s.refusal(ctx, id, token); taskstore.IsFinishRetry(token, state, err) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("pgstore: finish %d: %w", id, err)
	}
	return nil
}

// Fail records a failed attempt and returns the task afterwards.
func (s *Store) Fail(ctx context.Context, id, token int64, reason string, permanent bool) (taskstore.Task, error) {
	var woke bool
	t, err := scanTask(s.pool.QueryRow(ctx, failSQL, pgx.NamedArgs{"id": id, "token": token, "now": s.now(),
		"reason": reason, "permanent": permanent, "origin": s.origin}), &woke)
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.refusal(ctx, id, token)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: fail %d: %w", id, err)
	}
	return t, nil
}

// Release hands an in-progress task back without counting the attempt.
func (s *Store) Release(ctx context.Context, id, token int64) error {
	var woke bool
	err := s.pool.QueryRow(ctx, releaseSQL, pgx.NamedArgs{"id": id, "token": token, "now": s.now(),
		"origin": s.origin}).Scan(&woke)
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.refusal(ctx, id, token)
	}
	if err != nil {
		return fmt.Errorf("pgstore: release %d: %w", id, err)
	}
	return nil
}

// refusal explains why a guarded update of task id on behalf of token matched no row: ErrNotFound, or
// taskstore.Refusal's answer (or the probe's own failure), with the task's stored state.
func (s *Store) refusal(ctx context.Context, id, token int64) (taskstore.State, error) {
	state, current, _, err := s.probeRow(ctx, id)
	if err != nil {
		return 0, err
	}
	return state, taskstore.Refusal(token, current)
}

// probeRow reads a task's stored state, token and pending flag; ErrNotFound for an unknown id. Tasks
// are never deleted, so existence cannot change between a failed update and the probe.
func (s *Store) probeRow(ctx context.Context, id int64) (taskstore.State, int64, bool, error) {
	var (
		state   int16
		token   int64
		pending bool
	)
	err := s.pool.QueryRow(ctx, probeSQL, pgx.NamedArgs{"id": id}).Scan(&state, &token, &pending)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, false, taskstore.ErrNotFound
	}
	return taskstore.State(state), token, pending, err
}

// Set overwrites a task's state; InProgress starts a lease of the given length.
func (s *Store) Set(ctx context.Context, id int64, state taskstore.State, lease time.Duration) error {
	if !state.Valid() {
		return fmt.Errorf("pgstore: set %d to %d: %w", id, int(state), taskstore.ErrInvalidState)
	}
	now := s.now()
	var until *time.Time // NULL unless in progress
	if state == taskstore.InProgress {
		if lease <= 0 {
			return fmt.Errorf("pgstore: set %d in progress: lease %v is not positive", id, lease)
		}
		u := now.Add(lease)
		until = &u
	}
	var woke bool
	err := s.pool.QueryRow(ctx, setSQL, pgx.NamedArgs{"id": id, "state": int16(state), "now": now, "until": until,
		"origin": s.origin}).Scan(&woke)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pgstore: set %d: %w", id, taskstore.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("pgstore: set %d: %w", id, err)
	}
	return nil
}

// ExpirePending fails the pending tasks created olderThan or longer ago and returns how many.
func (s *Store) ExpirePending(ctx context.Context, olderThan time.Duration) (int, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("pgstore: expire pending: age %v is negative", olderThan)
	}
	now := s.now()
	tag, err := s.pool.Exec(ctx, expireSQL, pgx.NamedArgs{"now": now, "cutoff": now.Add(-olderThan)})
	if err != nil {
		return 0, fmt.Errorf("pgstore: expire pending: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// List yields every task in id order. It reads a page at a time along the primary key, holding a
// connection (and a snapshot, which would hold back vacuum) only for one page, however slowly the
// caller consumes; each page reflects the moment it was read. Tasks are never deleted and ids never
// reused, so every task is yielded exactly once.
func (s *Store) List(ctx context.Context) iter.Seq2[taskstore.Task, error] {
	return func(yield func(taskstore.Task, error) bool) {
		from := int64(0)
		for {
			page, err := s.listPage(ctx, from)
			if err != nil {
				yield(taskstore.Task{}, fmt.Errorf("pgstore: list: %w", err))
				return
			}
			for _, t := range page {
				if !yield(t, nil) {
					return
				}
			}
			if len(page) < listPage {
				return
			}
			from = page[len(page)-1].ID + 1
		}
	}
}

func (s *Store) listPage(ctx context.Context, from int64) ([]taskstore.Task, error) {
	rows, err := s.pool.Query(ctx, listSQL, pgx.NamedArgs{"from": from, "now": s.now(), "limit": listPage})
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	page := make([]taskstore.Task, 0, listPage)
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, err
		}
		page = append(page, t)
	}
	return page, rows.Err()
}

// Counts returns how many tasks are in each state, read from one snapshot through the partial indexes.
func (s *Store) Counts(ctx context.Context) (taskstore.Counts, error) {
	var total, claimable, pendingQueued, inProgress, lapsedRetry, lapsedFailed, failed int64
	err := s.pool.QueryRow(ctx, countsSQL, pgx.NamedArgs{"now": s.now()}).Scan(
		&total, &claimable, &pendingQueued, &inProgress, &lapsedRetry, &lapsedFailed, &failed)
	if err != nil {
		return taskstore.Counts{}, fmt.Errorf("pgstore: counts: %w", err)
	}
	c := taskstore.Counts{
		Queued:     claimable + pendingQueued + lapsedRetry,
		Processing: inProgress - lapsedRetry - lapsedFailed,
		Failed:     failed + lapsedFailed,
	}
	c.Finished = total - c.Queued - c.Processing - c.Failed
	return c, nil
}

// Watch calls notify whenever another Store (another database service) may have made a task
// claimable: created, activated, failed with attempts left, released or set not started. It LISTENs
// on a connection of its own, outside the pool, reconnecting with backoff when that fails, and calls
// notify once after each (re)connect, since notifications sent while it was not listening are lost.
// notify runs on Watch's goroutine, once per notifying transaction: it should be quick. Watch returns
// nil when ctx ends, and an error when the store is closed.
func (s *Store) Watch(ctx context.Context, notify func()) error {
	outer := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.done, cancel)()
	b := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	for {
		err := s.watchOnce(ctx, notify, &b)
		if outer.Err() != nil {
			return nil
		}
		if s.done.Err() != nil {
			return errors.New("pgstore: watch: store closed")
		}
		wait := b.Next()
		s.log.Warn("pgstore: watch: reconnecting", "err", err, "in", wait)
		backoff.Sleep(ctx, wait)
	}
}

// watchOnce listens on one connection until it fails or ctx ends.
func (s *Store) watchOnce(ctx context.Context, notify func(), b *backoff.Backoff) error {
	conn, err := pgx.ConnectConfig(ctx, s.listen)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		// ctx may be over; closing still deserves a moment to say goodbye to the server.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	b.Reset()
	notify()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		if n.Payload != s.origin {
			notify()
		}
	}
}

// Close closes the pool and ends any Watch. Calling it again does nothing.
func (s *Store) Close() error {
	s.shut()
	s.pool.Close()
	return nil
}

// scanTask reads the columns of taskColumns or returnColumns, then extra.
func scanTask(row pgx.Row, extra ...any) (taskstore.Task, error) {
	var (
		t                                   taskstore.Task
		state                               int64
		created, started, finished, leaseTo pgtype.Timestamptz
	)
	dest := append([]any{&t.ID, &state, &t.Pending, &t.Attempts, &t.MaxAttempts, &t.Token, &t.Error,
		&created, &started, &finished, &leaseTo, &t.Op}, extra...)
	if err := row.Scan(dest...); err != nil {
		return taskstore.Task{}, err
	}
	t.State = taskstore.State(state)
	t.CreatedAt = fromTimestamptz(created)
	t.StartedAt = fromTimestamptz(started)
	t.FinishedAt = fromTimestamptz(finished)
	t.LeaseUntil = fromTimestamptz(leaseTo)
	return t, nil
}

// fromTimestamptz maps NULL to the zero time, and times to UTC as sqlitestore reports them.
func fromTimestamptz(ts pgtype.Timestamptz) time.Time {
	if !ts.Valid {
		return time.Time{}
	}
	return ts.Time.UTC()
}
