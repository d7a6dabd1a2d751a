package memory

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/worker"
)

// The memory-amplification attack: a PNG of a few hundred KB that decodes to 50 MP at 16 bits per
// channel (400 MB), through a chain that holds several images of that size at once.
const (
	attackSide = 7071
	attackOp   = "rotate:90,blur:6,sharpen:10,rotate:90,blur:6,sharpen:10"
)

// TestWorkerMemoryBudget runs a worker with two slots and a --max-memory that fits one attack task
// but not two, submits two of them at once, and checks that the worker's resident set stays under the
// budget all along (sampled from /proc, VmHWM where the kernel lets us reset it) and both finish: the
// second waits for the first's memory instead of running beside it.
func TestWorkerMemoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("the memory budget test is not run with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	if raceEnabled() {
		t.Skip("a worker's memory is not measured under the race detector (its shadow memory grows with the heap)")
	}
	attack := streamPNG{width: attackSide, height: attackSide, depth: 16, flat: true}
	// The budget: the worker's own share and room for one task's estimated peak and a half.
	src := attack.open()
	h, _, err := imageop.ReadHeader(src, 0)
	src.Close()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := imageop.ParseChain(attackOp)
	if err != nil {
		t.Fatal(err)
	}
	need := chain.Estimate(h).Memory
	budget := worker.BaseMemory + need*3/2
	t.Logf("each task is estimated to need %s; --max-memory %s", memMiB(need), memMiB(budget))

	d := deploytest.New(t)
	// The master admits the task (its own per-task bound is not what is tested here): the worker's
	// budget must hold two such tasks to one at a time.
	d.MasterArgs = []string{"--max-task-memory", strconv.FormatInt(need*2, 10)}
	d.StartBackends()
	m := d.Master()
	d.StartWorker("worker", "--concurrency", "2", "--max-memory", strconv.FormatInt(budget, 10), "--log-level", "debug")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	warm := streamPNG{width: 64, height: 64, depth: 8, seed: 3}
	if st := memWaitSettled(ctx, t, m, uploadOp(ctx, t, m, warm, "")); st.State != "finished" {
		t.Fatalf("small image: %+v", st)
	}

	start := time.Now()
	watch := watchRSS(t, d, "worker")
	ids := make([]int64, 2)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() { ids[i] = uploadOp(ctx, t, m, attack, attackOp) })
	}
	wg.Wait()
	if t.Failed() {
		watch.finish(t)
		return
	}
	for _, id := range ids {
		st := memWaitSettled(ctx, t, m, id)
		if st.State != "finished" {
			t.Errorf("task %d = %+v, want finished", id, st)
			if strings.Contains(st.Error, "budget") {
				t.Errorf("the budget was meant to fit one task: the estimate changed?")
			}
		}
	}
	watch.finish(t)
	peak := watch.peak[0] << 10
	t.Logf("two attack tasks took %v; worker peak RSS %s, budget %s", time.Since(start).Round(time.Second), memMiB(peak), memMiB(budget))
	if peak >= budget {
		t.Errorf("the worker's resident set reached %s, over its --max-memory of %s", memMiB(peak), memMiB(budget))
	}
	// The Go soft memory limit alone could keep the peak down by collecting hard; the budget's own
	// effect is that the two never ran at once: one's image work ended before the other's started.
	var events []string
	for line := range strings.Lines(d.Log("worker")) {
		for _, id := range ids {
			task := " task=" + strconv.FormatInt(id, 10) + " "
			switch {
			case strings.Contains(line, `msg="image work started"`) && strings.Contains(line, task):
				events = append(events, "start")
			case strings.Contains(line, `msg="image work ended"`) && strings.Contains(line, task):
				events = append(events, "end")
			}
		}
	}
	if got := strings.Join(events, ","); got != "start,end,start,end" {
		t.Errorf("the worker's log shows the two tasks' image work as %s, want start,end,start,end: they overlapped", got)
	}
}

// uploadOp uploads s through the master with the operation chain op and returns the task's id.
func uploadOp(ctx context.Context, t *testing.T, m *client.Master, s streamPNG, op string) int64 {
	t.Helper()
	src := s.open()
	defer src.Close()
	up, err := m.Upload(ctx, src, -1, client.UploadParams{Op: op})
	if err != nil {
		t.Errorf("upload %dx%d: %v", s.width, s.height, err)
	}
	return up.ID
}
