// Package sqlitestore is the embedded task store: a single SQLite database file (WAL mode) driven
// through modernc.org/sqlite, so the binary needs no cgo and no separate database server.
//
// Concurrency design: SQLite allows one writer at a time, so every write goes through one *sql.DB
// limited to a single connection; callers queue on Go's connection pool instead of spinning on
// SQLITE_BUSY. Reads (Get, List) use a second, query-only pool; in WAL mode readers work from a
// snapshot and never wait for the writer.
//
// Fencing: each task carries its own token, raised by one with every claim (Claim or Set InProgress)
// in the same UPDATE that claims it, so tokens only grow per task and cost no extra write. Guarded
// writes (Extend, Finish, Fail, Release, Retry) are single UPDATEs on the primary key; only when one
// matches nothing does a probe read explain why.
//
// Failures: a full disk fails writes with a transient out-of-space error (fault.NoSpace) while reads
// go on, and a database that another process keeps locked past the busy timeout is unavailable for now
// (fault.Unavailable); both clear by themselves once the cause does (see classify).
package sqlitestore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"iter"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"modernc.org/sqlite" // also registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// Options configures a Store.
type Options struct {
	// Now returns the current time; nil means time.Now. Tests inject a fake clock so lease
	// expiry can be checked without sleeping.
	Now func() time.Time
}

// Store is a taskstore.Store backed by a SQLite file. It is safe for concurrent use.
type Store struct {
	w *sql.DB // the single writer connection
	// writes runs the writes on w, those of concurrent callers sharing a transaction.
	writes *batcher
	r      *sql.DB // query-only readers
	dir    string  // the database's directory, whose free space tells a full disk (see classify)
	now    func() time.Time
	// durable fsyncs the WAL for the commits that must survive power loss.
	durable *walSync

	// Prepared statements for the hot paths. Those on w stay prepared on its one connection, so
	// a transaction's tx.StmtContext reuses them rather than re-preparing.
	create, activate, sweep, settle, claim, extend, finish, fail, release, retry, set, expire, probe *sql.Stmt // on w
	findKey, clearKey, createKeyed, abandon, cancel, requeue, del, claimExpired, purge, getW         *sql.Stmt // on w
	get, counts, ping, usage                                                                         *sql.Stmt // on r
}

var (
	_ taskstore.Store    = (*Store)(nil)
	_ taskstore.Batching = (*Store)(nil)
)

// Index names are referenced by the query-plan test.
const (
	claimableIndex = "tasks_claimable"
	leaseIndex     = "tasks_lease"
	pendingIndex   = "tasks_pending"
	failedIndex    = "tasks_failed"
	retryIndex     = "tasks_retry"
	keyIndex       = "tasks_idem"
	turnIndex      = "owners_turn"
	goneIndex      = "tasks_gone"
	settledIndex   = "tasks_settled"
	deletedIndex   = "tasks_deleted"
)

// what names the task database in transient errors (fault).
const what = "the task database"

// maxPageSize is SQLite's largest page size.
const maxPageSize = 64 << 10

