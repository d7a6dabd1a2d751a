package cli

import (
	"fmt"
	"image/png"
	"strconv"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/consistency"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/engines"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/worker"
)

// Every flag is defined here, once, whichever commands use it: one name has one meaning and one type
// everywhere (TestFlagNamesHaveOneMeaning checks it). A number flag's 0 means what the Go config's 0
// means (the default, or "none" where that is the default); a limit's "no limit" is 0 on the command
// line and NoLimit in the config, translated by limitValue alone.

// addr defines a service's listen address: --addr on its own command, --NAME-addr in serve.
func (f *flags) addr(p *string, name, def string) {
	if name == "" {
		f.StringVar(p, "addr", def, "listen address (host:port)")
		return
	}
	f.StringVar(p, name+"-addr", def, "the "+name+" service's listen address (host:port)")
}

// kvAddrs defines --kv, where a service finds the kv service.
func (f *flags) kvAddrs() *string {
	return f.String("kv", kvservice.DefaultAddr, "the kv service's address (host:port), or several separated by commas (kv instances sharing one etcd)")
}

func (f *flags) dataDir(p *string) {
	f.StringVar(p, "data", "./data", "data directory: the embedded stores, and the frontend's public id secret ("+frontend.SecretFile+"; back it up)")
}

func (f *flags) backupTo(p *string) {
	f.StringVar(p, "to", "", "the backup's directory, which must not exist yet: a data directory the services can run on")
}

func (f *flags) advertise(o *service.Options) {
	f.StringVar(&o.Advertise, "advertise", "", "address registered in the kv store for others to dial (default: the listen address, loopback for :port)")
}

// sharedOptions defines --token, --insecure and --pprof into o.
func (f *flags) sharedOptions(o *service.Options) {
	f.token(&o.Token)
	f.insecure(&o.Insecure)
	f.pprof(&o.Pprof)
}

func (f *flags) token(p *string) {
	f.Var(&tokenValue{p}, "token", "shared secret: kv, database, storage and master require it as \"Authorization: Bearer <token>\" and imgmill's own clients send it; "+
		"set the same one on every service (prefer the variable: a command line is visible to other users)")
}

func (f *flags) insecure(p *bool) {
	f.BoolVar(p, "insecure", false, "let kv, database, storage and master listen on a non-loopback address without --token (only on a network you trust; logs a warning)")
}

func (f *flags) pprof(p *bool) {
	f.BoolVar(p, "pprof", false, "serve the Go profiler under /debug/pprof/, behind --token like /metrics (on the public frontend, only with --token)")
}

// Where the data lives: empty is the embedded default under --data.
func (f *flags) tasks(t *engines.Tasks) {
	f.StringVar(&t.URL, "tasks", "", "task store: empty for embedded SQLite under --data, or postgres://USER@HOST:PORT/DB?sslmode=disable (shared by several database services)")
	f.IntVar(&t.PoolSize, "pool", 0, "with a postgres:// --tasks: the largest number of connections to PostgreSQL (0: the larger of 4 and the CPUs)")
}

func (f *flags) blobs(b *engines.Blobs) {
	f.StringVar(&b.URL, "blobs", "", "blob store: empty for files under --data, or 's3://BUCKET?endpoint=http://HOST:PORT&access_key=K&secret_key=S' "+
		"(keys also from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the bucket is created when missing; shared by several storage services)")
	b.SmallMax = engines.DefaultSmallMax
	f.Var(bytesValue{&b.SmallMax}, "small-blobs", "with the file store: images of at most this many bytes (or with kB, MB, KiB, MiB) are appended to shared segment files "+
		"under --data, made durable by one flush for many and compacted in the background, instead of a file each; 0: a file each (segments already written are still read)")
}

// minFree defines --min-free, storage's floor of free space (serve's too: its database shares the disk).
func (f *flags) minFree(p *storage.MinFree) {
	*p = storage.DefaultMinFree
	f.Var(minFreeValue{p}, "min-free", "free space kept on the file store's file system: uploads that would leave less are refused (507, Retry-After), "+
		"results of tasks under half of it, so that writes in flight and a database on the same disk never find it full; a size (2GiB), "+
		"a percentage of the file system (10%), or both (the smaller counts); 0: no floor; not checked with an s3:// --blobs")
}

