package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/wire"
)

// KV is a client of the kv service.
type KV struct{ p peer }

// NewKV returns a kv client for the kv service at addrs: one host:port, or several separated by commas
// (instances of the kv service sharing one etcd), which the client spreads its calls across.
func NewKV(hc *http.Client, addrs string) *KV {
	var ep Endpoint = Static(addrs)
	if list := strings.Split(addrs, ","); len(list) > 1 {
		ep = NewAddrs(list)
	}
	return &KV{peer{name: "kv store", http: hc, ep: ep}}
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

// ErrEmptyValue is in the error of Get for a key that reads as empty: the reference design's kv store
// answers a missing key with 200 and an empty body, where imgmill's answers 404.
var ErrEmptyValue = errors.New("empty value (the reference design's kv store answers a missing key so)")

// ErrNoSetIfAbsent is the error of SetIfAbsent when the kv store ignored ifAbsent (the reference
// design's answers "success" and sets the value whether or not the key held one).
var ErrNoSetIfAbsent = errors.New("the kv store has no set-if-absent (the reference design's): it set the value unconditionally")

// Get returns the value under key. A missing key is an error for which IsStatus(err, 404) holds, also
// when the kv store answers it with an empty value, as the reference design's does (errors.Is(err,
// ErrEmptyValue) then holds too): no kv store holds an empty value, since /set refuses one.
func (c *KV) Get(ctx context.Context, key string) (string, error) {
	v, err := c.p.sendText(ctx, call{method: http.MethodGet, path: "/get", query: url.Values{"key": {key}}, idempotent: true})
	if err == nil && v == "" {
		return "", fmt.Errorf("%w: %w", &httpapi.Error{Status: http.StatusNotFound, Msg: "no value under " + key}, ErrEmptyValue)
	}
	return v, err
}

// absentProbeKey is a key no one sets, read by AnswersLikeReference.
const absentProbeKey = "imgmill.absentKeyProbe"

// AnswersLikeReference reports whether the kv store answers like the reference design's: a missing key
// with an empty value, and so (the two come together) /set without set-if-absent. It reads a key no
// one sets.
func (c *KV) AnswersLikeReference(ctx context.Context) (bool, error) {
	_, err := c.Get(ctx, absentProbeKey)
	switch {
	case errors.Is(err, ErrEmptyValue):
		return true, nil
	case err == nil || IsStatus(err, http.StatusNotFound):
		return false, nil
	}
	return false, err
}

func (c *KV) Remove(ctx context.Context, key string) error {
	return expectSuccess(c.p.sendText(ctx, call{method: http.MethodDelete, path: "/remove", query: url.Values{"key": {key}}, idempotent: true}))
}

// List returns the reference listing, one "key : value" line per entry.
func (c *KV) List(ctx context.Context) (string, error) {
	return c.p.sendText(ctx, call{method: http.MethodGet, path: "/list", idempotent: true})
}

// ListPrefix returns the live entries whose keys start with prefix, sorted by key.
func (c *KV) ListPrefix(ctx context.Context, prefix string) ([]kvstore.Entry, error) {
	reply, err := c.p.sendText(ctx, call{method: http.MethodGet, path: "/list", query: url.Values{"prefix": {prefix}}, idempotent: true})
	if err != nil {
		return nil, err
	}
	var entries []kvstore.Entry
	for line := range strings.Lines(reply) {
		key, value, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " : ")
		// A kv service that ignores prefix (the reference one) lists everything: filter here too.
		if ok && strings.HasPrefix(key, prefix) {
			entries = append(entries, kvstore.Entry{Key: key, Value: value})
		}
	}
	return entries, nil
}

// Instances returns the addresses of the live instances of the service registered under key: those
// under wire.InstancePrefix(key), or, when there are none (a service of the reference design registers only
// the one key), the address under key itself.
func (c *KV) Instances(ctx context.Context, key string) ([]string, error) {
	entries, err := c.ListPrefix(ctx, wire.InstancePrefix(key))
	if err != nil {
		return nil, err
	}
	addrs := make([]string, 0, len(entries))
	for _, e := range entries {
		addrs = append(addrs, e.Value)
	}
	if len(addrs) > 0 {
		return addrs, nil
	}
	addr, err := c.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	return []string{addr}, nil
}

// SetIfAbsent stores value under key only when the key is absent and returns the value the key holds
// afterwards, so concurrent callers agree on the first writer's value. A kv store without
// set-if-absent (the reference design's) sets value whether or not the key held one and answers
// "success": that is ErrNoSetIfAbsent, after which the key holds value or a later writer's, and only a
// read (after the other writers are done) tells which.
func (c *KV) SetIfAbsent(ctx context.Context, key, value string) (string, error) {
	q := url.Values{"key": {key}, "value": {value}, "ifAbsent": {"true"}}
	stored, err := c.p.sendText(ctx, call{method: http.MethodPost, path: "/set", query: q, idempotent: true})
	if err == nil && stored == "success" && value != "success" {
		return "", ErrNoSetIfAbsent
	}
	return stored, err
}
