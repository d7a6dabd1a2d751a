package database_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/servicetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	longLease  = time.Minute
	shortLease = 50 * time.Millisecond
	noTask     = "Error: No non-started task."
)

type dbServer struct {
	t         *testing.T
	url       string
	c         *http.Client
	closeDone func() // closes the done channel given to NewServer (service shutdown)
}

// serve runs the database service over a SQLite store at path, wrapped as production wraps it. The done
// channel is closed, then the server, client and store are closed when the test ends.
func serve(t *testing.T, path string, lease time.Duration) *dbServer {
	t.Helper()
	url, closeDone := servicetest.ServeDatabase(t, path, lease)
	return &dbServer{t: t, url: url, c: servicetest.NewHTTPClient(t), closeDone: closeDone}
}

func newDB(t *testing.T, lease time.Duration) *dbServer {
	return serve(t, filepath.Join(t.TempDir(), "tasks.db"), lease)
}

// send makes one request and checks what every reply must carry (see servicetest.ConventionError); it is
// safe to use from any goroutine.
func (s *dbServer) send(method, path string, query url.Values, body string) (servicetest.Reply, error) {
	u := s.url + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := servicetest.Send(context.Background(), s.c, method, u, rd)
	if err != nil {
		return r, err
	}
	return r, servicetest.ConventionError(method, path, r)
}

func (s *dbServer) call(method, path string, query url.Values, body string) servicetest.Reply {
	s.t.Helper()
	r, err := s.send(method, path, query, body)
	if err != nil {
		s.t.Fatal(err)
	}
	return r
}

func (s *dbServer) expect(method, path string, query url.Values, body string, status int, want string) {
	s.t.Helper()
	r := s.call(method, path, query, body)
	if r.Status != status || r.Body != want {
		s.t.Errorf("%s %s?%s %s = %d %q, want %d %q", method, path, query.Encode(), body, r.Status, r.Body, status, want)
	}
}

func idQuery(id int64) url.Values { return url.Values{"id": {strconv.FormatInt(id, 10)}} }

func (s *dbServer) newTask(pending bool) int64 {
	s.t.Helper()
	var q url.Values
	if pending {
		q = url.Values{"pending": {"true"}}
	}
	r := s.call("POST", "/newTask", q, "")
	if r.Status != 200 {
		s.t.Fatalf("POST /newTask = %d %q", r.Status, r.Body)
	}
	id, err := strconv.ParseInt(r.Body, 10, 64)
	if err != nil {
		s.t.Fatalf("POST /newTask answered %q, not an id", r.Body)
	}
	return id
}

// task is the task JSON of the wire API.
type task struct {
	ID         *int64     `json:"id"`
	State      *int       `json:"state"`
	Attempts   int        `json:"attempts"`
	CreatedAt  *time.Time `json:"createdAt"`
	StartedAt  *time.Time `json:"startedAt"`
	FinishedAt *time.Time `json:"finishedAt"`
}

func parseTask(t *testing.T, body string) task {
	t.Helper()
	var tk task
	if err := json.Unmarshal([]byte(body), &tk); err != nil {
		t.Fatalf("task JSON %q: %v", body, err)
	}
	if tk.ID == nil || tk.State == nil {
		t.Fatalf("task JSON %q lacks id or state", body)
	}
	return tk
}

// wantTask checks a task reply: 200, JSON starting with the reference fields in order.
func wantTask(t *testing.T, r servicetest.Reply, id int64, state int) task {
	t.Helper()
	if r.Status != 200 {
		t.Fatalf("got %d %q, want task %d", r.Status, r.Body, id)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	prefix := fmt.Sprintf(`{"id":%d,"state":%d`, id, state)
	if !strings.HasPrefix(r.Body, prefix) {
		t.Errorf("task JSON %q does not start with %s", r.Body, prefix)
	}
	return parseTask(t, r.Body)
}

func (s *dbServer) getByID(id int64, state int) task {
	s.t.Helper()
	return wantTask(s.t, s.call("GET", "/getById", idQuery(id), ""), id, state)
}

func (s *dbServer) claim(id int64) task {
	s.t.Helper()
	return wantTask(s.t, s.call("POST", "/getNewTask", nil, ""), id, 1)
}

func (s *dbServer) expectNoTask() {
	s.t.Helper()
	s.expect("POST", "/getNewTask", nil, "", 400, noTask)
}

// poll starts a long poll on /getNewTask and returns its eventual reply.
func (s *dbServer) poll(wait string) <-chan pollResult {
	ch := make(chan pollResult, 1)
	start := time.Now()
	go func() {
		r, err := s.send("POST", "/getNewTask", url.Values{"wait": {wait}}, "")
		ch <- pollResult{r, err, time.Since(start)}
	}()
	return ch
}

type pollResult struct {
	r       servicetest.Reply
	err     error
	elapsed time.Duration
}

func receive(t *testing.T, ch <-chan pollResult, within time.Duration) pollResult {
	t.Helper()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatalf("long poll: %v", res.err)
		}
		return res
	case <-time.After(within):
		t.Fatalf("long poll did not answer within %v", within)
		panic("unreachable")
	}
}

