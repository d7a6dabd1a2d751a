package database_test

import (
	"fmt"
	"testing"
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
