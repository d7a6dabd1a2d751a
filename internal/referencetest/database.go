package referencetest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// Task is the reference's task JSON: an id and a state (0 not started, 1 in progress, 2 finished).
type Task struct {
	ID    int64      `json:"id"`
	State wire.State `json:"state"`
}

// Database is the reference task database, in memory: /newTask, /getById, /getNewTask, /finishTask,
// /setById and /list, nothing else. A new task is claimable at once (the reference has no pending
// uploads), a claim has no token and no heartbeat: a task in progress for StuckAfter is handed out again.
type Database struct {
	// StuckAfter is how long a task stays in progress before a claim may take it again; set it before
	// Start.
	StuckAfter time.Duration

	mu      sync.Mutex
	tasks   []Task      // tasks[i].ID == i
	started []time.Time // when tasks[i] was last claimed
	mux     *http.ServeMux
}

// DefaultStuckAfter is the reference's: a task in progress for 120 s is handed out again.
const DefaultStuckAfter = 120 * time.Second

// NewDatabase returns an empty database; ids count from 0.
func NewDatabase() *Database {
	d := &Database{StuckAfter: DefaultStuckAfter, mux: http.NewServeMux()}
	d.mux.HandleFunc("/newTask", d.newTask)
	d.mux.HandleFunc("/getById", d.getByID)
	d.mux.HandleFunc("/getNewTask", d.getNewTask)
	d.mux.HandleFunc("/finishTask", d.finishTask)
	d.mux.HandleFunc("/setById", d.setByID)
	d.mux.HandleFunc("/list", d.list)
	return d
}

func (d *Database) ServeHTTP(w http.ResponseWriter, r *http.Request) { d.mux.ServeHTTP(w, r) }

// Start serves the database on a free loopback port until the test ends, registers it in the kv store at
// kvAddr under wire.DatabaseKey, and returns its host:port.
func (d *Database) Start(t testing.TB, kvAddr string) string {
	t.Helper()
	addr := serve(t, d)
	register(t, kvAddr, wire.DatabaseKey, addr)
	return addr
}

// Tasks returns a copy of every task.
func (d *Database) Tasks() []Task {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Task(nil), d.tasks...)
}

func (d *Database) newTask(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	id := int64(len(d.tasks))
	d.tasks = append(d.tasks, Task{ID: id, State: wire.NotStarted})
	d.started = append(d.started, time.Time{})
	d.mu.Unlock()
	text(w, http.StatusOK, strconv.FormatInt(id, 10))
}

// task returns the task the id parameter names; the caller holds mu.
func (d *Database) task(r *http.Request) (*Task, error) {
	raw := r.URL.Query().Get("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 0 || id >= int64(len(d.tasks)) {
		return nil, refusal(fmt.Sprintf("No task with id %q.", raw))
	}
	return &d.tasks[id], nil
}

func (d *Database) getByID(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	t, err := d.task(r)
	var task Task
	if err == nil {
		task = *t
	}
	d.mu.Unlock()
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, task)
}

// getNewTask claims the first task not started, or in progress for StuckAfter; none: 400 "Error: No
// non-started task.".
func (d *Database) getNewTask(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	var claimed *Task
	now := time.Now()
	for i := range d.tasks {
		stuck := d.tasks[i].State == wire.InProgress && now.Sub(d.started[i]) >= d.StuckAfter
		if d.tasks[i].State == wire.NotStarted || stuck {
			d.tasks[i].State = wire.InProgress
			d.started[i] = now
			claimed = &Task{ID: d.tasks[i].ID, State: wire.InProgress}
			break
		}
	}
	d.mu.Unlock()
	if claimed == nil {
		text(w, http.StatusBadRequest, "Error: "+wire.NoTaskMessage)
		return
	}
	writeJSON(w, *claimed)
}

func (d *Database) finishTask(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	t, err := d.task(r)
	if err == nil && t.State != wire.InProgress {
		err = refusal(fmt.Sprintf("Task %d is not in progress.", t.ID))
	}
	if err == nil {
		t.State = wire.Finished
	}
	d.mu.Unlock()
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	text(w, http.StatusOK, "success")
}

func (d *Database) setByID(w http.ResponseWriter, r *http.Request) {
	var in Task
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	d.mu.Lock()
	ok := in.ID >= 0 && in.ID < int64(len(d.tasks)) && in.State >= wire.NotStarted && in.State <= wire.Finished
	if ok {
		d.tasks[in.ID].State = in.State
	}
	d.mu.Unlock()
	if !ok {
		fail(w, http.StatusBadRequest, fmt.Errorf("bad task %d or state %d", in.ID, in.State))
		return
	}
	text(w, http.StatusOK, "success")
}

func (d *Database) list(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	for _, t := range d.Tasks() {
		line, _ := json.Marshal(t) // two numbers: cannot fail
		b.Write(line)
		b.WriteByte('\n')
	}
	text(w, http.StatusOK, b.String())
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// refusal is an error in the reference database's own words (a capital, a full stop), which answers
// carry as they are.
type refusal string

func (r refusal) Error() string { return string(r) }
