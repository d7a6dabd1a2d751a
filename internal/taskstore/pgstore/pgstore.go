// Package pgstore is the task store on PostgreSQL, which several database services can share: the
// same semantics as sqlitestore (the embedded store), with claims that are safe across instances.
//
// Concurrency design: every write is one statement in its own transaction, except Claim's three
// (settle lapsed leases, settle due retries, then claim; ClaimN repeats the claim) and CreateOnce's two (take the key from a
// stale task, create), which go together in one batch: one round trip. Claim picks the lowest
// claimable id through a partial index with FOR UPDATE SKIP LOCKED, so concurrent claimers, in one
// process or many, each take a different task without waiting for each other; the settling skips
// locked rows the same way, so claims never wait on locks at all. Guarded writes (Extend, Finish,
// Fail, Release, Retry) are single UPDATEs on the primary key; when one matches nothing a probe read
// explains why. Everything relies on READ COMMITTED, where an UPDATE re-checks its
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
// Outages: errors of a server that cannot be reached, is shutting down, overloaded or out of space
// come back marked transient (fault), so callers wait and retry; the pool replaces broken connections
// by itself once the server is back. A server that cannot be reached when Open is called does not fail
// it: the Store keeps connecting in the background.
//
// Wake-ups: statements that make a task claimable NOTIFY the other Stores (see Watch), so database
// services sharing the database hear of work another one accepted.
package pgstore

import (
	"cmp"
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
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
	// Logger receives migrations, the waits for a server that could not be reached when the store
	// was opened, and Watch's reconnects; nil discards them.
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
	// done ends when Close is called, and with it any Watch and the background connecting.
	done context.Context
	shut context.CancelFunc
	// where names the server and database, host:port/database, for errors and logs.
	where string
	// waiting holds why the store is not usable yet, until it has connected and migrated the schema
	// (see keepConnecting); nil from then on.
	waiting atomic.Pointer[error]
	// connecting runs keepConnecting, which Close waits for.
	connecting sync.WaitGroup
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
	// pingTimeout bounds Ping, and each try to reach the server while opening: a server that does not
	// answer in that time is unavailable for now.
	pingTimeout = 5 * time.Second
	// waitLogEvery spaces out the log lines of a store waiting for its server.
	waitLogEvery = 5 * time.Second
	// createOnceTries bounds CreateOnce's tries: each one after the first follows a concurrent call
	// with the same key that created a task, so they end quickly unless the callers are many.
	createOnceTries = 100
	// what names the task database in transient errors (fault).
	what = "the task database"
)

// Index names, referenced by the query-plan test.
const (
	claimableIndex = "tasks_claimable"
	leaseIndex     = "tasks_lease"
	pendingIndex   = "tasks_pending"
	failedIndex    = "tasks_failed"
	retryIndex     = "tasks_retry"
	keyIndex       = "tasks_idem"
	primaryKey     = "tasks_pkey"
	turnIndex      = "owners_turn"
)

