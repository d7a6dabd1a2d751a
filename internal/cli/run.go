// Package cli is imgmill's command line: a subcommand per service, serve (all of them in one process),
// bench, and the client commands submit, status and get.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/bench"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/worker"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, env *env, args []string) error
}

// env is what a subcommand gets from the outside world.
type env struct {
	getenv         func(string) string
	stdout, stderr io.Writer
}

func commands() []command {
	return []command{
		{"serve", "run all six services in one process (embedded storage under --data)", runServe},
		{"kv", "run the key-value store (config and discovery)", runKV},
		{"database", "run the task database", runDatabase},
		{"storage", "run the image storage", runStorage},
		{"master", "run the master (API for clients and workers)", runMaster},
		{"worker", "run worker loops that process images", runWorker},
		{"frontend", "run the public web frontend", runFrontend},
		{"bench", "measure the pipeline against the in-process floor", runBench},
		{"submit", "upload images to a running imgmill (--wait: and download the results)", runSubmit},
		{"status", "print the status of a task", runStatus},
		{"get", "download the result of a task", runGet},
	}
}

// errUsage marks a command-line mistake (exit status 2).
var errUsage = errors.New("usage")

// ExitCode is the process exit status for an error Run returned: 2 for a command-line mistake, 1 otherwise.
func ExitCode(err error) int {
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// Run runs the imgmill command line args (args[0] is the program name) until ctx ends or the command
// is done; main only calls it.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	e := &env{getenv: getenv, stdout: stdout, stderr: stderr}
	if len(args) < 2 || args[1] == "-h" || args[1] == "--help" || args[1] == "help" {
		usage(stdout)
		if len(args) < 2 {
			return fmt.Errorf("%w: missing command", errUsage)
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[1] {
			err := c.run(ctx, e, args[2:])
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return err
		}
	}
	usage(stderr)
	return fmt.Errorf("%w: unknown command %q", errUsage, args[1])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "imgmill: asynchronous image processing, as six HTTP services.")
	fmt.Fprintln(w, "\nUsage: imgmill COMMAND [flags]   (imgmill COMMAND --help for its flags)")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
}

// flags is a subcommand's flag set; every flag can also be set by the environment variable IMGMILL_<NAME>
// (upper case, dashes as underscores). A flag on the command line wins.
type flags struct {
	*flag.FlagSet
	env      *env
	logLevel slog.Level
}

