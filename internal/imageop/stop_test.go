package imageop

import (
	"bytes"
	"context"
	"errors"
	"image"
	"io"
	"runtime"
	"testing"
	"time"
)

// countingContext is a context that ends at its limit-th check (Err call): a cancellation that lands
// at a known point of the work, however fast or slow the machine is. It records the thread CPU time
// at that moment, so that what the work does after it can be measured. Use it on one goroutine,
// locked to its thread.
type countingContext struct {
	context.Context
	limit, calls int64
	endedAt      time.Duration // thread CPU time when it ended
}

func (c *countingContext) Err() error {
	c.calls++
	if c.limit > 0 && c.calls >= c.limit {
		if c.calls == c.limit {
			c.endedAt, _ = threadCPU()
		}
		return context.Canceled
	}
	return nil
}

// stopCase is one part of a task, run with a context; prepare makes its input (unmeasured) and
// returns the run.
type stopCase struct {
	name    string
	prepare func() func(ctx context.Context) error
}

func stopCases(t *testing.T, size int) []stopCase {
	var cs []stopCase
	var inputs inputCache
	for _, in := range []string{"png", "png16", "jpeg", "gif", "bmp", "tiff"} {
		data := inputs.get(t, in, size)
		cs = append(cs, stopCase{"decode " + in, func() func(context.Context) error {
			return func(ctx context.Context) error {
				_, _, err := decode(ctx, bytes.NewReader(data), 0, nil)
				return err
			}
		}})
	}
	nrgba := decodeAny(t, inputs.get(t, "png", size))
	ycc := decodeAny(t, inputs.get(t, "jpeg", size))
	p := NewProcessor()
	for _, enc := range []struct {
		name, format string
		img          image.Image
	}{{"encode png", "png", nrgba}, {"encode jpeg", "jpeg", nrgba}, {"encode jpeg from YCbCr", "jpeg", ycc}} {
		cs = append(cs, stopCase{enc.name, func() func(context.Context) error {
			in := cloneAny(enc.img)
			return func(ctx context.Context) error { return p.encode(ctx, io.Discard, in, enc.format, 0) }
		}})
	}
	for _, spec := range []string{"swap", "grayscale", "invert", "blur:2", "blur:20", "sharpen:10",
		"resize:%hx%h", "resize:%ex%e", "resize:%dx%h:exact", "thumbnail:%e", "rotate:90", "rotate:180", "flip:h", "flip:v"} {
		o := estimateCase{spec: spec}.chain(t, size).steps()[0]
		for _, src := range []struct {
			kind string
			img  image.Image
		}{{"NRGBA", nrgba}, {"YCbCr", ycc}} {
			if o.kind == opGrayscale && src.kind == "YCbCr" {
				continue // keeps the Y plane: no work to stop
			}
			cs = append(cs, stopCase{o.String() + " on " + src.kind, func() func(context.Context) error {
				in := cloneAny(src.img)
				return func(ctx context.Context) error {
					_, err := o.apply(ctx, in)
					return err
				}
			}})
		}
	}
	return cs
}

// TestStopsSoonAfterContextEnds ends the context halfway through every decoder, encoder and
// operation (at half the checks an uncancelled run makes), and requires the run to fail with
// context.Canceled after little more work: its CPU time from that moment on under a tenth of the
// whole run's (and 2 ms, for the quick ones). CPU time of the thread, not wall time, so that a busy
// machine does not count.
func TestStopsSoonAfterContextEnds(t *testing.T) {
	if _, ok := threadCPU(); !ok {
		t.Skip("no per-thread CPU time on this platform")
	}
	// The bound is relative, so the size matters little; WebP has no encoder in Go to make an input
	// (its lossy decoder reads the whole frame before decoding it, so it stops only at the end).
	size := 1024
	if testing.Short() || raceEnabled {
		size = 512
	}
	for _, c := range stopCases(t, size) {
		t.Run(c.name, func(t *testing.T) {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			whole := &countingContext{Context: context.Background()}
			run := c.prepare()
			start, _ := threadCPU()
			if err := run(whole); err != nil {
				t.Fatalf("uncancelled: %v", err)
			}
			end, _ := threadCPU()
			total := end - start
			if whole.calls < 4 {
				t.Fatalf("checked the context %d times in %v of CPU", whole.calls, total)
			}
			half := &countingContext{Context: context.Background(), limit: whole.calls / 2}
			run = c.prepare()
			err := run(half)
			stoppedAt, _ := threadCPU()
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled halfway: got %v, want context.Canceled", err)
			}
			if half.calls < half.limit {
				t.Fatalf("returned %v before the context ended", err)
			}
			tail := stoppedAt - half.endedAt
			if bound := max(total/10, 2*time.Millisecond); tail > bound {
				t.Errorf("went on for %v of CPU after the context ended, over %v (the whole run takes %v, checking the context %d times)",
					tail, bound, total, whole.calls)
			}
		})
	}
}

// TestApplyContextDeadline runs a whole task with a deadline that ends early in it: ApplyContext
// fails with an error that is context.DeadlineExceeded, well before the task would have ended, and
// leaves no goroutine behind.
func TestApplyContextDeadline(t *testing.T) {
	size := 1024
	if testing.Short() || raceEnabled {
		size = 512
	}
	var inputs inputCache
	data := inputs.get(t, "png", size)
	chain := mustChain(t, "blur:6,blur:6,blur:6,sharpen:10,rotate:90,convert:jpeg")
	p := NewProcessor()
	var whole time.Duration // the longer of two runs: the bounds below are wide for a busy machine
	for range 2 {
		start := time.Now()
		if _, err := p.ApplyContext(context.Background(), io.Discard, bytes.NewReader(data), chain); err != nil {
			t.Fatal(err)
		}
		whole = max(whole, time.Since(start))
	}
	goroutines := runtime.NumGoroutine()
	for _, at := range []time.Duration{0, whole / 10, whole / 3} {
		ctx, cancel := context.WithTimeout(context.Background(), at)
		start := time.Now()
		_, err := p.ApplyContext(ctx, io.Discard, bytes.NewReader(data), chain)
		took := time.Since(start)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("deadline after %v: got %v, want context.DeadlineExceeded", at, err)
		}
		// Wall time, so with a wide margin: a busy machine may stall the run for a while.
		if bound := at + (whole-at)*2/3; took > bound {
			t.Errorf("deadline after %v of a %v task: returned after %v, over %v", at, whole, took, bound)
		}
	}
	cause := errors.New("the task's deadline")
	ctx, cancel := context.WithTimeoutCause(context.Background(), whole/10, cause)
	defer cancel()
	if _, err := p.ApplyContext(ctx, io.Discard, bytes.NewReader(data), chain); !errors.Is(err, cause) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline with a cause: got %v, want both the cause and context.DeadlineExceeded", err)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("%d goroutines after the cancelled runs, %d before", n, goroutines)
	}
}
