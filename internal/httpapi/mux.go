package httpapi

import (
	"net/http"
	"slices"
	"strings"
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

// Healthz answers a liveness probe.
func Healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteText(w, http.StatusOK, "ok") })
}
