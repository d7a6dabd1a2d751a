package kvstoretest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/kvstore"
)

// Engine is a store's engine under RunOutage's control, in one subtest.
type Engine = enginetest.Engine[kvstore.Store]

// Outage is one kind of outage of a store's engine, for RunOutage.
type Outage = enginetest.Outage[kvstore.Store]

// RunOutage runs the outage part of the contract: while the engine is down, every write fails with a
// transient error (fault.IsTransient; fault.IsNoSpace for a full disk) within
// enginetest.OutageCallTimeout, Ping reports the outage, and reads either work (o.ReadsWork) or fail the
// same way; once the engine is back, everything works again within enginetest.RecoveryTimeout and
// nothing stored before is lost. With o.OpenWhileDown, a store opened while the engine is down opens,
// fails the same way and works once the engine is back.
func RunOutage(t *testing.T, o Outage) {
	t.Helper()
	enginetest.RunOutage(t, o, testOutage, testOpenWhileDown)
}

// waitRecovered waits until s works again (Ping, then a Set read back; see enginetest.AwaitRecovery).
func waitRecovered(t *testing.T, s kvstore.Store) {
	t.Helper()
	enginetest.AwaitRecovery(t, func(ctx context.Context) error {
		if err := s.Ping(ctx); err != nil {
			return fmt.Errorf("ping: %w", err)
		}
		if err := s.Set(ctx, "recovery/probe", "back", 0); err != nil {
			return fmt.Errorf("set: %w", err)
		}
		return nil
	})
	wantValue(t, s, "recovery/probe", "back")
}

func testOutage(t *testing.T, o Outage) {
	e := o.Engine(t)
	s := e.OpenStore(t)
	before := []kvstore.Entry{
		{Key: "before/config", Value: "permanent"},
		{Key: "before/registration", Value: "127.0.0.1:3002"}, // with a ttl that outlasts the test
		{Key: "before/secret", Value: "set if absent"},
	}
	set(t, s, before[0].Key, before[0].Value)
	setTTL(t, s, before[1].Key, before[1].Value, time.Hour)
	if got, err := s.SetIfAbsent(t.Context(), before[2].Key, before[2].Value); err != nil || got != before[2].Value {
		t.Fatalf("SetIfAbsent = %q, %v", got, err)
	}
	// Entries that the outage's writes go to: whether such a write took effect after all may not be
	// known (the request may have reached the engine), so the entries above are never written to.
	set(t, s, "outage/over", "old")
	set(t, s, "outage/scratch", "deleted during the outage")
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping before the outage: %v", err)
	}

	e.Down(t)
	t.Log("the engine is down")
	enginetest.During(t, map[string]func(ctx context.Context) error{
		"Set of a new key": func(ctx context.Context) error {
			return enginetest.WantTransient(s.Set(ctx, "outage/new", "v", 0), o.NoSpace)
		},
		"Set over an entry": func(ctx context.Context) error {
			return enginetest.WantTransient(s.Set(ctx, "outage/over", "new", 0), o.NoSpace)
		},
		"Set with a ttl": func(ctx context.Context) error {
			return enginetest.WantTransient(s.Set(ctx, "outage/ttl", "v", time.Hour), o.NoSpace)
		},
		"SetIfAbsent": func(ctx context.Context) error {
			_, err := s.SetIfAbsent(ctx, "outage/absent", "v")
			return enginetest.WantTransient(err, o.NoSpace)
		},
		"Ping": func(ctx context.Context) error { return enginetest.WantTransient(s.Ping(ctx), o.NoSpace) },
		"Get": func(ctx context.Context) error {
			got, err := s.Get(ctx, before[0].Key)
			if !o.ReadsWork {
				return enginetest.WantTransient(err, false)
			}
			if err != nil || got != before[0].Value {
				return fmt.Errorf("= %q, %v; want %q", got, err, before[0].Value)
			}
			return nil
		},
		"Get of a missing key": func(ctx context.Context) error {
			_, err := s.Get(ctx, "outage/missing")
			if !o.ReadsWork {
				return enginetest.WantTransient(err, false)
			}
			if !errors.Is(err, kvstore.ErrNotFound) {
				return fmt.Errorf("%v, want ErrNotFound", err)
			}
			return nil
		},
		"List": func(ctx context.Context) error {
			got, err := s.List(ctx, "before/")
			if !o.ReadsWork {
				return enginetest.WantTransient(err, false)
			}
			if err != nil || !slices.Equal(got, before) {
				return fmt.Errorf("= %q, %v; want %q", got, err, before)
			}
			return nil
		},
	})
	// After the others: on a full disk, a delete that went through would free space they must not find.
	enginetest.During(t, map[string]func(ctx context.Context) error{
		"Delete": func(ctx context.Context) error {
			return enginetest.WantTransient(s.Delete(ctx, "outage/scratch"), o.NoSpace)
		},
	})

	e.Up(t)
	t.Log("the engine is back")
	waitRecovered(t, s)
	wantListPrefix(t, s, "before/", before)
	// Each write of the outage took effect or did not, nothing else.
	if got, err := s.Get(t.Context(), "outage/over"); err != nil || (got != "old" && got != "new") {
		t.Errorf("outage/over = %q, %v; want the value before or the one of the outage", got, err)
	}
	// Everything works: the outage's writes again.
	set(t, s, "outage/over", "after")
	wantValue(t, s, "outage/over", "after")
	setTTL(t, s, "outage/ttl", "after", time.Hour)
	wantValue(t, s, "outage/ttl", "after")
	if err := s.Delete(t.Context(), "outage/scratch"); err != nil {
		t.Fatalf("Delete after the outage: %v", err)
	}
	wantNotFound(t, s, "outage/scratch")
	if got, err := s.SetIfAbsent(t.Context(), "before/secret", "another"); err != nil || got != before[2].Value {
		t.Errorf("SetIfAbsent of a held key after the outage = %q, %v; want %q", got, err, before[2].Value)
	}
}

func testOpenWhileDown(t *testing.T, o Outage) {
	e := o.Engine(t)
	e.Down(t)
	t.Log("the engine is down")
	start := time.Now()
	s := e.OpenStore(t)
	t.Logf("opened in %v", time.Since(start).Round(time.Millisecond))
	enginetest.During(t, map[string]func(ctx context.Context) error{
		"Ping": func(ctx context.Context) error { return enginetest.WantTransient(s.Ping(ctx), o.NoSpace) },
		"Set": func(ctx context.Context) error {
			return enginetest.WantTransient(s.Set(ctx, "k", "v", 0), o.NoSpace)
		},
	})
	e.Up(t)
	t.Log("the engine is back")
	waitRecovered(t, s)
	set(t, s, "k", "v")
	wantValue(t, s, "k", "v")
	wantList(t, s, []kvstore.Entry{{Key: "k", Value: "v"}, {Key: "recovery/probe", Value: "back"}})
}
