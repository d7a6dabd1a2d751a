// Package taskstore defines the task store: the durable record of every task and its lifecycle.
// Implementations live in sub-packages (sqlitestore, pgstore) and all must pass the
// contract suite in taskstoretest.
package taskstore

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// DefaultMaxAttempts is how many claims a task gets before it fails.
const DefaultMaxAttempts = 3

// MaxClaimBatch is the most tasks one ClaimN takes (a /getNewTask?max=): a worker asks for its free
// slots, a few dozen at most, and a bound keeps one transaction (and the leases it starts at once) small.
const MaxClaimBatch = wire.MaxTasksPerClaim

// CheckClaimBatch refuses a batch size ClaimN does not take.
func CheckClaimBatch(n int) error {
	if n < 1 || n > MaxClaimBatch {
		return fmt.Errorf("claim batch of %d: want 1 to %d", n, MaxClaimBatch)
	}
	return nil
}

// Task is one task record.
//
// An in-progress task whose lease has lapsed is reported as NotStarted, or as Failed when it has used all
// its attempts: the store, not a timer per task, decides expiry.
type Task struct {
	ID    int64
	State wire.State
	// Pending tasks exist but cannot be claimed yet: the master creates a task pending, stores its image,
	// then activates it, so no worker ever claims a task whose image does not exist.
	Pending     bool
	Attempts    int // claims so far
	MaxAttempts int
	// Token is the fencing token of the latest claim: it grows with every claim, so a worker whose lease
	// lapsed and was claimed again holds a smaller token than the current holder. 0 before any claim.
	Token int64
	// Op is the operation chain the worker applies to the image, as the client gave it ("" means the
	// default operation, the reference's swap). The store keeps it verbatim; the master validates it.
	Op         string
	Error      string    // why the task failed, or why its last attempt failed
	CreatedAt  time.Time //
	StartedAt  time.Time // latest claim; zero when never claimed
	FinishedAt time.Time // when it finished or failed; zero otherwise
	LeaseUntil time.Time // when an in-progress task's lease lapses; zero otherwise
	// RetryAt is when a task handed back after a transient failure (Retry) may be claimed again; the
	// task is NotStarted until then, with the failure as its Error. Zero otherwise, and once it passed.
	RetryAt time.Time
	// Retries counts the transient failures the task was handed back for (Retry); it sets the wait
	// before the next claim. They are not attempts.
	Retries int
	// Owner is who queued the task (see CreateParams.Owner).
	Owner string
	// Name is the upload's file name as the client gave it (see CreateParams.Name); "" when none.
	Name string
}

var (
	ErrNotFound      = errors.New("task not found")
	ErrNoTask        = errors.New("no non-started task")
	ErrNotInProgress = errors.New("task is not in progress")
	ErrInvalidState  = errors.New("invalid task state")
	// ErrStaleToken refuses a worker whose claim was superseded by a newer one.
	ErrStaleToken = errors.New("stale lease token")
	// ErrNotPending refuses activating a pending task that expired (failed) before its upload completed,
	// and abandoning the upload of a task that was activated.
	ErrNotPending = errors.New("task is no longer pending")
	// ErrCancelled refuses a worker's Extend, Finish, Fail, Release or Retry of a task that was cancelled
	// or deleted while it held it: the work is no longer wanted.
	ErrCancelled = errors.New("task was cancelled")
	// ErrSettled refuses cancelling a task that already finished or failed.
	ErrSettled = errors.New("task already finished")
	// ErrNotRetryable refuses requeueing a task that is neither failed nor cancelled.
	ErrNotRetryable = errors.New("task is neither failed nor cancelled")
	// ErrNoUpload refuses requeueing a task whose upload never completed: there is nothing to process.
	ErrNoUpload = errors.New("the task's upload never completed")
)

// RequeueRefusal is why Requeue refuses t, as Get reports it, or nil when t may be requeued.
func RequeueRefusal(t Task) error {
	switch {
	case t.State != wire.Failed && t.State != wire.Cancelled:
		return ErrNotRetryable
	case t.Pending:
		return ErrNoUpload
	}
	return nil
}

// Batching is implemented by stores whose concurrent writes share transactions (the embedded SQLite
// store, whose single writer runs the writes queued for it together): how many of each so far.
type Batching interface {
	Batching() Batches
}

// Batches counts a store's write transactions and the writes in them since it opened; Writes per
// Transaction tells how many callers shared each one.
type Batches struct {
	Transactions, Writes int64
}

// Deleted is the stored state of a deleted task's tombstone (see Store.Delete). No reader ever reports
// it: to them the task does not exist.
const Deleted wire.State = 5

