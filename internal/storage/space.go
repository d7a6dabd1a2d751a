package storage

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// MinFree is the free space storage keeps on its blob store's file system: uploads that would leave less
// are refused (507, Retry-After), so that the writes in flight, the results of work already done and a
// database on the same file system (serve's SQLite) never meet a full disk. It is Bytes, or Percent of
// the file system's size, or the smaller of both when both are set; the zero MinFree keeps no floor.
type MinFree struct {
	Bytes   int64
	Percent float64
}

// DefaultMinFree is the smaller of 1 GiB and 5 % of the file system: on a large disk 1 GiB is room
// enough for the uploads in flight (each at most --max-upload) and the database's growth until an
// operator acts, without leaving 5 % of terabytes idle; on a small one (a test's tmpfs, a small volume)
// 1 GiB would be most of the disk, or more than all of it, while 5 % still leaves it usable.
var DefaultMinFree = MinFree{Bytes: 1 << 30, Percent: 5}

// Floor returns the free bytes to keep on a file system of size bytes; 0 is none.
func (m MinFree) Floor(size uint64) uint64 {
	switch {
	case m.Percent > 0 && m.Bytes > 0:
		return min(uint64(m.Bytes), uint64(float64(size)*m.Percent/100))
	case m.Percent > 0:
		return uint64(float64(size) * m.Percent / 100)
	case m.Bytes > 0:
		return uint64(m.Bytes)
	}
	return 0
}

// String writes m as ParseMinFree reads it.
func (m MinFree) String() string {
	var parts []string
	if m.Bytes > 0 {
		size := strconv.FormatInt(m.Bytes, 10)
		for _, u := range []struct {
			unit string
			size int64
		}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
			if m.Bytes%u.size == 0 {
				size = strconv.FormatInt(m.Bytes/u.size, 10) + u.unit
				break
			}
		}
		parts = append(parts, size)
	}
	if m.Percent > 0 {
		parts = append(parts, strconv.FormatFloat(m.Percent, 'f', -1, 64)+"%")
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ",")
}

// ParseMinFree reads a MinFree: a size ("1GiB", "500MB", "1073741824"), a percentage of the file system
// ("5%"), both separated by a comma (the smaller counts), or 0 (no floor). parseBytes reads a size.
func ParseMinFree(s string, parseBytes func(string) (int64, error)) (MinFree, error) {
	var m MinFree
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if pct, ok := strings.CutSuffix(part, "%"); ok {
			p, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
			if err != nil || p < 0 || p >= 100 || m.Percent != 0 {
				return MinFree{}, fmt.Errorf("not a percentage below 100: %q", part)
			}
			m.Percent = p
			continue
		}
		n, err := parseBytes(part)
		if err != nil || m.Bytes != 0 {
			return MinFree{}, fmt.Errorf("not a size (1GiB), a percentage (5%%) or both (1GiB,5%%): %q", s)
		}
		m.Bytes = n
	}
	return m, nil
}

