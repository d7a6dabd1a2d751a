// Package engines opens the backends the services keep their data in, from the URL that names each: an
// empty URL is the embedded default under a data directory (SQLite, files, a JSON file), a URL names an
// engine several instances may share (PostgreSQL, S3, etcd). The command line, imgmill serve and
// imgmill bench all open their stores here, and hand them to the services, which never choose one.
//
// A misconfigured store is an error at open; an unreachable engine is not: the store opens, the service
// starts, answers 503 and waits for it.
package engines

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/blobstore/s3blob"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/kvstore/etcdkv"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/pgstore"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
)

// Where the embedded stores live in the data directory.
const (
	TasksFile = "tasks.db" // the task store (SQLite)
	ImagesDir = "images"   // the blob store (a file per large image, segment files for small ones)
	KVFile    = "kv.json"  // the kv store
)

// Tasks is where the task database keeps its tasks.
type Tasks struct {
	// URL is "" for the embedded SQLite store under DataDir, or postgres://USER@HOST:PORT/DB (several
	// database services may share it).
	URL     string
	DataDir string
	// PoolSize caps the connections to PostgreSQL (0: pgx's default, the larger of 4 and the CPUs).
	PoolSize int
	Logger   *slog.Logger
}

// Open opens the task store.
func (t Tasks) Open(ctx context.Context) (taskstore.Store, error) {
	if t.URL == "" {
		if err := os.MkdirAll(t.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("task store data dir: %w", err)
		}
		store, err := sqlitestore.Open(ctx, filepath.Join(t.DataDir, TasksFile), sqlitestore.Options{})
		if err != nil {
			return nil, fmt.Errorf("open task store: %w", err)
		}
		return store, nil
	}
	u, err := url.Parse(t.URL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, fmt.Errorf("the task store must be a postgres://USER@HOST:PORT/DB URL (or empty for the embedded store), got %q", redactURL(t.URL))
	}
	if t.PoolSize < 0 || t.PoolSize > math.MaxInt32 {
		return nil, fmt.Errorf("the connection pool size must be between 0 and %d, got %d", math.MaxInt32, t.PoolSize)
	}
	store, err := pgstore.Open(ctx, t.URL, pgstore.Options{MaxConns: int32(t.PoolSize), Logger: t.Logger})
	if err != nil {
		return nil, fmt.Errorf("open task store at %s: %w", redactURL(t.URL), err)
	}
	return store, nil
}

// Blobs is where the storage service keeps images.
type Blobs struct {
	// URL is "" for files under DataDir/images, or s3://BUCKET?endpoint=http://HOST:PORT&access_key=K&secret_key=S
	// (several storage services may share it; the bucket is created when missing).
	URL     string
	DataDir string
	// Getenv supplies AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY when the URL has no keys (nil: none).
	Getenv func(string) string
	Logger *slog.Logger
	// SmallMax: with files, blobs of at most this many bytes are appended to shared segment files
	// instead of a file each (fileblob.Options.SmallMax); 0: a file each.
	SmallMax int64
}

// DefaultSmallMax is --small-blobs: a 256x256 PNG fits (the bench's are 148 KiB; measured, the 256 px
// pipeline goes 5 % faster than with 64 KiB), and a segment holds dozens of them.
const DefaultSmallMax = 256 << 10

// MaxSmallMax bounds SmallMax: a small blob is held whole in memory while it is stored.
const MaxSmallMax = 4 << 20

// Open opens the blob store.
func (b Blobs) Open(ctx context.Context) (blobstore.Store, error) {
	if b.URL == "" {
		if b.SmallMax < 0 || b.SmallMax > MaxSmallMax {
			return nil, fmt.Errorf("small blobs: %d bytes; at most %d (4MiB), 0 for a file each", b.SmallMax, MaxSmallMax)
		}
		dir := filepath.Join(b.DataDir, ImagesDir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("blob store data dir: %w", err)
		}
		store, err := fileblob.OpenWith(dir, fileblob.Options{SmallMax: b.SmallMax, Logger: b.Logger})
		if err != nil {
			return nil, fmt.Errorf("open blob store: %w", err)
		}
		return store, nil
	}
	getenv := b.Getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	cfg, err := s3blob.ParseURL(b.URL, getenv)
	if err != nil {
		return nil, err
	}
	cfg.Logger = b.Logger // it says so while it waits for S3
	store, err := s3blob.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open blob store %s: %w", cfg, err)
	}
	return store, nil
}

// KV is where the kv service keeps its keys.
type KV struct {
	// URL is "" for the embedded file store under DataDir, or etcd://HOST:PORT[,HOST:PORT...] (several kv
	// services may share it).
	URL     string
	DataDir string
	Logger  *slog.Logger
}

// Open opens the kv store.
func (k KV) Open(ctx context.Context) (kvstore.Store, error) {
	if k.URL == "" {
		if err := os.MkdirAll(k.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("kv store data dir: %w", err)
		}
		store, err := filekv.Open(filepath.Join(k.DataDir, KVFile), filekv.Options{})
		if err != nil {
			return nil, fmt.Errorf("open kv store: %w", err)
		}
		return store, nil
	}
	endpoints, err := etcdkv.ParseURL(k.URL)
	if err != nil {
		return nil, err
	}
	store, err := etcdkv.Open(ctx, etcdkv.Options{Endpoints: endpoints, Logger: k.Logger})
	if err != nil {
		return nil, fmt.Errorf("open kv store on etcd %s: %w", strings.Join(endpoints, ","), err)
	}
	return store, nil
}

// Embedded reports whether every store named is the embedded one, and none of them exists yet in
// dataDir: a brand-new deployment, where no task can exist.
func Embedded(dataDir string, urls ...string) bool {
	for _, u := range urls {
		if u != "" {
			return false
		}
	}
	for _, name := range []string{TasksFile, KVFile} {
		if _, err := os.Stat(filepath.Join(dataDir, name)); !errors.Is(err, os.ErrNotExist) {
			return false // not new (or unreadable: the services will say so)
		}
	}
	return true
}

// redactURL hides a password in a URL for messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