// RefusalIn is Refusal for a task whose stored state is known: a cancelled or deleted task refuses
// every holder with ErrCancelled, whatever its token.
func RefusalIn(state wire.State, token, current int64) error {
	if state == wire.Cancelled || state == Deleted {
		return ErrCancelled
	}
	return Refusal(token, current)
}

// Transient failures (see Retry) wait before the task can be claimed again: the n-th (n from 1) a
// random time in [d/2, d] with d = min(Max, Min << (n-1)).
const (
	DefaultRetryMin = time.Second
	DefaultRetryMax = 5 * time.Minute
)

// RetryBackoff bounds the wait before a task handed back after a transient failure may be claimed again.
type RetryBackoff struct{ Min, Max time.Duration }

// Delay is the longest wait of the n-th transient failure (n from 1); Retry waits a random time in
// [Delay(n)/2, Delay(n)].
func (b RetryBackoff) Delay(n int) time.Duration {
	d := b.Min << min(max(n-1, 0), 30)
	if d > b.Max || d <= 0 {
		d = b.Max
	}
	return d
}

// Waits draws the wait after the n-th transient failure (at index n-1), for n from 1 until Delay grows
// no more: a random time in [d/2, d] with d = Delay(n), none when d is not positive. Drawing them all
// lets a store pick the one for a task's new count in the very statement that raises it, without
// reading the task first.
func (b RetryBackoff) Waits() []time.Duration {
	waits := make([]time.Duration, 31) // Delay(n) = Delay(31) for every n > 31
	for i := range waits {
		if d := b.Delay(i + 1); d > 0 {
			waits[i] = d - rand.N(d/2+1)
		}
	}
	return waits
}

// Refusal is why a guarded update (Extend, Finish, Fail, Release) on behalf of token matched no row of a
// task whose current token is current: ErrStaleToken when the caller's claim was superseded, else
// ErrNotInProgress. Stores probe the row after the update and still answer exactly: tokens only grow,
// so a token that differs now differed then.
func Refusal(token, current int64) error {
	if token != 0 && token != current {
		return ErrStaleToken
	}
	return ErrNotInProgress
}

// IsFinishRetry reports whether a Finish on behalf of token, refused with err (from Refusal) by a task
// in state, repeats the finish that finished the task under that same token: a no-op success.
func IsFinishRetry(token int64, state wire.State, err error) bool {
	return token != 0 && state == wire.Finished && errors.Is(err, ErrNotInProgress)
}

// Counts is how many tasks are in each state, as Get and List report them: a task whose lease lapsed
// counts as what the next Claim makes of it (queued again, or failed out of attempts). NotStarted tasks
// are split: those a worker may claim (now, or after their RetryAt) are Queued, uploads not yet complete
// are Pending; only the first are work waiting for workers.
type Counts struct {
	Queued     int64 // NotStarted and active: claimable now or after RetryAt
	Pending    int64 // NotStarted and pending: the upload is not complete
	Processing int64 // InProgress with a live lease
	Finished   int64
	Failed     int64
	Cancelled  int64
}

// Of returns the count of tasks in state s (0 for an unknown state); NotStarted counts Queued and
// Pending together.
func (c Counts) Of(s wire.State) int64 {
	switch s {
	case wire.NotStarted:
		return c.Queued + c.Pending
	case wire.InProgress:
		return c.Processing
	case wire.Finished:
		return c.Finished
	case wire.Failed:
		return c.Failed
	case wire.Cancelled:
		return c.Cancelled
	}
	return 0
}

// Total is the number of tasks.
func (c Counts) Total() int64 {
	return c.Queued + c.Pending + c.Processing + c.Finished + c.Failed + c.Cancelled
}

// Usage is what one owner keeps stored (see Store.Usage).
type Usage struct {
	Tasks int64 // tasks not deleted, pending ones included
	Bytes int64 // the sizes of their source images, as Activate recorded them
}

// CreateParams describes a new task.
type CreateParams struct {
	Pending     bool
	MaxAttempts int    // <= 0 means DefaultMaxAttempts
	Op          string // see Task.Op
	// Owner is who queues the task (an API key's name or a client's address, see wire.CheckOwner):
	// Claim serves owners in turn, so that one owner's backlog does not starve the others. "" is an
	// owner like any other (tasks of clients that name none).
	Owner string
	// Name is the upload's file name, a base name of at most wire.MaxNameLen bytes (wire.CheckName),
	// kept to name the downloads; "" when the client gave none. A delete clears it.
	Name string
}

