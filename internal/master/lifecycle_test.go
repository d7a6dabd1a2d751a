package master_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

func (s stack) cancel(t *testing.T, id int64) servicetest.Reply {
	t.Helper()
	return s.call(t, http.MethodPost, fmt.Sprintf("%s/cancel?id=%d", s.MasterURL, id), nil)
}

func (s stack) delete(t *testing.T, id int64) servicetest.Reply {
	t.Helper()
	return s.call(t, http.MethodDelete, fmt.Sprintf("%s/task?id=%d", s.MasterURL, id), nil)
}

func expectReply(t *testing.T, what string, r servicetest.Reply, status int, body string) {
	t.Helper()
	if r.Status != status || r.Body != body {
		t.Errorf("%s: %d %q, want %d %q", what, r.Status, r.Body, status, body)
	}
}

func TestCancel(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	id := s.uploadOK(t, servicetest.PatternPNG(t, 16, 30))
	for range 2 { // cancelling a cancelled task answers its status again
		r := s.cancel(t, id)
		var st wire.Status
		if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &st) != nil || st.State != wire.CancelledWord || st.ID != id {
			t.Fatalf("POST /cancel: %d %q, want 200 with state cancelled", r.Status, r.Body)
		}
	}
	s.ExpectNoClaimable(t) // a queued task, cancelled, never starts
	expectReply(t, "get of a cancelled task", s.call(t, http.MethodGet, fmt.Sprintf("%s/get?id=%d", s.MasterURL, id), nil),
		http.StatusNotFound, fmt.Sprintf("Error: task %d was cancelled", id))
	expectReply(t, "isReady of a cancelled task", s.call(t, http.MethodGet, fmt.Sprintf("%s/isReady?id=%d&wait=5s", s.MasterURL, id), nil),
		http.StatusOK, "0")
	if _, ok := s.StoredImage(t, id, wire.WorkingImage); !ok {
		t.Error("cancel removed the upload: only a delete does")
	}

	done := s.uploadOK(t, servicetest.PatternPNG(t, 16, 31))
	task := s.claim(t, done)
	if err := s.Database.FinishTask(t.Context(), done, task.Token); err != nil {
		t.Fatal(err)
	}
	expectReply(t, "cancel of a finished task", s.cancel(t, done), http.StatusConflict, fmt.Sprintf("Error: task %d already finished", done))
	expectReply(t, "cancel of an unknown task", s.cancel(t, 999), http.StatusNotFound, "Error: no task with id 999")
}

