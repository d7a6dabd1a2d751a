package client

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Discovery keys under which services register their host:port (reference names).
const (
	DatabaseKey = "databaseAddress"
	StorageKey  = "storageAddress"
	MasterKey   = "masterAddress"
)

// KV is a client of the kv service.
type KV struct{ p peer }

// NewKV returns a kv client for the kv service at addr (host:port).
func NewKV(hc *http.Client, addr string) *KV {
	return &KV{peer{name: "kv store", http: hc, ep: Static(addr)}}
}

// Set stores value under key for good (and makes an expiring entry permanent).
func (c *KV) Set(ctx context.Context, key, value string) error {
	return c.SetTTL(ctx, key, value, 0)
}

// SetTTL stores value under key for ttl: the kv store drops the entry unless it is set again within ttl.
// ttl <= 0 is Set, no expiry. The kv service takes a ttl of at most 24h.
func (c *KV) SetTTL(ctx context.Context, key, value string, ttl time.Duration) error {
	q := url.Values{"key": {key}, "value": {value}}
	if ttl > 0 {
		q.Set("ttl", ttl.String()) // Duration.String always parses back with time.ParseDuration
	}
	return expectSuccess(c.p.sendText(ctx, call{method: http.MethodPost, path: "/set", query: q, idempotent: true}))
}

func (c *KV) Get(ctx context.Context, key string) (string, error) {
	return c.p.sendText(ctx, call{method: http.MethodGet, path: "/get", query: url.Values{"key": {key}}, idempotent: true})
}

func (c *KV) Remove(ctx context.Context, key string) error {
	return expectSuccess(c.p.sendText(ctx, call{method: http.MethodDelete, path: "/remove", query: url.Values{"key": {key}}, idempotent: true}))
}

// List returns the reference listing, one "key : value" line per entry.
func (c *KV) List(ctx context.Context) (string, error) {
	return c.p.sendText(ctx, call{method: http.MethodGet, path: "/list", idempotent: true})
}

// SetIfAbsent stores value under key only when the key is absent and returns the value the key holds
// afterwards, so concurrent callers agree on the first writer's value.
func (c *KV) SetIfAbsent(ctx context.Context, key, value string) (string, error) {
	q := url.Values{"key": {key}, "value": {value}, "ifAbsent": {"true"}}
	return c.p.sendText(ctx, call{method: http.MethodPost, path: "/set", query: q, idempotent: true})
}
