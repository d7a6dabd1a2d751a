// Package filekv is a kvstore.Store kept in memory and persisted, on every mutation, as a whole JSON
// snapshot written with atomicfile. The kv holds configuration and service addresses, so the snapshot is
// small and rewriting it is cheaper than maintaining a log; atomicfile makes each Set durable before it
// returns and a crash leave the previous snapshot or the new one.
//
// An entry with a TTL is stored with its absolute expiry time, so that it still expires on time after a
// restart. Expired entries are hidden from reads at once and dropped from the snapshot by the next write
// (the kv service's registrations are renewed every few seconds, so writes are frequent).
//
// A full disk (ENOSPC, EDQUOT) makes writes fail with fault.NoSpace errors, a read-only one with
// fault.Unavailable ones, changing nothing; reads go on working from memory.
//
// A file must be used by one Store (one process) at a time.
package filekv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/kvstore"
)

// ErrClosed is returned by every method of a closed Store.
var ErrClosed = errors.New("filekv: store closed")

// what names the store in transient errors (fault).
const what = "the key-value store"

// formatVersion is written in every snapshot so that a future format can tell old files apart.
// Version 1 (entries as a plain key-to-value object, no expiry) is still read; version 2 is written.
const formatVersion = 2

// snapshot is the file's content: {"version":2,"entries":{"k":{"value":"v","expires":"<RFC 3339>"}}},
// "expires" only for an entry with a TTL.
type snapshot struct {
	Version int                   `json:"version"`
	Entries map[string]*diskEntry `json:"entries"`
}

type diskEntry struct {
	Value   *string   `json:"value"` // a pointer so that a missing value is damage, not ""
	Expires time.Time `json:"expires,omitzero"`
}

// snapshotV1 is the version 1 format: no expiry.
type snapshotV1 struct {
	Version int               `json:"version"`
	Entries map[string]string `json:"entries"`
}

// item is an entry in memory; a zero expires means it never expires.
type item struct {
	value   string
	expires time.Time
}

// expired reports whether it is gone at now: an entry expires at its expiry time, not after it.
func (it item) expired(now time.Time) bool {
	return !it.expires.IsZero() && !now.Before(it.expires)
}

// Options configures Open.
type Options struct {
	// Now is the clock that decides expiry; nil means time.Now. Tests pass a fake clock.
	Now func() time.Time
}

// Store is a file-backed kvstore.Store. It is safe for concurrent use.
type Store struct {
	path string
	now  func() time.Time
	// writeSem (capacity 1) serialises mutations and their snapshot writes; a channel rather than a mutex
	// so that a Set waiting behind a slow fsync gives up when its context ends.
	writeSem chan struct{}
	// mu guards m and closed. Readers never wait for an fsync: a mutation builds and persists a new map,
	// then swaps it in under mu. m is never modified in place, so it always equals the file's content.
	// It may hold expired entries, which readers skip and the next mutation drops.
	mu     sync.RWMutex
	m      map[string]item
	closed bool
}

var _ kvstore.Store = (*Store)(nil)

// Open loads the store kept in path. A missing file is an empty store; its directory must exist. A file
// that cannot be read as a snapshot is an error, never an empty store: starting empty would lose the
// configuration at the next Set.
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("filekv: empty path")
	}
	path = filepath.Clean(path)
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("filekv: open %s: %w", path, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("filekv: open %s: %s is not a directory", path, dir)
	}
	if err := removeStaleTemps(dir, base); err != nil {
		return nil, fmt.Errorf("filekv: open %s: %w", path, err)
	}
	m, err := load(path)
	if err != nil {
		return nil, fmt.Errorf("filekv: open %s: %w", path, err)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Store{path: path, now: now, writeSem: make(chan struct{}, 1), m: m}, nil
}

// removeStaleTemps removes the temporary files of snapshot writes that a crash interrupted.
func removeStaleTemps(dir, base string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	prefix := "." + base + ".tmp-" // atomicfile's naming
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), prefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove stale temporary file: %w", err)
			}
		}
	}
	return nil
}

func load(path string) (map[string]item, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return make(map[string]item), nil
	}
	if err != nil {
		return nil, err
	}
	// The version first, then the whole file again, strictly, in that version's format.
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("corrupt snapshot: %w", err)
	}
	switch head.Version {
	case 1:
		var snap snapshotV1
		if err := decodeStrict(data, &snap); err != nil {
			return nil, err
		}
		if snap.Entries == nil {
			// We always write the entries, even when there are none: "null" or a missing field is damage.
			return nil, errors.New("corrupt snapshot: no entries")
		}
		m := make(map[string]item, len(snap.Entries))
		for k, v := range snap.Entries {
			m[k] = item{value: v}
		}
		return m, nil
	case formatVersion:
		var snap snapshot
		if err := decodeStrict(data, &snap); err != nil {
			return nil, err
		}
		if snap.Entries == nil {
			return nil, errors.New("corrupt snapshot: no entries")
		}
		m := make(map[string]item, len(snap.Entries))
		for k, e := range snap.Entries {
			if e == nil || e.Value == nil {
				return nil, fmt.Errorf("corrupt snapshot: entry %q has no value", k)
			}
			m[k] = item{value: *e.Value, expires: e.Expires}
		}
		return m, nil
	default:
		return nil, fmt.Errorf("corrupt snapshot: unknown format version %d", head.Version)
	}
}

