package soak

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/testimage"
)

// TestSoak pushes many images through the split deployment and watches every service's open file
// descriptors and resident memory, which must stay flat after warm-up (the reference design runs out of
// file descriptors after about ten thousand images). It is its own command, too slow for every CI run:
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
	const clients = 16
	every := max(n/25, 500)
	d := deploytest.New(t)
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
	var samples [][]procUsage // one row per sample, one column per service
	sample := func(done int) {
		row := make([]procUsage, len(services))
		line := fmt.Sprintf("%7d images", done)
		for j, name := range services {
			u, err := readUsage(d.PID(name))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			row[j] = u
			line += fmt.Sprintf(" | %s %3d fd %6.1f MiB", name, u.fds, float64(u.rssKiB)/1024)
		}
		samples = append(samples, row)
		t.Log(line)
	}
	sample(0)

	var done, next atomic.Int64
	var sampleMu sync.Mutex
	var wg sync.WaitGroup
	m := d.Master()
	start := time.Now()
	for c := range clients {
		wg.Go(func() {
			for ctx.Err() == nil {
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
	t.Logf("%d images in %s (%.1f img/s)", n, elapsed.Round(time.Second), float64(n)/elapsed.Seconds())

	// Flat after warm-up: the end of the run (the median of its last fifth, so a burst of connections in
	// flight at one sample does not count, a steady climb does) stays within 10 % of the level at the
	// end of the warm-up, the first 40 % of the run. The warm-up is long because the services' memory
	// settles slowly and boundedly: SQLite's page caches fill as the table grows and the binary's code
	// pages are read in as rarer code paths run. File descriptors are small counts that move with the
	// connections in flight, so they also get a slack of 4.
	if len(samples) < 10 {
		t.Fatalf("only %d samples: run more images", len(samples))
	}
	warm := samples[len(samples)*2/5]
	tailRows := samples[len(samples)*4/5:]
	for j, name := range services {
		fds, rss := make([]int, len(tailRows)), make([]int, len(tailRows))
		for k, row := range tailRows {
			fds[k], rss[k] = row[j].fds, row[j].rssKiB
		}
		endFDs, endRSS := median(fds), median(rss)
		if limit := max(warm[j].fds*11/10, warm[j].fds+4); endFDs > limit {
			t.Errorf("%s: open file descriptors grew from %d to %d after warm-up (limit %d)", name, warm[j].fds, endFDs, limit)
		}
		if limit := warm[j].rssKiB * 11 / 10; endRSS > limit {
			t.Errorf("%s: RSS grew from %d KiB to %d KiB after warm-up (limit %d KiB)", name, warm[j].rssKiB, endRSS, limit)
		}
	}
}

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
