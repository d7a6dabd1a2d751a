package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/testimage"
)

// findChromium returns the path of a Chromium binary, or "" when there is none. Without one the browser
// test is skipped, except on CI (CI=true), where .ci/run installs it and the test must run. With -short
// it is skipped.
func findChromium(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("the browser tests are not run with -short")
	}
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
	Name     string `json:"name"`
	State    string `json:"state"`
	Op       string `json:"op"`
	Message  string `json:"message"`
	Result   string `json:"result"`
	Download string `json:"download"` // the download link's download attribute: none, so that the server names the file
	Source   string `json:"source"`   // the original's preview
}

const readTasksJS = `Array.from(document.querySelectorAll('#tasks > li')).map(li => ({
	name: li.querySelector('.task-name').textContent,
	state: li.dataset.state || '',
	op: (li.querySelector('.task-meta code.op') || {}).textContent || '',
	message: li.querySelector('.message').textContent,
	result: (li.querySelector('a.download') || {}).href || '',
	download: (li.querySelector('a.download') || { getAttribute: () => '' }).getAttribute('download') || '',
	source: (li.querySelector('.thumbs figure.original img') || {}).src || '',
}))`

// imagesLoadedJS waits for every image of the page and answers whether they all decoded.
const imagesLoadedJS = `(() => { const imgs = Array.from(document.images).filter(i => i.getAttribute('src'));
	return Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))
		.then(() => imgs.every(i => i.naturalWidth > 0)); })()`

// The chain the test builds in the picker: a crop, then a quarter turn clockwise.
const (
	chainCropW, chainCropH, chainCropX, chainCropY = 120, 60, 10, 20
)

var browserChain = fmt.Sprintf("crop:%dx%d+%d+%d,rotate:90", chainCropW, chainCropH, chainCropX, chainCropY)