// Row invariants, as in sqlitestore:
//
//   - lease_until is the end of the latest claim's lease while that claim is open. Finish, Fail,
//     Release, Retry, Set, ExpirePending and Abandon close it (NULL); a lapse does not, so a
//     not-started or failed row with a lease_until is one whose holder's lease lapsed and who may
//     still report (see heldBy). Readers report LeaseUntil only for in-progress rows.
//   - A row in state 1 whose lease_until <= now has lapsed. Readers compute what Claim's sweep
//     will make of it: state 0 with attempts left, else 3 with finished_at = lease_until, and in
//     both cases error = lapsedError.
//   - retry_at is set only by Retry, on a row it leaves in state 0; every other write clears it,
//     and so does Claim's sweep once it is due. Readers report it only while it is in the future.
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
	// heldBy admits whoever may report the outcome of the latest claim (Finish, Fail, Retry): with
	// token 0 the holder of a live lease; with a token, its holder as long as the claim is still open,
	// lapsed or not, because nobody claimed the task since (that would have changed the token).
	heldBy = `(CASE WHEN @token::bigint = 0 THEN ` + liveLease + `
		ELSE token = @token::bigint AND state <> 2 AND lease_until IS NOT NULL END)`
	// lapsedOut: in progress, lapsed, and out of attempts; readers report it failed.
	lapsedOut = `state = 1 AND lease_until <= @now::timestamptz AND attempts >= max_attempts`

	// retryAt is retry_at as readers report it: only while it is in the future.
	retryAt = `CASE WHEN retry_at > @now::timestamptz THEN retry_at END`

	// returnColumns are a row's fields as scanTask expects them, for RETURNING after a write that
	// leaves the row consistent (no lapsed lease to compute).
	returnColumns = `id, state, pending, attempts, max_attempts, token, error, created_at, started_at, finished_at,
		CASE WHEN state = 1 THEN lease_until END, op, ` + retryAt + `, retries, owner, name`

	// taskColumns computes a lapsed lease's outcome without writing, so reads stay reads; the next
	// Claim makes it so in the table, with the same values.
	taskColumns = `id,
		CASE WHEN state = 1 AND lease_until <= @now::timestamptz
			THEN CASE WHEN attempts >= max_attempts THEN 3 ELSE 0 END
			ELSE state END,
		pending, attempts, max_attempts, token,
		CASE WHEN state = 1 AND lease_until <= @now::timestamptz THEN ` + lapsedError + ` ELSE error END,
		created_at, started_at,
		CASE WHEN ` + lapsedOut + ` THEN lease_until ELSE finished_at END,
		CASE WHEN state = 1 AND lease_until > @now::timestamptz THEN lease_until END,
		op, ` + retryAt + `, retries, owner, name`

	// nextID takes the next id from the counter row, whose lock queues concurrent Creates until each
	// commits, so ids are consecutive and a failed Create leaves no gap.
	nextID = `WITH next AS (UPDATE task_ids SET next_id = next_id + 1 RETURNING next_id - 1 AS id)`

	createSQL = nextID + `
		INSERT INTO tasks (id, state, pending, attempts, max_attempts, created_at, op, owner, name)
		SELECT id, 0, @pending::boolean, 0, @max_attempts::integer, @now::timestamptz, @op::text, @owner::text,
			@name::text FROM next
		RETURNING id, ` + wakeIfClaimable

	// createKeyedSQL is createSQL keeping the idempotency key with the task. A concurrent create with
	// the same key that committed first makes it fail on the unique index, and roll back with its id.
	createKeyedSQL = nextID + `
		INSERT INTO tasks (id, state, pending, attempts, max_attempts, created_at, op, idem_key, owner, name)
		SELECT id, 0, @pending::boolean, 0, @max_attempts::integer, @now::timestamptz, @op::text, @key::text,
			@owner::text, @name::text FROM next
		RETURNING ` + returnColumns + `, ` + wakeIfClaimable

	// findKeySQL reads the task created with an idempotency key, through the unique index.
	findKeySQL = `SELECT ` + taskColumns + ` FROM tasks WHERE idem_key = @key::text`

	// clearKeySQL takes the key from a task that no longer answers for it, so that a new one can; it
	// leaves a task that a concurrent call gave the key since.
	clearKeySQL = `UPDATE tasks SET idem_key = NULL WHERE id = @stale::bigint AND idem_key = @key::text`

	// wakeIfClaimable, in RETURNING, announces to the other instances' Watch that the written row is
	// claimable, if it is; the notification goes out at commit.
	wakeIfClaimable = `tasks_wake(state = 0 AND NOT pending AND retry_at IS NULL, '` + channel + `', @origin::text)`

	// activateSQL writes only a pending task that did not fail (expire), and was not cancelled or
	// deleted, before its upload completed;
	// activating an active task is a no-op, told apart by the probe.
	activateSQL = `UPDATE tasks SET pending = false, size = @size::bigint WHERE id = @id::bigint AND pending AND state NOT IN (3, 4, 5)
		RETURNING ` + wakeIfClaimable

	// abandonSQL fails a pending task that has not failed yet, as readers see it.
	abandonSQL = `UPDATE tasks SET state = 3, finished_at = @now::timestamptz, lease_until = NULL, retry_at = NULL,
		error = @reason::text
		WHERE id = @id::bigint AND pending AND state NOT IN (3, 4, 5) AND NOT (` + lapsedOut + `)`

	// sweepSQL settles lapsed leases so that claimSQL finds the retries through the claimable index,
	// in id order with the never-started tasks. It keeps lease_until: the claim stays open. It skips
	// rows another transaction holds: another claimer settling them, or a late Finish that is about to.
	sweepSQL = `UPDATE tasks SET
		state       = CASE WHEN attempts >= max_attempts THEN 3 ELSE 0 END,
		finished_at = CASE WHEN attempts >= max_attempts THEN lease_until END,
		error       = ` + lapsedError + `
		WHERE id IN (SELECT id FROM tasks WHERE state = 1 AND lease_until <= @now::timestamptz
			FOR UPDATE SKIP LOCKED)`

	// settleSQL clears the retry_at that came due, which puts those tasks in the claimable index.
	// Like the sweep, it skips rows another transaction holds.
	settleSQL = `UPDATE tasks SET retry_at = NULL
		WHERE id IN (SELECT id FROM tasks WHERE retry_at <= @now::timestamptz FOR UPDATE SKIP LOCKED)`

	// claimSQL takes the owners in turn (least recently served first, among those with claimable
	// tasks), locks the lowest claimable id of the first one that has a task nobody else is claiming,
	// and claims it; the trigger marks the owner served. It needs not clear retry_at: the claimable
	// index holds only rows without one.
	claimSQL = `UPDATE tasks
		SET state = 1, attempts = attempts + 1, token = token + 1,
			started_at = @now::timestamptz, lease_until = @until::timestamptz
		WHERE id = (SELECT c.id
			FROM (SELECT owner FROM owners WHERE queued > 0 ORDER BY served, owner) AS turn
			CROSS JOIN LATERAL (SELECT id FROM tasks
				WHERE owner = turn.owner AND state = 0 AND NOT pending AND retry_at IS NULL
				ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) AS c
			LIMIT 1)
		RETURNING ` + returnColumns

	// claimBatchLockSQL makes concurrent batch claims (ClaimN) take turns: a transaction-level advisory
	// lock, released by the batch's commit. The key is arbitrary and fixed: "imgmbatc" in ASCII.
	claimBatchLockSQL = `SELECT pg_advisory_xact_lock(7596841865943544931)`

	extendSQL = `UPDATE tasks SET lease_until = @until::timestamptz
		WHERE id = @id::bigint AND ` + liveHeldBy + `
		RETURNING ` + returnColumns

	// finishSQL clears the last attempt's error: a finished task has none.
	finishSQL = `UPDATE tasks SET state = 2, finished_at = @now::timestamptz, lease_until = NULL, retry_at = NULL,
		error = ''
		WHERE id = @id::bigint AND ` + heldBy + `
		RETURNING ` + returnColumns

	failSQL = `UPDATE tasks SET
		state       = CASE WHEN @permanent::boolean OR attempts >= max_attempts THEN 3 ELSE 0 END,
		finished_at = CASE WHEN @permanent::boolean OR attempts >= max_attempts THEN @now::timestamptz END,
		lease_until = NULL,
		retry_at    = NULL,
		error       = @reason::text
		WHERE id = @id::bigint AND ` + heldBy + `
		RETURNING ` + returnColumns + `, ` + wakeIfClaimable

	// releaseSQL takes back the attempt the claim counted; GREATEST guards a count an operator's Set
	// may have left lower.
	releaseSQL = `UPDATE tasks SET state = 0, attempts = GREATEST(attempts - 1, 0), lease_until = NULL, retry_at = NULL
		WHERE id = @id::bigint AND ` + liveHeldBy + `
		RETURNING ` + wakeIfClaimable

	// retrySQL is releaseSQL for a transient failure, reported as Fail reports one; the task waits the
	// element of @waits (see taskstore.RetryBackoff.Waits) for its new retry count, or the last one past the array's end.
	// Nobody is woken: the task is not claimable before then.
	retrySQL = `UPDATE tasks SET
		state       = 0,
		attempts    = GREATEST(attempts - 1, 0),
		lease_until = NULL,
		error       = @reason::text,
		retries     = retries + 1,
		retry_at    = @now::timestamptz +
			(@waits::interval[])[LEAST(retries + 1, cardinality(@waits::interval[]))]
		WHERE id = @id::bigint AND ` + heldBy + `
		RETURNING ` + returnColumns

	// setSQL overwrites the state. InProgress is a claim: it counts an attempt and issues a token.
	setSQL = `UPDATE tasks SET
		state       = @state::smallint,
		attempts    = attempts + CASE WHEN @state::smallint = 1 THEN 1 ELSE 0 END,
		token       = token + CASE WHEN @state::smallint = 1 THEN 1 ELSE 0 END,
		started_at  = CASE WHEN @state::smallint = 1 THEN @now::timestamptz ELSE started_at END,
		lease_until = CASE WHEN @state::smallint = 1 THEN @until::timestamptz END,
		finished_at = CASE WHEN @state::smallint IN (2, 3) THEN @now::timestamptz END,
		retry_at    = NULL,
		error       = CASE @state::smallint WHEN 2 THEN ''
			WHEN 3 THEN CASE WHEN error = '' THEN '` + setFailedError + `' ELSE error END
			ELSE error END
		WHERE id = @id::bigint AND state <> 5
		RETURNING ` + wakeIfClaimable

	// cancelSQL cancels a task that has not settled as readers see it: not started, or in progress and
	// not lapsed out of attempts. Closing the claim (lease_until NULL) refuses its holder.
	cancelSQL = `UPDATE tasks SET state = 4, finished_at = @now::timestamptz, lease_until = NULL, retry_at = NULL,
		error = '` + wire.CancelledError + `'
		WHERE id = @id::bigint AND (state = 0 OR state = 1 AND NOT (` + lapsedOut + `))
		RETURNING ` + returnColumns

	// requeueSQL queues a failed or cancelled task (as readers see it) whose upload completed again, as
	// if new, and wakes the claimers. Closing the claim (lease_until NULL) and keeping the token refuses
	// an earlier holder; sweep_until goes with the task's settling.
	requeueSQL = `UPDATE tasks SET state = 0, attempts = 0, retries = 0, error = '', started_at = NULL,
		finished_at = NULL, lease_until = NULL, retry_at = NULL, sweep_until = NULL
		WHERE id = @id::bigint AND NOT pending AND (state IN (3, 4) OR ` + lapsedOut + `)
		RETURNING ` + returnColumns + `, ` + wakeIfClaimable

	// deleteSQL leaves a tombstone: the row keeps its id and its token, and loses what the client gave
	// and who the client was.
	// The idempotency key goes, so a retry with it creates a new task.
	deleteSQL = `UPDATE tasks SET state = 5, op = '', error = '', lease_until = NULL, retry_at = NULL,
		idem_key = NULL, owner = '', name = '', size = 0, finished_at = @now::timestamptz
		WHERE id = @id::bigint`

	// expireSQL fails pending tasks that are still waiting (not started, or set in progress by hand
	// and lapsed); the partial index holds only those. Rows another transaction holds are left for the
	// next call, so two instances expiring at once never wait on each other.
	expireSQL = `UPDATE tasks SET state = 3, finished_at = @now::timestamptz, lease_until = NULL, retry_at = NULL,
		error = '` + expiredError + `'
		WHERE id IN (SELECT id FROM tasks WHERE pending AND state < 2 AND created_at <= @cutoff::timestamptz
			AND (state = 0 OR lease_until <= @now::timestamptz) FOR UPDATE SKIP LOCKED)`

	// claimExpiredSQL holds a batch of the longest settled tasks that no sweeper holds. Rows another
	// transaction holds (a concurrent sweeper's batch, a claim's sweep) are skipped, so sweepers on
	// several instances take disjoint batches and never wait on each other or on claims.
	claimExpiredSQL = `UPDATE tasks SET sweep_until = @until::timestamptz
		WHERE id IN (SELECT id FROM tasks
			WHERE state IN (2, 3, 4) AND finished_at <= @cutoff::timestamptz
				AND (sweep_until IS NULL OR sweep_until <= @now::timestamptz)
			ORDER BY finished_at, id LIMIT @limit::integer FOR UPDATE SKIP LOCKED)
		RETURNING id, finished_at`

	// probeSQL explains why a guarded update matched no row. A missing id below the counter is a
	// tombstone that PurgeDeleted removed, and reads as one (of a pending task: it cannot be activated).
	probeSQL = `SELECT state, token, pending FROM tasks WHERE id = @id::bigint
		UNION ALL
		SELECT 5::smallint, 0::bigint, true WHERE @id::bigint >= 0 AND @id::bigint < (SELECT next_id FROM task_ids)
			AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = @id::bigint)`

	// purgeSQL removes a batch of the longest deleted tombstones (rows another instance's purge holds
	// are left to it) and counts them in the counter row, in one statement. It keeps the highest id's,
	// as SQLite must, so that both stores keep the same rows.
	purgeSQL = `WITH gone AS (
			DELETE FROM tasks WHERE id IN (SELECT id FROM tasks
				WHERE state = 5 AND finished_at <= @cutoff::timestamptz AND id < (SELECT next_id - 1 FROM task_ids)
				ORDER BY finished_at LIMIT @limit::integer FOR UPDATE SKIP LOCKED)
			RETURNING id)
		UPDATE task_ids SET purged = purged + (SELECT count(*) FROM gone)
		RETURNING (SELECT count(*) FROM gone)`

	getSQL = `SELECT ` + taskColumns + ` FROM tasks WHERE id = @id::bigint AND state <> 5`
	// listSQL reads one page; List walks the primary key page by page.
	listSQL = `SELECT ` + taskColumns + ` FROM tasks WHERE id >= @from::bigint AND state <> 5
		ORDER BY id LIMIT @limit::integer`

	// countsSQL reads, in one snapshot (one statement), the parts Counts adds up; each part walks a
	// partial index, never the table: the total is the id counter because ids are consecutive from 0
	// and deleted tasks leave tombstones, and finished is what remains. Lapsed leases are split as taskColumns
	// does: attempts left, queued (or pending) again; none left, failed.
	countsSQL = `SELECT
		(SELECT next_id FROM task_ids),
		(SELECT count(*) FROM tasks WHERE state = 0 AND NOT pending AND retry_at IS NULL),
		(SELECT count(*) FROM tasks WHERE retry_at IS NOT NULL AND state = 0 AND NOT pending),
		(SELECT count(*) FROM tasks WHERE pending AND state < 2 AND state = 0),
		(SELECT count(*) FROM tasks WHERE state = 1),
		(SELECT count(*) FROM tasks WHERE state = 1 AND lease_until <= @now::timestamptz AND attempts < max_attempts
			AND NOT pending),
		(SELECT count(*) FROM tasks WHERE state = 1 AND lease_until <= @now::timestamptz AND attempts < max_attempts
			AND pending),
		(SELECT count(*) FROM tasks WHERE ` + lapsedOut + `),
		(SELECT count(*) FROM tasks WHERE state = 3),
		(SELECT count(*) FROM tasks WHERE state = 4),
		(SELECT count(*) FROM tasks WHERE state = 5) + (SELECT purged FROM task_ids)`
)

