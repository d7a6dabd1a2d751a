package httpapi

import (
	"net/http"
	"strings"
)

// NewMux returns a ServeMux whose unmatched requests are answered in the "Error: ..." form: 405 with an
// Allow header when the path exists under another method, 404 otherwise. (The standard mux's own replies
// are bare text that a reference client could mistake for a value.)
func NewMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/", fallback(mux))
	return mux
}

var probeMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

func fallback(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var allowed []string
		for _, m := range probeMethods {
			if m == r.Method {
				continue
			}
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/" {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			WriteText(w, http.StatusMethodNotAllowed, "Error: method "+r.Method+" not allowed on "+r.URL.Path)
			return
		}
		WriteText(w, http.StatusNotFound, "Error: no endpoint "+r.URL.Path)
	})
}

// Healthz answers a liveness probe.
func Healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { WriteText(w, http.StatusOK, "ok") })
}
