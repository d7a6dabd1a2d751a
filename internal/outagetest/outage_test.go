package outagetest

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestMain(m *testing.M) { deploytest.Main(m) }

// TestOutageFullDisk: every data directory of the embedded deployment on a small disk, filled for 30 s.
func TestOutageFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("outage tests are not run with -short")
	}
	disk := enginetest.SmallDisk(t, 256<<20)
	_, view := StartEmbedded(t, disk.Dir())
	Run(t, view, Outage{Name: "disk full (embedded)", Duration: 30 * time.Second,
		Begin: func() { disk.Fill(t) }, End: func() { disk.Free(t) }, Allowed: TransientStatuses})
}

// TestOutageStorageStopped: the storage process of the embedded deployment stopped (SIGSTOP) for 20 s:
// it accepts connections but answers nothing, and its registration lapses meanwhile.
func TestOutageStorageStopped(t *testing.T) {
	if testing.Short() {
		t.Skip("outage tests are not run with -short")
	}
	d, view := StartEmbedded(t, "")
	Run(t, view, Outage{Name: "storage stopped with SIGSTOP (embedded)", Duration: 20 * time.Second,
		Begin: func() { d.Signal("storage", syscall.SIGSTOP) }, End: func() { d.Signal("storage", syscall.SIGCONT) },
		Allowed: TransientStatuses})
}

// TestOutageKVStallsNothing: the kv service of the embedded deployment stopped (SIGSTOP) for 60 s under
// load: discovery is not in the data path, so uploads go on being accepted and processed, and no client
// sees a refusal.
func TestOutageKVStallsNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("outage tests are not run with -short")
	}
	d, view := StartEmbedded(t, "")
	Run(t, view, Outage{Name: "kv stopped with SIGSTOP (embedded)", Duration: 60 * time.Second,
		Begin: func() { d.Signal("kv", syscall.SIGSTOP) }, End: func() { d.Signal("kv", syscall.SIGCONT) }, Flowing: true})
}

// TestPublicIDsSurviveKVWipe: the kv store loses everything (a new, empty one) and the frontend
// restarts: the public ids handed out before still resolve, because the frontend keeps the secret in
// its data directory and puts it back in the kv store; a frontend on another machine then gets it from
// there. A frontend that finds neither while tasks exist refuses to start, saying why.
func TestPublicIDsSurviveKVWipe(t *testing.T) {
	if testing.Short() {
		t.Skip("wiping kv and restarting services is not done with -short")
	}
	d, _ := StartEmbedded(t, "")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	data, _ := testimage.EncodePNG(testimage.Pattern(16, 50))
	pub, err := deploytest.SubmitViaFrontend(ctx, d.HC, d.FEAddr, data)
	if err != nil {
		t.Fatal(err)
	}
	d.Kill("kv")
	d.MustStart("kv", "kv", "--addr", d.KVAddr, "--data", filepath.Join(d.Dir, "kv-new"))
	d.Kill("frontend")
	d.StartFrontend()
	deploytest.WaitHealthy(t, ctx, d.HC, d.FEAddr)
	if st, err := statusOnceServing(ctx, d.HC, d.FEAddr, pub); err != nil || st.ID != pub {
		t.Fatalf("status of %s after the kv store was wiped and the frontend restarted: %+v, %v", pub, st, err)
	}

	// Another frontend, with a data directory of its own, takes the secret from the kv store.
	addrs := enginetest.FreeAddrs(t, 2)
	d.MustStart("frontend-2", "frontend", "--addr", addrs[0], "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "frontend-2"))
	deploytest.WaitHealthy(t, ctx, d.HC, addrs[0])
	if st, err := statusOnceServing(ctx, d.HC, addrs[0], pub); err != nil || st.ID != pub {
		t.Errorf("status of %s at a second frontend: %+v, %v", pub, st, err)
	}

	// The kv store wiped again, and a frontend with neither the file nor the kv entry: it must not
	// invent a secret that would orphan every id handed out.
	d.Kill("kv")
	d.MustStart("kv", "kv", "--addr", d.KVAddr, "--data", filepath.Join(d.Dir, "kv-newer"))
	d.MustStart("frontend-3", "frontend", "--addr", addrs[1], "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "frontend-3"))
	deploytest.WaitFor(t, ctx, "the frontend without a secret to refuse to start", func() bool { return d.Exited("frontend-3") })
	if log := d.Log("frontend-3"); !strings.Contains(log, "tasks exist but no public id secret") {
		t.Errorf("the refusal does not say why:\n%s", deploytest.Tail(log, 2000))
	}
}

// statusOnceServing is the frontend's /status of pub, asked again while the frontend answers 503 (as
// after a kv wipe, until the master has registered again), as a client honouring Retry-After does.
func statusOnceServing(ctx context.Context, hc *http.Client, addr, pub string) (wire.PublicStatus, error) {
	for {
		st, err := deploytest.FrontendStatus(ctx, hc, addr, pub)
		if err == nil || !strings.Contains(err.Error(), "/status: 503 ") || !backoff.Sleep(ctx, time.Second) {
			return st, err
		}
	}
}
