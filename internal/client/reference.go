package client

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// How the services of the reference design answer where imgmill's differ: refusals with status 200,
// missing endpoints with Go's default 404, and the once-per-peer note of what is missing.

// RefusedIn200 is a refusal a peer answered with status 200 and an "Error: ..." body (the reference
// design's master passing on its database's or storage's error), read as the error it is. It unwraps to
// an *httpapi.Error with the status imgmill's own service would have answered (refusalStatus).
type RefusedIn200 struct{ Err *httpapi.Error }

func (e *RefusedIn200) Error() string { return e.Err.Error() }
func (e *RefusedIn200) Unwrap() error { return e.Err }

// refusalIn200 is the error a 200 reply of c with body stands for, or nil when it is a plain answer.
func refusalIn200(c call, body string) *RefusedIn200 {
	if !c.errorIn200 {
		return nil
	}
	e := refusal(body)
	if e == nil {
		return nil
	}
	return &RefusedIn200{Err: e}
}

// refusal reads an "Error: ..." body answered with status 200, or nil for any other body.
func refusal(body string) *httpapi.Error {
	msg, ok := strings.CutPrefix(strings.TrimSpace(body), "Error:")
	if !ok {
		return nil
	}
	msg = strings.TrimSpace(msg)
	return &httpapi.Error{Status: refusalStatus(msg), Msg: msg}
}

// refusalStatus is the status of a refusal known only by its text: no task to claim is the database's
// 400, a missing file or task a 404, and anything else a 502, transient (a peer behind the one that
// answered failed, and the text cannot tell whether trying again helps), so that it never costs a task
// an attempt.
func refusalStatus(msg string) int {
	switch {
	case msg == wire.NoTaskMessage:
		return http.StatusBadRequest
	case SaysNotFound(msg):
		return http.StatusNotFound
	}
	return http.StatusBadGateway
}

// SaysNotFound reports whether a peer's error text says that what was asked for is not there: a file
// the reference design's storage or master could not open, or a task its database does not know.
func SaysNotFound(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"no such file", "not found", "no such task", "does not exist", "cannot find", "no rows in result set", "no task with id"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// expectSuccess checks a reference "success" answer.
func expectSuccess(reply string, err error) error {
	if err != nil {
		return err
	}
	if reply != "success" {
		return fmt.Errorf("unexpected reply %q", truncate(reply))
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Missing remembers, per peer address and path, the additive endpoints peers were found without (the
// reference design's services), so that each is logged once, not at every call. The zero value is
// ready.
type Missing struct {
	seen sync.Map
	any  atomic.Bool // something was noted: seen is worth looking at
}

// Note logs at INFO, the first time for the peer at addr and path, that the peer (its kind: "master",
// "storage") has no path and what is done instead.
func (m *Missing) Note(ctx context.Context, logger *slog.Logger, kind, addr, path, instead string) {
	if m.has(addr, path) {
		return
	}
	if _, dup := m.seen.LoadOrStore(addr+" "+path, struct{}{}); dup {
		return
	}
	m.any.Store(true)
	logger.InfoContext(ctx, fmt.Sprintf("peer at http://%s has no %s: the reference design's %s; %s", addr, path, kind, instead))
}

// Has reports whether the peer at addr was found without path (see Note).
func (m *Missing) Has(addr, path string) bool { return m.has(addr, path) }

// has reports whether the peer at addr was found without path.
func (m *Missing) has(addr, path string) bool {
	if !m.any.Load() {
		return false
	}
	_, ok := m.seen.Load(addr + " " + path)
	return ok
}
