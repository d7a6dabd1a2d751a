package database_test

import (
	"encoding/json"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// claimBatch claims with max and decodes the {"tasks":[...]} answer.
func (s *dbServer) claimBatch(query url.Values) []task {
	s.t.Helper()
	r := s.call("POST", "/getNewTask", query, "")
	if r.Status != 200 {
		s.t.Fatalf("POST /getNewTask?%s = %d %q", query.Encode(), r.Status, r.Body)
	}
	var out struct {
		Tasks []task `json:"tasks"`
	}
	if err := json.Unmarshal([]byte(r.Body), &out); err != nil || out.Tasks == nil {
		s.t.Fatalf("POST /getNewTask?%s answered %q, not {\"tasks\":[...]} (%v)", query.Encode(), r.Body, err)
	}
	return out.Tasks
}

func maxQuery(n int) url.Values { return url.Values{wire.MaxTasksParam: {strconv.Itoa(n)}} }

func batchIDs(ts []task) []int64 {
	var ids []int64
	for _, tk := range ts {
		ids = append(ids, *tk.ID)
	}
	return ids
}

func TestClaimBatch(t *testing.T) {
	db := newDB(t, longLease)
	for range 5 {
		db.newTask(false)
	}
	got := db.claimBatch(maxQuery(3))
	if ids := batchIDs(got); len(ids) != 3 || ids[0] != 0 || ids[1] != 1 || ids[2] != 2 {
		t.Fatalf("max=3 claimed %v, want [0 1 2]", ids)
	}
	for _, tk := range got {
		if *tk.State != 1 || tk.Attempts != 1 || tk.Token <= 0 || tk.LeaseUntil == nil {
			t.Errorf("batch task %+v: want in progress, attempt 1, a token and a lease", tk)
		}
		// Each is a claim of its own, as /getById sees it.
		if rec := db.getByID(*tk.ID, 1); rec.Token != tk.Token {
			t.Errorf("task %d: token %d in the batch, %d on record", *tk.ID, tk.Token, rec.Token)
		}
	}
	// Fewer when fewer are queued.
	if ids := batchIDs(db.claimBatch(maxQuery(64))); len(ids) != 2 || ids[0] != 3 || ids[1] != 4 {
		t.Fatalf("max=64 with two queued claimed %v, want [3 4]", ids)
	}
	// None: the reference refusal, whatever the shape asked for.
	db.expect("POST", "/getNewTask", maxQuery(4), "", 400, noTask)
}

// TestClaimBatchOfOne: max=1 (and no max) answers the reference's task JSON.
func TestClaimBatchOfOne(t *testing.T) {
	db := newDB(t, longLease)
	id := db.newTask(false)
	wantTask(t, db.call("POST", "/getNewTask", maxQuery(1), ""), id, 1)
}

func TestClaimBatchBadMax(t *testing.T) {
	db := newDB(t, longLease)
	db.newTask(false)
	for _, raw := range []string{"0", "-1", "65", "abc", "2.5", "1e3"} {
		db.expect("POST", "/getNewTask", url.Values{wire.MaxTasksParam: {raw}}, "", 400,
			`Error: max must be a whole number from 1 to 64, got "`+raw+`"`)
	}
	// The refused claims took nothing.
	db.claim(0)
}

// TestClaimBatchLongPoll: a batch long poll answers as soon as one task is claimable, with what there is.
func TestClaimBatchLongPoll(t *testing.T) {
	db := newDB(t, longLease)
	ch := make(chan []task, 1)
	go func() {
		q := maxQuery(8)
		q.Set("wait", "10s")
		r, err := db.send("POST", "/getNewTask", q, "")
		if err != nil || r.Status != 200 {
			t.Errorf("long poll: %d %q %v", r.Status, r.Body, err)
			ch <- nil
			return
		}
		var out struct {
			Tasks []task `json:"tasks"`
		}
		if err := json.Unmarshal([]byte(r.Body), &out); err != nil {
			t.Errorf("long poll answered %q: %v", r.Body, err)
		}
		ch <- out.Tasks
	}()
	time.Sleep(200 * time.Millisecond)
	id := db.newTask(false)
	select {
	case got := <-ch:
		if ids := batchIDs(got); len(ids) != 1 || ids[0] != id {
			t.Errorf("long poll claimed %v, want [%d]", ids, id)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("a batch long poll did not answer within 8s of a task being created (its wait is 10s)")
	}
}
