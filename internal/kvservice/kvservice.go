// Package kvservice is the key-value service: configuration and service discovery over the reference
// wire API (/set, /get, /remove, /list), plus an optional TTL on /set (imgmill's extension) with which
// services register their addresses, so that a dead instance drops out.
package kvservice

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/service"
)

// NewServer returns the kv service's handler over store.
func NewServer(store kvstore.Store) http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, &server{store: store})
	return mux
}

type server struct{ store kvstore.Store }

// MaxTTL caps the ttl parameter of /set. TTLs are for registrations renewed every few seconds; an entry
// meant to last longer is set without one.
const MaxTTL = 24 * time.Hour

// handleSet is POST /set?key=K&value=V[&ttl=D]: with a ttl (a Go duration such as 30s, or whole seconds)
// the entry expires unless set again within it; without one, or with 0, it is permanent, and a Set
// without ttl makes an expiring entry permanent.
func (s *server) handleSet(w http.ResponseWriter, r *http.Request) error {
	key, err := httpapi.QueryRequired(r, "key")
	if err != nil {
		return err
	}
	value, err := httpapi.QueryRequired(r, "value")
	if err != nil {
		return err
	}
	ttl, err := httpapi.QueryDuration(r, "ttl", MaxTTL)
	if err != nil {
		return err
	}
	if !utf8.ValidString(key) || !utf8.ValidString(value) {
		// The store cannot hold invalid UTF-8; that is the caller's error, not a 500.
		return httpapi.Errorf(http.StatusBadRequest, "key and value must be valid UTF-8")
	}
	if hasControl(key) || hasControl(value) {
		// A newline would forge lines of /list ("key : value" per line).
		return httpapi.Errorf(http.StatusBadRequest, "key and value must not contain control characters (newlines, tabs, ...)")
	}
	switch r.URL.Query().Get("ifAbsent") {
	case "":
	case "true":
		// Additive: store only into an absent key, and answer what the key holds afterwards, so
		// concurrent writers (frontends creating a shared secret) agree on one value.
		if ttl > 0 {
			return httpapi.Errorf(http.StatusBadRequest, "ifAbsent entries do not expire: drop ttl")
		}
		current, err := s.store.SetIfAbsent(r.Context(), key, value)
		if err != nil {
			return fmt.Errorf("set %q if absent: %w", key, err)
		}
		httpapi.WriteText(w, http.StatusOK, current)
		return nil
	default:
		return httpapi.Errorf(http.StatusBadRequest, "ifAbsent must be true when given")
	}
	if err := s.store.Set(r.Context(), key, value, ttl); err != nil {
		return fmt.Errorf("set %q: %w", key, err)
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

func (s *server) handleGet(w http.ResponseWriter, r *http.Request) error {
	key, err := httpapi.QueryRequired(r, "key")
	if err != nil {
		return err
	}
	value, err := s.store.Get(r.Context(), key)
	if errors.Is(err, kvstore.ErrNotFound) {
		return httpapi.Errorf(http.StatusNotFound, "no value for key %q", key)
	}
	if err != nil {
		return fmt.Errorf("get %q: %w", key, err)
	}
	httpapi.WriteText(w, http.StatusOK, value)
	return nil
}

func (s *server) handleRemove(w http.ResponseWriter, r *http.Request) error {
	key, err := httpapi.QueryRequired(r, "key")
	if err != nil {
		return err
	}
	if err := s.store.Delete(r.Context(), key); err != nil {
		return fmt.Errorf("remove %q: %w", key, err)
	}
	httpapi.WriteText(w, http.StatusOK, "success")
	return nil
}

// handleList is GET /list[?prefix=P]: the live entries, expired ones left out, one "key : value" line
// each; with a prefix (additive) only the keys that start with it, as clients list a service's
// instances.
func (s *server) handleList(w http.ResponseWriter, r *http.Request) error {
	entries, err := s.store.List(r.Context(), r.URL.Query().Get("prefix"))
	if err != nil {
		return fmt.Errorf("list: %w", err)
	}
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%s : %s\n", e.Key, e.Value)
	}
	httpapi.WriteText(w, http.StatusOK, b.String())
	return nil
}

// DefaultAddr is the kv service's listen address unless told otherwise (the reference's port).
const DefaultAddr = "127.0.0.1:3000"

// Config configures Run.
type Config struct {
	service.Options
	// Store is the kv store, opened by the caller (see package engines), who closes it after Run.
	Store kvstore.Store
}

// Run serves the kv service on cfg.Store until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	return service.Run(ctx, cfg.Spec(service.Spec{Handler: NewServer(cfg.Store), Ready: cfg.Store.Ping,
		Internal: true, Metrics: metrics.New("kv")}))
}

// hasControl reports whether s holds a control character.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
}
