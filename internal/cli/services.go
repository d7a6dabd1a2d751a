package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/bench"
	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/engines"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/memlimit"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/worker"
)

// The service commands. Each service's settings are defined by the functions in flags.go, which serve
// calls too: a service has the same flags alone and in serve, but its listen address (--addr alone,
// --NAME-addr in serve).

func serveCommand() command {
	return command{name: "serve", summary: "run all six services in one process (embedded storage under --data)",
		about: "Runs all six services in one process, each on its own address, with embedded storage under --data\n" +
			"(or on the engines --tasks, --blobs and --kv-store name). Then open http://localhost:8080.\n" +
			"It takes the flags of the six service commands; their listen addresses are --NAME-addr.",
		define: func(f *flags) runner {
			var cfg allinone.Config
			f.dataDir(&cfg.DataDir)
			f.addr(&cfg.Frontend.Addr, "frontend", frontend.DefaultAddr)
			f.alias("addr", "frontend-addr")
			f.addr(&cfg.KV.Addr, "kv", kvservice.DefaultAddr)
			f.addr(&cfg.Database.Addr, "database", database.DefaultAddr)
			f.addr(&cfg.Storage.Addr, "storage", storage.DefaultAddr)
			f.addr(&cfg.Master.Addr, "master", master.DefaultAddr)
			f.tasks(&cfg.Tasks)
			f.blobs(&cfg.Blobs)
			f.minFree(&cfg.Storage.MinFree)
			f.kvStore(&cfg.KVStore)
			f.sharedOptions(&cfg.Shared)
			f.policy(&cfg.Database)
			f.maxUpload(&cfg.Master.Limits.MaxUpload, master.DefaultMaxUpload)
			f.maxPixels(&cfg.Master.Limits.MaxPixels)
			f.masterLimits(&cfg.Master.Limits)
			f.sweeps(&cfg.Master)
			f.worker(&cfg.Worker)
			f.frontend(&cfg.Frontend)
			return func(ctx context.Context, _ []string) error {
				if err := firstError(checkPolicy(&cfg.Database), checkWorker(&cfg.Worker), checkFrontend(&cfg.Frontend.Limits), checkSweeps(&cfg.Master)); err != nil {
					return err
				}
				// One limit each for what the services check alike: the frontend refuses what the master
				// would, and the worker decodes what the master accepted.
				cfg.Frontend.Limits.MaxUpload = cfg.Master.Limits.MaxUpload
				cfg.Frontend.Limits.MaxPixels = cfg.Master.Limits.MaxPixels
				cfg.Worker.MaxPixels = cfg.Master.Limits.MaxPixels
				cfg.Shared.Logger = f.logger("")
				// --max-memory is the whole process's: allinone gives the worker what the rest leaves.
				budget, err := processMemory(cfg.Worker.MaxMemory, allinone.ServicesMemory+worker.BaseMemory, cfg.Shared.Logger)
				if err != nil {
					return err
				}
				cfg.MaxMemory, cfg.Worker.MaxMemory = budget, 0
				cfg.Blobs.Getenv = f.env.getenv
				cfg.Shared.Logger.Info("imgmill serve starting", "data", cfg.DataDir, "frontend", cfg.Frontend.Addr)
				return allinone.Run(ctx, cfg)
			}
		}}
}

func kvCommand() command {
	return command{name: "kv", summary: "run the key-value store (config and discovery)",
		about: "Runs the key-value store (reference API: /set, /get, /remove, /list).",
		define: func(f *flags) runner {
			var cfg kvservice.Config
			var store engines.KV
			f.addr(&cfg.Addr, "", kvservice.DefaultAddr)
			f.dataDir(&store.DataDir)
			f.kvStore(&store)
			f.alias("kv", "kv-store")
			f.sharedOptions(&cfg.Options)
			return func(ctx context.Context, _ []string) error {
				cfg.Logger = f.logger("kv")
				store.Logger = cfg.Logger
				return withStore(ctx, "kv-store", store.Open, func(s kvstore.Store) error {
					cfg.Store = s
					return kvservice.Run(ctx, cfg)
				})
			}
		}}
}

