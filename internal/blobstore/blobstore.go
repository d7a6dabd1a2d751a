// Package blobstore defines the blob store that holds image bytes. Implementations live in sub-packages
// (fileblob today, S3 later) and all must pass the contract suite in blobstoretest.
package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"
)

var (
	// ErrNotFound is returned by Open for a key that holds no blob.
	ErrNotFound = errors.New("blob not found")
	// ErrInvalidKey is wrapped by every refusal of a malformed key.
	ErrInvalidKey = errors.New("invalid blob key")
)

// Blob is an open blob. The caller must Close it.
type Blob struct {
	io.ReadSeekCloser
	Size    int64
	ModTime time.Time
}

// Store stores blobs under keys such as "working/42". All methods are safe for concurrent use.
type Store interface {
	// Put stores all of r under key, streaming it (never holding it whole in memory). size is the length
	// when known, -1 otherwise. Put is atomic: a reader sees the previous blob or the new one, never part of
	// it, and when r fails or ctx ends nothing changes. It returns the number of bytes stored once they are
	// durable.
	Put(ctx context.Context, key string, r io.Reader, size int64) (int64, error)
	// Open opens the blob under key, or returns ErrNotFound.
	Open(ctx context.Context, key string) (*Blob, error)
	// Delete removes the blob under key; deleting a missing blob is not an error.
	Delete(ctx context.Context, key string) error
	// Close releases the store's resources.
	Close() error
}

// keyPattern: slash-separated segments of 1 to 200 characters of [a-z0-9_-] (a file name holds 255).
var keyPattern = regexp.MustCompile(`^[a-z0-9_-]{1,200}(/[a-z0-9_-]{1,200})*$`)

// ValidateKey rejects keys that are not slash-separated segments of [a-z0-9_-], so that every
// implementation can map keys to paths or object names without escaping. A key may not also be the
// prefix folder of another key ("a" beside "a/b"): files cannot hold both.
func ValidateKey(key string) error {
	if len(key) > 512 || !keyPattern.MatchString(key) {
		return fmt.Errorf("%w %q", ErrInvalidKey, key)
	}
	return nil
}