// migrations returns the schema steps; element i upgrades a database from user_version i to i+1.
// A function rather than a package variable keeps the package free of mutable state. A step, once
// released, never changes: databases out there were built by it.
func migrations() []string {
	return []string{
		// 1. Times are unix nanoseconds; NULL means "zero time". id is the rowid alias, so MAX(id)
		// is a b-tree edge lookup. The partial indexes hold only the rows Claim looks for, so
		// claiming stays O(log n) however many finished tasks accumulate.
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

		// 2. Failed state (3), attempt limits, fencing tokens, error reasons, pending expiry.
		// max_attempts' default is the value of taskstore.DefaultMaxAttempts when this step was
		// written; Create always stores it explicitly. token is per task and grows by one with every
		// claim; a task claimed under version 1 gets a token from its attempts so that "0" keeps
		// meaning "never claimed". The pending index holds the few tasks ExpirePending looks at.
		`ALTER TABLE tasks ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3;
		ALTER TABLE tasks ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
		ALTER TABLE tasks ADD COLUMN error TEXT NOT NULL DEFAULT '';
		UPDATE tasks SET token = MAX(attempts, 1) WHERE started_at IS NOT NULL;
		CREATE INDEX ` + pendingIndex + ` ON tasks (created_at) WHERE pending = 1 AND state < 2;`,

		// 3. Counts: failed tasks are few (an upload that cannot be processed), so an index of them
		// lets Counts tell failed from finished without reading the whole table.
		`CREATE INDEX ` + failedIndex + ` ON tasks (id) WHERE state = 3;`,

		// 4. The operation chain a worker applies to the task's image ('' means the default, swap).
		`ALTER TABLE tasks ADD COLUMN op TEXT NOT NULL DEFAULT '';`,

		// 5. Transient failures (Retry) and idempotent creates (CreateOnce). A task handed back after
		// a transient failure waits until retry_at: the claimable index leaves it out until Claim's
		// sweep clears a due retry_at, so claims still walk one index in id order; the retry index
		// holds the few waiting tasks that sweep and Counts look for. idem_key is the idempotency key
		// a task was created with; the unique index lets concurrent creates with one key make one task.
		`ALTER TABLE tasks ADD COLUMN retry_at INTEGER;
		ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
		ALTER TABLE tasks ADD COLUMN idem_key TEXT;
		DROP INDEX ` + claimableIndex + `;
		CREATE INDEX ` + claimableIndex + ` ON tasks (id) WHERE state = 0 AND pending = 0 AND retry_at IS NULL;
		CREATE INDEX ` + retryIndex + ` ON tasks (retry_at) WHERE retry_at IS NOT NULL;
		CREATE UNIQUE INDEX ` + keyIndex + ` ON tasks (idem_key) WHERE idem_key IS NOT NULL;`,

		// 6. Owners take turns (fair claims). owners holds, per owner, how many of its tasks are
		// claimable (queued: the rows of the claimable index) and the claim sequence number of its
		// latest claim (served); triggers keep both in the statement that changes a task, whichever
		// statement it is. Claim picks the first owner of the turn index (least recently served
		// among those with work), then that owner's lowest id in the claimable index, now keyed by
		// (owner, id): two index descents, however many tasks and owners wait. The served index
		// gives the next sequence number; an owner seen for the first time joins the turn last.
		// Tasks created before this step belong to owner ''.
		`ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT '';
		CREATE TABLE owners (
			owner  TEXT PRIMARY KEY,
			queued INTEGER NOT NULL,
			served INTEGER NOT NULL
		) STRICT, WITHOUT ROWID;
		CREATE INDEX ` + turnIndex + ` ON owners (served, owner) WHERE queued > 0;
		CREATE INDEX owners_served ON owners (served);
		DROP INDEX ` + claimableIndex + `;
		CREATE INDEX ` + claimableIndex + ` ON tasks (owner, id) WHERE state = 0 AND pending = 0 AND retry_at IS NULL;
		INSERT INTO owners (owner, queued, served)
			SELECT '', COUNT(*), 0 FROM tasks WHERE state = 0 AND pending = 0 AND retry_at IS NULL;
		CREATE TRIGGER tasks_owner_insert AFTER INSERT ON tasks
		WHEN NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL
		BEGIN
			INSERT OR IGNORE INTO owners (owner, queued, served) VALUES (NEW.owner, 0, (SELECT IFNULL(MAX(served), 0) + 1 FROM owners));
			UPDATE owners SET queued = queued + 1 WHERE owner = NEW.owner;
		END;
		CREATE TRIGGER tasks_owner_update AFTER UPDATE OF state, pending, retry_at ON tasks
		WHEN (OLD.state = 0 AND OLD.pending = 0 AND OLD.retry_at IS NULL) <> (NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL)
		BEGIN
			INSERT OR IGNORE INTO owners (owner, queued, served) VALUES (NEW.owner, 0, (SELECT IFNULL(MAX(served), 0) + 1 FROM owners));
			UPDATE owners SET
				queued = queued + IIF(NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL, 1, -1),
				served = IIF(NEW.state = 1, (SELECT MAX(served) FROM owners) + 1, served)
				WHERE owner = NEW.owner;
		END;`,

		// 7. Cancelled tasks (state 4) and deleted tasks' tombstones (state 5): few, so an index of
		// them lets Counts leave them out of the finished without reading the table.
		`CREATE INDEX ` + goneIndex + ` ON tasks (state) WHERE state >= 4;`,

		// 8. Retention: ClaimExpired walks the settled tasks by when they settled, and holds a batch
		// for a sweeper until sweep_until so that other sweepers skip it.
		`ALTER TABLE tasks ADD COLUMN sweep_until INTEGER;
		CREATE INDEX ` + settledIndex + ` ON tasks (finished_at) WHERE state IN (2, 3, 4);`,

		// 9. Quotas and tombstone privacy. size is the bytes of a task's source image (Activate);
		// usage holds, per owner, its tasks that are not deleted and their sizes, kept by triggers in
		// the statement that changes a task, and its row goes once the owner keeps nothing. It is
		// not the owners table: owners are written by every claim and join the turn when their first
		// task becomes claimable, usage changes only when a task is created, activated or deleted. An
		// owner that keeps nothing any more is forgotten in both (it joins the turn as new if it comes
		// back); the two triggers a delete runs (in an order SQLite does not promise) both check it.
		// A tombstone keeps no owner (delete sets it to ''), so the turn trigger only counts a task
		// whose owner stays, and a move of owner takes the task's claimable count along. Tombstones
		// of the past lose their owner here; tasks stored before have size 0 (their size was never
		// told to the database).
		`ALTER TABLE tasks ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
		UPDATE tasks SET owner = '' WHERE state = 5;
		CREATE TABLE usage (
			owner TEXT PRIMARY KEY,
			tasks INTEGER NOT NULL,
			bytes INTEGER NOT NULL
		) STRICT, WITHOUT ROWID;
		INSERT INTO usage (owner, tasks, bytes)
			SELECT owner, COUNT(*), 0 FROM tasks WHERE state <> 5 GROUP BY owner;
		DELETE FROM owners WHERE queued = 0 AND owner NOT IN (SELECT owner FROM usage);
		DROP TRIGGER tasks_owner_update;
		CREATE TRIGGER tasks_owner_update AFTER UPDATE OF state, pending, retry_at ON tasks
		WHEN OLD.owner = NEW.owner
			AND (OLD.state = 0 AND OLD.pending = 0 AND OLD.retry_at IS NULL) <> (NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL)
		BEGIN
			INSERT OR IGNORE INTO owners (owner, queued, served) VALUES (NEW.owner, 0, (SELECT IFNULL(MAX(served), 0) + 1 FROM owners));
			UPDATE owners SET
				queued = queued + IIF(NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL, 1, -1),
				served = IIF(NEW.state = 1, (SELECT MAX(served) FROM owners) + 1, served)
				WHERE owner = NEW.owner;
		END;
		CREATE TRIGGER tasks_owner_move AFTER UPDATE OF owner ON tasks
		WHEN OLD.owner <> NEW.owner
		BEGIN
			UPDATE owners SET queued = queued - 1
				WHERE owner = OLD.owner AND OLD.state = 0 AND OLD.pending = 0 AND OLD.retry_at IS NULL;
			INSERT OR IGNORE INTO owners (owner, queued, served)
				SELECT NEW.owner, 0, (SELECT IFNULL(MAX(served), 0) + 1 FROM owners)
				WHERE NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL;
			UPDATE owners SET queued = queued + 1
				WHERE owner = NEW.owner AND NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL;
			DELETE FROM owners WHERE owner = OLD.owner AND queued = 0
				AND NOT EXISTS (SELECT 1 FROM usage WHERE owner = OLD.owner);
		END;
		CREATE TRIGGER tasks_usage_insert AFTER INSERT ON tasks
		WHEN NEW.state <> 5
		BEGIN
			INSERT OR IGNORE INTO usage (owner, tasks, bytes) VALUES (NEW.owner, 0, 0);
			UPDATE usage SET tasks = tasks + 1, bytes = bytes + NEW.size WHERE owner = NEW.owner;
		END;
		CREATE TRIGGER tasks_usage_update AFTER UPDATE OF state, owner, size ON tasks
		WHEN OLD.owner <> NEW.owner OR (OLD.state = 5) <> (NEW.state = 5) OR OLD.size <> NEW.size
		BEGIN
			UPDATE usage SET tasks = tasks - 1, bytes = bytes - OLD.size
				WHERE owner = OLD.owner AND OLD.state <> 5;
			DELETE FROM usage WHERE owner = OLD.owner AND tasks <= 0;
			DELETE FROM owners WHERE owner = OLD.owner AND queued = 0
				AND NOT EXISTS (SELECT 1 FROM usage WHERE owner = OLD.owner);
			INSERT OR IGNORE INTO usage (owner, tasks, bytes) SELECT NEW.owner, 0, 0 WHERE NEW.state <> 5;
			UPDATE usage SET tasks = tasks + 1, bytes = bytes + NEW.size
				WHERE owner = NEW.owner AND NEW.state <> 5;
		END;`,

		// 10. Tombstones end: PurgeDeleted removes those deleted long enough ago, walking the index of
		// them by when they were deleted, but never the highest id's (the next id is MAX(id) + 1), so a
		// missing id below the highest is a removed tombstone. The trigger counts them in purged, in
		// the delete's own statement, so that Counts' total stays the number of ids handed out.
		`CREATE TABLE purged (
			singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
			tombstones INTEGER NOT NULL
		) STRICT;
		INSERT INTO purged (singleton, tombstones) VALUES (1, 0);
		CREATE INDEX ` + deletedIndex + ` ON tasks (finished_at) WHERE state = 5;
		CREATE TRIGGER tasks_purged AFTER DELETE ON tasks WHEN OLD.state = 5
		BEGIN
			UPDATE purged SET tombstones = tombstones + 1;
		END;`,

		// 11. The upload's file name, to name the downloads ('' when the client gave none).
		`ALTER TABLE tasks ADD COLUMN name TEXT NOT NULL DEFAULT '';`,

		// 12. Bookkeeping that writes only what changes. The turn trigger wrote served back unchanged
		// when a task became claimable (an activate), which rewrote its entry in owners_served, one
		// page more in the commit; it now sets served only on a claim, and creates an owner's row only
		// when a task becomes claimable (a claimable task's owner has one). A task's size changing
		// alone (an activate) moves its owner's bytes in one statement, instead of taking the task out
		// of usage and putting it back, which on the way could forget the owner of a sole task for a
		// moment, and with it its turn.
		`DROP TRIGGER tasks_owner_update;
		CREATE TRIGGER tasks_owner_update AFTER UPDATE OF state, pending, retry_at ON tasks
		WHEN OLD.owner = NEW.owner
			AND (OLD.state = 0 AND OLD.pending = 0 AND OLD.retry_at IS NULL) <> (NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL)
		BEGIN
			INSERT OR IGNORE INTO owners (owner, queued, served)
				SELECT NEW.owner, 0, (SELECT IFNULL(MAX(served), 0) + 1 FROM owners)
				WHERE NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL;
			UPDATE owners SET queued = queued + IIF(NEW.state = 0 AND NEW.pending = 0 AND NEW.retry_at IS NULL, 1, -1)
				WHERE owner = NEW.owner AND NEW.state <> 1;
			UPDATE owners SET queued = queued - 1, served = (SELECT MAX(served) FROM owners) + 1
				WHERE owner = NEW.owner AND NEW.state = 1;
		END;
		DROP TRIGGER tasks_usage_update;
		CREATE TRIGGER tasks_usage_update AFTER UPDATE OF state, owner ON tasks
		WHEN OLD.owner <> NEW.owner OR (OLD.state = 5) <> (NEW.state = 5)
		BEGIN
			UPDATE usage SET tasks = tasks - 1, bytes = bytes - OLD.size
				WHERE owner = OLD.owner AND OLD.state <> 5;
			DELETE FROM usage WHERE owner = OLD.owner AND tasks <= 0;
			DELETE FROM owners WHERE owner = OLD.owner AND queued = 0
				AND NOT EXISTS (SELECT 1 FROM usage WHERE owner = OLD.owner);
			INSERT OR IGNORE INTO usage (owner, tasks, bytes) SELECT NEW.owner, 0, 0 WHERE NEW.state <> 5;
			UPDATE usage SET tasks = tasks + 1, bytes = bytes + NEW.size
				WHERE owner = NEW.owner AND NEW.state <> 5;
		END;
		CREATE TRIGGER tasks_usage_size AFTER UPDATE OF size ON tasks
		WHEN OLD.size <> NEW.size AND OLD.owner = NEW.owner AND OLD.state <> 5 AND NEW.state <> 5
		BEGIN
			UPDATE usage SET bytes = bytes + NEW.size - OLD.size WHERE owner = NEW.owner;
		END;`,
	}
}

