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

	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
	"github.com/imgmill/imgmill/internal/wire"
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
	return servePolicy(t, path, database.Policy{Lease: lease})
}

func servePolicy(t *testing.T, path string, policy database.Policy) *dbServer {
	t.Helper()
	url, closeDone := servicetest.ServeDatabase(t, path, policy)
	return &dbServer{t: t, url: url, c: servicetest.NewHTTPClient(t), closeDone: closeDone}
}

func newDB(t *testing.T, lease time.Duration) *dbServer {
	return serve(t, filepath.Join(t.TempDir(), "tasks.db"), lease)
}

func newDBPolicy(t *testing.T, policy database.Policy) *dbServer {
	return servePolicy(t, filepath.Join(t.TempDir(), "tasks.db"), policy)
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
	ID          *int64     `json:"id"`
	State       *int       `json:"state"`
	Token       int64      `json:"token"`
	Attempts    int        `json:"attempts"`
	MaxAttempts int        `json:"maxAttempts"`
	Error       string     `json:"error"`
	CreatedAt   *time.Time `json:"createdAt"`
	StartedAt   *time.Time `json:"startedAt"`
	FinishedAt  *time.Time `json:"finishedAt"`
	LeaseUntil  *time.Time `json:"leaseUntil"`
	RetryAt     *time.Time `json:"retryAt"`
	Retries     int        `json:"retries"`
	Pending     bool       `json:"pending"`
	Name        string     `json:"name"`
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
	db.newTask(false) // 2

	tests := []struct {
		name   string
		body   string
		status int
		want   string // exact reply, or a prefix when ending in "..."
	}{
		{"finished", `{"id":0,"state":2}`, 200, "success"},
		{"in progress", `{"id":1,"state":1}`, 200, "success"},
		// The task JSON's own fields may come along (a task sent back as read), and are ignored.
		{"the task's other fields", `{"id":0,"state":2,"attempts":9,"op":"swap","createdAt":"2026-01-02T03:04:05Z"}`, 200, "success"},
		// A field the task JSON does not have is a mistake, and a key given twice a trick: with the last
		// one winning, {"id":0,...,"id":2} would set task 2 past a check that reads the first.
		{"unknown field", `{"id":0,"state":2,"whatever":"x"}`, 400, `Error: body must be task JSON like {"id":0,"state":1}: json: unknown field "whatever"`},
		{"duplicate id", `{"id":0,"state":3,"id":2}`, 400, `Error: body must be task JSON like {"id":0,"state":1}: the key "id" is given twice`},
		{"trailing data", `{"id":0,"state":2} {"id":2,"state":3}`, 400, `Error: body must be task JSON like {"id":0,"state":1}: unexpected data after the JSON object`},
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
		{"failed", `{"id":2,"state":3}`, 200, "success"},
		{"no state", `{"id":0}`, 400, "Error: task JSON needs a state of 0, 1, 2 or 3"},
		{"state 4", `{"id":0,"state":4}`, 400, "Error: task JSON needs a state of 0, 1, 2 or 3"},
		{"state -1", `{"id":0,"state":-1}`, 400, "Error: task JSON needs a state of 0, 1, 2 or 3"},
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
	if tk := db.getByID(1, 1); tk.Token != 1 || tk.Attempts != 1 || tk.LeaseUntil == nil {
		t.Errorf("task set in progress = %+v, want a claim: token 1, attempt 1, a lease", tk)
	}
	if tk := db.getByID(2, 3); tk.Error != "set to failed" || tk.FinishedAt == nil {
		t.Errorf("task set failed = %+v, want error \"set to failed\" and a finish time", tk)
	}
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
		{Method: "GET", Path: "/extendLease", Status: 405, Body: "Error: method GET not allowed on /extendLease", Allow: "POST"},
		{Method: "GET", Path: "/failTask", Status: 405, Body: "Error: method GET not allowed on /failTask", Allow: "POST"},
		{Method: "GET", Path: "/releaseTask", Status: 405, Body: "Error: method GET not allowed on /releaseTask", Allow: "POST"},
		{Method: "GET", Path: "/setById", Status: 405, Body: "Error: method GET not allowed on /setById", Allow: "POST"},
		{Method: "GET", Path: "/activateTask", Status: 405, Body: "Error: method GET not allowed on /activateTask", Allow: "POST"},
		{Method: "POST", Path: "/getById", Status: 405, Body: "Error: method POST not allowed on /getById", Allow: "GET, HEAD"},
		{Method: "POST", Path: "/list", Status: 405, Body: "Error: method POST not allowed on /list", Allow: "GET, HEAD"},
		{Method: "POST", Path: "/stats", Status: 405, Body: "Error: method POST not allowed on /stats", Allow: "GET, HEAD"},
	})
	servicetest.CheckEchoesRequestID(t, db.c, "POST", db.url+"/newTask", "db-req-9")
}

// Lifecycle additions: fencing tokens, lease renewal, failures, releases, attempt limits.

func tokenQuery(id, token int64) url.Values {
	q := idQuery(id)
	q.Set("token", strconv.FormatInt(token, 10))
	return q
}

