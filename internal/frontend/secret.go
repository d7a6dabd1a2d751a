package frontend

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/publicid"
)

// SecretKey is the kv key under which frontends share the public id secret, as publicid.FormatSecret
// text, when none is given to them.
const SecretKey = "publicIdSecret"

// settle is how long a frontend that created the shared secret waits before reading it back, so that
// one created at about the same moment by another frontend (the kv store keeps the last write) is the one
// both use. Only a frontend whose write is delayed by longer than settle could end up with a secret of its
// own; --secret rules that out. It costs only the very first start of a deployment.
const settle = 500 * time.Millisecond

// ResolveSecret returns the public id secret shared through the kv store: the one stored under
// SecretKey, or, when there is none yet, a new random one that it stores there (for good, no TTL) and
// reads back, so several frontends and restarts agree. It waits for the kv store, retrying with backoff
// until ctx ends; a stored value that is not a valid secret is an error (it is never replaced: the ids
// out there were made with it).
func ResolveSecret(ctx context.Context, kv *client.KV, logger *slog.Logger) ([]byte, error) {
	retry := backoff.Backoff{Min: 50 * time.Millisecond, Max: 2 * time.Second}
	for {
		text, err := kv.Get(ctx, SecretKey)
		if err == nil {
			secret, err := publicid.ParseSecret(text)
			if err != nil {
				return nil, fmt.Errorf("public id secret in the kv store under %s: %w", SecretKey, err)
			}
			return secret, nil
		}
		if client.IsStatus(err, http.StatusNotFound) {
			secret := make([]byte, publicid.MinSecretLen)
			rand.Read(secret)
			if err = kv.Set(ctx, SecretKey, publicid.FormatSecret(secret)); err == nil {
				logger.InfoContext(ctx, "created the public id secret in the kv store", "key", SecretKey)
				if !backoff.Sleep(ctx, settle) {
					return nil, fmt.Errorf("public id secret: %w", ctx.Err())
				}
				continue // read back what is stored: another frontend may have written its own meanwhile
			}
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("public id secret from the kv store: %w (%w)", err, ctx.Err())
		}
		d := retry.Next()
		logger.WarnContext(ctx, "cannot get the public id secret from the kv store, retrying", "err", err, "retry_in", d)
		if !backoff.Sleep(ctx, d) {
			return nil, fmt.Errorf("public id secret from the kv store: %w (%w)", err, ctx.Err())
		}
	}
}
