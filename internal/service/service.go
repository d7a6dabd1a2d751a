// Package service runs one imgmill service the same way everywhere (split processes, `imgmill serve`,
// tests): listen, serve with the shared plumbing, register the address in the kv store, run background
// loops, and shut down cleanly when the context ends.
package service

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"

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
	// RegistrationTTL is how long the registration lives in the kv store unless renewed; it is renewed
	// every third of it. 0 means the RegistrationTTL constant; tests shorten it.
	RegistrationTTL time.Duration

	// Background loops run beside the server and stop with it.
	Background []func(ctx context.Context) error
}

// RegistrationTTL is how long a service's registration lives in the kv store unless renewed. It is renewed
// every RegistrationTTL/3, so an instance that died drops out of discovery within RegistrationTTL (until
// then clients calling it fail over by looking the key up again), and a kv store that restarted empty, or
// lost the key, has it back within RegistrationTTL/3.
const RegistrationTTL = 15 * time.Second

// Registration retry backoff bounds; the wait is also capped at the renewal period, so that a failed
// renewal is retried before the entry expires.
const (
	registerRetryMin = 50 * time.Millisecond
	registerRetryMax = 5 * time.Second
)

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
		ttl := spec.RegistrationTTL
		if ttl <= 0 {
			ttl = RegistrationTTL
		}
		g.Go(func() error {
			register(ctx, spec.KV, spec.RegisterAs, addr, ttl, spec.Logger)
			return nil
		})
	}
	for _, loop := range spec.Background {
		g.Go(func() error { return loop(ctx) })
	}
	return g.Wait()
}

// register stores key=addr in the kv store with a TTL of ttl and renews it every ttl/3 until ctx ends;
// after that the entry expires by itself. A failed write (the kv store may start after us, or be
// restarting) is retried with capped, jittered backoff.
func register(ctx context.Context, kv *client.KV, key, addr string, ttl time.Duration, logger *slog.Logger) {
	renew := max(ttl/3, time.Millisecond)
	retry := backoff.Backoff{Min: min(registerRetryMin, renew), Max: min(registerRetryMax, renew)}
	registered := false
	for {
		err := kv.SetTTL(ctx, key, addr, ttl)
		var wait time.Duration
		switch {
		case err == nil:
			if !registered {
				logger.InfoContext(ctx, "registered", "key", key, "addr", addr, "ttl", ttl)
			}
			registered = true
			retry.Reset()
			wait = renew
		default:
			if ctx.Err() != nil {
				return
			}
			// Logged on every failure: the registration is about to lapse, or already has.
			logger.WarnContext(ctx, "registration failed, retrying", "key", key, "err", err)
			registered = false
			wait = retry.Next()
		}
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}
