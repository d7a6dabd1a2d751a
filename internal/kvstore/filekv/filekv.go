// Package filekv is a kvstore.Store kept in memory and persisted, on every mutation, as a whole JSON
// snapshot written with atomicfile. The kv holds configuration and service addresses, so the snapshot is
// small and rewriting it is cheaper than maintaining a log; atomicfile makes each Set durable before it
// returns and a crash leave the previous snapshot or the new one.
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
	"unicode/utf8"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/kvstore"
)

// ErrClosed is returned by every method of a closed Store.
var ErrClosed = errors.New("filekv: store closed")

// formatVersion is written in every snapshot so that a future format can tell old files apart.
const formatVersion = 1

// snapshot is the file's content.
type snapshot struct {
	Version int               `json:"version"`
	Entries map[string]string `json:"entries"`
}

// Store is a file-backed kvstore.Store. It is safe for concurrent use.
type Store struct {
	path string
	// writeSem (capacity 1) serialises mutations and their snapshot writes; a channel rather than a mutex
	// so that a Set waiting behind a slow fsync gives up when its context ends.
	writeSem chan struct{}
	// mu guards m and closed. Readers never wait for an fsync: a mutation builds and persists a new map,
	// then swaps it in under mu. m is never modified in place, so it always equals the file's content.
	mu     sync.RWMutex
	m      map[string]string
	closed bool
}

var _ kvstore.Store = (*Store)(nil)

// Open loads the store kept in path. A missing file is an empty store; its directory must exist. A file
// that cannot be read as a snapshot is an error, never an empty store: starting empty would lose the
// configuration at the next Set.
func Open(path string) (*Store, error) {
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
	return &Store{path: path, writeSem: make(chan struct{}, 1), m: m}, nil
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

func load(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return make(map[string]string), nil
	}
	if err != nil {
		return nil, err
	}
	var snap snapshot
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&snap); err != nil {
		return nil, fmt.Errorf("corrupt snapshot: %w", err)
	}
	if err := dec.Decode(new(json.RawMessage)); err != io.EOF {
		return nil, errors.New("corrupt snapshot: data after the snapshot")
	}
	if snap.Version != formatVersion {
		return nil, fmt.Errorf("corrupt snapshot: unknown format version %d", snap.Version)
	}
	if snap.Entries == nil {
		// We always write the entries, even when there are none: "null" or a missing field is damage.
		return nil, errors.New("corrupt snapshot: no entries")
	}
	return snap.Entries, nil
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
func (s *Store) Set(ctx context.Context, key, value string) error {
	if err := checkEntry(key, value); err != nil {
		return err
	}
	return s.mutate(ctx, "set "+key, func(m map[string]string) bool {
		if old, ok := m[key]; ok && old == value {
			return false
		}
		m[key] = value
		return true
	})
}

// Delete implements kvstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.mutate(ctx, "delete "+key, func(m map[string]string) bool {
		if _, ok := m[key]; !ok {
			return false
		}
		delete(m, key)
		return true
	})
}

// mutate applies change to a copy of the map, persists the copy and only then publishes it, so that a
// failed write leaves memory and file agreeing on the old content. change reports whether it changed
// anything; when it did not, the current content is already durable and nothing is written.
func (s *Store) mutate(ctx context.Context, op string, change func(map[string]string) bool) error {
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
	if !change(next) {
		return nil
	}
	data, err := json.Marshal(snapshot{Version: formatVersion, Entries: next})
	if err != nil {
		return fmt.Errorf("filekv: %s: encode: %w", op, err)
	}
	if _, err := atomicfile.Write(ctx, s.path, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("filekv: %s: %w", op, err)
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
	v, ok := s.m[key]
	if !ok {
		return "", fmt.Errorf("filekv: get %s: %w", key, kvstore.ErrNotFound)
	}
	return v, nil
}

// List implements kvstore.Store.
func (s *Store) List(ctx context.Context) ([]kvstore.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("filekv: list: %w", err)
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return nil, ErrClosed
	}
	entries := make([]kvstore.Entry, 0, len(s.m))
	for k, v := range s.m {
		entries = append(entries, kvstore.Entry{Key: k, Value: v})
	}
	s.mu.RUnlock()
	slices.SortFunc(entries, func(a, b kvstore.Entry) int { return strings.Compare(a.Key, b.Key) })
	return entries, nil
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
