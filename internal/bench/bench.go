// Package bench measures the pipeline end to end against the in-process floor: the same images decoded,
// swapped and encoded on all cores with no services in between.
package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/engines"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/worker"
)

// Config configures Run.
type Config struct {
	Master  string // host:port or URL of a running master; empty starts the pipeline in-process
	Size    int    // image width and height
	N       int    // images
	Clients int    // concurrent clients
	Out     io.Writer
	Logger  *slog.Logger
	Token   string // the shared secret sent to the master, and required by the in-process pipeline
	// Worker configures the in-process pipeline's worker (its clients are filled in); its
	// PNGCompression is the floor's too.
	Worker worker.Config
	// Tasks, Blobs and KVStore put the in-process pipeline on other backends; empty URLs for the
	// embedded ones.
	Tasks   engines.Tasks
	Blobs   engines.Blobs
	KVStore engines.KV
	// CompareImaginary is the base URL of a synchronous libvips server (imaginary) to drive after the
	// floor with the same images and clients (POST /convert?type=png); empty: none.
	CompareImaginary string
}

// backends describes where the in-process pipeline keeps its data.
func (cfg Config) backends() string {
	if cfg.Tasks.URL == "" && cfg.Blobs.URL == "" && cfg.KVStore.URL == "" {
		return "embedded storage"
	}
	name := func(url, embedded string) string {
		if url == "" {
			return embedded
		}
		scheme, _, _ := strings.Cut(url, "://")
		return map[string]string{"postgres": "PostgreSQL", "postgresql": "PostgreSQL", "s3": "S3", "etcd": "etcd"}[scheme]
	}
	return fmt.Sprintf("tasks in %s, images in %s, kv in %s", name(cfg.Tasks.URL, "SQLite"), name(cfg.Blobs.URL, "files"), name(cfg.KVStore.URL, "a file"))
}

// Result is what one run measured.
type Result struct {
	Pipeline      Throughput
	Floor         Throughput
	Ratio         float64 // pipeline / floor throughput
	P50, P95, Max time.Duration
	Verified      int // results checked pixel by pixel
	// Imaginary is the libvips server's throughput on the same images with the same clients, and
	// ImaginaryRatio pipeline / Imaginary; zero without Config.CompareImaginary.
	Imaginary      Throughput
	ImaginaryRatio float64
}

// Throughput is images over time.
type Throughput struct {
	Images  int
	Elapsed time.Duration
}

// PerSecond is images per second.
func (t Throughput) PerSecond() float64 { return float64(t.Images) / t.Elapsed.Seconds() }

// Run runs the benchmark and prints its report to cfg.Out.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.Size <= 0 || cfg.N <= 0 || cfg.Clients <= 0 {
		return Result{}, errors.New("size, n and clients must be positive")
	}
	if cfg.CompareImaginary != "" {
		// A mistyped URL is found before the pipeline's run, not after it.
		if _, err := imaginaryEndpoint(cfg.CompareImaginary); err != nil {
			return Result{}, err
		}
	}
	originals, encoded, err := generate(cfg.Size, cfg.N)
	if err != nil {
		return Result{}, err
	}
	masterAddr := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(cfg.Master, "http://"), "https://"), "/")
	where := "running master at " + masterAddr
	if masterAddr == "" {
		stop, addr, err := startPipeline(ctx, cfg)
		if err != nil {
			return Result{}, err
		}
		defer stop()
		masterAddr = addr
		where = fmt.Sprintf("in-process pipeline on %s, worker concurrency %d", cfg.backends(), cfg.Worker.Slots())
	}
	fmt.Fprintf(cfg.Out, "imgmill bench: %d PNGs of %dx%d px (%s avg), %d clients, %s, %d CPUs\n",
		cfg.N, cfg.Size, cfg.Size, byteSize(avgLen(encoded)), cfg.Clients, where, runtime.NumCPU())

	hc := httpapi.NewClient(httpapi.WithToken(cfg.Token))
	defer hc.CloseIdleConnections()
	m := client.NewMaster(hc, client.Static(masterAddr))

	ids, latencies, pipe, err := runPipeline(ctx, m, encoded, cfg.Clients)
	if err != nil {
		return Result{}, err
	}
	verified, err := verify(ctx, m, ids, originals, cfg.Clients)
	if err != nil {
		return Result{}, err
	}
	floor, err := runFloor(ctx, encoded, cfg.Worker.PNGCompression)
	if err != nil {
		return Result{}, err
	}
	slices.Sort(latencies)
	res := Result{Pipeline: pipe, Floor: floor, Ratio: pipe.PerSecond() / floor.PerSecond(),
		P50: percentile(latencies, 0.50), P95: percentile(latencies, 0.95), Max: latencies[len(latencies)-1], Verified: verified}
	fmt.Fprintf(cfg.Out, "pipeline: %d images in %s = %.1f img/s; latency p50 %s, p95 %s, max %s\n",
		pipe.Images, pipe.Elapsed.Round(time.Millisecond), pipe.PerSecond(), round(res.P50), round(res.P95), round(res.Max))
	fmt.Fprintf(cfg.Out, "floor:    %d images in %s = %.1f img/s (decode+swap+encode in-process on %d cores)\n",
		floor.Images, floor.Elapsed.Round(time.Millisecond), floor.PerSecond(), runtime.NumCPU())
	fmt.Fprintf(cfg.Out, "verified: %d/%d results pixel-correct\n", verified, cfg.N)
	fmt.Fprintf(cfg.Out, "ratio pipeline/floor: %.2f\n", res.Ratio)
	if cfg.CompareImaginary == "" {
		return res, nil
	}
	// After the pipeline and the floor, so that neither shares the CPUs with it.
	res.Imaginary, err = runImaginary(ctx, cfg.CompareImaginary, encoded, cfg.Size, cfg.Clients)
	if err != nil {
		return res, fmt.Errorf("imaginary at %s: %w", cfg.CompareImaginary, err)
	}
	res.ImaginaryRatio = pipe.PerSecond() / res.Imaginary.PerSecond()
	fmt.Fprintf(cfg.Out, "imaginary: %d images in %s = %.1f img/s (synchronous POST /convert?type=png at %s, %d clients, every answer a %dx%d PNG)\n",
		res.Imaginary.Images, res.Imaginary.Elapsed.Round(time.Millisecond), res.Imaginary.PerSecond(), cfg.CompareImaginary, cfg.Clients, cfg.Size, cfg.Size)
	fmt.Fprintf(cfg.Out, "ratio pipeline/imaginary: %.2f\n", res.ImaginaryRatio)
	return res, nil
}

