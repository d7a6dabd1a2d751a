package frontend

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/wire"
)

// Event stream watching; variables so tests can shorten them.
var (
	// statusesWait is how long one watch request to the master waits for news.
	statusesWait = master.MaxReadyWait
	// watchGap spaces the watch requests, so that however many streams open or tasks change, a
	// frontend asks the master at most about ten times a second.
	watchGap = 100 * time.Millisecond
	// legacyPoll spaces the per-task polls for a master without POST /statuses.
	legacyPoll = 500 * time.Millisecond
)

// errTooManyWatched refuses a stream for a new task when the frontend already watches as many as one
// watch request can carry.
var errTooManyWatched = &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: streamRetryAfter,
	Msg: "too many tasks watched by event streams, retry later"}

// watcher watches the tasks of every open event stream with one long poll of the master's POST
// /statuses, woken by the master when one of them changes, and wakes the streams of the tasks that
// changed: the master sees one request per frontend (at most one per watchGap) instead of a poll per
// stream. It runs only while some stream watches.
type watcher struct {
	master Master

	mu      sync.Mutex
	tasks   map[int64]*watched
	running bool
	restart context.CancelFunc // ends the watch request under way, to take in a new task; nil when none
	idle    chan struct{}      // signalled when the last stream goes, to end a pause at once
	legacy  bool               // the master has no POST /statuses: poll /status per task
}

// watched is one task and the streams that watch it.
type watched struct {
	known wire.Status
	err   error // permanent: the task is gone or cannot be watched
	subs  map[chan struct{}]struct{}
}

func newWatcher(m Master) *watcher {
	return &watcher{master: m, tasks: map[int64]*watched{}, idle: make(chan struct{}, 1)}
}

// watch registers a stream for task id, whose status the stream has just shown as known: wake (buffered,
// and shared by all the tasks of one stream) is signalled when the status changes. It returns a function
// returning the latest status (or the permanent error that ends the task's part of the stream), and one
// that unregisters the stream. The watcher, when this starts it, logs with ctx's logger.
func (w *watcher) watch(ctx context.Context, id int64, known wire.Status, wake chan struct{}) (func() (wire.Status, error), func(), error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.tasks[id]
	if t == nil {
		if len(w.tasks) >= wire.MaxStatusIDs {
			return nil, nil, errTooManyWatched
		}
		t = &watched{known: known, subs: map[chan struct{}]struct{}{}}
		w.tasks[id] = t
		if w.restart != nil {
			w.restart() // the request under way does not ask about this task
		}
	} else if t.err != nil || known.Differs(t.known) {
		// The stream saw news the watcher has not seen yet (or the other way round): wake it to
		// compare once the watcher has looked.
		signal(wake)
	}
	t.subs[wake] = struct{}{}
	if !w.running {
		w.running = true
		go w.run(httpapi.LoggerFrom(ctx))
	}
	current := func() (wire.Status, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return t.known, t.err
	}
	stop := func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(t.subs, wake)
		if len(t.subs) == 0 && w.tasks[id] == t {
			delete(w.tasks, id)
		}
		if len(w.tasks) == 0 {
			if w.restart != nil {
				w.restart()
			}
			select {
			case w.idle <- struct{}{}:
			default:
			}
		}
	}
	return current, stop, nil
}

