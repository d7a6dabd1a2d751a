package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
)

// findChromium returns the path of a Chromium binary, or "" when there is none. Without one the browser
// test is skipped, except on CI (CI=true), where .ci/run installs it and the test must run.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium on PATH: CI must run the browser test (.ci/run installs chromium)")
	}
	t.Skip("no chromium on PATH: skipping the browser test")
	return ""
}

// artifactDir is where the browser test leaves its screenshots: $IMGMILL_ARTIFACTS, or a temporary
// directory.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("IMGMILL_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pageTask is one task card of the upload page, as the browser shows it.
type pageTask struct {
	Name    string `json:"name"`
	State   string `json:"state"`
	Message string `json:"message"`
	Result  string `json:"result"`
	Source  string `json:"source"`
}

const readTasksJS = `Array.from(document.querySelectorAll('#tasks > li')).map(li => ({
	name: li.querySelector('.task-name').textContent,
	state: li.dataset.state || '',
	message: li.querySelector('.message').textContent,
	result: (li.querySelector('a.download') || {}).href || '',
	source: (li.querySelector('.compare figure:first-child img') || {}).src || '',
}))`

// imagesLoadedJS waits for every image of the page and answers whether they all decoded.
const imagesLoadedJS = `Promise.all(Array.from(document.images).map(i => i.complete ? 0 :
	new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))
	.then(() => Array.from(document.images).every(i => i.naturalWidth > 0))`

// TestBrowserUploadPage drives the upload page in headless Chromium against `imgmill serve`: it uploads
// two generated images through the file input, waits for the page to show them finished, checks the
// result the page links to, reopens a task from the page's history after a reload, and saves
// screenshots (desktop and phone width) as artifacts.
func TestBrowserUploadPage(t *testing.T) {
	chromium := findChromium(t)
	artifacts := artifactDir(t)

	addrs, err := allinone.FreeAddrs(5)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	serveCtx, stopServe := context.WithCancel(ctx)
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() {
		done <- run(serveCtx, []string{"imgmill", "serve", "--data", t.TempDir(), "--addr", addrs[0], "--kv-addr", addrs[1],
			"--database-addr", addrs[2], "--storage-addr", addrs[3], "--master-addr", addrs[4], "--concurrency", "2"},
			func(string) string { return "" }, io.Discard, &stderr)
	}()
	defer func() {
		stopServe()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	}()
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	if err := allinone.WaitReady(ctx, addrs[1]); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, ctx, hc, addrs[0])
	base := "http://" + addrs[0]

	// Two images, written where the browser can read them.
	dir := t.TempDir()
	origs := map[string]*image.NRGBA{}
	var files []string
	for i, size := range []int{256, 192} {
		name := fmt.Sprintf("pattern-%d.png", i+1)
		orig := imageop.TestPattern(size, int64(7+i))
		data, err := imageop.EncodePNG(orig)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		origs[name] = orig
		files = append(files, path)
	}

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 900),
	)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()

	// Everything the page writes to the console, its uncaught exceptions and the browser's log (where
	// a Content-Security-Policy violation shows) is collected, and an error among them fails the test.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	var (
		consoleMu sync.Mutex
		console   []string
	)
	messages := chromedp.Console(bctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				consoleMu.Lock()
				console = append(console, fmt.Sprintf("%s:%d %s", m.URL, m.Line+1, m.Text))
				consoleMu.Unlock()
			}
		}
	}()

	if err := chromedp.Do(bctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#drop")),
		chromedp.SetUploadFiles(chromedp.CSS("#files"), files),
	); err != nil {
		t.Fatalf("open the page and pick the files: %v", err)
	}
	tasks := waitTasks(t, bctx, len(files))
	for _, task := range tasks {
		if task.State != "finished" {
			t.Fatalf("task %s: %s %q, want finished", task.Name, task.State, task.Message)
		}
		orig, ok := origs[task.Name]
		if !ok {
			t.Fatalf("page shows a task for %q, which was not uploaded", task.Name)
		}
		delete(origs, task.Name)
		if !strings.HasPrefix(task.Result, base+"/api/tasks/") || !strings.HasPrefix(task.Source, base+"/api/tasks/") {
			t.Fatalf("task %s links to result %q, source %q", task.Name, task.Result, task.Source)
		}
		if err := imageop.CheckSwapped(orig, fetchPNG(t, ctx, hc, task.Result)); err != nil {
			t.Errorf("%s: result the page links to: %v", task.Name, err)
		}
	}
	if ok, err := chromedp.Run(bctx, chromedp.Evaluate[bool](imagesLoadedJS, chromedp.EvalAwaitPromise)); err != nil || !ok {
		t.Errorf("page shows images that do not load (%v)", err)
	}
	screenshot(t, bctx, filepath.Join(artifacts, "screenshot.png"))

	// After a reload the tasks are listed from localStorage, and one reopens, finished, with its images.
	if err := chromedp.Do(bctx,
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS("#history li button")),
		chromedp.Click(chromedp.CSS("#history li button")),
	); err != nil {
		t.Fatalf("reopen a task from the history: %v", err)
	}
	if reopened := waitTasks(t, bctx, 1); reopened[0].State != "finished" || reopened[0].Result == "" {
		t.Errorf("reopened task: %+v, want finished with a result", reopened[0])
	}

	// At phone width the page has no horizontal scrolling.
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	if wide, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`)); err != nil || wide {
		t.Errorf("page scrolls sideways at phone width (%v)", err)
	}
	screenshot(t, bctx, filepath.Join(artifacts, "screenshot-phone.png"))

	consoleMu.Lock()
	defer consoleMu.Unlock()
	for _, m := range console {
		t.Errorf("browser console: %s", m)
	}
}

// waitTasks waits until the page shows n tasks, all finished or failed (or refused), and returns them.
func waitTasks(t *testing.T, ctx context.Context, n int) []pageTask {
	t.Helper()
	var last []byte
	for {
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](readTasksJS))
		if err != nil {
			t.Fatalf("read the page's tasks: %v (last seen %s)", err, last)
		}
		last = raw
		var tasks []pageTask
		if err := json.Unmarshal(raw, &tasks); err != nil {
			t.Fatalf("decode the page's tasks %s: %v", raw, err)
		}
		settled := len(tasks) == n
		for _, task := range tasks {
			switch task.State {
			case "finished", "failed", "refused", "error":
			default:
				settled = false
			}
		}
		if settled {
			return tasks
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %d settled tasks on the page; last seen %s", n, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// screenshot saves a full-page PNG screenshot at path.
func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Error(err)
		return
	}
	t.Logf("screenshot: %s", path)
}
