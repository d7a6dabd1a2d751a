package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
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
		data, err := imageop.EncodePNG(orig)
		if err != nil {
			t.Fatal(err)
		}
		u := upload{orig: orig}
		if i%2 == 0 {
			u.id, err = m.New(ctx, bytes.NewReader(data), int64(len(data)))
		} else {
			u.pub, err = submitViaFrontend(ctx, d.hc, d.feAddr, data)
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
			waitFor(t, ctx, fmt.Sprintf("task %s ready at the frontend", u.pub), func() bool {
				ready, _ := frontendReady(ctx, d.hc, d.feAddr, u.pub)
				return ready
			})
			result := fetchPNG(t, ctx, d.hc, "http://"+d.feAddr+"/getImage?id="+u.pub)
			if err := imageop.CheckSwapped(u.orig, result); err != nil {
				t.Errorf("task %s, result from the frontend: %v", u.pub, err)
			}
			if st, err := frontendStatus(ctx, d.hc, d.feAddr, u.pub); err != nil || st.ID != u.pub || st.State != "finished" {
				t.Errorf("frontend /status of %s: %+v, %v; want finished under the public id", u.pub, st, err)
			}
			continue
		}
		if seen[u.id] {
			t.Fatalf("id %d answered twice", u.id)
		}
		seen[u.id] = true
		waitFor(t, ctx, fmt.Sprintf("task %d ready at the master", u.id), func() bool {
			ready, _ := m.IsReady(ctx, u.id)
			return ready
		})
		if err := imageop.CheckSwapped(u.orig, fetchFromMaster(t, ctx, m, u.id)); err != nil {
			t.Errorf("task %d from master /get: %v", u.id, err)
		}
		// The frontend does not know internal ids: counting gets nothing.
		for _, path := range []string{"/isReady", "/getImage", "/status"} {
			r, err := servicetest.Send(ctx, d.hc, http.MethodGet, "http://"+d.feAddr+path+"?id="+strconv.FormatInt(u.id, 10), nil)
			if err != nil || r.Status != http.StatusNotFound || r.Body != "Error: no such task" {
				t.Errorf("frontend %s?id=%d: %d %q (%v), want 404 \"Error: no such task\"", path, u.id, r.Status, r.Body, err)
			}
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
		orig := testimage.Pattern(24, int64(100+i))
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

// submitViaFrontend uploads data through the frontend's /submitTask and returns the public id answered,
// an opaque string.
func submitViaFrontend(ctx context.Context, hc *http.Client, addr string, data []byte) (string, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("uploadfile", "image.png")
	if err != nil {
		return "", err
	}
	fw.Write(data)
	mw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/submitTask", &body)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	reply, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("submitTask: %d %s", resp.StatusCode, reply)
	}
	if !publicid.WellFormed(string(reply)) {
		return "", fmt.Errorf("submitTask answered %q, not a public id", reply)
	}
	return string(reply), nil
}

// frontendReady asks the frontend whether the task with public id pub is ready.
func frontendReady(ctx context.Context, hc *http.Client, addr, pub string) (bool, error) {
	r, err := servicetest.Send(ctx, hc, http.MethodGet, "http://"+addr+"/isReady?id="+url.QueryEscape(pub), nil)
	if err != nil {
		return false, err
	}
	if r.Status != http.StatusOK {
		return false, fmt.Errorf("frontend /isReady: %d %s", r.Status, r.Body)
	}
	return r.Body == "Your image is ready.", nil
}

// frontendStatus returns the frontend's /status of the task with public id pub.
func frontendStatus(ctx context.Context, hc *http.Client, addr, pub string) (frontend.Status, error) {
	r, err := servicetest.Send(ctx, hc, http.MethodGet, "http://"+addr+"/status?id="+url.QueryEscape(pub), nil)
	if err != nil {
		return frontend.Status{}, err
	}
	if r.Status != http.StatusOK {
		return frontend.Status{}, fmt.Errorf("frontend /status: %d %s", r.Status, r.Body)
	}
	var st frontend.Status
	if err := json.Unmarshal([]byte(r.Body), &st); err != nil {
		return frontend.Status{}, fmt.Errorf("frontend /status %q: %w", r.Body, err)
	}
	return st, nil
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
	img, err := getPNG(ctx, hc, url)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// getPNG downloads and decodes the PNG image at url (safe from any goroutine).
func getPNG(ctx context.Context, hc *http.Client, url string) (image.Image, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "image/png" {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: %d %s %q", url, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	img, err := png.Decode(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", url, err)
	}
	return img, nil
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
	orig := testimage.Pattern(40, 7)
	data, _ := imageop.EncodePNG(orig)
	pub, err := submitViaFrontend(readyCtx, hc, addrs[0], data)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, readyCtx, "ready", func() bool {
		ready, _ := frontendReady(readyCtx, hc, addrs[0], pub)
		return ready
	})
	if err := imageop.CheckSwapped(orig, fetchPNG(t, readyCtx, hc, "http://"+addrs[0]+"/getImage?id="+pub)); err != nil {
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