// signal wakes a stream without waiting: a wake-up already pending covers this one.
func signal(wake chan struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

// run asks the master about every watched task until none is watched.
func (w *watcher) run(logger *slog.Logger) {
	outage := backoff.Backoff{Min: time.Second, Max: 10 * time.Second}
	for {
		w.mu.Lock()
		if len(w.tasks) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		known := make([]wire.Status, 0, len(w.tasks))
		for id, t := range w.tasks {
			if t.err == nil {
				k := t.known
				k.ID = id
				known = append(known, k)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		w.restart = cancel
		legacy := w.legacy
		w.mu.Unlock()

		var got wire.Statuses
		var err error
		switch {
		case len(known) == 0:
			// Only streams about to end with their error are left: nothing to ask.
		case legacy:
			got, err = w.poll(ctx, known)
		default:
			got, err = w.master.Statuses(ctx, known, statusesWait)
		}
		restarted := ctx.Err() != nil
		cancel()
		pause := watchGap
		switch {
		case restarted:
		case client.IsStatus(err, http.StatusNotFound) || client.IsStatus(err, http.StatusMethodNotAllowed):
			// Once per watcher: legacy stays set. An older imgmill master, or the reference design's,
			// whose /status is then its /isReady (client.Master.Status).
			logger.Info("the master has no POST /statuses: event streams poll each task", "err", err)
			w.mu.Lock()
			w.legacy = true
			w.mu.Unlock()
		case err != nil && fault.IsTransient(err):
			// The master or what is behind it is away for now: the streams wait it out (their
			// keep-alives go on) rather than make every page reconnect.
			pause = max(outage.Next(), retryAfterOf(err))
		case err != nil:
			logger.Warn("event streams: task statuses", "err", err)
			w.apply(wire.Statuses{}, known, err)
		default:
			outage.Reset()
			w.apply(got, nil, nil)
			if legacy {
				pause = legacyPoll
			}
		}
		timer := time.NewTimer(pause)
		select {
		case <-timer.C:
		case <-w.idle:
		}
		timer.Stop()
	}
}

// apply takes in the master's news and wakes the streams of the tasks concerned; failed, when err is
// set, are tasks that cannot be watched (err ends their streams).
func (w *watcher) apply(got wire.Statuses, failed []wire.Status, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wake := func(t *watched) {
		for ch := range t.subs {
			signal(ch)
		}
	}
	for _, st := range got.Statuses {
		if t := w.tasks[st.ID]; t != nil {
			t.known = st
			wake(t)
		}
	}
	for _, id := range got.Missing {
		if t := w.tasks[id]; t != nil {
			t.err = errNoSuchTask
			wake(t)
		}
	}
	for _, st := range failed {
		if t := w.tasks[st.ID]; t != nil {
			t.err = err
			wake(t)
		}
	}
}

// poll is POST /statuses done with one GET /status per task, for a master that lacks it.
func (w *watcher) poll(ctx context.Context, known []wire.Status) (wire.Statuses, error) {
	out := wire.Statuses{}
	for _, k := range known {
		st, err := w.master.Status(ctx, k.ID)
		switch {
		case client.IsStatus(err, http.StatusBadRequest) || client.IsStatus(err, http.StatusNotFound):
			out.Missing = append(out.Missing, k.ID)
		case err != nil:
			return out, fmt.Errorf("status of task %d: %w", k.ID, err)
		case st.Differs(k):
			out.Statuses = append(out.Statuses, st)
		}
	}
	return out, nil
}

// streamRetryAfter is the Retry-After of a refused event stream: streams last minutes, so a free
// place comes back within seconds rather than at once.
const streamRetryAfter = 5 * time.Second

// streamGate counts the open event streams, per client and in all, and refuses one beyond the caps:
// each holds a connection and a handler for up to maxEventStream.
type streamGate struct {
	max, perClient int // < 0: no cap

	mu       sync.Mutex
	total    int
	byClient map[string]int
}

func newStreamGate(max, perClient int) *streamGate {
	return &streamGate{max: max, perClient: perClient, byClient: map[string]int{}}
}

// acquire admits a stream from client, or refuses it: 429 when that client has perClient open, 503
// when the frontend has max; release frees its place.
func (g *streamGate) acquire(client string) (release func(), err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.perClient >= 0 && g.byClient[client] >= g.perClient {
		return nil, &httpapi.Error{Status: http.StatusTooManyRequests, RetryAfter: streamRetryAfter,
			Msg: fmt.Sprintf("too many open event streams from your address (%d), close some or retry later", g.perClient)}
	}
	if g.max >= 0 && g.total >= g.max {
		return nil, &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: streamRetryAfter,
			Msg: "too many open event streams, retry later"}
	}
	g.total++
	g.byClient[client]++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.total--
			if g.byClient[client]--; g.byClient[client] <= 0 {
				delete(g.byClient, client)
			}
		})
	}, nil
}
