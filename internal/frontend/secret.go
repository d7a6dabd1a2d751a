package frontend

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/publicid"
)

// SecretKey is the kv key under which frontends share the public id secret, as publicid.FormatSecret
// text, when none is given to them.
const SecretKey = "publicIdSecret"

// SecretFile is the file, in a frontend's data directory, that keeps the public id secret: the ids
// handed out are made with it, so it must outlive the kv store's entry (which a kv store that lost its
// data, or a new etcd cluster, would not have). Back it up with the task database.
const SecretFile = "public-id-secret"

// CreateSecretFile makes a new random public id secret in dir's SecretFile, for an installation that is
// brand new (no task, no kv store yet), so that the frontend never has to decide whether tasks were made
// with another one: the caller vouches that none exists. An existing file is left as it is.
func CreateSecretFile(ctx context.Context, dir string) error {
	s := &secretStore{file: filepath.Join(dir, SecretFile)}
	if text, err := s.readFile(); err != nil || text != "" {
		return err
	}
	fresh := make([]byte, publicid.MinSecretLen)
	rand.Read(fresh)
	return s.writeFile(ctx, publicid.FormatSecret(fresh))
}

// ResolveSecret returns the public id secret shared by all frontends, kept in file (the data directory's
// SecretFile) and in the kv store; m is asked whether any task exists before a new one is made. See
// secretStore.resolve.
func ResolveSecret(ctx context.Context, file string, kv *client.KV, m *client.Master, logger *slog.Logger) ([]byte, error) {
	s := &secretStore{file: file, kv: kv, master: m, logger: logger}
	return s.resolve(ctx)
}

// secretStore is where a frontend finds, and keeps, the public id secret shared by all frontends: its
// own data directory first, then the kv store.
type secretStore struct {
	file   string // the secret's file in the data directory
	kv     *client.KV
	master *client.Master // asked whether tasks exist before a new secret is made
	logger *slog.Logger
}

// errNoSecretButTasks refuses to make a new secret while tasks exist: every public id handed out for
// them would stop resolving, silently.
var errNoSecretButTasks = errors.New("tasks exist but no public id secret was found")

// resolve returns the public id secret. It is, in order: the one in the data directory's file (copied
// into the kv store when the kv store has none, and refused when the kv store has another); the one in
// the kv store (then kept in the file too); or, when neither exists and no task exists either, a new
// random one, stored in the kv store with set-if-absent (frontends starting together agree on the
// first) and in the file. When tasks exist but no secret does, it refuses to make one and says what to
// do. It waits, retrying with backoff, while the kv store or the master cannot be reached.
func (s *secretStore) resolve(ctx context.Context) ([]byte, error) {
	retry := backoff.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	var loggedAt time.Time
	for {
		secret, err := s.try(ctx)
		if err == nil || !fault.IsTransient(err) {
			return secret, err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("public id secret: %w (%w)", err, ctx.Err())
		}
		if time.Since(loggedAt) >= 5*time.Second {
			s.logger.WarnContext(ctx, "waiting to resolve the public id secret; uploads and task lookups answer 503 until then", "err", err)
			loggedAt = time.Now()
		}
		if !backoff.Sleep(ctx, retry.Next()) {
			return nil, fmt.Errorf("public id secret: %w (%w)", err, ctx.Err())
		}
	}
}

// try makes one attempt at resolve; a transient error means try again.
func (s *secretStore) try(ctx context.Context) ([]byte, error) {
	local, err := s.readFile()
	if err != nil {
		return nil, err
	}
	if local != "" {
		return s.publish(ctx, local)
	}
	text, err := s.kv.Get(ctx, SecretKey)
	switch {
	case err == nil:
		secret, err := publicid.ParseSecret(text)
		if err != nil {
			return nil, fmt.Errorf("public id secret in the kv store under %s: %w", SecretKey, err)
		}
		return secret, s.writeFile(ctx, text)
	case !client.IsStatus(err, http.StatusNotFound):
		return nil, fault.Unavailable("the key-value store", err)
	}
	// Neither the file nor the kv store has one: new, but only if no task was made with an old one.
	stats, err := s.master.Stats(ctx)
	if err != nil {
		return nil, fault.Unavailable("the master", fmt.Errorf("count the tasks: %w", err))
	}
	if n := stats.Queued + stats.Pending + stats.Processing + stats.Finished + stats.Failed; n > 0 {
		return nil, fmt.Errorf("%w (%d tasks; none in %s, none in the kv store under %s): their public ids cannot be "+
			"resolved without the secret they were made with, so the frontend will not make a new one. Restore %s from a "+
			"backup or copy it from another frontend's data directory, or give the secret with --secret (IMGMILL_SECRET); "+
			"to give up the old ids on purpose, pass a new one: --secret \"$(openssl rand -base64 32)\"",
			errNoSecretButTasks, n, s.file, SecretKey, s.file)
	}
	fresh := make([]byte, publicid.MinSecretLen)
	rand.Read(fresh)
	mine := publicid.FormatSecret(fresh)
	stored, err := s.kv.SetIfAbsent(ctx, SecretKey, mine)
	if err != nil {
		return nil, fault.Unavailable("the key-value store", err)
	}
	if stored == mine {
		s.logger.InfoContext(ctx, "created the public id secret", "file", s.file, "kv_key", SecretKey)
	}
	secret, err := publicid.ParseSecret(stored)
	if err != nil {
		return nil, fmt.Errorf("public id secret in the kv store under %s: %w", SecretKey, err)
	}
	return secret, s.writeFile(ctx, stored)
}

// publish returns the file's secret after making sure the kv store holds the same one (copying it there
// when the kv store lost it): two secrets would split the frontends' ids.
func (s *secretStore) publish(ctx context.Context, local string) ([]byte, error) {
	secret, err := publicid.ParseSecret(local)
	if err != nil {
		return nil, fmt.Errorf("public id secret in %s: %w", s.file, err)
	}
	stored, err := s.kv.SetIfAbsent(ctx, SecretKey, publicid.FormatSecret(secret))
	if err != nil {
		return nil, fault.Unavailable("the key-value store", err)
	}
	other, err := publicid.ParseSecret(stored)
	if err != nil || string(other) != string(secret) {
		return nil, fmt.Errorf("the public id secret in %s differs from the one in the kv store under %s: ids made by "+
			"one would not resolve with the other. Keep the one the ids in use were made with: copy it into %s on every "+
			"frontend, or set it in the kv store (POST /set?key=%s&value=...)", s.file, SecretKey, s.file, SecretKey)
	}
	return secret, nil
}

// readFile returns the secret's text in the file, "" when there is none.
func (s *secretStore) readFile() (string, error) {
	b, err := os.ReadFile(s.file)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the public id secret: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// writeFile keeps the secret's text in the file, durably; atomicfile's files are readable by their owner
// only.
func (s *secretStore) writeFile(ctx context.Context, text string) error {
	if err := os.MkdirAll(filepath.Dir(s.file), 0o755); err != nil {
		return fmt.Errorf("keep the public id secret: %w", err)
	}
	if _, err := atomicfile.Write(ctx, s.file, strings.NewReader(text+"\n")); err != nil {
		return fmt.Errorf("keep the public id secret in %s: %w", s.file, fault.Disk("the frontend's data directory", err))
	}
	return nil
}