func databaseCommand() command {
	return command{name: "database", summary: "run the task database",
		about: "Runs the task database (reference API: /newTask, /getById, /getNewTask, /finishTask, /setById, /list).",
		define: func(f *flags) runner {
			var cfg database.Config
			var tasks engines.Tasks
			f.addr(&cfg.Addr, "", database.DefaultAddr)
			f.advertise(&cfg.Options)
			kv := f.kvAddrs()
			f.dataDir(&tasks.DataDir)
			f.tasks(&tasks)
			f.policy(&cfg)
			f.sharedOptions(&cfg.Options)
			return func(ctx context.Context, _ []string) error {
				if err := checkPolicy(&cfg); err != nil {
					return err
				}
				cfg.Logger = f.logger("database")
				tasks.Logger = cfg.Logger
				cfg.KV = client.NewKV(httpapi.NewClient(httpapi.WithToken(cfg.Token)), *kv)
				return withStore(ctx, "tasks", tasks.Open, func(s taskstore.Store) error {
					cfg.Store = s
					return database.Run(ctx, cfg)
				})
			}
		}}
}

func storageCommand() command {
	return command{name: "storage", summary: "run the image storage",
		about: "Runs the image storage (reference API: /sendImage, /getImage).",
		define: func(f *flags) runner {
			var cfg storage.Config
			var blobs engines.Blobs
			f.addr(&cfg.Addr, "", storage.DefaultAddr)
			f.advertise(&cfg.Options)
			kv := f.kvAddrs()
			f.dataDir(&blobs.DataDir)
			f.blobs(&blobs)
			f.minFree(&cfg.MinFree)
			f.sharedOptions(&cfg.Options)
			return func(ctx context.Context, _ []string) error {
				cfg.Logger = f.logger("storage")
				blobs.Logger, blobs.Getenv = cfg.Logger, f.env.getenv
				cfg.KV = client.NewKV(httpapi.NewClient(httpapi.WithToken(cfg.Token)), *kv)
				return withStore(ctx, "blobs", blobs.Open, func(s blobstore.Store) error {
					cfg.Blobs = s
					return storage.Run(ctx, cfg)
				})
			}
		}}
}

func masterCommand() command {
	return command{name: "master", summary: "run the master (API for clients and workers)",
		about: "Runs the master (reference API: /new, /isReady, /get, /getNewTask, /registerTaskFinished).",
		define: func(f *flags) runner {
			var cfg master.Config
			f.addr(&cfg.Addr, "", master.DefaultAddr)
			f.advertise(&cfg.Options)
			kv := f.kvAddrs()
			f.maxUpload(&cfg.Limits.MaxUpload, master.DefaultMaxUpload)
			f.maxPixels(&cfg.Limits.MaxPixels)
			f.masterLimits(&cfg.Limits)
			f.sweeps(&cfg)
			f.sharedOptions(&cfg.Options)
			return func(ctx context.Context, _ []string) error {
				if err := checkSweeps(&cfg); err != nil {
					return err
				}
				cfg.Logger = f.logger("master")
				cfg.HTTP = httpapi.NewClient(httpapi.WithToken(cfg.Token))
				cfg.KV = client.NewKV(cfg.HTTP, *kv)
				return master.Run(ctx, cfg)
			}
		}}
}

func workerCommand() command {
	return command{name: "worker", summary: "run worker loops that process images",
		about: "Runs worker loops: claim a task at the master, process its image, store the result.",
		define: func(f *flags) runner {
			var cfg worker.Config
			var opts service.Options
			kv := f.kvAddrs()
			f.worker(&cfg)
			f.maxPixels(&cfg.MaxPixels)
			f.StringVar(&opts.Addr, "metrics-addr", "", "serve /metrics (and /debug/pprof/ with --pprof) on this address (host:port), behind --token; default: no listener")
			f.sharedOptions(&opts)
			return func(ctx context.Context, _ []string) error {
				if err := checkWorker(&cfg); err != nil {
					return err
				}
				hc := httpapi.NewClient(httpapi.WithToken(opts.Token))
				cfg.Master, cfg.Storage = worker.NewClients(hc, client.NewKV(hc, *kv))
				cfg.Logger = f.logger("worker")
				budget, err := processMemory(cfg.MaxMemory, worker.BaseMemory, cfg.Logger)
				if err != nil {
					return err
				}
				cfg.MaxMemory = max(budget-worker.BaseMemory, 0)
				if opts.Addr == "" {
					return worker.Run(ctx, cfg)
				}
				reg := metrics.New("worker")
				cfg.Metrics = metrics.NewWorker(reg)
				opts.Logger = cfg.Logger
				// The worker has no API of its own: this listener answers /healthz, /metrics and /debug/pprof/.
				return service.Run(ctx, opts.Spec(service.Spec{Metrics: reg, Internal: true,
					Background: []func(context.Context) error{func(ctx context.Context) error { return worker.Run(ctx, cfg) }}}))
			}
		}}
}

