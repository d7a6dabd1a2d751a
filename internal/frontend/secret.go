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
	"github.com/imgmill/imgmill/internal/wire"
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
func ResolveSecret(ctx context.Context, file string, kv *client.KV, m Master, logger *slog.Logger) ([]byte, error) {
	s := &secretStore{file: file, kv: kv, master: m, logger: logger, settle: ReferenceKVSettle}
	return s.resolve(ctx)
}

// ReferenceKVSettle is how long a frontend facing a kv store without set-if-absent (the reference
// design's) waits before it reads the secret back, and between the two reads that confirm it: longer
// than a write that another frontend starting at the same moment may still have on its way (a read and
// a set, milliseconds).
const ReferenceKVSettle = 2 * time.Second

// maxConfirmReads bounds the reads that confirm a secret in a kv store without set-if-absent: the value
// settles once the frontends starting together have written, so a value that goes on changing means
// something else keeps writing the key.
const maxConfirmReads = 10

// secretStore is where a frontend finds, and keeps, the public id secret shared by all frontends: its
// own data directory first, then the kv store.
type secretStore struct {
	file   string // the secret's file in the data directory
	kv     *client.KV
	master Master // asked whether tasks exist before a new secret is made
	logger *slog.Logger
	// settle is ReferenceKVSettle (shorter in tests).
	settle time.Duration
	// referenceKV is set once the kv store answered like the reference design's (a missing key read as
	// empty, or a set-if-absent answered "success"): the value read must then be confirmed.
	referenceKV bool
	// kvKnown is set once referenceKV is known either way.
	kvKnown bool
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
//
// A kv store of the reference design answers a missing key with an empty value, which counts as absent,
// and has no set-if-absent: its set replaces. Facing one, a frontend that takes the secret from the kv
// store (the first start on a machine) reads it again, ReferenceKVSettle apart, until two reads agree,
// so that frontends starting together end with the last writer's secret, before any id is made.
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
	text, found, err := s.get(ctx)
	if err != nil {
		return nil, err
	}
	if found {
		return s.adopt(ctx, text)
	}
	// Neither the file nor the kv store has one: new, but only if no task was made with an old one.
	stats, err := s.master.Stats(ctx)
	switch {
	case client.IsStatus(err, http.StatusNotFound):
		// The reference design's master has no /stats: nothing can tell whether tasks exist, and its
		// own frontend has no secret at all, so one is made (ids made with a lost one cannot be known).
		s.logger.InfoContext(ctx, "the master has no /stats (the reference design's): making the public id secret "+
			"without checking that no task exists", "err", err)
		stats = wire.Stats{}
	case err != nil:
		return nil, fault.Unavailable("the master", fmt.Errorf("count the tasks: %w", err))
	}
	if n := stats.Queued + stats.Pending + stats.Processing + stats.Finished + stats.Failed; n > 0 {
		return nil, fmt.Errorf("%w (%d tasks; none in %s, none in the kv store under %s): their public ids cannot be "+
			"resolved without the secret they were made with, so the frontend will not make a new one. Restore %s from a "+
			"backup or copy it from another frontend's data directory, or give the secret with --secret (IMGMILL_SECRET); "+
			"to give up the old ids on purpose, pass a new one: --secret \"$(openssl rand -base64 32)\"",
			errNoSecretButTasks, n, s.file, SecretKey, s.file)
	}
	// Looked again just before the write: with a kv store whose set replaces, the time between the read
	// that found nothing and the write is what another frontend's confirmation must outwait.
	switch text, found, err = s.get(ctx); {
	case err != nil:
		return nil, err
	case found:
		return s.adopt(ctx, text)
	}
	fresh := make([]byte, publicid.MinSecretLen)
	rand.Read(fresh)
	mine := publicid.FormatSecret(fresh)
	stored, err := s.kv.SetIfAbsent(ctx, SecretKey, mine)
	switch {
	case errors.Is(err, client.ErrNoSetIfAbsent):
		s.sawReferenceKV(ctx)
		if stored, err = s.confirm(ctx, mine); err != nil {
			return nil, err
		}
	case err != nil:
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

// adopt returns the secret text found in the kv store, confirmed first when the kv store is the
// reference design's (another frontend's write may still replace it), and keeps it in the file.
func (s *secretStore) adopt(ctx context.Context, text string) ([]byte, error) {
	if !s.kvKnown {
		ref, err := s.kv.AnswersLikeReference(ctx)
		if err != nil {
			return nil, fault.Unavailable("the key-value store", err)
		}
		if ref {
			s.sawReferenceKV(ctx)
		}
		s.kvKnown = true
	}
	if s.referenceKV {
		var err error
		if text, err = s.confirm(ctx, text); err != nil {
			return nil, err
		}
	}
	secret, err := publicid.ParseSecret(text)
	if err != nil {
		return nil, fmt.Errorf("public id secret in the kv store under %s: %w", SecretKey, err)
	}
	return secret, s.writeFile(ctx, text)
}

// get reads the secret's text in the kv store; found is false when the key is missing or empty.
func (s *secretStore) get(ctx context.Context) (text string, found bool, err error) {
	text, err = s.kv.Get(ctx, SecretKey)
	switch {
	case err == nil:
		return text, true, nil
	case errors.Is(err, client.ErrEmptyValue):
		s.sawReferenceKV(ctx)
		return "", false, nil
	case client.IsStatus(err, http.StatusNotFound):
		return "", false, nil
	}
	return "", false, fault.Unavailable("the key-value store", err)
}

// sawReferenceKV notes, and logs once, that the kv store is the reference design's.
func (s *secretStore) sawReferenceKV(ctx context.Context) {
	if !s.referenceKV {
		s.logger.InfoContext(ctx, "the kv store answers like the reference design's (a missing key reads as empty, no set-if-absent): "+
			"the public id secret is read back until it settles; give every frontend the same --secret to skip that", "kv_key", SecretKey)
	}
	s.referenceKV, s.kvKnown = true, true
}

// confirm reads the secret in a kv store without set-if-absent until two reads, s.settle apart, agree,
// starting from last, the value last seen or written, and returns it: the frontends that found no secret
// and wrote theirs at about the same time have all written by then, and all read the last write.
func (s *secretStore) confirm(ctx context.Context, last string) (string, error) {
	for range maxConfirmReads {
		if !backoff.Sleep(ctx, s.settle) {
			return "", fmt.Errorf("confirm the public id secret: %w", ctx.Err())
		}
		text, found, err := s.get(ctx)
		switch {
		case err != nil:
			return "", err
		case !found:
			// Removed meanwhile: start again (transient, so resolve retries).
			return "", fault.Unavailable("the key-value store", fmt.Errorf("the public id secret under %s vanished while it was confirmed", SecretKey))
		case text == last:
			return text, nil
		}
		last = text
	}
	return "", fmt.Errorf("the public id secret in the kv store under %s changed on each of %d reads %v apart: something "+
		"keeps writing it; give every frontend the same --secret (IMGMILL_SECRET)", SecretKey, maxConfirmReads, s.settle)
}

// publish returns the file's secret after making sure the kv store holds the same one (copying it there
// when the kv store lost it): two secrets would split the frontends' ids. The kv store is read first, so
// that a kv store whose set replaces (the reference design's) is written only when it holds none.
func (s *secretStore) publish(ctx context.Context, local string) ([]byte, error) {
	secret, err := publicid.ParseSecret(local)
	if err != nil {
		return nil, fmt.Errorf("public id secret in %s: %w", s.file, err)
	}
	mine := publicid.FormatSecret(secret)
	stored, found, err := s.get(ctx)
	if err != nil {
		return nil, err
	}
	if !found {
		stored, err = s.kv.SetIfAbsent(ctx, SecretKey, mine)
		switch {
		case errors.Is(err, client.ErrNoSetIfAbsent):
			s.sawReferenceKV(ctx)
			if stored, err = s.confirm(ctx, mine); err != nil {
				return nil, err
			}
		case err != nil:
			return nil, fault.Unavailable("the key-value store", err)
		}
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