// failQuery is the query of a failTask call by the holder of tk.
func failQuery(tk task, reason string, permanent bool) url.Values {
	q := tokenQuery(*tk.ID, tk.Token)
	q.Set("reason", reason)
	if permanent {
		q.Set("permanent", "true")
	}
	return q
}

func staleToken(id int64) string    { return fmt.Sprintf("Error: stale lease token for task %d", id) }
func notInProgress(id int64) string { return fmt.Sprintf("Error: task %d is not in progress", id) }

// newTaskQuery creates a task with the given /newTask query and returns its id.
func (s *dbServer) newTaskQuery(q url.Values) int64 {
	s.t.Helper()
	r := s.call("POST", "/newTask", q, "")
	if r.Status != 200 {
		s.t.Fatalf("POST /newTask?%s = %d %q", q.Encode(), r.Status, r.Body)
	}
	return servicetest.ParseID(s.t, r.Body)
}

// claimWhenLapsed claims (without waiting) until task id is handed out again, as it is once its lease
// lapses.
func (s *dbServer) claimWhenLapsed(id int64) task {
	s.t.Helper()
	var r servicetest.Reply
	if !servicetest.PollFor(10*time.Second, func() bool {
		r = s.call("POST", "/getNewTask", nil, "")
		return r.Status != 400 || r.Body != noTask
	}) {
		s.t.Fatalf("task %d not handed out again long after its lease", id)
	}
	return wantTask(s.t, r, id, 1)
}

// getByIDWhen polls GET /getById until the task reads in state, and returns it.
func (s *dbServer) getByIDWhen(id int64, state int) task {
	s.t.Helper()
	var r servicetest.Reply
	if !servicetest.PollFor(10*time.Second, func() bool {
		r = s.call("GET", "/getById", idQuery(id), "")
		return r.Status == 200 && *parseTask(s.t, r.Body).State == state
	}) {
		s.t.Fatalf("task %d never reached state %d: %d %q", id, state, r.Status, r.Body)
	}
	return wantTask(s.t, r, id, state)
}

// expectRecord checks that the database's record of task id is reply, byte for byte.
func (s *dbServer) expectRecord(id int64, reply servicetest.Reply) {
	s.t.Helper()
	if rec := s.call("GET", "/getById", idQuery(id), ""); rec.Status != 200 || rec.Body != reply.Body {
		s.t.Errorf("record of task %d = %d %q, want the reply %q", id, rec.Status, rec.Body, reply.Body)
	}
}

func TestNewTaskMaxAttempts(t *testing.T) {
	db := newDBPolicy(t, database.Policy{Lease: longLease, MaxAttempts: 5})
	for _, bad := range []string{"0", "101", "-1", "x", "2.5", "1e2", " 3"} {
		db.expect("POST", "/newTask", url.Values{"maxAttempts": {bad}}, "", 400,
			fmt.Sprintf("Error: maxAttempts must be a whole number from 1 to 100, got %q", bad))
	}
	// The refusals created nothing: ids start at 0.
	db.expect("POST", "/newTask", url.Values{"maxAttempts": {"1"}}, "", 200, "0")
	db.expect("POST", "/newTask", url.Values{"maxAttempts": {"100"}}, "", 200, "1")
	db.expect("POST", "/newTask", nil, "", 200, "2")
	db.expect("POST", "/newTask", url.Values{"pending": {"true"}, "maxAttempts": {"7"}}, "", 200, "3")
	for id, want := range []int{1, 100, 5, 7} {
		if tk := db.getByID(int64(id), 0); tk.MaxAttempts != want || tk.Attempts != 0 || tk.Token != 0 {
			t.Errorf("task %d = %+v, want maxAttempts %d, no attempts, no token", id, tk, want)
		}
	}
	// Task 3 is pending; the others are claimable with their limit.
	for id := range int64(3) {
		db.claim(id)
	}
	db.expectNoTask()
}

func TestClaimIssuesToken(t *testing.T) {
	db := newDB(t, longLease)
	db.newTask(false)
	db.newTask(false)
	before := time.Now().Round(0)
	r := db.call("POST", "/getNewTask", nil, "")
	after := time.Now()
	tk := wantTask(t, r, 0, 1)
	if tk.Token != 1 || tk.Attempts != 1 || tk.MaxAttempts != 3 || tk.Error != "" || tk.FinishedAt != nil {
		t.Errorf("claim = %s, want token 1, attempt 1 of 3, no error, no finish time", r.Body)
	}
	if tk.StartedAt == nil || tk.StartedAt.Before(before) || tk.StartedAt.After(after) {
		t.Errorf("claim started at %v, want between %v and %v", tk.StartedAt, before, after)
	}
	if tk.LeaseUntil == nil || tk.StartedAt == nil || !tk.LeaseUntil.Equal(tk.StartedAt.Add(longLease)) {
		t.Errorf("claim lease until %v, want its start %v plus the %v lease", tk.LeaseUntil, tk.StartedAt, longLease)
	}
	// The claim is the database's record, byte for byte.
	db.expectRecord(0, r)
	// Tokens count the claims of each task.
	if tk := db.claim(1); tk.Token != 1 {
		t.Errorf("first claim of task 1 has token %d, want 1", tk.Token)
	}
	db.expect("POST", "/setById", nil, `{"id":0,"state":0}`, 200, "success")
	if tk := db.claim(0); tk.Token != 2 || tk.Attempts != 2 {
		t.Errorf("second claim of task 0 = %+v, want token 2, attempt 2", tk)
	}
}

