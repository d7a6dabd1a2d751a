package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/testimage"
)

// Pace is how long one image takes through a running deployment on this machine, as busy as it is
// while the test runs: the round trip of an upload, its processing and the download of its result.
// Tests that put a deployment under load judge what it does, not how fast: their deadlines are scaled
// from a Pace measured in the same run, so that a loaded machine makes them slower but not failing.
type Pace time.Duration

// MeasurePace sends a few small images through m one after the other, checks each result, and returns
// the slowest round trip (the first includes what a cold deployment sets up on first use). A refusal
// is asked again, as a client would, and the round trip timed from the attempt that was accepted.
func MeasurePace(t testing.TB, m *client.Master) Pace {
	t.Helper()
	ctx, cancel := Within(t, time.Hour)
	defer cancel()
	var slowest time.Duration
	for i := range 3 {
		orig := testimage.Pattern(32, int64(9000+i))
		data, err := testimage.EncodePNG(orig)
		if err != nil {
			t.Fatal(err)
		}
		var (
			start  time.Time
			id     int64
			result image.Image
		)
		retry(t, ctx, "pace: upload", func() (err error) {
			start = time.Now()
			id, err = m.New(ctx, bytes.NewReader(data), int64(len(data)))
			return err
		})
		for delay := time.Millisecond; ; delay = min(2*delay, 20*time.Millisecond) {
			if ready, err := m.IsReady(ctx, id); err == nil && ready {
				break
			}
			if !backoff.Sleep(ctx, delay) {
				t.Fatalf("pace: task %d not processed by the test's deadline", id)
			}
		}
		retry(t, ctx, fmt.Sprintf("pace: result of task %d", id), func() (err error) {
			result, err = fetchResult(ctx, m, id)
			return err
		})
		slowest = max(slowest, time.Since(start))
		if err := testimage.CheckSwapped(orig, result); err != nil {
			t.Fatalf("pace: task %d: %v", id, err)
		}
	}
	t.Logf("pace: one image through the deployment in %v at the slowest", slowest.Round(time.Millisecond))
	return Pace(slowest)
}

// retry calls f until it succeeds, failing t with what it last said when ctx ends first.
func retry(t testing.TB, ctx context.Context, what string, f func() error) {
	t.Helper()
	for {
		err := f()
		if err == nil {
			return
		}
		if !backoff.Sleep(ctx, 100*time.Millisecond) {
			t.Fatalf("%s: %v (retried until the test's deadline)", what, err)
		}
	}
}

func fetchResult(ctx context.Context, m *client.Master, id int64) (image.Image, error) {
	img, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	result, err := png.Decode(img)
	if err != nil {
		return nil, fmt.Errorf("decode the result of task %d: %w", id, err)
	}
	return result, nil
}

// Allow is n round trips at pace p, but at least floor: a deadline wide on an idle machine that grows
// with the load of a busy one.
func (p Pace) Allow(n int, floor time.Duration) time.Duration {
	return max(floor, time.Duration(n)*time.Duration(p))
}

func (p Pace) String() string { return fmt.Sprint(time.Duration(p).Round(time.Millisecond)) }

// cleanupMargin is what Within leaves of the test binary's time for cleanups and logs.
const cleanupMargin = 2 * time.Minute

// Within returns a context that ends after d, or earlier, cleanupMargin before the test binary's
// deadline (go test -timeout): a test that runs out of time then fails saying what it waited for, with
// its cleanups run and the services' logs shown, instead of the binary panicking.
func Within(t testing.TB, d time.Duration) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(d)
	if dt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if end, ok := dt.Deadline(); ok && end.Add(-cleanupMargin).Before(deadline) {
			deadline = end.Add(-cleanupMargin)
		}
	}
	return context.WithDeadline(t.Context(), deadline)
}