// stillPending checks that a long poll has not answered yet.
func stillPending(t *testing.T, ch <-chan pollResult) {
	t.Helper()
	select {
	case res := <-ch:
		t.Fatalf("long poll answered early: %d %q (%v)", res.r.Status, res.r.Body, res.err)
	case <-time.After(200 * time.Millisecond):
	}
}

func TestIDsConsecutive(t *testing.T) {
	db := newDB(t, longLease)
	for want := int64(0); want < 3; want++ {
		if id := db.newTask(want == 1); id != want {
			t.Fatalf("newTask = %d, want %d", id, want)
		}
	}
	r := db.call("POST", "/newTask", nil, "")
	if r.Status != 200 || r.Body != "3" {
		t.Fatalf("POST /newTask = %d %q, want 200 \"3\"", r.Status, r.Body)
	}

	// Concurrent creations still get consecutive ids.
	const n = 12
	ids := make(chan int64, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r, err := db.send("POST", "/newTask", nil, "")
			if err != nil || r.Status != 200 {
				t.Errorf("POST /newTask = %+v, %v", r, err)
				return
			}
			id, _ := strconv.ParseInt(r.Body, 10, 64)
			ids <- id
		})
	}
	wg.Wait()
	close(ids)
	var got []int64
	for id := range ids {
		got = append(got, id)
	}
	slices.Sort(got)
	for i, id := range got {
		if id != int64(4+i) {
			t.Fatalf("concurrent ids = %v, want 4..%d", got, 4+n-1)
		}
	}
	if len(got) != n {
		t.Fatalf("got %d ids, want %d", len(got), n)
	}
	db.getByID(4+n-1, 0)
}

func TestNewTaskPendingParam(t *testing.T) {
	db := newDB(t, longLease)
	db.expect("POST", "/newTask", url.Values{"pending": {"maybe"}}, "", 400, `Error: pending must be true or false, got "maybe"`)
	db.expect("POST", "/newTask", url.Values{"pending": {"false"}}, "", 200, "0")
	db.expect("POST", "/newTask", url.Values{"pending": {"true"}}, "", 200, "1")
	db.claim(0)
	db.expectNoTask()
}

func TestGetByID(t *testing.T) {
	db := newDB(t, longLease)
	db.newTask(false)
	tk := db.getByID(0, 0)
	if tk.Attempts != 0 || tk.CreatedAt == nil || tk.StartedAt != nil || tk.FinishedAt != nil {
		t.Errorf("new task = %+v", tk)
	}
	db.expect("GET", "/getById", idQuery(1), "", 400, "Error: no task with id 1")
	db.expect("GET", "/getById", nil, "", 400, "Error: missing id parameter")
	db.expect("GET", "/getById", url.Values{"id": {"x"}}, "", 400, `Error: id must be a non-negative decimal integer, got "x"`)
	db.expect("GET", "/getById", url.Values{"id": {"-1"}}, "", 400, `Error: id must be a non-negative decimal integer, got "-1"`)
}

func TestClaimsAreFIFO(t *testing.T) {
	db := newDB(t, longLease)
	db.expectNoTask()
	for range 3 {
		db.newTask(false)
	}
	for id := int64(0); id < 3; id++ {
		tk := db.claim(id)
		if tk.Attempts != 1 || tk.StartedAt == nil || tk.StartedAt.IsZero() {
			t.Errorf("claimed task = %+v, want attempts 1 and a start time", tk)
		}
	}
	db.expectNoTask()
	db.getByID(1, 1)

	// A task created later goes behind, and one put back goes by id order.
	db.newTask(false)
	db.expect("POST", "/setById", nil, `{"id":1,"state":0}`, 200, "success")
	db.claim(1)
	db.claim(3)
	db.expectNoTask()
}