func frontendCommand() command {
	return command{name: "frontend", summary: "run the public web frontend",
		about: "Runs the public web frontend (upload page, /submitTask, /isReady, /getImage, the JSON API under /api/).",
		define: func(f *flags) runner {
			var cfg frontend.Config
			f.addr(&cfg.Addr, "", frontend.DefaultAddr)
			kv := f.kvAddrs()
			f.dataDir(&cfg.DataDir)
			f.frontend(&cfg)
			f.maxUpload(&cfg.Limits.MaxUpload, frontend.DefaultMaxUpload)
			f.maxPixels(&cfg.Limits.MaxPixels) // shown to the public (/api/limits): set it as the master's
			f.token(&cfg.Token)                // sent to kv and master, and guards /metrics here
			f.pprof(&cfg.Pprof)
			return func(ctx context.Context, _ []string) error {
				if err := checkFrontend(&cfg.Limits); err != nil {
					return err
				}
				cfg.Logger = f.logger("frontend")
				cfg.HTTP = httpapi.NewClient(httpapi.WithToken(cfg.Token))
				cfg.KV = client.NewKV(cfg.HTTP, *kv)
				return frontend.Run(ctx, cfg)
			}
		}}
}

func benchCommand() command {
	return command{name: "bench", summary: "measure the pipeline against the in-process floor",
		about: "Submits generated PNGs through the master API, waits for all, verifies every result pixel by pixel,\n" +
			"and compares throughput with the in-process floor (decode+swap+encode on all cores) in the same run.",
		define: func(f *flags) runner {
			var cfg bench.Config
			f.StringVar(&cfg.Master, "master", "", "target a running master (host:port or URL); default: start the pipeline in-process")
			f.IntVar(&cfg.Size, "size", 64, "image width and height in pixels")
			f.IntVar(&cfg.N, "n", 500, "number of images")
			f.IntVar(&cfg.Clients, "clients", 16, "concurrent clients")
			f.worker(&cfg.Worker) // the in-process pipeline's worker
			f.tasks(&cfg.Tasks)
			f.blobs(&cfg.Blobs)
			f.kvStore(&cfg.KVStore)
			f.token(&cfg.Token)
			f.compareImaginary(&cfg.CompareImaginary)
			timeout := f.Duration("timeout", 30*time.Minute, "give up after this long")
			cpuProfile := f.String("cpuprofile", "", "write a CPU profile of the whole run to this file (the in-process pipeline's services included; go tool pprof reads it)")
			return func(ctx context.Context, _ []string) error {
				if err := checkWorker(&cfg.Worker); err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(ctx, *timeout)
				defer cancel()
				if *cpuProfile != "" {
					stop, err := startCPUProfile(*cpuProfile)
					if err != nil {
						return err
					}
					defer stop()
				}
				cfg.Out, cfg.Logger = f.env.stdout, f.logger("bench")
				cfg.Blobs.Getenv = f.env.getenv
				_, err := bench.Run(ctx, cfg)
				return err
			}
		}}
}

// withStore opens the store the flag names, runs run on it, and closes it afterwards; a store that
// cannot be opened is an error naming the flag.
func withStore[S interface{ Close() error }](ctx context.Context, flag string, open func(context.Context) (S, error), run func(S) error) error {
	store, err := open(ctx)
	if err != nil {
		return fmt.Errorf("--%s: %w", flag, err)
	}
	defer store.Close()
	return run(store)
}

// firstError is the first non-nil of errs.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// startCPUProfile profiles the process into path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// processMemory resolves --max-memory, the process's memory budget: the flag's value, or half of
// what this process may use (its cgroup's limit, or the machine's memory); 0 (no budget) when that
// cannot be told. A budget no larger than base, what the process holds beside its image work, is a
// usage error. It sets the Go runtime's soft memory limit to the budget, so that the collector works
// harder as the process nears it rather than let garbage take it over.
func processMemory(flag, base int64, logger *slog.Logger) (int64, error) {
	budget := flag
	if budget <= 0 {
		avail, err := memlimit.Available("/")
		if err != nil {
			logger.Warn("no memory budget: cannot tell how much memory this process may use; set --max-memory", "err", err)
			return 0, nil
		}
		budget = avail / 2
	}
	if budget <= base {
		return 0, fmt.Errorf("%w: --max-memory %d leaves nothing for images: the process takes about %d beside them", errUsage, budget, base)
	}
	debug.SetMemoryLimit(budget)
	return budget, nil
}
