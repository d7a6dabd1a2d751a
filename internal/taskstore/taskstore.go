// Package taskstore defines the task store: the durable record of every task and its lifecycle.
// Implementations live in sub-packages (sqlitestore today, PostgreSQL later) and all must pass the
// contract suite in taskstoretest.
package taskstore

import (
	"context"
	"errors"
	"iter"
	"time"
)

// State is a task's lifecycle state. The numbers are the reference wire values.
type State int

const (
	NotStarted State = 0
	InProgress State = 1
	Finished   State = 2
)

// Valid reports whether s is one of the known states.
func (s State) Valid() bool { return s >= NotStarted && s <= Finished }

func (s State) String() string {
	switch s {
	case NotStarted:
		return "not started"
	case InProgress:
		return "in progress"
	case Finished:
		return "finished"
	}
	return "unknown"
}

// Task is one task record. An in-progress task whose lease has lapsed is reported as NotStarted:
// the store, not a timer per task, decides expiry.
type Task struct {
	ID    int64
	State State
	// Pending tasks exist but cannot be claimed yet: the master creates a task pending, stores its image,
	// then activates it, so no worker ever claims a task whose image is missing.
	Pending    bool
	Attempts   int // how many times the task was claimed
	CreatedAt  time.Time
	StartedAt  time.Time // last claim; zero when never claimed
	FinishedAt time.Time // zero unless finished
	LeaseUntil time.Time // when an in-progress task's lease lapses; zero otherwise
}

var (
	ErrNotFound      = errors.New("task not found")
	ErrNoTask        = errors.New("no non-started task")
	ErrNotInProgress = errors.New("task is not in progress")
	ErrInvalidState  = errors.New("invalid task state")
)

// Store is the task store. All methods are safe for concurrent use.
type Store interface {
	// Create adds a not-started task and returns its id. Ids are consecutive from 0.
	// A pending task is not claimable until Activate.
	Create(ctx context.Context, pending bool) (int64, error)
	// Activate makes a pending task claimable; activating an active task is a no-op.
	Activate(ctx context.Context, id int64) error
	// Get returns one task, or ErrNotFound.
	Get(ctx context.Context, id int64) (Task, error)
	// Claim takes the oldest claimable task (not started, or in progress with a lapsed lease), marks it in
	// progress with a lease of the given length, counts the attempt and returns it; ErrNoTask when none.
	Claim(ctx context.Context, lease time.Duration) (Task, error)
	// Finish marks an in-progress task (lease not lapsed) finished; ErrNotFound or ErrNotInProgress else.
	Finish(ctx context.Context, id int64) error
	// Set overwrites a task's state (the reference setById). Setting InProgress starts a lease of the given
	// length; ErrNotFound for an unknown id, ErrInvalidState for an unknown state.
	Set(ctx context.Context, id int64, state State, lease time.Duration) error
	// List yields every task in id order.
	List(ctx context.Context) iter.Seq2[Task, error]
	// Close releases the store's resources.
	Close() error
}
