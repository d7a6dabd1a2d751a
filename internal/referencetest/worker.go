package referencetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/wire"
)

// DefaultPollEvery is how long the stand-in worker sleeps after a claim found no task.
const DefaultPollEvery = 100 * time.Millisecond

// Worker is the reference worker, one loop: claim a task at the master's /getNewTask (no long poll: it
// sleeps PollEvery when there is none), fetch its working image from storage, swap red and green, store
// the result and report it with /registerTaskFinished. It has no lease, heartbeat or token. A task whose
// image it cannot fetch is dropped (it stays in progress for good); a result it cannot store is reported
// finished all the same.
type Worker struct {
	peers     peers
	PollEvery time.Duration
	logger    *slog.Logger
	done      atomic.Int64 // tasks reported finished

	mu      sync.Mutex
	dropped []int64 // tasks claimed and never finished
}

// NewWorker returns a worker finding master and storage through the kv store at kvAddr; logger may be
// nil.
func NewWorker(kvAddr string, logger *slog.Logger) *Worker {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Worker{peers: newPeers(kvAddr), PollEvery: DefaultPollEvery, logger: logger}
}

// Start runs the worker until the test ends.
func (wk *Worker) Start(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		wk.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-stopped
		wk.peers.closeIdle()
	})
}

// Done is how many tasks the worker reported finished.
func (wk *Worker) Done() int64 { return wk.done.Load() }

// Dropped returns the ids of the tasks the worker claimed and gave up on (say, their image was not
// stored yet), in the order it did.
func (wk *Worker) Dropped() []int64 {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return append([]int64(nil), wk.dropped...)
}

// Run works until ctx ends.
func (wk *Worker) Run(ctx context.Context) {
	for ctx.Err() == nil {
		task, ok := wk.claim(ctx)
		if !ok {
			select {
			case <-ctx.Done():
			case <-time.After(wk.PollEvery):
			}
			continue
		}
		if err := wk.process(ctx, task.ID); err != nil && ctx.Err() == nil {
			wk.mu.Lock()
			wk.dropped = append(wk.dropped, task.ID)
			wk.mu.Unlock()
			wk.logger.WarnContext(ctx, "reference worker: task dropped", "id", task.ID, "err", err)
		}
	}
}

// claim asks the master for a task; any answer that is not a task's JSON means none.
func (wk *Worker) claim(ctx context.Context) (Task, bool) {
	a, err := wk.peers.to(ctx, wire.MasterKey, http.MethodPost, "/getNewTask", nil, nil)
	if err != nil || a.status != http.StatusOK {
		return Task{}, false
	}
	var t Task
	if json.Unmarshal(a.body, &t) != nil {
		return Task{}, false
	}
	return t, true
}

func (wk *Worker) process(ctx context.Context, id int64) error {
	a, err := wk.peers.to(ctx, wire.StorageKey, http.MethodGet, "/getImage", imageQuery(id, wire.WorkingImage), nil)
	if err == nil && a.status != http.StatusOK {
		err = fmt.Errorf("storage: %d %s", a.status, a.body)
	}
	if err != nil {
		return fmt.Errorf("fetch the image: %w", err)
	}
	var out bytes.Buffer
	if err := imageop.NewProcessor().Process(&out, bytes.NewReader(a.body)); err != nil {
		return fmt.Errorf("process: %w", err)
	}
	a, err = wk.peers.to(ctx, wire.StorageKey, http.MethodPost, "/sendImage", imageQuery(id, wire.FinishedImage), &out)
	if err == nil && a.status != http.StatusOK {
		err = fmt.Errorf("storage: %d %s", a.status, a.body)
	}
	if err != nil {
		// The reference reports the task finished all the same.
		wk.logger.WarnContext(ctx, "reference worker: result not stored", "id", id, "err", err)
	}
	a, err = wk.peers.to(ctx, wire.MasterKey, http.MethodPost, "/registerTaskFinished", url.Values{"id": {strconv.FormatInt(id, 10)}}, nil)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	wk.done.Add(1)
	return nil
}