func newFlags(e *env, name, summary string) *flags {
	fs := flag.NewFlagSet("imgmill "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	f := &flags{FlagSet: fs, env: e}
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: imgmill %s [flags]\n\n%s\n\nFlags (each also settable by the environment variable shown):\n", name, summary)
		fs.VisitAll(func(fl *flag.Flag) {
			fmt.Fprintf(e.stderr, "  --%s (%s)\n    \t%s", fl.Name, envName(fl.Name), fl.Usage)
			if fl.DefValue != "" {
				fmt.Fprintf(e.stderr, " (default %q)", fl.DefValue)
			}
			fmt.Fprintln(e.stderr)
		})
	}
	fs.TextVar(&f.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	return f
}

func envName(flagName string) string {
	return "IMGMILL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if f.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, f.Arg(0))
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		if set[fl.Name] {
			return
		}
		if v := f.env.getenv(envName(fl.Name)); v != "" {
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%w: %s=%q: %v", errUsage, envName(fl.Name), v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func (f *flags) logger(service string) *slog.Logger {
	l := slog.New(slog.NewTextHandler(f.env.stderr, &slog.HandlerOptions{Level: f.logLevel}))
	if service != "" {
		l = l.With("service", service)
	}
	return l
}

// Shared flag definitions.
func (f *flags) addr(def string) *string {
	return f.String("addr", def, "listen address (host:port)")
}
func (f *flags) kvAddr() *string {
	return f.String("kv", allinone.DefaultKVAddr, "kv service address (host:port), or several separated by commas (kv instances sharing one etcd)")
}

// Backend flags: where each kind of data lives; empty means the embedded default under --data.
func (f *flags) tasksURL() *string {
	return f.String("tasks", "", "task store: empty for embedded SQLite under --data, or postgres://USER@HOST:PORT/DB?sslmode=disable (shared by several database services)")
}
func (f *flags) blobsURL() *string {
	return f.String("blobs", "", "blob store: empty for files under --data, or 's3://BUCKET?endpoint=http://HOST:PORT&access_key=K&secret_key=S' "+
		"(keys also from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the bucket is created when missing; shared by several storage services)")
}
func (f *flags) kvStoreURL(name string) *string {
	return f.String(name, "", "kv store: empty for the embedded file under --data, or etcd://HOST:PORT[,HOST:PORT...] (shared by several kv services)")
}
func (f *flags) poolSize() *int {
	return f.Int("pool", 0, "with a postgres:// --tasks: the largest number of connections to PostgreSQL (0: the larger of 4 and the CPUs)")
}
func (f *flags) dataDir() *string {
	return f.String("data", "./data", "data directory")
}
func (f *flags) advertise() *string {
	return f.String("advertise", "", "address registered in the kv store for others to dial (default: the listen address, loopback for :port)")
}

// token defines --token, the shared secret of the internal services.
func (f *flags) token() *string {
	t := &tokenValue{}
	f.Var(t, "token", "shared secret: kv, database, storage and master require it as \"Authorization: Bearer <token>\" and imgmill's own clients send it; "+
		"set the same one on every service (prefer the variable: a command line is visible to other users)")
	return &t.token
}

// insecure defines --insecure, which lets an internal service listen on a non-loopback address without
// a token.
func (f *flags) insecure() *bool {
	return f.Bool("insecure", false, "listen on a non-loopback address without --token (only on a network you trust; logs a warning)")
}

// profiling defines --pprof, which serves the Go profiler (net/http/pprof) under /debug/pprof/.
func (f *flags) profiling() *bool {
	return f.Bool("pprof", false, "serve the Go profiler under /debug/pprof/, behind --token like everything else (on the public frontend, only with --token)")
}

// tokenValue is the --token flag: checked when set, and never printed.
type tokenValue struct{ token string }

func (t *tokenValue) String() string { return "" }

func (t *tokenValue) Set(s string) error {
	if err := httpapi.CheckToken(s); err != nil {
		return err
	}
	t.token = s
	return nil
}

// frontendFlags defines the public frontend's flags: the public id secret and the upload limits
// (--max-upload is the frontend command's own).
func (f *flags) frontendFlags() (*secretValue, *frontend.Options) {
	secret, opts := &secretValue{}, &frontend.Options{}
	f.Var(secret, "secret", "public id secret: base64 of at least 32 random bytes (openssl rand -base64 32), the same on every frontend; "+
		"default: the one kept in --data ("+frontend.SecretFile+") and shared in the kv store under "+frontend.SecretKey+", made by the first frontend when no task exists yet (prefer the variable: a command line is visible to other users)")
	f.Float64Var(&opts.UploadRate, "upload-rate", frontend.DefaultUploadRate, "uploads per second allowed per client address, sustained (0: no limit)")
	f.IntVar(&opts.UploadBurst, "upload-burst", frontend.DefaultUploadBurst, "uploads a client address may make at once")
	f.BoolVar(&opts.TrustProxy, "trust-proxy", false, "take the client address from the last X-Forwarded-For entry (only behind a reverse proxy that sets it)")
	return secret, opts
}

// checkFrontend checks the frontend's limits after parsing.
func checkFrontend(opts *frontend.Options) error {
	if opts.UploadRate < 0 || opts.UploadBurst < 1 || opts.MaxUpload < 0 {
		return fmt.Errorf("%w: --upload-rate must be >= 0, --upload-burst >= 1 and --max-upload >= 0", errUsage)
	}
	return nil
}

// secretValue is the --secret flag: decoded when set, and never printed.
type secretValue struct{ secret []byte }

func (s *secretValue) String() string { return "" }

func (s *secretValue) Set(text string) error {
	b, err := publicid.ParseSecret(text)
	if err != nil {
		return err
	}
	s.secret = b
	return nil
}

// limits defines the master's limit flags (0: no limit); check them with checkMasterLimits after parsing.
func (f *flags) limits() *master.Limits {
	l := &master.Limits{}
	f.Int64Var(&l.MaxUpload, "max-upload", master.DefaultMaxUpload, "largest accepted upload in bytes (0: no limit)")
	f.IntVar(&l.MaxDimension, "max-dimension", master.DefaultMaxDimension, "largest accepted image width or height in pixels, read from its header (0: no limit)")
	f.maxPixels(&l.MaxPixels)
	f.Int64Var(&l.MaxQueued, "max-queued", master.DefaultMaxQueued, "refuse uploads (503, Retry-After) while this many tasks are queued (0: no cap)")
	return l
}

// maxPixels defines --max-pixels, the largest image (width × height) the master accepts and a worker
// decodes.
func (f *flags) maxPixels(p *int64) {
	f.Int64Var(p, "max-pixels", imageop.DefaultMaxPixels, "largest image in pixels, width × height, read from its header before decoding (0: no limit)")
}

// checkLimits refuses negative limits and turns 0 ("no limit" on the command line) into master.NoLimit.
func checkLimits(limits ...*int64) error {
	for _, l := range limits {
		switch {
		case *l < 0:
			return fmt.Errorf("%w: the --max-* limits must be >= 0 (0: no limit), got %d", errUsage, *l)
		case *l == 0:
			*l = master.NoLimit
		}
	}
	return nil
}

// checkMasterLimits is checkLimits for all of l.
func checkMasterLimits(l *master.Limits) error {
	dim := int64(l.MaxDimension)
	if err := checkLimits(&l.MaxUpload, &dim, &l.MaxPixels, &l.MaxQueued); err != nil {
		return err
	}
	l.MaxDimension = int(dim)
	return nil
}

// policy defines the task lifecycle flags of the database.
func (f *flags) policy() *database.Policy {
	p := &database.Policy{}
	f.DurationVar(&p.Lease, "lease", database.DefaultLease, "how long a claimed task stays claimed without a heartbeat before it is handed out again")
	f.IntVar(&p.MaxAttempts, "max-attempts", taskstore.DefaultMaxAttempts, "claims a task gets before it fails (transient failures, such as storage being unavailable, do not count)")
	f.DurationVar(&p.Retry.Min, "retry-min", taskstore.DefaultRetryMin, "after a task's first transient failure, it waits about this long before it is claimed again; the wait doubles with each one")
	f.DurationVar(&p.Retry.Max, "retry-max", taskstore.DefaultRetryMax, "the longest wait before a task is claimed again after a transient failure")
	return p
}

// workerConfig defines the worker's flags.
func (f *flags) workerConfig() *worker.Config {
	c := &worker.Config{}
	f.IntVar(&c.Concurrency, "concurrency", runtime.NumCPU(), "images processed at once")
	f.IntVar(&c.Prefetch, "prefetch", 0, "tasks held beyond --concurrency: claimed ahead, or being stored and reported, while others use the CPUs; for a worker whose calls to master and storage are slow against the image work")
	f.DurationVar(&c.Wait, "wait", worker.DefaultWait, "how long one claim waits at the master for work (long poll)")
	f.DurationVar(&c.Heartbeat, "heartbeat", worker.DefaultHeartbeat, "how often a worker renews its task's lease (at most a third of the lease)")
	f.DurationVar(&c.Drain, "drain", worker.DefaultDrain, "on shutdown, how long the current task may take before it is handed back")
	f.DurationVar(&c.OutageWait, "outage-wait", worker.DefaultOutageWait, "how long fetching or storing a task's image is retried while storage is unavailable or full, before the task is handed back to wait and be claimed again")
	f.Func("png-compression", "PNG encoder effort for PNG results: default, speed (faster, larger files), best or none", func(v string) error {
		level, err := imageop.ParsePNGCompression(v)
		c.PNGCompression = level
		return err
	})
	return c
}

func runServe(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "serve", "Runs all six services in one process on the default addresses, with embedded storage under --data.\nThen open http://localhost:8080.")
	data := f.dataDir()
	front := f.String("addr", allinone.DefaultFrontendAddr, "frontend listen address")
	kvA := f.String("kv-addr", allinone.DefaultKVAddr, "kv store listen address")
	dbA := f.String("database-addr", allinone.DefaultDatabaseAddr, "database listen address")
	stA := f.String("storage-addr", allinone.DefaultStorageAddr, "storage listen address")
	maA := f.String("master-addr", allinone.DefaultMasterAddr, "master listen address")
	tasks, pool, blobs, kvStore := f.tasksURL(), f.poolSize(), f.blobsURL(), f.kvStoreURL("kv-store")
	wcfg := f.workerConfig()
	policy := f.policy()
	limits := f.limits() // --max-pixels is the worker's limit too
	token, insecure := f.token(), f.insecure()
	withPprof := f.profiling()
	secret, feOpts := f.frontendFlags()
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkFrontend(feOpts); err != nil {
		return err
	}
	if err := checkMasterLimits(limits); err != nil {
		return err
	}
	wcfg.MaxPixels = limits.MaxPixels
	feOpts.MaxUpload = limits.MaxUpload // the frontend refuses what the master would
	logger := f.logger("")
	logger.Info("imgmill serve starting", "data", *data, "frontend", *front)
	return allinone.Run(ctx, allinone.Config{DataDir: *data, KVAddr: *kvA, DatabaseAddr: *dbA, StorageAddr: *stA,
		MasterAddr: *maA, Frontend: *front, Tasks: *tasks, PoolSize: *pool, Blobs: *blobs, KVStore: *kvStore, Getenv: e.getenv, Worker: *wcfg, Policy: *policy, Logger: logger, Token: *token, Insecure: *insecure,
		FrontendSecret: secret.secret, FrontendOptions: *feOpts, Limits: *limits, Pprof: *withPprof})
}

func runKV(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "kv", "Runs the key-value store (reference API: /set, /get, /remove, /list).")
	addr := f.addr(allinone.DefaultKVAddr)
	data := f.dataDir()
	store := f.kvStoreURL("kv")
	token, insecure, withPprof := f.token(), f.insecure(), f.profiling()
	if err := f.parse(args); err != nil {
		return err
	}
	return kvservice.Run(ctx, kvservice.Config{Addr: *addr, DataDir: *data, Store: *store, Logger: f.logger("kv"), Token: *token, Insecure: *insecure, Pprof: *withPprof})
}

