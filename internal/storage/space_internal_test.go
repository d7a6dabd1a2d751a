package storage

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// fakeSpace answers FreeSpace with free and counts the calls.
type fakeSpace struct {
	free, size uint64
	err        error
	calls      int
}

func (f *fakeSpace) FreeSpace(context.Context) (uint64, uint64, error) {
	f.calls++
	return f.free, f.size, f.err
}

func newTestGuard(space *fakeSpace, m MinFree) (*spaceGuard, *time.Time) {
	now := time.Unix(1000, 0)
	return &spaceGuard{space: space, minFree: m, now: func() time.Time { return now }}, &now
}

func status(err error) int {
	if err == nil {
		return http.StatusOK
	}
	return httpapi.StatusOf(err)
}

// The file system is asked at most once a second; in between, what uploads received is taken off the
// last measure.
func TestSpaceGuardCachesTheMeasure(t *testing.T) {
	space := &fakeSpace{free: 10000, size: 1 << 30}
	g, now := newTestGuard(space, MinFree{Bytes: 1000})
	for i := range 3 {
		up, err := g.admit(t.Context(), "working", 3000)
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		if _, err := io.Copy(io.Discard, up.body(strings.NewReader(strings.Repeat("x", 3000)))); err != nil {
			t.Fatal(err)
		}
		up.done()
	}
	if space.calls != 1 {
		t.Errorf("FreeSpace called %d times within a second, want 1", space.calls)
	}
	// 9000 received since the measure: 1000 left, the floor.
	if _, err := g.admit(t.Context(), "working", 1); status(err) != http.StatusInsufficientStorage {
		t.Errorf("an upload below the floor by what was received since the measure: %v, want 507", err)
	}
	// A second later the file system is asked again: the space was freed meanwhile.
	*now = now.Add(time.Second)
	space.free = 10000
	if _, err := g.admit(t.Context(), "working", 1); err != nil {
		t.Errorf("after a new measure: %v", err)
	}
	if space.calls != 2 {
		t.Errorf("FreeSpace called %d times after a second, want 2", space.calls)
	}
}

// Uploads in flight hold the space they announced until they send it or end, so that concurrent
// uploads cannot together overrun the floor.
func TestSpaceGuardCountsUploadsInFlight(t *testing.T) {
	space := &fakeSpace{free: 10000, size: 1 << 30}
	g, _ := newTestGuard(space, MinFree{Bytes: 1000})
	first, err := g.admit(t.Context(), "working", 6000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.admit(t.Context(), "working", 3001); status(err) != http.StatusInsufficientStorage {
		t.Errorf("a second upload that would overrun the floor with the first one's: %v, want 507", err)
	}
	// Half of the first received: still 6000 taken in all.
	if _, err := io.Copy(io.Discard, first.body(strings.NewReader(strings.Repeat("x", 3000)))); err != nil {
		t.Fatal(err)
	}
	if _, err := g.admit(t.Context(), "working", 3001); status(err) != http.StatusInsufficientStorage {
		t.Errorf("after half of the first upload: %v, want 507", err)
	}
	// The first upload ends short (its client went away): what it did not send is free again.
	first.done()
	second, err := g.admit(t.Context(), "working", 3001)
	if err != nil {
		t.Errorf("after the first upload ended: %v", err)
	}
	second.done()
	if got := g.pending.Load(); got != 0 {
		t.Errorf("%d bytes pending with no upload in flight", got)
	}
}

// A file system that cannot be asked refuses nothing; a nil guard (no floor, or an object store)
// neither.
func TestSpaceGuardAdmitsWithoutAnAnswer(t *testing.T) {
	g, _ := newTestGuard(&fakeSpace{err: errors.New("statfs: no such file")}, MinFree{Bytes: 1000})
	if _, err := g.admit(t.Context(), "working", 5000); err != nil {
		t.Errorf("statfs failing: %v", err)
	}
	var none *spaceGuard
	up, err := none.admit(t.Context(), "working", 5000)
	if err != nil {
		t.Errorf("no guard: %v", err)
	}
	up.done()
	r := strings.NewReader("x")
	if up.body(r) != io.Reader(r) {
		t.Error("no guard wraps the body")
	}
}

func TestMinFreeFloor(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		m    MinFree
		size uint64
		want uint64
	}{
		{DefaultMinFree, 64 << 20, 64 << 20 / 20}, // a small tmpfs: 5 %
		{DefaultMinFree, 1000 * gib, gib},         // a large disk: 1 GiB
		{DefaultMinFree, 20 * gib, gib},           // where both meet
		{MinFree{Bytes: 2 * gib}, 10 * gib, 2 * gib},
		{MinFree{Percent: 10}, 10 * gib, gib},
		{MinFree{}, 10 * gib, 0},
	} {
		if got := c.m.Floor(c.size); got != c.want {
			t.Errorf("%v.Floor(%d) = %d, want %d", c.m, c.size, got, c.want)
		}
	}
}

func TestParseMinFree(t *testing.T) {
	parseBytes := func(s string) (int64, error) {
		if s, ok := strings.CutSuffix(s, "GiB"); ok {
			n, err := strconv.ParseInt(s, 10, 64)
			return n << 30, err
		}
		return strconv.ParseInt(s, 10, 64)
	}
	for _, c := range []struct {
		in   string
		want MinFree
	}{
		{"1GiB", MinFree{Bytes: 1 << 30}},
		{"5%", MinFree{Percent: 5}},
		{"2.5 %", MinFree{Percent: 2.5}},
		{"1GiB,5%", MinFree{Bytes: 1 << 30, Percent: 5}},
		{"0", MinFree{}},
	} {
		got, err := ParseMinFree(c.in, parseBytes)
		if err != nil || got != c.want {
			t.Errorf("ParseMinFree(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if c.want != (MinFree{}) {
			if back, err := ParseMinFree(got.String(), parseBytes); err != nil || back != got {
				t.Errorf("%q does not read back: %+v, %v", got.String(), back, err)
			}
		}
	}
	for _, bad := range []string{"", "x", "100%", "-1%", "5%,6%", "1GiB,2GiB", "1GiB,"} {
		if got, err := ParseMinFree(bad, parseBytes); err == nil {
			t.Errorf("ParseMinFree(%q) = %+v, want an error", bad, got)
		}
	}
}