func TestDelete(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	finished := s.uploadOK(t, servicetest.PatternPNG(t, 16, 32))
	queued := s.uploadOK(t, servicetest.PatternPNG(t, 16, 33))
	task := s.claim(t, finished)
	result := servicetest.PatternPNG(t, 16, 34)
	if err := s.Storage.SendResult(ctx, finished, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.FinishTask(ctx, finished, task.Token); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{finished, queued} {
		for range 2 { // a repeated delete answers the same
			expectReply(t, "DELETE /task", s.delete(t, id), http.StatusNoContent, "")
		}
		for _, state := range []string{wire.WorkingImage, wire.FinishedImage} {
			if _, ok := s.StoredImage(t, id, state); ok {
				t.Errorf("task %d's %s image is still stored after the delete", id, state)
			}
		}
		expectReply(t, "get of a deleted task", s.call(t, http.MethodGet, fmt.Sprintf("%s/get?id=%d", s.MasterURL, id), nil),
			http.StatusNotFound, fmt.Sprintf("Error: no task with id %d", id))
	}
	if ids := s.listIDs(t); len(ids) != 0 {
		t.Errorf("database lists %v after deleting every task", ids)
	}
	s.ExpectNoClaimable(t)
	expectReply(t, "delete of an unknown task", s.delete(t, 999), http.StatusNotFound, "Error: no task with id 999")
}

// TestDeleteProcessing: a task deleted while a worker processes it refuses the worker (410), and the
// result the worker stored after the delete swept the images is removed when it reports it.
func TestDeleteProcessing(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	id := s.uploadOK(t, servicetest.PatternPNG(t, 16, 35))
	task := s.claim(t, id)
	expectReply(t, "DELETE /task", s.delete(t, id), http.StatusNoContent, "")
	gone := fmt.Sprintf("Error: task %d was cancelled", id)
	expectReply(t, "heartbeat of a deleted task", s.post(t, s.MasterURL, "/extendLease", tokenQuery(id, task.Token)), http.StatusGone, gone)
	result := servicetest.PatternPNG(t, 16, 36)
	if err := s.Storage.SendResult(t.Context(), id, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	expectReply(t, "finish of a deleted task", s.post(t, s.MasterURL, "/registerTaskFinished", tokenQuery(id, task.Token)),
		http.StatusGone, gone)
	if _, ok := s.StoredImage(t, id, wire.FinishedImage); ok {
		t.Error("the late result of a deleted task is still stored")
	}
}

// TestDeleteStorageDown: with storage away the delete answers 503 with Retry-After and the task stays,
// cancelled, for a retry to complete.
func TestDeleteStorageDown(t *testing.T) {
	s := newStack(t, servicetest.Options{MasterStorageAddr: deadAddr()})
	id, err := s.Database.NewTask(t.Context(), client.NewTaskParams{})
	if err != nil {
		t.Fatal(err)
	}
	r := s.delete(t, id)
	if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Errorf("DELETE /task with storage down: %d %q Retry-After %q, want 503 with Retry-After", r.Status, r.Body, r.Header.Get("Retry-After"))
	}
	if task := s.task(t, id); task.State != wire.Cancelled {
		t.Errorf("task after the failed delete = %+v, want it kept, cancelled", task)
	}
}

// TestExtendLeaseWaitHearsCancel: a heartbeat with wait renews the lease at once and is held; a cancel
// (or a delete) through the master answers it early with the database's 410, where it would otherwise
// answer the renewed task when the wait ends.
func TestExtendLeaseWaitHearsCancel(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	for _, act := range []struct {
		name string
		do   func(*testing.T, int64) servicetest.Reply
		want int
	}{{"cancel", s.cancel, http.StatusOK}, {"delete", s.delete, http.StatusNoContent}} {
		t.Run(act.name, func(t *testing.T) {
			id := s.uploadOK(t, servicetest.PatternPNG(t, 16, 37))
			claimed := s.claim(t, id)
			beat := make(chan servicetest.Reply, 1)
			go func() {
				// Far longer than the test: only a wake answers it in time, with 410.
				beat <- s.call(t, http.MethodPost, fmt.Sprintf("%s/extendLease?id=%d&token=%d&wait=%s", s.MasterURL, id,
					claimed.Token, wire.MaxLeaseWait), nil)
			}()
			// Once the lease was renewed, the heartbeat is held: the cancel comes after it.
			if !servicetest.PollFor(time.Minute, func() bool { return s.task(t, id).LeaseUntil.After(claimed.LeaseUntil) }) {
				t.Fatal("the heartbeat did not renew the lease")
			}
			if r := act.do(t, id); r.Status != act.want {
				t.Fatalf("%s: %d %q", act.name, r.Status, r.Body)
			}
			r := <-beat
			if r.Status != http.StatusGone || !strings.HasPrefix(r.Body, "Error: ") {
				t.Errorf("held heartbeat of a task cancelled meanwhile: %d %q, want 410", r.Status, r.Body)
			}
		})
	}

	// Nothing happens: the renewed task when the wait ends.
	id := s.uploadOK(t, servicetest.PatternPNG(t, 16, 38))
	claimed := s.claim(t, id)
	r := s.call(t, http.MethodPost, fmt.Sprintf("%s/extendLease?id=%d&token=%d&wait=50ms", s.MasterURL, id, claimed.Token), nil)
	var task wire.Task
	if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &task) != nil || !task.LeaseUntil.After(claimed.LeaseUntil) {
		t.Errorf("held heartbeat: %d %q, want the task with a renewed lease", r.Status, r.Body)
	}
	expectReply(t, "heartbeat with a bad wait", s.call(t, http.MethodPost, fmt.Sprintf("%s/extendLease?id=%d&token=%d&wait=1h", s.MasterURL, id, claimed.Token), nil),
		http.StatusBadRequest, "Error: wait must be between 0 and 10s")
}

