package client

import (
	"context"
	"net/http"
	"net/url"
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

func (c *KV) Set(ctx context.Context, key, value string) error {
	return expectSuccess(c.p.text(ctx, http.MethodPost, "/set", url.Values{"key": {key}, "value": {value}}, nil, 0))
}

func (c *KV) Get(ctx context.Context, key string) (string, error) {
	return c.p.text(ctx, http.MethodGet, "/get", url.Values{"key": {key}}, nil, 0)
}

func (c *KV) Remove(ctx context.Context, key string) error {
	return expectSuccess(c.p.text(ctx, http.MethodDelete, "/remove", url.Values{"key": {key}}, nil, 0))
}

// List returns the reference listing, one "key : value" line per entry.
func (c *KV) List(ctx context.Context) (string, error) {
	return c.p.text(ctx, http.MethodGet, "/list", nil, nil, 0)
}