// Open connects to the PostgreSQL database at dsn (a postgres:// URL or key=value string, as pgx
// takes it) and migrates its schema. A malformed dsn, and permanent answers of the server (failed
// authentication, a database that does not exist, a migration that fails), fail Open. A server that
// cannot be reached yet (down, starting up, not answering in time) does not: Open returns the Store and
// keeps trying in the background, logging the wait through Options.Logger, and until it has connected
// and migrated the schema every method returns a transient error (fault.Unavailable).
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	return open(ctx, dsn, opts, migrationFiles)
}

// open is Open with the schema steps in fsys (see readMigrations), so tests can build older schemas.
func open(ctx context.Context, dsn string, opts Options, fsys fs.FS) (*Store, error) {
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

	s := &Store{listen: cc.Copy(), now: opts.Now, log: opts.Logger, origin: rand.Text(),
		where: fmt.Sprintf("%s:%d/%s", cc.Host, cc.Port, cc.Database)}
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
		return nil, fmt.Errorf("pgstore: open %s: %w", s.where, err)
	}
	// The pool connects lazily; connecting now makes bad credentials fail here, not at the first task.
	err = s.connect(ctx, fsys)
	if err == nil {
		return s, nil
	}
	if !fault.IsTransient(classify(ctx, err)) {
		s.Close()
		return nil, fmt.Errorf("pgstore: open %s: %w", s.where, err)
	}
	s.setWaiting(err)
	s.connecting.Go(func() { s.keepConnecting(fsys, err) })
	return s, nil
}