// TestBrowserUploadPage drives the upload page in headless Chromium against `imgmill serve`: it uploads
// an image with the default operation and checks the swap; builds a chain in the operation picker (adds
// three steps with the generated parameter inputs, moves one, removes one) and uploads a PNG and a JPEG
// with it, checking the results' format, download name, size and pixels; reopens a task from the page's
// history after a reload; types a spec the server refuses and checks the page shows why; and saves
// screenshots (desktop and phone width) as artifacts. Any console error (a CSP violation included)
// fails the test.
func TestBrowserUploadPage(t *testing.T) {
	chromium := findChromium(t)
	artifacts := artifactDir(t)
	addrs := deploytest.ServeApp(t, nil, "--concurrency", "2")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	base := "http://" + addrs[0]

	// The images, written where the browser can read them: one for the default operation, a PNG and a
	// JPEG for the chain (opaque, so that the pixels compare without alpha's rounding).
	dir := t.TempDir()
	swapOrig := testimage.Pattern(96, 7)
	swapFile := testimage.WriteFile(t, dir, "pattern-1.png", swapOrig)
	pngOrig := testimage.Opaque(testimage.Pattern(256, 8))
	pngFile := testimage.WriteFile(t, dir, "pattern-2.png", pngOrig)
	jpegFile := testimage.WriteFile(t, dir, "photo-3.jpg", testimage.Opaque(testimage.Pattern(192, 9)))
	jpegOrig := testimage.ReadFile(t, jpegFile) // what the server decodes

	// The upload with a spec the server refuses is answered 400, which the browser logs.
	bctx := startBrowser(t, ctx, chromium, func(m chromedp.ConsoleMessage) bool {
		return m.Source == "network" && strings.Contains(m.URL, "/api/tasks?op=") && strings.Contains(m.Text, "status of 400")
	})

	// 1. The default operation: an empty chain is swap.
	if err := chromedp.Do(bctx,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#drop")),
		chromedp.WaitVisible(chromedp.CSS("#chain-empty")),
		chromedp.SetUploadFiles(chromedp.CSS("#files"), []string{swapFile}),
	); err != nil {
		t.Fatalf("open the page and pick a file: %v", err)
	}
	tasks := waitTasks(t, bctx, 1)
	if task := tasks[0]; task.State != "finished" || task.Op != "swap" || task.Download != "" {
		t.Fatalf("default task: %+v, want finished, op swap, a download named by the server", task)
	} else if !strings.HasPrefix(task.Result, base+"/api/tasks/") || !strings.HasPrefix(task.Source, "blob:") {
		t.Fatalf("task %s links to result %q, source %q", task.Name, task.Result, task.Source)
	} else if img, ct := fetchImage(t, ctx, hc, task.Result); ct != "image/png" {
		t.Errorf("default result is %s, want image/png", ct)
	} else if err := testimage.CheckSwapped(swapOrig, img); err != nil {
		t.Errorf("%s: result the page links to: %v", task.Name, err)
	}

	// 2. Build crop, rotate, grayscale in the picker; move grayscale up; remove it.
	buildChain(t, bctx)
	if err := chromedp.Do(bctx, chromedp.SetUploadFiles(chromedp.CSS("#files"), []string{pngFile, jpegFile})); err != nil {
		t.Fatal(err)
	}
	tasks = waitTasks(t, bctx, 3)
	checked := 0
	for _, task := range tasks {
		var orig image.Image
		var wantType, wantExt string
		switch task.Name {
		case "pattern-1.png":
			continue
		case "pattern-2.png":
			orig, wantType, wantExt = pngOrig, "image/png", ".png"
		case "photo-3.jpg":
			orig, wantType, wantExt = jpegOrig, "image/jpeg", ".jpg" // a JPEG stays a JPEG
		default:
			t.Fatalf("page shows a task for %q, which was not uploaded", task.Name)
		}
		checked++
		if task.State != "finished" {
			t.Fatalf("task %s: %s %q, want finished", task.Name, task.State, task.Message)
		}
		if task.Op != browserChain {
			t.Errorf("task %s shows op %q, want %q", task.Name, task.Op, browserChain)
		}
		if name := downloadName(t, ctx, hc, task.Result); task.Download != "" || !strings.HasSuffix(name, wantExt) {
			t.Errorf("task %s downloads as %q (link's download attribute %q), want the server's name with the extension %s", task.Name, name, task.Download, wantExt)
		}
		img, ct := fetchImage(t, ctx, hc, task.Result)
		if ct != wantType {
			t.Errorf("task %s: result is %s, want %s", task.Name, ct, wantType)
		}
		want := cropRotate90(orig, image.Rect(chainCropX, chainCropY, chainCropX+chainCropW, chainCropY+chainCropH))
		if got := img.Bounds().Size(); got != want.Bounds().Size() {
			t.Errorf("task %s: result is %v, want %v (the crop turned a quarter)", task.Name, got, want.Bounds().Size())
			continue
		}
		tolerance := 0.0 // PNG: exact
		if wantType == "image/jpeg" {
			tolerance = 6 // mean difference per channel after a JPEG round trip
		}
		if diff := meanDiff(want, img); diff > tolerance {
			t.Errorf("task %s: result differs from the crop turned a quarter by %.2f per channel on average, want <= %.0f", task.Name, diff, tolerance)
		}
	}
	if checked != 2 {
		t.Fatalf("page shows %d chain tasks, want 2: %+v", checked, tasks)
	}
	// The page shows each result's size and format, from the image and its Content-Type.
	for name, format := range map[string]string{"pattern-2.png": "PNG", "photo-3.jpg": "JPEG"} {
		want := fmt.Sprintf("Result %d×%d · %s · ", chainCropH, chainCropW, format)
		waitPage(t, bctx, "the result caption of "+name+" to say "+want, fmt.Sprintf(`Array.from(document.querySelectorAll('#tasks > li')).some(li =>
			li.querySelector('.task-name').textContent === %q &&
			((li.querySelector('.thumbs figure.result figcaption') || {}).textContent || '').startsWith(%q))`, name, want))
	}
	if ok, err := chromedp.Run(bctx, chromedp.Evaluate[bool](imagesLoadedJS, chromedp.EvalAwaitPromise)); err != nil || !ok {
		t.Errorf("page shows images that do not load (%v)", err)
	}
	screenshot(t, bctx, filepath.Join(artifacts, "screenshot.png"))

	// 3. After a reload the tasks are listed from localStorage with their op, the chain is kept, and a
	// task reopens, finished, with its images.
	if err := chromedp.Do(bctx,
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS("#history li button")),
	); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if spec := specValue(t, bctx); spec != browserChain {
		t.Errorf("after a reload the spec is %q, want %q kept", spec, browserChain)
	}
	if hist, err := chromedp.Run(bctx, chromedp.TextContent(chromedp.CSS("#history"))); err != nil || !strings.Contains(hist, browserChain) {
		t.Errorf("history %q (%v) does not show the op %q", hist, err, browserChain)
	}
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS("#history li button"))); err != nil {
		t.Fatalf("reopen a task from the history: %v", err)
	}
	if reopened := waitTasks(t, bctx, 1); reopened[0].State != "finished" || reopened[0].Result == "" || reopened[0].Op == "" {
		t.Errorf("reopened task: %+v, want finished with a result and its op", reopened[0])
	}

	// 4. A spec the server refuses: the page says what the server said, by the spec field and on the card.
	clearField(t, bctx, "#spec")
	if err := chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.CSS("#spec"), "grayscale,rotate:45"),
		chromedp.SetUploadFiles(chromedp.CSS("#files"), []string{swapFile}),
		chromedp.WaitVisible(chromedp.CSS("#spec-error")),
	); err != nil {
		t.Fatalf("upload with a bad spec: %v", err)
	}
	refusedTasks := waitTasks(t, bctx, 2)
	if task := refusedTasks[0]; task.State != "refused" || !strings.Contains(task.Message, `"45"`) {
		t.Errorf("task with a bad spec: %+v, want refused with the server's reason", task)
	}
	if msg, err := chromedp.Run(bctx, chromedp.TextContent(chromedp.CSS("#spec-error"))); err != nil || !strings.Contains(msg, `rotate: angle "45"`) {
		t.Errorf("spec error %q (%v), want the server's message", msg, err)
	}
	if steps, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll('#chain > li').length`)); err != nil || steps != 2 {
		t.Errorf("the typed spec shows %d steps (%v), want 2", steps, err)
	}

	// At phone width the page has no horizontal scrolling, with the picker showing parameters.
	chooseOp(t, bctx, "crop")
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	if wide, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`)); err != nil || wide {
		t.Errorf("page scrolls sideways at phone width (%v)", err)
	}
	screenshot(t, bctx, filepath.Join(artifacts, "screenshot-phone.png"))
}

