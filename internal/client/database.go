package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Task is the task JSON of the wire API. id and state are the reference fields; the rest are additive.
type Task struct {
	ID         int64     `json:"id"`
	State      int       `json:"state"`
	Attempts   int       `json:"attempts,omitempty"`
	CreatedAt  time.Time `json:"createdAt,omitzero"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
}

// Reference task states.
const (
	StateNotStarted = 0
	StateInProgress = 1
	StateFinished   = 2
)

// Database is a client of the database service.
type Database struct{ p peer }

// NewDatabase returns a database client reaching the service through ep.
func NewDatabase(hc *http.Client, ep Endpoint) *Database {
	return &Database{peer{name: "database", http: hc, ep: ep}}
}

// NewTask creates a task and returns its id. A pending task is not claimable until ActivateTask.
func (c *Database) NewTask(ctx context.Context, pending bool) (int64, error) {
	var q url.Values
	if pending {
		q = url.Values{"pending": {"true"}}
	}
	reply, err := c.p.text(ctx, http.MethodPost, "/newTask", q, nil, 0)
	if err != nil {
		return 0, err
	}
	return parseID(reply)
}

// ActivateTask makes a pending task claimable.
func (c *Database) ActivateTask(ctx context.Context, id int64) error {
	return expectSuccess(c.p.text(ctx, http.MethodPost, "/activateTask", idQuery(id), nil, 0))
}

func (c *Database) GetByID(ctx context.Context, id int64) (Task, error) {
	reply, err := c.p.text(ctx, http.MethodGet, "/getById", idQuery(id), nil, 0)
	if err != nil {
		return Task{}, err
	}
	return parseTask(reply)
}

// GetNewTask claims a task. With wait > 0 the database holds the request up to wait for a task to appear;
// IsNoTask(err) tells that none did.
func (c *Database) GetNewTask(ctx context.Context, wait time.Duration) (Task, error) {
	return claim(ctx, c.p, wait)
}

func (c *Database) FinishTask(ctx context.Context, id int64) error {
	return expectSuccess(c.p.text(ctx, http.MethodPost, "/finishTask", idQuery(id), nil, 0))
}

func (c *Database) SetByID(ctx context.Context, t Task) error {
	body, err := json.Marshal(struct {
		ID    int64 `json:"id"`
		State int   `json:"state"`
	}{t.ID, t.State})
	if err != nil {
		return err
	}
	return expectSuccess(c.p.text(ctx, http.MethodPost, "/setById", nil, bytes.NewReader(body), int64(len(body))))
}

// List returns the reference listing, one task per line.
func (c *Database) List(ctx context.Context) (string, error) {
	return c.p.text(ctx, http.MethodGet, "/list", nil, nil, 0)
}

// claim is the long-pollable claim shared by the database and master clients (the master passes the
// database's claim through).
func claim(ctx context.Context, p peer, wait time.Duration) (Task, error) {
	var q url.Values
	timeout := CallTimeout
	if wait > 0 {
		q = url.Values{"wait": {wait.String()}}
		timeout += wait
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := p.textNoTimeout(ctx, http.MethodPost, "/getNewTask", q, nil, 0)
	if err != nil {
		return Task{}, err
	}
	return parseTask(reply)
}

func idQuery(id int64) url.Values { return url.Values{"id": {strconv.FormatInt(id, 10)}} }

func parseID(reply string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(reply), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reply %q is not an id", truncate(reply))
	}
	return id, nil
}

func parseTask(reply string) (Task, error) {
	var t Task
	if err := json.Unmarshal([]byte(reply), &t); err != nil {
		return Task{}, fmt.Errorf("reply %q is not a task: %w", truncate(reply), err)
	}
	return t, nil
}
