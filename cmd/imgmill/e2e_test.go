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
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// proc is one imgmill service running as its own process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

// syncBuffer lets the process write its log while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

// deployment is the split deployment: every service a separate process on loopback.
type deployment struct {
	t        *testing.T
	dir      string
	kvAddr   string
	feAddr   string
	mu       sync.Mutex
	procs    map[string]*proc
	hc       *http.Client
	logs     map[string]*syncBuffer
	children sync.WaitGroup
}

func newDeployment(t *testing.T) *deployment {
	t.Helper()
	addrs, err := allinone.FreeAddrs(2)
	if err != nil {
		t.Fatal(err)
	}
	d := &deployment{t: t, dir: t.TempDir(), kvAddr: addrs[0], feAddr: addrs[1],
		procs: map[string]*proc{}, hc: httpapi.NewClient(), logs: map[string]*syncBuffer{}}
	t.Cleanup(func() {
		for name := range d.procs {
			d.kill(name)
		}
		d.children.Wait()
		d.hc.CloseIdleConnections()
		if t.Failed() {
			for name, log := range d.logs {
				t.Logf("--- %s log ---\n%s", name, tail(log.String(), 4000))
			}
		}
	})
	return d
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// start runs `imgmill <service> args...` as a child process.
func (d *deployment) start(service string, args ...string) {
	d.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		d.t.Fatal(err)
	}
	cmd := exec.Command(exe, append([]string{service}, args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1", "IMGMILL_LOG_LEVEL=warn")
	log := d.logs[service]
	if log == nil {
		log = &syncBuffer{}
		d.logs[service] = log
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("start %s: %v", service, err)
	}
	p := &proc{name: service, cmd: cmd, done: make(chan struct{})}
	d.children.Add(1)
	go func() {
		defer d.children.Done()
		cmd.Wait()
		close(p.done)
	}()
	d.mu.Lock()
	d.procs[service] = p
	d.mu.Unlock()
}

// kill ends a service with SIGKILL, as a crash would, and waits for it to be gone.
func (d *deployment) kill(service string) {
	d.mu.Lock()
	p := d.procs[service]
	delete(d.procs, service)
	d.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop ends a service with SIGTERM and checks it shuts down cleanly.
func (d *deployment) stop(service string) {
	d.t.Helper()
	d.mu.Lock()
	p := d.procs[service]
	delete(d.procs, service)
	d.mu.Unlock()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		d.t.Fatalf("%s did not stop within 30s of SIGTERM", service)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Errorf("%s exited with %d after SIGTERM", service, code)
	}
}

func (d *deployment) startBackends() {
	d.start("kv", "--addr", d.kvAddr, "--data", filepath.Join(d.dir, "kv"))
	// Internal services take any free port and are found through the kv store.
	d.start("database", "--addr", "127.0.0.1:0", "--kv", d.kvAddr, "--data", filepath.Join(d.dir, "db"))
	d.start("storage", "--addr", "127.0.0.1:0", "--kv", d.kvAddr, "--data", filepath.Join(d.dir, "storage"))
	d.start("master", "--addr", "127.0.0.1:0", "--kv", d.kvAddr)
	d.waitReady()
}

func (d *deployment) waitReady() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := allinone.WaitReady(ctx, d.kvAddr); err != nil {
		d.t.Fatal(err)
	}
}

// master returns a client of the master as registered in the kv store.
func (d *deployment) master() *client.Master {
	return client.NewMaster(d.hc, client.NewResolver(client.NewKV(d.hc, d.kvAddr), client.MasterKey, time.Second))
}

func TestEndToEndSplitDeployment(t *testing.T) {
	d := newDeployment(t)
	d.startBackends()
	d.start("worker", "--kv", d.kvAddr, "--concurrency", "2")
	d.start("frontend", "--addr", d.feAddr, "--kv", d.kvAddr)
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
	d.start("worker", "--kv", d.kvAddr, "--concurrency", "2")
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