func runDatabase(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "database", "Runs the task database (reference API: /newTask, /getById, /getNewTask, /finishTask, /setById, /list).")
	addr := f.addr(allinone.DefaultDatabaseAddr)
	kvA, data, adv := f.kvAddr(), f.dataDir(), f.advertise()
	tasks, pool := f.tasksURL(), f.poolSize()
	policy := f.policy()
	pendingTimeout := f.Duration("pending-timeout", database.DefaultPendingTimeout, "how long an upload may take before its unfinished task is given up")
	token, insecure, withPprof := f.token(), f.insecure(), f.profiling()
	if err := f.parse(args); err != nil {
		return err
	}
	hc := httpapi.NewClient(httpapi.WithToken(*token))
	return database.Run(ctx, database.Config{Addr: *addr, Advertise: *adv, KV: client.NewKV(hc, *kvA),
		DataDir: *data, Tasks: *tasks, PoolSize: *pool, Policy: *policy, PendingTimeout: *pendingTimeout, Logger: f.logger("database"),
		Token: *token, Insecure: *insecure, Pprof: *withPprof})
}

func runStorage(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "storage", "Runs the image storage (reference API: /sendImage, /getImage).")
	addr := f.addr(allinone.DefaultStorageAddr)
	kvA, data, adv := f.kvAddr(), f.dataDir(), f.advertise()
	blobs := f.blobsURL()
	token, insecure, withPprof := f.token(), f.insecure(), f.profiling()
	if err := f.parse(args); err != nil {
		return err
	}
	hc := httpapi.NewClient(httpapi.WithToken(*token))
	return storage.Run(ctx, storage.Config{Addr: *addr, Advertise: *adv, KV: client.NewKV(hc, *kvA),
		DataDir: *data, Blobs: *blobs, Getenv: e.getenv, Logger: f.logger("storage"), Token: *token, Insecure: *insecure, Pprof: *withPprof})
}

