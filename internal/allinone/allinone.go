// Package allinone runs all six services in one process, each on its own listener with its full wire
// API for clients, workers and services elsewhere. Inside the process the frontend calls the master, the
// master the database and storage, and the worker the master and storage directly through Go (the
// services' Local APIs, on the same servers, held to the same contract suites as their HTTP clients);
// only registration and discovery through kv stay HTTP.
package allinone

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/engines"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// ServicesMemory is what serve's services but the worker hold (kv, database, storage, master,
// frontend, their connections and upload buffers), reserved out of the process's MaxMemory beside the
// worker's own BaseMemory. Measured: serve holds about 31 MB idle and 49 MB while 16 uploads of
// 360 KB stream in at once and are processed; this leaves room for many more connections.
const ServicesMemory = 64 << 20

// Config configures Run: each service's own settings in its Config (an empty Addr takes the service's
// DefaultAddr); what they share, and what Run wires between them, is filled in.
type Config struct {
	DataDir string
	// Shared are the settings of all six: Token, Insecure, Pprof and Logger (Addr and Advertise are
	// each service's).
	Shared service.Options
	// Where the data lives: URLs (empty: the embedded stores under DataDir) and their options; Run
	// opens them and closes them when the services have stopped.
	Tasks   engines.Tasks
	Blobs   engines.Blobs
	KVStore engines.KV

	KV       kvservice.Config // Addr
	Database database.Config  // Addr, Policy, PendingTimeout
	Storage  storage.Config   // Addr
	Master   master.Config    // Addr, Limits
	Worker   worker.Config    // everything but Master, Storage and Logger; its MaxMemory is MaxMemory's share
	// MaxMemory is the whole process's memory budget in bytes: the worker's image work gets it less
	// ServicesMemory. 0 means no budget.
	MaxMemory int64
	Frontend  frontend.Config // Addr, Secret, Limits
}

// options is shared with addr (or def, when addr is empty) and a logger naming the service.
func (c Config) options(addr, def, name string) service.Options {
	o := c.Shared
	o.Addr = cmp.Or(addr, def)
	o.Advertise = ""
	o.Logger = c.Shared.Logger.With("service", name)
	return o
}

