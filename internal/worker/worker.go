// Package worker runs the worker loops: claim a task from the master, fetch its working image from
// storage, process it, store the result as finished, register the task finished. While it works it
// renews the task's lease (heartbeat); every call about the task carries the claim's fencing token.
//
// Concurrency is the number of images processed at once (one per CPU by default); Prefetch more loops
// may claim, fetch, store and report around them, so that the CPUs need not wait for the network, the
// storage's disk flush or the database's commit between two images.
package worker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"math"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/wire"
)

const (
	// DefaultWait is how long a claim waits at the master for work to appear (long poll).
	DefaultWait = 10 * time.Second
	// DefaultHeartbeat is how often a worker renews its lease; it never waits more than a third of the
	// lease that is left, nor more than wire.MaxLeaseWait.
	DefaultHeartbeat = 10 * time.Second
	// DefaultDrain is how long a stopping worker may finish its current task before it hands it back.
	DefaultDrain = 30 * time.Second
	// DefaultOutageWait is how long a worker retries, in place, fetching or storing the image of the
	// task it holds while storage is unavailable, before it hands the task back to be claimed later.
	DefaultOutageWait = time.Minute
	// reportRetryFor is how long a worker retries reporting a task's outcome (finished, failed, handed
	// back) while the master or the database is unavailable: the work is done, and losing the report
	// would cost the task a lease and an attempt. A stopping worker gives up after Drain.
	reportRetryFor = 5 * time.Minute

	// DefaultTaskTimeout is the longest a task's image work may take, whatever its estimate.
	DefaultTaskTimeout = 5 * time.Minute
	// MinTaskTimeout is the shortest deadline a task gets, however cheap its estimate: small tasks on a
	// busy machine must never hit it. A TaskTimeout below it is the deadline of every task.
	MinTaskTimeout = 30 * time.Second
	// TaskTimeoutFactor scales a task's estimated CPU time into its deadline. The estimate is the time
	// on one idle core; a worker shares its cores between Concurrency tasks and whatever else runs on
	// the machine (2-3 times slower on a busy one), and a race-detector build is several times slower
	// again; 10 covers both with room to spare, while still stopping a chain whose real cost runs far
	// past its estimate.
	TaskTimeoutFactor = 10
	// deadlineGrace is how long past a task's deadline the heartbeat still renews its lease: time for
	// the image work to notice the deadline (within about a second) and for the failure to be reported.
	// Past it, work that did not stop lets its lease lapse.
	deadlineGrace = 2 * time.Second

	// DefaultPrefetch is --prefetch's default. A small image's claim, fetch and finish take several
	// times its image work, most of it waiting for a disk flush or a commit: with the calls over HTTP
	// (the split deployment on one 2-core machine, two slots), 0, 2, 4 and 8 took 64 px images from 106
	// to 130, 154 and 164 img/s, and 256 px from 50 to 65, 68 and 59; with them in-process (imgmill
	// serve), 0, 2, 4 and 8 took 64 px from 571 to 595, 627 and 648 img/s, and left 256 px as it was
	// (137 img/s). The extra tasks are held under a lease, each with at most one result buffer
	// (BaseMemory); the image work itself stays within MaxMemory.
	DefaultPrefetch = 4

	// BaseMemory is what a worker process holds beside its image work: the Go runtime, connections,
	// result buffers (up to 8 MB each before they spill to disk) and the collector's slack. A worker
	// process's memory budget less this is its MaxMemory. Measured: an idle worker holds about 20 MB.
	BaseMemory = 64 << 20
)

