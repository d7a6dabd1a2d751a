package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// Event streams: GET /api/tasks/{id}/events for one task and GET /api/events?ids=... for many, one
// code path (streamEvents); the single-task stream is the many-task one with one id whose refusals
// come before the stream.

// Event stream timing; variables so tests can shorten them.
var (
	// keepAliveEvery is how often an event stream without news sends a comment, so proxies keep it open.
	keepAliveEvery = 15 * time.Second
	// maxEventStream bounds an event stream's life (the server's write timeout is lifted for it).
	maxEventStream = 30 * time.Minute
)

// MaxEventIDs caps the tasks of one GET /api/events stream and of one GET /api/tasks.zip: a page's
// batch, and small enough that opening the stream (a status per task) stays cheap.
const MaxEventIDs = 200

// IDsParam is the query parameter of GET /api/events and GET /api/tasks.zip naming the tasks, public
// ids separated by commas.
const IDsParam = "ids"

// retryAfterOf is the wait a transient refusal asked for (Retry-After), or 0.
func retryAfterOf(err error) time.Duration {
	var e *httpapi.Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// changed reports whether b is news after a.
func changed(a, b wire.PublicStatus) bool {
	return a.State != b.State || a.Attempts != b.Attempts || a.MaxAttempts != b.MaxAttempts || a.Error != b.Error
}

// publicIDs reads the ids parameter of r: distinct public ids in the order given, 1 to MaxEventIDs.
// The ids are not decoded here: a bad one is the caller's to report.
func publicIDs(r *http.Request) ([]string, error) {
	var ids []string
	seen := map[string]bool{}
	for _, v := range r.URL.Query()[IDsParam] {
		for id := range strings.SplitSeq(v, ",") {
			if id = strings.TrimSpace(id); id == "" || seen[id] {
				continue
			}
			if len(ids) == MaxEventIDs {
				return nil, httpapi.Errorf(http.StatusBadRequest, "more than %d task ids in %q: ask for at most %d at once", MaxEventIDs, IDsParam, MaxEventIDs)
			}
			seen[id] = true
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil, httpapi.Errorf(http.StatusBadRequest, "no task ids: give them as ?%s=ID1,ID2,...", IDsParam)
	}
	return ids, nil
}

// permanent reports whether err is a refusal about the task itself (no such task, gone: 4xx) rather
// than a service being away, which refuses a whole request.
func permanent(err error) bool {
	var e *httpapi.Error
	return errors.As(err, &e) && e.Status < 500
}

// statusLookups is how many statuses the frontend asks the master for at once when a request names
// many tasks: a page re-opens its stream with every task it follows, so this is on its path.
const statusLookups = 8

// named is a task a request names by public id: its status, or why it has none (a permanent refusal
// such as no such task).
type named struct {
	id     int64
	public string
	st     wire.Status
	err    error
}

// statuses looks up the tasks publics name, a few at once. A refusal about a task is kept with it; a
// failure of the master (it is away) is returned, to refuse the whole request.
func (s *server) statuses(ctx context.Context, publics []string) ([]named, error) {
	out := make([]named, len(publics))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(statusLookups)
	for i, public := range publics {
		g.Go(func() error {
			n := &out[i]
			n.public = public
			if n.id, n.err = s.decode(public); n.err == nil {
				if n.st, n.err = s.master.Status(ctx, n.id); n.err != nil {
					n.err = publicError(n.err, n.id)
				}
			}
			if n.err != nil && !permanent(n.err) {
				return n.err
			}
			return nil
		})
	}
	return out, g.Wait()
}

// streamed is one task of an event stream.
type streamed struct {
	id      int64
	public  string
	raw     wire.Status
	st      wire.PublicStatus
	current func() (wire.Status, error) // from the watcher; nil while not watched
	done    bool                        // settled, or dropped after an error event
}

// eventError is the data of an "error" event: the task's id (left out by the single-task stream,
// whose wire format is {"error":...}) and what ended its part of the stream.
type eventError struct {
	ID    string `json:"id,omitempty"`
	Error string `json:"error"`
}

// handleTaskEvents streams the task's status as Server-Sent Events: "status" at once and on every
// change, until the task is finished, failed or cancelled, the client goes away, or maxEventStream
// passes. A refusal before the stream starts (no such task, too many streams) is a JSON error; a
// failure to get the status later ends the stream with an "error" event.
func (s *server) handleTaskEvents(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.apiTask(r)
	if err != nil {
		return err
	}
	release, err := s.streams.acquire(httpapi.ClientAddr(r, s.opts.TrustProxy))
	if err != nil {
		return err
	}
	defer release()
	raw, err := s.master.Status(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	return s.streamEvents(w, r, []*streamed{{id: id, public: public, raw: raw}}, nil, false)
}

// handleEvents streams the statuses of many tasks (?ids=...) as one stream, so that a page following
// any number of tasks holds one connection and one place of the per-client stream limit. A task that
// cannot be read (a bad id, no such task) is an "error" event carrying its id, at once or when it
// happens, and is dropped; the stream ends once every task is settled or dropped.
func (s *server) handleEvents(w http.ResponseWriter, r *http.Request) error {
	publics, err := publicIDs(r)
	if err != nil {
		return err
	}
	release, err := s.streams.acquire(httpapi.ClientAddr(r, s.opts.TrustProxy))
	if err != nil {
		return err
	}
	defer release()
	found, err := s.statuses(r.Context(), publics)
	if err != nil { // the master is away: the whole stream is refused, to be retried
		return err
	}
	var tasks []*streamed
	var dropped []eventError
	for _, n := range found {
		if n.err != nil {
			dropped = append(dropped, eventError{ID: n.public, Error: httpapi.ErrorMessage(n.err)})
		} else {
			tasks = append(tasks, &streamed{id: n.id, public: n.public, raw: n.st})
		}
	}
	return s.streamEvents(w, r, tasks, dropped, true)
}

// streamEvents streams tasks as Server-Sent Events: dropped's error events and every task's status at
// once, then each change until every task is settled (or dropped), the client goes away, or
// maxEventStream passes. many says whether error events carry the task's id. The stream does not
// poll: the frontend's one watcher (watch.go) wakes it when one of its tasks changes.
func (s *server) streamEvents(w http.ResponseWriter, r *http.Request, tasks []*streamed, dropped []eventError, many bool) error {
	wake := make(chan struct{}, 1) // one for all the stream's tasks: a wake-up looks at each
	for _, t := range tasks {
		t.st = publicStatus(t.raw, t.public)
		if t.done = t.st.State.Settled(); t.done {
			continue
		}
		current, stop, err := s.watcher.watch(r.Context(), t.id, t.raw, wake)
		if err != nil {
			return err
		}
		defer stop()
		t.current = current
	}
	ctx, cancel := context.WithTimeout(r.Context(), maxEventStream)
	defer cancel()
	rc := http.NewResponseController(w)
	// The server's read and write timeouts would cut the stream (the read one by ending the request's
	// context); maxEventStream bounds it instead. Servers that cannot lift them just end it earlier.
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	// send writes one event; flush sends what was written. The events of a wake-up go out together.
	var failed bool
	send := func(event string, v any) {
		b, err := json.Marshal(v) // one line: newlines in strings are escaped
		if err == nil && !failed {
			_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		}
		failed = failed || err != nil
	}
	flush := func() bool { return !failed && rc.Flush() == nil }
	for _, d := range dropped {
		send("error", d)
	}
	for _, t := range tasks {
		send("status", t.st)
	}
	if !flush() {
		return nil
	}
	open := func() bool { return slices.ContainsFunc(tasks, func(t *streamed) bool { return !t.done }) }
	keepAlive := time.NewTicker(keepAliveEvery)
	defer keepAlive.Stop()
	for open() {
		select {
		case <-ctx.Done():
			return nil
		case <-keepAlive.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return nil
			}
		case <-wake:
			for _, t := range tasks {
				if t.done {
					continue
				}
				raw, err := t.current()
				if err != nil {
					httpapi.LoggerFrom(ctx).WarnContext(ctx, "event stream: status", "err", err)
					if !errors.Is(err, errNoSuchTask) {
						err = publicError(err, t.id)
					}
					e := eventError{Error: httpapi.ErrorMessage(err)}
					if many {
						e.ID = t.public
					}
					send("error", e)
					t.done = true
					continue
				}
				if next := publicStatus(raw, t.public); changed(t.st, next) {
					send("status", next)
					t.st = next
					t.done = next.State.Settled()
				}
			}
			if !flush() {
				return nil
			}
		}
	}
	return nil
}
