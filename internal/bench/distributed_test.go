package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/engines"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/worker"
)

// TestRunOnDistributedBackends runs the bench's pipeline on PostgreSQL, MinIO and etcd (started for the
// test) and checks every result. With IMGMILL_BENCH_DISTRIBUTED=1 it measures instead: the README's
// table of embedded and distributed backends side by side at 64, 256 and 2048 px.
func TestRunOnDistributedBackends(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, MinIO and etcd; not run with -short")
	}
	pg, minio, etcd := enginetest.StartPostgres(t), enginetest.StartMinIO(t), enginetest.StartEtcd(t, 1)
	distributed := func(t *testing.T) Config {
		return Config{Tasks: engines.Tasks{URL: pg.NewDatabase(t)}, Blobs: engines.Blobs{URL: minio.URL(minio.NewBucket(t))}, KVStore: engines.KV{URL: etcd.URL()}}
	}
	if v, _ := strconv.ParseBool(os.Getenv("IMGMILL_BENCH_DISTRIBUTED")); !v {
		cfg := distributed(t)
		cfg.Size, cfg.N, cfg.Clients, cfg.Worker.Concurrency = 32, 24, 4, 2
		var out bytes.Buffer
		cfg.Out = &out
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		res, err := Run(ctx, cfg)
		if err != nil {
			t.Fatalf("bench: %v\n%s", err, out.String())
		}
		if res.Verified != 24 || !strings.Contains(out.String(), "tasks in PostgreSQL, images in S3, kv in etcd") {
			t.Errorf("verified %d of 24; report:\n%s", res.Verified, out.String())
		}
		return
	}
	// The same sizes, image counts and clients as the README's embedded table.
	runs := []struct{ size, n, clients int }{{64, 2000, 16}, {256, 400, 8}, {2048, 16, 4}}
	var table strings.Builder
	table.WriteString("| work | backends | pipeline img/s | floor img/s | ratio | p50 |\n|---|---|---|---|---|---|\n")
	for _, r := range runs {
		for _, backends := range []string{"embedded", "distributed"} {
			cfg := Config{}
			if backends == "distributed" {
				cfg = distributed(t)
			}
			cfg.Size, cfg.N, cfg.Clients = r.size, r.n, r.clients
			// What `imgmill bench` runs with by default.
			cfg.Blobs.SmallMax, cfg.Worker.Prefetch = engines.DefaultSmallMax, worker.DefaultPrefetch
			var out bytes.Buffer
			cfg.Out = &out
			res, err := Run(t.Context(), cfg)
			t.Logf("%s", out.String())
			if err != nil {
				t.Fatalf("bench: %v", err)
			}
			fmt.Fprintf(&table, "| %d px x%d, %d clients | %s | %.1f | %.1f | %.2f | %s |\n", r.size, r.n, r.clients, backends,
				res.Pipeline.PerSecond(), res.Floor.PerSecond(), res.Ratio, round(res.P50))
		}
	}
	t.Logf("\n%s", table.String())
}
