package e2e

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/cli"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// inProcess is the split deployment with every service run in this process by cli.Run, each with its own
// flags and its own log.
type inProcess struct {
	logs map[string]*deploytest.SyncBuffer
	done map[string]chan error
}

func (p *inProcess) start(ctx context.Context, name string, args ...string) {
	log := &deploytest.SyncBuffer{}
	done := make(chan error, 1)
	p.logs[name], p.done[name] = log, done
	go func() {
		done <- cli.Run(ctx, append([]string{"imgmill", name}, args...), func(string) string { return "" }, io.Discard, log)
	}()
}

// One upload through the frontend is logged under one request id by the frontend, the master, the
// database and the storage; every service serves /metrics behind the token, and /debug/pprof/ with
// --pprof; the counters move by what was done.
func TestMetricsAndRequestIDAcrossServices(t *testing.T) {
	const token = "metrics-test-t0ken-0123456789abcdefg"
	addrs := enginetest.FreeAddrs(t, 3)
	kvAddr, feAddr, workerAddr := addrs[0], addrs[1], addrs[2]
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{logs: map[string]*deploytest.SyncBuffer{}, done: map[string]chan error{}}
	t.Cleanup(func() {
		cancel()
		for name, done := range p.done {
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s returned %v", name, err)
				}
			case <-time.After(40 * time.Second):
				t.Errorf("%s did not stop", name)
			}
		}
		if t.Failed() {
			for name, log := range p.logs {
				t.Logf("--- %s log ---\n%s", name, deploytest.Tail(log.String(), 4000))
			}
		}
	})
	common := []string{"--token", token, "--pprof"}
	p.start(ctx, "kv", append([]string{"--addr", kvAddr, "--data", filepath.Join(dir, "kv")}, common...)...)
	for _, name := range []string{"database", "storage"} {
		p.start(ctx, name, append([]string{"--addr", "127.0.0.1:0", "--kv", kvAddr, "--data", filepath.Join(dir, name)}, common...)...)
	}
	p.start(ctx, "master", append([]string{"--addr", "127.0.0.1:0", "--kv", kvAddr}, common...)...)
	p.start(ctx, "worker", append([]string{"--kv", kvAddr, "--concurrency", "1", "--prefetch", "0", "--metrics-addr", workerAddr}, common...)...)
	p.start(ctx, "frontend", append([]string{"--addr", feAddr, "--kv", kvAddr, "--upload-rate", "0",
		"--data", filepath.Join(dir, "frontend")}, common...)...)

	readyCtx, readyCancel := context.WithTimeout(ctx, time.Minute)
	defer readyCancel()
	if err := allinone.WaitReady(readyCtx, kvAddr, httpapi.WithToken(token)); err != nil {
		t.Fatal(err)
	}
	authed := httpapi.NewClient(httpapi.WithToken(token))
	t.Cleanup(authed.CloseIdleConnections)
	plain := servicetest.NewHTTPClient(t)
	deploytest.WaitHealthy(t, readyCtx, plain, feAddr)
	deploytest.WaitHealthy(t, readyCtx, plain, workerAddr)
	kv := client.NewKV(authed, kvAddr)
	urls := map[string]string{"kv": "http://" + kvAddr, "frontend": "http://" + feAddr, "worker": "http://" + workerAddr}
	for name, key := range map[string]string{"database": wire.DatabaseKey, "storage": wire.StorageKey, "master": wire.MasterKey} {
		addr, err := kv.Get(readyCtx, key)
		if err != nil {
			t.Fatal(err)
		}
		urls[name] = "http://" + addr
	}

	// One upload, under a request id of ours.
	const requestID = "trace-one-upload-7"
	data, err := testimage.EncodePNG(testimage.Pattern(24, 3))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := deploytest.SubmitViaFrontend(httpapi.WithRequestID(readyCtx, requestID), plain, feAddr, data)
	if err != nil {
		t.Fatal(err)
	}
	deploytest.WaitFor(t, readyCtx, "the task finished", func() bool {
		ready, _ := deploytest.FrontendReady(readyCtx, plain, feAddr, pub)
		return ready
	})
	for _, name := range []string{"frontend", "master", "database", "storage"} {
		lines := linesWith(p.logs[name].String(), "request_id="+requestID)
		if len(lines) == 0 {
			t.Errorf("%s logged nothing under request_id=%s", name, requestID)
			continue
		}
		for _, l := range lines {
			if !strings.Contains(l, "service="+name) {
				t.Errorf("%s log line without service=%s: %s", name, name, l)
			}
		}
	}
	// The database and the storage each saw the upload's own calls under it.
	for name, path := range map[string]string{"database": "path=/newTask", "storage": "path=/sendImage"} {
		if !strings.Contains(strings.Join(linesWith(p.logs[name].String(), "request_id="+requestID), "\n"), path) {
			t.Errorf("%s: no %s under the upload's request id", name, path)
		}
	}

	// /metrics and /debug/pprof/ need the token everywhere, the public frontend included.
	for name, u := range urls {
		for _, path := range []string{"/metrics", "/debug/pprof/"} {
			if r := servicetest.Call(t, plain, http.MethodGet, u+path, nil); r.Status != http.StatusUnauthorized {
				t.Errorf("%s GET %s without the token = %d, want 401", name, path, r.Status)
			}
			if r := servicetest.Call(t, authed, http.MethodGet, u+path, nil); r.Status != http.StatusOK {
				t.Errorf("%s GET %s with the token = %d %.200q, want 200", name, path, r.Status, r.Body)
			}
		}
	}
	scrape := func(name string) metricstest.Families { return metricstest.Scrape(t, authed, urls[name]+"/metrics") }
	type want struct {
		name   string
		labels []string
		value  float64
	}
	expect := func(service string, f metricstest.Families, wants ...want) {
		t.Helper()
		for _, w := range wants {
			labels := append([]string{"service", service}, w.labels...)
			if got := f.Value(w.name, labels...); got != w.value {
				t.Errorf("%s %s%v = %v, want %v", service, w.name, labels, got, w.value)
			}
		}
	}
	const requests = "imgmill_http_requests_total"

	// Counters move by exactly what the test does: three /isReady at the master, three misses at kv.
	masterBefore, kvBefore := scrape("master"), scrape("kv")
	for range 3 {
		if r := servicetest.Call(t, authed, http.MethodGet, urls["master"]+"/isReady?id=0", nil); r.Status != 200 || r.Body != "1" {
			t.Errorf("master /isReady?id=0 = %d %q", r.Status, r.Body)
		}
		servicetest.Call(t, authed, http.MethodGet, urls["kv"]+"/get?key=no-such-key", nil)
	}
	isReady := []string{"route", "GET /isReady", "method", "GET", "code", "200"}
	if got := scrape("master").Value(requests, isReady...) - masterBefore.Value(requests, isReady...); got != 3 {
		t.Errorf("master %s%v grew by %v, want 3", requests, isReady, got)
	}
	miss := []string{"route", "GET /get", "method", "GET", "code", "404"}
	if got := scrape("kv").Value(requests, miss...) - kvBefore.Value(requests, miss...); got != 3 {
		t.Errorf("kv %s%v grew by %v, want 3", requests, miss, got)
	}

	expect("frontend", scrape("frontend"),
		want{requests, []string{"route", "POST /submitTask", "method", "POST", "code", "200"}, 1})
	expect("master", scrape("master"),
		want{requests, []string{"route", "POST /new", "method", "POST", "code", "200"}, 1})
	expect("database", scrape("database"),
		want{"imgmill_tasks", []string{"state", "queued"}, 0},
		want{"imgmill_tasks", []string{"state", "processing"}, 0},
		want{"imgmill_tasks", []string{"state", "finished"}, 1},
		want{"imgmill_tasks", []string{"state", "failed"}, 0},
		want{"imgmill_task_latency_seconds", nil, 1},
		want{requests, []string{"route", "POST /newTask", "code", "200"}, 1},
		want{requests, []string{"route", "POST /finishTask", "code", "200"}, 1})
	expect("storage", scrape("storage"),
		want{"imgmill_storage_bytes_written_total", []string{"state", "working"}, float64(len(data))},
		want{"imgmill_storage_objects_written_total", []string{"state", "working"}, 1},
		want{"imgmill_storage_objects_written_total", []string{"state", "finished"}, 1},
		want{"imgmill_storage_bytes_served_total", []string{"state", "working"}, float64(len(data))})
	// The worker's one loop (one slot, no prefetch) is idle once the master acknowledged the finish, a moment after the task reads as
	// finished.
	deploytest.WaitFor(t, readyCtx, "the worker idle", func() bool {
		f := scrape("worker")
		return f.Value("imgmill_worker_loops", "state", "busy") == 0 && f.Value("imgmill_worker_loops", "state", "idle") == 1
	})
	expect("worker", scrape("worker"),
		want{"imgmill_worker_tasks_total", []string{"result", "processed"}, 1},
		want{"imgmill_worker_tasks_total", []string{"result", "failed"}, 0},
		want{"imgmill_worker_processing_seconds", []string{"result", "processed"}, 1})
	for name := range urls {
		if f := scrape(name); !f.Has("go_goroutines") || !f.Has("process_cpu_seconds_total") {
			t.Errorf("%s: no Go or process metrics", name)
		}
	}
}

// linesWith returns the lines of log that contain s.
func linesWith(log, s string) []string {
	var out []string
	for l := range strings.Lines(log) {
		if strings.Contains(l, s) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}
