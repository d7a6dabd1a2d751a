package worker_test

import (
	"bytes"
	"fmt"
	"image"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// Stand-ins of the reference design's master and storage, answering as that design does: the master
// passes its database's and storage's errors on with status 200 and an "Error: ..." body, ignores
// wait, and has no endpoint but the reference's (a plain http.ServeMux: "404 page not found" for the
// others); the storage answers an image it does not hold with 400 and the error of the file it could
// not open.

// refMaster is a stand-in of the reference design's master, with a queue of task ids.
type refMaster struct {
	mu    sync.Mutex
	queue []int64
	// finishErrors are the bodies /registerTaskFinished answers, with status 200, before "success".
	finishErrors []string
	claims       []time.Time // when each claim came
	finished     []int64     // the ids registered finished, in order
	seen         calls
}

func newRefMaster(t *testing.T, m *refMaster) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/getNewTask", func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.claims = append(m.claims, time.Now())
		if len(m.queue) == 0 {
			fmt.Fprint(w, "Error: "+wire.NoTaskMessage)
			return
		}
		fmt.Fprintf(w, `{"id":%d,"state":1}`, m.queue[0])
		m.queue = m.queue[1:]
	})
	mux.HandleFunc("/registerTaskFinished", func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if len(m.finishErrors) > 0 {
			fmt.Fprint(w, m.finishErrors[0])
			m.finishErrors = m.finishErrors[1:]
			return
		}
		id, _ := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
		m.finished = append(m.finished, id)
		fmt.Fprint(w, "success")
	})
	srv := httptest.NewServer(m.seen.wrap(mux))
	t.Cleanup(srv.Close)
	return srv
}

func (m *refMaster) add(id int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.queue = append(m.queue, id)
}

func (m *refMaster) finishedIDs() []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]int64(nil), m.finished...)
}

func (m *refMaster) claimTimes() []time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]time.Time(nil), m.claims...)
}

// refStorage is a stand-in of the reference design's storage: images in memory by state and id.
type refStorage struct {
	mu     sync.Mutex
	images map[string][]byte
	seen   calls
}

func newRefStorage(t *testing.T, s *refStorage) *httptest.Server {
	t.Helper()
	s.images = map[string][]byte{}
	mux := http.NewServeMux()
	mux.HandleFunc("/sendImage", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		s.put(r.URL.Query().Get("state"), r.URL.Query().Get("id"), b)
		fmt.Fprint(w, "success")
	})
	mux.HandleFunc("/getImage", func(w http.ResponseWriter, r *http.Request) {
		state, id := r.URL.Query().Get("state"), r.URL.Query().Get("id")
		b, ok := s.get(state, id)
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "Error: open data/%s/%s: no such file or directory", state, id)
			return
		}
		w.Write(b)
	})
	srv := httptest.NewServer(s.seen.wrap(mux))
	t.Cleanup(srv.Close)
	return srv
}

func (s *refStorage) put(state, id string, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.images[state+"/"+id] = b
}

func (s *refStorage) get(state, id string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.images[state+"/"+id]
	return b, ok
}

// store puts img as the working image of task id, as the reference master does after creating the task.
func (s *refStorage) store(t *testing.T, id int64, img image.Image) {
	s.put(wire.WorkingImage, strconv.FormatInt(id, 10), servicetest.EncodePNG(t, img))
}

// checkSwappedResult checks the finished image the stand-in storage holds for task id.
func (s *refStorage) checkSwappedResult(t *testing.T, id int64, orig image.Image) {
	t.Helper()
	out, ok := s.get(wire.FinishedImage, strconv.FormatInt(id, 10))
	if !ok {
		t.Fatalf("task %d has no finished image", id)
	}
	result, _ := decode(t, "result", out)
	if err := testimage.CheckSwapped(orig, result); err != nil {
		t.Errorf("task %d: %v", id, err)
	}
}