func TestLapsedLeaseReclaimedWithLargerToken(t *testing.T) {
	const lease = 150 * time.Millisecond
	db := newDB(t, lease)
	id := db.newTask(false)
	prev := db.claim(id)
	holders := []task{prev}
	for attempt := 2; attempt <= 3; attempt++ {
		tk := db.claimWhenLapsed(id)
		if tk.Attempts != attempt || tk.MaxAttempts != 3 || tk.Token <= prev.Token {
			t.Errorf("claim after a lapse = %+v, want attempt %d of 3 with a token above %d", tk, attempt, prev.Token)
		}
		if want := fmt.Sprintf("lease lapsed on attempt %d of 3", attempt-1); tk.Error != want {
			t.Errorf("claim after a lapse has error %q, want %q", tk.Error, want)
		}
		if tk.StartedAt == nil || prev.LeaseUntil == nil || tk.StartedAt.Before(*prev.LeaseUntil) {
			t.Errorf("task claimed again at %v, before the previous lease ended at %v", tk.StartedAt, prev.LeaseUntil)
		}
		prev = tk
		holders = append(holders, tk)
	}

	// The last attempt lapses too: the task fails rather than being handed out a fourth time.
	tk := db.getByIDWhen(id, 3)
	if tk.Error != "lease lapsed on attempt 3 of 3" || tk.Attempts != 3 || tk.Token != prev.Token || tk.LeaseUntil != nil {
		t.Errorf("task lapsed on its last attempt = %+v", tk)
	}
	if tk.FinishedAt == nil || !tk.FinishedAt.Equal(*prev.LeaseUntil) {
		t.Errorf("failed at %v, want when the last lease ended, %v", tk.FinishedAt, prev.LeaseUntil)
	}
	db.expectNoTask()
	db.getByID(id, 3)
	// Earlier holders are fenced off.
	for _, h := range holders[:2] {
		db.expect("POST", "/finishTask", tokenQuery(id, h.Token), "", 409, staleToken(id))
	}
	db.getByID(id, 3)
}

func TestStaleHolderFenced(t *testing.T) {
	const lease = 150 * time.Millisecond
	db := newDB(t, lease)
	id := db.newTask(false)
	stale := db.claim(id)
	current := db.claimWhenLapsed(id)
	if current.Token <= stale.Token {
		t.Fatalf("new claim has token %d, not above the lapsed claim's %d", current.Token, stale.Token)
	}

	old := tokenQuery(id, stale.Token)
	db.expect("POST", "/finishTask", old, "", 409, staleToken(id))
	db.expect("POST", "/extendLease", old, "", 409, staleToken(id))
	db.expect("POST", "/releaseTask", old, "", 409, staleToken(id))
	db.expect("POST", "/failTask", failQuery(stale, "late", false), "", 409, staleToken(id))
	db.expect("POST", "/failTask", failQuery(stale, "late", true), "", 409, staleToken(id))
	// A token nobody was issued is refused the same way.
	db.expect("POST", "/finishTask", tokenQuery(id, current.Token+5), "", 409, staleToken(id))
	// None of it touched the current claim (whose own short lease may have lapsed by now).
	r := db.call("GET", "/getById", idQuery(id), "")
	if tk := parseTask(t, r.Body); tk.Token != current.Token || tk.Attempts != 2 || *tk.State == 2 || *tk.State == 3 {
		t.Fatalf("task after the stale calls = %s, want still claim %d, attempt 2", r.Body, current.Token)
	}

	// The current holder finishes; nobody claimed the task since, so even a lapsed lease allows it.
	cur := tokenQuery(id, current.Token)
	db.expect("POST", "/finishTask", cur, "", 200, "success")
	tk := db.getByID(id, 2)
	if tk.Error != "" || tk.FinishedAt == nil || tk.LeaseUntil != nil || tk.Token != current.Token {
		t.Errorf("finished task = %+v, want no error, a finish time, no lease", tk)
	}
	// Finishing again with the same token is a retry that succeeds; the stale token stays refused, and a
	// reference worker (no token) may not finish a finished task.
	db.expect("POST", "/finishTask", cur, "", 200, "success")
	db.expect("POST", "/finishTask", old, "", 409, staleToken(id))
	db.expect("POST", "/finishTask", idQuery(id), "", 400, notInProgress(id))
	db.getByID(id, 2)
	db.expectNoTask()
}

