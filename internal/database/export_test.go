package database

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// Handler is the service's API handler, as Run serves it (without the token check and the operational
// endpoints), for tests that serve it on an httptest server.
func (s *Service) Handler() http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, s.srv)
	return mux
}

// Gatherer is the registry of the service's metrics, for tests that read them.
func (s *Service) Gatherer() prometheus.Gatherer { return s.reg.Gatherer() }