// Config configures Run.
type Config struct {
	Master      Master  // *client.Master, or the master in this process (master.Local)
	Storage     Storage // *client.Storage, or the storage in this process (storage.Local)
	Concurrency int     // images processed at once; default the number of CPUs
	// Prefetch is how many tasks a worker holds beyond Concurrency: claimed and waiting for a CPU, or
	// processed and being stored and reported. 0 (or negative) means none: every loop processes as soon
	// as it has claimed, and its CPU idles while it stores and reports. Worth it when those calls are
	// slow against the image work: small images, whose finish waits for flushes (DefaultPrefetch).
	Prefetch  int
	Wait      time.Duration // long-poll wait per claim; default DefaultWait
	Heartbeat time.Duration // lease renewal interval; default DefaultHeartbeat
	Drain     time.Duration // grace for the current task on shutdown; default DefaultDrain
	// OutageWait is how long fetching or storing a task's image is retried in place while storage is
	// unavailable or full; then the task is handed back (not counted as an attempt) to be claimed again
	// after a backoff. Default DefaultOutageWait.
	OutageWait time.Duration
	// MaxPixels is the largest image a worker decodes, in pixels (width × height), checked from the
	// image's header before decoding it, so a worker's memory is bounded; a larger image fails its
	// task at once. 0 means imageop.DefaultMaxPixels, negative no limit.
	MaxPixels int64
	// PNGCompression is the effort of the PNG encoder for PNG results (the zero value: the default).
	PNGCompression png.CompressionLevel
	// TaskTimeout is the most a task's image work (decode, operations, encode) may take; a task gets
	// TaskTimeoutFactor times its estimated CPU time, at least MinTaskTimeout (or TaskTimeout, when
	// lower) and at most TaskTimeout. A task past its deadline fails for good. 0 means
	// DefaultTaskTimeout.
	TaskTimeout time.Duration
	// MaxMemory is the memory, in bytes, the worker's image work may hold at once: a task starts only
	// when its estimated peak fits beside the tasks running, and one whose estimate alone exceeds it
	// fails for good. 0 (or negative) means no budget.
	MaxMemory int64
	Logger    *slog.Logger
	// Metrics records the loops' busy/idle state and each task's processing; nil records nothing.
	Metrics *metrics.Worker

	// apply runs the image work; nil means the Processor's ApplyContext. Tests set it (export_test.go).
	apply func(ctx context.Context, dst io.Writer, src io.Reader, chain imageop.Chain) (string, error)
}

// Slots is how many images the worker processes at once: Concurrency, or one per CPU when it is 0.
func (c Config) Slots() int {
	if c.Concurrency <= 0 {
		return runtime.NumCPU()
	}
	return c.Concurrency
}

// TaskTimeoutFor is the deadline of a task whose image work is estimated as e: TaskTimeoutFactor times
// its CPU time, within [min(MinTaskTimeout, TaskTimeout), TaskTimeout].
func (c Config) TaskTimeoutFor(e imageop.Estimate) time.Duration {
	ceiling := c.TaskTimeout
	if ceiling <= 0 {
		ceiling = DefaultTaskTimeout
	}
	floor := min(MinTaskTimeout, ceiling)
	if e.CPU >= ceiling/TaskTimeoutFactor { // also keeps the product from overflowing
		return ceiling
	}
	return max(floor, TaskTimeoutFactor*e.CPU)
}

