package frontend

import (
	"net/http"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// addRoutes registers the frontend's routes; every id they take or answer is a public id.
func addRoutes(mux *http.ServeMux, s *server) {
	mux.Handle("GET /{$}", s.handleIndex())
	mux.Handle("POST /submitTask", httpapi.HandlerFunc(s.handleSubmitTask))
	mux.Handle("GET /isReady", httpapi.HandlerFunc(s.handleIsReady))
	mux.Handle("GET /getImage", httpapi.HandlerFunc(s.handleGetImage))
	mux.Handle("GET /status", httpapi.HandlerFunc(s.handleStatus))
	mux.Handle("GET /healthz", httpapi.Healthz())
}
