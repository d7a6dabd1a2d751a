package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/servicetest"
)

func TestEndToEndSplitDeployment(t *testing.T) {
	d := newDeployment(t)
	d.startBackends()
	d.startWorker("worker")
	d.startFrontend()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitHealthy(t, ctx, d.hc, d.feAddr)

	m := d.master()
	type upload struct {
		id   int64
		orig *image.NRGBA
		via  string
	}
	var uploads []upload
	for i := range 12 {
		orig := imageop.TestPattern(16+i*9, int64(i))
		data, err := imageop.EncodePNG(orig)
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		via := "master"
		if i%2 == 0 {
			id, err = m.New(ctx, bytes.NewReader(data), int64(len(data)))
		} else {
			via = "frontend"
			id, err = submitViaFrontend(ctx, d.hc, d.feAddr, data)
		}
		if err != nil {
			t.Fatalf("upload %d via %s: %v", i, via, err)
		}
		uploads = append(uploads, upload{id, orig, via})
	}
	seen := map[int64]bool{}
	for _, u := range uploads {
		if seen[u.id] {
			t.Fatalf("id %d answered twice", u.id)
		}
		seen[u.id] = true
		// Poll through the same entry point the image came in by, as a user would.
		if u.via == "frontend" {
			waitFor(t, ctx, fmt.Sprintf("task %d ready at the frontend", u.id), func() bool {
				body, _ := getText(ctx, d.hc, "http://"+d.feAddr+"/isReady?id="+strconv.FormatInt(u.id, 10))
				return body == "Your image is ready."
			})
		} else {
			waitFor(t, ctx, fmt.Sprintf("task %d ready at the master", u.id), func() bool {
				ready, _ := m.IsReady(ctx, u.id)
				return ready
			})
		}
		result := fetchPNG(t, ctx, d.hc, "http://"+d.feAddr+"/getImage?id="+strconv.FormatInt(u.id, 10))
		if err := imageop.CheckSwapped(u.orig, result); err != nil {
			t.Errorf("task %d via %s, result from the frontend: %v", u.id, u.via, err)
		}
		if err := imageop.CheckSwapped(u.orig, fetchFromMaster(t, ctx, m, u.id)); err != nil {
			t.Errorf("task %d from master /get: %v", u.id, err)
		}
	}

	// Refused input answers 4xx "Error:" and creates nothing.
	resp, err := d.hc.Post("http://"+d.feAddr+"/submitTask", "text/plain", strings.NewReader("not multipart"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(string(body), "Error:") {
		t.Errorf("bad submit: %d %q", resp.StatusCode, body)
	}

	// Every service shuts down cleanly on SIGTERM.
	d.stop("worker") // first, so its long poll at the master ends before the master stops
	for _, s := range []string{"frontend", "master", "storage", "database", "kv"} {
		d.stop(s)
	}
}

// TestEndToEndKill9LosesNothing: every id answered before the services are killed with SIGKILL is
// processed after they restart (on new ports, found again through the kv store).
func TestEndToEndKill9LosesNothing(t *testing.T) {
	d := newDeployment(t)
	d.startBackends()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	m := d.master()
	origs := map[int64]*image.NRGBA{}
	for i := range 8 {
		orig := imageop.TestPattern(24, int64(100+i))
		data, _ := imageop.EncodePNG(orig)
		id, err := m.New(ctx, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		origs[id] = orig
	}
	// No worker ran yet: every task waits. Crash everything, then bring it back.
	for _, s := range []string{"master", "storage", "database", "kv"} {
		d.kill(s)
	}
	d.startBackends()
	d.startWorker("worker")
	m = d.master()
	for id, orig := range origs {
		waitFor(t, ctx, fmt.Sprintf("task %d ready after restart", id), func() bool {
			ready, _ := m.IsReady(ctx, id)
			return ready
		})
		if err := imageop.CheckSwapped(orig, fetchFromMaster(t, ctx, m, id)); err != nil {
			t.Errorf("task %d: %v", id, err)
		}
	}
}

func submitViaFrontend(ctx context.Context, hc *http.Client, addr string, data []byte) (int64, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("uploadfile", "image.png")
	if err != nil {
		return 0, err
	}
	fw.Write(data)
	mw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/submitTask", &body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("submitTask: %d %s", resp.StatusCode, reply)
	}
	return strconv.ParseInt(string(reply), 10, 64)
}

func getText(ctx context.Context, hc *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func fetchPNG(t *testing.T, ctx context.Context, hc *http.Client, url string) image.Image {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/png" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s %q", url, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	img, err := png.Decode(resp.Body)
	if err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
	return img
}

func fetchFromMaster(t *testing.T, ctx context.Context, m *client.Master, id int64) image.Image {
	t.Helper()
	img, err := m.Get(ctx, id)
	if err != nil {
		t.Fatalf("master /get %d: %v", id, err)
	}
	defer img.Close()
	result, err := png.Decode(img)
	if err != nil {
		t.Fatalf("decode master /get %d: %v", id, err)
	}
	return result
}

func waitHealthy(t *testing.T, ctx context.Context, hc *http.Client, addr string) {
	t.Helper()
	waitFor(t, ctx, addr+" healthy", func() bool { return client.CheckHealth(ctx, hc, addr) == nil })
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	if !servicetest.Poll(ctx, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestServeAllInOne runs `imgmill serve` in-process and sends one image through the frontend.
func TestServeAllInOne(t *testing.T) {
	addrs, err := allinone.FreeAddrs(5)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() {
		done <- run(ctx, []string{"imgmill", "serve", "--data", t.TempDir(), "--addr", addrs[0], "--kv-addr", addrs[1],
			"--database-addr", addrs[2], "--storage-addr", addrs[3], "--master-addr", addrs[4], "--concurrency", "1"},
			func(string) string { return "" }, io.Discard, &stderr)
	}()
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	readyCtx, readyCancel := context.WithTimeout(ctx, time.Minute)
	defer readyCancel()
	if err := allinone.WaitReady(readyCtx, addrs[1]); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, readyCtx, hc, addrs[0])
	orig := imageop.TestPattern(40, 7)
	data, _ := imageop.EncodePNG(orig)
	id, err := submitViaFrontend(readyCtx, hc, addrs[0], data)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, readyCtx, "ready", func() bool {
		body, _ := getText(readyCtx, hc, "http://"+addrs[0]+"/isReady?id="+strconv.FormatInt(id, 10))
		return body == "Your image is ready."
	})
	if err := imageop.CheckSwapped(orig, fetchPNG(t, readyCtx, hc, "http://"+addrs[0]+"/getImage?id="+strconv.FormatInt(id, 10))); err != nil {
		t.Error(err)
	}
	page, err := getText(readyCtx, hc, "http://"+addrs[0]+"/")
	if err != nil || !strings.Contains(page, `name="uploadfile"`) {
		t.Errorf("upload page: %v %q", err, tail(page, 200))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve returned %v after its context ended", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	if !strings.Contains(stderr.String(), "registered") {
		t.Errorf("serve log lacks registrations:\n%s", tail(stderr.String(), 2000))
	}
}