// minFreeValue is --min-free.
type minFreeValue struct{ p *storage.MinFree }

func (v minFreeValue) String() string {
	if v.p == nil {
		return "0"
	}
	return v.p.String()
}

func (v minFreeValue) Set(s string) error {
	m, err := storage.ParseMinFree(s, func(size string) (int64, error) {
		var n int64
		err := bytesValue{&n}.Set(size)
		return n, err
	})
	if err != nil {
		return err
	}
	*v.p = m
	return nil
}

func (f *flags) kvStore(k *engines.KV) {
	f.StringVar(&k.URL, "kv-store", "", "kv store: empty for the embedded file under --data, or etcd://HOST:PORT[,HOST:PORT...] (shared by several kv services)")
}

// policy defines the database's task lifecycle flags.
func (f *flags) policy(c *database.Config) {
	f.DurationVar(&c.Policy.Lease, "lease", database.DefaultLease, "how long a claimed task stays claimed without a heartbeat before it is handed out again")
	f.IntVar(&c.Policy.MaxAttempts, "max-attempts", taskstore.DefaultMaxAttempts, "claims a task gets before it fails (transient failures, such as storage being unavailable, do not count)")
	f.DurationVar(&c.Policy.Retry.Min, "retry-min", taskstore.DefaultRetryMin, "after a task's first transient failure, it waits about this long before it is claimed again; the wait doubles with each one")
	f.DurationVar(&c.Policy.Retry.Max, "retry-max", taskstore.DefaultRetryMax, "the longest wait before a task is claimed again after a transient failure")
	f.DurationVar(&c.PendingTimeout, "pending-timeout", database.DefaultPendingTimeout, "how long an upload may take before its unfinished task is given up")
	f.DurationVar(&c.Policy.Retention, "retention", database.DefaultRetention, "how long a finished, failed or cancelled task is kept before the master removes its images and record; 0 keeps tasks forever")
}

// checkPolicy refuses lifecycle settings the database cannot keep.
func checkPolicy(c *database.Config) error {
	p := c.Policy
	if p.Lease <= 0 || p.MaxAttempts < 1 || p.Retry.Min <= 0 || p.Retry.Max < p.Retry.Min || c.PendingTimeout <= 0 || p.Retention < 0 {
		return fmt.Errorf("%w: --lease, --retry-min and --pending-timeout must be > 0, --retention >= 0, --max-attempts >= 1 and --retry-max >= --retry-min", errUsage)
	}
	return nil
}

// maxUpload defines --max-upload (the master's, and the frontend's: set both the same).
func (f *flags) maxUpload(p *int64, def int64) {
	*p = def
	f.Var(limitValue[int64]{p}, "max-upload", "largest accepted upload in bytes (0: no limit)")
}

// maxPixels defines --max-pixels, the largest image (width × height) the master accepts and a worker
// decodes.
func (f *flags) maxPixels(p *int64) {
	*p = imageop.DefaultMaxPixels
	f.Var(limitValue[int64]{p}, "max-pixels", "largest image in pixels, width × height, read from its header before decoding (0: no limit)")
}

// masterLimits defines the master's limits but --max-pixels and --max-upload, which serve shares with
// the worker and the frontend.
func (f *flags) masterLimits(l *master.Limits) {
	l.MaxDimension, l.MaxQueued = master.DefaultMaxDimension, master.DefaultMaxQueued
	l.MaxTaskCost, l.MaxTaskMemory = master.DefaultMaxTaskCost, master.DefaultMaxTaskMemory
	f.Var(limitValue[int]{&l.MaxDimension}, "max-dimension", "largest accepted image width or height in pixels, read from its header (0: no limit)")
	f.Var(limitValue[int64]{&l.MaxQueued}, "max-queued", "refuse uploads (503, Retry-After) while this many tasks are queued (0: no cap)")
	f.Var(durationLimitValue{&l.MaxTaskCost}, "max-task-cost", "refuse uploads (413) whose operations, decode and encode included, are estimated from the image's header "+
		"to take more CPU time than this on one core (0: no limit)")
	f.Var(limitValue[int64]{&l.MaxTaskMemory}, "max-task-memory", "refuse uploads (413) whose task is estimated from the image's header and operations "+
		"to hold more bytes of memory than this at once (0: no limit)")
	f.Var(limitValue[int64]{&l.QuotaTasks}, "quota-tasks", "the most tasks one owner (an API key, or a client address) may keep at once, whatever their state, until deleted or expired (--retention): "+
		"more uploads are refused (429, Retry-After) (0: no quota)")
	f.Var(bytesValue{&l.QuotaBytes}, "quota-bytes", "the most bytes of uploaded images one owner may keep at once (or with kB, MB, GB, KiB, MiB, GiB): "+
		"an upload that would pass it is refused before it is stored (507, Retry-After); results are not counted (0: no quota)")
}