func TestPendingNotClaimableUntilActivated(t *testing.T) {
	db := newDB(t, longLease)
	db.newTask(true)  // 0, pending
	db.newTask(false) // 1
	db.getByID(0, 0)
	db.claim(1)
	db.expectNoTask()

	db.expect("POST", "/activateTask", idQuery(0), "", 200, "success")
	db.claim(0)
	db.expectNoTask()
	// Activating an active task is a no-op.
	db.expect("POST", "/activateTask", idQuery(0), "", 200, "success")
	db.getByID(0, 1)

	db.expect("POST", "/activateTask", idQuery(7), "", 400, "Error: no task with id 7")
	db.expect("POST", "/activateTask", nil, "", 400, "Error: missing id parameter")
}

func TestLongPollGetsTaskCreatedDuringWait(t *testing.T) {
	db := newDB(t, longLease)
	ch := db.poll("10s")
	stillPending(t, ch)
	created := time.Now()
	id := db.newTask(false)
	res := receive(t, ch, 15*time.Second)
	wantTask(t, res.r, id, 1)
	// Well under the 10s wait; the bound is loose because the machine is noisy.
	if since := time.Since(created); since > 5*time.Second {
		t.Errorf("long poll answered %v after the task was created", since)
	}
	db.getByID(id, 1)
}

func TestLongPollGetsActivatedTask(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(true)
	ch := db.poll("10s")
	stillPending(t, ch)
	db.expect("POST", "/activateTask", idQuery(id), "", 200, "success")
	res := receive(t, ch, 15*time.Second)
	wantTask(t, res.r, id, 1)
	if res.elapsed > 8*time.Second {
		t.Errorf("long poll took %v", res.elapsed)
	}
}

func TestLongPollGetsRequeuedTask(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(false)
	db.claim(id)
	ch := db.poll("10s")
	stillPending(t, ch)
	db.expect("POST", "/setById", nil, fmt.Sprintf(`{"id":%d,"state":0}`, id), 200, "success")
	res := receive(t, ch, 15*time.Second)
	if tk := wantTask(t, res.r, id, 1); tk.Attempts != 2 {
		t.Errorf("requeued task claimed with attempts %d, want 2", tk.Attempts)
	}
}

func TestLongPollTimesOut(t *testing.T) {
	db := newDB(t, longLease)
	start := time.Now()
	db.expect("POST", "/getNewTask", url.Values{"wait": {"200ms"}}, "", 400, noTask)
	if elapsed := time.Since(start); elapsed < 200*time.Millisecond {
		t.Errorf("wait=200ms answered after %v, before the wait was over", elapsed)
	} else if elapsed > 10*time.Second {
		t.Errorf("wait=200ms answered after %v", elapsed)
	}
	db.expect("POST", "/getNewTask", url.Values{"wait": {"0"}}, "", 400, noTask)

	// A pending task does not end the wait.
	db.newTask(true)
	db.expect("POST", "/getNewTask", url.Values{"wait": {"200ms"}}, "", 400, noTask)
}

func TestBadWait(t *testing.T) {
	db := newDB(t, longLease)
	db.newTask(false)
	for _, tt := range []struct{ wait, body string }{
		{"abc", `Error: wait must be a duration like 10s, got "abc"`},
		{"-1s", "Error: wait must be between 0 and 1m0s"},
		{"61s", "Error: wait must be between 0 and 1m0s"},
		{"3600", "Error: wait must be between 0 and 1m0s"},
		{"18446744074", "Error: wait must be between 0 and 1m0s"},
	} {
		db.expect("POST", "/getNewTask", url.Values{"wait": {tt.wait}}, "", 400, tt.body)
	}
	// Nothing was claimed by the refused polls; whole seconds are accepted.
	r := db.call("POST", "/getNewTask", url.Values{"wait": {"1"}}, "")
	wantTask(t, r, 0, 1)
}

func TestDoneEndsLongPoll(t *testing.T) {
	db := newDB(t, longLease)
	ch := db.poll("30s")
	stillPending(t, ch)
	db.closeDone()
	res := receive(t, ch, 5*time.Second)
	if res.r.Status != 400 || res.r.Body != noTask {
		t.Errorf("long poll at shutdown = %d %q, want 400 %q", res.r.Status, res.r.Body, noTask)
	}
	// A new long poll does not hang on a server shutting down.
	res = receive(t, db.poll("30s"), 5*time.Second)
	if res.r.Status != 400 || res.r.Body != noTask {
		t.Errorf("long poll after shutdown = %d %q, want 400 %q", res.r.Status, res.r.Body, noTask)
	}
}