// Attempts is how many attempts a task created with p gets.
func (p CreateParams) Attempts() int {
	if p.MaxAttempts <= 0 {
		return DefaultMaxAttempts
	}
	return p.MaxAttempts
}

// Store is the task store. All methods are safe for concurrent use.
//
// Methods that take a token fence the caller: token 0 is a reference worker that knows no tokens (no
// fencing; the task must be in progress with a live lease), any other token must be the task's current
// one or the call fails with ErrStaleToken.
type Store interface {
	// Create adds a not-started task and returns its id. Ids are consecutive from 0.
	Create(ctx context.Context, p CreateParams) (int64, error)
	// CreateOnce is Create for a request that carries an idempotency key (non-empty): when a task
	// created with the same key less than window ago exists, and is not a pending task that failed (an
	// upload that was never acknowledged), it creates nothing and returns that task with replayed true.
	// Otherwise it creates a task as Create does, keeping the key with it, and returns it. Concurrent
	// calls with one key create one task.
	CreateOnce(ctx context.Context, p CreateParams, key string, window time.Duration) (t Task, replayed bool, err error)
	// Activate makes a pending task claimable and records size, the bytes of its stored image, in its
	// owner's Usage; activating an active task is a no-op (its size stays). ErrNotFound, ErrNotPending
	// for a pending task that expired.
	Activate(ctx context.Context, id, size int64) error
	// Get returns one task, or ErrNotFound.
	Get(ctx context.Context, id int64) (Task, error)
	// Claim takes a claimable task (not started and not pending, with no RetryAt in the future; or in
	// progress with a lapsed lease and attempts left), marks it in progress with a lease of the given
	// length, counts the attempt, issues a new token, clears RetryAt and returns it; ErrNoTask when
	// none. Lapsed tasks without attempts left become Failed. Owners take turns: the task is the oldest
	// claimable one of the owner with claimable tasks that was served least recently (an owner seen
	// for the first time counts as just served), so with one owner claims go in id order.
	Claim(ctx context.Context, lease time.Duration) (Task, error)
	// ClaimN is up to n Claims (n from 1 to MaxClaimBatch) in one transaction: the tasks n Claims in a
	// row would take, in the order they would take them, each with its own lease, attempt and token, so
	// owners take turns within a batch as across batches. It returns fewer when fewer are claimable and
	// ErrNoTask when none is. One commit for the batch is what makes it cheaper than n Claims.
	ClaimN(ctx context.Context, n int, lease time.Duration) ([]Task, error)
	// Extend renews the lease of an in-progress task (a worker's heartbeat) and returns the task.
	// ErrNotInProgress when it is not in progress or its lease already lapsed, ErrStaleToken as above.
	Extend(ctx context.Context, id, token int64, lease time.Duration) (Task, error)
	// Finish marks the task finished and returns it (the statement that finishes it returns the row,
	// so a caller needs no read to learn its times). With the current token it also succeeds when the
	// lease lapsed but nobody claimed the task since (the result is still the newest), and finishing a
	// task finished with the same token again is a no-op that returns the task as the first finish left
	// it (its FinishedAt is that finish's, which tells a caller the retry from the finish), or only its
	// ID and State when it was deleted since. With token 0 the task must be in progress with a live lease.
	Finish(ctx context.Context, id, token int64) (Task, error)
	// Fail records a failed attempt with its reason and returns the task afterwards: Failed when
	// permanent (the input can never work) or out of attempts, else NotStarted for a retry.
	Fail(ctx context.Context, id, token int64, reason string, permanent bool) (Task, error)
	// Release hands an in-progress task back without counting the attempt (a worker shutting down), so
	// another worker can take it at once.
	Release(ctx context.Context, id, token int64) error
	// Retry hands an in-progress task back after a transient failure (something the work needed was
	// unavailable or full: not the task's fault) and returns it: NotStarted with reason as its Error, the
	// attempt not counted (as Release), Retries raised by one, and not claimable before RetryAt, a random
	// time in [d/2, d] from now with d = b.Delay(Retries). Who may: as Fail.
	Retry(ctx context.Context, id, token int64, reason string, b RetryBackoff) (Task, error)
	// Abandon fails a pending task at once, with reason, when its upload was refused or broke off, so
	// that it does not wait for ExpirePending. Abandoning a pending task that already failed is a no-op;
	// ErrNotPending when the task was activated, ErrNotFound for an unknown id.
	Abandon(ctx context.Context, id int64, reason string) error
	// Set overwrites a task's state (the reference setById). Setting InProgress starts a lease of the given
	// length and issues a new token; any state clears RetryAt (NotStarted is claimable at once).
	// ErrNotFound for an unknown id, ErrInvalidState for an unknown state.
	Set(ctx context.Context, id int64, state wire.State, lease time.Duration) error
	// Cancel stops a task that has not settled and returns it, Cancelled with wire.CancelledError as its
	// Error: a queued or pending task is never claimed, and the holder of an in-progress one is refused
	// with ErrCancelled at its next Extend, Finish, Fail, Release or Retry. Cancelling a cancelled task
	// returns it unchanged. ErrSettled for a finished or failed task (as Get reports it), ErrNotFound for
	// an unknown or deleted id. Durable when it returns.
	Cancel(ctx context.Context, id int64) (Task, error)
	// Requeue queues a failed or cancelled task again (a client's retry), with the same upload and
	// op, and returns it: NotStarted and claimable at once, with attempts, retries and error cleared;
	// its token is kept, so the next claim's is larger than any earlier holder's, and the holder of
	// a cancelled claim stays refused. ErrNotRetryable for a task in any other state (as Get reports
	// it), ErrNoUpload for a pending task (its upload never completed), ErrNotFound for an unknown or
	// deleted id. Durable when it returns.
	Requeue(ctx context.Context, id int64) (Task, error)
	// Delete removes a task's record, leaving a tombstone (state Deleted, its op, error, owner, name, size
	// and idempotency key cleared: nothing of who asked for what stays), and takes it out of its
	// owner's Usage:
	// Get, List, Counts and Claim no longer see it, Set and Cancel answer ErrNotFound, a holder's
	// guarded updates are refused with ErrCancelled, and deleting it again is a no-op. ErrNotFound for
	// an id that never existed. Durable when it returns.
	Delete(ctx context.Context, id int64) error
	// ExpirePending fails pending tasks created more than olderThan ago (uploads that never completed,
	// say because the master died mid-upload) and returns how many.
	ExpirePending(ctx context.Context, olderThan time.Duration) (int, error)
	// ClaimExpired takes up to limit settled tasks (finished, failed or cancelled) that settled at or
	// before olderThan ago and that no sweeper holds, holds them for hold, and returns their ids, the
	// longest settled first. Holding lets several sweepers share the work: another ClaimExpired skips
	// the held tasks until hold passes, and the caller removes them (their images, then Delete) within
	// it. A task whose lease lapsed out of attempts is taken once a Claim recorded its failure. The
	// query walks an index of settled tasks and touches only the batch, so it never holds up claims.
	ClaimExpired(ctx context.Context, olderThan time.Duration, limit int, hold time.Duration) ([]int64, error)
	// Usage returns what owner keeps stored: its tasks that are not deleted, whatever their state, and
	// the sizes Activate recorded for them. It reads one row kept by the statements that change tasks,
	// so it is exact and cheap; the master checks it before accepting each upload (quotas).
	Usage(ctx context.Context, owner string) (Usage, error)
	// PurgeDeleted removes up to limit tombstones of tasks deleted at or before olderThan ago, the
	// longest deleted first, and returns how many it removed; the tombstone of the highest id stays.
	// Nothing else can tell a removed tombstone from one still there: its id answers every method as
	// the tombstone did (ErrNotFound, ErrCancelled, a no-op Delete), ids are never handed out again and
	// Counts do not change. Tombstones end so that a store that deletes as much as it creates (under
	// retention) stays the same size.
	PurgeDeleted(ctx context.Context, olderThan time.Duration, limit int) (int, error)
	// List yields every task in id order.
	List(ctx context.Context) iter.Seq2[Task, error]
	// Counts returns how many tasks are in each state, from one consistent view (it agrees with a List
	// taken at the same moment). It is cheap enough to call every second: the master checks the queue
	// length with it before accepting uploads.
	Counts(ctx context.Context) (Counts, error)
	// Ping reports whether the store's engine answers now: nil, or the transient error (fault) that its
	// methods would meet. Health checks call it; it is cheap.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

// Errors of the engine behind a store (it cannot be reached, timed out, or is out of space) are
// transient and wrapped by the fault package (fault.Unavailable, fault.NoSpace), so that callers wait
// and retry instead of failing work; every other error is permanent. A store whose engine does not
// answer when it is opened still opens (unless its configuration is wrong), and its methods return
// transient errors until the engine answers.

// Watcher is implemented by stores that several database services share: Watch calls notify (from one
// goroutine) whenever another instance may have made a task claimable, until ctx ends. It also calls
// notify each time it starts listening, because work announced while it was not listening is not
// repeated. It returns nil when ctx ends; an error means it cannot watch at all (say, the store is closed).
type Watcher interface {
	Watch(ctx context.Context, notify func()) error
}