// sweeps defines the master's sweeps: of the tasks past their retention, and of the images no task wants.
func (f *flags) sweeps(c *master.Config) {
	f.DurationVar(&c.SweepEvery, "sweep-every", master.DefaultSweepEvery, "how often the master removes the tasks past the database's --retention (their images, then their records)")
	f.DurationVar(&c.OrphanSweepEvery, "orphan-sweep-every", master.DefaultOrphanSweepEvery, "how often the master walks storage's images and removes those "+
		"whose task is unknown or deleted, and the results of failed or cancelled tasks, once older than --orphan-grace (0: never)")
	f.orphanGrace(&c.OrphanGrace)
}

// orphanGrace defines how long the master's orphan sweep and fsck leave a new image alone.
func (f *flags) orphanGrace(p *time.Duration) {
	f.DurationVar(p, "orphan-grace", consistency.DefaultGrace, "how long an image is left alone after it was written, whatever its task: "+
		"an upload whose task is not created yet, or a result whose task is not reported finished yet, is never an orphan")
}

func checkOrphanGrace(d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%w: --orphan-grace must be > 0", errUsage)
	}
	return nil
}

func checkSweeps(c *master.Config) error {
	if c.SweepEvery <= 0 {
		return fmt.Errorf("%w: --sweep-every must be > 0", errUsage)
	}
	if c.OrphanSweepEvery < 0 {
		return fmt.Errorf("%w: --orphan-sweep-every must be >= 0", errUsage)
	}
	return checkOrphanGrace(c.OrphanGrace)
}

// compareImaginary defines bench's --compare-imaginary.
func (f *flags) compareImaginary(p *string) {
	f.StringVar(p, "compare-imaginary", "", "after the pipeline and the floor, drive a synchronous libvips server (imaginary, at this URL or host:port) "+
		"with the same images and clients through its POST /convert?type=png, check every answer is a PNG of the right size, "+
		"and print its throughput and the ratio pipeline/imaginary")
}

// fsck defines fsck's --repair and --json.
func (f *flags) fsck(repair, asJSON *bool) {
	f.BoolVar(repair, "repair", false, "fix what can be fixed: remove the images no task wants, queue again the finished tasks whose result is missing, "+
		"and fail the tasks whose upload is lost")
	f.BoolVar(asJSON, "json", false, "print the findings and the summary as JSON lines instead of text")
}

// worker defines the worker's flags but --max-pixels.
func (f *flags) worker(c *worker.Config) {
	f.IntVar(&c.Concurrency, "concurrency", 0, "images a worker processes at once (0: one per CPU)")
	f.IntVar(&c.Prefetch, "prefetch", worker.DefaultPrefetch, "tasks a worker holds beyond --concurrency: claimed ahead, or being stored and reported, while others use the CPUs, "+
		"so that the CPUs need not wait for the calls, flushes and commits around small images; 0: none (with many workers and a short queue, spreads the work wider)")
	f.DurationVar(&c.Wait, "claim-wait", worker.DefaultWait, "how long one claim waits at the master for work (long poll)")
	f.alias("wait", "claim-wait")
	f.DurationVar(&c.Heartbeat, "heartbeat", worker.DefaultHeartbeat, "how often a worker renews its task's lease (at most a third of the lease)")
	f.DurationVar(&c.Drain, "drain", worker.DefaultDrain, "on shutdown, how long the current task may take before it is handed back")
	f.DurationVar(&c.OutageWait, "outage-wait", worker.DefaultOutageWait, "how long fetching or storing a task's image is retried while storage is unavailable or full, before the task is handed back to wait and be claimed again")
	f.DurationVar(&c.TaskTimeout, "task-timeout", worker.DefaultTaskTimeout, fmt.Sprintf(
		"the longest one task's image work may take: each task gets %d times its estimated CPU time, at least %v (or this, when lower) and at most this; a task past it fails for good",
		worker.TaskTimeoutFactor, worker.MinTaskTimeout))
	f.Var(bytesValue{&c.MaxMemory}, "max-memory", "memory budget of the process, in bytes (or with kB, MB, GB, KiB, MiB, GiB): a worker starts a task only when the task's estimated peak fits beside those running, and serve's worker gets what its other services leave; "+
		"0: half of what this process may use (its cgroup's memory limit, or the machine's memory)")
	f.pngCompression(&c.PNGCompression)
}