// connect checks that the server answers, within pingTimeout, and migrates the schema.
func (s *Store) connect(ctx context.Context, fsys fs.FS) error {
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	err := s.pool.Ping(pctx)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	return s.migrate(ctx, fsys)
}

// keepConnecting retries connect, with backoff, until it succeeds (then the store is usable) or the
// store is closed; err is why the last try failed. A permanent answer (say, the database does not
// exist yet) is retried too, since Open already returned: an operator may fix it, and it is logged as
// an error.
func (s *Store) keepConnecting(fsys fs.FS, err error) {
	b := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	var logged time.Time
	for {
		if time.Since(logged) >= waitLogEvery {
			level := slog.LevelWarn
			if !fault.IsTransient(classify(s.done, err)) {
				level = slog.LevelError
			}
			s.log.Log(s.done, level, "pgstore: waiting for PostgreSQL", "where", s.where, "err", err)
			logged = time.Now()
		}
		if !backoff.Sleep(s.done, b.Next()) {
			return
		}
		if err = s.connect(s.done, fsys); err == nil {
			s.waiting.Store(nil)
			s.log.Info("pgstore: connected to PostgreSQL", "where", s.where)
			return
		}
		if s.done.Err() != nil {
			return
		}
		s.setWaiting(err)
	}
}

// setWaiting records why the store is not usable yet; a variable of its own keeps the record
// unchanged by later tries.
func (s *Store) setWaiting(why error) { s.waiting.Store(&why) }

// usable returns nil once the store has connected and migrated the schema, and until then the
// transient error that every method returns.
func (s *Store) usable() error {
	if why := s.waiting.Load(); why != nil {
		return fault.Unavailable(what, fmt.Errorf("waiting for PostgreSQL at %s: %w", s.where, *why))
	}
	return nil
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
	if err := s.usable(); err != nil {
		return 0, fmt.Errorf("pgstore: create: %w", err)
	}
	var id int64
	var woke bool
	err := s.pool.QueryRow(ctx, createSQL, pgx.NamedArgs{"pending": p.Pending, "max_attempts": p.Attempts(),
		"now": s.now(), "op": p.Op, "owner": p.Owner, "name": p.Name, "origin": s.origin}).Scan(&id, &woke)
	if err != nil {
		return 0, fmt.Errorf("pgstore: create: %w", classify(ctx, err))
	}
	return id, nil
}

// CreateOnce creates a task unless one created with key less than window ago answers for it.
func (s *Store) CreateOnce(ctx context.Context, p taskstore.CreateParams, key string, window time.Duration) (
	taskstore.Task, bool, error,
) {
	if key == "" {
		return taskstore.Task{}, false, errors.New("pgstore: create once: empty idempotency key")
	}
	if err := s.usable(); err != nil {
		return taskstore.Task{}, false, fmt.Errorf("pgstore: create once: %w", err)
	}
	// A call that loses the race for a key to a concurrent one fails on the unique index, and rolls
	// back with the id it took; looking again finds the winner's task.
	for range createOnceTries {
		t, replayed, err := s.createOnce(ctx, p, key, window)
		if keyTaken(err) {
			continue
		}
		if err != nil {
			return taskstore.Task{}, false, fmt.Errorf("pgstore: create once: %w", classify(ctx, err))
		}
		return t, replayed, nil
	}
	return taskstore.Task{}, false, fmt.Errorf("pgstore: create once: concurrent calls with the key took it %d times",
		createOnceTries)
}

// createOnce looks the key up and, unless the task found answers for it, creates a task with it; the
// creation is one batch, so one implicit transaction: the key moves from the stale task to the new one
// at once, and a failure rolls both back.
func (s *Store) createOnce(ctx context.Context, p taskstore.CreateParams, key string, window time.Duration) (
	taskstore.Task, bool, error,
) {
	now := s.now()
	old, err := scanTask(s.pool.QueryRow(ctx, findKeySQL, pgx.NamedArgs{"key": key, "now": now}))
	found := err == nil
	switch {
	case found && replays(old, now, window):
		return old, true, nil
	case !found && !errors.Is(err, pgx.ErrNoRows):
		return taskstore.Task{}, false, err
	}
	args := pgx.NamedArgs{"pending": p.Pending, "max_attempts": p.Attempts(), "now": now, "op": p.Op, "owner": p.Owner,
		"name": p.Name, "key": key, "origin": s.origin, "stale": old.ID}
	b := &pgx.Batch{}
	if found {
		b.Queue(clearKeySQL, args)
	}
	b.Queue(createKeyedSQL, args)
	br := s.pool.SendBatch(ctx, b)
	if found {
		if _, err := br.Exec(); err != nil {
			br.Close() // reports the same failure
			return taskstore.Task{}, false, err
		}
	}
	var woke bool
	t, err := scanTask(br.QueryRow(), &woke)
	// The batch commits when its results are closed.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return t, false, err
}

