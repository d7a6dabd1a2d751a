package master

import (
	"context"
	"io"
	"iter"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/wire"
)

// Database is the task database as the master uses it: *client.Database over HTTP, or the database
// service of this process in-process (the same methods, answers and refusals).
type Database interface {
	// Reference reports whether the database is the reference design's, which lacks imgmill's
	// additions (pending tasks, leases, cancels): the master falls back to what it has.
	Reference(ctx context.Context) (bool, error)
	NewTask(ctx context.Context, p client.NewTaskParams) (int64, error)
	CreateTask(ctx context.Context, p client.NewTaskParams) (client.NewTaskResult, error)
	AbandonTask(ctx context.Context, id int64, reason string) error
	ActivateTask(ctx context.Context, id, size int64) error
	Usage(ctx context.Context, owner string) (wire.Usage, error)
	CancelTask(ctx context.Context, id int64) (wire.Task, error)
	RequeueTask(ctx context.Context, id int64) (wire.Task, error)
	DeleteTask(ctx context.Context, id int64) error
	ClaimExpired(ctx context.Context, limit int) ([]int64, error)
	GetByID(ctx context.Context, id int64) (wire.Task, error)
	GetByIDs(ctx context.Context, ids []int64) (wire.Tasks, error)
	SetByID(ctx context.Context, t wire.Task) error
	Stats(ctx context.Context) (wire.Stats, error)
	Tasks(ctx context.Context) iter.Seq2[wire.Task, error]

	// The worker side, which the master passes its workers' calls on to.
	GetNewTask(ctx context.Context, wait time.Duration) (wire.Task, error)
	GetNewTasks(ctx context.Context, wait time.Duration, n int) (tasks []wire.Task, batched bool, err error)
	FinishTask(ctx context.Context, id, token int64) error
	ExtendLease(ctx context.Context, id, token int64) (wire.Task, error)
	FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error)
	RetryTask(ctx context.Context, id, token int64, reason string) (wire.Task, error)
	ReleaseTask(ctx context.Context, id, token int64) error
}

// Storage is image storage as the master uses it: *client.Storage over HTTP, or the storage service of
// this process in-process.
type Storage interface {
	// Addr names the storage instance, for logs.
	Addr(ctx context.Context) (string, error)
	SendImage(ctx context.Context, id int64, state string, r io.Reader, size int64) error
	// SendResult stores a worker's result under its claim's fencing token (POST /finishTask).
	SendResult(ctx context.Context, id int64, token int64, r io.Reader, size int64) error
	GetImage(ctx context.Context, id int64, state string) (*client.Image, error)
	HasImage(ctx context.Context, id int64, state string) (bool, error)
	DeleteImages(ctx context.Context, id int64) error
	DeleteResult(ctx context.Context, id int64) error
	DeleteImage(ctx context.Context, id int64, state string) error
	ListBlobs(ctx context.Context, prefix, after string, limit int) (wire.BlobPage, error)
}

// Both HTTP clients are what the master takes.
var (
	_ Database = (*client.Database)(nil)
	_ Storage  = (*client.Storage)(nil)
)
