package database

import (
	"context"
	"iter"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/wire"
)

// Local is the database service's API in this process (see Service.Local): the methods of
// *client.Database that the master uses, with the same signatures and meaning, called through Go on the
// server that serves HTTP, with no request, JSON or copy in between. A task it queues wakes the
// service's HTTP long polls, and the reverse. Every call answers as the HTTP client would (see
// client.CallLocal): a refusal is an *httpapi.Error with the status and message the endpoint answers,
// and a call the client retries after a transient failure is retried the same way.
type Local struct {
	s *server
}

// noValue is the result of the calls that answer nothing but success.
type noValue = struct{}

// Reference reports whether the database is the reference design's: a Local one never is.
func (l *Local) Reference(context.Context) (bool, error) { return false, nil }

// NewTask creates a task and returns its id, as client.Database.NewTask.
func (l *Local) NewTask(ctx context.Context, p client.NewTaskParams) (int64, error) {
	r, err := l.CreateTask(ctx, p)
	return r.ID, err
}

// CreateTask creates a task, or with an idempotency key finds the one a call with the same key created.
func (l *Local) CreateTask(ctx context.Context, p client.NewTaskParams) (client.NewTaskResult, error) {
	// Only a key makes a retry safe, as over HTTP.
	return client.CallLocal(ctx, p.IdempotencyKey != "", func(ctx context.Context) (client.NewTaskResult, error) {
		return l.s.createTask(ctx, p)
	})
}

// AbandonTask fails a pending task at once because its upload was refused or broke off.
func (l *Local) AbandonTask(ctx context.Context, id int64, reason string) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (noValue, error) {
		return noValue{}, l.s.abandon(ctx, id, reason)
	})
	return err
}

// ActivateTask makes a pending task claimable; size is the bytes of its stored image.
func (l *Local) ActivateTask(ctx context.Context, id, size int64) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (noValue, error) {
		return noValue{}, l.s.activate(ctx, id, size)
	})
	return err
}

// Usage returns what owner keeps stored: its tasks not deleted and their images' bytes.
func (l *Local) Usage(ctx context.Context, owner string) (wire.Usage, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Usage, error) {
		return l.s.usage(ctx, owner)
	})
}

// CancelTask cancels a task that has not finished and returns it (state Cancelled).
func (l *Local) CancelTask(ctx context.Context, id int64) (wire.Task, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Task, error) {
		return l.s.cancel(ctx, id)
	})
}

// RequeueTask queues a failed or cancelled task again and returns it. It is not retried: a repeat would
// be refused (409) for the task it queued.
func (l *Local) RequeueTask(ctx context.Context, id int64) (wire.Task, error) {
	return client.CallLocal(ctx, false, func(ctx context.Context) (wire.Task, error) {
		return l.s.requeue(ctx, id)
	})
}

// DeleteTask removes a task's record; an id that never named a task is refused with status 404.
func (l *Local) DeleteTask(ctx context.Context, id int64) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (noValue, error) {
		return noValue{}, l.s.delete(ctx, id)
	})
	return err
}

// ClaimExpired returns up to limit tasks whose retention ran out, held for this caller for ExpiredHold.
// It is not retried: the tasks a lost answer held would wait out the hold.
func (l *Local) ClaimExpired(ctx context.Context, limit int) ([]int64, error) {
	return client.CallLocal(ctx, false, func(ctx context.Context) ([]int64, error) {
		return l.s.claimExpired(ctx, limit)
	})
}

// GetByID returns a task; an unknown id is refused with status 400, as the reference does.
func (l *Local) GetByID(ctx context.Context, id int64) (wire.Task, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Task, error) {
		return l.s.getByID(ctx, id)
	})
}

// GetByIDs returns the tasks with the given ids (at most wire.MaxStatusIDs), and the ids that name no
// task.
func (l *Local) GetByIDs(ctx context.Context, ids []int64) (wire.Tasks, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Tasks, error) {
		return l.s.getByIDs(ctx, ids)
	})
}

// SetByID sets the state of task t.ID to t.State; t's other fields are ignored.
func (l *Local) SetByID(ctx context.Context, t wire.Task) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (noValue, error) {
		return noValue{}, l.s.setByID(ctx, t.ID, t.State)
	})
	return err
}

// Tasks streams every task in id order (the database's GET /list), for walks of the whole database. A
// failure is yielded as the answer GET /list would have given, once, and ends the stream; like a stream
// over HTTP that broke off, it is not retried.
func (l *Local) Tasks(ctx context.Context) iter.Seq2[wire.Task, error] {
	return func(yield func(wire.Task, error) bool) {
		for t, err := range l.s.tasks(ctx) {
			if err != nil {
				yield(wire.Task{}, client.AsAnswer(err))
				return
			}
			if !yield(t, nil) {
				return
			}
		}
	}
}

// Stats returns how many tasks are in each state.
func (l *Local) Stats(ctx context.Context) (wire.Stats, error) {
	return client.CallLocal(ctx, true, l.s.stats)
}

// GetNewTask claims a task, waiting up to wait (at most wire.MaxWait) for one; client.IsNoTask(err)
// tells that none came. It is not retried: a retried claim would hold a second task.
func (l *Local) GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error) {
	ts, _, err := client.ClaimLocal(ctx, 1, l.claim(wait))
	if err != nil {
		return wire.Task{}, err
	}
	return ts[0], nil
}

// GetNewTasks claims up to n tasks (at most wire.MaxTasksPerClaim) in one call, waiting as GetNewTask
// does; batched is true when n > 1, as an imgmill database answers over HTTP.
func (l *Local) GetNewTasks(ctx context.Context, wait time.Duration, n int) (tasks []wire.Task, batched bool, err error) {
	return client.ClaimLocal(ctx, n, l.claim(wait))
}

// claim is the claim of n tasks, waiting up to wait, that POST /getNewTask makes.
func (l *Local) claim(wait time.Duration) func(ctx context.Context, n int) ([]wire.Task, error) {
	return func(ctx context.Context, n int) ([]wire.Task, error) { return l.s.claimWait(ctx, n, max(wait, 0)) }
}

// FinishTask marks the claimed task finished.
func (l *Local) FinishTask(ctx context.Context, id, token int64) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (noValue, error) {
		return noValue{}, l.s.finish(ctx, id, token)
	})
	return err
}

// ExtendLease renews the claim's lease (a heartbeat) and returns the task with its new lease.
func (l *Local) ExtendLease(ctx context.Context, id, token int64) (wire.Task, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Task, error) {
		return l.s.extend(ctx, id, token)
	})
}

// WatchLease is ExtendLease: the database answers at once, whatever the wait (the master is the one
// that holds a watch; see client.LeaseAPI.WatchLease).
func (l *Local) WatchLease(ctx context.Context, id, token int64, _ time.Duration) (wire.Task, error) {
	return l.ExtendLease(ctx, id, token)
}

// FailTask records a failed attempt; a permanent failure is not retried. It returns the task afterwards.
func (l *Local) FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Task, error) {
		return l.s.fail(ctx, id, token, reason, permanent, false)
	})
}

// RetryTask hands a claimed task back after a transient failure without counting the attempt, claimable
// again after a wait that grows with every such failure. It returns the task afterwards.
func (l *Local) RetryTask(ctx context.Context, id, token int64, reason string) (wire.Task, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.Task, error) {
		return l.s.fail(ctx, id, token, reason, false, true)
	})
}

// ReleaseTask hands a claimed task back without counting the attempt.
func (l *Local) ReleaseTask(ctx context.Context, id, token int64) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (noValue, error) {
		return noValue{}, l.s.release(ctx, id, token)
	})
	return err
}
