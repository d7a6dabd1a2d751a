// Package service runs one imgmill service the same way everywhere (split processes, `imgmill serve`,
// tests): listen, serve with the shared plumbing, register the address in the kv store, run background
// loops, and shut down cleanly when the context ends.
package service

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/wire"
)

// Options are the settings every service takes the same way; each service's Config embeds them, and
// Spec takes them from there.
type Options struct {
	Addr string // listen address (host:port)
	// Advertise is the address registered in the kv store for others to dial (default: the bound
	// address, loopback for ":port"); for services that register.
	Advertise string
	// Token, when set, is the shared secret of the internal services: every request must carry it
	// (Authorization: Bearer), and imgmill's own clients send it. Insecure lets an internal service
	// listen on a non-loopback address without one (it logs a warning).
	Token    string
	Insecure bool
	// Pprof serves the net/http/pprof handlers under /debug/pprof/, guarded like /metrics.
	Pprof  bool
	Logger *slog.Logger
}

// Spec returns s with o's settings.
func (o Options) Spec(s Spec) Spec {
	s.Addr, s.Advertise, s.Token, s.Insecure, s.Pprof, s.Logger = o.Addr, o.Advertise, o.Token, o.Insecure, o.Pprof, o.Logger
	return s
}

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

	// Ready, when set, tells whether the service can do its work now (its engine answers): the
	// registration in the kv store is made and renewed only while it passes, so that an instance whose
	// engine is away drops out of discovery, and comes back when the engine does. The service's
	// GET /healthz should answer from the same check (httpapi.Healthz).
	Ready func(ctx context.Context) error

	// Background loops run beside the server and stop with it.
	Background []func(ctx context.Context) error

	// Token, when set, is the shared secret every request must carry as "Authorization: Bearer <token>"
	// (httpapi.RequireToken; GET /healthz stays open).
	Token string
	// Internal marks a service only other imgmill services and trusted clients should reach (kv,
	// database, storage, master). Without a Token it refuses to listen on anything but loopback, unless
	// Insecure is set, which only logs a warning.
	Internal bool
	Insecure bool

	// Timeouts are the server's timeouts; zero fields take the httpapi defaults.
	Timeouts httpapi.ServerTimeouts

	// Metrics, when set, is the service's registry: every request is counted in it (route, method,
	// status, duration) and GET /metrics serves it.
	Metrics *metrics.Registry
	// Pprof mounts the net/http/pprof handlers under /debug/pprof/ (CPU and heap profiles, goroutine
	// dumps, traces); off, those paths are 404.
	Pprof bool
	// OpsToken is the bearer token /metrics and /debug/pprof/ require on a public service (neither
	// Internal nor with a Token), whose other routes are open to anyone: without one they are not
	// served there at all, so they are never open to the world. Elsewhere they are guarded like the
	// rest of the service: by Token when there is one.
	OpsToken string
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
	// deregisterTimeout bounds the removal of an instance's key on shutdown.
	deregisterTimeout = 2 * time.Second
)

// Run serves spec until ctx ends or something fails.
func Run(ctx context.Context, spec Spec) error {
	if err := checkListenPolicy(ctx, spec); err != nil {
		return err
	}
	ln, err := httpapi.Listen(ctx, spec.Addr)
	if err != nil {
		return err
	}
	handler := httpapi.RequireToken(spec.Token, withOps(ctx, spec))
	opts := []httpapi.ServerOption{httpapi.WithTimeouts(spec.Timeouts)}
	if spec.Metrics != nil {
		// Not a nil *Registry in the interface: the server would call it.
		opts = append(opts, httpapi.WithObserver(spec.Metrics))
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return httpapi.Serve(ctx, ln, handler, spec.Logger, opts...)
	})
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
			register(ctx, registration{kv: spec.KV, key: spec.RegisterAs, addr: addr, ttl: ttl, ready: spec.Ready}, spec.Logger)
			return nil
		})
	}
	if spec.Ready != nil {
		g.Go(func() error {
			watchReady(ctx, spec.Ready, spec.Logger)
			return nil
		})
	}
	for _, loop := range spec.Background {
		g.Go(func() error { return loop(ctx) })
	}
	return g.Wait()
}

// Readiness watch timing: how often a service that is not ready checks again and says what it waits
// for, and how often one that is ready checks that it still is.
const (
	notReadyEvery = 5 * time.Second
	readyEvery    = 5 * time.Second
)

// watchReady logs what a service waits for while it is not ready (its engine does not answer: at start,
// or after the engine went away), every notReadyEvery, and when it is ready again, until ctx ends.
func watchReady(ctx context.Context, ready func(context.Context) error, logger *slog.Logger) {
	wasReady := true // a service that is ready at once says nothing
	for {
		checkCtx, cancel := context.WithTimeout(ctx, notReadyEvery)
		err := ready(checkCtx)
		cancel()
		wait := readyEvery
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			logger.WarnContext(ctx, "not ready: waiting for what it depends on; GET /healthz answers 503 meanwhile", "err", err)
			wasReady = false
			wait = notReadyEvery
		case !wasReady:
			logger.InfoContext(ctx, "ready")
			wasReady = true
		}
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}