func generate(size, n int) ([]*image.NRGBA, [][]byte, error) {
	originals := make([]*image.NRGBA, n)
	encoded := make([][]byte, n)
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for i := range n {
		g.Go(func() error {
			originals[i] = testimage.Pattern(size, int64(i))
			b, err := testimage.EncodePNG(originals[i])
			encoded[i] = b
			return err
		})
	}
	return originals, encoded, g.Wait()
}

// startPipeline runs all six services in-process on free loopback ports with a temporary data directory.
func startPipeline(ctx context.Context, cfg Config) (stop func(), masterAddr string, err error) {
	dir, err := os.MkdirTemp("", "imgmill-bench-")
	if err != nil {
		return nil, "", err
	}
	addrs, err := freeAddrs(5)
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	quiet := slog.New(levelFilter{logger.Handler(), slog.LevelWarn})
	app := allinone.Config{DataDir: dir, Shared: service.Options{Token: cfg.Token, Logger: quiet},
		Tasks: cfg.Tasks, Blobs: cfg.Blobs, KVStore: cfg.KVStore, Worker: cfg.Worker}
	app.KV.Addr, app.Database.Addr, app.Storage.Addr, app.Master.Addr, app.Frontend.Addr = addrs[0], addrs[1], addrs[2], addrs[3], addrs[4]
	go func() { done <- allinone.Run(ctx, app) }()
	stop = func() {
		cancel()
		<-done
		os.RemoveAll(dir)
	}
	readyCtx, readyCancel := context.WithTimeout(ctx, 30*time.Second)
	defer readyCancel()
	if err := allinone.WaitReady(readyCtx, addrs[0], httpapi.WithToken(cfg.Token)); err != nil {
		stop()
		return nil, "", err
	}
	// And the frontend: on new data it makes the public id secret, which it does only while no task
	// exists (see frontend.ResolveSecret); the bench's uploads must not come first.
	if err := waitHealthy(readyCtx, addrs[4]); err != nil {
		stop()
		return nil, "", err
	}
	return stop, addrs[3], nil
}