// Row invariants beyond the columns' meaning:
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
const (
	// lapsedError is why an attempt whose lease lapsed failed.
	lapsedError = `printf('lease lapsed on attempt %d of %d', attempts, max_attempts)`
	// expiredError is why ExpirePending failed a task.
	expiredError = "upload never completed"
	// setFailedError is the reason Set(Failed) records when the task has none yet.
	setFailedError = "set to failed"

	// liveLease: in progress and not lapsed.
	liveLease = `state = 1 AND lease_until > :now`
	// liveHeldBy admits the holder of a live lease (Extend, Release); token 0 admits anyone.
	liveHeldBy = liveLease + ` AND (:token = 0 OR token = :token)`
	// heldBy admits whoever may report the outcome of the latest claim (Finish, Fail, Retry): with
	// token 0 the holder of a live lease; with a token, its holder as long as the claim is still open,
	// lapsed or not, because nobody claimed the task since (that would have changed the token).
	heldBy = `(CASE WHEN :token = 0 THEN ` + liveLease + `
		ELSE token = :token AND state <> 2 AND lease_until IS NOT NULL END)`
	// lapsedOut: in progress, lapsed, and out of attempts; readers report it failed.
	lapsedOut = `state = 1 AND lease_until <= :now AND attempts >= max_attempts`

	// retryAt is retry_at as readers report it: only while it is in the future.
	retryAt = `CASE WHEN retry_at > :now THEN retry_at END`

	// returnColumns are a row's fields as the scanner expects them, for RETURNING after a write
	// that leaves the row consistent (no lapsed lease to compute).
	returnColumns = `id, state, pending, attempts, max_attempts, token, error, created_at, started_at, finished_at,
		CASE WHEN state = 1 THEN lease_until END, op, ` + retryAt + `, retries, owner, name`

	// taskColumns computes a lapsed lease's outcome without writing, so readers stay on the
	// read-only pool; the next Claim makes it so in the table, with the same values.
	taskColumns = `id,
		CASE WHEN state = 1 AND lease_until <= :now
			THEN CASE WHEN attempts >= max_attempts THEN 3 ELSE 0 END
			ELSE state END,
		pending, attempts, max_attempts, token,
		CASE WHEN state = 1 AND lease_until <= :now THEN ` + lapsedError + ` ELSE error END,
		created_at, started_at,
		CASE WHEN ` + lapsedOut + ` THEN lease_until ELSE finished_at END,
		CASE WHEN state = 1 AND lease_until > :now THEN lease_until END,
		op, ` + retryAt + `, retries, owner, name`

	createSQL = `INSERT INTO tasks (id, state, pending, attempts, max_attempts, created_at, op, owner, name)
		SELECT IFNULL(MAX(id), -1) + 1, 0, :pending, 0, :max_attempts, :now, :op, :owner, :name FROM tasks
		RETURNING id`

	// createKeyedSQL is createSQL keeping the idempotency key with the task, when no task holds the key:
	// otherwise it inserts nothing and returns no row. A key seen for the first time, the common case,
	// so costs one statement and no transaction around it.
	createKeyedSQL = `INSERT INTO tasks (id, state, pending, attempts, max_attempts, created_at, op, idem_key, owner, name)
		SELECT (SELECT IFNULL(MAX(id), -1) + 1 FROM tasks), 0, :pending, 0, :max_attempts, :now, :op, :key, :owner, :name
		WHERE NOT EXISTS (SELECT 1 FROM tasks WHERE idem_key = :key)
		RETURNING ` + returnColumns

	// findKeySQL reads the task created with an idempotency key, through the unique index.
	findKeySQL = `SELECT ` + taskColumns + ` FROM tasks WHERE idem_key = :key`

	// clearKeySQL takes the key from a task that no longer answers for it, so that a new one can.
	clearKeySQL = `UPDATE tasks SET idem_key = NULL WHERE id = :id`

	// activateSQL refuses a pending task that failed (expired) before its upload completed, or was
	// cancelled or deleted meanwhile.
	activateSQL = `UPDATE tasks SET pending = 0, size = IIF(pending = 1, :size, size)
		WHERE id = :id AND state < 4 AND (pending = 0 OR state <> 3)`

	// abandonSQL fails a pending task that has not failed yet, as readers see it.
	abandonSQL = `UPDATE tasks SET state = 3, finished_at = :now, lease_until = NULL, retry_at = NULL, error = :reason
		WHERE id = :id AND pending = 1 AND state NOT IN (3, 4, 5) AND NOT (` + lapsedOut + `)`

	// sweepSQL settles lapsed leases so that claimSQL finds the retries through the claimable
	// index, in id order with the never-started tasks. It keeps lease_until: the claim stays open.
	sweepSQL = `UPDATE tasks SET
		state       = CASE WHEN attempts >= max_attempts THEN 3 ELSE 0 END,
		finished_at = CASE WHEN attempts >= max_attempts THEN lease_until END,
		error       = ` + lapsedError + `
		WHERE state = 1 AND lease_until <= :now`

	// settleSQL clears the retry_at that came due, which puts those tasks in the claimable index.
	settleSQL = `UPDATE tasks SET retry_at = NULL WHERE retry_at <= :now`

	// claimSQL takes the lowest claimable id of the owner whose turn it is: the least recently served
	// one with claimable tasks (the trigger marks it served). It needs not clear retry_at: the
	// claimable index holds only rows without one.
	claimSQL = `UPDATE tasks
		SET state = 1, attempts = attempts + 1, token = token + 1, started_at = :now, lease_until = :until
		WHERE id = (SELECT id FROM tasks
			WHERE owner = (SELECT owner FROM owners WHERE queued > 0 ORDER BY served, owner LIMIT 1)
				AND state = 0 AND pending = 0 AND retry_at IS NULL
			ORDER BY owner, id LIMIT 1)
		RETURNING ` + returnColumns

	extendSQL = `UPDATE tasks SET lease_until = :until
		WHERE id = :id AND ` + liveHeldBy + `
		RETURNING ` + returnColumns

	// finishSQL clears the last attempt's error: a finished task has none.
	finishSQL = `UPDATE tasks SET state = 2, finished_at = :now, lease_until = NULL, retry_at = NULL, error = ''
		WHERE id = :id AND ` + heldBy + `
		RETURNING ` + returnColumns

	failSQL = `UPDATE tasks SET
		state       = CASE WHEN :permanent OR attempts >= max_attempts THEN 3 ELSE 0 END,
		finished_at = CASE WHEN :permanent OR attempts >= max_attempts THEN :now END,
		lease_until = NULL,
		retry_at    = NULL,
		error       = :reason
		WHERE id = :id AND ` + heldBy + `
		RETURNING ` + returnColumns

	// releaseSQL takes back the attempt the claim counted; MAX guards a count an operator's Set
	// may have left lower.
	releaseSQL = `UPDATE tasks SET state = 0, attempts = MAX(attempts - 1, 0), lease_until = NULL, retry_at = NULL
		WHERE id = :id AND ` + liveHeldBy + `
		RETURNING id`

	// retrySQL is releaseSQL for a transient failure, reported as Fail reports one; the task waits
	// the element of :waits (a JSON array of nanoseconds, see taskstore.RetryBackoff.Waits) for its new retry count,
	// or the last one past the array's end.
	retrySQL = `UPDATE tasks SET
		state       = 0,
		attempts    = MAX(attempts - 1, 0),
		lease_until = NULL,
		error       = :reason,
		retries     = retries + 1,
		retry_at    = :now + json_extract(:waits, '$[' || MIN(retries, json_array_length(:waits) - 1) || ']')
		WHERE id = :id AND ` + heldBy + `
		RETURNING ` + returnColumns

	// setSQL overwrites the state. InProgress is a claim: it counts an attempt and issues a token.
	setSQL = `UPDATE tasks SET
		state       = :state,
		attempts    = attempts + (:state = 1),
		token       = token + (:state = 1),
		started_at  = CASE WHEN :state = 1 THEN :now ELSE started_at END,
		lease_until = CASE WHEN :state = 1 THEN :until END,
		finished_at = CASE WHEN :state IN (2, 3) THEN :now END,
		retry_at    = NULL,
		error       = CASE :state WHEN 2 THEN '' WHEN 3 THEN IIF(error = '', '` + setFailedError + `', error) ELSE error END
		WHERE id = :id AND state <> 5`

	// cancelSQL cancels a task that has not settled as readers see it: not started, or in progress and
	// not lapsed out of attempts. Closing the claim (lease_until NULL) refuses its holder.
	cancelSQL = `UPDATE tasks SET state = 4, finished_at = :now, lease_until = NULL, retry_at = NULL,
		error = '` + wire.CancelledError + `'
		WHERE id = :id AND (state = 0 OR state = 1 AND NOT (` + lapsedOut + `))
		RETURNING ` + returnColumns

	// requeueSQL queues a failed or cancelled task (as readers see it) whose upload completed again, as
	// if new: the trigger counts it claimable. Closing the claim (lease_until NULL) and keeping the token
	// refuses an earlier holder; sweep_until goes with the task's settling.
	requeueSQL = `UPDATE tasks SET state = 0, attempts = 0, retries = 0, error = '', started_at = NULL,
		finished_at = NULL, lease_until = NULL, retry_at = NULL, sweep_until = NULL
		WHERE id = :id AND pending = 0 AND (state IN (3, 4) OR ` + lapsedOut + `)
		RETURNING ` + returnColumns

	// deleteSQL leaves a tombstone: the row keeps its id (ids stay consecutive, Counts' total stays
	// MAX(id)+1) and its token, and loses what the client gave and who the client was. The
	// idempotency key goes, so a retry with it creates a new task.
	deleteSQL = `UPDATE tasks SET state = 5, op = '', error = '', lease_until = NULL, retry_at = NULL,
		idem_key = NULL, owner = '', name = '', size = 0, finished_at = :now
		WHERE id = :id
		RETURNING id`

	// expireSQL fails pending tasks that are still waiting (not started, or set in progress by hand
	// and lapsed); the partial index holds only those.
	expireSQL = `UPDATE tasks SET state = 3, finished_at = :now, lease_until = NULL, retry_at = NULL,
		error = '` + expiredError + `'
		WHERE pending = 1 AND state < 2 AND created_at <= :cutoff AND (state = 0 OR lease_until <= :now)`

	// claimExpiredSQL holds a batch of the longest settled tasks that no sweeper holds. The writer is
	// one connection, so two sweepers' statements run one after the other and take disjoint batches.
	claimExpiredSQL = `UPDATE tasks SET sweep_until = :until
		WHERE id IN (SELECT id FROM tasks
			WHERE state IN (2, 3, 4) AND finished_at <= :cutoff AND (sweep_until IS NULL OR sweep_until <= :now)
			ORDER BY finished_at, id LIMIT :limit)
		RETURNING id, finished_at`

	// usageSQL reads one owner's row of the usage table; an owner without one keeps nothing.
	usageSQL = `SELECT IFNULL((SELECT tasks FROM usage WHERE owner = :owner), 0), IFNULL((SELECT bytes FROM usage WHERE owner = :owner), 0)`

	// probeSQL explains why a guarded update matched no row. A missing id below the highest is a
	// tombstone that PurgeDeleted removed, and reads as one.
	probeSQL = `SELECT state, token FROM tasks WHERE id = :id
		UNION ALL
		SELECT 5, 0 WHERE :id >= 0 AND :id < (SELECT MAX(id) FROM tasks) AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = :id)`

	// purgeSQL removes a batch of the longest deleted tombstones but the highest id's (see step 10).
	purgeSQL = `DELETE FROM tasks WHERE id IN (SELECT id FROM tasks
		WHERE state = 5 AND finished_at <= :cutoff AND id < (SELECT MAX(id) FROM tasks)
		ORDER BY finished_at LIMIT :limit)`

	getSQL  = `SELECT ` + taskColumns + ` FROM tasks WHERE id = :id AND state <> 5`
	listSQL = `SELECT ` + taskColumns + ` FROM tasks WHERE state <> 5 ORDER BY id`

	// pingSQL reads the primary key's edge: a read of the file, as cheap as one gets.
	pingSQL = `SELECT IFNULL(MAX(id), -1) FROM tasks`

	// countsSQL reads, in one snapshot, the parts Counts adds up; each part walks a partial index (or
	// the primary key's edge), never the table: the total is MAX(id)+1 because ids are consecutive
	// from 0 and deleted tasks leave tombstones, and finished is what remains. Lapsed leases are split as
	// taskColumns does: attempts left, queued (or pending) again; none left, failed.
	countsSQL = `SELECT
		(SELECT IFNULL(MAX(id) + 1, 0) FROM tasks),
		(SELECT COUNT(*) FROM tasks WHERE state = 0 AND pending = 0 AND retry_at IS NULL),
		(SELECT COUNT(*) FROM tasks WHERE retry_at IS NOT NULL AND state = 0 AND pending = 0),
		(SELECT COUNT(*) FROM tasks WHERE pending = 1 AND state < 2 AND state = 0),
		(SELECT COUNT(*) FROM tasks WHERE state = 1),
		(SELECT COUNT(*) FROM tasks WHERE state = 1 AND lease_until <= :now AND attempts < max_attempts AND pending = 0),
		(SELECT COUNT(*) FROM tasks WHERE state = 1 AND lease_until <= :now AND attempts < max_attempts AND pending = 1),
		(SELECT COUNT(*) FROM tasks WHERE ` + lapsedOut + `),
		(SELECT COUNT(*) FROM tasks WHERE state = 3),
		(SELECT COUNT(*) FROM tasks WHERE state >= 4 AND state = 4),
		(SELECT COUNT(*) FROM tasks WHERE state >= 4 AND state = 5) + (SELECT tombstones FROM purged)`
)

