package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/taskstore"
)

// batcher runs the writes of concurrent callers on the single writer connection, several to a
// transaction (group commit). SQLite has one writer at a time, and a small write's transaction is
// mostly fixed cost: taking the write lock, appending the dirtied pages to the WAL, indexing them. So
// the writes that queue up while a transaction runs go into the next one together, each inside a
// savepoint of its own: a write that fails is rolled back alone and the others commit. A caller sees
// exactly what it would see alone: its write ran after those queued before it, and an error means
// nothing of it was committed.
//
// There is no goroutine of its own: a caller that finds no transaction running leads, running batches
// until its own write is done, then hands the queue to a new goroutine if more writes are waiting.
type batcher struct {
	db      *sql.DB
	max     int           // writes in one transaction at most
	timeout time.Duration // bound of one transaction

	// Transactions run and the writes in them, for tests and benchmarks.
	batches, written atomic.Int64

	mu      sync.Mutex
	queue   []*write
	leading bool // a goroutine is running batches
	closed  bool
	leaders sync.WaitGroup
}

// A write is one caller's part of a transaction.
type write struct {
	ctx   context.Context // the caller's: checked before the write runs, never interrupting it
	run   func(ctx context.Context, tx *sql.Tx) error
	state atomic.Int32 // waiting, taken or withdrawn
	done  chan error   // the outcome once committed or rolled back; buffered
}

const (
	waiting int32 = iota
	taken
	withdrawn
)

// errClosed answers writes after Close.
var errClosed = errors.New("the task database is closed")

func newBatcher(db *sql.DB) *batcher {
	// 64 writes keep one transaction at a few milliseconds; the timeout bounds a stuck disk.
	return &batcher{db: db, max: 64, timeout: time.Minute}
}

// do runs fn in a transaction on the writer and returns once that transaction committed (nil) or
// rolled fn's changes back (fn's error, or the transaction's). fn gets a context of the transaction's,
// not ctx: cancelling one caller must not interrupt a transaction that holds other callers' writes
// (SQLite rolls a whole transaction back when a statement in it is interrupted). ctx cancels the
// write only while it waits for its turn.
func (b *batcher) do(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := &write{ctx: ctx, run: fn, done: make(chan error, 1)}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errClosed
	}
	b.queue = append(b.queue, w)
	if !b.leading {
		b.leading = true
		b.leaders.Add(1)
		b.mu.Unlock()
		b.lead(w)
		return <-w.done
	}
	b.mu.Unlock()
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		if w.state.CompareAndSwap(waiting, withdrawn) {
			return ctx.Err()
		}
		return <-w.done // taken: the transaction is bounded by b.timeout
	}
}

// lead runs batches until own's is done (own nil: until the queue is empty), then leaves the queue to
// another goroutine or ends the leadership.
func (b *batcher) lead(own *write) {
	defer b.leaders.Done()
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.leading = false
			b.mu.Unlock()
			return
		}
		if own != nil && own.state.Load() != waiting {
			// Own write is done (or withdrawn): its caller returns, a new goroutine takes over.
			b.leaders.Add(1)
			b.mu.Unlock()
			go b.lead(nil)
			return
		}
		n := min(len(b.queue), b.max)
		batch := make([]*write, n)
		copy(batch, b.queue)
		b.queue = append(b.queue[:0], b.queue[n:]...)
		b.mu.Unlock()
		b.run(batch)
	}
}

// run runs one transaction of batch's writes that are still wanted.
func (b *batcher) run(batch []*write) {
	ws := batch[:0]
	for _, w := range batch {
		if err := w.ctx.Err(); err != nil {
			if w.state.CompareAndSwap(waiting, withdrawn) {
				w.done <- err
			}
			continue
		}
		if w.state.CompareAndSwap(waiting, taken) {
			ws = append(ws, w)
		}
	}
	if len(ws) == 0 {
		return
	}
	b.batches.Add(1)
	b.written.Add(int64(len(ws)))
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	errs, err := b.transact(ctx, ws)
	for i, w := range ws {
		answer := err
		if errs[i] != nil {
			answer = errs[i]
		}
		// A transaction past its own deadline is the database's failure, not the caller's: transient.
		w.done <- fault.Timeout(w.ctx, what, answer)
	}
}

// transact runs ws in one transaction: errs holds each write's own failure (rolled back alone), err
// the transaction's (nothing of it committed), which answers every write without a failure of its own.
func (b *batcher) transact(ctx context.Context, ws []*write) (errs []error, err error) {
	errs = make([]error, len(ws))
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return errs, err
	}
	if len(ws) == 1 {
		// Alone in the transaction, a write needs no savepoint: its failure rolls everything back.
		if errs[0] = ws[0].run(ctx, tx); errs[0] != nil {
			_ = tx.Rollback() // the write's own failure is its answer
			return errs, nil
		}
		return errs, tx.Commit()
	}
	for i, w := range ws {
		if _, err := tx.ExecContext(ctx, `SAVEPOINT write`); err != nil {
			return abort(tx, errs, err)
		}
		if errs[i] = w.run(ctx, tx); errs[i] != nil {
			// A failure SQLite answers by rolling the whole transaction back (a full disk, say) takes
			// the savepoint with it: then nothing of the batch stands.
			if _, err := tx.ExecContext(ctx, `ROLLBACK TO write`); err != nil {
				return abort(tx, errs, fmt.Errorf("%w (then rolling back to its savepoint: %w)", errs[i], err))
			}
		}
		if _, err := tx.ExecContext(ctx, `RELEASE write`); err != nil {
			return abort(tx, errs, err)
		}
	}
	return errs, tx.Commit()
}

// abort rolls tx back after a failure that ends the whole transaction: every write gets err.
func abort(tx *sql.Tx, errs []error, err error) ([]error, error) {
	clear(errs)
	return errs, errors.Join(err, ignoreDone(tx.Rollback()))
}

func ignoreDone(err error) error {
	if errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return err
}

// close waits for the running batches and refuses writes from now on.
func (b *batcher) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.leaders.Wait()
}

// Batching implements taskstore.Batching.
func (s *Store) Batching() taskstore.Batches {
	return taskstore.Batches{Transactions: s.writes.batches.Load(), Writes: s.writes.written.Load()}
}
