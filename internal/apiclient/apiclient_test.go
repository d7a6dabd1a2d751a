package apiclient_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/apiclient"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestNew(t *testing.T) {
	for server, base := range map[string]string{"localhost:8080": "http://localhost:8080", " https://x.example/ ": "https://x.example"} {
		c, err := apiclient.New(server)
		if err != nil || c.Base() != base {
			t.Errorf("New(%q) = %v, %v; want base %q", server, c, err, base)
		}
	}
	for _, server := range []string{"", "ftp://x", "http:///x"} {
		if _, err := apiclient.New(server); err == nil || strings.Contains(err.Error(), "--") {
			t.Errorf("New(%q) = %v, want an error that names no flag", server, err)
		}
	}
}

// A status call waits out a server that says it is unavailable (503 with Retry-After), and a client
// error (404) is answered at once, as an *Error with the server's message.
func TestStatusWaitsOutAnOutage(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/tasks/missing":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":"no such task"}`))
		case calls.Add(1) == 1:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "Error: database unavailable", http.StatusServiceUnavailable)
		default:
			w.Write([]byte(`{"id":"abc","state":"finished","attempts":1,"maxAttempts":3}`))
		}
	}))
	defer srv.Close()
	c, err := apiclient.New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var waits []time.Duration
	c.OnOutage = func(wait time.Duration, err error) { waits = append(waits, wait) }
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	st, _, err := c.Status(ctx, "abc")
	if err != nil || st.State != wire.FinishedWord || st.ID != "abc" || len(waits) != 1 || waits[0] != time.Second {
		t.Errorf("Status = %+v, %v after waits %v; want finished after one wait of 1s", st, err, waits)
	}
	_, _, err = c.Status(ctx, "missing")
	var e *apiclient.Error
	if !errors.As(err, &e) || e.Status != http.StatusNotFound || e.Msg != "no such task" || apiclient.StatusOf(err) != 404 || apiclient.ComeBackLater(err) {
		t.Errorf("Status of a missing task = %v, want a 404 *Error saying no such task", err)
	}
}