func runMaster(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "master", "Runs the master (reference API: /new, /isReady, /get, /getNewTask, /registerTaskFinished).")
	addr := f.addr(allinone.DefaultMasterAddr)
	kvA, adv := f.kvAddr(), f.advertise()
	token, insecure, withPprof := f.token(), f.insecure(), f.profiling()
	limits := f.limits()
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkMasterLimits(limits); err != nil {
		return err
	}
	hc := httpapi.NewClient(httpapi.WithToken(*token))
	return master.Run(ctx, master.Config{Addr: *addr, Advertise: *adv, KV: client.NewKV(hc, *kvA), HTTP: hc,
		Limits: *limits, Logger: f.logger("master"), Token: *token, Insecure: *insecure, Pprof: *withPprof})
}

func runWorker(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "worker", "Runs worker loops: claim a task at the master, process its image, store the result.")
	kvA := f.kvAddr()
	cfg := f.workerConfig()
	f.maxPixels(&cfg.MaxPixels)
	token := f.token()
	metricsAddr := f.String("metrics-addr", "", "serve /metrics (and /debug/pprof/ with --pprof) on this address (host:port), behind --token; default: no listener")
	withPprof, insecure := f.profiling(), f.insecure()
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkLimits(&cfg.MaxPixels); err != nil {
		return err
	}
	hc := httpapi.NewClient(httpapi.WithToken(*token))
	cfg.Master, cfg.Storage = worker.NewClients(hc, client.NewKV(hc, *kvA))
	cfg.Logger = f.logger("worker")
	if *metricsAddr == "" {
		return worker.Run(ctx, *cfg)
	}
	reg := metrics.New("worker")
	cfg.Metrics = metrics.NewWorker(reg)
	// The worker has no API of its own: this listener answers /healthz, /metrics and /debug/pprof/.
	return service.Run(ctx, service.Spec{Addr: *metricsAddr, Logger: cfg.Logger, Metrics: reg, Pprof: *withPprof,
		Token: *token, Internal: true, Insecure: *insecure,
		Background: []func(context.Context) error{func(ctx context.Context) error { return worker.Run(ctx, *cfg) }}})
}

