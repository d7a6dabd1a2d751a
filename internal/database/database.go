// Package database is the database service: task records over the reference wire API, backed by a
// taskstore.Store.
package database

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
)

const (
	// DefaultLease is the reference time a task may stay in progress before it is handed out again.
	DefaultLease = 120 * time.Second
	// recheckEvery bounds how long a long poll sleeps without looking at the store again, so a lapsed
	// lease (which signals nobody) is noticed promptly.
	recheckEvery = time.Second
)

// NewServer returns the database service's handler. done ends pending long polls (service shutdown).
func NewServer(store taskstore.Store, lease time.Duration, done <-chan struct{}) http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, &server{store: store, lease: lease, done: done})
	return mux
}

type server struct {
	store taskstore.Store
	lease time.Duration
	done  <-chan struct{}
	news  signal
}

func (s *server) handleNewTask(w http.ResponseWriter, r *http.Request) error {
	pending, err := queryBool(r, "pending")
	if err != nil {
		return err
	}
	id, err := s.store.Create(r.Context(), pending)
	if err != nil {
		return fmt.Errorf("create task: %w", err)
	}
	if !pending {
		s.news.broadcast()
	}
	httpapi.WriteText(w, http.StatusOK, strconv.FormatInt(id, 10))
	return nil
}

func (s *server) handleGetByID(w http.ResponseWriter, r *http.Request) error {
	id, err := httpapi.QueryID(r, "id")
	if err != nil {
		return err
	}
	t, err := s.store.Get(r.Context(), id)
	if err != nil {
		return storeError(id, err)
	}
	return writeTask(w, t)
}

func (s *server) handleGetNewTask(w http.ResponseWriter, r *http.Request) error {
	wait, err := httpapi.QueryDuration(r, "wait", client.MaxWait)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for {
		// Take the wake-up channel before looking, so a task created in between is not missed.
		woken := s.news.wait()
		t, err := s.store.Claim(r.Context(), s.lease)
		if err == nil {
			return writeTask(w, t)
		}
		if !errors.Is(err, taskstore.ErrNoTask) {
			return fmt.Errorf("claim: %w", err)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return httpapi.Errorf(http.StatusBadRequest, client.NoTaskMessage)
		}
		timer := time.NewTimer(min(remaining, recheckEvery))
		select {
		case <-woken:
		case <-timer.C:
		case <-r.Context().Done():
		case <-s.done:
		}
		timer.Stop()
		if r.Context().Err() != nil || isClosed(s.done) {
			return httpapi.Errorf(http.StatusBadRequest, client.NoTaskMessage)
		}
	}
}

func (s *server) handleSetByID(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		ID    *int64 `json:"id"`
		State *int   `json:"state"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&body); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "body must be task JSON like {\"id\":0,\"state\":1}: %v", err)
	}
	if body.ID == nil || *body.ID < 0 {
		return httpapi.Errorf(http.StatusBadRequest, "task JSON needs a non-negative id")
	}
	if body.State == nil || !taskstore.State(*body.State).Valid() {
		return httpapi.Errorf(http.StatusBadRequest, "task JSON needs a state of 0, 1 or 2")
	}
	if err := s.store.Set(r.Context(), *body.ID, taskstore.State(*body.State), s.lease); err != nil {
		return storeError(*body.ID, err)
	}
	if *body.State == int(taskstore.NotStarted) {
		s.news.broadcast()
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

func (s *server) handleList(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	bw := bufio.NewWriter(w)
	for t, err := range s.store.List(r.Context()) {
		if err != nil {
			return fmt.Errorf("list tasks: %w", err)
		}
		line, err := json.Marshal(wireTask(t))
		if err != nil {
			return err
		}
		bw.Write(line)
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

func writeTask(w http.ResponseWriter, t taskstore.Task) error {
	b, err := json.Marshal(wireTask(t))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
	return nil
}

func wireTask(t taskstore.Task) client.Task {
	return client.Task{ID: t.ID, State: int(t.State), Attempts: t.Attempts,
		CreatedAt: t.CreatedAt, StartedAt: t.StartedAt, FinishedAt: t.FinishedAt}
}

func (s *server) activateTask(ctx context.Context, id int64) error {
	if err := s.store.Activate(ctx, id); err != nil {
		return storeError(id, err)
	}
	s.news.broadcast()
	return nil
}

func (s *server) finishTask(ctx context.Context, id int64) error {
	if err := s.store.Finish(ctx, id); err != nil {
		return storeError(id, err)
	}
	return nil
}

// storeError maps the store's errors to the reference's 400 answers.
func storeError(id int64, err error) error {
	switch {
	case errors.Is(err, taskstore.ErrNotFound):
		return httpapi.Errorf(http.StatusBadRequest, "no task with id %d", id)
	case errors.Is(err, taskstore.ErrNotInProgress):
		return httpapi.Errorf(http.StatusBadRequest, "task %d is not in progress", id)
	case errors.Is(err, taskstore.ErrInvalidState):
		return httpapi.Errorf(http.StatusBadRequest, "invalid state for task %d", id)
	}
	return fmt.Errorf("task %d: %w", id, err)
}

func queryBool(r *http.Request, name string) (bool, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return false, nil
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		return false, httpapi.Errorf(http.StatusBadRequest, "%s must be true or false, got %q", name, raw)
	}
	return v, nil
}

// signal wakes every current waiter at once: wait returns a channel that broadcast closes.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) broadcast() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Config configures Run.
type Config struct {
	Addr      string
	Advertise string
	KV        *client.KV
	DataDir   string
	Lease     time.Duration
	Logger    *slog.Logger
}

// Run serves the database service on the embedded SQLite store under DataDir until ctx ends, registered
// in the kv store as databaseAddress.
func Run(ctx context.Context, cfg Config) error {
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("database data dir: %w", err)
	}
	store, err := sqlitestore.Open(ctx, filepath.Join(cfg.DataDir, "tasks.db"), sqlitestore.Options{})
	if err != nil {
		return fmt.Errorf("open task store: %w", err)
	}
	defer store.Close()
	lease := cfg.Lease
	if lease <= 0 {
		lease = DefaultLease
	}
	return service.Run(ctx, service.Spec{
		Addr: cfg.Addr, Handler: NewServer(store, lease, ctx.Done()), Logger: cfg.Logger,
		RegisterAs: client.DatabaseKey, KV: cfg.KV, Advertise: cfg.Advertise,
	})
}
