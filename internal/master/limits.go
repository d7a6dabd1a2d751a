package master

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
)

// Default limits.
const (
	// DefaultMaxUpload is the largest upload accepted by default, in bytes.
	DefaultMaxUpload = 256 << 20
	// DefaultMaxDimension is the largest width or height accepted by default, in pixels.
	DefaultMaxDimension = 16384
	// DefaultMaxPixels is the largest image accepted by default, in pixels (width × height): the
	// workers' own limit (imageop.DefaultMaxPixels), 50 megapixels.
	DefaultMaxPixels = imageop.DefaultMaxPixels
	// DefaultMaxQueued is how many queued tasks make the master refuse uploads by default.
	DefaultMaxQueued = 10000
	// DefaultMaxTaskCost is the most CPU time one task may be estimated to take by default: ordinary
	// photo work (a 24 MP photo resized, sharpened and made a JPEG: about 2 s; a 50 MP one's red and
	// green swapped: 2 to 5 s, 19 s for a 16-bit PNG) passes with room to spare, a chain that
	// blows a tiny image up to 50 MP and blurs it 15 times (about 57 s) does not.
	DefaultMaxTaskCost = 30 * time.Second
	// DefaultMaxTaskMemory is the most memory one task may be estimated to hold at once by default:
	// a 50 MP photo turned a quarter (400 MB as 8-bit RGBA, its copy included) passes, a 50 MP 16-bit
	// PNG turned a quarter (800 MB) does not.
	DefaultMaxTaskMemory = 512 << 20
)

// NoLimit, as a Limits field, turns that limit off.
const NoLimit = -1

// Limits bound what the master accepts, so that no upload can exhaust a worker's memory and no flood
// of uploads can fill the disk. A zero field takes its default; a negative one (NoLimit) is no limit.
type Limits struct {
	// MaxUpload is the largest upload in bytes (413); default DefaultMaxUpload.
	MaxUpload int64
	// MaxDimension is the largest width or height in pixels (413), read from the image's header
	// before anything is stored; default DefaultMaxDimension.
	MaxDimension int
	// MaxPixels is the largest width × height (413), read from the header too; default
	// DefaultMaxPixels. Workers should use the same limit (worker.Config.MaxPixels).
	MaxPixels int64
	// MaxQueued is how many queued tasks make the master refuse uploads (503 with Retry-After) until
	// workers catch up; default DefaultMaxQueued. The count is the database's, cached for a second
	// (queueCacheTTL) and raised by the master's own uploads meanwhile, so with several masters, or
	// many uploads at once, the queue can overshoot the cap by a little.
	MaxQueued int64
	// TrustOwner takes the owner of an upload's task (whom claims serve in turn) from wire.OwnerHeader
	// when a request carries it, rather than from the client's address. Run sets it when the master
	// requires its token (every request comes from a holder of it, such as the frontend) or listens on
	// loopback only without one (every caller is a process of the machine); not with --insecure.
	TrustOwner bool
	// MaxTaskCost is the most CPU time (on one core) a task's decode, operations and encode may be
	// estimated to take (imageop.Chain.Estimate, from the header and the chain), refused with 413
	// before anything is stored; default DefaultMaxTaskCost.
	MaxTaskCost time.Duration
	// MaxTaskMemory is the most bytes a task may be estimated to hold at once (413); default
	// DefaultMaxTaskMemory.
	MaxTaskMemory int64
	// QuotaTasks is the most tasks one owner may keep at once, whatever their state, until they are
	// deleted or expire: more uploads are refused with 429 and Retry-After. Zero or NoLimit is none
	// (the default).
	QuotaTasks int64
	// QuotaBytes is the most bytes of uploaded images one owner may keep at once: an upload that would
	// pass it is refused with 507 and Retry-After, before any of it is stored. Zero or NoLimit is none
	// (the default).
	QuotaBytes int64
}

// WithDefaults returns l with its zero fields set to the defaults.
func (l Limits) WithDefaults() Limits {
	if l.MaxUpload == 0 {
		l.MaxUpload = DefaultMaxUpload
	}
	if l.MaxDimension == 0 {
		l.MaxDimension = DefaultMaxDimension
	}
	if l.MaxPixels == 0 {
		l.MaxPixels = DefaultMaxPixels
	}
	if l.MaxQueued == 0 {
		l.MaxQueued = DefaultMaxQueued
	}
	if l.MaxTaskCost == 0 {
		l.MaxTaskCost = DefaultMaxTaskCost
	}
	if l.MaxTaskMemory == 0 {
		l.MaxTaskMemory = DefaultMaxTaskMemory
	}
	return l
}