// Run runs the six services until ctx ends or one fails.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Shared.Logger == nil {
		cfg.Shared.Logger = slog.New(slog.DiscardHandler)
	}
	if err := newSecretForNewData(ctx, cfg); err != nil {
		return fmt.Errorf("imgmill serve: %w", err)
	}
	stores, err := openStores(ctx, &cfg)
	if err != nil {
		return fmt.Errorf("imgmill serve: %w", err)
	}
	defer stores.close()
	hc := httpapi.NewClient(httpapi.WithToken(cfg.Shared.Token))
	defer hc.CloseIdleConnections()

	kvCfg := cfg.KV
	kvCfg.Options = cfg.options(cfg.KV.Addr, kvservice.DefaultAddr, "kv")
	kvCfg.Store = stores.kv
	kv := client.NewKV(hc, kvCfg.Addr)
	dbCfg := cfg.Database
	dbCfg.Options = cfg.options(cfg.Database.Addr, database.DefaultAddr, "database")
	dbCfg.KV, dbCfg.Store = kv, stores.tasks
	stCfg := cfg.Storage
	stCfg.Options = cfg.options(cfg.Storage.Addr, storage.DefaultAddr, "storage")
	stCfg.KV, stCfg.Blobs = kv, stores.blobs
	maCfg := cfg.Master
	maCfg.Options = cfg.options(cfg.Master.Addr, master.DefaultAddr, "master")
	maCfg.KV, maCfg.HTTP = kv, hc
	feCfg := cfg.Frontend
	feCfg.Options = cfg.options(cfg.Frontend.Addr, frontend.DefaultAddr, "frontend")
	feCfg.KV, feCfg.HTTP, feCfg.DataDir = kv, hc, cfg.DataDir
	// The master and the worker call the database, storage and master of this process directly,
	// through Go (each service's Local, on the very server that serves its wire API to everyone else).
	db, err := database.NewService(dbCfg)
	if err != nil {
		return fmt.Errorf("imgmill serve: %w", err)
	}
	st, err := storage.NewService(stCfg)
	if err != nil {
		return fmt.Errorf("imgmill serve: %w", err)
	}
	maCfg.Database, maCfg.Storage = db.Local(), st.Local()
	ma, err := master.NewService(maCfg)
	if err != nil {
		return fmt.Errorf("imgmill serve: %w", err)
	}
	feCfg.Master = ma.Local()
	wCfg := cfg.Worker
	wCfg.Master, wCfg.Storage = ma.Local(), st.Local()
	if cfg.MaxMemory > 0 {
		if cfg.MaxMemory <= ServicesMemory+worker.BaseMemory {
			return fmt.Errorf("imgmill serve: a memory budget of %d bytes leaves nothing for images: the services but the worker's image work take about %d", cfg.MaxMemory, ServicesMemory+worker.BaseMemory)
		}
		wCfg.MaxMemory = cfg.MaxMemory - ServicesMemory - worker.BaseMemory
	}
	wCfg.Logger = cfg.Shared.Logger.With("service", "worker")

	// kv stops last, once the others have deregistered through it.
	kvCtx, stopKV := context.WithCancel(context.WithoutCancel(ctx))
	defer stopKV()
	kvDone := make(chan struct{})
	var kvErr error
	go func() {
		defer close(kvDone)
		kvErr = kvservice.Run(kvCtx, kvCfg)
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
	g.Go(func() error { return db.Run(ctx) })
	g.Go(func() error { return st.Run(ctx) })
	g.Go(func() error { return ma.Run(ctx) })
	g.Go(func() error { return worker.Run(ctx, wCfg) })
	g.Go(func() error { return frontend.Run(ctx, feCfg) })
	err = g.Wait()
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

// stores are the three stores Run opened.
type stores struct {
	tasks taskstore.Store
	blobs blobstore.Store
	kv    kvstore.Store
}

func (s stores) close() {
	if s.tasks != nil {
		s.tasks.Close()
	}
	if s.blobs != nil {
		s.blobs.Close()
	}
	if s.kv != nil {
		s.kv.Close()
	}
}

// openStores opens the three stores cfg names, under cfg.DataDir when embedded.
func openStores(ctx context.Context, cfg *Config) (s stores, err error) {
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	cfg.Tasks.DataDir, cfg.Blobs.DataDir, cfg.KVStore.DataDir = cfg.DataDir, cfg.DataDir, cfg.DataDir
	cfg.Tasks.Logger, cfg.Blobs.Logger, cfg.KVStore.Logger = cfg.Shared.Logger, cfg.Shared.Logger, cfg.Shared.Logger
	if s.tasks, err = cfg.Tasks.Open(ctx); err != nil {
		return s, fmt.Errorf("tasks: %w", err)
	}
	if s.blobs, err = cfg.Blobs.Open(ctx); err != nil {
		return s, fmt.Errorf("blobs: %w", err)
	}
	if s.kv, err = cfg.KVStore.Open(ctx); err != nil {
		return s, fmt.Errorf("kv store: %w", err)
	}
	return s, nil
}

// newSecretForNewData makes the frontend's public id secret at once in a brand-new data directory (all
// embedded stores, none of them created yet): no task can exist, so the secret is made before any
// could, rather than by the frontend racing the first uploads through the master (see
// frontend.ResolveSecret, which refuses to make one once tasks exist).
func newSecretForNewData(ctx context.Context, cfg Config) error {
	if cfg.Frontend.Secret != nil || !engines.Embedded(cfg.DataDir, cfg.Tasks.URL, cfg.KVStore.URL) {
		return nil
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
	for _, key := range []string{wire.DatabaseKey, wire.StorageKey, wire.MasterKey} {
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

// The in-process APIs serve where the HTTP clients do.
var (
	_ master.Database = (*database.Local)(nil)
	_ master.Storage  = (*storage.Local)(nil)
	_ worker.Master   = (*master.Local)(nil)
	_ worker.Storage  = (*storage.Local)(nil)
	_ frontend.Master = (*master.Local)(nil)
)
