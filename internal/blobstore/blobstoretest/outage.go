package blobstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/enginetest"
)

// Engine is a store's engine under RunOutage's control, in one subtest.
type Engine = enginetest.Engine[blobstore.Store]

// Outage is one kind of outage of a store's engine, for RunOutage.
type Outage = enginetest.Outage[blobstore.Store]

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

// waitRecovered waits until s works again (Ping, then a Put read back; see enginetest.AwaitRecovery).
func waitRecovered(t *testing.T, s blobstore.Store) {
	t.Helper()
	data := payload(99, 10<<10)
	enginetest.AwaitRecovery(t, func(ctx context.Context) error {
		if err := s.Ping(ctx); err != nil {
			return fmt.Errorf("ping: %w", err)
		}
		if _, err := s.Put(ctx, "recovery/probe", bytes.NewReader(data), int64(len(data)), 0); err != nil {
			return fmt.Errorf("put: %w", err)
		}
		return nil
	})
	wantContent(t, s, "recovery/probe", data)
}

// readAll opens key and reads it whole.
func readAll(ctx context.Context, s blobstore.Store, key string) ([]byte, error) {
	b, err := s.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	return io.ReadAll(b)
}

func testOutage(t *testing.T, o Outage) {
	e := o.Engine(t)
	s := e.OpenStore(t)
	before := map[string]struct {
		data  []byte
		fence int64
	}{
		"before/small":    {payload(1, 1000), 0},
		"before/fenced":   {payload(2, 70<<10), 7},
		"before/deep/key": {payload(3, 300<<10), 1},
	}
	for key, b := range before {
		putFenced(t, s, key, b.data, b.fence)
	}
	// Blobs that the outage's writes go to: whether such a write took effect after all may not be known
	// (the request may have reached the engine), so the blobs above are never written to.
	old, newer := payload(4, 20<<10), payload(5, 30<<10)
	putFenced(t, s, "outage/over", old, 3)
	put(t, s, "outage/scratch", []byte("deleted during the outage"))
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping before the outage: %v", err)
	}
	// Open before, read during: the first read may be what reaches the engine.
	opened, err := s.Open(t.Context(), "before/fenced")
	if err != nil {
		t.Fatal(err)
	}
	defer opened.Close()

	e.Down(t)
	t.Log("the engine is down")
	enginetest.During(t, map[string]func(ctx context.Context) error{
		"Put of a new key": func(ctx context.Context) error {
			_, err := s.Put(ctx, "outage/new", bytes.NewReader(newer), int64(len(newer)), 0)
			return enginetest.WantTransient(err, o.NoSpace)
		},
		"fenced Put over a blob": func(ctx context.Context) error {
			_, err := s.Put(ctx, "outage/over", bytes.NewReader(newer), int64(len(newer)), 4)
			return enginetest.WantTransient(err, o.NoSpace)
		},
		"Put of unknown size": func(ctx context.Context) error {
			big := payload(6, 3<<20)
			_, err := s.Put(ctx, "outage/stream", opaqueReader{bytes.NewReader(big)}, -1, 2)
			return enginetest.WantTransient(err, o.NoSpace)
		},
		"Ping": func(ctx context.Context) error { return enginetest.WantTransient(s.Ping(ctx), o.NoSpace) },
		"Open": func(ctx context.Context) error {
			got, err := readAll(ctx, s, "before/small")
			if !o.ReadsWork {
				return enginetest.WantTransient(err, false)
			}
			if err != nil {
				return err
			}
			if !bytes.Equal(got, before["before/small"].data) {
				return fmt.Errorf("read %d bytes that are not the blob", len(got))
			}
			return nil
		},
		"Open of a missing key": func(ctx context.Context) error {
			_, err := readAll(ctx, s, "outage/missing")
			if !o.ReadsWork {
				return enginetest.WantTransient(err, false)
			}
			if !errors.Is(err, blobstore.ErrNotFound) {
				return fmt.Errorf("%v, want ErrNotFound", err)
			}
			return nil
		},
		"reading a blob opened before": func(ctx context.Context) error {
			got, err := io.ReadAll(opened)
			if !o.ReadsWork {
				if err == nil && bytes.Equal(got, before["before/fenced"].data) {
					return nil // served before the outage took hold: fine too
				}
				return enginetest.WantTransient(err, false)
			}
			if err != nil {
				return err
			}
			if !bytes.Equal(got, before["before/fenced"].data) {
				return fmt.Errorf("read %d bytes that are not the blob", len(got))
			}
			return nil
		},
	})
	// After the others: on a full disk, a delete frees space, which the others must not find.
	enginetest.During(t, map[string]func(ctx context.Context) error{
		"Delete": func(ctx context.Context) error {
			err := s.Delete(ctx, "outage/scratch")
			if o.NoSpace && err == nil {
				return nil // a delete frees space
			}
			return enginetest.WantTransient(err, false)
		},
	})

	e.Up(t)
	t.Log("the engine is back")
	waitRecovered(t, s)
	for key, b := range before {
		wantBlob(t, s, key, b.data, b.fence)
	}
	// Each write of the outage took effect whole or not at all.
	if b, err := s.Open(t.Context(), "outage/over"); err != nil {
		t.Errorf("Open(outage/over): %v", err)
	} else {
		got, err := io.ReadAll(b)
		b.Close()
		switch {
		case err != nil:
			t.Errorf("read outage/over: %v", err)
		case !(b.Fence == 3 && bytes.Equal(got, old)) && !(b.Fence == 4 && bytes.Equal(got, newer)):
			t.Errorf("outage/over holds %d bytes with fence %d: neither the blob before nor the one of the outage", len(got), b.Fence)
		}
	}
	// Everything works: the outage's writes again, a stale fence, a delete.
	putFenced(t, s, "outage/over", newer, 5)
	wantBlob(t, s, "outage/over", newer, 5)
	putStale(t, s, "outage/over", old, 4)
	put(t, s, "outage/new", newer)
	wantContent(t, s, "outage/new", newer)
	if err := s.Delete(t.Context(), "outage/scratch"); err != nil {
		t.Fatalf("Delete after the outage: %v", err)
	}
	wantNotFound(t, s, "outage/scratch")
}

func testOpenWhileDown(t *testing.T, o Outage) {
	e := o.Engine(t)
	e.Down(t)
	t.Log("the engine is down")
	start := time.Now()
	s := e.OpenStore(t)
	t.Logf("opened in %v", time.Since(start).Round(time.Millisecond))
	data := payload(7, 50<<10)
	enginetest.During(t, map[string]func(ctx context.Context) error{
		"Ping": func(ctx context.Context) error { return enginetest.WantTransient(s.Ping(ctx), o.NoSpace) },
		"Put": func(ctx context.Context) error {
			_, err := s.Put(ctx, "k", bytes.NewReader(data), int64(len(data)), 1)
			return enginetest.WantTransient(err, o.NoSpace)
		},
	})
	e.Up(t)
	t.Log("the engine is back")
	waitRecovered(t, s)
	putFenced(t, s, "k", data, 2)
	wantBlob(t, s, "k", data, 2)
}