// Run runs Concurrency (plus Prefetch) worker loops until ctx ends; the loops waiting for a task share
// one claim of up to that many tasks (see claimer). Once ctx ends a loop claims nothing more and
// finishes its current task within Drain, or releases it so another worker can take it at once.
func Run(ctx context.Context, cfg Config) error {
	n := cfg.Slots()
	extra := max(cfg.Prefetch, 0)
	if cfg.Wait <= 0 {
		cfg.Wait = DefaultWait
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Drain <= 0 {
		cfg.Drain = DefaultDrain
	}
	if cfg.OutageWait <= 0 {
		cfg.OutageWait = DefaultOutageWait
	}
	proc := imageop.NewProcessor()
	proc.MaxPixels = cfg.MaxPixels
	proc.PNGCompression = cfg.PNGCompression
	if cfg.apply == nil {
		cfg.apply = proc.ApplyContext
	}
	var mem *semaphore.Weighted
	if cfg.MaxMemory > 0 {
		mem = semaphore.NewWeighted(cfg.MaxMemory)
	}
	cfg.Logger.InfoContext(ctx, "worker started", "concurrency", n, "prefetch", extra,
		"task_timeout", cfg.TaskTimeoutFor(imageop.Estimate{CPU: math.MaxInt64}), "max_memory", cfg.MaxMemory)
	cpus := make(chan struct{}, n)
	var wg sync.WaitGroup
	missing := &missingEndpoints{logger: cfg.Logger}
	claims := &claimer{master: cfg.Master, wait: cfg.Wait, logger: cfg.Logger}
	for i := range n + extra {
		wg.Go(func() {
			l := &loop{cfg: cfg, proc: proc, cpus: cpus, mem: mem, missing: missing, claims: claims, logger: cfg.Logger.With("loop", i)}
			l.run(ctx)
		})
	}
	wg.Wait()
	claims.handBack(ctx)
	return nil
}

type loop struct {
	cfg  Config
	proc *imageop.Processor
	// cpus holds a token per image being processed: the loops share Concurrency of them.
	cpus chan struct{}
	// mem holds the bytes of MaxMemory that the tasks being processed are estimated to need; nil
	// without a budget. It is first come, first served: a large task waiting is not overtaken.
	mem     *semaphore.Weighted
	missing *missingEndpoints
	claims  *claimer // shared by the loops
	logger  *slog.Logger
}

// missingEndpoints logs, once per master, that it has no /failTask or /releaseTask (the reference
// design's master).
type missingEndpoints struct {
	logger *slog.Logger
	seen   client.Missing
}

func (m *missingEndpoints) note(ctx context.Context, master Master, path, instead string) {
	m.seen.Note(ctx, m.logger, "master", masterAddr(ctx, master), path, instead)
}

// lacks reports whether master was found without path.
func (m *missingEndpoints) lacks(ctx context.Context, master Master, path string) bool {
	return m.seen.Has(masterAddr(ctx, master), path)
}

// masterAddr names master for missingEndpoints.
func masterAddr(ctx context.Context, master Master) string {
	addr, err := master.Addr(ctx)
	if err != nil {
		return "unknown"
	}
	return addr
}

func (l *loop) run(stop context.Context) {
	ended := l.cfg.Metrics.Loop() // idle, but for the tasks it handles
	defer ended()
	failures := backoff.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second}
	// A master without long polls (the reference one) is asked again within a second: new work is
	// noticed about as soon as it would be with a long poll, for a few small requests a second.
	idle := backoff.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	failed := 0 // claims in a row that failed
	for stop.Err() == nil {
		start := time.Now()
		task, err := l.claims.next(stop)
		switch {
		case err == nil:
			failures.Reset()
			idle.Reset()
			l.handle(stop, task)
		case client.IsNoTask(err):
			failures.Reset()
			// A master that ignores the wait parameter (the reference one) answers at once: back off
			// instead of spinning on it.
			if time.Since(start) < l.cfg.Wait/2 {
				backoff.Sleep(stop, idle.Next())
			}
		default:
			if stop.Err() != nil {
				return
			}
			// At least as long as the master asks (Retry-After): it, or the database behind it, is
			// unavailable. Logged at the first failure and then now and again, not at every retry.
			d := max(failures.Next(), retryAfter(err))
			if failed++; failed == 1 || failed%10 == 0 {
				l.logger.WarnContext(stop, "claim failed", "err", err, "retry_in", d, "failures", failed)
			}
			backoff.Sleep(stop, d)
			continue
		}
		if failed > 0 {
			l.logger.InfoContext(stop, "claims work again", "after_failures", failed)
			failed = 0
		}
	}
}