func TestLeaseExpiry(t *testing.T) {
	db := newDB(t, shortLease)
	id := db.newTask(false)
	if tk := db.claim(id); tk.Attempts != 1 {
		t.Fatalf("first claim attempts = %d, want 1", tk.Attempts)
	}

	// Once the lease lapses the task reads as not started...
	time.Sleep(2 * shortLease)
	var r servicetest.Reply
	if !servicetest.PollFor(5*time.Second, func() bool {
		r = db.call("GET", "/getById", idQuery(id), "")
		return *parseTask(t, r.Body).State == 0
	}) {
		t.Fatalf("task still in progress long after its %v lease: %s", shortLease, r.Body)
	}
	wantTask(t, r, id, 0)
	// ...the late worker may not finish it...
	db.expect("POST", "/finishTask", idQuery(id), "", 400, fmt.Sprintf("Error: task %d is not in progress", id))
	// ...and it is handed out again.
	if tk := db.claim(id); tk.Attempts != 2 {
		t.Errorf("second claim attempts = %d, want 2", tk.Attempts)
	}

	// A long poll notices a lapsed lease without anybody signalling it.
	res := receive(t, db.poll("10s"), 15*time.Second)
	if tk := wantTask(t, res.r, id, 1); tk.Attempts != 3 {
		t.Errorf("claim by long poll attempts = %d, want 3", tk.Attempts)
	}
}

func TestFinishTask(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(false)
	notInProgress := fmt.Sprintf("Error: task %d is not in progress", id)
	db.expect("POST", "/finishTask", idQuery(id), "", 400, notInProgress)
	db.claim(id)
	db.expect("POST", "/finishTask", idQuery(id), "", 200, "success")
	tk := db.getByID(id, 2)
	if tk.FinishedAt == nil || tk.FinishedAt.IsZero() {
		t.Errorf("finished task has no finish time: %+v", tk)
	}
	db.expect("POST", "/finishTask", idQuery(id), "", 400, notInProgress)
	db.expectNoTask()

	db.expect("POST", "/finishTask", idQuery(42), "", 400, "Error: no task with id 42")
	db.expect("POST", "/finishTask", nil, "", 400, "Error: missing id parameter")
	db.expect("POST", "/finishTask", url.Values{"id": {"1e3"}}, "", 400, `Error: id must be a non-negative decimal integer, got "1e3"`)
}

func TestSetByID(t *testing.T) {
	db := newDB(t, longLease)
	db.newTask(false) // 0
	db.newTask(false) // 1

	tests := []struct {
		name   string
		body   string
		status int
		want   string // exact reply, or a prefix when ending in "..."
	}{
		{"finished", `{"id":0,"state":2}`, 200, "success"},
		{"in progress", `{"id":1,"state":1}`, 200, "success"},
		{"extra fields", `{"id":0,"state":2,"attempts":9,"whatever":"x"}`, 200, "success"},
		{"empty body", ``, 400, `Error: body must be task JSON like {"id":0,"state":1}: ...`},
		{"not JSON", `id=0&state=1`, 400, `Error: body must be task JSON like {"id":0,"state":1}: ...`},
		{"truncated", `{"id":0,"sta`, 400, `Error: body must be task JSON like {"id":0,"state":1}: ...`},
		{"string id", `{"id":"0","state":1}`, 400, `Error: body must be task JSON like {"id":0,"state":1}: ...`},
		{"fractional id", `{"id":0.5,"state":1}`, 400, `Error: body must be task JSON like {"id":0,"state":1}: ...`},
		{"string state", `{"id":0,"state":"finished"}`, 400, `Error: body must be task JSON like {"id":0,"state":1}: ...`},
		{"array", `[0,1]`, 400, `Error: body must be task JSON like {"id":0,"state":1}: ...`},
		{"no id", `{"state":1}`, 400, "Error: task JSON needs a non-negative id"},
		{"null id", `{"id":null,"state":1}`, 400, "Error: task JSON needs a non-negative id"},
		{"negative id", `{"id":-1,"state":1}`, 400, "Error: task JSON needs a non-negative id"},
		{"no state", `{"id":0}`, 400, "Error: task JSON needs a state of 0, 1 or 2"},
		{"state 3", `{"id":0,"state":3}`, 400, "Error: task JSON needs a state of 0, 1 or 2"},
		{"state -1", `{"id":0,"state":-1}`, 400, "Error: task JSON needs a state of 0, 1 or 2"},
		{"unknown id", `{"id":99,"state":1}`, 400, "Error: no task with id 99"},
		{"empty object", `{}`, 400, "Error: task JSON needs a non-negative id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := db.call("POST", "/setById", nil, tt.body)
			ok := r.Status == tt.status && r.Body == tt.want
			if prefix, cut := strings.CutSuffix(tt.want, "..."); cut {
				ok = r.Status == tt.status && strings.HasPrefix(r.Body, prefix) && len(r.Body) > len(prefix)
			}
			if !ok {
				t.Errorf("POST /setById %s = %d %q, want %d %q", tt.body, r.Status, r.Body, tt.status, tt.want)
			}
		})
	}
	// Only the accepted bodies changed anything.
	db.getByID(0, 2)
	db.getByID(1, 1)
	db.expectNoTask()

	// Back to not started: claimable again.
	db.expect("POST", "/setById", nil, `{"id":0,"state":0}`, 200, "success")
	db.getByID(0, 0)
	db.claim(0)
}

