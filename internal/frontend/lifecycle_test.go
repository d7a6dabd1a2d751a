package frontend_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestAPICancel(t *testing.T) {
	s := newStack(t)
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 12, 40)))
	for range 2 { // cancelling a cancelled task answers its status again
		r := s.call(t, http.MethodPost, "/api/tasks/"+pub+"/cancel", "", nil)
		var st wire.PublicStatus
		if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &st) != nil || st.ID != pub ||
			st.State != wire.CancelledWord || r.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("POST /api/tasks/P/cancel: %d %q, want 200 with the cancelled status", r.Status, r.Body)
		}
	}
	s.ExpectNoClaimable(t)
	expectJSONError(t, "result of a cancelled task", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil),
		http.StatusNotFound, "task was cancelled")
	r := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil)
	if st := (wire.PublicStatus{}); json.Unmarshal([]byte(r.Body), &st) != nil || st.State != wire.CancelledWord {
		t.Errorf("status of a cancelled task: %q", r.Body)
	}

	done := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 12, 41)))
	s.finish(t, s.internal(t, done), servicetest.PatternPNG(t, 12, 42))
	expectJSONError(t, "cancel of a finished task", s.call(t, http.MethodPost, "/api/tasks/"+done+"/cancel", "", nil),
		http.StatusConflict, "task already finished")
	for _, bad := range append(badIDs(t, pub), s.ids.Encode(12345)) {
		expectJSONError(t, "cancel of "+bad, s.call(t, http.MethodPost, "/api/tasks/"+escapePath(bad)+"/cancel", "", nil),
			http.StatusNotFound, "no such task")
	}
}

func TestAPIDelete(t *testing.T) {
	s := newStack(t)
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 12, 43)))
	id := s.internal(t, pub)
	s.finish(t, id, servicetest.PatternPNG(t, 12, 44))
	for range 2 { // a repeated delete answers the same
		if r := s.call(t, http.MethodDelete, "/api/tasks/"+pub, "", nil); r.Status != http.StatusNoContent || r.Body != "" {
			t.Fatalf("DELETE /api/tasks/P: %d %q, want 204", r.Status, r.Body)
		}
	}
	for _, state := range []string{wire.WorkingImage, wire.FinishedImage} {
		if _, ok := s.StoredImage(t, id, state); ok {
			t.Errorf("the %s image is still stored after the delete", state)
		}
	}
	for _, suffix := range []string{"", "/result", "/source"} {
		expectJSONError(t, "GET of a deleted task"+suffix, s.call(t, http.MethodGet, "/api/tasks/"+pub+suffix, "", nil),
			http.StatusNotFound, "no such task")
	}
	for _, bad := range append(badIDs(t, pub), s.ids.Encode(12345)) {
		expectJSONError(t, "delete of "+bad, s.call(t, http.MethodDelete, "/api/tasks/"+escapePath(bad), "", nil),
			http.StatusNotFound, "no such task")
	}

	// A page of another site cannot make its visitors delete tasks.
	other := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 12, 45)))
	r := s.callWith(t, http.MethodDelete, "/api/tasks/"+other, "", nil,
		http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://evil.example"}})
	expectJSONError(t, "cross-site DELETE", r, http.StatusForbidden, "requests to cancel or delete a task from a page of "+
		"https://evil.example are not accepted here; use this site's own page, or no browser")
	if _, ok := s.StoredImage(t, s.internal(t, other), wire.WorkingImage); !ok {
		t.Error("a refused cross-site delete removed the upload")
	}
}

// TestAPIRetry: a cancelled task retried is queued again and finishes; a task in another state is 409,
// one whose upload is gone 410, an id that names none 404.
func TestAPIRetry(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.created(t, s.createRaw(t, "?name=leaf.png", servicetest.PatternPNG(t, 12, 50)))
	retry := func(pub string) servicetest.Reply {
		return s.call(t, http.MethodPost, "/api/tasks/"+escapePath(pub)+"/retry", "", nil)
	}
	expectJSONError(t, "retry of a queued task", retry(pub), http.StatusConflict,
		"task is queued: only a failed or cancelled task can be retried")
	if r := s.call(t, http.MethodPost, "/api/tasks/"+pub+"/cancel", "", nil); r.Status != http.StatusOK {
		t.Fatalf("cancel: %d %q", r.Status, r.Body)
	}
	r := retry(pub)
	var st wire.PublicStatus
	if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &st) != nil || st.ID != pub || st.State != wire.QueuedWord ||
		st.Error != "" || st.Name != "leaf.png" || r.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("POST /api/tasks/P/retry: %d %q, want 200 with the queued status and the name", r.Status, r.Body)
	}
	result := servicetest.PatternPNG(t, 12, 51)
	s.finish(t, s.internal(t, pub), result)
	servicetest.ExpectPNGReply(t, "result of the retried task", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil), result)
	expectJSONError(t, "retry of a finished task", retry(pub), http.StatusConflict,
		"task is finished: only a failed or cancelled task can be retried")

	gone := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 12, 52)))
	if r := s.call(t, http.MethodPost, "/api/tasks/"+gone+"/cancel", "", nil); r.Status != http.StatusOK {
		t.Fatalf("cancel: %d %q", r.Status, r.Body)
	}
	if err := s.Storage.DeleteImage(ctx, s.internal(t, gone), wire.WorkingImage); err != nil {
		t.Fatal(err)
	}
	expectJSONError(t, "retry of a task whose upload is gone", retry(gone), http.StatusGone, "the upload is gone: upload the image again")
	for _, bad := range append(badIDs(t, pub), s.ids.Encode(12345)) {
		expectJSONError(t, "retry of "+bad, retry(bad), http.StatusNotFound, "no such task")
	}
}
