package kvservice

import (
	"net/http"

	"github.com/imgmill/imgmill/internal/httpapi"
)

func addRoutes(mux *http.ServeMux, s *server) {
	mux.Handle("POST /set", httpapi.HandlerFunc(s.handleSet))
	mux.Handle("GET /get", httpapi.HandlerFunc(s.handleGet))
	mux.Handle("DELETE /remove", httpapi.HandlerFunc(s.handleRemove))
	mux.Handle("GET /list", httpapi.HandlerFunc(s.handleList))
	mux.Handle("GET /healthz", httpapi.Healthz(s.store.Ping))
	mux.Handle("GET /livez", httpapi.Livez())
}
