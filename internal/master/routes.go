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
	// worker side
	mux.Handle("POST /getNewTask", httpapi.HandlerFunc(s.handleGetNewTask))
	mux.Handle("POST /registerTaskFinished", httpapi.IDCommand(s.db.FinishTask))
	mux.Handle("GET /healthz", httpapi.Healthz())
}
