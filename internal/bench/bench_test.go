package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/worker"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRunInProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	res, err := Run(ctx, Config{Size: 32, N: 24, Clients: 4, Worker: worker.Config{Concurrency: 2}, Out: &out})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	if res.Verified != 24 {
		t.Errorf("verified %d of 24", res.Verified)
	}
	if res.Ratio <= 0 || res.Pipeline.Images != 24 || res.Floor.Images != 24 {
		t.Errorf("result %+v", res)
	}
	if !(res.P50 <= res.P95 && res.P95 <= res.Max && res.Max > 0) {
		t.Errorf("latency percentiles out of order: %s %s %s", res.P50, res.P95, res.Max)
	}
	for _, want := range []string{"pipeline: 24 images", "floor:    24 images", "verified: 24/24", "ratio pipeline/floor: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{Size: 0, N: 1, Clients: 1}, {Size: 8, N: 0, Clients: 1}, {Size: 8, N: 1, Clients: 0}} {
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("Run(%+v) should fail", cfg)
		}
	}
}

func TestRunAgainstUnreachableMaster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if _, err := Run(ctx, Config{Master: "http://127.0.0.1:1", Size: 8, N: 2, Clients: 1, Out: &out}); err == nil {
		t.Error("bench against a closed port should fail")
	}
}
