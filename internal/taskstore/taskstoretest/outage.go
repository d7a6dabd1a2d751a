package taskstoretest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// Outage describes, for RunOutage, how the engine behind a store fails and comes back.
type Outage struct {
	// Open opens a fresh, empty store, as Run's OpenFunc does; RunOutage closes it.
	Open OpenFunc
	// Break makes the engine fail (PostgreSQL stops, the disk fills up); Mend undoes it.
	Break, Mend func(t *testing.T)
	// NoSpace says that the engine is out of space rather than gone: writes fail with errors for which
	// fault.IsNoSpace holds, while reads, Ping and a replaying CreateOnce still work.
	NoSpace bool
}

// fixture is a store's tasks in the states every Store method needs to find something to do.
type fixture struct {
	held    taskstore.Task // in progress
	pending int64
	queued  int64
	once    taskstore.Task // created by CreateOnce with onceKey, queued
}

const onceKey = "kept"

// fixture creates task 0 finished, 1 held, 2 waiting to be retried, 3 pending, 4 created once and 5
// queued.
func (h *harness) fixture(t *testing.T) fixture {
	t.Helper()
	h.createN(t, 1)
	noErr(t, "Finish(0)", h.finish(t, 0, h.claimID(t, 0).Token))
	h.createN(t, 1)
	var f fixture
	f.held = h.claimID(t, 1)
	h.createN(t, 1)
	h.retry(t, 2, h.claimID(t, 2).Token, "transient", taskstore.RetryBackoff{Min: time.Hour, Max: time.Hour})
	f.pending = h.create(t, true)
	f.once = h.createOnce(t, taskstore.CreateParams{}, onceKey, time.Hour, false)
	f.queued = h.create(t, false)
	return f
}

// call is one Store method call on a fixture.
type call struct {
	name string
	read bool // it reads only: it works on a full disk
	run  func(ctx context.Context) error
}

// everyCall returns a call of every Store method that, but for a failure, would succeed on f; the
// writes would change it.
func everyCall(s taskstore.Store, f fixture) []call {
	b := taskstore.RetryBackoff{Min: time.Minute, Max: time.Minute}
	held := f.held
	return []call{
		{"Create", false, func(ctx context.Context) error {
			_, err := s.Create(ctx, taskstore.CreateParams{})
			return err
		}},
		{"CreateOnce", false, func(ctx context.Context) error {
			_, _, err := s.CreateOnce(ctx, taskstore.CreateParams{}, "a new key", time.Hour)
			return err
		}},
		{"CreateOnce replaying", true, func(ctx context.Context) error {
			task, replayed, err := s.CreateOnce(ctx, taskstore.CreateParams{}, onceKey, time.Hour)
			if err == nil && (!replayed || task.ID != f.once.ID) {
				return fmt.Errorf("got task %d (replayed %v), want a replay of task %d", task.ID, replayed, f.once.ID)
			}
			return err
		}},
		{"Activate", false, func(ctx context.Context) error { return s.Activate(ctx, f.pending, 0) }},
		{"Abandon", false, func(ctx context.Context) error { return s.Abandon(ctx, f.pending, "") }},
		{"Claim", false, func(ctx context.Context) error {
			_, err := s.Claim(ctx, lease)
			return err
		}},
		{"Extend", false, func(ctx context.Context) error {
			_, err := s.Extend(ctx, held.ID, held.Token, lease)
			return err
		}},
		{"Finish", false, func(ctx context.Context) error {
			_, err := s.Finish(ctx, held.ID, held.Token)
			return err
		}},
		{"Fail", false, func(ctx context.Context) error {
			_, err := s.Fail(ctx, held.ID, held.Token, "x", false)
			return err
		}},
		{"Release", false, func(ctx context.Context) error { return s.Release(ctx, held.ID, held.Token) }},
		{"Retry", false, func(ctx context.Context) error {
			_, err := s.Retry(ctx, held.ID, held.Token, "x", b)
			return err
		}},
		{"Set", false, func(ctx context.Context) error { return s.Set(ctx, f.queued, wire.Finished, 0) }},
		{"ExpirePending", false, func(ctx context.Context) error {
			_, err := s.ExpirePending(ctx, 0)
			return err
		}},
		{"Get", true, func(ctx context.Context) error {
			_, err := s.Get(ctx, held.ID)
			return err
		}},
		{"List", true, func(ctx context.Context) error {
			for _, err := range s.List(ctx) {
				if err != nil {
					return err
				}
			}
			return nil
		}},
		{"Counts", true, func(ctx context.Context) error {
			_, err := s.Counts(ctx)
			return err
		}},
		{"Ping", true, s.Ping},
	}
}

