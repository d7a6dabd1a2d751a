// Package worker runs the worker loops: claim a task from the master, fetch its working image from
// storage, process it, store the result as finished, register the task finished.
package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/service"
)

// DefaultWait is how long a claim waits at the master for work to appear (long poll).
const DefaultWait = 10 * time.Second

// Config configures Run.
type Config struct {
	Master      *client.Master
	Storage     *client.Storage
	Concurrency int           // loops; default the number of CPUs
	Wait        time.Duration // long-poll wait per claim; default DefaultWait
	Logger      *slog.Logger
}

// Run runs Concurrency worker loops until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	n := cfg.Concurrency
	if n <= 0 {
		n = runtime.NumCPU()
	}
	if cfg.Wait <= 0 {
		cfg.Wait = DefaultWait
	}
	proc := imageop.NewProcessor()
	cfg.Logger.InfoContext(ctx, "worker started", "concurrency", n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			l := &loop{cfg: cfg, proc: proc, logger: cfg.Logger.With("loop", i)}
			l.run(ctx)
		})
	}
	wg.Wait()
	return nil
}

type loop struct {
	cfg    Config
	proc   *imageop.Processor
	logger *slog.Logger
	out    bytes.Buffer // reused result buffer
}

func (l *loop) run(ctx context.Context) {
	failures := service.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
	idle := service.Backoff{Min: 50 * time.Millisecond, Max: 2 * time.Second}
	for ctx.Err() == nil {
		start := time.Now()
		task, err := l.cfg.Master.GetNewTask(ctx, l.cfg.Wait)
		switch {
		case err == nil:
			failures.Reset()
			idle.Reset()
			l.handle(ctx, task)
		case client.IsNoTask(err):
			failures.Reset()
			// A master that ignores the wait parameter (the reference one) answers at once: back off
			// instead of spinning on it.
			if time.Since(start) < l.cfg.Wait/2 {
				service.Sleep(ctx, idle.Next())
			}
		default:
			if ctx.Err() != nil {
				return
			}
			d := failures.Next()
			l.logger.WarnContext(ctx, "claim failed", "err", err, "retry_in", d)
			service.Sleep(ctx, d)
		}
	}
}

func (l *loop) handle(ctx context.Context, task client.Task) {
	start := time.Now()
	logger := l.logger.With("task", task.ID)
	if err := l.process(ctx, task.ID); err != nil {
		// The task stays in progress; its lease lapses and it is handed out again.
		logger.ErrorContext(ctx, "task failed", "err", err)
		return
	}
	if err := l.cfg.Master.RegisterTaskFinished(ctx, task.ID); err != nil {
		logger.WarnContext(ctx, "register finished failed", "err", err)
		return
	}
	logger.InfoContext(ctx, "task finished", "duration", time.Since(start))
}

func (l *loop) process(ctx context.Context, id int64) error {
	src, err := l.cfg.Storage.GetImage(ctx, id, client.Working)
	if err != nil {
		return fmt.Errorf("fetch working image: %w", err)
	}
	l.out.Reset()
	err = l.proc.Process(&l.out, src)
	src.Close()
	if err != nil {
		if errors.Is(err, imageop.ErrDecode) {
			return fmt.Errorf("bad input: %w", err)
		}
		return fmt.Errorf("process: %w", err)
	}
	if err := l.cfg.Storage.SendImage(ctx, id, client.Finished, bytes.NewReader(l.out.Bytes()), int64(l.out.Len())); err != nil {
		return fmt.Errorf("store finished image: %w", err)
	}
	return nil
}

// NewClients returns the master and storage clients a worker uses, found through the kv store.
func NewClients(hc *http.Client, kv *client.KV) (*client.Master, *client.Storage) {
	return client.NewMaster(hc, client.NewResolver(kv, client.MasterKey, client.ResolveTTL)),
		client.NewStorage(hc, client.NewResolver(kv, client.StorageKey, client.ResolveTTL))
}