// replays reports whether CreateOnce answers with old, the task created with the same key: it was
// created less than window before now, and it is not a pending task that failed (an upload that was
// never acknowledged, so the client's retry must upload again).
func replays(old taskstore.Task, now time.Time, window time.Duration) bool {
	return old.CreatedAt.After(now.Add(-window)) && !(old.Pending && old.State == wire.Failed)
}

// keyTaken reports whether err is the unique index refusing an idempotency key that a concurrent call
// gave its task first.
func keyTaken(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == keyIndex
}

// Activate makes a pending task claimable.
func (s *Store) Activate(ctx context.Context, id, size int64) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("pgstore: activate %d: %w", id, err)
	}
	// The update matches only a pending, not failed task. The probe tells the other cases apart; it
	// runs after the update, so an operator's Set in between can make it see a pending task that the
	// update would now match: then update again.
	for range 3 {
		var woke bool
		err := s.pool.QueryRow(ctx, activateSQL, pgx.NamedArgs{"id": id, "size": size, "origin": s.origin}).Scan(&woke)
		if err == nil {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("pgstore: activate %d: %w", id, classify(ctx, err))
		}
		state, _, pending, err := s.probeRow(ctx, id)
		switch {
		case err != nil:
			return fmt.Errorf("pgstore: activate %d: %w", id, classify(ctx, err))
		case state == taskstore.Deleted:
			return fmt.Errorf("pgstore: activate %d: %w", id, taskstore.ErrNotPending)
		case !pending:
			return nil // already active
		case state == wire.Failed || state == wire.Cancelled || state == taskstore.Deleted:
			return fmt.Errorf("pgstore: activate %d: %w", id, taskstore.ErrNotPending)
		}
	}
	return fmt.Errorf("pgstore: activate %d: the task kept changing under the update", id)
}

// Abandon fails a pending task whose upload will never complete.
func (s *Store) Abandon(ctx context.Context, id int64, reason string) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("pgstore: abandon %d: %w", id, err)
	}
	if reason == "" {
		reason = wire.AbandonedError
	}
	// The update matches only a pending task that has not failed; a read tells the other cases apart.
	// It runs after the update, so an operator's Set in between can make it see a task that the
	// update would now match: then update again.
	for range 3 {
		done, err := s.abandonOnce(ctx, id, reason)
		if err != nil {
			return fmt.Errorf("pgstore: abandon %d: %w", id, classify(ctx, err))
		}
		if done {
			return nil
		}
	}
	return fmt.Errorf("pgstore: abandon %d: the task kept changing under the update", id)
}

// abandonOnce tries Abandon's update once, and reports whether the call is settled: the task failed
// now or before, or it cannot be abandoned (the error says why).
func (s *Store) abandonOnce(ctx context.Context, id int64, reason string) (bool, error) {
	now := s.now()
	tag, err := s.pool.Exec(ctx, abandonSQL, pgx.NamedArgs{"id": id, "now": now, "reason": reason})
	if err != nil || tag.RowsAffected() > 0 {
		return err == nil, err
	}
	t, err := scanTask(s.pool.QueryRow(ctx, getSQL, pgx.NamedArgs{"id": id, "now": now}))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, taskstore.ErrNotFound
	case err != nil:
		return false, err
	case !t.Pending:
		return false, taskstore.ErrNotPending
	}
	return t.State == wire.Failed || t.State == wire.Cancelled, nil
}

// Get returns one task.
func (s *Store) Get(ctx context.Context, id int64) (taskstore.Task, error) {
	if err := s.usable(); err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: get %d: %w", id, err)
	}
	t, err := scanTask(s.pool.QueryRow(ctx, getSQL, pgx.NamedArgs{"id": id, "now": s.now()}))
	if errors.Is(err, pgx.ErrNoRows) {
		return taskstore.Task{}, fmt.Errorf("pgstore: get %d: %w", id, taskstore.ErrNotFound)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: get %d: %w", id, classify(ctx, err))
	}
	return t, nil
}

// Claim settles lapsed leases and due retries, then takes the lowest-id claimable task and leases it
// for lease. The statements go in one batch: one round trip, one implicit transaction.
func (s *Store) Claim(ctx context.Context, lease time.Duration) (taskstore.Task, error) {
	if lease <= 0 {
		// A non-positive lease would hand out a task that is already lapsed.
		return taskstore.Task{}, fmt.Errorf("pgstore: claim: lease %v is not positive", lease)
	}
	ts, err := s.claim(ctx, 1, lease)
	if err != nil {
		return taskstore.Task{}, err
	}
	return ts[0], nil
}

// ClaimN is up to n Claims in one transaction; see taskstore.Store.
func (s *Store) ClaimN(ctx context.Context, n int, lease time.Duration) ([]taskstore.Task, error) {
	if lease <= 0 {
		return nil, fmt.Errorf("pgstore: claim %d: lease %v is not positive", n, lease)
	}
	if err := taskstore.CheckClaimBatch(n); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	for attempt := 1; ; attempt++ {
		ts, err := s.claim(ctx, n, lease)
		// Batches take turns (claimBatchLock), but a batch may still meet a concurrent Claim's sweep
		// over the same owners' rows, which PostgreSQL resolves by aborting one; an aborted batch
		// claimed nothing and may take its batch again.
		var pgErr *pgconn.PgError
		if attempt < 3 && errors.As(err, &pgErr) && pgErr.Code == "40P01" {
			continue
		}
		return ts, err
	}
}