// FormatBytes writes n in the largest binary unit it reaches, as "1.5 GiB" or "812 B".
func FormatBytes(n uint64) string {
	const units = "KMGTPE"
	if n < 1<<10 {
		return strconv.FormatUint(n, 10) + " B"
	}
	v, unit := float64(n)/(1<<10), 0
	for v >= 1<<10 && unit < len(units)-1 {
		v /= 1 << 10
		unit++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[unit:unit+1] + "iB"
}

// spaceCheckEvery is how long a measure of free space is used before the file system is asked again:
// a statfs per upload would be cheap too, but a burst of uploads needs no more than one a second. The
// bytes of uploads in flight are counted apart, so the floor still holds between measures.
const spaceCheckEvery = time.Second

// spaceGuard refuses uploads that would take the free space of the blob store's file system below its
// floor. Results (state finished) have a floor half as high: while uploads are refused, the work already
// done on the tasks accepted before is still stored rather than lost.
//
// The free space is measured at most once per spaceCheckEvery; in between, the bytes received since the
// measure are taken off it, and so are the bytes that uploads in flight announced and have not sent yet
// (which the file system cannot know of), so that concurrent uploads cannot together overrun the floor.
type spaceGuard struct {
	space   blobstore.FreeSpacer
	minFree MinFree
	now     func() time.Time

	// pending: bytes announced by uploads in flight and not received yet; received: bytes received since
	// the last measure.
	pending, received atomic.Int64

	mu         sync.Mutex
	free, size uint64    // the last measure
	measured   time.Time // when; zero: never
}

// newSpaceGuard returns the guard of blobs, or nil when there is nothing to guard: no floor, or a store
// without a file system of its own (an object store).
func newSpaceGuard(blobs blobstore.Store, minFree MinFree) *spaceGuard {
	space, ok := blobs.(blobstore.FreeSpacer)
	if !ok || minFree == (MinFree{}) {
		return nil
	}
	return &spaceGuard{space: space, minFree: minFree, now: time.Now}
}

// measure returns the free space (less what was received since it was measured) and the size of the
// file system, measured at most spaceCheckEvery ago.
func (g *spaceGuard) measure(ctx context.Context) (free int64, size uint64, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if g.measured.IsZero() || now.Sub(g.measured) >= spaceCheckEvery || now.Before(g.measured) {
		free, size, err := g.space.FreeSpace(ctx)
		if err != nil {
			return 0, 0, err
		}
		g.free, g.size, g.measured = free, size, now
		g.received.Store(0)
	}
	return int64(g.free) - g.received.Load(), g.size, nil
}

// floor returns the free bytes an upload of state must leave on a file system of size bytes.
func (g *spaceGuard) floor(state string, size uint64) uint64 {
	f := g.minFree.Floor(size)
	if state == wire.FinishedImage {
		return f / 2
	}
	return f
}

// admit checks that an upload of state announcing n bytes (-1: unknown, counted as 0) leaves the floor
// free, and returns the upload, whose body the caller reads through it and which it ends with done. A
// nil guard admits everything (and its nil upload counts nothing). A refusal is a 507 with Retry-After.
// A file system that cannot be asked is no reason to refuse: the write itself meets whatever is wrong.
func (g *spaceGuard) admit(ctx context.Context, state string, n int64) (*upload, error) {
	if g == nil {
		return nil, nil
	}
	n = max(n, 0)
	measured, size, err := g.measure(ctx)
	if err != nil {
		return nil, nil
	}
	floor := int64(g.floor(state, size))
	others := g.pending.Add(n) - n
	free := max(measured-others, 0) // what is left for this upload
	if free-n >= floor {
		return &upload{g: g, pending: n}, nil
	}
	g.pending.Add(-n)
	format := FormatBytes
	if FormatBytes(uint64(free)) == FormatBytes(uint64(floor)) {
		// Rounded alike, "12.8 MiB free, below 12.8 MiB" would read as a bug: say the bytes.
		format = func(n uint64) string { return strconv.FormatUint(n, 10) + " B" }
	}
	below := "--min-free " + format(uint64(floor))
	if state == wire.FinishedImage {
		below = fmt.Sprintf("half of --min-free %s, the floor for results", format(g.minFree.Floor(size)))
	}
	msg := fmt.Sprintf("storage has %s free, below %s; retry later", format(uint64(free)), below)
	if free >= floor {
		msg = fmt.Sprintf("storage has %s free, and this image of %s would take it below %s; retry later",
			format(uint64(free)), FormatBytes(uint64(n)), below)
	}
	return nil, &httpapi.Error{Status: http.StatusInsufficientStorage, Msg: msg, RetryAfter: httpapi.NoSpaceRetryAfter}
}

// upload is an admitted upload: it reads its body through body, and done releases what it announced and
// did not send.
type upload struct {
	g       *spaceGuard
	pending int64 // announced bytes not received yet
}

// body returns r counting what it reads as received instead of pending. A nil upload returns r.
func (u *upload) body(r io.Reader) io.Reader {
	if u == nil {
		return r
	}
	return &countingReader{r: r, u: u}
}

func (u *upload) done() {
	if u == nil {
		return
	}
	u.g.pending.Add(-u.pending)
	u.pending = 0
}

type countingReader struct {
	r io.Reader
	u *upload
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if n > 0 {
		c.u.g.received.Add(int64(n))
		if k := min(int64(n), c.u.pending); k > 0 {
			c.u.pending -= k
			c.u.g.pending.Add(-k)
		}
	}
	return n, err
}
