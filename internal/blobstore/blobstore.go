// Package blobstore defines the blob store that holds image bytes. Implementations live in sub-packages
// (fileblob, s3blob) and all must pass the contract suite in blobstoretest.
package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"regexp"
	"time"
)

var (
	// ErrNotFound is returned by Open for a key that holds no blob.
	ErrNotFound = errors.New("blob not found")
	// ErrInvalidKey is wrapped by every refusal of a malformed key.
	ErrInvalidKey = errors.New("invalid blob key")
	// ErrStaleFence is wrapped by Put's refusal to replace a blob written with a larger fence.
	ErrStaleFence = errors.New("stale fence: the blob was written with a larger fence")
)

// Blob is an open blob. The caller must Close it.
type Blob struct {
	io.ReadSeekCloser
	Size    int64
	ModTime time.Time
	// Fence is the fence the blob was written with (see Store.Put); 0 for an unfenced write.
	Fence int64
}

// Store stores blobs under keys such as "working/42". All methods are safe for concurrent use.
//
// Every blob carries the fence it was written with: a monotonic fencing token (a lease's claim counter),
// so that a writer that lost its lease without knowing it cannot replace the result of a newer holder.
// A Put with fence F is refused with ErrStaleFence when the blob under the key was written with a fence
// greater than F; an equal fence is accepted (a retry), and fence 0 is unfenced: always accepted, and the
// blob it writes carries fence 0. No blob means no fence: after Delete any fence is accepted.
//
// The check and the replacement are one atomic step with respect to other Puts and Deletes of the same
// key in the store, and once Put has returned a crash never leaves a blob claiming a fence lower than
// the one it was written with. fileblob locks the key and keeps the fence in the blob file's own metadata (see there); s3blob
// keeps the fence in the object's user metadata and makes the step a conditional write: first with
// If-None-Match: * (no object yet, the usual case); else read the current object's ETag and fence
// (HEAD), refuse when the fence is larger, then commit the write with If-Match on that ETag
// (If-None-Match: * when there was no object), starting over when S3 answers 412 Precondition Failed
// because another writer got in between.
type Store interface {
	// Put stores all of r under key, streaming it (never holding it whole in memory), written with fence
	// (>= 0; see Store). size is the length when known, -1 otherwise. Put is atomic: a reader sees the
	// previous blob or the new one, never part of it, and when r fails, ctx ends or the fence is refused
	// (an error wrapping ErrStaleFence) nothing changes. It returns the number of bytes stored once they
	// are durable.
	Put(ctx context.Context, key string, r io.Reader, size int64, fence int64) (int64, error)
	// Open opens the blob under key, or returns ErrNotFound.
	Open(ctx context.Context, key string) (*Blob, error)
	// Delete removes the blob under key; deleting a missing blob is not an error.
	Delete(ctx context.Context, key string) error
	// List yields the blobs whose keys start with prefix (any string; "working/" for the uploads) and sort
	// after after ("" from the first), in key order (byte-wise), reading the engine a page at a time
	// rather than holding the whole listing. It stops at the first error, which it yields. A listing
	// runs beside Puts and Deletes: a blob written or removed meanwhile may or may not be yielded. To go
	// on from where a listing stopped, list again with after set to the last key yielded.
	List(ctx context.Context, prefix, after string) iter.Seq2[Entry, error]
	// Ping reports whether the store's engine answers now: nil, or the transient error (fault) that its
	// methods would meet. Health checks call it; it is cheap.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

// Entry is one blob a listing yields.
type Entry struct {
	Key     string
	Size    int64
	ModTime time.Time // when it was last written
}

// Errors of the engine behind a store (it cannot be reached, timed out, or is out of space) are
// transient and wrapped by the fault package (fault.Unavailable, fault.NoSpace), so that callers wait
// and retry instead of failing work; every other error is permanent. A store whose engine does not
// answer when it is opened still opens (unless its configuration is wrong), and its methods return
// transient errors until the engine answers.

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

// Optional interfaces: a store implements what its engine can answer cheaply; callers check with a type
// assertion and do without where a store does not.

// FreeSpacer is implemented by stores whose blobs fill a local file system (fileblob), so that storage
// can refuse uploads before the disk is full. An object store (s3blob) has no free space to ask about.
type FreeSpacer interface {
	// FreeSpace returns the bytes this process may still write on the store's file system and that file
	// system's size, with one system call.
	FreeSpace(ctx context.Context) (free, size uint64, err error)
}

// Usage is what a store holds under one prefix.
type Usage struct {
	Objects int64 // blobs
	Bytes   int64 // their content, without the file system's or engine's overhead
}

// Inventory is implemented by stores that keep count of what they hold (fileblob: one walk of its
// directory at Open, then every Put and Delete), for metrics. An object store would have to list the
// whole bucket to know, so s3blob does not implement it.
type Inventory interface {
	// Usage returns what the store holds under prefix, the first segment of keys ("working" for
	// "working/42").
	Usage(prefix string) Usage
}

// Compaction is what a store that keeps small blobs in shared segment files holds there.
type Compaction struct {
	Bytes     int64 // of the segment files
	LiveBytes int64 // of the records the store still serves; the rest waits for a compaction
	Rounds    int64 // compactions that removed segments since the store was opened
}

// Compacting is implemented by stores whose deleted and replaced blobs keep their bytes until a
// compaction (fileblob's segment files), for metrics.
type Compacting interface {
	Compaction() Compaction
}