// claim queues the settling and n claim statements in one batch: one round trip, one implicit
// transaction. Under READ COMMITTED each claim statement sees the rows the ones before it claimed
// (and the owner they marked served), and its own transaction's locks do not make it skip them, so
// the batch takes what n Claims in a row would; other transactions' locked rows it skips as Claim does.
func (s *Store) claim(ctx context.Context, n int, lease time.Duration) ([]taskstore.Task, error) {
	if err := s.usable(); err != nil {
		return nil, fmt.Errorf("pgstore: claim: %w", err)
	}
	now := s.now()
	b := &pgx.Batch{}
	steps := []string{"settle lapsed leases", "settle due retries"}
	if n > 1 {
		// A batch marks its owners served one after the other, holding each owner's row to its commit:
		// two concurrent batches would take the same owners in different orders and deadlock (measured:
		// often, each costing the server's deadlock_timeout). Batches take turns instead, across all
		// instances; a single Claim holds one owner's row and needs no turn.
		b.Queue(claimBatchLockSQL)
		steps = append([]string{"wait for the batch turn"}, steps...)
	}
	b.Queue(sweepSQL, pgx.NamedArgs{"now": now})
	b.Queue(settleSQL, pgx.NamedArgs{"now": now})
	for range n {
		b.Queue(claimSQL, pgx.NamedArgs{"now": now, "until": now.Add(lease)})
	}
	br := s.pool.SendBatch(ctx, b)
	for _, step := range steps {
		if _, err := br.Exec(); err != nil {
			br.Close() // reports the same failure
			return nil, fmt.Errorf("pgstore: claim: %s: %w", step, classify(ctx, err))
		}
	}
	var ts []taskstore.Task
	var err error
	for range n {
		var t taskstore.Task
		if t, err = scanTask(br.QueryRow()); err != nil {
			break
		}
		ts = append(ts, t)
	}
	// The batch commits when its results are closed: only then is the claim (or the sweep) made.
	if cerr := br.Close(); cerr != nil && (err == nil || errors.Is(err, pgx.ErrNoRows)) {
		return nil, fmt.Errorf("pgstore: claim: commit: %w", classify(ctx, cerr))
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("pgstore: claim: %w", classify(ctx, err))
	}
	if len(ts) == 0 {
		return nil, taskstore.ErrNoTask
	}
	return ts, nil
}

// Extend renews the live lease of an in-progress task to lease from now.
func (s *Store) Extend(ctx context.Context, id, token int64, lease time.Duration) (taskstore.Task, error) {
	if lease <= 0 {
		return taskstore.Task{}, fmt.Errorf("pgstore: extend %d: lease %v is not positive", id, lease)
	}
	if err := s.usable(); err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: extend %d: %w", id, err)
	}
	now := s.now()
	t, err := scanTask(s.pool.QueryRow(ctx, extendSQL, pgx.NamedArgs{"id": id, "token": token, "now": now,
		"until": now.Add(lease)}))
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.refusal(ctx, id, token)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: extend %d: %w", id, classify(ctx, err))
	}
	return t, nil
}

// Finish marks the task finished and returns it; see taskstore.Store for who may.
func (s *Store) Finish(ctx context.Context, id, token int64) (taskstore.Task, error) {
	if err := s.usable(); err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: finish %d: %w", id, err)
	}
	now := s.now()
	t, err := scanTask(s.pool.QueryRow(ctx, finishSQL, pgx.NamedArgs{"id": id, "token": token, "now": now}))
	if errors.Is(err, pgx.ErrNoRows) {
		var state wire.State
		if state, err = s.refusal(ctx, id, token); taskstore.IsFinishRetry(token, state, err) {
			// A retry: the task as the first finish left it, read as Get reads it.
			t, err = scanTask(s.pool.QueryRow(ctx, getSQL, pgx.NamedArgs{"id": id, "now": now}))
			if errors.Is(err, pgx.ErrNoRows) {
				return taskstore.Task{ID: id, State: wire.Finished}, nil // deleted since the probe
			}
		}
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: finish %d: %w", id, classify(ctx, err))
	}
	return t, nil
}

// Fail records a failed attempt and returns the task afterwards.
func (s *Store) Fail(ctx context.Context, id, token int64, reason string, permanent bool) (taskstore.Task, error) {
	if err := s.usable(); err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: fail %d: %w", id, err)
	}
	var woke bool
	t, err := scanTask(s.pool.QueryRow(ctx, failSQL, pgx.NamedArgs{"id": id, "token": token, "now": s.now(),
		"reason": reason, "permanent": permanent, "origin": s.origin}), &woke)
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.refusal(ctx, id, token)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: fail %d: %w", id, classify(ctx, err))
	}
	return t, nil
}

// Release hands an in-progress task back without counting the attempt.
func (s *Store) Release(ctx context.Context, id, token int64) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("pgstore: release %d: %w", id, err)
	}
	var woke bool
	err := s.pool.QueryRow(ctx, releaseSQL, pgx.NamedArgs{"id": id, "token": token, "now": s.now(),
		"origin": s.origin}).Scan(&woke)
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.refusal(ctx, id, token)
	}
	if err != nil {
		return fmt.Errorf("pgstore: release %d: %w", id, classify(ctx, err))
	}
	return nil
}

// Retry hands an in-progress task back after a transient failure, to be claimed again after a wait.
func (s *Store) Retry(ctx context.Context, id, token int64, reason string, b taskstore.RetryBackoff) (taskstore.Task, error) {
	if err := s.usable(); err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: retry %d: %w", id, err)
	}
	t, err := scanTask(s.pool.QueryRow(ctx, retrySQL, pgx.NamedArgs{"id": id, "token": token, "now": s.now(),
		"reason": reason, "waits": b.Waits()}))
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = s.refusal(ctx, id, token)
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: retry %d: %w", id, classify(ctx, err))
	}
	return t, nil
}

// refusal explains why a guarded update of task id on behalf of token matched no row: ErrNotFound, or
// taskstore.Refusal's answer (or the probe's own failure), with the task's stored state.
func (s *Store) refusal(ctx context.Context, id, token int64) (wire.State, error) {
	state, current, _, err := s.probeRow(ctx, id)
	if err != nil {
		return 0, err
	}
	return state, taskstore.RefusalIn(state, token, current)
}

// probeRow reads a task's stored state, token and pending flag; ErrNotFound for an unknown id. A
// deleted task leaves a tombstone, so existence cannot change between a failed update and the probe.
func (s *Store) probeRow(ctx context.Context, id int64) (wire.State, int64, bool, error) {
	var (
		state   int16
		token   int64
		pending bool
	)
	err := s.pool.QueryRow(ctx, probeSQL, pgx.NamedArgs{"id": id}).Scan(&state, &token, &pending)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, false, taskstore.ErrNotFound
	}
	return wire.State(state), token, pending, err
}