func TestList(t *testing.T) {
	db := newDB(t, longLease)
	db.expect("GET", "/list", nil, "", 200, "")
	for range 4 {
		db.newTask(false)
	}
	db.newTask(true) // 4: pending, reads as not started
	db.claim(0)
	db.claim(1)
	db.expect("POST", "/finishTask", idQuery(0), "", 200, "success")

	r := db.call("GET", "/list", nil, "")
	if r.Status != 200 {
		t.Fatalf("GET /list = %d %q", r.Status, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	if !strings.HasSuffix(r.Body, "\n") {
		t.Errorf("list %q does not end its last line", r.Body)
	}
	wantStates := []int{2, 1, 0, 0, 0}
	sc := bufio.NewScanner(strings.NewReader(r.Body))
	var n int
	for ; sc.Scan(); n++ {
		line := sc.Text()
		if n >= len(wantStates) {
			t.Fatalf("extra list line %q", line)
		}
		if !json.Valid([]byte(line)) {
			t.Fatalf("list line %d is not JSON: %q", n, line)
		}
		tk := parseTask(t, line)
		if *tk.ID != int64(n) || *tk.State != wantStates[n] {
			t.Errorf("list line %d = %s, want id %d state %d", n, line, n, wantStates[n])
		}
	}
	if n != len(wantStates) {
		t.Errorf("list has %d lines, want %d:\n%s", n, len(wantStates), r.Body)
	}
}

func TestTasksSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tasks.db")
	t.Run("first", func(t *testing.T) {
		db := serve(t, path, longLease)
		db.newTask(false)
		db.newTask(false)
		db.claim(0)
		db.expect("POST", "/finishTask", idQuery(0), "", 200, "success")
	})
	db := serve(t, path, longLease)
	db.getByID(0, 2)
	db.expect("POST", "/newTask", nil, "", 200, "2")
	db.claim(1)
}

func TestPlumbing(t *testing.T) {
	db := newDB(t, longLease)
	servicetest.CheckPlumbing(t, db.c, db.url, []servicetest.Route{
		{Method: "GET", Path: "/nope", Status: 404, Body: "Error: no endpoint /nope"},
		{Method: "GET", Path: "/newTask", Status: 405, Body: "Error: method GET not allowed on /newTask", Allow: "POST"},
		{Method: "GET", Path: "/getNewTask", Status: 405, Body: "Error: method GET not allowed on /getNewTask", Allow: "POST"},
		{Method: "GET", Path: "/finishTask", Status: 405, Body: "Error: method GET not allowed on /finishTask", Allow: "POST"},
		{Method: "GET", Path: "/setById", Status: 405, Body: "Error: method GET not allowed on /setById", Allow: "POST"},
		{Method: "GET", Path: "/activateTask", Status: 405, Body: "Error: method GET not allowed on /activateTask", Allow: "POST"},
		{Method: "POST", Path: "/getById", Status: 405, Body: "Error: method POST not allowed on /getById", Allow: "GET, HEAD"},
		{Method: "POST", Path: "/list", Status: 405, Body: "Error: method POST not allowed on /list", Allow: "GET, HEAD"},
	})
	servicetest.CheckEchoesRequestID(t, db.c, "POST", db.url+"/newTask", "db-req-9")
}