// checkCost refuses a chain whose estimated CPU time or memory on the image of header h is over
// MaxTaskCost or MaxTaskMemory, with a message naming the costliest step and by how much the task is
// over the limit.
func (l Limits) checkCost(chain imageop.Chain, h imageop.Header) error {
	if l.MaxTaskCost < 0 && l.MaxTaskMemory < 0 {
		return nil
	}
	e := chain.Estimate(h)
	if l.MaxTaskCost > 0 && e.CPU > l.MaxTaskCost {
		name, each, times := e.Costliest()
		step := name + ": " + seconds(each)
		if times > 1 {
			step += fmt.Sprintf(" each, %d times", times)
		}
		return httpapi.Errorf(http.StatusRequestEntityTooLarge,
			"op: the chain would take about %s of CPU (%s), %s the limit of %s (--max-task-cost)",
			seconds(e.CPU), step, timesOver(float64(e.CPU)/float64(l.MaxTaskCost)), seconds(l.MaxTaskCost))
	}
	if l.MaxTaskMemory > 0 && e.Memory > l.MaxTaskMemory {
		return httpapi.Errorf(http.StatusRequestEntityTooLarge,
			"op: the chain would hold about %s at once (during %s), %s the limit of %d bytes (--max-task-memory)",
			megabytes(e.Memory), e.Peak().Name, timesOver(float64(e.Memory)/float64(l.MaxTaskMemory)), l.MaxTaskMemory)
	}
	return nil
}

// seconds spells a duration for a message: "93 s", "3.6 s", "0.25 s".
func seconds(d time.Duration) string { return roughly(d.Seconds()) + " s" }

// megabytes spells n bytes in megabytes (10⁶) for a message: "800 MB", "1.2 MB".
func megabytes(n int64) string { return roughly(float64(n)/1e6) + " MB" }

// TooLargeError refuses an upload of size bytes (< 0: not known, only that it passed the limit) that is
// over limit: both in units a person reads, then what to do.
func TooLargeError(size, limit int64) error {
	what := fmt.Sprintf("the image is larger than %s, the largest upload", uploadSize(limit))
	if s := uploadSize(size); size >= 0 && s != uploadSize(limit) {
		what = fmt.Sprintf("the image is %s; the largest upload is %s", s, uploadSize(limit))
	}
	return httpapi.Errorf(http.StatusRequestEntityTooLarge, "%s: make it smaller (fewer pixels, or saved as JPEG) and upload it again", what)
}

// uploadSize spells n bytes as people see file sizes: in binary units, to a tenth ("51.5 MB", "20 MB",
// "800 KB", "12 bytes").
func uploadSize(n int64) string {
	v, unit := float64(n), " bytes"
	for _, u := range []string{" KB", " MB", " GB", " TB"} {
		if v < 1<<10 {
			break
		}
		v, unit = v/(1<<10), u
	}
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64) + unit
}

// roughly spells v to two significant digits, or as a whole number from 10 on.
func roughly(v float64) string {
	if v >= 10 {
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 2, 64)
}

// timesOver spells how many times a limit a value over it is, "1.9 times", or "just over" where that
// rounds to 1.0.
func timesOver(ratio float64) string {
	if s := strconv.FormatFloat(ratio, 'f', 1, 64); s != "1.0" {
		return s + " times"
	}
	return "just over"
}

const (
	// queueCacheTTL is how long the master trusts the database's count of queued tasks.
	queueCacheTTL = time.Second
	// statsTimeout bounds the call that counts queued tasks; uploads wait for it.
	statsTimeout = 3 * time.Second
	// queueRetryAfter is the Retry-After of a refusal for a full queue.
	queueRetryAfter = 5 * time.Second
)

// checkQueue refuses an upload while MaxQueued or more tasks are queued. When the count cannot be had,
// the upload goes ahead: creating its task will tell whether the database works.
func (s *server) checkQueue(ctx context.Context) error {
	if s.limits.MaxQueued < 0 {
		return nil
	}
	n, err := s.queue.queued(ctx)
	if err != nil || n < s.limits.MaxQueued {
		return nil
	}
	return &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: queueRetryAfter,
		Msg: fmt.Sprintf("too many queued tasks (%d), retry later", n)}
}

// queueGauge is the database's count of queued tasks, cached for ttl so that checking the cap costs one
// database call per ttl however many uploads arrive; uploads that find it stale share one refresh.
type queueGauge struct {
	db  Database
	ttl time.Duration

	mu      sync.Mutex
	n       int64
	err     error         // the last refresh's failure, cached like a count
	at      time.Time     // when n (or err) was read; zero before the first refresh
	refresh chan struct{} // closed when the refresh under way ends; nil when none is
}

// queued returns the number of queued tasks, at most ttl old, or the error of the last refresh.
func (g *queueGauge) queued(ctx context.Context) (int64, error) {
	for {
		g.mu.Lock()
		if !g.at.IsZero() && time.Since(g.at) < g.ttl {
			n, err := g.n, g.err
			g.mu.Unlock()
			return n, err
		}
		if wait := g.refresh; wait != nil {
			g.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		done := make(chan struct{})
		g.refresh = done
		g.mu.Unlock()
		return g.update(ctx, done)
	}
}

// update asks the database and caches its answer. The call is not cut short by the caller's request
// ending: other uploads may be waiting for it.
func (g *queueGauge) update(ctx context.Context, done chan struct{}) (int64, error) {
	callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statsTimeout)
	stats, err := g.db.Stats(callCtx)
	cancel()
	if err != nil {
		httpapi.LoggerFrom(ctx).WarnContext(ctx, "cannot count queued tasks; uploads are not capped until it works again", "err", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n, g.err, g.at = stats.Queued, err, time.Now()
	g.refresh = nil
	close(done)
	return g.n, g.err
}

// add counts tasks this master queued since the last refresh, so that a burst of uploads within ttl
// is capped too.
func (g *queueGauge) add(n int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err == nil {
		g.n += n
	}
}