func runFrontend(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "frontend", "Runs the public web frontend (upload page, /submitTask, /isReady, /getImage).")
	addr := f.addr(allinone.DefaultFrontendAddr)
	kvA, data := f.kvAddr(), f.String("data", "./data", "data directory: where the public id secret is kept ("+frontend.SecretFile+"; back it up)")
	token := f.token() // sent to kv and master, and required for /metrics here; the frontend itself is public
	withPprof := f.profiling()
	secret, opts := f.frontendFlags()
	f.Int64Var(&opts.MaxUpload, "max-upload", frontend.DefaultMaxUpload, "largest accepted image in bytes, best the master's --max-upload (0: no limit at the frontend)")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := checkFrontend(opts); err != nil {
		return err
	}
	if opts.MaxUpload == 0 {
		opts.MaxUpload = master.NoLimit
	}
	hc := httpapi.NewClient(httpapi.WithToken(*token))
	return frontend.Run(ctx, frontend.Config{Addr: *addr, KV: client.NewKV(hc, *kvA), HTTP: hc, Logger: f.logger("frontend"),
		Secret: secret.secret, DataDir: *data, Options: *opts, Token: *token, Pprof: *withPprof})
}

func runBench(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "bench", "Submits generated PNGs through the master API, waits for all, verifies every result pixel by pixel,\nand compares throughput with the in-process floor (decode+swap+encode on all cores) in the same run.")
	masterURL := f.String("master", "", "target a running master (host:port or URL); default: start the pipeline in-process")
	size := f.Int("size", 64, "image width and height in pixels")
	n := f.Int("n", 500, "number of images")
	clients := f.Int("clients", 16, "concurrent clients")
	conc := f.Int("concurrency", runtime.NumCPU(), "images the in-process pipeline's worker processes at once")
	prefetch := f.Int("prefetch", 0, "the in-process worker's --prefetch")
	timeout := f.Duration("timeout", 30*time.Minute, "give up after this long")
	token := f.token()
	tasks, blobs, kvStore := f.tasksURL(), f.blobsURL(), f.kvStoreURL("kv-store")
	pngLevel := f.String("png-compression", "default", "PNG encoder effort of the in-process worker and of the floor: default, speed, best or none")
	cpuProfile := f.String("cpuprofile", "", "write a CPU profile of the whole run to this file (the in-process pipeline's services included; go tool pprof reads it)")
	if err := f.parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	level, err := imageop.ParsePNGCompression(*pngLevel)
	if err != nil {
		return fmt.Errorf("%w: --png-compression: %v", errUsage, err)
	}
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	_, err = bench.Run(ctx, bench.Config{Master: *masterURL, Size: *size, N: *n, Clients: *clients,
		Concurrency: *conc, Prefetch: *prefetch, Out: e.stdout, Logger: f.logger("bench"), Token: *token,
		Tasks: *tasks, Blobs: *blobs, KVStore: *kvStore, Getenv: e.getenv, PNGCompression: level})
	return err
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
