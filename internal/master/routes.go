package master

import (
	"net/http"

	"github.com/imgmill/imgmill/internal/httpapi"
)

func addRoutes(mux *http.ServeMux, s *server) {
	// An endpoint the database lacks (a reference one) is never passed on as the master's own 404.
	handle := func(pattern string, h httpapi.HandlerFunc) { mux.Handle(pattern, noPeerEndpoint(h)) }
	// client side
	handle("POST /new", s.handleNew)
	handle("GET /isReady", s.handleIsReady)
	handle("GET /get", s.handleGet)
	handle("GET /status", s.handleStatus)
	handle("GET /source", s.handleSource)
	handle("GET /stats", s.handleStats)
	handle("POST /statuses", s.handleStatuses)
	handle("POST /cancel", s.handleCancel)
	handle("POST /retry", s.handleRetry)
	handle("DELETE /task", s.handleDelete)
	// worker side
	handle("POST /getNewTask", s.handleGetNewTask)
	handle("POST /registerTaskFinished", s.handleRegisterTaskFinished)
	handle("POST /finishTask", s.handleFinishTask)
	handle("POST /extendLease", s.handleExtendLease)
	handle("POST /failTask", s.handleFailTask)
	handle("POST /releaseTask", s.handleReleaseTask)
	mux.Handle("GET /healthz", httpapi.Healthz(nil))
	mux.Handle("GET /livez", httpapi.Livez())
}