// retryAfter is the wait a peer's answer asked for (Retry-After), or 0.
func retryAfter(err error) time.Duration {
	var e *httpapi.Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// Why a task's work was cut short.
var (
	errLeaseLost = errors.New("lease lost: the task was claimed again")
	// errCancelled: the task was cancelled or deleted (the heartbeat's answer is 410 Gone).
	errCancelled = errors.New("task cancelled")
	errDrained   = errors.New("worker stopping: task handed back")
	// errOvertime is wrapped by overtimeError.
	errOvertime = errors.New("task deadline passed")
	// errOverBudget is wrapped by overBudgetError.
	errOverBudget = errors.New("over the worker's memory budget")
)

// overtimeError is the failure of a task whose image work went past its deadline.
type overtimeError struct{ limit time.Duration }

// fewerSteps is what to do about a task over a worker's time or memory: its failure is permanent.
const fewerSteps = "try a smaller image or fewer steps"

func (e *overtimeError) Error() string {
	return fmt.Sprintf("took longer than %s s (the limit for this image and chain): %s", seconds(e.limit), fewerSteps)
}
func (e *overtimeError) Unwrap() error { return errOvertime }

// overBudgetError is the failure of a task whose estimated memory exceeds the whole budget.
type overBudgetError struct{ need, budget int64 }

func (e *overBudgetError) Error() string {
	return fmt.Sprintf("needs about %s of memory for this image and chain, more than the worker's budget of %s: %s",
		megabytes(e.need), megabytes(e.budget), fewerSteps)
}
func (e *overBudgetError) Unwrap() error { return errOverBudget }

// seconds spells d in seconds for a message: whole seconds from 10 s, tenths below.
func seconds(d time.Duration) string {
	if d >= 10*time.Second {
		return strconv.FormatInt(int64(d.Round(time.Second)/time.Second), 10)
	}
	return strconv.FormatFloat(float64(d.Round(100*time.Millisecond))/float64(time.Second), 'f', -1, 64)
}

// megabytes spells n bytes for a message, in MB or GB (decimal), e.g. "1.2 GB".
func megabytes(n int64) string {
	if n >= 1e9 {
		return strconv.FormatFloat(float64(n)/1e9, 'f', 1, 64) + " GB"
	}
	return strconv.FormatFloat(float64(n)/1e6, 'f', 0, 64) + " MB"
}

// handle works on one claimed task and reports the outcome. The work is not cancelled by stop directly:
// it gets Drain to finish first.
func (l *loop) handle(stop context.Context, task wire.Task) {
	start := time.Now()
	idle := l.cfg.Metrics.Busy() // until the outcome is reported
	defer idle()
	logger := l.logger.With("task", task.ID, "token", task.Token, "attempt", task.Attempts)
	work, cancel := context.WithCancelCause(context.WithoutCancel(stop))
	defer cancel(nil)
	var progress progress
	var keeper sync.WaitGroup
	keeper.Go(func() { l.keepLease(stop, work, cancel, task, &progress, logger) })
	finished, err := l.process(work, task, &progress)
	l.cfg.Metrics.Processed(time.Since(start), err)
	cancel(nil)
	keeper.Wait()

	ctx, cancelReport := l.reportContext(stop)
	defer cancelReport()
	cause := context.Cause(work)
	switch {
	case errors.Is(cause, errCancelled) || client.IsStatus(err, http.StatusGone):
		logger.InfoContext(ctx, "stopped: the task was cancelled", "duration", time.Since(start))
	case err == nil && finished:
		logger.InfoContext(ctx, "task finished", "duration", time.Since(start))
	case err == nil:
		if err := l.cfg.Master.FinishTask(ctx, task.ID, task.Token); client.IsStatus(err, http.StatusGone) {
			// Cancelled after the last heartbeat: the master removes the result it refuses.
			logger.InfoContext(ctx, "result refused: the task was cancelled", "duration", time.Since(start))
			return
		} else if err != nil {
			logger.WarnContext(ctx, "register finished failed", "err", err)
			return
		}
		logger.InfoContext(ctx, "task finished", "duration", time.Since(start))
	case errors.Is(cause, errLeaseLost) || client.IsStatus(err, http.StatusConflict):
		logger.WarnContext(ctx, "gave up task: another worker holds it now", "err", err)
	case errors.Is(cause, errDrained):
		if err := l.cfg.Master.ReleaseTask(ctx, task.ID, task.Token); client.IsNoEndpoint(err) {
			l.missing.note(ctx, l.cfg.Master, "/releaseTask", leftToLease)
			logger.InfoContext(ctx, "task left to its lease on shutdown: the master cannot take it back")
			return
		} else if err != nil {
			logger.WarnContext(ctx, "release failed; the lease will lapse", "err", err)
			return
		}
		logger.InfoContext(ctx, "task released on shutdown")
	case fault.IsTransient(err):
		// Something the work needed was away or full for longer than OutageWait: not the task's
		// fault. It goes back to the queue without using an attempt, to be claimed after a backoff.
		t, rerr := l.cfg.Master.RetryTask(ctx, task.ID, task.Token, err.Error())
		if client.IsNoEndpoint(rerr) {
			l.missing.note(ctx, l.cfg.Master, "/failTask", leftToLease)
			logger.WarnContext(ctx, "task left to its lease after a transient failure: the master cannot be told", "err", err)
			return
		}
		if rerr != nil {
			logger.WarnContext(ctx, "handing the task back failed; the lease will lapse", "err", err, "report_err", rerr)
			return
		}
		logger.WarnContext(ctx, "task handed back after a transient failure", "err", err, "retry_at", t.RetryAt)
	default:
		// Input that can never work fails the task at once: it does not decode, it is too large, or the
		// operation cannot apply to it.
		// A task past its deadline, or whose estimate exceeds the memory budget, would do the same again.
		permanent := errors.Is(err, imageop.ErrDecode) || errors.Is(err, imageop.ErrTooLarge) || errors.Is(err, imageop.ErrBadOp) ||
			errors.Is(err, errOvertime) || errors.Is(err, errOverBudget)
		t, ferr := l.cfg.Master.FailTask(ctx, task.ID, task.Token, err.Error(), permanent)
		if client.IsNoEndpoint(ferr) {
			l.missing.note(ctx, l.cfg.Master, "/failTask", leftToLease)
			logger.WarnContext(ctx, "task attempt failed; left to its lease: the master cannot be told", "err", err, "permanent", permanent)
			return
		}
		if ferr != nil {
			logger.WarnContext(ctx, "reporting failure failed; the lease will lapse", "err", err, "report_err", ferr)
			return
		}
		logger.WarnContext(ctx, "task attempt failed", "err", err, "permanent", permanent, "state", t.State)
	}
}

// leftToLease is what a worker does with a task it cannot report to a master without /failTask or
// /releaseTask: nothing, so that the master hands it out again once its lease lapses (the reference's
// 120 s), as it does for a worker that stopped.
const leftToLease = "a task that fails or is handed back is left to its lease, to be handed out again when it lapses"

// reportContext is the context of the calls that report a task's outcome: they retry while the master
// or the database is unavailable, for reportRetryFor, or for Drain once the worker is stopping.
func (l *loop) reportContext(stop context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(client.RetryFor(context.WithoutCancel(stop), reportRetryFor), reportRetryFor)
	stopWatch := context.AfterFunc(stop, func() {
		t := time.NewTimer(l.cfg.Drain)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-ctx.Done():
		}
	})
	return ctx, func() {
		cancel() // also ends a drain timer under way
		stopWatch()
	}
}

