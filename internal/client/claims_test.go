package client_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestGetNewTasksShapes: a batch claim reads both answers, the batch and one task JSON (a peer that
// ignores max), tells them apart, refuses a batch larger than asked, and sends no max for one task.
func TestGetNewTasksShapes(t *testing.T) {
	var mu sync.Mutex
	var reply string
	var maxes []string
	mux := http.NewServeMux()
	mux.HandleFunc("/getNewTask", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		maxes = append(maxes, r.URL.Query().Get(wire.MaxTasksParam))
		fmt.Fprint(w, reply)
	})
	m := client.NewMaster(servicetest.NewHTTPClient(t), client.Static(referencePeer(t, mux)))
	answer := func(body string) {
		mu.Lock()
		defer mu.Unlock()
		reply = body
	}

	answer(`{"tasks":[{"id":3,"state":1,"token":7},{"id":4,"state":1,"token":2}]}`)
	ts, batched, err := m.GetNewTasks(t.Context(), 0, 4)
	if err != nil || !batched || len(ts) != 2 || ts[0].ID != 3 || ts[0].Token != 7 || ts[1].ID != 4 {
		t.Errorf("batch answer: %+v, batched %v, %v; want tasks 3 and 4, batched", ts, batched, err)
	}

	answer(`{"id":5,"state":1}`)
	ts, batched, err = m.GetNewTasks(t.Context(), 0, 4)
	if err != nil || batched || len(ts) != 1 || ts[0].ID != 5 {
		t.Errorf("one task JSON: %+v, batched %v, %v; want task 5, not batched", ts, batched, err)
	}

	answer(`{"tasks":[{"id":1,"state":1},{"id":2,"state":1},{"id":3,"state":1}]}`)
	if ts, _, err := m.GetNewTasks(t.Context(), 0, 2); err == nil {
		t.Errorf("3 tasks for max=2: %+v, want an error", ts)
	}
	answer(`{"tasks":[]}`)
	if ts, _, err := m.GetNewTasks(t.Context(), 0, 2); err == nil {
		t.Errorf("no tasks in a batch: %+v, want an error", ts)
	}

	answer("Error: " + wire.NoTaskMessage) // the reference master's refusal, with 200
	if _, _, err := m.GetNewTasks(t.Context(), 0, 4); !client.IsNoTask(err) {
		t.Errorf("no task: %v, want IsNoTask", err)
	}

	answer(`{"id":6,"state":1}`)
	if ts, _, err := m.GetNewTasks(t.Context(), 0, 1); err != nil || len(ts) != 1 || ts[0].ID != 6 {
		t.Errorf("n=1: %+v, %v; want task 6", ts, err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"4", "4", "2", "2", "4", ""}
	if fmt.Sprint(maxes) != fmt.Sprint(want) {
		t.Errorf("max parameters sent %q, want %q (none for one task)", maxes, want)
	}
}