// logLines is a log that a test reads back.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// matching returns the lines of the log that contain every one of parts.
func (l *logLines) matching(parts ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for line := range strings.Lines(l.buf.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// referenceWorker starts a worker against the stand-ins, logging into log.
func referenceWorker(t *testing.T, m, st *httptest.Server, concurrency int, log *logLines) func() {
	t.Helper()
	hc := servicetest.NewHTTPClient(t)
	return startWorker(t, worker.Config{
		Master:      client.NewMaster(hc, client.Static(servicetest.Addr(m.URL))),
		Storage:     client.NewStorage(hc, client.Static(servicetest.Addr(st.URL))),
		Concurrency: concurrency, Logger: log.logger(),
	})
}

// TestWorkerIdleAtReferenceMaster: the reference master's "no task" (200 "Error: No non-started task.")
// is no task, not a failed claim: no WARN, and the worker asks again at least every second or so, so
// that work added later is taken at once.
func TestWorkerIdleAtReferenceMaster(t *testing.T) {
	m := &refMaster{}
	st := &refStorage{}
	mSrv, stSrv := newRefMaster(t, m), newRefStorage(t, st)
	var log logLines
	stop := referenceWorker(t, mSrv, stSrv, 1, &log)

	const idleFor = 5 * time.Second
	time.Sleep(idleFor)
	claims := m.claimTimes()
	// Without a long poll, the worker backs off to asking once a second; waiting longer would leave new
	// work waiting (the worker used to back off to 5 s). The bound leaves room for a busy machine.
	var longest time.Duration
	for i := 1; i < len(claims); i++ {
		longest = max(longest, claims[i].Sub(claims[i-1]))
	}
	t.Logf("%d claims in %v, longest gap %v", len(claims), idleFor, longest)
	if longest > 2500*time.Millisecond {
		t.Errorf("longest gap between two claims %v, want about a second at most", longest)
	}
	if len(claims) > 60 {
		t.Errorf("%d claims in %v: the worker spins on the reference master", len(claims), idleFor)
	}

	img := testimage.Pattern(12, 3)
	st.store(t, 4, img)
	added := time.Now()
	m.add(4)
	poll(t, "task 4 registered finished", func() bool { return len(m.finishedIDs()) == 1 })
	took := time.Since(added)
	t.Logf("new task finished %v after it was added", took)
	if took > 3*time.Second {
		t.Errorf("new task finished %v after it was added: the idle worker noticed it late", took)
	}
	stop()
	st.checkSwappedResult(t, 4, img)
	if warns := log.matching("level=WARN"); len(warns) != 0 {
		t.Errorf("WARN lines while idle at a reference master:\n%s", strings.Join(warns, ""))
	}
	if n := m.seen.count("/failTask"); n != 0 {
		t.Errorf("%d calls of /failTask", n)
	}
}

// TestWorkerReferenceMasterFinishErrors: /registerTaskFinished refusals come as 200 "Error: ...". One
// that says a peer was unreachable is transient and retried until the master answers "success"; one
// that says the task is not found is permanent, not retried.
func TestWorkerReferenceMasterFinishErrors(t *testing.T) {
	for _, tc := range []struct {
		name       string
		errors     []string
		wantCalls  int
		wantFinish bool
	}{
		{"transient", []string{
			`Error: Post "http://127.0.0.1:3002/finishTask?id=1": dial tcp 127.0.0.1:3002: connect: connection refused`,
			"Error: database is locked",
		}, 3, true},
		{"permanent", []string{"Error: task not found"}, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &refMaster{queue: []int64{1}, finishErrors: tc.errors}
			st := &refStorage{}
			mSrv, stSrv := newRefMaster(t, m), newRefStorage(t, st)
			img := testimage.Pattern(10, 8)
			st.store(t, 1, img)
			var log logLines
			stop := referenceWorker(t, mSrv, stSrv, 1, &log)
			poll(t, "the register finished calls", func() bool { return m.seen.count("/registerTaskFinished") >= tc.wantCalls })
			if tc.wantFinish {
				poll(t, "task 1 registered finished", func() bool { return len(m.finishedIDs()) == 1 })
			} else {
				poll(t, "the failed register logged", func() bool { return len(log.matching("register finished failed")) == 1 })
			}
			stop()
			if n := m.seen.count("/registerTaskFinished"); n != tc.wantCalls {
				t.Errorf("%d calls of /registerTaskFinished, want %d", n, tc.wantCalls)
			}
			st.checkSwappedResult(t, 1, img)
			if n := m.seen.count("/failTask"); n != 0 {
				t.Errorf("%d calls of /failTask", n)
			}
		})
	}
}

// TestWorkerWaitsForReferenceWorkingImage: the reference master creates a task before it stores its
// image, so a worker can claim a task whose image is not there yet (400 "Error: open ...: no such file
// or directory" from the reference storage). The worker asks again over a few seconds, and processes
// the image when it appears.
func TestWorkerWaitsForReferenceWorkingImage(t *testing.T) {
	m := &refMaster{queue: []int64{7}}
	st := &refStorage{}
	mSrv, stSrv := newRefMaster(t, m), newRefStorage(t, st)
	var log logLines
	stop := referenceWorker(t, mSrv, stSrv, 1, &log)
	poll(t, "the first fetch of the working image", func() bool { return st.seen.count("/getImage") >= 1 })
	time.Sleep(time.Second)
	img := testimage.Pattern(14, 5)
	st.store(t, 7, img)
	poll(t, "task 7 registered finished", func() bool { return len(m.finishedIDs()) == 1 })
	stop()
	st.checkSwappedResult(t, 7, img)
	if n := st.seen.count("/getImage"); n < 2 {
		t.Errorf("%d fetches of the working image, want it asked for again", n)
	}
	if n := m.seen.count("/failTask"); n != 0 {
		t.Errorf("%d calls of /failTask", n)
	}
	if warns := log.matching("level=WARN"); len(warns) != 0 {
		t.Errorf("WARN lines:\n%s", strings.Join(warns, ""))
	}
}

// TestWorkerLeavesUnreportableTaskToItsLease: a working image that never appears fails the attempt
// after a few tries; the reference master has no /failTask, so the task is left to its lease. The
// missing endpoint is logged once at INFO, however many tasks meet it.
func TestWorkerLeavesUnreportableTaskToItsLease(t *testing.T) {
	m := &refMaster{queue: []int64{8, 9}}
	st := &refStorage{}
	mSrv, stSrv := newRefMaster(t, m), newRefStorage(t, st)
	var log logLines
	stop := referenceWorker(t, mSrv, stSrv, 2, &log)
	poll(t, "both tasks given up", func() bool { return len(log.matching("left to its lease: the master cannot be told")) == 2 })
	stop()
	if n := m.seen.count("/failTask"); n != 2 {
		t.Errorf("%d calls of /failTask, want one per task", n)
	}
	for _, id := range []string{"8", "9"} {
		n := 0
		for _, q := range st.seen.queries("/getImage") {
			if q.Get("id") == id {
				n++
			}
		}
		if n != 5 {
			t.Errorf("task %s: %d fetches of the working image, want 5", id, n)
		}
	}
	if got := log.matching("level=INFO", "has no /failTask"); len(got) != 1 {
		t.Errorf("%d INFO lines about the missing /failTask, want 1:\n%s", len(got), strings.Join(got, ""))
	}
	if got := log.matching("reporting failure failed"); len(got) != 0 {
		t.Errorf("the missing endpoint reported as a failure:\n%s", strings.Join(got, ""))
	}
	if got := m.finishedIDs(); len(got) != 0 {
		t.Errorf("tasks %v registered finished without an image", got)
	}
}
