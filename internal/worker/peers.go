package worker

import (
	"context"
	"io"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/wire"
)

// Master is what a worker asks of the master: claims, heartbeats and the outcome of the tasks it holds,
// each call carrying the claim's fencing token. *client.Master reaches a master over HTTP (imgmill's or
// the reference design's); master.Local is the one in the same process (imgmill serve), with the same
// answers.
type Master interface {
	GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error)
	GetNewTasks(ctx context.Context, wait time.Duration, n int) (tasks []wire.Task, batched bool, err error)
	WatchLease(ctx context.Context, id, token int64, wait time.Duration) (wire.Task, error)
	FinishTask(ctx context.Context, id, token int64) error
	// FinishWithResult stores the result and finishes the task in one call; a master without it (the
	// reference design's, or an earlier imgmill's) answers 404, and the worker stores at Storage and
	// calls FinishTask instead.
	FinishWithResult(ctx context.Context, id, token int64, r io.Reader, size int64) error
	FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error)
	RetryTask(ctx context.Context, id, token int64, reason string) (wire.Task, error)
	ReleaseTask(ctx context.Context, id, token int64) error
	// Addr names the master instance in logs.
	Addr(ctx context.Context) (string, error)
}

// Storage is what a worker asks of storage: the working image of a task, and to keep its result.
// *client.Storage reaches storage over HTTP; storage.Local is the one in the same process.
type Storage interface {
	GetImage(ctx context.Context, id int64, state string) (*client.Image, error)
	SendResult(ctx context.Context, id int64, token int64, r io.Reader, size int64) error
}

var (
	_ Master  = (*client.Master)(nil)
	_ Storage = (*client.Storage)(nil)
)