func TestFinishWithTokenAfterLapse(t *testing.T) {
	const lease = 150 * time.Millisecond
	db := newDB(t, lease)
	id := db.newTask(false)
	claimed := db.claim(id)
	db.getByIDWhen(id, 0) // lapsed, not claimed again
	q := tokenQuery(id, claimed.Token)
	// A lapsed lease cannot be renewed, nor finished by a worker without a token...
	db.expect("POST", "/extendLease", q, "", 400, notInProgress(id))
	db.expect("POST", "/finishTask", idQuery(id), "", 400, notInProgress(id))
	// ...but its holder's result is still the newest.
	db.expect("POST", "/finishTask", q, "", 200, "success")
	db.getByID(id, 2)
	db.expectNoTask()
}

func TestTokenParam(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(false)
	db.claim(id)
	for _, path := range []string{"/finishTask", "/extendLease", "/releaseTask", "/failTask"} {
		for _, bad := range []string{"x", "-1", "1.0"} {
			q := url.Values{"id": {"0"}, "token": {bad}, "reason": {"r"}}
			db.expect("POST", path, q, "", 400, fmt.Sprintf("Error: token must be a non-negative decimal integer, got %q", bad))
		}
		db.expect("POST", path, url.Values{"token": {"1"}, "reason": {"r"}}, "", 400, "Error: missing id parameter")
		db.expect("POST", path, url.Values{"id": {"42"}, "token": {"1"}, "reason": {"r"}}, "", 400, "Error: no task with id 42")
	}
	if tk := db.getByID(id, 1); tk.Attempts != 1 || tk.Token != 1 {
		t.Errorf("task after refused calls = %+v, want still claim 1", tk)
	}
}

func TestExtendLeaseKeepsClaim(t *testing.T) {
	const lease = 400 * time.Millisecond
	db := newDB(t, lease)
	id := db.newTask(false)
	claimed := db.claim(id)
	q := tokenQuery(id, claimed.Token)
	until := *claimed.LeaseUntil
	start := time.Now()
	// Renew every quarter lease for more than two lease lengths.
	for n := 0; n < 3 || time.Since(start) < 2*lease; n++ {
		time.Sleep(lease / 4)
		before := time.Now().Round(0)
		r := db.call("POST", "/extendLease", q, "")
		after := time.Now()
		tk := wantTask(t, r, id, 1)
		if tk.Token != claimed.Token || tk.Attempts != 1 || tk.LeaseUntil == nil {
			t.Fatalf("extendLease #%d = %s, want claim %d, attempt 1, with a lease", n, r.Body, claimed.Token)
		}
		if !tk.LeaseUntil.After(until) || tk.LeaseUntil.Before(before.Add(lease)) || tk.LeaseUntil.After(after.Add(lease)) {
			t.Fatalf("extendLease #%d: lease until %v, want %v from the call (between %v and %v), after the previous %v",
				n, tk.LeaseUntil, lease, before, after, until)
		}
		until = *tk.LeaseUntil
		db.expectRecord(id, r)
	}
	if !time.Now().After(claimed.LeaseUntil.Add(lease)) {
		t.Fatalf("the renewals ended before the original lease had long passed")
	}
	// Long past its original lease, the task is still held: nobody else may claim it.
	db.expectNoTask()
	db.getByID(id, 1)

	// Only a live claim can be renewed.
	db.expect("POST", "/finishTask", q, "", 200, "success")
	db.expect("POST", "/extendLease", q, "", 400, notInProgress(id))
	other := db.newTask(false)
	db.expect("POST", "/extendLease", idQuery(other), "", 400, notInProgress(other))
	db.getByID(id, 2)
	db.getByID(other, 0)
}

func TestFailTaskRetried(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(false)
	claimed := db.claim(id)
	q := failQuery(claimed, "decoder crashed", false)
	r := db.call("POST", "/failTask", q, "")
	tk := wantTask(t, r, id, 0)
	if tk.Error != "decoder crashed" || tk.Attempts != 1 || tk.Token != claimed.Token || tk.LeaseUntil != nil || tk.FinishedAt != nil {
		t.Errorf("failTask with attempts left = %s, want not started, error kept, attempt 1, no lease, not finished", r.Body)
	}
	db.expectRecord(id, r)
	// The attempt is over: the same report again finds the task not in progress.
	db.expect("POST", "/failTask", q, "", 400, notInProgress(id))
	// Claimable again at once, with the reason kept until it finishes.
	again := db.claim(id)
	if again.Attempts != 2 || again.Token <= claimed.Token || again.Error != "decoder crashed" {
		t.Errorf("claim after a failure = %+v, want attempt 2, a larger token, error kept", again)
	}
	db.expect("POST", "/failTask", failQuery(claimed, "late", false), "", 409, staleToken(id))
	db.expect("POST", "/finishTask", tokenQuery(id, again.Token), "", 200, "success")
	if tk := db.getByID(id, 2); tk.Error != "" {
		t.Errorf("finished task keeps error %q", tk.Error)
	}

	// A reference worker's failure (no token) counts the same.
	id2 := db.newTask(false)
	db.claim(id2)
	r = db.call("POST", "/failTask", url.Values{"id": {strconv.FormatInt(id2, 10)}, "reason": {"oops"}}, "")
	if tk := wantTask(t, r, id2, 0); tk.Error != "oops" || tk.Attempts != 1 {
		t.Errorf("failTask without a token = %s", r.Body)
	}
}