// keepLease renews the lease while work runs; it cuts the work short when the lease is lost or the task
// was cancelled (but not once the result is being handed over: see progress), or when the worker has
// been stopping for longer than Drain. Each heartbeat is a long poll (Master.WatchLease): it renews the
// lease at once and is held by the master until the next one is due, or answered early when the task is
// cancelled or deleted through that master, so the work stops within moments of a cancel. Once the
// image work's deadline (plus deadlineGrace) has passed it renews no more, so that work stuck past its
// deadline lets the lease lapse rather than hold the task for ever.
func (l *loop) keepLease(stop, work context.Context, cancel context.CancelCauseFunc, task wire.Task, progress *progress, logger *slog.Logger) {
	leaseUntil := task.LeaseUntil
	beating := task.Token != 0 // a master that issues no tokens (the reference) has no heartbeat either
	var drain <-chan time.Time
	stopping := stop.Done()
	var beat chan heartbeat // the heartbeat under way, or nil
	// When the next heartbeat is due: the first one soon, so that a cancel is heard early, but not at
	// once, so that a task done in a moment costs no heartbeat.
	next := time.Now().Add(min(firstHeartbeat, l.heartbeatInterval(leaseUntil)))
	defer func() {
		if beat != nil {
			<-beat // ends at once: work is done, and the call with it
		}
	}()
	for {
		if beating && beat == nil && !time.Now().Before(next) {
			interval := l.heartbeatInterval(leaseUntil)
			// A master that ignores the wait answers at once: the next heartbeat still waits its turn.
			next = time.Now().Add(interval)
			beat = make(chan heartbeat, 1)
			go func(ch chan<- heartbeat) {
				t, err := l.cfg.Master.WatchLease(work, task.ID, task.Token, interval)
				ch <- heartbeat{t, err}
			}(beat)
		}
		// Wake when the next heartbeat is due, or while one is under way, now and again to look at the
		// deadline.
		wake := time.Until(next)
		if beat != nil || !beating {
			wake = max(wake, l.cfg.Heartbeat)
		}
		timer := time.NewTimer(max(wake, 10*time.Millisecond))
		select {
		case <-work.Done():
			timer.Stop()
			return
		case <-stopping:
			stopping = nil
			drain = time.After(l.cfg.Drain)
		case <-drain:
			cancel(errDrained)
		case hb := <-beat:
			beat = nil
			switch err := hb.err; {
			case err == nil:
				leaseUntil = hb.task.LeaseUntil
			case progress.delivering.Load() && (client.IsStatus(err, http.StatusGone) ||
				client.IsStatus(err, http.StatusConflict) || client.IsStatus(err, http.StatusBadRequest)):
				// The result is being handed over: that call's own answer says what became of the task
				// (finished by it, whose held heartbeat the finish wakes, cancelled, or claimed again).
				// Cutting it short could lose the answer of a finish that went through.
				beating = false
			case client.IsStatus(err, http.StatusGone):
				cancel(errCancelled)
			case client.IsStatus(err, http.StatusConflict) || client.IsStatus(err, http.StatusBadRequest):
				cancel(errLeaseLost)
			case client.IsStatus(err, http.StatusNotFound) || client.IsStatus(err, http.StatusMethodNotAllowed):
				beating = false // a master without heartbeats
			case work.Err() == nil:
				logger.WarnContext(work, "heartbeat failed, retrying", "err", err)
			}
		case <-timer.C:
		}
		timer.Stop()
		if d := progress.deadline.Load(); d != 0 && time.Now().UnixNano() > d {
			if beating {
				logger.WarnContext(work, "image work past its deadline: the lease is no longer renewed")
			}
			beating = false
			cancel(errOvertime)
		}
	}
}

