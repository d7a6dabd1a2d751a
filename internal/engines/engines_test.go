package engines_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/engines"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// A misconfigured store is a clear error at open, in words a library says (the command line adds its
// flag's name), never showing a password or secret key; an unreachable engine is not an error: the
// store opens, and says it is unavailable.
func TestOpenErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name, want string
		open       func() error
	}{
		{"mysql tasks", "must be a postgres://", func() error {
			_, err := engines.Tasks{URL: "mysql://root:hunter2@127.0.0.1/db", DataDir: dir}.Open(ctx)
			return err
		}},
		{"bare address tasks", "must be a postgres://", func() error { _, err := engines.Tasks{URL: "127.0.0.1:5432", DataDir: dir}.Open(ctx); return err }},
		{"negative pool", "pool size", func() error {
			_, err := engines.Tasks{URL: "postgres://127.0.0.1/db", PoolSize: -1, DataDir: dir}.Open(ctx)
			return err
		}},
		{"gs blobs", "s3", func() error { _, err := engines.Blobs{URL: "gs://bucket", DataDir: dir}.Open(ctx); return err }},
		{"s3 without endpoint", "endpoint", func() error {
			_, err := engines.Blobs{URL: "s3://bucket?access_key=k&secret_key=hunter2", DataDir: dir}.Open(ctx)
			return err
		}},
		{"redis kv", "etcd", func() error { _, err := engines.KV{URL: "redis://127.0.0.1:6379", DataDir: dir}.Open(ctx); return err }},
		{"empty etcd", "no endpoint", func() error { _, err := engines.KV{URL: "etcd://", DataDir: dir}.Open(ctx); return err }},
	} {
		err := tc.open()
		switch {
		case err == nil || !strings.Contains(err.Error(), tc.want):
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		case strings.Contains(err.Error(), "hunter2"):
			t.Errorf("%s: the error shows the secret: %v", tc.name, err)
		case strings.Contains(err.Error(), "--"):
			t.Errorf("%s: the error names a flag, which is the command line's to say: %v", tc.name, err)
		}
	}
}

// The embedded stores are made under the data directory, and Embedded tells a brand-new one.
func TestOpenEmbedded(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "data")
	if !engines.Embedded(dir, "", "") {
		t.Error("Embedded = false for a data directory that does not exist yet")
	}
	if engines.Embedded(dir, "postgres://x/db", "") {
		t.Error("Embedded = true with a PostgreSQL task store")
	}
	tasks, err := engines.Tasks{DataDir: dir}.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tasks.Close()
	blobs, err := engines.Blobs{DataDir: dir}.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Close()
	kv, err := engines.KV{DataDir: dir}.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Close()
	for _, name := range []string{engines.TasksFile, engines.ImagesDir} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s not made under the data directory: %v", name, err)
		}
	}
	if err := kv.Set(ctx, "k", "v", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, engines.KVFile)); err != nil {
		t.Errorf("%s not made under the data directory: %v", engines.KVFile, err)
	}
	if engines.Embedded(dir, "", "") {
		t.Error("Embedded = true for a data directory that has stores")
	}
}

// Unreachable engines: each store opens and waits for its engine; Ping says it is away (a transient
// error), without the password or secret key, and the S3 store logs what it waits for.
func TestOpenUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var logs deploytest.SyncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	for _, tc := range []struct {
		name string
		open func() (engine, error)
	}{
		{"PostgreSQL", func() (engine, error) {
			return engines.Tasks{URL: "postgres://u:hunter2@" + enginetest.FreeAddr(t) + "/db?sslmode=disable", Logger: logger}.Open(ctx)
		}},
		{"S3", func() (engine, error) {
			return engines.Blobs{URL: "s3://bucket?endpoint=http://" + enginetest.FreeAddr(t) + "&access_key=k&secret_key=hunter2", Logger: logger}.Open(ctx)
		}},
		{"etcd", func() (engine, error) {
			return engines.KV{URL: "etcd://" + enginetest.FreeAddr(t), Logger: logger}.Open(ctx)
		}},
	} {
		store, err := tc.open()
		if err != nil {
			t.Errorf("open an unreachable %s: %v, want a store that waits for it", tc.name, err)
			continue
		}
		err = store.Ping(ctx)
		if !fault.IsTransient(err) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Ping of an unreachable %s = %v, want a transient error without the secret", tc.name, err)
		}
		store.Close()
	}
	if !servicetest.PollFor(20*time.Second, func() bool { return strings.Contains(logs.String(), "waiting for S3") }) {
		t.Errorf("no log line says what the S3 store waits for: %q", logs.String())
	}
	if strings.Contains(logs.String(), "hunter2") {
		t.Errorf("the log shows a secret: %s", logs.String())
	}
}

// engine is what the three stores have in common.
type engine interface {
	Ping(context.Context) error
	Close() error
}