// decodeStrict decodes data, which must be exactly one JSON value with no unknown field, into v.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("corrupt snapshot: %w", err)
	}
	if err := dec.Decode(new(json.RawMessage)); err != io.EOF {
		return errors.New("corrupt snapshot: data after the snapshot")
	}
	return nil
}

// encode returns the version 2 snapshot of m.
func encode(m map[string]item) ([]byte, error) {
	snap := snapshot{Version: formatVersion, Entries: make(map[string]*diskEntry, len(m))}
	for k, it := range m {
		e := &diskEntry{Value: &it.value}
		if !it.expires.IsZero() {
			e.Expires = it.expires.UTC() // absolute wall time; UTC also drops the monotonic reading
		}
		snap.Entries[k] = e
	}
	return json.Marshal(snap)
}

// checkEntry refuses what JSON cannot carry exactly: encoding/json replaces invalid UTF-8 with U+FFFD,
// which would silently change the value on disk.
func checkEntry(key, value string) error {
	if key == "" {
		return errors.New("filekv: empty key")
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("filekv: key %q is not valid UTF-8", key)
	}
	if !utf8.ValidString(value) {
		return fmt.Errorf("filekv: value of %q is not valid UTF-8", key)
	}
	return nil
}

// Set implements kvstore.Store.
func (s *Store) Set(ctx context.Context, key, value string, ttl time.Duration) error {
	if err := checkEntry(key, value); err != nil {
		return err
	}
	return s.mutate(ctx, "set "+key, func(m map[string]item, now time.Time) bool {
		next := item{value: value}
		if ttl > 0 {
			next.expires = now.Add(ttl)
		}
		if old, ok := m[key]; ok && old.value == value && old.expires.IsZero() && next.expires.IsZero() {
			return false
		}
		m[key] = next
		return true
	})
}

// Delete implements kvstore.Store.
// SetIfAbsent implements kvstore.Store; writes are serialised, so the check and the write are atomic.
func (s *Store) SetIfAbsent(ctx context.Context, key, value string) (string, error) {
	if err := checkEntry(key, value); err != nil {
		return "", err
	}
	current := value
	err := s.mutate(ctx, "set-if-absent "+key, func(m map[string]item, now time.Time) bool {
		if old, ok := m[key]; ok && !old.expired(now) {
			current = old.value
			return false
		}
		m[key] = item{value: value}
		return true
	})
	if err != nil {
		return "", err
	}
	return current, nil
}

func (s *Store) Delete(ctx context.Context, key string) error {
	return s.mutate(ctx, "delete "+key, func(m map[string]item, _ time.Time) bool {
		if _, ok := m[key]; !ok {
			return false
		}
		delete(m, key)
		return true
	})
}

// mutate applies change to a copy of the map without its expired entries, persists the copy and only
// then publishes it, so that a failed write leaves memory and file agreeing on the old content. change
// reports whether it changed anything; when it did not and nothing expired, the current content is
// already durable and nothing is written.
func (s *Store) mutate(ctx context.Context, op string, change func(m map[string]item, now time.Time) bool) error {
	select {
	case s.writeSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("filekv: %s: %w", op, ctx.Err())
	}
	defer func() { <-s.writeSem }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("filekv: %s: %w", op, err)
	}

	s.mu.RLock()
	closed, next := s.closed, maps.Clone(s.m)
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	now := s.now()
	purged := false
	for k, it := range next {
		if it.expired(now) {
			delete(next, k)
			purged = true
		}
	}
	if !change(next, now) && !purged {
		return nil
	}
	data, err := encode(next)
	if err != nil {
		return fmt.Errorf("filekv: %s: encode: %w", op, err)
	}
	if _, err := atomicfile.Write(ctx, s.path, bytes.NewReader(data)); err != nil {
		// A full or read-only disk is transient: the same write succeeds once it has room again.
		return fmt.Errorf("filekv: %s: %w", op, fault.Disk(what, err))
	}
	s.mu.Lock()
	s.m = next
	s.mu.Unlock()
	return nil
}

// Get implements kvstore.Store.
func (s *Store) Get(ctx context.Context, key string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("filekv: get %s: %w", key, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return "", ErrClosed
	}
	it, ok := s.m[key]
	if !ok || it.expired(s.now()) {
		return "", fmt.Errorf("filekv: get %s: %w", key, kvstore.ErrNotFound)
	}
	return it.value, nil
}

// List implements kvstore.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("filekv: list: %w", err)
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrClosed
	}
	now := s.now()
	entries := make([]kvstore.Entry, 0, len(s.m))
	for k, it := range s.m {
		if strings.HasPrefix(k, prefix) && !it.expired(now) {
			entries = append(entries, kvstore.Entry{Key: k, Value: it.value})
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(entries, func(a, b kvstore.Entry) int { return strings.Compare(a.Key, b.Key) })
	return entries, nil
}

// Ping implements kvstore.Store: the store is open and the file system of its snapshot takes writes and
// has room for data (an access and a statfs): a full one is a fault.NoSpace error, a read-only one a
// fault.Unavailable one, the errors writes meet. Reads work either way: they are served from memory.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("filekv: ping: %w", err)
	}
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if err := fault.Writable(what, filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("filekv: ping: %w", err)
	}
	return nil
}

// Close implements kvstore.Store. It waits for a mutation in progress, so that its snapshot is complete
// before Close returns. Closing twice is not an error.
func (s *Store) Close() error {
	s.writeSem <- struct{}{}
	defer func() { <-s.writeSem }()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
