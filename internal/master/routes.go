package master

import (
	"net/http"

	"github.com/imgmill/imgmill/internal/httpapi"
)

func addRoutes(mux *http.ServeMux, s *server) {
	// client side
	mux.Handle("POST /new", httpapi.HandlerFunc(s.handleNew))
	mux.Handle("GET /isReady", httpapi.HandlerFunc(s.handleIsReady))
	mux.Handle("GET /get", httpapi.HandlerFunc(s.handleGet))
	mux.Handle("GET /status", httpapi.HandlerFunc(s.handleStatus))
	mux.Handle("GET /source", httpapi.HandlerFunc(s.handleSource))
	mux.Handle("GET /stats", httpapi.HandlerFunc(s.handleStats))
	mux.Handle("POST /statuses", httpapi.HandlerFunc(s.handleStatuses))
	mux.Handle("POST /cancel", httpapi.HandlerFunc(s.handleCancel))
	mux.Handle("POST /retry", httpapi.HandlerFunc(s.handleRetry))
	mux.Handle("DELETE /task", httpapi.HandlerFunc(s.handleDelete))
	// worker side
	mux.Handle("POST /getNewTask", httpapi.HandlerFunc(s.handleGetNewTask))
	mux.Handle("POST /registerTaskFinished", s.handleRegisterTaskFinished())
	mux.Handle("POST /extendLease", s.handleExtendLease())
	mux.Handle("POST /failTask", s.forwardChange("/failTask"))
	mux.Handle("POST /releaseTask", s.forwardChange("/releaseTask"))
	mux.Handle("GET /healthz", httpapi.Healthz(nil))
	mux.Handle("GET /livez", httpapi.Livez())
}
