// Package outagetest runs imgmill deployments through outages of what they depend on, under load: an
// engine stopped, a disk full, a service paused.
// A steady load of uploads, through the frontends' JSON API and the masters, rides each one out as a
// well-behaved client does (an Idempotency-Key on every upload, retried after the server's Retry-After),
// while every answer that is not a success is recorded. Then every acknowledged upload must finish,
// pixel-correct, none may fail, and what clients saw while the outage lasted must be 503 or 507 with
// Retry-After (or nothing at all, where the outage is to stall nothing).
package outagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/wire"
)

// Target is where the load sends uploads: a frontend's POST /api/tasks or a master's POST /new.
type Target struct {
	Frontend bool
	Addr     string
}

// Answer is a reply other than a success that a client of the load got, or a request that got none.
type Answer struct {
	At         time.Time
	Via        string // what was asked: "upload", "status"
	Status     int    // 0: no answer (the connection failed or timed out)
	RetryAfter bool
	Msg        string
}

// Load is a steady stream of uploads (see the package comment).
type Load struct {
	t       testing.TB
	w       *deploytest.Workload
	hc      *http.Client
	targets []Target
	every   time.Duration // between two uploads of one client
	run     string        // makes the idempotency keys of this load unique

	mu       sync.Mutex
	answers  []Answer      // every refusal and every request without an answer
	accepted []time.Time   // when each upload was acknowledged
	longest  time.Duration // the longest wait for an answer to an upload
	next     atomic.Int64
	lastPub  atomic.Value // string: a public id answered, for the status poller
	lastID   atomic.Int64 // an internal id answered (+1; 0: none yet)
}

// NewLoad makes a load of images uploads, each of its clients sending one every so often to targets in
// turn.
func NewLoad(t testing.TB, hc *http.Client, targets []Target, images int, every time.Duration) *Load {
	return &Load{t: t, w: deploytest.NewWorkload(t, images), hc: hc, targets: targets, every: every, run: strconv.FormatInt(time.Now().UnixNano(), 36)}
}

// Start runs clients uploading until stop is closed (or the images run out), and a status poller; the
// returned channel is closed when all have ended.
func (l *Load) Start(ctx context.Context, clients int, stop <-chan struct{}) <-chan struct{} {
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				i := int(l.next.Add(1) - 1)
				if i >= l.w.Len() {
					return
				}
				l.upload(ctx, i, l.targets[(i+c)%len(l.targets)])
				backoff.Sleep(ctx, l.every)
			}
		})
	}
	wg.Go(func() { l.pollStatus(ctx, stop) })
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// upload sends image i to tgt until it is accepted or ctx ends, retrying every refusal and every failed
// connection with the same Idempotency-Key.
func (l *Load) upload(ctx context.Context, i int, tgt Target) {
	key := fmt.Sprintf("load-%s-%d", l.run, i)
	for ctx.Err() == nil {
		id, pub, a, ok := l.send(ctx, tgt, key, l.w.Encoded(i))
		if ok {
			l.w.Acknowledged(l.t, i, id, pub)
			l.mu.Lock()
			l.accepted = append(l.accepted, time.Now())
			l.mu.Unlock()
			if pub != "" {
				l.lastPub.Store(pub)
			} else {
				l.lastID.Store(id + 1)
			}
			return
		}
		l.record(a)
		wait := 500 * time.Millisecond
		if a.RetryAfter {
			wait = time.Second // the servers ask for whole seconds; the load follows them as told
		}
		backoff.Sleep(ctx, wait)
	}
}

// send makes one upload attempt.
func (l *Load) send(ctx context.Context, tgt Target, key string, img []byte) (id int64, pub string, a Answer, ok bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute) // longer than any outage here: a paused peer answers late
	defer cancel()
	url := "http://" + tgt.Addr + "/new"
	if tgt.Frontend {
		url = "http://" + tgt.Addr + "/api/tasks"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(img))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "image/png")
	req.Header.Set("Idempotency-Key", key)
	a = Answer{At: time.Now(), Via: "upload"}
	defer func() {
		l.mu.Lock()
		l.longest = max(l.longest, time.Since(a.At))
		l.mu.Unlock()
	}()
	resp, err := l.hc.Do(req)
	if err != nil {
		a.Msg = err.Error()
		return 0, "", a, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case tgt.Frontend && resp.StatusCode == http.StatusCreated:
		var created struct{ ID string }
		if json.Unmarshal(body, &created) == nil && created.ID != "" {
			return 0, created.ID, a, true
		}
	case !tgt.Frontend && resp.StatusCode == http.StatusOK:
		if n, err := strconv.ParseInt(string(body), 10, 64); err == nil {
			return n, "", a, true
		}
	}
	a.Status, a.RetryAfter, a.Msg = resp.StatusCode, resp.Header.Get("Retry-After") != "", strings.TrimSpace(string(body))
	if a.Status/100 == 2 {
		a.Msg = "unreadable answer: " + a.Msg
	}
	return 0, "", a, false
}

