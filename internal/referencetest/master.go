package referencetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// Master is the reference master: /new, /isReady and /get for clients, /getNewTask and
// /registerTaskFinished for workers, found through the kv store at its kv address, as are the database
// and storage it calls. Its quirks: /new creates the task in the database first and stores the image
// after, so a worker may claim a task whose image is not there yet; /getNewTask and /registerTaskFinished
// pass the database's answer on with status 200, errors included ("Error: No non-started task."); /get of
// a task without a result answers 200 "Error:" and storage's words ("Error:open ...").
type Master struct {
	// StoreDelay is a pause between creating a task and storing its image (0: none, as the reference):
	// it widens the reference's race, so that a test sees what a worker does with a task whose image is
	// not stored yet. Set it before Start.
	StoreDelay time.Duration

	peers peers
	mux   *http.ServeMux
}

// NewMaster returns a master finding its peers through the kv store at kvAddr.
func NewMaster(kvAddr string) *Master {
	m := &Master{peers: newPeers(kvAddr), mux: http.NewServeMux()}
	m.mux.HandleFunc("/new", m.new)
	m.mux.HandleFunc("/isReady", m.isReady)
	m.mux.HandleFunc("/get", m.get)
	m.mux.HandleFunc("/getNewTask", m.getNewTask)
	m.mux.HandleFunc("/registerTaskFinished", m.registerTaskFinished)
	return m
}

func (m *Master) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.mux.ServeHTTP(w, r) }

// Start serves the master on a free loopback port until the test ends, registers it in its kv store
// under wire.MasterKey, and returns its host:port.
func (m *Master) Start(t testing.TB) string {
	t.Helper()
	t.Cleanup(m.peers.closeIdle) // after the server's close, which runs first
	addr := serve(t, m)
	register(t, m.peers.kv, wire.MasterKey, addr)
	return addr
}

func (m *Master) new(w http.ResponseWriter, r *http.Request) {
	img, err := io.ReadAll(r.Body)
	if err != nil {
		fail(w, http.StatusBadRequest, err)
		return
	}
	if len(img) == 0 {
		fail(w, http.StatusBadRequest, errors.New("empty image"))
		return
	}
	ctx := r.Context()
	a, err := m.peers.to(ctx, wire.DatabaseKey, http.MethodPost, "/newTask", nil, nil)
	if err == nil && a.status != http.StatusOK {
		err = fmt.Errorf("database: %d %s", a.status, a.body)
	}
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	id, err := strconv.ParseInt(strings.TrimSpace(string(a.body)), 10, 64)
	if err != nil {
		fail(w, http.StatusInternalServerError, fmt.Errorf("database answered %q for an id", a.body))
		return
	}
	// The task is claimable from here on, and its image not stored yet: the reference's race.
	if m.StoreDelay > 0 {
		select {
		case <-ctx.Done():
			fail(w, http.StatusServiceUnavailable, ctx.Err())
			return
		case <-time.After(m.StoreDelay):
		}
	}
	a, err = m.peers.to(ctx, wire.StorageKey, http.MethodPost, "/sendImage", imageQuery(id, wire.WorkingImage), bytes.NewReader(img))
	if err == nil && a.status != http.StatusOK {
		err = fmt.Errorf("storage: %d %s", a.status, a.body)
	}
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	text(w, http.StatusOK, strconv.FormatInt(id, 10))
}

func (m *Master) isReady(w http.ResponseWriter, r *http.Request) {
	a, err := m.peers.to(r.Context(), wire.DatabaseKey, http.MethodGet, "/getById", url.Values{"id": {r.URL.Query().Get("id")}}, nil)
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	if a.status != http.StatusOK {
		text(w, a.status, string(a.body))
		return
	}
	var t Task
	if err := json.Unmarshal(a.body, &t); err != nil {
		fail(w, http.StatusInternalServerError, fmt.Errorf("database answered %q for a task: %w", a.body, err))
		return
	}
	if t.State == wire.Finished {
		text(w, http.StatusOK, "1")
		return
	}
	text(w, http.StatusOK, "0")
}

func (m *Master) get(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.URL.Query().Get("id"), 10, 64)
	if err != nil {
		text(w, http.StatusOK, "Error:"+err.Error())
		return
	}
	a, err := m.peers.to(r.Context(), wire.StorageKey, http.MethodGet, "/getImage", imageQuery(id, wire.FinishedImage), nil)
	if err == nil && a.status != http.StatusOK {
		err = errors.New(strings.TrimPrefix(string(a.body), "Error: "))
	}
	if err != nil {
		text(w, http.StatusOK, "Error:"+err.Error())
		return
	}
	w.Header().Set("Content-Type", http.DetectContentType(a.body))
	w.Write(a.body)
}

// getNewTask passes the database's claim on, its error ("Error: No non-started task.") with status 200.
func (m *Master) getNewTask(w http.ResponseWriter, r *http.Request) {
	m.passOn(w, r, "/getNewTask", nil)
}

func (m *Master) registerTaskFinished(w http.ResponseWriter, r *http.Request) {
	m.passOn(w, r, "/finishTask", url.Values{"id": {r.URL.Query().Get("id")}})
}

// passOn calls the database's path and answers its body with status 200, whatever the database's.
func (m *Master) passOn(w http.ResponseWriter, r *http.Request, path string, q url.Values) {
	a, err := m.peers.to(r.Context(), wire.DatabaseKey, http.MethodPost, path, q, nil)
	if err != nil {
		text(w, http.StatusOK, "Error: "+err.Error())
		return
	}
	text(w, http.StatusOK, string(a.body))
}

func imageQuery(id int64, state string) url.Values {
	return url.Values{"id": {strconv.FormatInt(id, 10)}, "state": {state}}
}
