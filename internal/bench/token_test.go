package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/worker"
)

// The in-process pipeline with a token (allinone.Config.Token): every service requires it and every
// client of imgmill's own sends it, so the run goes through and verifies.
func TestRunInProcessWithToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{Size: 16, N: 6, Clients: 2, Worker: worker.Config{Concurrency: 1}, Out: &out, Token: "bench-token-0123456789-abcdefghijklm"})
	if err != nil {
		t.Fatalf("bench with a token: %v\n%s", err, out.String())
	}
	if res.Verified != 6 {
		t.Errorf("verified %d of 6", res.Verified)
	}
}
