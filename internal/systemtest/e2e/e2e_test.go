package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestEndToEndSplitDeployment(t *testing.T) {
	d := deploytest.New(t)
	d.StartBackends()
	d.StartWorker("worker")
	d.StartFrontend()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	deploytest.WaitHealthy(t, ctx, d.HC, d.FEAddr)

	m := d.Master()
	// An upload through the master has an internal id (id); one through the frontend only the opaque
	// public id the frontend answered (pub), which is all its user ever sees.
	type upload struct {
		id   int64
		pub  string
		orig *image.NRGBA
	}
	var uploads []upload
	for i := range 12 {
		orig := testimage.Pattern(16+i*9, int64(i))
		data, err := testimage.EncodePNG(orig)
		if err != nil {
			t.Fatal(err)
		}
		u := upload{orig: orig}
		if i%2 == 0 {
			u.id, err = m.New(ctx, bytes.NewReader(data), int64(len(data)))
		} else {
			u.pub, err = deploytest.SubmitViaFrontend(ctx, d.HC, d.FEAddr, data)
		}
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		uploads = append(uploads, u)
	}
	seen, seenPub := map[int64]bool{}, map[string]bool{}
	for _, u := range uploads {
		// Poll and download through the same entry point the image came in by, as a user would.
		if u.pub != "" {
			if seenPub[u.pub] {
				t.Fatalf("public id %s answered twice", u.pub)
			}
			seenPub[u.pub] = true
			deploytest.WaitFor(t, ctx, fmt.Sprintf("task %s ready at the frontend", u.pub), func() bool {
				ready, _ := deploytest.FrontendReady(ctx, d.HC, d.FEAddr, u.pub)
				return ready
			})
			result := deploytest.FetchPNG(t, ctx, d.HC, "http://"+d.FEAddr+"/getImage?id="+u.pub)
			if err := testimage.CheckSwapped(u.orig, result); err != nil {
				t.Errorf("task %s, result from the frontend: %v", u.pub, err)
			}
			if st, err := deploytest.FrontendStatus(ctx, d.HC, d.FEAddr, u.pub); err != nil || st.ID != u.pub || st.State != "finished" {
				t.Errorf("frontend /status of %s: %+v, %v; want finished under the public id", u.pub, st, err)
			}
			continue
		}
		if seen[u.id] {
			t.Fatalf("id %d answered twice", u.id)
		}
		seen[u.id] = true
		deploytest.WaitFor(t, ctx, fmt.Sprintf("task %d ready at the master", u.id), func() bool {
			ready, _ := m.IsReady(ctx, u.id)
			return ready
		})
		if err := testimage.CheckSwapped(u.orig, deploytest.FetchFromMaster(t, ctx, m, u.id)); err != nil {
			t.Errorf("task %d from master /get: %v", u.id, err)
		}
		// The frontend does not know internal ids: counting gets nothing.
		for _, path := range []string{"/isReady", "/getImage", "/status"} {
			r, err := servicetest.Send(ctx, d.HC, http.MethodGet, "http://"+d.FEAddr+path+"?id="+strconv.FormatInt(u.id, 10), nil)
			if err != nil || r.Status != http.StatusNotFound || r.Body != "Error: no such task" {
				t.Errorf("frontend %s?id=%d: %d %q (%v), want 404 \"Error: no such task\"", path, u.id, r.Status, r.Body, err)
			}
		}
	}

	// Refused input answers 4xx "Error:" and creates nothing.
	resp, err := d.HC.Post("http://"+d.FEAddr+"/submitTask", "text/plain", strings.NewReader("not multipart"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(string(body), "Error:") {
		t.Errorf("bad submit: %d %q", resp.StatusCode, body)
	}

	// Every service shuts down cleanly on SIGTERM.
	d.Stop("worker") // first, so its long poll at the master ends before the master stops
	for _, s := range []string{"frontend", "master", "storage", "database", "kv"} {
		d.Stop(s)
	}
}

// TestEndToEndKill9LosesNothing: every id answered before the services are killed with SIGKILL is
// processed after they restart (on new ports, found again through the kv store).
func TestEndToEndKill9LosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("killing and restarting every service is not done with -short")
	}
	d := deploytest.New(t)
	d.StartBackends()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	m := d.Master()
	origs := map[int64]*image.NRGBA{}
	for i := range 8 {
		orig := testimage.Pattern(24, int64(100+i))
		data, _ := testimage.EncodePNG(orig)
		id, err := m.New(ctx, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		origs[id] = orig
	}
	// No worker ran yet: every task waits. Crash everything, then bring it back.
	for _, s := range []string{"master", "storage", "database", "kv"} {
		d.Kill(s)
	}
	d.StartBackends()
	d.StartWorker("worker")
	m = d.Master()
	for id, orig := range origs {
		deploytest.WaitFor(t, ctx, fmt.Sprintf("task %d ready after restart", id), func() bool {
			ready, _ := m.IsReady(ctx, id)
			return ready
		})
		if err := testimage.CheckSwapped(orig, deploytest.FetchFromMaster(t, ctx, m, id)); err != nil {
			t.Errorf("task %d: %v", id, err)
		}
	}
}

// TestServeAllInOne runs `imgmill serve` in-process, sends one image through the frontend, and checks
// that serve registered every service and (when the test ends, see ServeApp) stops cleanly, kv last.
func TestServeAllInOne(t *testing.T) {
	var log deploytest.SyncBuffer
	// Registered before ServeApp's, so run after the app stopped: the services deregistered through kv,
	// which stops last.
	t.Cleanup(func() {
		if strings.Contains(log.String(), "deregistration failed") {
			t.Errorf("serve stopped kv before the services deregistered:\n%s", deploytest.Tail(log.String(), 2000))
		}
	})
	addrs := deploytest.ServeApp(t, &log, "--concurrency", "1")
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	orig := testimage.Pattern(40, 7)
	data, _ := testimage.EncodePNG(orig)
	pub, err := deploytest.SubmitViaFrontend(ctx, hc, addrs[0], data)
	if err != nil {
		t.Fatal(err)
	}
	deploytest.WaitFor(t, ctx, "ready", func() bool {
		ready, _ := deploytest.FrontendReady(ctx, hc, addrs[0], pub)
		return ready
	})
	if err := testimage.CheckSwapped(orig, deploytest.FetchPNG(t, ctx, hc, "http://"+addrs[0]+"/getImage?id="+pub)); err != nil {
		t.Error(err)
	}
	page, err := deploytest.GetText(ctx, hc, "http://"+addrs[0]+"/")
	if err != nil || !strings.Contains(page, `name="uploadfile"`) {
		t.Errorf("upload page: %v %q", err, deploytest.Tail(page, 200))
	}
	for _, key := range []string{wire.DatabaseKey, wire.StorageKey, wire.MasterKey} {
		if !regexp.MustCompile(`msg=registered .*key=` + regexp.QuoteMeta(key) + ` `).MatchString(log.String()) {
			t.Errorf("serve log lacks the registration of %s:\n%s", key, deploytest.Tail(log.String(), 2000))
		}
	}
}