// Set overwrites a task's state; InProgress starts a lease of the given length.
func (s *Store) Set(ctx context.Context, id int64, state wire.State, lease time.Duration) error {
	if !state.Valid() {
		return fmt.Errorf("pgstore: set %d to %d: %w", id, int(state), taskstore.ErrInvalidState)
	}
	now := s.now()
	var until *time.Time // NULL unless in progress
	if state == wire.InProgress {
		if lease <= 0 {
			return fmt.Errorf("pgstore: set %d in progress: lease %v is not positive", id, lease)
		}
		u := now.Add(lease)
		until = &u
	}
	if err := s.usable(); err != nil {
		return fmt.Errorf("pgstore: set %d: %w", id, err)
	}
	var woke bool
	err := s.pool.QueryRow(ctx, setSQL, pgx.NamedArgs{"id": id, "state": int16(state), "now": now, "until": until,
		"origin": s.origin}).Scan(&woke)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pgstore: set %d: %w", id, taskstore.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("pgstore: set %d: %w", id, classify(ctx, err))
	}
	return nil
}

// Cancel stops a task that has not settled; see taskstore.Store. PostgreSQL commits (and syncs) the
// statement before answering.
func (s *Store) Cancel(ctx context.Context, id int64) (taskstore.Task, error) {
	if err := s.usable(); err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: cancel %d: %w", id, err)
	}
	// The update matches only a task that has not settled; a read tells the other cases apart. A
	// holder's Release between the two can make the read see a task the update would now match: then
	// update again.
	for range 3 {
		t, err := scanTask(s.pool.QueryRow(ctx, cancelSQL, pgx.NamedArgs{"id": id, "now": s.now()}))
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return taskstore.Task{}, fmt.Errorf("pgstore: cancel %d: %w", id, classify(ctx, err))
		}
		if t, err = s.Get(ctx, id); err != nil {
			return taskstore.Task{}, err
		}
		switch t.State {
		case wire.Cancelled:
			return t, nil
		case wire.Finished, wire.Failed:
			return taskstore.Task{}, fmt.Errorf("pgstore: cancel %d: %w", id, taskstore.ErrSettled)
		}
	}
	return taskstore.Task{}, fmt.Errorf("pgstore: cancel %d: the task kept changing under the update", id)
}

// Requeue queues a failed or cancelled task again; see taskstore.Store. PostgreSQL commits (and
// syncs) the statement before answering.
func (s *Store) Requeue(ctx context.Context, id int64) (taskstore.Task, error) {
	if err := s.usable(); err != nil {
		return taskstore.Task{}, fmt.Errorf("pgstore: requeue %d: %w", id, err)
	}
	// As in Cancel: the update matches only a task that may be requeued, and a read tells the other
	// cases apart; a task that changed in between (a holder's Fail) is updated again.
	for range 3 {
		var woke bool
		t, err := scanTask(s.pool.QueryRow(ctx, requeueSQL, pgx.NamedArgs{"id": id, "now": s.now(), "origin": s.origin}), &woke)
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return taskstore.Task{}, fmt.Errorf("pgstore: requeue %d: %w", id, classify(ctx, err))
		}
		if t, err = s.Get(ctx, id); err != nil {
			return taskstore.Task{}, err
		}
		if err := taskstore.RequeueRefusal(t); err != nil {
			return taskstore.Task{}, fmt.Errorf("pgstore: requeue %d: %w", id, err)
		}
	}
	return taskstore.Task{}, fmt.Errorf("pgstore: requeue %d: the task kept changing under the update", id)
}

// Delete leaves a tombstone of the task; see taskstore.Store.
func (s *Store) Delete(ctx context.Context, id int64) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("pgstore: delete %d: %w", id, err)
	}
	tag, err := s.pool.Exec(ctx, deleteSQL, pgx.NamedArgs{"id": id, "now": s.now()})
	if err != nil {
		return fmt.Errorf("pgstore: delete %d: %w", id, classify(ctx, err))
	}
	if tag.RowsAffected() == 0 {
		// No row: an id never handed out, or a tombstone PurgeDeleted removed (deleted already).
		if _, _, _, err := s.probeRow(ctx, id); err != nil {
			return fmt.Errorf("pgstore: delete %d: %w", id, classify(ctx, err))
		}
	}
	return nil
}

// PurgeDeleted removes a batch of old tombstones; see taskstore.Store.
func (s *Store) PurgeDeleted(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	if olderThan < 0 || limit <= 0 {
		return 0, fmt.Errorf("pgstore: purge deleted: age %v must not be negative and limit %d must be positive", olderThan, limit)
	}
	if err := s.usable(); err != nil {
		return 0, fmt.Errorf("pgstore: purge deleted: %w", err)
	}
	var n int64
	err := s.pool.QueryRow(ctx, purgeSQL, pgx.NamedArgs{"cutoff": s.now().Add(-olderThan), "limit": limit}).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("pgstore: purge deleted: %w", classify(ctx, err))
	}
	return int(n), nil
}

// ExpirePending fails the pending tasks created olderThan or longer ago and returns how many.
func (s *Store) ExpirePending(ctx context.Context, olderThan time.Duration) (int, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("pgstore: expire pending: age %v is negative", olderThan)
	}
	if err := s.usable(); err != nil {
		return 0, fmt.Errorf("pgstore: expire pending: %w", err)
	}
	now := s.now()
	tag, err := s.pool.Exec(ctx, expireSQL, pgx.NamedArgs{"now": now, "cutoff": now.Add(-olderThan)})
	if err != nil {
		return 0, fmt.Errorf("pgstore: expire pending: %w", classify(ctx, err))
	}
	return int(tag.RowsAffected()), nil
}

// ClaimExpired holds and returns a batch of settled tasks past olderThan; see taskstore.Store.
func (s *Store) ClaimExpired(ctx context.Context, olderThan time.Duration, limit int, hold time.Duration) ([]int64, error) {
	if olderThan < 0 || limit <= 0 || hold <= 0 {
		return nil, fmt.Errorf("pgstore: claim expired: age %v, limit %d and hold %v must be positive", olderThan, limit, hold)
	}
	if err := s.usable(); err != nil {
		return nil, fmt.Errorf("pgstore: claim expired: %w", err)
	}
	now := s.now()
	rows, err := s.pool.Query(ctx, claimExpiredSQL, pgx.NamedArgs{
		"now": now, "until": now.Add(hold), "cutoff": now.Add(-olderThan), "limit": limit})
	if err != nil {
		return nil, fmt.Errorf("pgstore: claim expired: %w", classify(ctx, err))
	}
	type settled struct {
		id int64
		at time.Time
	}
	batch, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (settled, error) {
		var t settled
		err := row.Scan(&t.id, &t.at)
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: claim expired: %w", classify(ctx, err))
	}
	// RETURNING has no order of its own.
	slices.SortFunc(batch, func(a, b settled) int { return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.id, b.id)) })
	ids := make([]int64, len(batch))
	for i, t := range batch {
		ids[i] = t.id
	}
	return ids, nil
}