// startBrowser starts headless Chromium for the test and returns its context. Everything the page
// writes to the console, its uncaught exceptions and the browser's log (where a Content-Security-Policy
// violation shows) is collected, and an error among them fails the test when it ends, unless expected
// says it was expected.
func startBrowser(t *testing.T, ctx context.Context, chromium string, expected func(chromedp.ConsoleMessage) bool) context.Context {
	t.Helper()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium),
		// Chromium dies with the test binary; chromedp starts it from a goroutine locked to its thread.
		chromedp.ModifyCmdFunc(enginetest.TieToTest),
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
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)
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
			if (m.Type == chromedp.ConsoleError || m.IsException()) && !expected(m) {
				consoleMu.Lock()
				console = append(console, fmt.Sprintf("%s:%d %s", m.URL, m.Line+1, m.Text))
				consoleMu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		consoleMu.Lock()
		defer consoleMu.Unlock()
		for _, m := range console {
			t.Errorf("browser console: %s", m)
		}
	})
	return bctx
}

// TestBrowserRetriesWhenUnavailable: the page's upload meets a service that is unavailable (503 with
// Retry-After, as while storage or the database is away): the page says so, waits as asked and sends the
// upload again by itself, with the same Idempotency-Key, until it is accepted and processed.
func TestBrowserRetriesWhenUnavailable(t *testing.T) {
	chromium := findChromium(t)
	addrs := deploytest.ServeApp(t, nil, "--concurrency", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()

	// In front of the frontend: the first two uploads are refused as a service away would be.
	target, _ := url.Parse("http://" + addrs[0])
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	var keys []string
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/api/tasks" {
			mu.Lock()
			keys = append(keys, r.Header.Get("Idempotency-Key"))
			n := len(keys)
			mu.Unlock()
			if n <= 2 {
				io.Copy(io.Discard, r.Body)
				w.Header().Set("Retry-After", "1")
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, `{"error":"image storage is temporarily unavailable, retry later"}`)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()

	orig := testimage.Pattern(48, 21)
	file := testimage.WriteFile(t, t.TempDir(), "retried.png", orig)
	bctx := startBrowser(t, ctx, chromium, func(m chromedp.ConsoleMessage) bool {
		return m.Source == "network" && strings.Contains(m.URL, "/api/tasks") && strings.Contains(m.Text, "status of 503")
	})
	if err := chromedp.Do(bctx,
		chromedp.Navigate(front.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#drop")),
		chromedp.SetUploadFiles(chromedp.CSS("#files"), []string{file}),
	); err != nil {
		t.Fatalf("open the page and pick a file: %v", err)
	}
	waitPage(t, bctx, "the page to say it retries by itself", `Array.from(document.querySelectorAll('#tasks > li')).some(li =>
		li.textContent.includes('temporarily unavailable') && li.textContent.includes('Retrying by itself'))`)
	screenshot(t, bctx, filepath.Join(artifactDir(t), "screenshot-retrying.png"))
	waitPage(t, bctx, "the retried upload to finish", `Array.from(document.querySelectorAll('#tasks > li')).some(li =>
		li.dataset.state === 'finished')`)
	tasks := waitTasks(t, bctx, 1)
	img, _ := fetchImage(t, ctx, hc, strings.Replace(tasks[0].Result, front.URL, "http://"+addrs[0], 1))
	if err := testimage.CheckSwapped(orig, img); err != nil {
		t.Errorf("the retried upload's result: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(keys) != 3 || keys[0] == "" || keys[0] != keys[1] || keys[1] != keys[2] {
		t.Errorf("uploads with keys %q; want three tries of one upload, all with the same Idempotency-Key", keys)
	}
}

// buildChain builds browserChain in the page's picker, by keyboard where it can: crop with its
// geometry (Enter adds it), rotate 90 (its first allowed value), grayscale; then moves grayscale up
// and removes it, checking the spec text after each step.
func buildChain(t *testing.T, ctx context.Context) {
	t.Helper()
	crop := fmt.Sprintf("crop:%dx%d+%d+%d", chainCropW, chainCropH, chainCropX, chainCropY)
	chooseOp(t, ctx, "crop")
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`#op-params [data-part=w]`)),
		chromedp.SendKeys(chromedp.CSS(`#op-params [data-part=w]`), fmt.Sprint(chainCropW)),
		chromedp.SendKeys(chromedp.CSS(`#op-params [data-part=h]`), fmt.Sprint(chainCropH)),
		chromedp.SendKeys(chromedp.CSS(`#op-params [data-part=x]`), fmt.Sprint(chainCropX)),
		chromedp.SendKeys(chromedp.CSS(`#op-params [data-part=y]`), fmt.Sprint(chainCropY)+kb.Enter),
	); err != nil {
		t.Fatalf("add crop: %v", err)
	}
	expectSpec(t, ctx, crop)

	chooseOp(t, ctx, "rotate")
	if sel, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS(`#op-params select`))); err != nil || sel != "90" {
		t.Fatalf("rotate's degrees select holds %q (%v), want 90 first", sel, err)
	}
	if required, err := chromedp.Run(ctx, chromedp.TextContent(chromedp.CSS(`#op-params .param`))); err != nil || !strings.Contains(required, "required") {
		t.Errorf("rotate's degrees are not marked required: %q (%v)", required, err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#op-add"))); err != nil {
		t.Fatal(err)
	}
	expectSpec(t, ctx, crop+",rotate:90")

	// A parameter out of its range is caught by the form, and nothing is added.
	chooseOp(t, ctx, "blur")
	if def, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS(`#op-params input`))); err != nil || def != "1" {
		t.Errorf("blur's sigma input holds %q (%v), want its default 1", def, err)
	}
	clearField(t, ctx, "#op-params input")
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS(`#op-params input`), "500"+kb.Enter),
		chromedp.WaitVisible(chromedp.CSS("#step-error")),
	); err != nil {
		t.Fatalf("blur out of range: %v", err)
	}
	expectSpec(t, ctx, crop+",rotate:90")

	chooseOp(t, ctx, "grayscale")
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#op-add")),
		chromedp.WaitVisible(chromedp.CSS(`#chain > li:nth-child(3)`)),
	); err != nil {
		t.Fatal(err)
	}
	expectSpec(t, ctx, crop+",rotate:90,grayscale")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#chain > li:nth-child(3) .step-up`))); err != nil {
		t.Fatal(err)
	}
	expectSpec(t, ctx, crop+",grayscale,rotate:90")
	if focused, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.activeElement.getAttribute('aria-label') || ''`)); err != nil ||
		!strings.Contains(focused, "step 2, grayscale") {
		t.Errorf("after moving a step the focus is on %q (%v), want its button", focused, err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#chain > li:nth-child(2) .step-remove`))); err != nil {
		t.Fatal(err)
	}
	expectSpec(t, ctx, browserChain)
}

