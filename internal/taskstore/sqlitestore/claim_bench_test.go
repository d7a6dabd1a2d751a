package sqlitestore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// settle checkpoints the WAL that fill grew, so that the first timed commits do not pay for copying
// a million rows into the main file.
func settle(tb testing.TB, s *Store) {
	tb.Helper()
	if _, err := s.w.ExecContext(context.Background(), `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		tb.Fatalf("checkpoint: %v", err)
	}
}

// cpuMeter adds up the CPU time the process uses while a benchmark's timer runs, to report it per
// op next to the wall time: on a shared machine the wall time also counts the time spent waiting for a
// CPU, the CPU time much less so.
type cpuMeter struct {
	total, start time.Duration
	ok           bool
}

func (m *cpuMeter) resume() { m.start, m.ok = processCPU() }

func (m *cpuMeter) pause() {
	if now, ok := processCPU(); ok && m.ok {
		m.total += now - m.start
	}
}

// report pauses m and reports cpu-ns/op.
func (m *cpuMeter) report(b *testing.B) {
	m.pause()
	if m.ok && b.N > 0 {
		b.ReportMetric(float64(m.total.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkClaimFinish measures what a worker's task costs the embedded store: one Claim (settle
// lapsed leases and claim, one transaction) plus the Finish of the claimed task, with a short and a
// long queue, of one owner and of 10,000 owners taking turns. A claim descends the owners' turn index
// and the claimable index, so all should cost about the same (issue 7: within 2x). It mirrors
// pgstore's BenchmarkClaim.
func BenchmarkClaimFinish(b *testing.B) {
	for _, tc := range []struct {
		name           string
		queued, owners int
	}{
		{"queued=1000", 1_000, 0},
		{"queued=1000000", 1_000_000, 0},
		{"queued=1000000/owners=10000", 1_000_000, 10_000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.queued > 1_000 && testing.Short() {
				b.Skip("1M-task queue skipped with -short")
			}
			s, _ := openTemp(b, nil)
			defer closeStore(b, s)
			fillOwned(b, s, tc.queued, tc.owners)
			settle(b, s)
			ctx := context.Background()
			left, want, owner := tc.queued, int64(0), ""
			var cpu cpuMeter
			cpu.resume()
			for b.Loop() {
				if left == 0 {
					// Requeue everything so the queue depth stays what the name says.
					b.StopTimer()
					cpu.pause()
					if _, err := s.w.ExecContext(ctx, `UPDATE tasks SET state = 0, attempts = 0, lease_until = NULL, finished_at = NULL`); err != nil {
						b.Fatal(err)
					}
					left, want = tc.queued, 0
					cpu.resume()
					b.StartTimer()
				}
				task, err := s.Claim(ctx, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				if tc.owners == 0 && task.ID != want {
					b.Fatalf("claimed task %d, want %d: one owner's claims go in id order", task.ID, want)
				}
				if tc.owners > 1 && task.Owner == owner {
					b.Fatalf("claimed two tasks of %s in a row: owners must take turns", owner)
				}
				if _, err := s.Finish(ctx, task.ID, task.Token); err != nil {
					b.Fatal(err)
				}
				left--
				want++
				owner = task.Owner
			}
			cpu.report(b)
		})
	}
}

// BenchmarkCounts measures Counts (the master reads it, cached for a second, to cap the queue) with
// 1,000 and 1,000,000 queued tasks, and on a table of 1M tasks that are mostly finished with a short
// queue (a long-running service).
func BenchmarkCounts(b *testing.B) {
	for _, tc := range []struct {
		name     string
		total    int
		finished int
	}{
		{"queued=1000", 1_000, 0},
		{"queued=1000000", 1_000_000, 0},
		{"finished=999000/queued=1000", 1_000_000, 999_000},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.total > 1_000 && testing.Short() {
				b.Skip("1M-task table skipped with -short")
			}
			s, _ := openTemp(b, nil)
			defer closeStore(b, s)
			fill(b, s, tc.total)
			ctx := context.Background()
			if _, err := s.w.ExecContext(ctx, `UPDATE tasks SET state = 2, finished_at = created_at WHERE id < ?`, tc.finished); err != nil {
				b.Fatal(err)
			}
			settle(b, s)
			want := taskstore.Counts{Queued: int64(tc.total - tc.finished), Finished: int64(tc.finished)}
			var cpu cpuMeter
			cpu.resume()
			for b.Loop() {
				c, err := s.Counts(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if c != want {
					b.Fatalf("Counts = %+v, want %+v", c, want)
				}
			}
			cpu.report(b)
		})
	}
}

// BenchmarkClaimBatch measures claims taken in batches of 1, 4 and 16 (ClaimN, a worker's
// /getNewTask?max=) on a queue of 10,000 tasks: an op is one ClaimN, and ns/task its share per task
// claimed, against which Claim's one transaction per task compares.
func BenchmarkClaimBatch(b *testing.B) {
	const queued = 10_000
	for _, batch := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			s, _ := openTemp(b, nil)
			defer closeStore(b, s)
			fillOwned(b, s, queued, 0)
			settle(b, s)
			ctx := context.Background()
			left, claimed := queued, 0
			var cpu cpuMeter
			cpu.resume()
			for b.Loop() {
				if left < batch {
					b.StopTimer()
					cpu.pause()
					if _, err := s.w.ExecContext(ctx, `UPDATE tasks SET state = 0, attempts = 0, lease_until = NULL`); err != nil {
						b.Fatal(err)
					}
					left = queued
					cpu.resume()
					b.StartTimer()
				}
				ts, err := s.ClaimN(ctx, batch, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				if len(ts) != batch {
					b.Fatalf("ClaimN(%d) took %d tasks with %d queued", batch, len(ts), left)
				}
				left -= len(ts)
				claimed += len(ts)
			}
			cpu.report(b)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(claimed), "ns/task")
		})
	}
}