// Open opens (creating if needed) the task database at path and migrates its schema.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		// Two pools must reach the same database, so it has to be a plain file path.
		return nil, fmt.Errorf("sqlitestore: open %q: need a file path", path)
	}
	s := &Store{dir: filepath.Dir(path), now: opts.Now}
	if s.now == nil {
		s.now = time.Now
	}

	// Pragmas go in the DSN so that every connection the pools (re)open gets them.
	// synchronous(NORMAL) writes the WAL on every commit without an fsync: every commit survives
	// kill -9 of the process; the commits that must also survive power loss (an id answered to a
	// client: Create of an active task, Activate, Set) then fsync the WAL through walSync, which
	// shares one fsync among concurrent callers. _txlock=immediate takes the write lock at BEGIN, so
	// a transaction never fails to upgrade a read lock (another process might hold the file too).
	s.durable = newWALSync(path + "-wal")
	var err error
	s.w, err = sql.Open("sqlite", dsn(path,
		"_pragma=busy_timeout(5000)",
		"_pragma=journal_mode(WAL)",
		"_pragma=synchronous(NORMAL)",
		"_txlock=immediate"))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %q: %w", path, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxIdleTime(0) // keep the one connection, and the statements prepared on it
	s.writes = newBatcher(s.w)

	if err := s.init(ctx, path); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlitestore: open %q: %w", path, s.classify(err)), s.Close())
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

	const readers = 8
	// The reader pool is opened after the writer put the file in WAL mode. Its connections are kept
	// rather than opened and closed with the load: each has its own page cache and prepared
	// statements, and churning them grows the process's memory. The cap leaves room for a List
	// consumer that calls Get while iterating.
	var err error
	s.r, err = sql.Open("sqlite", dsn(path,
		"_pragma=busy_timeout(5000)",
		"_pragma=query_only(1)",
		// Readers touch the recent tail of the table; a small page cache each (the OS caches the
		// file) bounds the pool's memory.
		"_pragma=cache_size(-512)"))
	if err != nil {
		return err
	}
	s.r.SetMaxOpenConns(readers)
	s.r.SetMaxIdleConns(readers)
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
		{s.w, &s.sweep, sweepSQL},
		{s.w, &s.settle, settleSQL},
		{s.w, &s.claim, claimSQL},
		{s.w, &s.extend, extendSQL},
		{s.w, &s.finish, finishSQL},
		{s.w, &s.fail, failSQL},
		{s.w, &s.release, releaseSQL},
		{s.w, &s.retry, retrySQL},
		{s.w, &s.set, setSQL},
		{s.w, &s.expire, expireSQL},
		{s.w, &s.probe, probeSQL},
		{s.w, &s.cancel, cancelSQL},
		{s.w, &s.requeue, requeueSQL},
		{s.w, &s.del, deleteSQL},
		{s.w, &s.claimExpired, claimExpiredSQL},
		{s.w, &s.purge, purgeSQL},
		{s.w, &s.findKey, findKeySQL},
		{s.w, &s.clearKey, clearKeySQL},
		{s.w, &s.createKeyed, createKeyedSQL},
		{s.w, &s.abandon, abandonSQL},
		{s.w, &s.getW, getSQL}, // a write's reads see the transaction it is part of
		{s.r, &s.get, getSQL},
		{s.r, &s.counts, countsSQL},
		{s.r, &s.ping, pingSQL},
		{s.r, &s.usage, usageSQL},
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