func TestFailTaskOutOfAttempts(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTaskQuery(url.Values{"maxAttempts": {"2"}})
	first := db.claim(id)
	if first.MaxAttempts != 2 {
		t.Fatalf("claim = %+v, want maxAttempts 2", first)
	}
	if tk := wantTask(t, db.call("POST", "/failTask", failQuery(first, "first", false), ""), id, 0); tk.Attempts != 1 {
		t.Errorf("first failure: attempts %d, want 1", tk.Attempts)
	}
	second := db.claim(id)
	r := db.call("POST", "/failTask", failQuery(second, "second", false), "")
	tk := wantTask(t, r, id, 3)
	if tk.Error != "second" || tk.Attempts != 2 || tk.MaxAttempts != 2 || tk.FinishedAt == nil || tk.LeaseUntil != nil {
		t.Errorf("failure on the last attempt = %s, want failed with error \"second\", attempt 2 of 2, a finish time", r.Body)
	}
	db.expectRecord(id, r)
	db.expectNoTask()
	// Failed is final: not even the last holder may finish it.
	db.expect("POST", "/finishTask", tokenQuery(id, second.Token), "", 400, notInProgress(id))
	db.getByID(id, 3)
}

func TestFailTaskPermanent(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(false)
	claimed := db.claim(id)
	r := db.call("POST", "/failTask", failQuery(claimed, "not an image", true), "")
	tk := wantTask(t, r, id, 3)
	if tk.Error != "not an image" || tk.Attempts != 1 || tk.MaxAttempts != 3 || tk.FinishedAt == nil || tk.LeaseUntil != nil {
		t.Errorf("permanent failure = %s, want failed at once with error \"not an image\", attempt 1 of 3", r.Body)
	}
	db.expectRecord(id, r)
	db.expectNoTask()
}

