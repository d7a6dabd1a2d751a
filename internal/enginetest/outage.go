package enginetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/fault"
)

// The outage parts of the backends' contract suites (taskstoretest, blobstoretest, kvstoretest) check
// the same things of every store while its engine is out and once it is back: these are the checks.

// OutageCallTimeout is the deadline of each call a suite makes while an engine is out. A store must have
// given up on its own by then, with a transient error; the caller's own deadline coming back instead
// means the store waits for as long as its caller lets it: a hang.
const OutageCallTimeout = 60 * time.Second

// RecoveryTimeout bounds how long a store may take to work again once its engine is back.
const RecoveryTimeout = 60 * time.Second

// WantTransient says what is wrong with err, the outcome of a call made while an engine was out (nil
// when nothing): it must be a transient failure (fault.IsTransient), out of space when noSpace, and not
// the caller's deadline passing.
func WantTransient(err error, noSpace bool) error {
	switch {
	case err == nil:
		return errors.New("succeeded")
	case errors.Is(err, context.DeadlineExceeded) && !fault.IsTransient(err):
		return fmt.Errorf("still waiting when the caller's %v deadline passed (it hangs): %w", OutageCallTimeout, err)
	case !fault.IsTransient(err):
		return fmt.Errorf("a permanent error, want a transient one: %w", err)
	case noSpace && !fault.IsNoSpace(err):
		return fmt.Errorf("transient but not out of space: %w", err)
	}
	return nil
}

// During runs the checks at once, each with a context of OutageCallTimeout, and reports those that fail
// (a check returns what is wrong, nil when it passed) and how long each took.
func During(t *testing.T, checks map[string]func(ctx context.Context) error) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, check := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), OutageCallTimeout)
			defer cancel()
			start := time.Now()
			err := check(ctx)
			took := time.Since(start).Round(time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("during the outage, %s (after %v): %v", name, took, err)
			} else {
				t.Logf("during the outage, %s: as expected after %v", name, took)
			}
		})
	}
	wg.Wait()
}

// AwaitRecovery calls attempt (with a context of OutageCallTimeout) until it succeeds, at most
// RecoveryTimeout after the engine came back, failing the test if it meets a permanent error meanwhile:
// a store reports only transient errors until it works again.
func AwaitRecovery(t *testing.T, attempt func(ctx context.Context) error) {
	t.Helper()
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), OutageCallTimeout)
		err := attempt(ctx)
		cancel()
		switch {
		case err == nil:
			t.Logf("working again %v after the engine came back", time.Since(start).Round(time.Millisecond))
			return
		case !fault.IsTransient(err):
			t.Fatalf("after the engine came back (%v): %v; want only transient errors until it works", time.Since(start), err)
		case time.Since(start) > RecoveryTimeout:
			t.Fatalf("the store does not work %v after the engine came back: %v", RecoveryTimeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Engine is a store's engine under an outage test's control, in one subtest; S is the kind of store.
type Engine[S io.Closer] struct {
	// Open opens a new store on the engine, empty as far as its methods can see. It is also called
	// while the engine is down (to check that a store opens then), and must succeed then too.
	Open func(t *testing.T) S
	// Down takes the engine away (stops or freezes its process, makes a cluster lose its quorum, fills
	// its disk); Up brings it back with the data it had. Up may return before the engine serves again.
	Down, Up func(t testing.TB)
}

// OpenStore opens a store on e and closes it when t ends.
func (e Engine[S]) OpenStore(t *testing.T) S {
	t.Helper()
	s := e.Open(t)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// Outage is one kind of outage of a store's engine, for the RunOutage of a contract suite.
type Outage[S io.Closer] struct {
	// Engine returns the engine of one subtest, which Down and Up affect alone.
	Engine func(t *testing.T) Engine[S]
	// NoSpace says the outage is a full disk: writes fail with fault.IsNoSpace (and a delete, which
	// frees space, may succeed where the suite says so).
	NoSpace bool
	// ReadsWork says what was stored before the outage can still be read during it (a full local disk, a
	// store that serves reads from memory); otherwise reads fail with transient errors, as writes do.
	ReadsWork bool
	// OpenWhileDown adds the subtest that opens a store while its engine is down.
	OpenWhileDown bool
}

// RunOutage runs outage, and openWhileDown when o.OpenWhileDown, as the subtests "Outage" and
// "OpenWhileDown": the frame of a contract suite's RunOutage.
func RunOutage[S io.Closer](t *testing.T, o Outage[S], outage, openWhileDown func(t *testing.T, o Outage[S])) {
	t.Helper()
	t.Run("Outage", func(t *testing.T) { outage(t, o) })
	if o.OpenWhileDown {
		t.Run("OpenWhileDown", func(t *testing.T) { openWhileDown(t, o) })
	}
}

// CheckPing checks a store's Ping: it succeeds while the engine is up, and with the caller's context
// cancelled it returns the cancellation, which is not transient (nothing is away; the caller gave up).
func CheckPing(t *testing.T, ping func(ctx context.Context) error) {
	t.Helper()
	if err := ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := ping(ctx); !errors.Is(err, context.Canceled) || fault.IsTransient(err) {
		t.Errorf("Ping with a cancelled context = %v, want the cancellation, not transient", err)
	}
}
