// Package kvstore defines the key-value store behind the kv service (configuration and service
// discovery). Implementations live in sub-packages (filekv today, etcd later) and all must pass the
// contract suite in kvstoretest.
package kvstore

import (
	"context"
	"errors"
)

// ErrNotFound is returned by Get for an unknown key.
var ErrNotFound = errors.New("key not found")

// Entry is one key and its value.
type Entry struct {
	Key   string
	Value string
}

// Store is a durable string-to-string map. All methods are safe for concurrent use.
type Store interface {
	// Set stores value under key; once it returns the entry survives a crash.
	Set(ctx context.Context, key, value string) error
	// Get returns the value under key, or ErrNotFound.
	Get(ctx context.Context, key string) (string, error)
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns every entry sorted by key.
	List(ctx context.Context) ([]Entry, error)
	// Close releases the store's resources.
	Close() error
}
