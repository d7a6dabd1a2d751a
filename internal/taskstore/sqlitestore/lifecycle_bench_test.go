package sqlitestore

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
)

// stageMeter adds up what one stage of BenchmarkLifecycle costs: the process's CPU time and the bytes
// the stage's commit appended to the WAL.
type stageMeter struct {
	name     string
	cpu      time.Duration
	walBytes int64
}

// measure runs f and charges its CPU time and the WAL's growth to m.
func (m *stageMeter) measure(tb testing.TB, walPath string, f func() error) {
	tb.Helper()
	w0 := fileSize(walPath)
	c0, _ := processCPU()
	if err := f(); err != nil {
		tb.Fatalf("%s: %v", m.name, err)
	}
	c1, _ := processCPU()
	m.cpu += c1 - c0
	if d := fileSize(walPath) - w0; d > 0 {
		m.walBytes += d
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// BenchmarkLifecycle runs one image's statements in the order the pipeline runs them, one after another
// on one goroutine, behind 10,000 settled tasks: CreateOnce of a pending task with an idempotency key,
// Activate (with its WAL fsync), Claim, Finish (which returns the task: the database service reads
// nothing back), and the Get of a client's status poll. An op is one task; it reports each stage's CPU
// time per op (cpu-us/create, ...). The frames sub-benchmark turns the WAL's checkpoints off and
// reports instead the pages each stage's commit dirtied (pages/create, ...: the WAL frames it
// appended, a frame being a page and a 24-byte header); those are what a write costs beyond its
// transaction's fixed part.
func BenchmarkLifecycle(b *testing.B) {
	for _, frames := range []bool{false, true} {
		name := "cpu"
		if frames {
			name = "frames"
		}
		b.Run(name, func(b *testing.B) { benchLifecycle(b, frames) })
	}
}

// openSettled opens a store behind 10,000 settled tasks, as the lifecycle benchmarks run.
func openSettled(b *testing.B) (*Store, string) {
	b.Helper()
	s, path := openTemp(b, nil)
	fillOwned(b, s, 10_000, 0)
	if _, err := s.w.ExecContext(context.Background(), `UPDATE tasks SET state = 2, finished_at = created_at`); err != nil {
		b.Fatal(err)
	}
	settle(b, s)
	return s, path
}

func benchLifecycle(b *testing.B, frames bool) {
	s, path := openSettled(b)
	defer closeStore(b, s)
	ctx := context.Background()
	if frames {
		if _, err := s.w.ExecContext(ctx, `PRAGMA wal_autocheckpoint = 0`); err != nil {
			b.Fatal(err)
		}
	}
	wal := path + "-wal"
	stages := []*stageMeter{{name: "create"}, {name: "activate"}, {name: "claim"}, {name: "finish"}, {name: "get"}}
	i := 0
	for b.Loop() {
		i++
		var t, c taskstore.Task
		stages[0].measure(b, wal, func() (err error) {
			t, _, err = s.CreateOnce(ctx, taskstore.CreateParams{Pending: true, Owner: "u"}, "key-"+strconv.Itoa(i), time.Hour)
			return err
		})
		stages[1].measure(b, wal, func() error { return s.Activate(ctx, t.ID, 10_000) })
		stages[2].measure(b, wal, func() (err error) {
			c, err = s.Claim(ctx, time.Hour)
			if err == nil && c.ID != t.ID {
				err = fmt.Errorf("claimed task %d, want %d", c.ID, t.ID)
			}
			return err
		})
		stages[3].measure(b, wal, func() error {
			_, err := s.Finish(ctx, c.ID, c.Token)
			return err
		})
		stages[4].measure(b, wal, func() error {
			_, err := s.Get(ctx, c.ID)
			return err
		})
	}
	for _, st := range stages {
		if frames {
			b.ReportMetric(float64(st.walBytes)/float64(4096+24)/float64(b.N), "pages/"+st.name)
		} else {
			b.ReportMetric(float64(st.cpu.Microseconds())/float64(b.N), "cpu-us/"+st.name)
		}
	}
}

// BenchmarkLifecycleParallel runs BenchmarkLifecycle's writes (CreateOnce, Activate, Claim, Finish) from
// 16 goroutines per CPU, as the services of one process do under load. The writes that queue while a
// transaction runs share the next one: it reports the process's CPU time per image (cpu-us/image) and
// the writes per transaction (writes/txn).
func BenchmarkLifecycleParallel(b *testing.B) {
	s, _ := openSettled(b)
	defer closeStore(b, s)
	ctx := context.Background()
	var keys atomic.Int64
	batches, written := s.writes.batches.Load(), s.writes.written.Load()
	c0, _ := processCPU()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t, _, err := s.CreateOnce(ctx, taskstore.CreateParams{Pending: true, Owner: "u"},
				"key-"+strconv.FormatInt(keys.Add(1), 10), time.Hour)
			if err == nil {
				err = s.Activate(ctx, t.ID, 10_000)
			}
			var c taskstore.Task
			if err == nil {
				// Another goroutine's task, maybe: each claims one and finishes it.
				c, err = s.Claim(ctx, time.Hour)
			}
			if err == nil {
				_, err = s.Finish(ctx, c.ID, c.Token)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	c1, _ := processCPU()
	b.ReportMetric(float64((c1-c0).Microseconds())/float64(b.N), "cpu-us/image")
	txns := s.writes.batches.Load() - batches
	b.ReportMetric(float64(s.writes.written.Load()-written)/float64(max(txns, 1)), "writes/txn")
}