// pollStatus asks for the status of an acknowledged task every 250ms, through the frontend (by public
// id) and the master (by internal id), recording what is not an answer, until stop.
func (l *Load) pollStatus(ctx context.Context, stop <-chan struct{}) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, tgt := range l.targets {
			var url string
			switch pub, _ := l.lastPub.Load().(string); {
			case tgt.Frontend && pub != "":
				url = "http://" + tgt.Addr + "/api/tasks/" + pub
			case !tgt.Frontend && l.lastID.Load() > 0:
				url = fmt.Sprintf("http://%s/status?id=%d", tgt.Addr, l.lastID.Load()-1)
			default:
				continue
			}
			l.pollOnce(ctx, url)
		}
	}
}

func (l *Load) pollOnce(ctx context.Context, url string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	a := Answer{At: time.Now(), Via: "status"}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := l.hc.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			a.Msg = err.Error()
			l.record(a)
		}
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		a.Status, a.RetryAfter, a.Msg = resp.StatusCode, resp.Header.Get("Retry-After") != "", strings.TrimSpace(string(body))
		l.record(a)
	}
}

func (l *Load) record(a Answer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers = append(l.answers, a)
}

// AcceptedBetween counts the uploads acknowledged in [from, to).
func (l *Load) AcceptedBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, at := range l.accepted {
		if !at.Before(from) && at.Before(to) {
			n++
		}
	}
	return n
}

