package outagetest

import (
	"bytes"
	"context"
	"errors"
	"image"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
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

// TestMinFreeKeepsTheDiskUsable: the embedded deployment on a 256 MiB disk (storage's default --min-free
// is then 5 %, 12.8 MiB), filled until 6 MiB above that are free: uploads of 1 MiB are refused with 507
// by storage's floor, before the disk is full, while the task database on the same disk still takes
// writes; once space is freed, uploads are accepted and processed again.
func TestMinFreeKeepsTheDiskUsable(t *testing.T) {
	if testing.Short() {
		t.Skip("outage tests are not run with -short")
	}
	const mib = 1 << 20
	disk := enginetest.SmallDisk(t, 256*mib)
	d, _ := StartEmbedded(t, disk.Dir())
	ctx, cancel := deploytest.Within(t, 3*time.Minute)
	defer cancel()
	m := d.Master()
	// Noise does not compress: a PNG of about 1 MiB.
	noise := image.NewNRGBA(image.Rect(0, 0, 512, 512))
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range noise.Pix {
		noise.Pix[i] = byte(rng.Uint32())
	}
	data, err := testimage.EncodePNG(noise)
	if err != nil {
		t.Fatal(err)
	}
	upload := func() (int64, error) { return m.New(ctx, bytes.NewReader(data), int64(len(data))) }
	process := func(id int64) {
		t.Helper()
		deploytest.WaitFor(t, ctx, "the task processed", func() bool {
			ready, err := m.WaitReady(ctx, id, 5*time.Second)
			return err == nil && ready
		})
		deploytest.FetchFromMaster(t, ctx, m, id)
	}

	disk.FillTo(t, 256*mib/20+6*mib)
	// Storage measures the free space at most once a second: let the measure see the filler.
	time.Sleep(1500 * time.Millisecond)
	accepted := 0
	var refusal *httpapi.Error
	for refusal == nil && accepted < 30 {
		id, err := upload()
		switch {
		case errors.As(err, &refusal):
		case err != nil:
			t.Fatalf("upload %d: %v", accepted, err)
		default:
			accepted++
			process(id)
		}
	}
	room, _ := fault.Room(disk.Dir())
	t.Logf("%d uploads of %d bytes accepted, then %v; %d bytes free", accepted, len(data), refusal, room)
	if refusal == nil || refusal.Status != http.StatusInsufficientStorage || !strings.HasPrefix(refusal.Msg, "storage has ") ||
		!strings.Contains(refusal.Msg, "below --min-free ") || !strings.HasSuffix(refusal.Msg, "; retry later") || refusal.RetryAfter <= 0 {
		t.Fatalf("after %d uploads: %v, want 507 from storage's --min-free", accepted, refusal)
	}
	if accepted < 2 || room < 12*mib {
		t.Errorf("%d uploads accepted, %d bytes free at the refusal; want a few, and the floor free", accepted, room)
	}
	// The master created (and gave up) the refused upload's task in the database on the same disk; the
	// database takes another task too.
	if _, err := d.Database().CreateTask(ctx, client.NewTaskParams{Pending: true}); err != nil {
		t.Errorf("the task database at the floor: %v", err)
	}

	disk.Free(t)
	var id int64
	deploytest.WaitFor(t, ctx, "an upload accepted once space was freed", func() bool {
		id, err = upload()
		return err == nil
	})
	process(id)
}