// List yields every task in id order. It reads a page at a time along the primary key, holding a
// connection (and a snapshot, which would hold back vacuum) only for one page, however slowly the
// caller consumes; each page reflects the moment it was read. Ids are never reused (a deleted task
// leaves a tombstone), so every task is yielded at most once.
func (s *Store) List(ctx context.Context) iter.Seq2[taskstore.Task, error] {
	return func(yield func(taskstore.Task, error) bool) {
		if err := s.usable(); err != nil {
			yield(taskstore.Task{}, fmt.Errorf("pgstore: list: %w", err))
			return
		}
		from := int64(0)
		for {
			page, err := s.listPage(ctx, from)
			if err != nil {
				yield(taskstore.Task{}, fmt.Errorf("pgstore: list: %w", classify(ctx, err)))
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
	if err := s.usable(); err != nil {
		return taskstore.Counts{}, fmt.Errorf("pgstore: counts: %w", err)
	}
	var total, claimable, delayed, pending, inProgress, lapsedQueued, lapsedPending, lapsedFailed, failed,
		cancelled, deleted int64
	err := s.pool.QueryRow(ctx, countsSQL, pgx.NamedArgs{"now": s.now()}).Scan(
		&total, &claimable, &delayed, &pending, &inProgress, &lapsedQueued, &lapsedPending, &lapsedFailed, &failed,
		&cancelled, &deleted)
	if err != nil {
		return taskstore.Counts{}, fmt.Errorf("pgstore: counts: %w", classify(ctx, err))
	}
	c := taskstore.Counts{
		Queued:     claimable + delayed + lapsedQueued,
		Pending:    pending + lapsedPending,
		Processing: inProgress - lapsedQueued - lapsedPending - lapsedFailed,
		Failed:     failed + lapsedFailed,
		Cancelled:  cancelled,
	}
	c.Finished = total - deleted - c.Queued - c.Pending - c.Processing - c.Failed - c.Cancelled
	return c, nil
}

// usageSQL reads one owner's row of the usage table; an owner without one keeps nothing.
const usageSQL = `SELECT coalesce(sum(tasks), 0)::bigint, coalesce(sum(bytes), 0)::bigint FROM usage WHERE owner = @owner::text`

// Usage returns what owner keeps stored.
func (s *Store) Usage(ctx context.Context, owner string) (taskstore.Usage, error) {
	if err := s.usable(); err != nil {
		return taskstore.Usage{}, fmt.Errorf("pgstore: usage: %w", err)
	}
	var u taskstore.Usage
	if err := s.pool.QueryRow(ctx, usageSQL, pgx.NamedArgs{"owner": owner}).Scan(&u.Tasks, &u.Bytes); err != nil {
		return taskstore.Usage{}, fmt.Errorf("pgstore: usage: %w", classify(ctx, err))
	}
	return u, nil
}

// Ping checks that the server answers within pingTimeout (and that the store has connected).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.usable(); err != nil {
		return fmt.Errorf("pgstore: ping: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := s.pool.Ping(pctx); err != nil {
		return fmt.Errorf("pgstore: ping: %w", classify(ctx, err))
	}
	return nil
}

// classify marks the failures of the engine rather than of the request as transient (fault): the
// server cannot be reached or its answer not heard (a refused, broken or timed-out connection), it is
// shutting down or starting up, out of resources (out of disk space: NoSpace), or the transaction lost
// a serialization race. Every other error (the server's answer to the request, the store's sentinels)
// is returned unchanged, and so is every error once ctx ended: the caller's own cancellation or
// deadline is not the database's failure.
func classify(ctx context.Context, err error) error {
	var classified *fault.Error
	if err == nil || ctx.Err() != nil || errors.As(err, &classified) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch code := pgErr.Code; {
		case code == "53100": // disk_full
			return fault.NoSpace(what, err)
		case strings.HasPrefix(code, "08"), // connection exception
			strings.HasPrefix(code, "53"),                     // insufficient resources: memory, connections
			code == "57P01", code == "57P02", code == "57P03", // shutdown, crash shutdown, cannot connect now
			code == "40001", code == "40P01": // serialization failure, deadlock
			return fault.Unavailable(what, err)
		}
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fault.Timeout(ctx, what, err) // a deadline of our own: a connect timeout, pingTimeout
	}
	if unreachable(err) {
		return fault.Unavailable(what, err)
	}
	return err
}

// unreachable reports whether err is a failure to reach the server or to hear its answer rather than
// an answer: a refused, reset or closed connection, a dial or read that timed out.
func unreachable(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) || pgconn.Timeout(err) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, pgconn.ErrConnClosed) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
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

// Close closes the pool and ends any Watch and the background connecting. Calling it again does nothing.
func (s *Store) Close() error {
	s.shut()
	s.connecting.Wait()
	s.pool.Close()
	return nil
}

// scanTask reads the columns of taskColumns or returnColumns, then extra.
func scanTask(row pgx.Row, extra ...any) (taskstore.Task, error) {
	var (
		t                                            taskstore.Task
		state                                        int64
		created, started, finished, leaseTo, retryAt pgtype.Timestamptz
	)
	dest := append([]any{&t.ID, &state, &t.Pending, &t.Attempts, &t.MaxAttempts, &t.Token, &t.Error,
		&created, &started, &finished, &leaseTo, &t.Op, &retryAt, &t.Retries, &t.Owner, &t.Name}, extra...)
	if err := row.Scan(dest...); err != nil {
		return taskstore.Task{}, err
	}
	t.State = wire.State(state)
	t.CreatedAt = fromTimestamptz(created)
	t.StartedAt = fromTimestamptz(started)
	t.FinishedAt = fromTimestamptz(finished)
	t.LeaseUntil = fromTimestamptz(leaseTo)
	t.RetryAt = fromTimestamptz(retryAt)
	return t, nil
}

// fromTimestamptz maps NULL to the zero time, and times to UTC as sqlitestore reports them.
func fromTimestamptz(ts pgtype.Timestamptz) time.Time {
	if !ts.Valid {
		return time.Time{}
	}
	return ts.Time.UTC()
}
