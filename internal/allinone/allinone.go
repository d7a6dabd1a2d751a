// Package allinone runs all six services in one process, each on its own listener and still talking
// HTTP through the kv store, so the all-in-one and the split deployment run the same code paths.
package allinone

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/worker"
)

// Default listen addresses (the reference ports; the frontend on 8080).
const (
	DefaultKVAddr       = "127.0.0.1:3000"
	DefaultDatabaseAddr = "127.0.0.1:3001"
	DefaultStorageAddr  = "127.0.0.1:3002"
	DefaultMasterAddr   = "127.0.0.1:3003"
	DefaultFrontendAddr = ":8080"
)

// Config configures Run. Empty addresses take the defaults.
type Config struct {
	DataDir                                                 string
	KVAddr, DatabaseAddr, StorageAddr, MasterAddr, Frontend string
	// Tasks, Blobs and KVStore name the backends (database.Config.Tasks, storage.Config.Blobs,
	// kvservice.Config.Store): empty for the embedded ones under DataDir.
	Tasks, Blobs, KVStore string
	PoolSize              int
	Getenv                func(string) string
	Worker                worker.Config // Master, Storage and Logger are filled in
	Policy                database.Policy
	Logger                *slog.Logger
	// Limits are the master's (zero fields: the defaults); the worker's pixel limit is Worker.MaxPixels.
	Limits master.Limits
	// Token, when set, is the shared secret of kv, database, storage and master: they require it and every
	// service sends it. Insecure lets them listen on non-loopback addresses without one (see service.Spec).
	Token    string
	Insecure bool
	// FrontendSecret is the frontend's public id secret (nil: the one shared in the kv store), and
	// FrontendOptions its limits on the public.
	FrontendSecret  []byte
	FrontendOptions frontend.Options
	// Pprof serves the net/http/pprof handlers under /debug/pprof/ on every service (see service.Spec).
	Pprof bool
}

func (c *Config) setDefaults() {
	for _, a := range []struct {
		p   *string
		def string
	}{{&c.KVAddr, DefaultKVAddr}, {&c.DatabaseAddr, DefaultDatabaseAddr}, {&c.StorageAddr, DefaultStorageAddr},
		{&c.MasterAddr, DefaultMasterAddr}, {&c.Frontend, DefaultFrontendAddr}} {
		if *a.p == "" {
			*a.p = a.def
		}
	}
}

// Run runs the six services until ctx ends or one fails.
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	if err := newSecretForNewData(ctx, cfg); err != nil {
		return fmt.Errorf("imgmill serve: %w", err)
	}
	hc := httpapi.NewClient(httpapi.WithToken(cfg.Token))
	defer hc.CloseIdleConnections()
	kv := client.NewKV(hc, cfg.KVAddr)
	log := func(name string) *slog.Logger { return cfg.Logger.With("service", name) }
	wcfg := cfg.Worker
	wcfg.Master, wcfg.Storage = worker.NewClients(hc, kv)
	wcfg.Logger = log("worker")
	// kv stops last, once the others have deregistered through it.
	kvCtx, stopKV := context.WithCancel(context.WithoutCancel(ctx))
	defer stopKV()
	kvDone := make(chan struct{})
	var kvErr error
	go func() {
		defer close(kvDone)
		kvErr = kvservice.Run(kvCtx, kvservice.Config{Addr: cfg.KVAddr, DataDir: cfg.DataDir, Store: cfg.KVStore, Logger: log("kv"),
			Token: cfg.Token, Insecure: cfg.Insecure, Pprof: cfg.Pprof})
	}()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		select {
		case <-kvDone: // kv ended first: it failed; the others stop too
			return fmt.Errorf("kv: %w", cmp.Or(kvErr, errors.New("stopped")))
		case <-ctx.Done():
			return nil
		}
	})
	g.Go(func() error {
		return database.Run(ctx, database.Config{Addr: cfg.DatabaseAddr, KV: kv, DataDir: cfg.DataDir, Tasks: cfg.Tasks, PoolSize: cfg.PoolSize, Policy: cfg.Policy, Logger: log("database"),
			Token: cfg.Token, Insecure: cfg.Insecure, Pprof: cfg.Pprof})
	})
	g.Go(func() error {
		return storage.Run(ctx, storage.Config{Addr: cfg.StorageAddr, KV: kv, DataDir: cfg.DataDir, Blobs: cfg.Blobs, Getenv: cfg.Getenv, Logger: log("storage"),
			Token: cfg.Token, Insecure: cfg.Insecure, Pprof: cfg.Pprof})
	})
	g.Go(func() error {
		return master.Run(ctx, master.Config{Addr: cfg.MasterAddr, KV: kv, HTTP: hc, Logger: log("master"),
			Token: cfg.Token, Insecure: cfg.Insecure, Limits: cfg.Limits, Pprof: cfg.Pprof})
	})
	g.Go(func() error {
		return worker.Run(ctx, wcfg)
	})
	g.Go(func() error {
		return frontend.Run(ctx, frontend.Config{Addr: cfg.Frontend, KV: kv, HTTP: hc, Logger: log("frontend"),
			Secret: cfg.FrontendSecret, DataDir: cfg.DataDir, Options: cfg.FrontendOptions, Token: cfg.Token, Pprof: cfg.Pprof})
	})
	err := g.Wait()
	stopKV()
	<-kvDone
	if err != nil {
		return fmt.Errorf("imgmill serve: %w", err)
	}
	if kvErr != nil {
		return fmt.Errorf("imgmill serve: kv: %w", kvErr)
	}
	return nil
}

// newSecretForNewData makes the frontend's public id secret at once in a brand-new data directory (all
// embedded stores, none of them created yet): no task can exist, so the secret is made before any
// could, rather than by the frontend racing the first uploads through the master (see
// frontend.ResolveSecret, which refuses to make one once tasks exist).
func newSecretForNewData(ctx context.Context, cfg Config) error {
	if cfg.FrontendSecret != nil || cfg.Tasks != "" || cfg.KVStore != "" {
		return nil
	}
	for _, name := range []string{database.TasksFile, kvservice.KVFile} {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, name)); !errors.Is(err, fs.ErrNotExist) {
			return nil // not new (or unreadable: the services will say so)
		}
	}
	return frontend.CreateSecretFile(ctx, cfg.DataDir)
}

// WaitReady waits until the database, storage and master have registered in the kv store at kvAddr and
// each answers its health check. opts configure its client (httpapi.WithToken when kv requires a token).
func WaitReady(ctx context.Context, kvAddr string, opts ...httpapi.ClientOption) error {
	hc := httpapi.NewClient(opts...)
	defer hc.CloseIdleConnections()
	kv := client.NewKV(hc, kvAddr)
	for {
		err := checkReady(ctx, hc, kv)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("services not ready: %w (%w)", err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func checkReady(ctx context.Context, hc *http.Client, kv *client.KV) error {
	for _, key := range []string{client.DatabaseKey, client.StorageKey, client.MasterKey} {
		addr, err := kv.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if err := client.CheckHealth(ctx, hc, addr); err != nil {
			return fmt.Errorf("%s at %s: %w", key, addr, err)
		}
	}
	return nil
}

// FreeAddrs returns n distinct free loopback addresses (host:port). Another process could take one before
// it is used; good enough for tests and benchmarks on one machine.
func FreeAddrs(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}