// stmt is st (prepared on the writer) inside tx.
func stmt(ctx context.Context, tx *sql.Tx, st *sql.Stmt) *sql.Stmt { return tx.StmtContext(ctx, st) }

// Create adds a not-started task and returns its id.
func (s *Store) Create(ctx context.Context, p taskstore.CreateParams) (int64, error) {
	// One writer serializes inserts, so MAX(id)+1 yields consecutive ids.
	var id int64
	now := s.now()
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		return stmt(ctx, tx, s.create).QueryRowContext(ctx, sql.Named("pending", p.Pending),
			sql.Named("max_attempts", p.Attempts()), sql.Named("now", nanos(now)), sql.Named("op", p.Op),
			sql.Named("owner", p.Owner), sql.Named("name", p.Name)).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("sqlitestore: create: %w", s.classify(err))
	}
	// A pending task is answered to nobody until Activate, whose fsync covers this commit too.
	if !p.Pending {
		if err := s.durable.sync(); err != nil {
			return 0, fmt.Errorf("sqlitestore: create: %w", s.classify(err))
		}
	}
	return id, nil
}

// CreateOnce creates a task unless one created with key less than window ago answers for it.
func (s *Store) CreateOnce(ctx context.Context, p taskstore.CreateParams, key string, window time.Duration) (
	taskstore.Task, bool, error,
) {
	if key == "" {
		return taskstore.Task{}, false, errors.New("sqlitestore: create once: empty idempotency key")
	}
	var (
		t        taskstore.Task
		replayed bool
	)
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) (err error) {
		t, replayed, err = s.createOnce(ctx, tx, p, key, window)
		return err
	})
	if err != nil {
		return taskstore.Task{}, false, fmt.Errorf("sqlitestore: create once: %w", s.classify(err))
	}
	// As in Create: a pending task's commit is made durable by its Activate.
	if !replayed && !p.Pending {
		if err := s.durable.sync(); err != nil {
			return taskstore.Task{}, false, fmt.Errorf("sqlitestore: create once: %w", s.classify(err))
		}
	}
	return t, replayed, nil
}

// createOnce creates the task when no task holds the key, in one statement; otherwise it looks the key
// up and replays, or moves the key to a new task. It runs on the single writer, so calls with one key
// take turns: the second finds what the first created.
func (s *Store) createOnce(ctx context.Context, tx *sql.Tx, p taskstore.CreateParams, key string, window time.Duration) (
	taskstore.Task, bool, error,
) {
	now := s.now()
	t, err := scanTask(stmt(ctx, tx, s.createKeyed).QueryRowContext(ctx, createKeyedArgs(p, key, now)...))
	if !errors.Is(err, sql.ErrNoRows) {
		return t, false, err
	}
	old, err := scanTask(stmt(ctx, tx, s.findKey).QueryRowContext(ctx, sql.Named("key", key), sql.Named("now", nanos(now))))
	switch {
	case err == nil && replays(old, now, window):
		return old, true, nil
	case err == nil:
		// The key moves to the new task: the unique index keeps one task per key.
		if _, err := stmt(ctx, tx, s.clearKey).ExecContext(ctx, sql.Named("id", old.ID)); err != nil {
			return taskstore.Task{}, false, err
		}
	case !errors.Is(err, sql.ErrNoRows):
		return taskstore.Task{}, false, err
	}
	// The key is free now (no task had it, or it was just cleared), so the insert returns the task.
	t, err = scanTask(stmt(ctx, tx, s.createKeyed).QueryRowContext(ctx, createKeyedArgs(p, key, now)...))
	return t, false, err
}

