package httpapi

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// NewMux returns a ServeMux whose unmatched requests are answered in the "Error: ..." form: 405 with an
// Allow header when the path exists under another method, 404 otherwise. (The standard mux's own replies
// are bare text that a reference client could mistake for a value.)
func NewMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/", HandlerFunc(Unmatched(mux, "/")))
	return mux
}

var probeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// Unmatched is the answer to a request no route of mux matched, for a catch-all pattern (catchAlls are
// all of them, which are no routes): 405 with an Allow header when the path exists under another method,
// 404 otherwise. Served as a HandlerFunc it answers "Error: ...", as a JSONHandlerFunc {"error":"..."}.
func Unmatched(mux *http.ServeMux, catchAlls ...string) func(w http.ResponseWriter, r *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		// A catch-all pattern is no route: counted under one label, not per pattern.
		markUnmatched(r)
		var allowed []string
		for _, m := range probeMethods {
			if m == r.Method {
				continue
			}
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" && !slices.Contains(catchAlls, pattern) {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			return Errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path)
		}
		return Errorf(http.StatusNotFound, "no endpoint %s", r.URL.Path)
	}
}

// Livez answers GET /livez, the liveness probe: "ok" as long as the process serves requests at all, even
// while what it depends on is away (restarting it would not bring that back).
func Livez() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteText(w, http.StatusOK, "ok") })
}

// healthCacheTTL is how long a readiness check's answer is reused, so that probes (GET /healthz is open
// to anyone who reaches the service) cannot load the engine behind it.
const healthCacheTTL = time.Second

// Healthz answers GET /healthz, the readiness probe: "ok" when check passes (a nil check always does),
// else 503 with what is not ready (without the cause's details) and Retry-After: the service runs, but
// its engine cannot be reached now, so it should get no traffic until it can.
func Healthz(check func(ctx context.Context) error) http.Handler {
	if check == nil {
		return Livez()
	}
	var (
		mu   sync.Mutex
		last error
		at   time.Time
	)
	return HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		defer mu.Unlock()
		if at.IsZero() || time.Since(at) >= healthCacheTTL {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			last, at = check(ctx), time.Now()
			cancel()
		}
		if last != nil {
			if asError(last) == nil {
				return &Error{Status: http.StatusServiceUnavailable, Msg: "not ready", RetryAfter: UnavailableRetryAfter}
			}
			return last
		}
		WriteText(w, http.StatusOK, "ok")
		return nil
	})
}
