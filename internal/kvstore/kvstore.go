// Package kvstore defines the key-value store behind the kv service (configuration and service
// discovery). Implementations live in sub-packages (filekv, embedded; etcdkv, shared by several kv
// services) and all must pass the contract suite in kvstoretest.
package kvstore

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by Get for an unknown or expired key.
var ErrNotFound = errors.New("key not found")

// Entry is one key and its value.
type Entry struct {
	Key   string
	Value string
}

// Store is a durable string-to-string map whose entries may expire. All methods are safe for concurrent
// use.
//
// An entry set with a ttl > 0 expires ttl after that Set: from then on it is gone as if deleted (Get
// returns ErrNotFound, List omits it), and the store discards it eventually. Each Set replaces the expiry:
// setting the key again with a ttl renews it, setting it with ttl <= 0 makes it permanent. Expiry times
// are absolute and survive a restart of the store.
//
// A store whose expiry runs on a server's clock (etcdkv: leases) never drops an entry early, but may show
// it a little after its expiry, until the server gets round to it, and rounds ttls up to what the server
// supports; see kvstoretest.RunRealTime for the bounds.
type Store interface {
	// Set stores value under key, expiring ttl from now when ttl > 0 and never otherwise; once it returns
	// the entry survives a crash.
	Set(ctx context.Context, key, value string, ttl time.Duration) error
	// SetIfAbsent stores value under key, without expiry, only when the key holds no live entry, and
	// returns the value the key holds afterwards: value when it was stored, the existing one when not.
	// Concurrent callers all get the same answer (the first writer wins).
	SetIfAbsent(ctx context.Context, key, value string) (string, error)
	// Get returns the value under key, or ErrNotFound when there is none or it expired.
	Get(ctx context.Context, key string) (string, error)
	// Delete removes key; deleting a missing or expired key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns the live (unexpired) entries whose key starts with prefix ("" for all), sorted by key
	// in byte order.
	List(ctx context.Context, prefix string) ([]Entry, error)
	// Ping reports whether the store's engine answers now: nil, or the transient error (fault) that its
	// methods would meet. Health checks call it; it is cheap.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

// Errors of the engine behind a store (it cannot be reached, has no quorum, timed out, or is out of
// space) are transient and wrapped by the fault package (fault.Unavailable, fault.NoSpace), so that
// callers wait and retry; every other error is permanent. A store whose engine does not answer when it
// is opened still opens, and its methods return transient errors until the engine answers.