// createKeyedArgs are createKeyedSQL's arguments.
func createKeyedArgs(p taskstore.CreateParams, key string, now time.Time) []any {
	return []any{sql.Named("pending", p.Pending), sql.Named("max_attempts", p.Attempts()), sql.Named("now", nanos(now)),
		sql.Named("op", p.Op), sql.Named("owner", p.Owner), sql.Named("name", p.Name), sql.Named("key", key)}
}

// replays reports whether CreateOnce answers with old, the task created with the same key: it was
// created less than window before now, and it is not a pending task that failed (an upload that was
// never acknowledged, so the client's retry must upload again).
func replays(old taskstore.Task, now time.Time, window time.Duration) bool {
	return old.CreatedAt.After(now.Add(-window)) && !(old.Pending && old.State == wire.Failed)
}

// Activate makes a pending task claimable.
func (s *Store) Activate(ctx context.Context, id, size int64) error {
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := stmt(ctx, tx, s.activate).ExecContext(ctx, sql.Named("id", id), sql.Named("size", size))
		if err != nil {
			return err
		}
		// SQLite counts matched rows, so an already active task still reports 1.
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		// Only an unknown id or a failed pending task match nothing.
		if _, _, err := s.probeRow(ctx, tx, id); err != nil {
			return err
		}
		return taskstore.ErrNotPending
	})
	if err == nil {
		err = s.durable.sync()
	}
	if err != nil {
		return fmt.Errorf("sqlitestore: activate %d: %w", id, s.classify(err))
	}
	return nil
}

// Abandon fails a pending task whose upload will never complete.
func (s *Store) Abandon(ctx context.Context, id int64, reason string) error {
	if reason == "" {
		reason = wire.AbandonedError
	}
	// No fsync: an abandon lost to a power cut leaves a pending task, which ExpirePending fails later.
	// The update matches only a pending task that has not failed; a read in the same transaction
	// tells the other cases apart.
	now := s.now()
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := stmt(ctx, tx, s.abandon).ExecContext(ctx, sql.Named("id", id), sql.Named("now", nanos(now)),
			sql.Named("reason", reason))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		t, err := s.getIn(ctx, tx, id, now)
		switch {
		case err != nil:
			return err
		case !t.Pending:
			return taskstore.ErrNotPending
		case t.State != wire.Failed && t.State != wire.Cancelled:
			return fmt.Errorf("a pending task in state %v cannot be abandoned", t.State)
		}
		return nil // failed or cancelled already
	})
	if err != nil {
		return fmt.Errorf("sqlitestore: abandon %d: %w", id, s.classify(err))
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
		return taskstore.Task{}, fmt.Errorf("sqlitestore: get %d: %w", id, s.classify(err))
	}
	return t, nil
}

// getIn is Get inside a write's transaction: it sees the writes before it.
func (s *Store) getIn(ctx context.Context, tx *sql.Tx, id int64, now time.Time) (taskstore.Task, error) {
	t, err := scanTask(stmt(ctx, tx, s.getW).QueryRowContext(ctx, sql.Named("id", id), sql.Named("now", nanos(now))))
	if errors.Is(err, sql.ErrNoRows) {
		return taskstore.Task{}, taskstore.ErrNotFound
	}
	return t, err
}

// Claim settles lapsed leases and due retries, then takes the lowest-id claimable task and leases it
// for lease.
func (s *Store) Claim(ctx context.Context, lease time.Duration) (taskstore.Task, error) {
	if lease <= 0 {
		// A non-positive lease would hand out a task that is already lapsed.
		return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: lease %v is not positive", lease)
	}
	ts, err := s.claimN(ctx, 1, lease)
	if errors.Is(err, taskstore.ErrNoTask) {
		return taskstore.Task{}, taskstore.ErrNoTask
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: claim: %w", s.classify(err))
	}
	return ts[0], nil
}

// ClaimN is up to n Claims in one transaction; see taskstore.Store.
func (s *Store) ClaimN(ctx context.Context, n int, lease time.Duration) ([]taskstore.Task, error) {
	if lease <= 0 {
		return nil, fmt.Errorf("sqlitestore: claim %d: lease %v is not positive", n, lease)
	}
	if err := taskstore.CheckClaimBatch(n); err != nil {
		return nil, fmt.Errorf("sqlitestore: %w", err)
	}
	ts, err := s.claimN(ctx, n, lease)
	if errors.Is(err, taskstore.ErrNoTask) {
		return nil, taskstore.ErrNoTask
	}
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: claim %d: %w", n, s.classify(err))
	}
	return ts, nil
}

// claimN settles, then runs the claim statement up to n times: each run sees the previous one's
// claim and the owner it marked served, so the batch is exactly n Claims in a row.
func (s *Store) claimN(ctx context.Context, n int, lease time.Duration) (ts []taskstore.Task, err error) {
	now := s.now()
	err = s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if _, err := stmt(ctx, tx, s.sweep).ExecContext(ctx, sql.Named("now", nanos(now))); err != nil {
			return fmt.Errorf("settle lapsed leases: %w", err)
		}
		if _, err := stmt(ctx, tx, s.settle).ExecContext(ctx, sql.Named("now", nanos(now))); err != nil {
			return fmt.Errorf("settle due retries: %w", err)
		}
		claim := stmt(ctx, tx, s.claim)
		for range n {
			t, err := scanTask(claim.QueryRowContext(ctx, sql.Named("now", nanos(now)), sql.Named("until", nanos(now.Add(lease)))))
			if errors.Is(err, sql.ErrNoRows) {
				break
			}
			if err != nil {
				return err
			}
			ts = append(ts, t)
		}
		// Commit even when nothing was claimed: the sweep is correct on its own and saves the next
		// caller the work.
		return nil
	})
	if err == nil && len(ts) == 0 {
		err = taskstore.ErrNoTask
	}
	return ts, err
}

// guarded runs a write of task id on behalf of token whose statement returns the task, and explains
// a statement that matched no row (refusal).
func (s *Store) guarded(ctx context.Context, id, token int64, st *sql.Stmt, args ...any) (t taskstore.Task, err error) {
	err = s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		t, err = scanTask(stmt(ctx, tx, st).QueryRowContext(ctx, args...))
		if errors.Is(err, sql.ErrNoRows) {
			_, err = s.refusal(ctx, tx, id, token)
		}
		return err
	})
	return t, err
}

// Extend renews the live lease of an in-progress task to lease from now.
func (s *Store) Extend(ctx context.Context, id, token int64, lease time.Duration) (taskstore.Task, error) {
	if lease <= 0 {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: extend %d: lease %v is not positive", id, lease)
	}
	now := s.now()
	t, err := s.guarded(ctx, id, token, s.extend, sql.Named("id", id), sql.Named("token", token),
		sql.Named("now", nanos(now)), sql.Named("until", nanos(now.Add(lease))))
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: extend %d: %w", id, s.classify(err))
	}
	return t, nil
}

