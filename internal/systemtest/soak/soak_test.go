package soak

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/testimage"
)

// TestSoak pushes many images through the split deployment, with a retention of a minute, and watches
// every service's open file descriptors and resident memory, the storage's data directory and the task
// database's file: all must stay flat after warm-up (the reference design runs out of file descriptors
// after about ten thousand images, and keeps every image for ever). It is its own command, too slow for
// every CI run:
//
//	IMGMILL_SOAK_IMAGES=50000 go test -run TestSoak -v -timeout 3h ./internal/systemtest/soak
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak test is not run with -short")
	}
	n, _ := strconv.Atoi(os.Getenv("IMGMILL_SOAK_IMAGES"))
	if n <= 0 {
		t.Skip("set IMGMILL_SOAK_IMAGES (e.g. 50000) to run the soak test")
	}
	soak(t, soakRun{images: n, retention: time.Minute, sweepEvery: 5 * time.Second, judgeMemory: true})
}

// TestSoakRetention is the soak in small, for every run: tiny images for 40 seconds (as many as the
// machine processes meanwhile: a few hundred under -race, a few thousand without) with a retention of 5
// seconds, the data directory, the database file and the file descriptors judged as TestSoak judges
// them. Memory is left to TestSoak: a run this short (and the race detector's shadow memory) does not
// settle.
func TestSoakRetention(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak test is not run with -short")
	}
	soak(t, soakRun{duration: 40 * time.Second, retention: 5 * time.Second, sweepEvery: time.Second})
}

// soakRun is what one soak does.
type soakRun struct {
	// images is how many images go through, sampled every 25th of them; or, when duration is set,
	// images go through for that long, sampled every 25th of it.
	images     int
	duration   time.Duration
	retention  time.Duration // the database's --retention
	sweepEvery time.Duration // the master's --sweep-every
	// judgeMemory judges the services' RSS too, not only their file descriptors and the disk.
	judgeMemory bool
}

