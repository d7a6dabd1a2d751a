package frontend

import (
	"net/http"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// addRoutes registers the frontend's routes; every id they take or answer is a public id.
func addRoutes(mux *http.ServeMux, s *server) {
	mux.Handle("GET /{$}", s.handleIndex())
	mux.Handle("GET /assets/{name}", httpapi.HandlerFunc(s.handleAsset))
	mux.Handle("POST /submitTask", http.HandlerFunc(s.handleSubmit)) // text, or HTML to the page's form (html.go)
	mux.Handle("GET /tasks/{id}", htmlHandler(s.handleTaskPage))     // the task's page, for people without JavaScript
	mux.Handle("GET /isReady", httpapi.HandlerFunc(s.handleIsReady))
	mux.Handle("GET /getImage", httpapi.HandlerFunc(s.handleGetImage))
	mux.Handle("GET /status", httpapi.HandlerFunc(s.handleStatus))
	mux.Handle("GET /healthz", httpapi.Healthz(s.ready))
	mux.Handle("GET /livez", httpapi.Livez())
	// The JSON API (api.go): every answer JSON, every refusal {"error":"..."}, unknown paths included.
	mux.Handle("POST /api/tasks", httpapi.JSONHandlerFunc(s.handleCreateTask))
	mux.Handle("GET /api/tasks/{id}", httpapi.JSONHandlerFunc(s.handleTask))
	mux.Handle("GET /api/tasks/{id}/result", httpapi.JSONHandlerFunc(s.handleTaskResult))
	mux.Handle("GET /api/tasks/{id}/source", httpapi.JSONHandlerFunc(s.handleTaskSource))
	mux.Handle("GET /api/tasks/{id}/events", httpapi.JSONHandlerFunc(s.handleTaskEvents))
	mux.Handle("GET /api/tasks.zip", httpapi.JSONHandlerFunc(s.handleTasksZip))
	mux.Handle("GET /api/events", httpapi.JSONHandlerFunc(s.handleEvents))
	mux.Handle("DELETE /api/tasks/{id}", httpapi.JSONHandlerFunc(s.handleDeleteTask))
	mux.Handle("POST /api/tasks/{id}/cancel", httpapi.JSONHandlerFunc(s.handleCancelTask))
	mux.Handle("GET /api/limits", httpapi.JSONHandlerFunc(s.handleLimits))
	mux.Handle("POST /api/tasks/{id}/retry", httpapi.JSONHandlerFunc(s.handleRetryTask))
	mux.Handle("GET /api/operations", httpapi.JSONHandlerFunc(s.handleOperations))
	mux.Handle("GET /api/openapi.json", httpapi.JSONHandlerFunc(s.handleOpenAPI))
	mux.Handle("/api/", httpapi.JSONHandlerFunc(httpapi.Unmatched(mux, "/", "/api/")))
}
