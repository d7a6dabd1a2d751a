package client

import (
	"context"
	"io"
	"net/http"
	"time"
)

// Master is a client of the master service, for users (New, IsReady, Get) and workers (GetNewTask,
// RegisterTaskFinished).
type Master struct{ p peer }

// NewMaster returns a master client reaching the service through ep.
func NewMaster(hc *http.Client, ep Endpoint) *Master {
	return &Master{peer{name: "master", http: hc, ep: ep}}
}

// New uploads an image (size bytes, or -1 when unknown) and returns the task id.
func (c *Master) New(ctx context.Context, r io.Reader, size int64) (int64, error) {
	reply, err := c.p.textNoTimeout(ctx, http.MethodPost, "/new", nil, r, size)
	if err != nil {
		return 0, err
	}
	return parseID(reply)
}

// IsReady reports whether task id is finished.
func (c *Master) IsReady(ctx context.Context, id int64) (bool, error) {
	reply, err := c.p.text(ctx, http.MethodGet, "/isReady", idQuery(id), nil, 0)
	if err != nil {
		return false, err
	}
	return reply == "1", nil
}

// Get opens the finished image of task id.
func (c *Master) Get(ctx context.Context, id int64) (*Image, error) {
	return openImage(ctx, c.p, "/get", idQuery(id))
}

// GetNewTask claims a task through the master; see Database.GetNewTask.
func (c *Master) GetNewTask(ctx context.Context, wait time.Duration) (Task, error) {
	return claim(ctx, c.p, wait)
}

// RegisterTaskFinished marks task id finished.
func (c *Master) RegisterTaskFinished(ctx context.Context, id int64) error {
	return expectSuccess(c.p.text(ctx, http.MethodPost, "/registerTaskFinished", idQuery(id), nil, 0))
}