// FirstAcceptedAfter is when the first upload was acknowledged at or after from (zero: none).
func (l *Load) FirstAcceptedAfter(from time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, at := range l.accepted {
		if !at.Before(from) && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first
}

// Summary counts what clients saw, by what they asked and the status ("no answer" for 0).
func Summary(answers []Answer) string {
	counts := map[string]int{}
	for _, a := range answers {
		what := "no answer"
		if a.Status != 0 {
			what = strconv.Itoa(a.Status)
			if a.RetryAfter {
				what += " with Retry-After"
			}
		}
		counts[a.Via+" "+what]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %d; ", k, counts[k])
	}
	if b.Len() == 0 {
		return "nothing but successes"
	}
	return strings.TrimSuffix(b.String(), "; ")
}

// Outage is something taken away from a running deployment for a while.
type Outage struct {
	Name       string
	Duration   time.Duration
	Begin, End func()
	// Allowed are the statuses clients may see (each with Retry-After); none at all when empty.
	Allowed []int
	// Flowing: the outage must stall nothing; uploads go on being accepted while it lasts.
	Flowing bool
}

// View is what Run needs to check the results, through the entry points of clients.
type View struct {
	HC      *http.Client
	Targets []Target
	FEAddr  string // for checking uploads made through a frontend
	DB      func() *client.Database
	ST      func() *client.Storage
	// Master is a client of a master, to measure the deployment's pace (see deploytest.Pace).
	Master func() *client.Master
}

// Run runs a load against v, takes o away after a few seconds of it, brings it back after
// o.Duration, keeps the load going a little longer, then checks every acknowledged upload, and what the
// clients saw. It logs a line for the README's outage table.
//
// What it judges is what clients saw and that nothing was lost, not speed: its deadlines are scaled
// from the deployment's pace, measured first (see deploytest.Pace), and the flow an outage must not
// stall is compared with the flow of the same load before it.
func Run(t *testing.T, v View, o Outage) {
	t.Helper()
	pace := deploytest.MeasurePace(t, v.Master())
	ctx, cancel := deploytest.Within(t, o.Duration+pace.Allow(3000, 5*time.Minute))
	defer cancel()
	const clients = 4
	l := NewLoad(t, v.HC, v.Targets, 4000, 400*time.Millisecond)
	stop := make(chan struct{})
	loadStarted := time.Now()
	done := l.Start(ctx, clients, stop)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()
	// Long enough a run before the outage to tell how fast the load flows on this machine now.
	deploytest.WaitFor(t, ctx, "uploads accepted before the outage", func() bool {
		return len(l.AcceptedTimes()) >= 10 && time.Since(loadStarted) >= 5*time.Second
	})

	began := time.Now()
	before := l.AcceptedBetween(loadStarted, began)
	o.Begin()
	t.Logf("%s: began with %d uploads accepted", o.Name, before)
	backoff.Sleep(ctx, o.Duration)
	ended := time.Now()
	o.End()
	restored := time.Now()
	recoverWithin := pace.Allow(1000, 2*time.Minute)
	recoveredBy := ended.Add(recoverWithin)
	deploytest.WaitFor(t, ctx, "uploads accepted after the outage", func() bool {
		return !l.FirstAcceptedAfter(restored).IsZero() || time.Now().After(recoveredBy)
	})
	backoff.Sleep(ctx, 5*time.Second) // and a little more load on the recovered deployment
	close(stop)
	<-done

	recovery := l.FirstAcceptedAfter(restored).Sub(restored)
	during := l.AcceptedBetween(began, ended)
	db := v.DB()
	l.w.VerifyAnswered(t, ctx, v.HC, v.FEAddr, db, v.ST())
	tasks, err := deploytest.ListTasks(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	// The backlog: the tasks made before the outage ended; when the last of them finished tells how long
	// recovery took.
	var lastFinish time.Time
	finishedDuring := 0
	for _, task := range tasks {
		if task.State != wire.Finished {
			continue
		}
		if task.CreatedAt.Before(ended) && task.FinishedAt.After(lastFinish) {
			lastFinish = task.FinishedAt
		}
		if !task.FinishedAt.Before(began) && task.FinishedAt.Before(ended) {
			finishedDuring++
		}
	}
	drained := max(lastFinish.Sub(restored), 0)

	answers, longest := l.Answers(), l.Longest()
	t.Logf("OUTAGE %s for %v: %d uploads accepted (%d while it lasted), %d tasks finished while it lasted; clients saw: %s; "+
		"the longest wait for an answer to an upload %v; first upload accepted %v after it was back; every task made before "+
		"it ended finished by %v after it was back",
		o.Name, o.Duration, len(l.AcceptedTimes()), during, finishedDuring, Summary(answers), longest.Round(100*time.Millisecond),
		recovery.Round(10*time.Millisecond), drained.Round(100*time.Millisecond))
	if l.FirstAcceptedAfter(restored).IsZero() {
		t.Errorf("no upload accepted within %v of the end of the outage (1000 round trips at the pace of %v, at least 2 minutes)",
			recoverWithin.Round(time.Second), pace)
	}
	for _, a := range answers {
		if !slices.Contains(o.Allowed, a.Status) || !a.RetryAfter {
			t.Errorf("%s: a client asking for %s at +%v got %d (Retry-After: %v) %q; want only %v with Retry-After",
				o.Name, a.Via, a.At.Sub(began).Round(time.Millisecond), a.Status, a.RetryAfter, a.Msg, o.Allowed)
		}
	}
	if o.Flowing {
		// As many uploads while it lasted as the same load had at its rate before it, give or take what
		// a machine whose load changes meanwhile makes of that; a stall makes none.
		expected := int(float64(before) * float64(o.Duration) / float64(began.Sub(loadStarted)))
		if during < expected/4 || finishedDuring < expected/4 {
			t.Errorf("%s: %d uploads accepted and %d tasks finished while it lasted, against %d at the rate of the "+
				"%v before it; it was to stall nothing", o.Name, during, finishedDuring, expected, began.Sub(loadStarted).Round(time.Second))
		}
	}
}

func (l *Load) AcceptedTimes() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.accepted)
}

// Answers are the refusals and requests without an answer seen so far.
func (l *Load) Answers() []Answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.answers)
}

// Longest is the longest wait for an answer to an upload so far.
func (l *Load) Longest() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.longest
}

// Workload is the images of the load and what was answered for them.
func (l *Load) Workload() *deploytest.Workload { return l.w }

// StartEmbedded starts the embedded split deployment (every service a process, with the default
// lifecycle) with its data under dir ("" for a temporary directory) and returns the view of it that
// Run needs.
func StartEmbedded(t *testing.T, dir string) (*deploytest.Deployment, View) {
	t.Helper()
	d := deploytest.New(t)
	if dir != "" {
		d.Dir = dir
	}
	d.StartBackends()
	d.StartWorker("worker")
	d.StartFrontend()
	d.WaitServing(d.FEAddr)
	return d, View{HC: d.HC, Targets: []Target{{Frontend: true, Addr: d.FEAddr}, {Addr: d.RegisteredMaster()}},
		FEAddr: d.FEAddr, DB: d.Database, ST: d.Storage, Master: d.Master}
}

// TransientStatuses are what a client may see while something imgmill depends on is away.
var TransientStatuses = []int{http.StatusServiceUnavailable, http.StatusInsufficientStorage}