// Finish marks the task finished and returns it; see taskstore.Store for who may.
func (s *Store) Finish(ctx context.Context, id, token int64) (taskstore.Task, error) {
	now := s.now()
	var t taskstore.Task
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) (err error) {
		t, err = scanTask(stmt(ctx, tx, s.finish).QueryRowContext(ctx, sql.Named("id", id), sql.Named("token", token),
			sql.Named("now", nanos(now))))
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		state, err := s.refusal(ctx, tx, id, token)
		if !taskstore.IsFinishRetry(token, state, err) {
			return err
		}
		// A retry: the task as the first finish left it, read as Get reads it.
		t, err = s.getIn(ctx, tx, id, now)
		if errors.Is(err, taskstore.ErrNotFound) {
			t, err = taskstore.Task{ID: id, State: wire.Finished}, nil // deleted since the first finish
		}
		return err
	})
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: finish %d: %w", id, s.classify(err))
	}
	return t, nil
}

// Fail records a failed attempt and returns the task afterwards.
func (s *Store) Fail(ctx context.Context, id, token int64, reason string, permanent bool) (taskstore.Task, error) {
	t, err := s.guarded(ctx, id, token, s.fail, sql.Named("id", id), sql.Named("token", token),
		sql.Named("now", nanos(s.now())), sql.Named("reason", reason), sql.Named("permanent", permanent))
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: fail %d: %w", id, s.classify(err))
	}
	return t, nil
}

// Release hands an in-progress task back without counting the attempt.
func (s *Store) Release(ctx context.Context, id, token int64) error {
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var got int64
		err := stmt(ctx, tx, s.release).QueryRowContext(ctx, sql.Named("id", id), sql.Named("token", token),
			sql.Named("now", nanos(s.now()))).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			_, err = s.refusal(ctx, tx, id, token)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlitestore: release %d: %w", id, s.classify(err))
	}
	return nil
}

// Retry hands an in-progress task back after a transient failure, to be claimed again after a wait.
func (s *Store) Retry(ctx context.Context, id, token int64, reason string, b taskstore.RetryBackoff) (taskstore.Task, error) {
	t, err := s.guarded(ctx, id, token, s.retry, sql.Named("id", id), sql.Named("token", token),
		sql.Named("now", nanos(s.now())), sql.Named("reason", reason), sql.Named("waits", retryWaitsJSON(b)))
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: retry %d: %w", id, s.classify(err))
	}
	return t, nil
}

// retryWaitsJSON is b.Waits() in nanoseconds as a JSON array, for retrySQL.
func retryWaitsJSON(b taskstore.RetryBackoff) string {
	var ns []string
	for _, w := range b.Waits() {
		ns = append(ns, strconv.FormatInt(int64(w), 10))
	}
	return "[" + strings.Join(ns, ",") + "]"
}

// refusal explains why a guarded update of task id on behalf of token matched no row: ErrNotFound, or
// taskstore.Refusal's answer (or the probe's own failure), with the task's stored state.
func (s *Store) refusal(ctx context.Context, tx *sql.Tx, id, token int64) (wire.State, error) {
	state, current, err := s.probeRow(ctx, tx, id)
	if err != nil {
		return 0, err
	}
	return state, taskstore.RefusalIn(state, token, current)
}

// probeRow reads a task's stored state and token; ErrNotFound for an unknown id. A deleted task
// leaves a tombstone, so an id that existed keeps a row.
func (s *Store) probeRow(ctx context.Context, tx *sql.Tx, id int64) (wire.State, int64, error) {
	var state, token int64
	err := stmt(ctx, tx, s.probe).QueryRowContext(ctx, sql.Named("id", id)).Scan(&state, &token)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, taskstore.ErrNotFound
	}
	return wire.State(state), token, err
}

// Set overwrites a task's state; InProgress starts a lease of the given length.
func (s *Store) Set(ctx context.Context, id int64, state wire.State, lease time.Duration) error {
	if !state.Valid() {
		return fmt.Errorf("sqlitestore: set %d to %d: %w", id, int(state), taskstore.ErrInvalidState)
	}
	now := s.now()
	var until any // NULL unless in progress
	if state == wire.InProgress {
		if lease <= 0 {
			return fmt.Errorf("sqlitestore: set %d in progress: lease %v is not positive", id, lease)
		}
		until = nanos(now.Add(lease))
	}
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := stmt(ctx, tx, s.set).ExecContext(ctx, sql.Named("id", id), sql.Named("state", int64(state)),
			sql.Named("now", nanos(now)), sql.Named("until", until))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		return taskstore.ErrNotFound
	})
	if err == nil {
		err = s.durable.sync()
	}
	if err != nil {
		return fmt.Errorf("sqlitestore: set %d: %w", id, s.classify(err))
	}
	return nil
}

// Cancel stops a task that has not settled; see taskstore.Store.
func (s *Store) Cancel(ctx context.Context, id int64) (taskstore.Task, error) {
	now := s.now()
	var (
		t       taskstore.Task
		changed bool
	)
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) (err error) {
		// The update matches only a task that has not settled; a read in the same transaction tells
		// the other cases apart.
		t, err = scanTask(stmt(ctx, tx, s.cancel).QueryRowContext(ctx, sql.Named("id", id), sql.Named("now", nanos(now))))
		if changed = err == nil; !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if t, err = s.getIn(ctx, tx, id, now); err != nil {
			return err
		}
		if t.State != wire.Cancelled {
			return taskstore.ErrSettled
		}
		return nil // cancelled already
	})
	if changed && err == nil {
		err = s.durable.sync()
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: cancel %d: %w", id, s.classify(err))
	}
	return t, nil
}

// Requeue queues a failed or cancelled task again; see taskstore.Store.
func (s *Store) Requeue(ctx context.Context, id int64) (taskstore.Task, error) {
	now := s.now()
	var t taskstore.Task
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) (err error) {
		// As in Cancel: the update matches only a task that may be requeued, and a read in the same
		// transaction tells the other cases apart.
		t, err = scanTask(stmt(ctx, tx, s.requeue).QueryRowContext(ctx, sql.Named("id", id), sql.Named("now", nanos(now))))
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if t, err = s.getIn(ctx, tx, id, now); err != nil {
			return err
		}
		if err := taskstore.RequeueRefusal(t); err != nil {
			return err
		}
		return fmt.Errorf("the task in state %v was not requeued", t.State) // the update and the read disagree
	})
	if err == nil {
		err = s.durable.sync()
	}
	if err != nil {
		return taskstore.Task{}, fmt.Errorf("sqlitestore: requeue %d: %w", id, s.classify(err))
	}
	return t, nil
}

// Delete leaves a tombstone of the task; see taskstore.Store.
func (s *Store) Delete(ctx context.Context, id int64) error {
	deleted := false
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		var got int64
		err := stmt(ctx, tx, s.del).QueryRowContext(ctx, sql.Named("id", id), sql.Named("now", nanos(s.now()))).Scan(&got)
		if errors.Is(err, sql.ErrNoRows) {
			// No row: an id never handed out, or a tombstone PurgeDeleted removed (deleted already).
			_, _, err = s.probeRow(ctx, tx, id)
			return err
		}
		deleted = err == nil
		return err
	})
	if deleted {
		err = s.durable.sync()
	}
	if err != nil {
		return fmt.Errorf("sqlitestore: delete %d: %w", id, s.classify(err))
	}
	return nil
}

// PurgeDeleted removes a batch of old tombstones; see taskstore.Store.
func (s *Store) PurgeDeleted(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	if olderThan < 0 || limit <= 0 {
		return 0, fmt.Errorf("sqlitestore: purge deleted: age %v must not be negative and limit %d must be positive", olderThan, limit)
	}
	n, err := s.execCount(ctx, s.purge, sql.Named("cutoff", nanos(s.now().Add(-olderThan))), sql.Named("limit", limit))
	if err != nil {
		return 0, fmt.Errorf("sqlitestore: purge deleted: %w", err)
	}
	return n, nil
}

