package frontend_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// manyEvents opens GET /api/events?ids=... and sends its events on the channel returned.
func (s *stack) manyEvents(t *testing.T, header http.Header, ids ...string) <-chan event {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.frontendURL+"/api/events?ids="+strings.Join(ids, ","), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return streamEvents(t, s.HTTP, req)
}

// nextStatus expects the next event on ch to be a status, and returns it.
func nextStatus(t *testing.T, ch <-chan event) wire.PublicStatus {
	t.Helper()
	ev, ok := next(t, ch)
	var st wire.PublicStatus
	if !ok || ev.name != "status" || json.Unmarshal([]byte(ev.data), &st) != nil {
		t.Fatalf("event %+v (stream open: %v), want a status", ev, ok)
	}
	return st
}

// expectEventError expects the next event on ch to be an error about task id.
func expectEventError(t *testing.T, ch <-chan event, id, msg string) {
	t.Helper()
	ev, ok := next(t, ch)
	want := fmt.Sprintf(`{"id":%q,"error":%q}`, id, msg)
	if !ok || ev.name != "error" || ev.data != want {
		t.Fatalf("event %+v (stream open: %v), want error %s", ev, ok, want)
	}
}

// expectEnd expects the stream on ch to end.
func expectEnd(t *testing.T, ch <-chan event) {
	t.Helper()
	if ev, ok := next(t, ch); ok {
		t.Fatalf("event %+v, want the end of the stream", ev)
	}
}

// TestManyTaskEvents: one stream follows several tasks: an unknown id is an error event carrying it, a
// repeated id counts once, each task's status comes at once and on every change, a task deleted while
// followed is an error event, and the stream ends when every task is settled or dropped.
func TestManyTaskEvents(t *testing.T) {
	s := newStack(t)
	var pubs []string
	for i := range 3 {
		pubs = append(pubs, s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, int64(10+i)))))
	}
	const bad = "not-a-task-id"
	events := s.manyEvents(t, nil, pubs[0], bad, pubs[1], pubs[0], pubs[2])
	expectEventError(t, events, bad, "no such task")
	for _, pub := range pubs {
		if st := nextStatus(t, events); st.ID != pub || st.State != wire.QueuedWord || st.Op != "swap" {
			t.Fatalf("first status %+v, want %s queued", st, pub)
		}
	}
	// The first task finishes; the second is cancelled; the third is deleted.
	s.finish(t, s.internal(t, pubs[0]), servicetest.PatternPNG(t, 8, 20))
	got := map[string][]wire.Word{}
	for len(got[pubs[0]]) == 0 || got[pubs[0]][len(got[pubs[0]])-1] != wire.FinishedWord {
		st := nextStatus(t, events)
		got[st.ID] = append(got[st.ID], st.State)
	}
	if w := got[pubs[0]]; len(got) != 1 || len(w) > 2 || (len(w) == 2 && w[0] != wire.ProcessingWord) {
		t.Errorf("statuses after the first task finished: %v, want that task processing (maybe) then finished", got)
	}
	if r := s.call(t, http.MethodPost, "/api/tasks/"+pubs[1]+"/cancel", "", nil); r.Status != http.StatusOK {
		t.Fatalf("cancel: %d %q", r.Status, r.Body)
	}
	if st := nextStatus(t, events); st.ID != pubs[1] || st.State != wire.CancelledWord {
		t.Fatalf("after cancel: %+v, want %s cancelled", st, pubs[1])
	}
	if r := s.call(t, http.MethodDelete, "/api/tasks/"+pubs[2], "", nil); r.Status != http.StatusNoContent {
		t.Fatalf("delete: %d %q", r.Status, r.Body)
	}
	ev, ok := next(t, events)
	var e struct{ ID, Error string }
	if !ok || ev.name != "error" || json.Unmarshal([]byte(ev.data), &e) != nil || e.ID != pubs[2] || e.Error == "" {
		t.Fatalf("after delete: %+v, want an error event about %s", ev, pubs[2])
	}
	expectEnd(t, events)
}

// TestManyTaskEventsRefusals: no ids or more than 200 are refused before the stream; a set of ids
// none of which is a task still opens a stream, which says so for each and ends.
func TestManyTaskEventsRefusals(t *testing.T) {
	s := newStack(t)
	r := s.call(t, http.MethodGet, "/api/events", "", nil)
	expectJSONError(t, "no ids", r, http.StatusBadRequest, "no task ids: give them as ?ids=ID1,ID2,...")
	ids := make([]string, frontend.MaxEventIDs+1)
	for i := range ids {
		ids[i] = strings.Repeat("x", 40) + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	r = s.call(t, http.MethodGet, "/api/events?ids="+strings.Join(ids, ","), "", nil)
	expectJSONError(t, "201 ids", r, http.StatusBadRequest, `more than 200 task ids in "ids": ask for at most 200 at once`)
	// 200 distinct ids with repeats are fine (and all bad here).
	events := s.manyEvents(t, nil, append(ids[:frontend.MaxEventIDs], ids[0], ids[1])...)
	for _, id := range ids[:frontend.MaxEventIDs] {
		expectEventError(t, events, id, "no such task")
	}
	expectEnd(t, events)
}

// TestManyTaskEventsOneStreamPlace: fifty tasks followed through one stream take one place of the
// per-client stream limit, and the stream sees every one of them change.
func TestManyTaskEventsOneStreamPlace(t *testing.T) {
	const tasks = 50
	s := newStackWith(t, frontend.Limits{MaxStreamsPerClient: 1, TrustProxy: true})
	pubs := s.newTasks(t, tasks)
	from := http.Header{"X-Forwarded-For": {"192.0.2.7"}}
	events := s.manyEvents(t, from, pubs...)
	for _, pub := range pubs {
		if st := nextStatus(t, events); st.ID != pub || st.State != wire.QueuedWord {
			t.Fatalf("first status %+v, want %s queued", st, pub)
		}
	}
	r := s.callWith(t, http.MethodGet, "/api/events?ids="+pubs[0], "", nil, from)
	expectJSONError(t, "a second stream", r, http.StatusTooManyRequests,
		"too many open event streams from your address (1), close some or retry later")
	for range tasks {
		if _, err := s.Database.GetNewTask(t.Context(), 0); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for len(seen) < tasks {
		st := nextStatus(t, events)
		if st.State != wire.ProcessingWord || seen[st.ID] {
			t.Fatalf("after the claims: %+v (seen %d), want each task processing once", st, len(seen))
		}
		seen[st.ID] = true
	}
}