// firstHeartbeat is how soon after its claim a task's first heartbeat is sent (unless the lease asks
// for sooner).
const firstHeartbeat = 500 * time.Millisecond

// heartbeatInterval is how long a heartbeat is held, and the time between two: Heartbeat, but at most a
// third of the lease left, and at most what the master holds a heartbeat for (a cancel is heard early
// only while one is held).
func (l *loop) heartbeatInterval(leaseUntil time.Time) time.Duration {
	interval := min(l.cfg.Heartbeat, wire.MaxLeaseWait)
	if !leaseUntil.IsZero() {
		interval = min(interval, time.Until(leaseUntil)/3)
	}
	return max(interval, 10*time.Millisecond)
}

// progress is what a task's work tells its heartbeat (keepLease).
type progress struct {
	// deadline is the image work's deadline plus deadlineGrace, in Unix nanoseconds; 0: none.
	deadline atomic.Int64
	// delivering is set once the result is made and being handed over (stored, and finished in the same
	// call).
	delivering atomic.Bool
}

// heartbeat is the answer to one heartbeat.
type heartbeat struct {
	task wire.Task
	err  error
}

// process fetches the task's working image, makes its result and delivers it (see deliver); finished
// says that the master finished the task with it, in the same call.
func (l *loop) process(ctx context.Context, task wire.Task, progress *progress) (finished bool, err error) {
	// The master and the database refuse bad chains, so a bad one here comes from elsewhere (a task
	// created by hand): it fails permanently, as ErrBadOp says in handle.
	chain, err := imageop.ParseChain(task.Op)
	if err != nil {
		return false, err
	}
	// Storage away or full is waited out in place for OutageWait, by the client's retries; the stream
	// itself is not bounded by that. It ends with the image work's deadline, so a stalled read does not
	// outlast it.
	calls := client.RetryFor(ctx, l.cfg.OutageWait)
	streaming, endStream := context.WithCancel(ctx)
	defer endStream()
	img, err := l.fetchWorking(client.RetryFor(streaming, l.cfg.OutageWait), task.ID)
	if err != nil {
		return false, fmt.Errorf("fetch working image: %w", err)
	}
	src := &storageStream{Image: img}
	defer src.Close()
	// The header says what the work will cost before any pixel is decoded: its deadline and the memory
	// it waits for.
	h, prefix, err := imageop.ReadHeader(src, 0)
	if err != nil {
		return false, err
	}
	maxPixels := l.cfg.MaxPixels
	if maxPixels == 0 {
		maxPixels = imageop.DefaultMaxPixels
	}
	if err := h.CheckSize(0, maxPixels); err != nil {
		return false, err
	}
	if err := chain.CheckSize(h.Width, h.Height, maxPixels); err != nil {
		return false, err
	}
	cost := l.proc.Estimate(chain, h)
	timeout := l.cfg.TaskTimeoutFor(cost)
	// A fresh buffer per result: the HTTP transport may still read a request body after the call
	// returns, so reusing it for the next task could corrupt a retried upload.
	var out resultBuffer
	defer out.Close()
	if err := out.expect(src.Size); err != nil {
		return false, err
	}
	err = l.processing(ctx, cost.Memory, func() error {
		work, cancel := context.WithTimeoutCause(ctx, timeout, &overtimeError{limit: timeout})
		defer cancel()
		progress.deadline.Store(time.Now().Add(timeout + deadlineGrace).UnixNano())
		l.logger.DebugContext(ctx, "image work started", "task", task.ID, "estimated_cpu", cost.CPU,
			"estimated_memory", cost.Memory, "deadline", timeout)
		defer progress.deadline.Store(0)
		defer context.AfterFunc(work, endStream)()
		_, err := l.cfg.apply(work, &out, io.MultiReader(bytes.NewReader(prefix), src), chain)
		l.logger.DebugContext(ctx, "image work ended", "task", task.ID, "err", err)
		if cause := context.Cause(work); errors.Is(cause, errOvertime) {
			return cause
		}
		return err
	})
	if err != nil {
		return false, err
	}
	src.Close()
	if err := ctx.Err(); err != nil {
		return false, err
	}
	progress.delivering.Store(true)
	return l.deliver(calls, task, &out)
}

