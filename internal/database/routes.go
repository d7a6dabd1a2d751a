package database

import (
	"net/http"

	"github.com/imgmill/imgmill/internal/httpapi"
)

func addRoutes(mux *http.ServeMux, s *server) {
	mux.Handle("POST /newTask", httpapi.HandlerFunc(s.handleNewTask))
	mux.Handle("POST /activateTask", httpapi.HandlerFunc(s.handleActivateTask))
	mux.Handle("GET /getById", httpapi.HandlerFunc(s.handleGetByID))
	mux.Handle("POST /getByIds", httpapi.HandlerFunc(s.handleGetByIDs))
	mux.Handle("POST /getNewTask", httpapi.HandlerFunc(s.handleGetNewTask))
	mux.Handle("POST /finishTask", httpapi.HandlerFunc(s.handleFinishTask))
	mux.Handle("POST /extendLease", httpapi.HandlerFunc(s.handleExtendLease))
	mux.Handle("POST /failTask", httpapi.HandlerFunc(s.handleFailTask))
	mux.Handle("POST /releaseTask", httpapi.HandlerFunc(s.handleReleaseTask))
	mux.Handle("POST /abandonTask", httpapi.HandlerFunc(s.handleAbandonTask))
	mux.Handle("POST /setById", httpapi.HandlerFunc(s.handleSetByID))
	mux.Handle("POST /cancelTask", httpapi.HandlerFunc(s.handleCancelTask))
	mux.Handle("POST /requeueTask", httpapi.HandlerFunc(s.handleRequeueTask))
	mux.Handle("DELETE /task", httpapi.HandlerFunc(s.handleDeleteTask))
	mux.Handle("POST /claimExpired", httpapi.HandlerFunc(s.handleClaimExpired))
	mux.Handle("GET /list", httpapi.HandlerFunc(s.handleList))
	mux.Handle("GET /stats", httpapi.HandlerFunc(s.handleStats))
	mux.Handle("GET /usage", httpapi.HandlerFunc(s.handleUsage))
	mux.Handle("GET /healthz", httpapi.Healthz(s.store.Ping))
	mux.Handle("GET /livez", httpapi.Livez())
}