// testCanceledContext: a call whose context was canceled fails with the cancellation, as it is: the
// caller's, not a transient failure of the engine; and it changes nothing.
func testCanceledContext(t *testing.T, h *harness) {
	noErr(t, "Ping", h.s.Ping(h.ctx))
	f := h.fixture(t)
	before := h.list(t)
	ctx, cancel := context.WithCancel(h.ctx)
	cancel()
	for _, c := range everyCall(h.s, f) {
		if err := c.run(ctx); !errors.Is(err, context.Canceled) || fault.IsTransient(err) {
			t.Errorf("%s with a canceled context: %v; want context.Canceled, not transient", c.name, err)
		}
	}
	checkTasks(t, "after calls with a canceled context", h.list(t), before)
	noErr(t, "Ping", h.s.Ping(h.ctx))
}

// RunOutage checks a store through an outage of its engine. While it lasts, every call fails within
// enginetest.OutageCallTimeout with a transient error (out of space: every write does, with fault.IsNoSpace, and reads
// still work), and changes nothing. Once it is mended the store works again by itself, within
// enginetest.OutageCallTimeout, and every task acknowledged before is as it was.
func RunOutage(t *testing.T, o Outage) {
	clk := newFakeClock()
	s := o.Open(t, clk.Now)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	broken := false
	t.Cleanup(func() { // before Close: a store may need its engine to close cleanly
		if broken {
			o.Mend(t)
		}
	})
	h := &harness{s: s, clk: clk, ctx: t.Context()}
	f := h.fixture(t)
	before, counts := h.list(t), h.counts(t)

	o.Break(t)
	broken = true
	for _, c := range everyCall(s, f) {
		h.checkBroken(t, o, c)
	}
	if o.NoSpace {
		checkTasks(t, "during the outage", h.list(t), before)
	}

	o.Mend(t)
	broken = false
	h.awaitPing(t)
	checkTasks(t, "after the outage", h.list(t), before)
	h.checkCounts(t, "after the outage", counts)
	h.createOnce(t, taskstore.CreateParams{}, onceKey, time.Hour, true)
	// The failed writes left nothing behind, not even an id: the next one follows on.
	if id := h.create(t, false); id != int64(len(before)) {
		t.Fatalf("Create after the outage = %d, want %d", id, len(before))
	}
	if _, err := h.s.Extend(h.ctx, f.held.ID, f.held.Token, lease); err != nil {
		t.Fatalf("Extend of the claim held through the outage: %v", err)
	}
	noErr(t, "Finish of the claim held through the outage", h.finish(t, f.held.ID, f.held.Token))
	noErr(t, "Activate after the outage", h.s.Activate(h.ctx, f.pending, 0))
	h.claimID(t, f.pending) // the oldest claimable task
	h.claimID(t, f.once.ID)
}

// checkBroken runs c while the engine is broken and checks how it fails.
func (h *harness) checkBroken(t *testing.T, o Outage, c call) {
	t.Helper()
	ctx, cancel := context.WithTimeout(h.ctx, enginetest.OutageCallTimeout)
	defer cancel()
	err := c.run(ctx)
	switch {
	case c.read && o.NoSpace:
		if err != nil {
			t.Errorf("%s with the disk full: %v; reads must work", c.name, err)
		}
	default:
		if wrong := enginetest.WantTransient(err, o.NoSpace); wrong != nil {
			t.Errorf("%s during the outage: %v", c.name, wrong)
		} else {
			t.Logf("%s during the outage: %v", c.name, err)
		}
	}
}

// awaitPing waits until Ping succeeds (see enginetest.AwaitRecovery).
func (h *harness) awaitPing(t *testing.T) {
	t.Helper()
	enginetest.AwaitRecovery(t, h.s.Ping)
}