func (s stack) retry(t *testing.T, id int64) servicetest.Reply {
	t.Helper()
	return s.call(t, http.MethodPost, fmt.Sprintf("%s/retry?id=%d", s.MasterURL, id), nil)
}

// TestRetry: a failed or a cancelled task is queued again with its upload, its name and op kept and an
// earlier attempt's result removed; a task in another state is 409, one whose upload is gone 410.
func TestRetry(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	ctx := t.Context()
	r := s.call(t, http.MethodPost, s.MasterURL+"/new?op=grayscale&name=leaf.png", bytes.NewReader(servicetest.PatternPNG(t, 16, 40)))
	if r.Status != http.StatusOK {
		t.Fatalf("POST /new with a name: %d %q", r.Status, r.Body)
	}
	failed := servicetest.ParseID(t, r.Body)
	cancelled := s.uploadOK(t, servicetest.PatternPNG(t, 16, 41))
	gone := s.uploadOK(t, servicetest.PatternPNG(t, 16, 42))
	holder := s.claim(t, failed)
	stale := servicetest.PatternPNG(t, 16, 43)
	if err := s.Storage.SendResult(ctx, failed, holder.Token, bytes.NewReader(stale), int64(len(stale))); err != nil {
		t.Fatal(err)
	}
	fail := url.Values{"id": {fmt.Sprint(failed)}, "token": {fmt.Sprint(holder.Token)}, "reason": {"cannot decode"}, "permanent": {"true"}}
	if r := s.post(t, s.MasterURL, "/failTask", fail); r.Status != http.StatusOK {
		t.Fatalf("failTask: %d %q", r.Status, r.Body)
	}
	if r := s.cancel(t, cancelled); r.Status != http.StatusOK {
		t.Fatalf("cancel: %d %q", r.Status, r.Body)
	}

	for _, id := range []int64{failed, cancelled} {
		r := s.retry(t, id)
		var st wire.Status
		if r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &st) != nil || st.State != wire.QueuedWord || st.ID != id ||
			st.Error != "" || st.Attempts != 0 {
			t.Fatalf("POST /retry of task %d: %d %q, want 200 with state queued, no error, no attempts", id, r.Status, r.Body)
		}
		if id == failed && (st.Name != "leaf.png" || st.Op != "grayscale") {
			t.Errorf("retried status %+v lost the name or the op", st)
		}
		expectReply(t, "retry of a queued task", s.retry(t, id), http.StatusConflict,
			fmt.Sprintf("Error: task %d is queued: only a failed or cancelled task can be retried", id))
	}
	if _, ok := s.StoredImage(t, failed, wire.FinishedImage); ok {
		t.Error("the failed attempt's result is still stored after the retry")
	}
	if again := s.claim(t, failed); again.Token <= holder.Token || again.Attempts != 1 {
		t.Errorf("claim after the retry: %+v, want a token above %d and attempt 1", again, holder.Token)
	}
	s.claim(t, cancelled)

	if _, err := s.Database.CancelTask(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if err := s.Storage.DeleteImage(ctx, gone, wire.WorkingImage); err != nil {
		t.Fatal(err)
	}
	expectReply(t, "retry of a task whose upload is gone", s.retry(t, gone), http.StatusGone,
		fmt.Sprintf("Error: the upload of task %d is gone: upload the image again", gone))
	expectReply(t, "retry of an unknown task", s.retry(t, 999), http.StatusNotFound, "Error: no task with id 999")
	expectReply(t, "upload with a directory in its name",
		s.call(t, http.MethodPost, s.MasterURL+"/new?name=..%2Fx.png", bytes.NewReader(servicetest.PatternPNG(t, 16, 44))),
		http.StatusBadRequest, "Error: name: name has a directory part")
}
