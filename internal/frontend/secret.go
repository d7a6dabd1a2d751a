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

// ResolveSecret returns the public id secret shared through the kv store: the one stored under
// SecretKey, or, when there is none yet, a new random one stored there for good with the kv store's
// set-if-absent (the first writer wins and every caller gets its value), so several frontends and
// restarts agree. It waits for the kv store, retrying with backoff
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
			mine := publicid.FormatSecret(secret)
			// Only the first writer's secret is stored; every frontend gets that one back.
			var stored string
			if stored, err = kv.SetIfAbsent(ctx, SecretKey, mine); err == nil {
				if stored == mine {
					logger.InfoContext(ctx, "created the public id secret in the kv store", "key", SecretKey)
				}
				return publicid.ParseSecret(stored)
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