// deliver hands the result over: to the master, which stores it and finishes the task in one call
// (Master.FinishWithResult); or, to a master without that call (the reference design's, remembered
// per master), stored at storage, finished is false and the finish is registered afterwards. Storage
// away is retried in place within ctx's RetryFor (OutageWait) either way.
func (l *loop) deliver(ctx context.Context, task wire.Task, out *resultBuffer) (finished bool, err error) {
	if !l.missing.lacks(ctx, l.cfg.Master, finishPath) {
		err := l.cfg.Master.FinishWithResult(ctx, task.ID, task.Token, out.reader(), out.size)
		if !noFinishEndpoint(err) {
			if err != nil {
				return false, fmt.Errorf("store finished image and finish: %w", err)
			}
			return true, nil
		}
		l.missing.note(ctx, l.cfg.Master, finishPath, "a result is stored at storage, then registered finished")
	}
	if err := l.cfg.Storage.SendResult(ctx, task.ID, task.Token, out.reader(), out.size); err != nil {
		return false, fmt.Errorf("store finished image: %w", err)
	}
	return false, nil
}

// noFinishEndpoint reports whether err is a master's answer that it has no finishPath: the reference
// design's bare 404, or an imgmill master of an earlier version's refusal of an unknown path (404, or 405
// for a path it has under another method). A master with the endpoint never answers either: a task it
// does not know is the database's 400.
func noFinishEndpoint(err error) bool {
	return client.IsNoEndpoint(err) || client.IsStatus(err, http.StatusNotFound) || client.IsStatus(err, http.StatusMethodNotAllowed)
}

