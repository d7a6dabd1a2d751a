package database_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestCancelTask(t *testing.T) {
	db := newDB(t, longLease)
	queued := db.newTask(false)
	processing := db.newTask(false)
	finished := db.newTask(false)
	db.claim(queued) // a task handed back is queued again, and cancels as one
	db.expect("POST", "/releaseTask", idQuery(queued), "", 200, "success")

	tk := wantTask(t, db.call("POST", "/cancelTask", idQuery(queued), ""), queued, 4)
	if tk.Error != "cancelled" || tk.FinishedAt == nil {
		t.Errorf("cancelled task: %+v", tk)
	}
	wantTask(t, db.call("POST", "/cancelTask", idQuery(queued), ""), queued, 4) // idempotent
	db.getByID(queued, 4)

	holder := db.claim(processing)
	done := db.claim(finished)
	db.expect("POST", "/finishTask", tokenQuery(finished, done.Token), "", 200, "success")
	wantTask(t, db.call("POST", "/cancelTask", idQuery(processing), ""), processing, 4)
	gone := fmt.Sprintf("Error: task %d was cancelled", processing)
	db.expect("POST", "/extendLease", tokenQuery(processing, holder.Token), "", 410, gone)
	db.expect("POST", "/finishTask", tokenQuery(processing, holder.Token), "", 410, gone)
	db.expect("POST", "/failTask", failQuery(holder, "boom", false), "", 410, gone)
	db.getByID(processing, 4)

	db.expect("POST", "/cancelTask", idQuery(finished), "", 409, fmt.Sprintf("Error: task %d already finished", finished))
	db.getByID(finished, 2)
	db.expect("POST", "/cancelTask", idQuery(42), "", 400, "Error: no task with id 42")
	db.expect("POST", "/cancelTask", nil, "", 400, "Error: missing id parameter")
	db.expectNoTask()
	db.expect("GET", "/stats", nil, "", 200,
		`{"queued":0,"pending":0,"processing":0,"finished":1,"failed":0,"cancelled":2}`)
}

func TestDeleteTask(t *testing.T) {
	db := newDB(t, longLease)
	finished := db.newTask(false)
	processing := db.newTask(false)
	queued := db.newTask(false)
	done := db.claim(finished)
	db.expect("POST", "/finishTask", tokenQuery(finished, done.Token), "", 200, "success")
	holder := db.claim(processing)

	for _, id := range []int64{finished, processing, queued} {
		for range 2 { // a repeated delete answers the same
			db.expect("DELETE", "/task", idQuery(id), "", 204, "")
		}
		db.expect("GET", "/getById", idQuery(id), "", 400, fmt.Sprintf("Error: no task with id %d", id))
	}
	db.expect("POST", "/finishTask", tokenQuery(processing, holder.Token), "", 410,
		fmt.Sprintf("Error: task %d was cancelled", processing))
	db.expect("DELETE", "/task", idQuery(42), "", 404, "Error: no task with id 42")
	db.expect("DELETE", "/task", nil, "", 400, "Error: missing id parameter")
	db.expectNoTask()
	db.expect("GET", "/list", nil, "", 200, "")
	db.expect("GET", "/stats", nil, "", 200,
		`{"queued":0,"pending":0,"processing":0,"finished":0,"failed":0,"cancelled":0}`)
	if id := db.newTask(false); id != 3 {
		t.Errorf("new task after deletes got id %d, want 3", id)
	}
}

// TestClaimExpired: settled tasks carry expiresAt and, once past the retention, are handed out in held
// batches; unsettled ones are never. With no retention nothing is handed out.
func TestClaimExpired(t *testing.T) {
	const retention = time.Millisecond
	db := newDBPolicy(t, database.Policy{Lease: longLease, Retention: retention})
	finished := db.newTask(false)
	failed := db.newTask(false)
	queued := db.newTask(false)
	done := db.claim(finished)
	db.expect("POST", "/finishTask", tokenQuery(finished, done.Token), "", 200, "success")
	db.expect("POST", "/setById", nil, fmt.Sprintf(`{"id":%d,"state":3}`, failed), 200, "success")
	for _, id := range []int64{finished, failed} {
		var tk wire.Task
		if r := db.call("GET", "/getById", idQuery(id), ""); json.Unmarshal([]byte(r.Body), &tk) != nil ||
			tk.FinishedAt.IsZero() || !tk.ExpiresAt.Equal(tk.FinishedAt.Add(retention)) {
			t.Errorf("settled task %d: %q, want expiresAt = finishedAt + %v", id, r.Body, retention)
		}
	}
	if r := db.call("GET", "/getById", idQuery(queued), ""); strings.Contains(r.Body, "expiresAt") {
		t.Errorf("queued task: %q has expiresAt", r.Body)
	}
	time.Sleep(2 * retention) // the real clock must pass the retention: a wait that cannot be too short
	first := fmt.Sprintf(`{"ids":[%d]}`, finished)
	db.expect("POST", "/claimExpired", url.Values{"limit": {"1"}}, "", 200, first)
	db.expect("POST", "/claimExpired", nil, "", 200, fmt.Sprintf(`{"ids":[%d]}`, failed))
	db.expect("POST", "/claimExpired", nil, "", 200, `{"ids":[]}`) // held
	// A sweep removes it, so it is not queued again.
	db.expect("POST", "/requeueTask", idQuery(failed), "", 410, fmt.Sprintf("Error: task %d expired: it is being removed", failed))
	for _, bad := range []string{"0", "x", "1001"} {
		r := db.call("POST", "/claimExpired", url.Values{"limit": {bad}}, "")
		if r.Status != 400 || !strings.HasPrefix(r.Body, "Error: limit must be") {
			t.Errorf("limit=%s: %d %q, want 400", bad, r.Status, r.Body)
		}
	}

	forever := newDB(t, longLease)
	id := forever.newTask(false)
	forever.expect("POST", "/setById", nil, fmt.Sprintf(`{"id":%d,"state":3}`, id), 200, "success")
	forever.expect("POST", "/claimExpired", nil, "", 200, `{"ids":[]}`)
}