func (f *flags) pngCompression(p *png.CompressionLevel) {
	f.Var(pngLevelValue{p}, "png-compression", "PNG encoder effort for PNG results: default, speed (faster, larger files), best or none")
}

// checkWorker refuses worker settings that cannot work.
func checkWorker(c *worker.Config) error {
	if c.Concurrency < 0 || c.Prefetch < 0 || c.Wait <= 0 || c.Heartbeat <= 0 || c.Drain <= 0 || c.OutageWait <= 0 || c.TaskTimeout <= 0 {
		return fmt.Errorf("%w: --concurrency and --prefetch must be >= 0, --claim-wait, --heartbeat, --drain, --outage-wait and --task-timeout > 0", errUsage)
	}
	return nil
}

// frontend defines the public frontend's flags but --max-upload.
func (f *flags) frontend(c *frontend.Config) {
	f.Var(&secretValue{&c.Secret}, "secret", "public id secret: base64 of at least 32 random bytes (openssl rand -base64 32), the same on every frontend; given, it is used alone (the kv store's is neither read nor written); "+
		"default: the one kept in --data ("+frontend.SecretFile+") and shared in the kv store under "+frontend.SecretKey+", made by the first frontend when no task exists yet (prefer the variable: a command line is visible to other users)")
	f.Float64Var(&c.Limits.UploadRate, "upload-rate", frontend.DefaultUploadRate, "uploads per second allowed per client address, sustained (0: no limit)")
	f.IntVar(&c.Limits.UploadBurst, "upload-burst", frontend.DefaultUploadBurst, "uploads a client address may make at once")
	f.BoolVar(&c.Limits.TrustProxy, "trust-proxy", false, "take the client address from the last X-Forwarded-For entry (only behind a reverse proxy that sets it)")
	f.Var(apiKeysValue{&c.Limits.APIKeys}, "api-keys", "file of API keys, lines \"NAME KEY\" (keys of at least 32 characters, # comments): an upload with "+
		"\"Authorization: Bearer KEY\" or \"X-API-Key: KEY\" is owned and rate-limited as key:NAME, one with an unknown key refused (401); default: clients are told apart by address only")
	f.Var(originsValue{&c.Limits.AllowedOrigins}, "allowed-origins", "other sites whose pages may upload here from a browser, comma-separated scheme://host[:port]; "+
		"uploads from any other site's page are refused (403), those from clients that are not browsers are not")
	c.Limits.MaxStreams, c.Limits.MaxStreamsPerClient = frontend.DefaultMaxStreams, frontend.DefaultMaxStreamsPerClient
	f.Var(limitValue[int]{&c.Limits.MaxStreams}, "max-streams", "open event streams (/api/tasks/{id}/events) a frontend serves at once; more are refused (503, Retry-After) (0: no cap)")
	f.Var(limitValue[int]{&c.Limits.MaxStreamsPerClient}, "max-streams-per-client", "open event streams one client address may hold; more are refused (429, Retry-After) (0: no cap)")
}

// apiKeysValue is --api-keys: the file is read when the flag is parsed, so a bad one stops the start.
type apiKeysValue struct{ p **frontend.APIKeys }

func (v apiKeysValue) String() string { return "" }