func TestFailTaskRefusals(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(false)
	claimed := db.claim(id)
	q := func(kv ...string) url.Values {
		v := tokenQuery(id, claimed.Token)
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	db.expect("POST", "/failTask", q(), "", 400, "Error: missing reason parameter")
	db.expect("POST", "/failTask", q("reason", ""), "", 400, "Error: missing reason parameter")
	db.expect("POST", "/failTask", q("reason", " \t "), "", 400, "Error: missing reason parameter")
	db.expect("POST", "/failTask", q("reason", "r", "permanent", "maybe"), "", 400, `Error: permanent must be true or false, got "maybe"`)
	other := db.newTask(false)
	db.expect("POST", "/failTask", url.Values{"id": {strconv.FormatInt(other, 10)}, "reason": {"r"}}, "", 400, notInProgress(other))
	if tk := db.getByID(id, 1); tk.Attempts != 1 || tk.Error != "" {
		t.Errorf("task after refused failures = %+v, want untouched", tk)
	}
	db.getByID(other, 0)

	// A reason is trimmed and capped at 1000 bytes, without splitting a character.
	long := "x" + strings.Repeat("é", 1000)
	r := db.call("POST", "/failTask", q("reason", "  "+long+"  "), "")
	if tk := wantTask(t, r, id, 0); tk.Error != "x"+strings.Repeat("é", 499) {
		t.Errorf("long reason stored as %q (%d bytes), want its first 999 bytes", tk.Error, len(tk.Error))
	}
}

func TestReleaseTask(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTaskQuery(url.Values{"maxAttempts": {"1"}})
	claimed := db.claim(id)
	q := tokenQuery(id, claimed.Token)
	db.expect("POST", "/releaseTask", q, "", 200, "success")
	tk := db.getByID(id, 0)
	if tk.Attempts != 0 || tk.LeaseUntil != nil || tk.Token != claimed.Token || tk.Error != "" || tk.FinishedAt != nil {
		t.Errorf("released task = %+v, want not started with its attempt given back, no lease", tk)
	}
	// The released claim is over.
	db.expect("POST", "/releaseTask", q, "", 400, notInProgress(id))
	db.expect("POST", "/extendLease", q, "", 400, notInProgress(id))
	db.expect("POST", "/finishTask", q, "", 400, notInProgress(id))
	// Claimable again at once; releases do not use up the single attempt.
	prev := claimed
	for range 3 {
		again := db.claim(id)
		if again.Attempts != 1 || again.Token <= prev.Token {
			t.Fatalf("claim after a release = %+v, want attempt 1 and a token above %d", again, prev.Token)
		}
		db.expect("POST", "/releaseTask", tokenQuery(id, again.Token), "", 200, "success")
		prev = again
	}
	last := db.claim(id)
	db.expect("POST", "/releaseTask", q, "", 409, staleToken(id))
	db.expect("POST", "/releaseTask", idQuery(id+1), "", 400, fmt.Sprintf("Error: no task with id %d", id+1))
	db.expect("POST", "/finishTask", tokenQuery(id, last.Token), "", 200, "success")
	db.getByID(id, 2)
}

// expectWoken runs act while the long poll ch, started about 200ms before, waits, and checks that the
// poll hands out task id promptly. The poll rechecks the store every second by itself, so a poll that act
// failed to wake would answer some 800ms later: "promptly" must be well under that to tell them apart.
func expectWoken(t *testing.T, ch <-chan pollResult, id int64, act func()) task {
	t.Helper()
	act()
	acted := time.Now()
	res := receive(t, ch, 15*time.Second)
	if late := time.Since(acted); late > 500*time.Millisecond {
		t.Errorf("long poll answered %v after the task became claimable: not woken", late)
	}
	return wantTask(t, res.r, id, 1)
}

func TestLongPollWokenByFailAndRelease(t *testing.T) {
	db := newDB(t, longLease)
	for range 3 {
		db.newTask(false)
	}
	a, b, c := db.claim(0), db.claim(1), db.claim(2)

	// A permanent failure makes nothing claimable: the poll still ends empty-handed.
	ch := db.poll("700ms")
	stillPending(t, ch)
	wantTask(t, db.call("POST", "/failTask", failQuery(a, "bad", true), ""), 0, 3)
	if res := receive(t, ch, 10*time.Second); res.r.Status != 400 || res.r.Body != noTask {
		t.Errorf("long poll after a permanent failure = %d %q, want 400 %q", res.r.Status, res.r.Body, noTask)
	}

	ch = db.poll("10s")
	stillPending(t, ch)
	tk := expectWoken(t, ch, 1, func() {
		wantTask(t, db.call("POST", "/failTask", failQuery(b, "flaky", false), ""), 1, 0)
	})
	if tk.Attempts != 2 || tk.Token <= b.Token {
		t.Errorf("claim after a failure = %+v, want attempt 2 with a new token", tk)
	}

	ch = db.poll("10s")
	stillPending(t, ch)
	tk = expectWoken(t, ch, 2, func() {
		db.expect("POST", "/releaseTask", tokenQuery(2, c.Token), "", 200, "success")
	})
	if tk.Attempts != 1 || tk.Token <= c.Token {
		t.Errorf("claim after a release = %+v, want attempt 1 with a new token", tk)
	}
}

func TestActivateExpiredPending(t *testing.T) {
	store, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "tasks.db"), sqlitestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "task store", store)
	done := make(chan struct{})
	srv := servicetest.Serve(t, database.NewServer(store, database.Policy{Lease: longLease}, done))
	t.Cleanup(func() { close(done) })
	db := &dbServer{t: t, url: srv.URL, c: servicetest.NewHTTPClient(t)}

	expired := db.newTask(true)
	// What Run does to uploads that never complete.
	if n, err := store.ExpirePending(t.Context(), 0); err != nil || n != 1 {
		t.Fatalf("ExpirePending = %d, %v; want 1", n, err)
	}
	fresh := db.newTask(true)
	db.expect("POST", "/activateTask", idQuery(expired), "", 409,
		fmt.Sprintf("Error: task %d is no longer pending: its upload expired", expired))
	if tk := db.getByID(expired, 3); tk.Error != "upload never completed" || tk.FinishedAt == nil {
		t.Errorf("expired task = %+v", tk)
	}
	db.expect("POST", "/activateTask", idQuery(fresh), "", 200, "success")
	db.claim(fresh)
	db.expectNoTask()
}

// expectStats checks GET /stats: exactly the five counts, in this order, as JSON.
func (s *dbServer) expectStats(what string, queued, pending, processing, finished, failed int) {
	s.t.Helper()
	r := s.call("GET", "/stats", nil, "")
	want := fmt.Sprintf(`{"queued":%d,"pending":%d,"processing":%d,"finished":%d,"failed":%d,"cancelled":0}`, queued, pending, processing, finished, failed)
	if r.Status != 200 || r.Body != want {
		s.t.Errorf("%s: GET /stats = %d %q, want 200 %s", what, r.Status, r.Body, want)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		s.t.Errorf("%s: GET /stats Content-Type %q, want application/json", what, ct)
	}
}

func TestStats(t *testing.T) {
	db := newDBPolicy(t, database.Policy{Lease: shortLease, MaxAttempts: 1})
	db.expectStats("empty", 0, 0, 0, 0, 0)
	for range 4 {
		db.newTask(false) // 0 to 3
	}
	pending := db.newTask(true) // 4: an upload in progress is pending, not work for the workers yet
	db.expectStats("created", 4, 1, 0, 0, 0)

	tk := db.claim(0)
	db.expect("POST", "/finishTask", tokenQuery(0, tk.Token), "", 200, "success")
	tk = db.claim(1)
	wantTask(t, db.call("POST", "/failTask", failQuery(tk, "cannot decode image", true), ""), 1, 3)
	db.claim(2)
	db.expectStats("claimed", 1, 1, 1, 1, 1)
	// Task 2's lease lapses on its only attempt: failed, though nothing has touched it since.
	time.Sleep(2 * shortLease)
	db.expectStats("lapsed", 1, 1, 0, 1, 2)

	db.expect("POST", "/activateTask", idQuery(pending), "", 200, "success")
	db.expectStats("activated", 2, 0, 0, 1, 2)
	db.expect("GET", "/stats", url.Values{"ignored": {"x"}}, "", 200, `{"queued":2,"pending":0,"processing":0,"finished":1,"failed":2,"cancelled":0}`)
}

