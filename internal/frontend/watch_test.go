package frontend_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// newTasks creates n claimable tasks straight at the database and returns their public ids.
func (s *stack) newTasks(t *testing.T, n int) []string {
	t.Helper()
	pubs := make([]string, n)
	for i := range pubs {
		id, err := s.Database.NewTask(t.Context(), client.NewTaskParams{})
		if err != nil {
			t.Fatal(err)
		}
		pubs[i] = s.ids.Encode(id)
	}
	return pubs
}

// TestManyStreamsOneWatch: 300 open event streams cost the master a handful of requests a second (one
// shared watch), not a poll each; and every stream still sees its task change.
func TestManyStreamsOneWatch(t *testing.T) {
	const streams = 300
	s := newStackWith(t, frontend.Limits{MaxStreamsPerClient: master.NoLimit})
	pubs := s.newTasks(t, streams)
	events := make([]<-chan event, streams)
	for i, pub := range pubs {
		events[i] = s.events(t, pub)
		if ev, ok := next(t, events[i]); !ok || ev.name != "status" || !strings.Contains(ev.data, `"state":"queued"`) {
			t.Fatalf("stream %d: first event %+v, want queued", i, ev)
		}
	}
	before := s.master.calls.Load()
	start := time.Now()
	time.Sleep(3 * time.Second)
	calls, elapsed := s.master.calls.Load()-before, time.Since(start)
	t.Logf("%d open streams: %d master requests in %s (%.1f/s)", streams, calls, elapsed.Round(time.Millisecond), float64(calls)/elapsed.Seconds())
	// At most one watch request per watchGap (100ms), whatever the number of streams; a poll per
	// stream would be hundreds a second.
	if max := int64(elapsed/(100*time.Millisecond)) + 2; calls > max {
		t.Errorf("%d open streams made %d master requests in %s, want at most %d", streams, calls, elapsed, max)
	}

	// Every task changes (claimed straight at the database, as by another master): every stream shows it.
	for range streams {
		if _, err := s.Database.GetNewTask(t.Context(), 0); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := range events {
		wg.Go(func() {
			if ev, ok := next(t, events[i]); !ok || ev.name != "status" || !strings.Contains(ev.data, `"state":"processing"`) {
				t.Errorf("stream %d after the claim: %+v, want processing", i, ev)
			}
		})
	}
	wg.Wait()
}

// TestStreamCaps: beyond the open streams allowed per client address the next is refused with 429,
// beyond those allowed in all with 503, both with Retry-After and a JSON error; a closed stream frees
// its place.
func TestStreamCaps(t *testing.T) {
	s := newStackWith(t, frontend.Limits{MaxStreams: 4, MaxStreamsPerClient: 2, TrustProxy: true})
	pubs := s.newTasks(t, 5)
	open := func(i int, from string) (servicetest.Reply, func()) {
		t.Helper()
		ctx, cancel := context.WithCancel(t.Context())
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.frontendURL+"/api/tasks/"+pubs[i]+"/events", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Forwarded-For", from)
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			return servicetest.Reply{Status: resp.StatusCode, Header: resp.Header}, func() { cancel(); resp.Body.Close() }
		}
		defer cancel()
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return servicetest.Reply{Status: resp.StatusCode, Header: resp.Header, Body: string(body)}, func() {}
	}
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for i, from := range []string{"192.0.2.1", "192.0.2.1"} {
		r, c := open(i, from)
		closers = append(closers, c)
		if r.Status != http.StatusOK {
			t.Fatalf("stream %d from %s: %d %q, want 200", i, from, r.Status, r.Body)
		}
	}
	r, _ := open(2, "192.0.2.1")
	expectJSONError(t, "a third stream from one address", r, http.StatusTooManyRequests,
		"too many open event streams from your address (2), close some or retry later")
	if r.Header.Get("Retry-After") != "5" {
		t.Errorf("429 Retry-After %q, want 5", r.Header.Get("Retry-After"))
	}
	for i, from := range []string{"192.0.2.2", "192.0.2.3"} {
		r, c := open(2+i, from)
		closers = append(closers, c)
		if r.Status != http.StatusOK {
			t.Fatalf("stream from %s: %d %q, want 200", from, r.Status, r.Body)
		}
	}
	r, _ = open(4, "192.0.2.4")
	expectJSONError(t, "a fifth stream in all", r, http.StatusServiceUnavailable, "too many open event streams, retry later")
	if r.Header.Get("Retry-After") != "5" {
		t.Errorf("503 Retry-After %q, want 5", r.Header.Get("Retry-After"))
	}
	// A closed stream frees its place (the handler notices the client gone at its next write or
	// wake-up; give it the time of a keep-alive).
	closers[0]()
	var again servicetest.Reply
	if !servicetest.PollFor(20*time.Second, func() bool {
		var c func()
		again, c = open(4, "192.0.2.4")
		closers = append(closers, c)
		return again.Status == http.StatusOK
	}) {
		t.Errorf("after a stream closed: %d %q, want a free place", again.Status, again.Body)
	}
}

// TestStreamsAgainstMasterWithoutStatuses: against a master that lacks POST /statuses (404), the
// streams still see every change, by a poll of /status per task.
func TestStreamsAgainstMasterWithoutStatuses(t *testing.T) {
	ids, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	st := servicetest.NewStack(t, servicetest.Options{})
	target, _ := url.Parse(st.MasterURL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var refused atomic.Int64
	front := servicetest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/statuses" {
			refused.Add(1)
			httpapi.WriteText(w, http.StatusNotFound, "Error: no endpoint /statuses")
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	s := &stack{Stack: st, ids: ids, master: &countingEndpoint{Static: client.Static(servicetest.Addr(front.URL))}}
	s.frontendURL = servicetest.Serve(t, frontend.NewServer(client.NewMaster(s.HTTP, s.master), ids, frontend.Limits{})).URL
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 44)))
	events := s.events(t, pub)
	expectState(t, events, pub, "queued")
	task, err := s.Database.GetNewTask(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	expectState(t, events, pub, "processing")
	if _, err := s.Master.FailTask(t.Context(), task.ID, task.Token, "cannot read this PNG: bad: save it as PNG or JPEG and upload it again", true); err != nil {
		t.Fatal(err)
	}
	if got := expectState(t, events, pub, "failed"); got.Error != "cannot read this PNG: bad: save it as PNG or JPEG and upload it again" {
		t.Errorf("failed with %q", got.Error)
	}
	if refused.Load() == 0 {
		t.Error("the frontend never asked for POST /statuses")
	}
}