func (v apiKeysValue) Set(path string) error {
	k, err := frontend.LoadAPIKeys(path)
	if err != nil {
		return err
	}
	*v.p = k
	return nil
}

// originsValue is --allowed-origins: a comma-separated list of origins, each checked.
type originsValue struct{ p *[]string }

func (v originsValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v originsValue) Set(s string) error {
	var origins []string
	for o := range strings.SplitSeq(s, ",") {
		if o = strings.TrimSpace(o); o != "" {
			origins = append(origins, o)
		}
	}
	if err := frontend.CheckOrigins(origins); err != nil {
		return err
	}
	*v.p = origins
	return nil
}

// checkFrontend checks the frontend's limits after parsing.
func checkFrontend(l *frontend.Limits) error {
	if l.UploadRate < 0 || l.UploadBurst < 1 {
		return fmt.Errorf("%w: --upload-rate must be >= 0 and --upload-burst >= 1", errUsage)
	}
	return nil
}

// tokenValue is the --token flag: checked when set, and never printed.
type tokenValue struct{ p *string }

func (t *tokenValue) String() string { return "" }

func (t *tokenValue) Set(s string) error {
	if err := httpapi.CheckToken(s); err != nil {
		return err
	}
	*t.p = s
	return nil
}

// secretValue is the --secret flag: decoded when set, and never printed.
type secretValue struct{ p *[]byte }

func (s *secretValue) String() string { return "" }

func (s *secretValue) Set(text string) error {
	b, err := publicid.ParseSecret(text)
	if err != nil {
		return err
	}
	*s.p = b
	return nil
}

// limitValue is a limit flag: a number >= 0, where 0 is no limit (master.NoLimit in the config).
type limitValue[T int | int64] struct{ p *T }

func (l limitValue[T]) String() string {
	if l.p == nil || *l.p == master.NoLimit {
		return "0"
	}
	return strconv.FormatInt(int64(*l.p), 10)
}

func (l limitValue[T]) Set(s string) error {
	n, err := strconv.ParseInt(s, 0, 64)
	switch {
	case err != nil:
		return fmt.Errorf("not a whole number: %q", s)
	case n < 0:
		return fmt.Errorf("must be >= 0 (0: no limit), got %d", n)
	case n == 0:
		*l.p = master.NoLimit
	default:
		*l.p = T(n)
		if int64(*l.p) != n {
			return fmt.Errorf("%d is too large", n)
		}
	}
	return nil
}

// durationLimitValue is a limit flag that is a duration >= 0, where 0 is no limit (master.NoLimit in
// the config).
type durationLimitValue struct{ p *time.Duration }

func (l durationLimitValue) String() string {
	if l.p == nil || *l.p == master.NoLimit {
		return "0s"
	}
	return l.p.String()
}

func (l durationLimitValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return fmt.Errorf("not a duration (such as 30s or 1m): %q", s)
	case d < 0:
		return fmt.Errorf("must be >= 0 (0: no limit), got %v", d)
	case d == 0:
		*l.p = master.NoLimit
	default:
		*l.p = d
	}
	return nil
}

// pngLevelValue is --png-compression.
type pngLevelValue struct{ p *png.CompressionLevel }

func (v pngLevelValue) String() string {
	if v.p == nil {
		return "default"
	}
	return imageop.PNGCompressionName(*v.p)
}

func (v pngLevelValue) Set(s string) error {
	level, err := imageop.ParsePNGCompression(s)
	if err != nil {
		return err
	}
	*v.p = level
	return nil
}

// bytesValue is a size in bytes: a whole number, or one with a decimal (kB, MB, GB) or binary (KiB,
// MiB, GiB) unit, "1.5GB" or "512 MiB".
type bytesValue struct{ p *int64 }

func (v bytesValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.FormatInt(*v.p, 10)
}

func (v bytesValue) Set(s string) error {
	num := strings.TrimSpace(s)
	unit := 1.0
	for _, u := range []struct {
		suffix string
		size   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, unit = strings.TrimSpace(rest), u.size
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*unit >= 1<<62 {
		return fmt.Errorf("not a size in bytes (1500000000, 1.5GB, 512MiB): %q", s)
	}
	*v.p = int64(f * unit)
	return nil
}
