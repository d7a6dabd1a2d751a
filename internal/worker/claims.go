package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// handBackTimeout bounds handing back, at shutdown, the tasks claimed for loops that stopped first.
const handBackTimeout = 5 * time.Second

// claimer gets the loops their tasks with as few claims as it can: the loops waiting for a task at
// once (the worker's free slots) share one claim of up to that many (GetNewTasks), led by one of
// them while the others wait for its answer. A master that answers a batch claim with one task (the
// reference design's, which knows no max) is asked as before: each loop claims for itself.
type claimer struct {
	master Master
	wait   time.Duration
	logger *slog.Logger

	mu      sync.Mutex
	held    []wire.Task   // claimed for loops that did not take them yet
	waiting int           // loops in next, the leader included
	round   chan struct{} // closed when the claim in flight answers; nil when none is
	single  bool          // the master knows no batch claims
}

// next returns a task for the calling loop: one claimed for it by another loop's batch, or one of
// the batch it claims itself for every loop waiting. Its error is the claim's (IsNoTask: none came).
func (c *claimer) next(stop context.Context) (wire.Task, error) {
	c.mu.Lock()
	c.waiting++
	for {
		if len(c.held) > 0 {
			t := c.held[0]
			c.held = c.held[1:]
			c.waiting--
			c.mu.Unlock()
			return t, nil
		}
		if c.single {
			c.waiting--
			c.mu.Unlock()
			return c.master.GetNewTask(stop, c.wait)
		}
		if c.round == nil {
			break
		}
		round := c.round
		c.mu.Unlock()
		select {
		case <-round:
		case <-stop.Done():
			c.mu.Lock()
			c.waiting--
			c.mu.Unlock()
			return wire.Task{}, stop.Err()
		}
		c.mu.Lock()
	}
	n := c.waiting
	round := make(chan struct{})
	c.round = round
	c.mu.Unlock()

	ts, batched, err := c.master.GetNewTasks(stop, c.wait, n)

	c.mu.Lock()
	defer c.mu.Unlock()
	c.round = nil
	close(round)
	c.waiting--
	if err != nil {
		return wire.Task{}, err
	}
	if n > 1 && !batched && !c.single {
		c.single = true
		c.logger.InfoContext(stop, "the master claims one task per call: each loop claims for itself")
	}
	c.held = append(c.held, ts[1:]...)
	return ts[0], nil
}

// handBack releases the tasks claimed for loops that stopped before they took them, so that another
// worker takes them at once rather than after their leases lapse (which would cost them an attempt).
// The loops have all returned.
func (c *claimer) handBack(ctx context.Context) {
	c.mu.Lock()
	held := c.held
	c.held = nil
	c.mu.Unlock()
	if len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), handBackTimeout)
	defer cancel()
	for _, t := range held {
		if err := c.master.ReleaseTask(ctx, t.ID, t.Token); err != nil {
			c.logger.WarnContext(ctx, "could not hand back a task claimed for a loop that stopped: its lease will lapse",
				"task", t.ID, "err", err)
		}
	}
}