// TestUsage: GET /usage counts an owner's tasks from their creation and the size activateTask was told,
// until they are deleted; a bad size is refused.
func TestUsage(t *testing.T) {
	db := newDB(t, longLease)
	db.expect("GET", "/usage", url.Values{"owner": {""}}, "", 200, `{"tasks":0,"bytes":0}`)
	a := db.newTask(true)
	b := db.newTask(true)
	db.expect("GET", "/usage", nil, "", 200, `{"tasks":2,"bytes":0}`)
	db.expect("POST", "/activateTask", url.Values{"id": {fmt.Sprint(a)}, "size": {"1000"}}, "", 200, "success")
	db.expect("POST", "/activateTask", url.Values{"id": {fmt.Sprint(b)}, "size": {"-1"}}, "", 400,
		`Error: size: want a number of bytes, got "-1"`)
	db.expect("POST", "/activateTask", idQuery(b), "", 200, "success") // a reference master tells no size
	db.expect("GET", "/usage", url.Values{"owner": {""}}, "", 200, `{"tasks":2,"bytes":1000}`)
	db.expect("GET", "/usage", url.Values{"owner": {"someone else"}}, "", 200, `{"tasks":0,"bytes":0}`)
	db.expect("DELETE", "/task", idQuery(a), "", 204, "")
	db.expect("GET", "/usage", nil, "", 200, `{"tasks":1,"bytes":0}`)
}

// TestRequeueTask: a failed or cancelled task is queued again with a full set of attempts and no error,
// and the holder of its earlier claim is refused; other states are 409, a cancelled upload 410.
func TestRequeueTask(t *testing.T) {
	db := newDB(t, longLease)
	failed := db.newTask(false)
	cancelled := db.newTask(false)
	finished := db.newTask(false)
	upload := db.newTask(true) // pending, cancelled before its upload completed
	holder := db.claim(failed)
	wantTask(t, db.call("POST", "/failTask", failQuery(holder, "cannot decode", true), ""), failed, 3)
	wantTask(t, db.call("POST", "/cancelTask", idQuery(cancelled), ""), cancelled, 4)
	done := db.claim(finished)
	db.expect("POST", "/finishTask", tokenQuery(finished, done.Token), "", 200, "success")
	wantTask(t, db.call("POST", "/cancelTask", idQuery(upload), ""), upload, 4)

	for _, id := range []int64{failed, cancelled} {
		tk := wantTask(t, db.call("POST", "/requeueTask", idQuery(id), ""), id, 0)
		if tk.Error != "" || tk.Attempts != 0 || tk.FinishedAt != nil || tk.Pending {
			t.Errorf("requeued task %d: %+v, want queued with no error, attempts nor finish time", id, tk)
		}
		db.expect("POST", "/requeueTask", idQuery(id), "", 409, fmt.Sprintf("Error: task %d is neither failed nor cancelled", id))
	}
	db.expect("POST", "/finishTask", tokenQuery(failed, holder.Token), "", 400, fmt.Sprintf("Error: task %d is not in progress", failed))
	db.expect("POST", "/requeueTask", idQuery(finished), "", 409, fmt.Sprintf("Error: task %d is neither failed nor cancelled", finished))
	db.expect("POST", "/requeueTask", idQuery(upload), "", 410,
		fmt.Sprintf("Error: task %d has no image: its upload never completed", upload))
	db.expect("POST", "/requeueTask", idQuery(42), "", 400, "Error: no task with id 42")
	db.expect("POST", "/requeueTask", nil, "", 400, "Error: missing id parameter")
	again := db.claim(failed)
	if again.Token <= holder.Token || again.Attempts != 1 {
		t.Errorf("claim of the requeued task: token %d (before %d), attempts %d; want a larger token, attempt 1",
			again.Token, holder.Token, again.Attempts)
	}
	db.claim(cancelled)
	db.expectNoTask()
}

// TestNewTaskName: the upload's name is kept and answered with the task; one with a directory part or
// a control character is refused.
func TestNewTaskName(t *testing.T) {
	db := newDB(t, longLease)
	r := db.call("POST", "/newTask", url.Values{"name": {"ğüş leaf.jpg"}}, "")
	if r.Status != 200 {
		t.Fatalf("POST /newTask with a name: %d %q", r.Status, r.Body)
	}
	if tk := db.getByID(0, 0); tk.Name != "ğüş leaf.jpg" {
		t.Errorf("name = %q, want ğüş leaf.jpg", tk.Name)
	}
	for _, bad := range []string{"../etc/passwd", "a\\b.png", "x\ny.png", strings.Repeat("a", 201)} {
		r := db.call("POST", "/newTask", url.Values{"name": {bad}}, "")
		if r.Status != 400 || !strings.HasPrefix(r.Body, "Error: name: ") {
			t.Errorf("POST /newTask name=%q: %d %q, want 400 Error: name: ...", bad, r.Status, r.Body)
		}
	}
}