// waitPage waits until the JavaScript expression js is true on the page.
func waitPage(t *testing.T, ctx context.Context, what, js string) {
	t.Helper()
	waitPageFor(t, ctx, 15*time.Second, what, js)
}

// waitPageFor is waitPage waiting at most d.
func waitPageFor(t *testing.T, ctx context.Context, d time.Duration, what, js string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err == nil && ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s (%v)", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// chooseOp picks name in the page's operation select, as a user would (the select's change event).
func chooseOp(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	js := fmt.Sprintf(`(() => { const s = document.querySelector('#op-pick'); s.value = %q;
		s.dispatchEvent(new Event('change', { bubbles: true })); return s.value; })()`, name)
	if got, err := chromedp.Run(ctx, chromedp.Evaluate[string](js)); err != nil || got != name {
		t.Fatalf("choose operation %s: got %q (%v); is it in the picker?", name, got, err)
	}
}

// clearField empties the input sel, as selecting its text and deleting it would.
func clearField(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); e.value = '';
		e.dispatchEvent(new Event('input', { bubbles: true })); return e.value === ''; })()`, sel)
	if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js)); err != nil || !ok {
		t.Fatalf("clear %s: %v", sel, err)
	}
}

func specValue(t *testing.T, ctx context.Context) string {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#spec")))
	if err != nil {
		t.Fatalf("read the spec: %v", err)
	}
	return v
}

func expectSpec(t *testing.T, ctx context.Context, want string) {
	t.Helper()
	if got := specValue(t, ctx); got != want {
		t.Fatalf("spec %q, want %q", got, want)
	}
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#chain > li').length`))
	if err != nil || n != strings.Count(want, ",")+1 {
		t.Fatalf("the chain lists %d steps (%v) for %q", n, err, want)
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
	// Every image decoded first, those out of view too, or the full-page capture shows them blank; then
	// two animation frames: what the last step changed (a viewport, a message) is painted before the
	// capture, or the capture can show a stale, blank region.
	// Previews still on their way (a thumbnail's fetch) are waited for too, up to 20 s.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`new Promise(r => { const t0 = Date.now();
		const wait = () => (!document.querySelector('.thumbs img:not([src])') || Date.now() - t0 > 20000) ? r(0) : setTimeout(wait, 100); wait(); })
		.then(() => Promise.all(Array.from(document.images).filter(i => i.getAttribute('src')).map(i => i.decode().catch(() => 0))))
		.then(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(0)))))`, chromedp.EvalAwaitPromise)); err != nil {
		t.Errorf("screenshot: waiting for a paint: %v", err)
	}
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

// Images for the chain tests.

// fetchImage downloads the PNG or JPEG at url and returns it decoded, with its Content-Type.
func fetchImage(t *testing.T, ctx context.Context, hc *http.Client, url string) (image.Image, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	ct := resp.Header.Get("Content-Type")
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s %q", url, resp.StatusCode, ct, b)
	}
	img, _, err := image.Decode(resp.Body)
	if err != nil {
		t.Fatalf("decode %s (%s): %v", url, ct, err)
	}
	return img, ct
}

// downloadName is the file name the server gives the image at url (Content-Disposition).
func downloadName(t *testing.T, ctx context.Context, hc *http.Client, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("HEAD %s: %v", url, err)
	}
	resp.Body.Close()
	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Disposition"))
	if err != nil {
		t.Fatalf("HEAD %s: Content-Disposition %q: %v", url, resp.Header.Get("Content-Disposition"), err)
	}
	return params["filename"]
}

// cropRotate90 returns the r part of img turned a quarter clockwise.
func cropRotate90(img image.Image, r image.Rectangle) *image.NRGBA {
	r = r.Add(img.Bounds().Min)
	out := image.NewNRGBA(image.Rect(0, 0, r.Dy(), r.Dx()))
	for y := 0; y < r.Dy(); y++ {
		for x := 0; x < r.Dx(); x++ {
			// The source's row y becomes the column Dy-1-y, read top to bottom.
			out.Set(r.Dy()-1-y, x, img.At(r.Min.X+x, r.Min.Y+y))
		}
	}
	return out
}

// meanDiff is the mean absolute difference of the R, G and B channels (8-bit) of two images of the
// same size.
func meanDiff(a, b image.Image) float64 {
	ab, bb := a.Bounds(), b.Bounds()
	var sum, n float64
	for y := 0; y < ab.Dy(); y++ {
		for x := 0; x < ab.Dx(); x++ {
			ca := color.NRGBAModel.Convert(a.At(ab.Min.X+x, ab.Min.Y+y)).(color.NRGBA)
			cb := color.NRGBAModel.Convert(b.At(bb.Min.X+x, bb.Min.Y+y)).(color.NRGBA)
			for _, d := range []int{int(ca.R) - int(cb.R), int(ca.G) - int(cb.G), int(ca.B) - int(cb.B)} {
				sum += float64(max(d, -d))
			}
			n += 3
		}
	}
	return sum / max(n, 1)
}