// keyed creates a task with an Idempotency-Key and returns the reply.
func (s *dbServer) keyed(key string, pending bool) servicetest.Reply {
	s.t.Helper()
	u := s.url + "/newTask"
	if pending {
		u += "?pending=true"
	}
	req, err := http.NewRequest(http.MethodPost, u, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Idempotency-Key", key)
	r, err := servicetest.Do(s.c, req)
	if err != nil {
		s.t.Fatal(err)
	}
	return r
}

// TestNewTaskIdempotencyKey: a /newTask that carries an Idempotency-Key creates its task once; a replay
// answers the same id, says it is a replay and whether the task is still pending, and creates nothing.
func TestNewTaskIdempotencyKey(t *testing.T) {
	db := newDB(t, longLease)
	replayed := func(r servicetest.Reply) string { return r.Header.Get("Idempotent-Replayed") }
	first := db.keyed("upload-1", true)
	if first.Status != 200 || first.Body != "0" || replayed(first) != "" {
		t.Fatalf("first keyed /newTask = %d %q replayed %q, want 200 \"0\", not a replay", first.Status, first.Body, replayed(first))
	}
	again := db.keyed("upload-1", true)
	if again.Status != 200 || again.Body != "0" || replayed(again) != "true" || again.Header.Get("X-Imgmill-Pending") != "true" {
		t.Errorf("replay = %d %q replayed %q pending %q, want task 0 again, a pending replay", again.Status, again.Body,
			replayed(again), again.Header.Get("X-Imgmill-Pending"))
	}
	db.expect("POST", "/activateTask", idQuery(0), "", 200, "success")
	if r := db.keyed("upload-1", true); r.Body != "0" || replayed(r) != "true" || r.Header.Get("X-Imgmill-Pending") != "false" {
		t.Errorf("replay once activated = %q replayed %q pending %q, want task 0, no longer pending", r.Body, replayed(r), r.Header.Get("X-Imgmill-Pending"))
	}
	if r := db.keyed("upload-2", false); r.Body != "1" || replayed(r) != "" {
		t.Errorf("another key = %q replayed %q, want a new task 1", r.Body, replayed(r))
	}
	db.expectStats("two keyed tasks", 2, 0, 0, 0, 0)

	// An upload that was given up is never acknowledged: its key makes a new task.
	if r := db.keyed("upload-3", true); r.Body != "2" {
		t.Fatalf("upload-3 = %q, want task 2", r.Body)
	}
	db.expect("POST", "/abandonTask", idQuery(2), "", 200, "success")
	if r := db.keyed("upload-3", true); r.Body != "3" || replayed(r) != "" {
		t.Errorf("key of an abandoned upload = %q replayed %q, want a new task 3", r.Body, replayed(r))
	}

	for _, bad := range []string{strings.Repeat("k", 256), "caf\u00e9", "tab\there"} {
		if r := db.keyed(bad, true); r.Status != 400 || !strings.HasPrefix(r.Body, "Error: Idempotency-Key must be") {
			t.Errorf("key %q: %d %q, want 400", bad, r.Status, r.Body)
		}
	}
	db.expectStats("refused keys created nothing", 2, 1, 0, 0, 1)
}

// TestFailTaskTransient: a transient failure hands the task back without counting the attempt, and it
// is not claimed again before its retryAt, which backs off with every such failure.
func TestFailTaskTransient(t *testing.T) {
	db := newDBPolicy(t, database.Policy{Lease: longLease, MaxAttempts: 1,
		Retry: taskstore.RetryBackoff{Min: 400 * time.Millisecond, Max: 10 * time.Second}})
	db.newTask(false)
	for n := 1; n <= 3; n++ {
		tk := db.claimWhenLapsed(0) // claimable once its retryAt passed
		q := failQuery(tk, "fetch working image: image storage is temporarily unavailable", false)
		q.Set("transient", "true")
		before := time.Now()
		r := db.call("POST", "/failTask", q, "")
		back := wantTask(t, r, 0, 0)
		if back.Attempts != 0 || back.Retries != n || back.Error == "" || back.RetryAt == nil {
			t.Fatalf("after transient failure %d: %s, want attempts 0, retries %d, the reason and a retryAt", n, r.Body, n)
		}
		// n-th failure: a random wait in [d/2, d], d = 400ms << (n-1).
		d := 400 * time.Millisecond << (n - 1)
		if wait := back.RetryAt.Sub(before); wait < d/2-50*time.Millisecond || wait > d+time.Second {
			t.Errorf("failure %d: retryAt %v after, want within [%v, %v]", n, wait, d/2, d)
		}
		if time.Until(*back.RetryAt) > 100*time.Millisecond {
			db.expectNoTask() // not before its time
		}
	}
	// With one attempt allowed, the task was never failed: transient failures are not attempts.
	tk := db.claimWhenLapsed(0)
	db.expect("POST", "/finishTask", tokenQuery(0, tk.Token), "", 200, "success")

	db.newTask(false)
	tk = db.claim(1)
	q := failQuery(tk, "x", true)
	q.Set("transient", "true")
	db.expect("POST", "/failTask", q, "", 400, "Error: a failure cannot be both permanent and transient")
	q = failQuery(tk, "x", false)
	q.Set("transient", "maybe")
	db.expect("POST", "/failTask", q, "", 400, `Error: transient must be true or false, got "maybe"`)
}

// TestAbandonTask: the upload of a pending task failed: the task fails at once with the reason, and no
// longer counts as pending; an activated task is not abandoned.
func TestAbandonTask(t *testing.T) {
	db := newDB(t, longLease)
	pending := db.newTask(true)
	q := idQuery(pending)
	q.Set("reason", "upload never completed: image storage is out of space, retry later")
	db.expect("POST", "/abandonTask", q, "", 200, "success")
	if tk := db.getByID(pending, 3); tk.Error != q.Get("reason") {
		t.Errorf("abandoned task's error %q, want %q", tk.Error, q.Get("reason"))
	}
	db.expect("POST", "/abandonTask", q, "", 200, "success") // again: a no-op
	db.expectStats("abandoned", 0, 0, 0, 0, 1)

	other := db.newTask(true)
	db.expect("POST", "/abandonTask", idQuery(other), "", 200, "success")
	if tk := db.getByID(other, 3); tk.Error != "upload never completed" {
		t.Errorf("default reason %q", tk.Error)
	}
	active := db.newTask(false)
	db.expect("POST", "/abandonTask", idQuery(active), "", 409, fmt.Sprintf("Error: task %d is not pending: its upload completed", active))
	db.expect("POST", "/abandonTask", idQuery(99), "", 400, "Error: no task with id 99")
	db.expect("POST", "/abandonTask", nil, "", 400, "Error: missing id parameter")
	db.claim(active)
}

// The database keeps an operation chain as given, even one no operation of this build knows: the
// master and the worker judge chains, so a new operation needs no new database. It only bounds them.
func TestNewTaskKeepsOpAsGiven(t *testing.T) {
	db := newDB(t, longLease)
	const future = "sepia:0.8,vignette:2"
	db.expect("POST", "/newTask", url.Values{"op": {future}}, "", 200, "0")
	r := db.call("GET", "/getById", idQuery(0), "")
	var got struct {
		Op string `json:"op"`
	}
	if err := json.Unmarshal([]byte(r.Body), &got); err != nil || got.Op != future {
		t.Fatalf("GET /getById = %q (%v), want op %q", r.Body, err, future)
	}
	db.expect("POST", "/newTask", url.Values{"op": {strings.Repeat("a", 1025)}}, "", 400,
		"Error: op: operation list too long: 1025 bytes, at most 1024")
	db.expect("POST", "/newTask", url.Values{"op": {"blur:1\n"}}, "", 400,
		"Error: op: operation list has a byte that is not printable ASCII at 6")
	db.expect("POST", "/newTask", nil, "", 200, "1") // the refusals created nothing
}

// TestGetByIDs: POST /getByIds (additive) answers many tasks in one call, as /getById does each, and
// names the ids that are no task.
func TestGetByIDs(t *testing.T) {
	db := newDB(t, longLease)
	a, b := db.newTask(false), db.newTask(true)
	r := db.call("POST", "/getByIds", nil, fmt.Sprintf(`{"ids":[%d,99,%d]}`, b, a))
	var got wire.Tasks
	if r.Status != 200 || json.Unmarshal([]byte(r.Body), &got) != nil {
		t.Fatalf("POST /getByIds = %d %q", r.Status, r.Body)
	}
	if len(got.Tasks) != 2 || got.Tasks[0].ID != b || got.Tasks[1].ID != a || !got.Tasks[0].Pending || len(got.Missing) != 1 || got.Missing[0] != 99 {
		t.Errorf("POST /getByIds = %+v, want tasks %d (pending) and %d, and 99 missing", got, b, a)
	}
	for _, tk := range got.Tasks {
		if one := db.getByID(tk.ID, 0); !one.CreatedAt.Equal(tk.CreatedAt) || one.Attempts != tk.Attempts || one.MaxAttempts != tk.MaxAttempts {
			t.Errorf("task %d: /getByIds %+v, /getById %+v", tk.ID, tk, one)
		}
	}
	db.expect("POST", "/getByIds", nil, `{"ids":[]}`, 200, `{"tasks":[]}`)
	db.expect("POST", "/getByIds", nil, `{"ids":[1],"more":2}`, 400, `Error: json: unknown field "more"`)
	many := strings.Repeat("1,", wire.MaxStatusIDs) + "1"
	db.expect("POST", "/getByIds", nil, `{"ids":[`+many+`]}`, 400, fmt.Sprintf("Error: at most %d ids at once, got %d", wire.MaxStatusIDs, wire.MaxStatusIDs+1))
}