// waitHealthy waits until the service at addr says it is ready (GET /healthz).
func waitHealthy(ctx context.Context, addr string) error {
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	for {
		err := client.CheckHealth(ctx, hc, addr)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (%w)", addr, err, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// outageRetryFor is how long the bench's calls retry while the pipeline is unavailable.
const outageRetryFor = 2 * time.Minute

// runPipeline submits every image with the given number of clients, each uploading one image and polling
// until it is ready before taking the next, and returns ids, latencies and the overall throughput.
func runPipeline(ctx context.Context, m *client.Master, encoded [][]byte, clients int) ([]int64, []time.Duration, Throughput, error) {
	ids := make([]int64, len(encoded))
	latencies := make([]time.Duration, len(encoded))
	// Like any client of imgmill, the bench rides out an outage: transient refusals are retried
	// (honouring Retry-After), and every upload carries an idempotency key, so a retry whose first
	// answer was lost creates nothing.
	ctx = client.RetryFor(ctx, outageRetryFor)
	run := rand.Text()
	start := time.Now()
	err := eachImage(ctx, clients, len(encoded), func(ctx context.Context, i int) error {
		t0 := time.Now()
		up, err := m.Upload(ctx, bytes.NewReader(encoded[i]), int64(len(encoded[i])),
			client.UploadParams{IdempotencyKey: fmt.Sprintf("bench-%s-%d", run, i)})
		if err != nil {
			return fmt.Errorf("upload image %d: %w", i, err)
		}
		if err := waitReady(ctx, m, up.ID); err != nil {
			return err
		}
		ids[i], latencies[i] = up.ID, time.Since(t0)
		return nil
	})
	return ids, latencies, Throughput{Images: len(encoded), Elapsed: time.Since(start)}, err
}

// eachImage calls do with every index from 0 to n-1 on workers goroutines, each taking the next index
// when it is done with one, as a client of the pipeline takes its next image. The first error stops them
// all and is returned.
func eachImage(ctx context.Context, workers, n int, do func(ctx context.Context, i int) error) error {
	var next atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for range workers {
		g.Go(func() error {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return nil
				}
				if err := do(ctx, i); err != nil {
					return err
				}
			}
			return ctx.Err()
		})
	}
	return g.Wait()
}

// waitReady polls isReady, quickly at first so a fast result is seen fast, then backing off.
func waitReady(ctx context.Context, m *client.Master, id int64) error {
	// Long polls (additive isReady?wait=); against a master that answers at once instead (the
	// reference), the answers come back quickly and the loop backs off as a polling client would.
	const wait = 5 * time.Second
	delay := 500 * time.Microsecond
	for {
		start := time.Now()
		ready, err := m.WaitReady(ctx, id, wait)
		if err != nil {
			return fmt.Errorf("isReady %d: %w", id, err)
		}
		if ready {
			return nil
		}
		if time.Since(start) >= wait/2 {
			continue // the master held the poll: ask again at once
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("task %d not ready: %w", id, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, 20*time.Millisecond)
	}
}

// verify downloads every result and checks it pixel by pixel against its original.
func verify(ctx context.Context, m *client.Master, ids []int64, originals []*image.NRGBA, clients int) (int, error) {
	var verified atomic.Int64
	g, ctx := errgroup.WithContext(client.RetryFor(ctx, outageRetryFor))
	g.SetLimit(clients)
	for i, id := range ids {
		g.Go(func() error {
			img, err := m.Get(ctx, id)
			if err != nil {
				return fmt.Errorf("download task %d: %w", id, err)
			}
			defer img.Close()
			result, err := png.Decode(img)
			if err != nil {
				return fmt.Errorf("decode result of task %d: %w", id, err)
			}
			if err := testimage.CheckSwapped(originals[i], result); err != nil {
				return fmt.Errorf("task %d: %w", id, err)
			}
			verified.Add(1)
			return nil
		})
	}
	err := g.Wait()
	return int(verified.Load()), err
}

// runFloor processes the same images in-process on every core: the cost of the image work itself.
func runFloor(ctx context.Context, encoded [][]byte, level png.CompressionLevel) (Throughput, error) {
	proc := imageop.NewProcessor()
	proc.PNGCompression = level
	var bufs sync.Pool
	start := time.Now()
	err := eachImage(ctx, runtime.NumCPU(), len(encoded), func(_ context.Context, i int) error {
		buf, _ := bufs.Get().(*bytes.Buffer)
		if buf == nil {
			buf = new(bytes.Buffer)
		}
		buf.Reset()
		if err := proc.Process(buf, bytes.NewReader(encoded[i])); err != nil {
			return fmt.Errorf("floor image %d: %w", i, err)
		}
		bufs.Put(buf)
		return nil
	})
	return Throughput{Images: len(encoded), Elapsed: time.Since(start)}, err
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

func round(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(100 * time.Microsecond)
}

func avgLen(b [][]byte) int {
	total := 0
	for _, x := range b {
		total += len(x)
	}
	return total / len(b)
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// levelFilter keeps the benchmark's own services quiet unless something goes wrong.
type levelFilter struct {
	slog.Handler
	min slog.Level
}

func (f levelFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= f.min && f.Handler.Enabled(ctx, l)
}
func (f levelFilter) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFilter{f.Handler.WithAttrs(a), f.min}
}
func (f levelFilter) WithGroup(n string) slog.Handler {
	return levelFilter{f.Handler.WithGroup(n), f.min}
}

// freeAddrs returns n distinct free loopback addresses (host:port) for the in-process pipeline. Another
// process could take one before it is used; good enough for a benchmark on one machine.
func freeAddrs(n int) ([]string, error) {
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