// soak runs the images of run through the split deployment, 16 clients, half through the frontend and
// half through the master, every result checked, and samples the processes and the disk 25 times.
func soak(t *testing.T, run soakRun) {
	const clients = 16
	n := run.images
	every := max(n/25, 40)
	if run.duration > 0 {
		n, every = math.MaxInt32, math.MaxInt32
	}
	d := deploytest.New(t)
	d.DBArgs = []string{"--retention", run.retention.String()}
	d.MasterArgs = []string{"--sweep-every", run.sweepEvery.String()}
	d.StartBackends()
	d.StartWorker("worker")
	d.StartFrontend()
	d.WaitServing(d.FEAddr)
	// As long as the run takes, within the -timeout it was given: it judges memory and descriptors.
	ctx, cancel := deploytest.Within(t, 24*time.Hour)
	defer cancel()

	// A fixed set of images, reused: the soak is about the services, not the generator.
	const distinct = 64
	originals := make([]*image.NRGBA, distinct)
	encoded := make([][]byte, distinct)
	for i := range distinct {
		originals[i] = testimage.Pattern(24+i%16, int64(i))
		encoded[i], _ = testimage.EncodePNG(originals[i])
	}

	services := []string{"kv", "database", "storage", "master", "worker", "frontend"}
	db := d.Database()
	var samples []soakSample
	var uploaded atomic.Int64
	start := time.Now()
	sample := func(done int) {
		s := soakSample{done: done, at: time.Since(start), procs: make([]procUsage, len(services))}
		line := fmt.Sprintf("%7d images %6.1fs", done, s.at.Seconds())
		for j, name := range services {
			u, err := readUsage(d.PID(name))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			s.procs[j] = u
			line += fmt.Sprintf(" | %s %3d fd %6.1f MiB", name, u.fds, float64(u.rssKiB)/1024)
		}
		var err error
		if s.storage, err = readDisk(filepath.Join(d.Dir, "storage")); err != nil {
			t.Fatal(err)
		}
		if s.db, err = readDisk(filepath.Join(d.Dir, "db")); err != nil {
			t.Fatal(err)
		}
		created := uploaded.Load()
		stats, err := db.Stats(ctx)
		if err != nil {
			t.Fatalf("database stats: %v", err)
		}
		s.live = stats.Queued + stats.Pending + stats.Processing + stats.Finished + stats.Failed + stats.Cancelled
		// Every upload made one task; those not counted were deleted (give or take the uploads under
		// way as the two were read).
		s.tombstones = max(created-s.live, 0)
		line += fmt.Sprintf(" | storage %5d files %7.1f MiB | db %6.2f MiB | %5d live %6d deleted",
			s.storage.files, mib(s.storage.bytes), mib(s.db.bytes), s.live, s.tombstones)
		samples = append(samples, s)
		t.Log(line)
	}
	sample(0)

	var done, next atomic.Int64
	var sampleMu sync.Mutex
	var wg sync.WaitGroup
	m := d.Master()
	running := func() bool { return ctx.Err() == nil && (run.duration == 0 || time.Since(start) < run.duration) }
	if run.duration > 0 {
		wg.Go(func() {
			tick := time.NewTicker(run.duration / 25)
			defer tick.Stop()
			for running() {
				select {
				case <-tick.C:
				case <-ctx.Done():
					return
				}
				sampleMu.Lock()
				sample(int(done.Load()))
				sampleMu.Unlock()
			}
		})
	}
	for c := range clients {
		wg.Go(func() {
			for running() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				k := i % distinct
				// A client of the frontend knows only the public id, and polls and downloads there; a
				// client of the master uses the internal id at the master.
				var (
					task   string
					ready  func() (bool, error)
					result func() (image.Image, error)
				)
				if c%2 == 0 {
					pub, err := deploytest.SubmitViaFrontend(ctx, d.HC, d.FEAddr, encoded[k])
					if err != nil {
						t.Errorf("upload %d: %v", i, err)
						cancel()
						return
					}
					task = pub
					ready = func() (bool, error) { return deploytest.FrontendReady(ctx, d.HC, d.FEAddr, pub) }
					result = func() (image.Image, error) {
						return deploytest.GetPNG(ctx, d.HC, "http://"+d.FEAddr+"/getImage?id="+pub)
					}
				} else {
					id, err := m.New(ctx, bytes.NewReader(encoded[k]), int64(len(encoded[k])))
					if err != nil {
						t.Errorf("upload %d: %v", i, err)
						cancel()
						return
					}
					task = strconv.FormatInt(id, 10)
					ready = func() (bool, error) { return m.IsReady(ctx, id) }
					result = func() (image.Image, error) {
						img, err := m.Get(ctx, id)
						if err != nil {
							return nil, err
						}
						defer img.Close()
						return png.Decode(img)
					}
				}
				uploaded.Add(1)
				if err := waitReadyQuick(ctx, ready); err != nil {
					t.Errorf("task %s: %v", task, err)
					cancel()
					return
				}
				img, err := result()
				if err == nil {
					err = testimage.CheckSwapped(originals[k], img)
				}
				if err != nil {
					t.Errorf("task %s: %v", task, err)
					cancel()
					return
				}
				if total := done.Add(1); total%int64(every) == 0 {
					sampleMu.Lock()
					sample(int(total))
					sampleMu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	elapsed := time.Since(start)
	t.Logf("%d images in %s (%.1f img/s)", done.Load(), elapsed.Round(time.Second), float64(done.Load())/elapsed.Seconds())
	judgeProcesses(t, services, samples, run.judgeMemory)
	judgeDisk(t, samples, run.retention+2*run.sweepEvery)
	// The live tasks are as many at the end as after warm-up, so what the database's files grew by
	// meanwhile is the deleted tasks' tombstones (one small row each, removed ten minutes after the
	// delete: from then on the files stay level).
	warm, last := samples[len(samples)/2], samples[len(samples)-1]
	if added := last.tombstones - warm.tombstones; added > 0 {
		t.Logf("tombstones: %d, the database's files %.2f MiB; from the middle of the run on, %.0f bytes more per tombstone",
			last.tombstones, mib(last.db.bytes), float64(last.db.bytes-warm.db.bytes)/float64(added))
	}
}

// soakSample is one look at the deployment during a soak.
type soakSample struct {
	done        int           // images through
	at          time.Duration // since the first upload
	procs       []procUsage   // one per service
	storage, db diskUsage     // the storage's data directory, the database's (SQLite file, WAL, shm)
	live        int64         // tasks the database counts
	tombstones  int64         // deleted tasks' rows, by the count of uploads
}

// judgeProcesses fails the soak unless every service's file descriptors (and, with memory, its RSS)
// are flat after warm-up: the end of the run (the median of its last fifth, so a burst of connections in
// flight at one sample does not count, a steady climb does) stays within 10 % of the level at the end
// of the warm-up, the first 40 % of the run. The warm-up is long because the services' memory settles
// slowly and boundedly: SQLite's page caches fill as the table grows and the binary's code pages are
// read in as rarer code paths run. File descriptors are small counts that move with the connections in
// flight, one per call a worker loop has under way (2 slots and 4 tasks held ahead), so they also get a
// slack of 8.
func judgeProcesses(t *testing.T, services []string, samples []soakSample, memory bool) {
	t.Helper()
	if len(samples) < 10 {
		t.Fatalf("only %d samples: run more images", len(samples))
	}
	warm := samples[len(samples)*2/5].procs
	tailRows := samples[len(samples)*4/5:]
	for j, name := range services {
		fds, rss := make([]int, len(tailRows)), make([]int, len(tailRows))
		for k, row := range tailRows {
			fds[k], rss[k] = row.procs[j].fds, row.procs[j].rssKiB
		}
		endFDs, endRSS := median(fds), median(rss)
		if limit := max(warm[j].fds*11/10, warm[j].fds+8); endFDs > limit {
			t.Errorf("%s: open file descriptors grew from %d to %d after warm-up (limit %d)", name, warm[j].fds, endFDs, limit)
		}
		if limit := warm[j].rssKiB * 11 / 10; memory && endRSS > limit {
			t.Errorf("%s: RSS grew from %d KiB to %d KiB after warm-up (limit %d KiB)", name, warm[j].rssKiB, endRSS, limit)
		}
	}
}

// judgeDisk fails the soak unless the storage's data directory (bytes and files) and the database's
// files stay flat once the retention has begun to remove tasks. A task is removed at the latest
// retention plus one sweep interval (and the sweep's own time) after it settled, so from warmUp =
// retention + 2 sweep intervals on, the disk holds about the tasks of the last retention's worth of
// throughput: a level, not a slope. The rule: the largest value of the second half of the run's samples
// is at most 1.5 times the largest from the end of the warm-up to the middle of the run (plus a small
// slack for the sizes of near-empty files). 1.5 leaves room for the throughput of a busy machine to
// change by half and for the saw-tooth of the sweeps; a run that kept everything would double from the
// middle of the run to its end, so the run must be at least four warm-ups long to tell them apart.
func judgeDisk(t *testing.T, samples []soakSample, warmUp time.Duration) {
	t.Helper()
	end := samples[len(samples)-1].at
	if end < 4*warmUp {
		t.Fatalf("the run took %s, less than 4 times the warm-up (%s): run more images", end.Round(time.Second), warmUp)
	}
	// From the first sample past the warm-up to the middle of the run, and the second half.
	mid := len(samples) / 2
	first := slices.IndexFunc(samples, func(s soakSample) bool { return s.at >= warmUp })
	if first < 0 || first >= mid {
		t.Fatalf("the warm-up (%s) takes more than half of the samples: run more images", warmUp)
	}
	measures := []struct {
		what  string
		of    func(soakSample) int64
		slack int64
	}{
		{"the storage's data directory (bytes)", func(s soakSample) int64 { return s.storage.bytes }, 1 << 20},
		{"the storage's data directory (files)", func(s soakSample) int64 { return s.storage.files }, 10},
		{"the task database's files (bytes)", func(s soakSample) int64 { return s.db.bytes }, 1 << 20},
	}
	for _, m := range measures {
		var warm, tail int64
		for _, s := range samples[first:mid] {
			warm = max(warm, m.of(s))
		}
		for _, s := range samples[mid:] {
			tail = max(tail, m.of(s))
		}
		if limit := warm*3/2 + m.slack; tail > limit {
			t.Errorf("%s grew from at most %d after warm-up to %d in the second half of the run (limit %d)", m.what, warm, tail, limit)
		}
	}
}

// diskUsage is what a directory holds: bytes allocated on the disk (directories included) and regular
// files.
type diskUsage struct{ bytes, files int64 }

func readDisk(dir string) (diskUsage, error) {
	var u diskUsage
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while the walk ran
		}
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return fmt.Errorf("disk usage of %s: %w", path, err)
		}
		u.bytes += st.Blocks * 512
		if d.Type().IsRegular() {
			u.files++
		}
		return nil
	})
	return u, err
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// procUsage is what the soak test watches of one process.
type procUsage struct {
	fds    int
	rssKiB int
}

func readUsage(pid int) (procUsage, error) {
	fds, err := deploytest.OpenFiles(pid)
	if err != nil {
		return procUsage{}, err
	}
	rss, err := deploytest.ProcStatusKiB(pid, "VmRSS")
	if err != nil {
		return procUsage{}, err
	}
	return procUsage{fds: fds, rssKiB: int(rss)}, nil
}

// waitReadyQuick polls quickly at first, then backs off to 20 ms.
func waitReadyQuick(ctx context.Context, ready func() (bool, error)) error {
	delay := 500 * time.Microsecond
	for {
		ok, err := ready()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 20*time.Millisecond)
	}
}

func median(xs []int) int {
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	return sorted[len(sorted)/2]
}
