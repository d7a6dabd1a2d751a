package storage

import (
	"net/http"

	"github.com/imgmill/imgmill/internal/httpapi"
)

func addRoutes(mux *http.ServeMux, s *server) {
	mux.Handle("POST /sendImage", httpapi.HandlerFunc(s.handleSendImage))
	mux.Handle("GET /getImage", httpapi.HandlerFunc(s.handleGetImage))
	mux.Handle("DELETE /images", httpapi.HandlerFunc(s.handleDeleteImages))
	mux.Handle("GET /list", httpapi.HandlerFunc(s.handleList))
	mux.Handle("GET /healthz", httpapi.Healthz(s.blobs.Ping))
	mux.Handle("GET /livez", httpapi.Livez())
}