// withOps returns spec's handler with the operational endpoints beside its routes: GET /metrics when
// spec.Metrics is set, and /debug/pprof/ when spec.Pprof is. A nil spec.Handler is a service without an
// API of its own (a worker's metrics listener): it answers /healthz only.
func withOps(ctx context.Context, spec Spec) http.Handler {
	h := spec.Handler
	if h == nil {
		mux := httpapi.NewMux()
		mux.Handle("GET /healthz", httpapi.Healthz(spec.Ready))
		mux.Handle("GET /livez", httpapi.Livez())
		h = mux
	}
	if spec.Metrics == nil && !spec.Pprof {
		return h
	}
	// Token already guards everything, and an internal service without one is as open as the rest of
	// it (loopback, or --insecure); a public service's ops endpoints need their own token.
	guard := ""
	if spec.Token == "" && !spec.Internal {
		if spec.OpsToken == "" {
			level := slog.LevelInfo
			if spec.Pprof {
				level = slog.LevelWarn // asked for, and not served
			}
			spec.Logger.Log(ctx, level, "/metrics and /debug/pprof/ are not served: a public service serves them only with a token (--token)")
			return h
		}
		guard = spec.OpsToken
	}
	mux := http.NewServeMux()
	if spec.Metrics != nil {
		mux.Handle("GET /metrics", httpapi.RequireToken(guard, spec.Metrics.Handler(spec.Logger)))
	}
	if spec.Pprof {
		// The routes net/http/pprof registers on http.DefaultServeMux (which nothing here serves), on
		// this service's mux instead.
		for pattern, handler := range map[string]http.HandlerFunc{
			"/debug/pprof/":        pprof.Index, // and every named profile: /debug/pprof/heap, ...
			"/debug/pprof/cmdline": pprof.Cmdline,
			"/debug/pprof/profile": pprof.Profile,
			"/debug/pprof/symbol":  pprof.Symbol,
			"/debug/pprof/trace":   pprof.Trace,
		} {
			mux.Handle(pattern, httpapi.RequireToken(guard, handler))
		}
	}
	mux.Handle("/", h)
	return mux
}

// registration is a service's entry in the kv store.
type registration struct {
	kv        *client.KV
	key, addr string
	ttl       time.Duration
	ready     func(ctx context.Context) error // nil: always ready
}

// register stores addr in the kv store under key (the reference registration: the last instance to
// renew wins) and under its own instance key beside the other instances' (wire.InstancePrefix), with
// a TTL, and renews both every ttl/3 until ctx ends; then it removes the instance key, so peers stop
// calling at once, and the rest expires by itself. A failed write (the kv store may start after us, or
// be restarting) is retried with capped, jittered backoff. While the service is not ready (its engine
// is away) it does not renew, so the entry lapses and clients go to other instances; it registers again
// as soon as it is ready, and removes its instance key when it stops being ready (a kv store without
// expiry would list it forever).
func register(ctx context.Context, reg registration, logger *slog.Logger) {
	renew := max(reg.ttl/3, time.Millisecond)
	retry := backoff.Backoff{Min: min(registerRetryMin, renew), Max: min(registerRetryMax, renew)}
	instanceKey := wire.InstancePrefix(reg.key) + reg.addr
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deregisterTimeout)
		defer cancel()
		if err := reg.kv.Remove(ctx, instanceKey); err != nil {
			logger.InfoContext(ctx, "deregistration failed; the entry expires by itself", "key", instanceKey, "err", err)
		}
	}()
	registered := false
	for {
		var err error
		ready := reg.ready == nil
		if !ready {
			checkCtx, cancel := context.WithTimeout(ctx, renew)
			err = reg.ready(checkCtx)
			cancel()
			ready = err == nil
		}
		if ready {
			err = reg.kv.SetTTL(ctx, instanceKey, reg.addr, reg.ttl)
			if err == nil {
				err = reg.kv.SetTTL(ctx, reg.key, reg.addr, reg.ttl)
			}
		}
		var wait time.Duration
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			if !registered {
				logger.InfoContext(ctx, "registered", "key", reg.key, "addr", reg.addr, "ttl", reg.ttl)
			}
			registered = true
			retry.Reset()
			wait = renew
		case !ready:
			// watchReady says why. The entries lapse meanwhile; the instance key is also removed at
			// once, for a kv store without expiry (the reference design's), which would keep it listed.
			// The reference key stays: another instance may have renewed it since.
			if registered {
				if err := reg.kv.Remove(ctx, instanceKey); err != nil && ctx.Err() == nil {
					logger.InfoContext(ctx, "removing the registration while not ready failed; it expires by itself", "key", instanceKey, "err", err)
				}
			}
			registered = false
			wait = retry.Next()
		default:
			// Logged on every failure: the registration is about to lapse, or already has.
			logger.WarnContext(ctx, "registration failed, retrying", "key", reg.key, "err", err)
			registered = false
			wait = retry.Next()
		}
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}

// checkListenPolicy refuses an invalid or short token (every entry point, the CLI or a library caller,
// meets the same rule), and an internal service without a token on an address others can reach,
// unless spec.Insecure accepts that (with a warning).
func checkListenPolicy(ctx context.Context, spec Spec) error {
	for _, token := range []string{spec.Token, spec.OpsToken} {
		if err := httpapi.CheckToken(token); err != nil {
			return err
		}
	}
	if !spec.Internal || spec.Token != "" || LoopbackAddr(spec.Addr) {
		return nil
	}
	if spec.Insecure {
		spec.Logger.WarnContext(ctx, "listening on a non-loopback address without a token (--insecure): "+
			"anyone who can reach it can read, change and delete tasks, images and configuration", "addr", spec.Addr)
		return nil
	}
	return fmt.Errorf("refusing to listen on %s without a token: it is not a loopback address, so anyone "+
		"who can reach it could read, change and delete tasks, images and configuration; set the same "+
		"secret on every service with --token or IMGMILL_TOKEN, listen on 127.0.0.1, or pass --insecure "+
		"(IMGMILL_INSECURE=true) if the network itself is trusted", spec.Addr)
}

// LoopbackAddr reports whether the listen address addr (host:port) is reachable only from this machine:
// a host in 127.0.0.0/8, ::1 or "localhost". An empty host (":3001"), an unspecified one (0.0.0.0, ::),
// any other address and any other name are not.
func LoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}