// execCount runs a write and returns how many rows it changed.
func (s *Store) execCount(ctx context.Context, st *sql.Stmt, args ...any) (int, error) {
	var n int64
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		res, err := stmt(ctx, tx, st).ExecContext(ctx, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, s.classify(err)
	}
	return int(n), nil
}

// ExpirePending fails the pending tasks created olderThan or longer ago and returns how many.
func (s *Store) ExpirePending(ctx context.Context, olderThan time.Duration) (int, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("sqlitestore: expire pending: age %v is negative", olderThan)
	}
	now := s.now()
	n, err := s.execCount(ctx, s.expire, sql.Named("now", nanos(now)), sql.Named("cutoff", nanos(now.Add(-olderThan))))
	if err != nil {
		return 0, fmt.Errorf("sqlitestore: expire pending: %w", err)
	}
	return n, nil
}

// ClaimExpired holds and returns a batch of settled tasks past olderThan; see taskstore.Store.
func (s *Store) ClaimExpired(ctx context.Context, olderThan time.Duration, limit int, hold time.Duration) ([]int64, error) {
	if olderThan < 0 || limit <= 0 || hold <= 0 {
		return nil, fmt.Errorf("sqlitestore: claim expired: age %v, limit %d and hold %v must be positive", olderThan, limit, hold)
	}
	now := s.now()
	type settled struct{ id, at int64 }
	var batch []settled
	err := s.writes.do(ctx, func(ctx context.Context, tx *sql.Tx) error {
		rows, err := stmt(ctx, tx, s.claimExpired).QueryContext(ctx, sql.Named("now", nanos(now)),
			sql.Named("until", nanos(now.Add(hold))), sql.Named("cutoff", nanos(now.Add(-olderThan))), sql.Named("limit", limit))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var t settled
			if err := rows.Scan(&t.id, &t.at); err != nil {
				return err
			}
			batch = append(batch, t)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: claim expired: %w", s.classify(err))
	}
	// RETURNING has no order of its own.
	slices.SortFunc(batch, func(a, b settled) int { return cmp.Or(cmp.Compare(a.at, b.at), cmp.Compare(a.id, b.id)) })
	ids := make([]int64, len(batch))
	for i, t := range batch {
		ids[i] = t.id
	}
	return ids, nil
}

// List yields every task in id order. It streams from one read snapshot; stopping early closes
// the rows and returns the connection to the pool.
func (s *Store) List(ctx context.Context) iter.Seq2[taskstore.Task, error] {
	return func(yield func(taskstore.Task, error) bool) {
		rows, err := s.r.QueryContext(ctx, listSQL, sql.Named("now", nanos(s.now())))
		if err != nil {
			yield(taskstore.Task{}, fmt.Errorf("sqlitestore: list: %w", s.classify(err)))
			return
		}
		defer rows.Close()
		for rows.Next() {
			t, err := scanTask(rows)
			if err != nil {
				yield(taskstore.Task{}, fmt.Errorf("sqlitestore: list: %w", s.classify(err)))
				return
			}
			if !yield(t, nil) {
				return
			}
		}
		if err := rows.Err(); err != nil {
			yield(taskstore.Task{}, fmt.Errorf("sqlitestore: list: %w", s.classify(err)))
		}
	}
}

// Counts returns how many tasks are in each state, read from one snapshot through the partial indexes.
func (s *Store) Counts(ctx context.Context) (taskstore.Counts, error) {
	var total, claimable, delayed, pending, inProgress, lapsedQueued, lapsedPending, lapsedFailed, failed,
		cancelled, deleted int64
	err := s.counts.QueryRowContext(ctx, sql.Named("now", nanos(s.now()))).Scan(
		&total, &claimable, &delayed, &pending, &inProgress, &lapsedQueued, &lapsedPending, &lapsedFailed, &failed,
		&cancelled, &deleted)
	if err != nil {
		return taskstore.Counts{}, fmt.Errorf("sqlitestore: counts: %w", s.classify(err))
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

// Usage returns what owner keeps stored.
func (s *Store) Usage(ctx context.Context, owner string) (taskstore.Usage, error) {
	var u taskstore.Usage
	if err := s.usage.QueryRowContext(ctx, sql.Named("owner", owner)).Scan(&u.Tasks, &u.Bytes); err != nil {
		return taskstore.Usage{}, fmt.Errorf("sqlitestore: usage: %w", s.classify(err))
	}
	return u, nil
}

// Ping reads from the database file. A full disk does not fail it: reads still work then.
func (s *Store) Ping(ctx context.Context) error {
	var last int64
	if err := s.ping.QueryRowContext(ctx).Scan(&last); err != nil {
		return fmt.Errorf("sqlitestore: ping: %w", s.classify(err))
	}
	return nil
}

// classify marks the engine's transient failures (fault): a full disk (SQLITE_FULL, or an I/O error on
// a file system without free space, which is how SQLite reports some failed writes, such as growing
// its shared-memory index), and a database that another process kept locked past the busy timeout.
// Every other error, the store's sentinels and the caller's own cancellation included, is returned
// unchanged.
func (s *Store) classify(err error) error {
	var classified *fault.Error
	if err == nil || errors.As(err, &classified) {
		return err
	}
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return fault.Disk(what, err) // the WAL's own fsync, say
	}
	switch se.Code() & 0xff { // the primary code of an extended one
	case sqlite3.SQLITE_FULL:
		return fault.NoSpace(what, err)
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fault.Unavailable(what, err)
	case sqlite3.SQLITE_IOERR:
		// SQLite's codes do not carry the errno: a file system without room for another page (and a
		// WAL frame's header) is the likely cause.
		if room, ok := fault.Room(s.dir); ok && room < maxPageSize {
			return fault.NoSpace(what, err)
		}
	}
	return err
}

// Close closes the statements and both pools.
func (s *Store) Close() error {
	if s.writes != nil {
		s.writes.close()
	}
	var errs []error
	for _, st := range []*sql.Stmt{
		s.create, s.activate, s.sweep, s.settle, s.claim, s.extend, s.finish, s.fail, s.release, s.retry, s.set,
		s.expire, s.probe, s.cancel, s.requeue, s.del, s.claimExpired, s.purge, s.findKey, s.clearKey, s.createKeyed, s.abandon, s.getW,
		s.get, s.counts, s.ping,
	} {
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
	if s.durable != nil {
		errs = append(errs, s.durable.close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sqlitestore: close: %w", s.classify(err))
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

// scanTask reads the columns of taskColumns or returnColumns.
func scanTask(sc scanner) (taskstore.Task, error) {
	var (
		t                                   taskstore.Task
		state                               int64
		created                             int64
		started, finished, leaseTo, retryAt sql.NullInt64
	)
	if err := sc.Scan(&t.ID, &state, &t.Pending, &t.Attempts, &t.MaxAttempts, &t.Token, &t.Error,
		&created, &started, &finished, &leaseTo, &t.Op, &retryAt, &t.Retries, &t.Owner, &t.Name); err != nil {
		return taskstore.Task{}, err
	}
	t.State = wire.State(state)
	t.CreatedAt = fromNanos(created)
	t.StartedAt = fromNullNanos(started)
	t.FinishedAt = fromNullNanos(finished)
	t.LeaseUntil = fromNullNanos(leaseTo)
	t.RetryAt = fromNullNanos(retryAt)
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
