// Package service runs one imgmill service the same way everywhere (split processes, `imgmill serve`,
// tests): listen, serve with the shared plumbing, register the address in the kv store, run background
// loops, and shut down cleanly when the context ends.
package service

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
)

// Spec describes a service to run.
type Spec struct {
	Addr    string // listen address
	Handler http.Handler
	Logger  *slog.Logger

	// RegisterAs, when set, is the discovery key under which the service's address is stored in the kv
	// store at KV; Advertise overrides the address (default: the bound address, loopback for ":port").
	RegisterAs string
	KV         *client.KV
	Advertise  string

	// Background loops run beside the server and stop with it.
	Background []func(ctx context.Context) error
}

// ReregisterEvery is how often a registration is written again, so a kv store that lost its data heals.
const ReregisterEvery = 30 * time.Second

// Run serves spec until ctx ends or something fails.
func Run(ctx context.Context, spec Spec) error {
	ln, err := httpapi.Listen(ctx, spec.Addr)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return httpapi.Serve(ctx, ln, spec.Handler, spec.Logger) })
	if spec.RegisterAs != "" {
		addr := spec.Advertise
		if addr == "" {
			addr = httpapi.AdvertiseAddr(ln.Addr())
		}
		g.Go(func() error {
			register(ctx, spec.KV, spec.RegisterAs, addr, spec.Logger)
			return nil
		})
	}
	for _, loop := range spec.Background {
		g.Go(func() error { return loop(ctx) })
	}
	return g.Wait()
}

// register stores key=addr in the kv store, retrying with capped, jittered backoff until it succeeds
// (the kv store may start after us), then writes it again every ReregisterEvery until ctx ends.
func register(ctx context.Context, kv *client.KV, key, addr string, logger *slog.Logger) {
	backoff := Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
	registered := false
	for {
		err := kv.Set(ctx, key, addr)
		var wait time.Duration
		switch {
		case err == nil:
			if !registered {
				logger.InfoContext(ctx, "registered", "key", key, "addr", addr)
			}
			registered = true
			backoff.Reset()
			wait = ReregisterEvery
		default:
			if ctx.Err() != nil {
				return
			}
			logger.WarnContext(ctx, "registration failed, retrying", "key", key, "err", err)
			wait = backoff.Next()
		}
		if !Sleep(ctx, wait) {
			return
		}
	}
}

// Backoff yields exponentially growing waits with full jitter, so many clients of a failed peer do not
// retry in lockstep.
type Backoff struct {
	Min, Max time.Duration
	n        int
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	d := b.Min << min(b.n, 20)
	if d > b.Max || d <= 0 {
		d = b.Max
	}
	b.n++
	return d/2 + rand.N(d/2+1)
}

// Reset starts again from Min.
func (b *Backoff) Reset() { b.n = 0 }

// Sleep waits d or until ctx ends; it reports whether the full wait passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