// finishPath is the master's endpoint that stores a result and finishes its task in one call.
const finishPath = "/finishTask"

// Retries of a working image that is not there (yet).
const (
	missingImageTries = 5
	missingImageFirst = 500 * time.Millisecond
	missingImageMax   = 2 * time.Second
)

// errEmptyImage is a working image stored with no bytes.
var errEmptyImage = errors.New("the working image is empty")

// fetchWorking opens the working image of task id. One that is missing or empty is asked for again,
// missingImageTries times over about five seconds: the reference design's master creates a task before
// it stores the task's image, so a task claimed at once can find nothing there yet. imgmill's master
// stores the image first, and a task whose image is gone for good fails after the tries.
func (l *loop) fetchWorking(ctx context.Context, id int64) (*client.Image, error) {
	wait := backoff.Backoff{Min: missingImageFirst, Max: missingImageMax}
	for try := 1; ; try++ {
		img, err := l.cfg.Storage.GetImage(ctx, id, wire.WorkingImage)
		if err == nil {
			if err = nonEmpty(img); err == nil {
				return img, nil
			}
			img.Close()
		}
		if !client.IsStatus(err, http.StatusNotFound) && !errors.Is(err, errEmptyImage) || try == missingImageTries {
			return nil, err
		}
		d := wait.Next()
		l.logger.DebugContext(ctx, "working image not there yet, asking again", "task", id, "err", err, "retry_in", d, "try", try)
		if !backoff.Sleep(ctx, d) {
			return nil, context.Cause(ctx)
		}
	}
}

// nonEmpty returns errEmptyImage for an image with no bytes, peeking at one of unknown length.
func nonEmpty(img *client.Image) error {
	switch {
	case img.Size == 0:
		return errEmptyImage
	case img.Size > 0:
		return nil
	}
	br := bufio.NewReader(img.ReadCloser)
	if _, err := br.Peek(1); err == io.EOF {
		return errEmptyImage
	}
	img.ReadCloser = struct {
		io.Reader
		io.Closer
	}{br, img.ReadCloser}
	return nil
}

// storageStream is a working image being read from storage: a read that fails (storage went away in the
// middle) is a transient failure, not the image's.
type storageStream struct{ *client.Image }

func (s *storageStream) Read(p []byte) (int, error) {
	n, err := s.Image.Read(p)
	if err != nil && err != io.EOF {
		err = fault.Unavailable("image storage", err)
	}
	return n, err
}

// processing runs the image work once its estimated memory fits in the budget beside the tasks
// running, and then one of the worker's Concurrency slots is free (always in that order, so that two
// loops never each hold what the other waits for).
func (l *loop) processing(ctx context.Context, memory int64, work func() error) error {
	if l.mem != nil {
		if memory > l.cfg.MaxMemory {
			return &overBudgetError{need: memory, budget: l.cfg.MaxMemory}
		}
		if err := l.mem.Acquire(ctx, memory); err != nil {
			return context.Cause(ctx)
		}
		defer l.mem.Release(memory)
	}
	select {
	case l.cpus <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-l.cpus }()
	return work()
}

// NewClients returns the master and storage clients a worker uses, found through the kv store.
func NewClients(hc *http.Client, kv *client.KV) (*client.Master, *client.Storage) {
	return client.NewMaster(hc, client.NewResolver(kv, wire.MasterKey, client.ResolveTTL)),
		client.NewStorage(hc, client.NewResolver(kv, wire.StorageKey, client.ResolveTTL))
}
