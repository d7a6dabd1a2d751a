package browser

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/testimage"
)

// axeVersion is the axe-core the accessibility checks run; .ci/run installs the same one.
const axeVersion = "4.14.1"

// axeScript returns axe.min.js: from $IMGMILL_AXE, else from the cache .ci/run fills
// ($HOME/.cache/imgmill-axe), installed there with npm when it is missing. Without npm the checks are
// skipped, except on CI.
func axeScript(t *testing.T) string {
	t.Helper()
	path := os.Getenv("IMGMILL_AXE")
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache := filepath.Join(home, ".cache", "imgmill-axe")
		path = filepath.Join(cache, "node_modules", "axe-core", "axe.min.js")
		if _, err := os.Stat(path); err != nil {
			npm, lookErr := exec.LookPath("npm")
			if lookErr != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("no axe-core at %s and no npm to install it", path)
				}
				t.Logf("no axe-core at %s and no npm: the accessibility checks are skipped", path)
				return ""
			}
			cmd := exec.Command(npm, "install", "--no-audit", "--no-fund", "--prefix", cache, "axe-core@"+axeVersion)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("npm install axe-core: %v\n%s", err, out)
			}
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkAxe runs axe-core on the page as it is (state names it) and fails the test for any violation.
func checkAxe(t *testing.T, ctx context.Context, axe, state string) {
	t.Helper()
	if axe == "" {
		return
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`typeof axe === 'object'`)); err != nil {
		t.Fatal(err)
	}
	if loaded, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`typeof axe === 'object'`)); !loaded {
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](axe+";true")); err != nil {
			t.Fatalf("inject axe-core: %v", err)
		}
	}
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[string](`axe.run(document, { resultTypes: ['violations'] }).then(r =>
		JSON.stringify(r.violations.map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at ' +
			v.nodes.map(n => n.target.join(' ') + ' [' + (n.failureSummary || '').replace(/\s+/g, ' ') + ']').join('; '))))`,
		chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("axe.run (%s): %v", state, err)
	}
	var violations []string
	if err := json.Unmarshal([]byte(raw), &violations); err != nil {
		t.Fatalf("axe.run (%s): %v", state, err)
	}
	for _, v := range violations {
		t.Errorf("axe, %s: %s", state, v)
	}
	t.Logf("axe, %s: %d violations", state, len(violations))
}

// recorder stands in front of the frontend and records what the page asks for. It makes the page's
// status connections and its uploads meet: it passes the first upload, holds the others until a
// status request (an event stream, or GET /api/tasks/{id}) has come, and holds every status request
// until all the uploads of the batch have arrived. A page whose uploads queue behind status
// connections (a browser opens 6 to a site) then never sends them all, and the recorder gives up
// holding after a long while and says so.
type recorder struct {
	batch      int // uploads to wait for
	proxy      http.Handler
	arrived    chan struct{} // closed when batch uploads have arrived
	once       sync.Once
	statusSeen chan struct{} // closed at the first status request
	seenOnce   sync.Once

	mu           sync.Mutex
	uploads      int
	streams      int // event streams open now
	maxStreams   int
	taskStreams  int // requests for per-task streams (/api/tasks/{id}/events)
	gaveUp       bool
	requests     []string // method and path with query, in order
	statusesHeld int
}

var statusPath = regexp.MustCompile(`^/api/tasks/[A-Za-z0-9_-]+$`)

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	rec.requests = append(rec.requests, r.Method+" "+r.URL.RequestURI())
	isUpload := r.Method == http.MethodPost && r.URL.Path == "/api/tasks"
	isStream := r.URL.Path == "/api/events"
	isTaskStream := strings.HasSuffix(r.URL.Path, "/events") && strings.HasPrefix(r.URL.Path, "/api/tasks/")
	isStatus := isStream || isTaskStream || (r.Method == http.MethodGet && statusPath.MatchString(r.URL.Path))
	if isTaskStream {
		rec.taskStreams++
	}
	if isStream {
		rec.streams++
		rec.maxStreams = max(rec.maxStreams, rec.streams)
	}
	upload := 0
	if isUpload {
		rec.uploads++
		upload = rec.uploads
		if rec.uploads == rec.batch {
			rec.once.Do(func() { close(rec.arrived) })
		}
	}
	rec.mu.Unlock()
	if isStatus {
		rec.seenOnce.Do(func() { close(rec.statusSeen) })
	}
	if upload > 1 && !rec.wait(r, rec.statusSeen) {
		return
	}
	if isStream {
		defer func() {
			rec.mu.Lock()
			rec.streams--
			rec.mu.Unlock()
		}()
	}
	if isStatus {
		select {
		case <-rec.arrived:
		default:
			rec.mu.Lock()
			rec.statusesHeld++
			rec.mu.Unlock()
			if !rec.wait(r, rec.arrived) {
				return
			}
		}
	}
	rec.proxy.ServeHTTP(w, r)
}

// wait holds r until ch is closed, and answers false when its client went away meanwhile. After 90 s
// it gives up, releasing everything held, and records that it had to.
func (rec *recorder) wait(r *http.Request, ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	case <-r.Context().Done():
		return false
	case <-time.After(90 * time.Second):
		rec.mu.Lock()
		rec.gaveUp = true
		rec.mu.Unlock()
		rec.seenOnce.Do(func() { close(rec.statusSeen) })
		rec.once.Do(func() { close(rec.arrived) })
		return true
	}
}

func (rec *recorder) seen(prefix string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, r := range rec.requests {
		if strings.HasPrefix(r, prefix) {
			n++
		}
	}
	return n
}

// TestBrowserBatch drives the page through what people do with many images: 12 uploaded at once with a
// slow chain (none of them waits on another task's status: the page follows them all on one event
// stream), each judged from its thumbnails and sizes and in the comparison (slider, zoom to 100 %,
// pan), one cancelled and retried, one deleted, one removed, all downloaded as a zip, a failed one, a
// chain with a typo and a file over the size limit refused without sending them, dark mode and phone
// width; axe-core finds no violation in any of these states. Screenshots go to IMGMILL_ARTIFACTS.
func TestBrowserBatch(t *testing.T) {
	chromium := findChromium(t)
	axe := axeScript(t)
	artifacts := artifactDir(t)
	const maxUpload = 6 << 20
	// One image at a time, so that the batch queues and the last task waits long enough to be cancelled.
	addrs := deploytest.ServeApp(t, nil, "--concurrency", "1", "--max-upload", fmt.Sprint(maxUpload))
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	hc := httpapi.NewClient()
	defer hc.CloseIdleConnections()
	backend := "http://" + addrs[0]

	// 12 images, over the thumbnails' 480 px and taller than the comparison's box at 800 px, so that
	// zoom to 100 % scrolls.
	const batch, side = 12, 640
	target, _ := url.Parse(backend)
	rec := &recorder{batch: batch, proxy: httputil.NewSingleHostReverseProxy(target), arrived: make(chan struct{}), statusSeen: make(chan struct{})}
	front := httptest.NewServer(rec)
	defer front.Close()

	dir := t.TempDir()
	var files []string
	for i := range batch {
		files = append(files, testimage.WriteFile(t, dir, fmt.Sprintf("photo-%02d.png", i+1), testimage.Opaque(testimage.Pattern(side, int64(30+i)))))
	}
	broken := filepath.Join(dir, "broken.png") // a PNG header and nothing else: accepted, then fails to decode
	if err := os.WriteFile(broken, testimage.PNGHeader(64, 64), 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "huge.png") // over --max-upload: the page must not send it
	if err := os.WriteFile(big, append(testimage.PNGHeader(4000, 4000), make([]byte, maxUpload)...), 0o644); err != nil {
		t.Fatal(err)
	}

	bctx := startBrowser(t, ctx, chromium, func(m chromedp.ConsoleMessage) bool {
		// The corrupt image's result and the deleted task's status are expected errors.
		return m.Source == "network" && (strings.Contains(m.Text, "status of 404") || strings.Contains(m.Text, "status of 409"))
	})
	if err := chromedp.Do(bctx,
		chromedp.EmulateViewport(1280, 800),
		chromedp.Navigate(front.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#drop")),
	); err != nil {
		t.Fatal(err)
	}
	// The drop zone is on the first screen, the limits beside it.
	if top, err := chromedp.Run(bctx, chromedp.Evaluate[float64](`document.querySelector('#drop').getBoundingClientRect().bottom`)); err != nil || top > 800 {
		t.Errorf("desktop: the drop zone ends at y=%v (%v), want on the first screen (800)", top, err)
	}
	expectPage(t, bctx, "the limits shown by the drop zone", `/6(\.0)? MB/.test(document.querySelector('#limits').textContent)`)
	checkAxe(t, bctx, axe, "empty page")

	// 1. The batch, with a slow chain.
	if err := chromedp.Do(bctx, chromedp.SendKeys(chromedp.CSS("#spec"), "blur:6,sharpen:1"+kb.Tab)); err != nil {
		t.Fatal(err)
	}
	// What the page says to screen readers, from here on.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`window.said = []; new MutationObserver(() => window.said.push(document.querySelector('#announce').textContent))
		.observe(document.querySelector('#announce'), { childList: true, characterData: true, subtree: true }); true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx, chromedp.SetUploadFiles(chromedp.CSS("#files"), files)); err != nil {
		t.Fatal(err)
	}
	if focused, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.activeElement.id`)); err != nil || focused != "tasks-status" {
		t.Errorf("after choosing the files the focus is on %q (%v), want the task list's status line", focused, err)
	}
	expectPage(t, bctx, "the page to announce 12 images uploading", `window.said.includes('12 images uploading')`)
	checkAxe(t, bctx, axe, "uploading")
	select {
	case <-rec.arrived:
	case <-ctx.Done():
		t.Fatal("the uploads never all arrived")
	}
	rec.mu.Lock()
	gaveUp, taskStreams, held := rec.gaveUp, rec.taskStreams, rec.statusesHeld
	rec.mu.Unlock()
	if gaveUp {
		t.Errorf("uploads waited behind held status requests: not all %d arrived in 90 s", batch)
	}
	if held == 0 {
		t.Errorf("no status request was held while the uploads went on: the check proved nothing")
	}
	if taskStreams != 0 {
		t.Errorf("the page opened %d per-task event streams, want none (one stream for all)", taskStreams)
	}
	// The last photo queues behind the others: cancel it from its card.
	clickIn(t, bctx, "photo-12.png", "button.cancel")
	waitState(t, bctx, "photo-12.png", "cancelled")
	waitPageFor(t, bctx, 5*time.Minute, "the batch to settle", fmt.Sprintf(`document.querySelectorAll('#tasks > li[data-state=finished]').length === %d`, batch-1))
	rec.mu.Lock()
	maxStreams := rec.maxStreams
	rec.mu.Unlock()
	// One stream at a time; its predecessor may still count for the moment the server takes to see it closed.
	if maxStreams > 2 || rec.seen("GET /api/events?ids=") == 0 {
		t.Errorf("the page had up to %d event streams open at once, over %d opened; want one", maxStreams, rec.seen("GET /api/events?ids="))
	}
	t.Logf("status requests held while uploading: %d; event streams at once: %d", held, maxStreams)

	// 2. Retry the cancelled task: it runs again with the same upload.
	clickIn(t, bctx, "photo-12.png", "button.retry")
	expectPageFor(t, bctx, 2*time.Minute, "photo-12.png retried and finished", taskJS("photo-12.png", `li.dataset.state === 'finished'`))
	if rec.seen("POST /api/tasks/") == 0 || rec.seen("POST /api/tasks?") != batch {
		t.Errorf("retry: %d POST /retry, %d uploads; want a retry and no new upload", rec.seen("POST /api/tasks/"), rec.seen("POST /api/tasks?"))
	}

	// 3. Judging: thumbnails (at most 480 px wide) with the full sizes of both images and the change.
	type judgement struct {
		OrigSize, OrigBytes, ResSize, ResBytes, Caption string
		ThumbWidth                                      int
	}
	judged, err := chromedp.Run(bctx, chromedp.Evaluate[judgement](`new Promise(r => { const li = Array.from(document.querySelectorAll('#tasks > li')).find(l => l.querySelector('.task-name').textContent === 'photo-01.png');
		const o = li.querySelector('figure.original'), f = li.querySelector('figure.result'), img = f.querySelector('img');
		const done = () => r({ OrigSize: o.dataset.size, OrigBytes: o.dataset.bytes, ResSize: f.dataset.size, ResBytes: f.dataset.bytes,
			Caption: f.querySelector('figcaption').textContent, ThumbWidth: img.naturalWidth });
		const wait = () => (img.complete && f.dataset.bytes && o.dataset.size) ? done() : setTimeout(wait, 100); wait(); })`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(files[0])
	full := fmt.Sprintf("%d×%d", side, side)
	if judged.OrigSize != full || judged.OrigBytes != fmt.Sprint(fi.Size()) || judged.ResSize != full || judged.ResBytes == "" ||
		!regexp.MustCompile(`[+−±]\d+ %`).MatchString(judged.Caption) {
		t.Errorf("photo-01.png shows %+v; want both %s, the original's %d bytes, the result's bytes and the change in per cent", judged, full, fi.Size())
	}
	rec.mu.Lock()
	requests := slices.Clone(rec.requests)
	rec.mu.Unlock()
	if judged.ThumbWidth > 480 || rec.seen("GET /api/tasks/") == 0 || !slices.ContainsFunc(requests, func(r string) bool { return strings.HasSuffix(r, "/result?w=480") }) {
		t.Errorf("the result's preview is %d px wide; want a thumbnail of at most 480 (GET .../result?w=480)", judged.ThumbWidth)
	}
	for _, r := range requests {
		if strings.HasSuffix(r, "/source") || strings.Contains(r, "/source?") {
			t.Errorf("the page fetched %s, though it has the uploaded files", r)
		}
	}
	screenshot(t, bctx, filepath.Join(artifacts, "batch-desktop.png"))

	// 4. Download all: a zip of the finished results, named after the uploads and the chain.
	href, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('#download-all').href`))
	if err != nil {
		t.Fatal(err)
	}
	checkZip(t, ctx, hc, strings.Replace(href, front.URL, backend, 1), batch)

	// 5. The comparison: the slider moves the divide, zoom to 100 % shows the result's pixels, the arrow
	// keys pan, Escape closes and gives the focus back.
	clickIn(t, bctx, "photo-01.png", "button.compare-open")
	waitPage(t, bctx, "the comparison to open", `document.querySelector('#compare').open && document.querySelector('#compare-after').complete && document.querySelector('#compare-after').naturalWidth > 0`)
	checkAxe(t, bctx, axe, "comparison open")
	clip := func() string {
		s, err := chromedp.Run(bctx, chromedp.Evaluate[string](`getComputedStyle(document.querySelector('#compare-after')).clipPath`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := clip()
	if err := chromedp.Do(bctx, chromedp.Focus(chromedp.CSS("#compare-pos")), chromedp.KeyEvent(kb.ArrowRight), chromedp.KeyEvent(kb.ArrowRight)); err != nil {
		t.Fatal(err)
	}
	if after := clip(); after == before || !strings.Contains(after, "52%") {
		t.Errorf("the slider moved from 50 to 52: the result's clip went from %q to %q", before, after)
	}
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.CSS("#compare-zoom"))); err != nil {
		t.Fatal(err)
	}
	type zoomed struct {
		Width, ScrollHeight, ClientHeight float64
		Pressed                           string
	}
	zoom, err := chromedp.Run(bctx, chromedp.Evaluate[zoomed](`(() => { const s = document.querySelector('#compare-stage');
		return { Width: document.querySelector('#compare-layer').getBoundingClientRect().width, ScrollHeight: s.scrollHeight,
			ClientHeight: s.clientHeight, Pressed: document.querySelector('#compare-zoom').getAttribute('aria-pressed') }; })()`))
	if err != nil {
		t.Fatal(err)
	}
	if zoom.Width != side || zoom.Pressed != "true" || zoom.ScrollHeight <= zoom.ClientHeight {
		t.Errorf("zoomed to 100 %%: %+v; want the image %d px wide, the button pressed and the stage scrolling", zoom, side)
	}
	top0, _ := chromedp.Run(bctx, chromedp.Evaluate[float64](`document.querySelector('#compare-stage').scrollTop`))
	if err := chromedp.Do(bctx, chromedp.Focus(chromedp.CSS("#compare-stage")), chromedp.KeyEvent(kb.ArrowDown)); err != nil {
		t.Fatal(err)
	}
	if top1, _ := chromedp.Run(bctx, chromedp.Evaluate[float64](`document.querySelector('#compare-stage').scrollTop`)); top1 <= top0 {
		t.Errorf("ArrowDown on the zoomed image did not pan: scrollTop %v, then %v", top0, top1)
	}
	if err := chromedp.Do(bctx, chromedp.KeyEvent(kb.Escape)); err != nil {
		t.Fatal(err)
	}
	waitPage(t, bctx, "Escape to close the comparison and give the focus back to its button",
		`!document.querySelector('#compare').open && document.activeElement.classList.contains('compare-open')`)

	// 6. Delete asks again in place, then the task is gone from the page and the server; Remove only
	// forgets it here.
	id2 := taskID(t, bctx, "photo-02.png")
	clickIn(t, bctx, "photo-02.png", "button.delete")
	waitPage(t, bctx, "the delete button to ask again", `Array.from(document.querySelectorAll('#tasks button.delete')).some(b => b.textContent === 'Really delete?')`)
	clickIn(t, bctx, "photo-02.png", "button.delete")
	waitPage(t, bctx, "the deleted card to go", `!Array.from(document.querySelectorAll('#tasks .task-name')).some(n => n.textContent === 'photo-02.png')`)
	if code := statusCode(t, ctx, hc, backend+"/api/tasks/"+id2); code != http.StatusNotFound {
		t.Errorf("a deleted task answers %d, want 404", code)
	}
	id3 := taskID(t, bctx, "photo-03.png")
	clickIn(t, bctx, "photo-03.png", "button.remove")
	waitPage(t, bctx, "the removed card to go", `!Array.from(document.querySelectorAll('#tasks .task-name')).some(n => n.textContent === 'photo-03.png')`)
	if code := statusCode(t, ctx, hc, backend+"/api/tasks/"+id3); code != http.StatusOK {
		t.Errorf("a removed task answers %d, want 200: removing only forgets it in this browser", code)
	}

	// 7. A task that fails: the reason once, no attempt count, and Retry offered.
	if err := chromedp.Do(bctx, chromedp.SetUploadFiles(chromedp.CSS("#files"), []string{broken})); err != nil {
		t.Fatal(err)
	}
	waitState(t, bctx, "broken.png", "failed")
	msg, err := chromedp.Run(bctx, chromedp.Evaluate[string](taskJS("broken.png", `li.querySelector('.message').textContent + '|' + !!li.querySelector('button.retry')`)))
	if err != nil || strings.Contains(msg, "attempt") || !strings.HasSuffix(msg, "|true") {
		t.Errorf("failed task says %q (%v); want the reason without attempts, and a Retry button", msg, err)
	}
	checkAxe(t, bctx, axe, "failed task")

	// 8. Nothing is sent for a chain with an unknown operation, nor for a file over the size limit.
	uploads := rec.seen("POST /api/tasks?")
	clearField(t, bctx, "#spec")
	if err := chromedp.Do(bctx, chromedp.SendKeys(chromedp.CSS("#spec"), "grayscle"+kb.Tab),
		chromedp.SetUploadFiles(chromedp.CSS("#files"), []string{files[0]}),
		chromedp.WaitVisible(chromedp.CSS("#upload-error"))); err != nil {
		t.Fatal(err)
	}
	if msg, _ := chromedp.Run(bctx, chromedp.TextContent(chromedp.CSS("#upload-error"))); !strings.Contains(msg, "grayscle") || !strings.HasPrefix(msg, "Not uploaded") {
		t.Errorf("a chain with a typo says %q; want it not uploaded, naming the typo", msg)
	}
	clearField(t, bctx, "#spec")
	if err := chromedp.Do(bctx, chromedp.SetUploadFiles(chromedp.CSS("#files"), []string{big})); err != nil {
		t.Fatal(err)
	}
	waitState(t, bctx, "huge.png", "refused")
	if got := rec.seen("POST /api/tasks?"); got != uploads {
		t.Errorf("%d uploads sent for a chain with a typo and a file over the limit, want none", got-uploads)
	}

	// 9. Dark mode, and a phone.
	darkMode := func(on bool) {
		value := "light"
		if on {
			value = "dark"
		}
		if _, err := chromedp.Call(bctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: value}}}); err != nil {
			t.Fatal(err)
		}
	}
	darkMode(true)
	// The drop zone's colours ease over (a transition): wait for its dark background before checking contrast.
	waitPage(t, bctx, "the drop zone's dark background", `getComputedStyle(document.querySelector('#drop')).backgroundColor === 'rgb(33, 43, 74)'`)
	if bg, err := chromedp.Run(bctx, chromedp.Evaluate[string](`getComputedStyle(document.body).backgroundColor`)); err != nil || bg != "rgb(16, 20, 29)" {
		t.Errorf("dark mode: the page's background is %q (%v), want rgb(16, 20, 29)", bg, err)
	}
	checkAxe(t, bctx, axe, "dark mode")
	screenshot(t, bctx, filepath.Join(artifacts, "batch-desktop-dark.png"))
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateTouch), chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#drop"))); err != nil {
		t.Fatal(err)
	}
	// With a touch screen (where the emulation gives one) the drop zone says what can be done there.
	if coarse, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`matchMedia('(pointer: coarse)').matches`)); err != nil {
		t.Fatal(err)
	} else if title, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('#drop-title').innerText.trim()`)); err != nil {
		t.Fatal(err)
	} else if coarse && title != "Choose images" {
		t.Errorf("on a touch screen the drop zone says %q, want Choose images", title)
	} else if !coarse {
		t.Logf("no touch screen emulated: the drop zone says %q", title)
	}
	if bottom, err := chromedp.Run(bctx, chromedp.Evaluate[float64](`document.querySelector('#drop').getBoundingClientRect().bottom`)); err != nil || bottom > 844 {
		t.Errorf("phone: the drop zone ends at y=%v (%v), want on the first screen (844)", bottom, err)
	}
	if wide, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`)); err != nil || wide {
		t.Errorf("page scrolls sideways at phone width (%v)", err)
	}
	// Two tasks shown again from this browser's history: their original from a server thumbnail now.
	for _, name := range []string{"photo-01.png", "photo-04.png"} {
		js := fmt.Sprintf(`Array.from(document.querySelectorAll('#history li')).find(li => li.querySelector('.h-name').textContent === %q).querySelector('button').click()`, name)
		if _, err := chromedp.Run(bctx, chromedp.Evaluate[*runtime.RemoteObject](js)); err != nil {
			t.Fatalf("show %s from the history: %v", name, err)
		}
	}
	waitPage(t, bctx, "two reopened tasks with their images", `document.querySelectorAll('#tasks > li[data-state=finished] .thumbs figure.original[data-size]').length === 2`)
	checkAxe(t, bctx, axe, "phone, dark")
	screenshot(t, bctx, filepath.Join(artifacts, "batch-phone-dark.png"))
	darkMode(false)
	screenshot(t, bctx, filepath.Join(artifacts, "batch-phone.png"))
}

// expectPage waits until the JavaScript expression js is true on the page, as waitPage does, but lets
// the test go on when it is not.
func expectPage(t *testing.T, ctx context.Context, what, js string) bool {
	t.Helper()
	return expectPageFor(t, ctx, 30*time.Second, what, js)
}

func expectPageFor(t *testing.T, ctx context.Context, d time.Duration, what, js string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err == nil && ok {
			return true
		}
		select {
		case <-ctx.Done():
			t.Errorf("timed out waiting for %s (%v)", what, err)
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// taskJS is a JavaScript expression of the card named name (li), answering expr.
func taskJS(name, expr string) string {
	return fmt.Sprintf(`(() => { const li = Array.from(document.querySelectorAll('#tasks > li')).find(l => l.querySelector('.task-name').textContent === %q);
		return li ? (%s) : null; })()`, name, expr)
}

// clickIn clicks the element sel of the card named name, waiting for it.
func clickIn(t *testing.T, ctx context.Context, name, sel string) {
	t.Helper()
	waitPage(t, ctx, sel+" on "+name, taskJS(name, fmt.Sprintf(`!!li.querySelector(%q)`, sel)))
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](taskJS(name, fmt.Sprintf(`(li.querySelector(%q).click(), true)`, sel)))); err != nil {
		t.Fatalf("click %s on %s: %v", sel, name, err)
	}
}

// waitState waits until the card named name shows state.
func waitState(t *testing.T, ctx context.Context, name, state string) {
	t.Helper()
	waitPage(t, ctx, name+" "+state, taskJS(name, fmt.Sprintf(`li.dataset.state === %q`, state)))
}

// taskID is the public id of the card named name, from its result link.
func taskID(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	href, err := chromedp.Run(ctx, chromedp.Evaluate[string](taskJS(name, `li.querySelector('a.download').getAttribute('href')`)))
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSuffix(strings.TrimPrefix(href, "/api/tasks/"), "/result")
	if id == "" || strings.Contains(id, "/") {
		t.Fatalf("%s links to %q", name, href)
	}
	return id
}

func statusCode(t *testing.T, ctx context.Context, hc *http.Client, url string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// checkZip downloads the "Download all" archive and checks it holds n results with distinct names
// after the uploads.
func checkZip(t *testing.T, ctx context.Context, hc *http.Client, url string, n int) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Disposition"), "imgmill-results.zip") {
		t.Errorf("download all: GET %s: %d %v %q", url, resp.StatusCode, resp.Header, body[:min(len(body), 200)])
		return
	}
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Errorf("download all: %v", err)
		return
	}
	names := map[string]bool{}
	for _, f := range zr.File {
		if names[f.Name] || !strings.HasPrefix(f.Name, "photo-") || !strings.HasSuffix(f.Name, ".png") {
			t.Errorf("zip entry %q: want distinct names after the uploads", f.Name)
		}
		names[f.Name] = true
	}
	if len(zr.File) != n {
		t.Errorf("the zip holds %d entries, want %d: %v", len(zr.File), n, names)
	}
}

// TestBrowserPollsWithoutEventStream: before a server that has no GET /api/events (an older one) the
// page falls back to asking for its tasks' statuses one after another, and they finish all the same.
func TestBrowserPollsWithoutEventStream(t *testing.T) {
	chromium := findChromium(t)
	addrs := deploytest.ServeApp(t, nil, "--concurrency", "1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	target, _ := url.Parse("http://" + addrs[0])
	proxy := httputil.NewSingleHostReverseProxy(target)
	var mu sync.Mutex
	var streams, polls int
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		isStream := r.URL.Path == "/api/events"
		mu.Lock()
		if isStream {
			streams++
		} else if r.Method == http.MethodGet && statusPath.MatchString(r.URL.Path) {
			polls++
		}
		mu.Unlock()
		if isStream {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"no endpoint /api/events"}`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()

	dir := t.TempDir()
	files := []string{
		testimage.WriteFile(t, dir, "first.png", testimage.Pattern(64, 41)),
		testimage.WriteFile(t, dir, "second.png", testimage.Pattern(64, 42)),
	}
	bctx := startBrowser(t, ctx, chromium, func(m chromedp.ConsoleMessage) bool {
		return strings.Contains(m.URL, "/api/events") || strings.Contains(m.Text, "/api/events") || strings.Contains(m.Text, "text/event-stream")
	})
	if err := chromedp.Do(bctx,
		chromedp.Navigate(front.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#drop")),
		chromedp.SetUploadFiles(chromedp.CSS("#files"), files),
	); err != nil {
		t.Fatal(err)
	}
	waitPageFor(t, bctx, 2*time.Minute, "both tasks to finish", `document.querySelectorAll('#tasks > li[data-state=finished]').length === 2`)
	mu.Lock()
	defer mu.Unlock()
	if streams == 0 || polls == 0 {
		t.Errorf("the page tried the event stream %d times and polled %d times; want it to try, then poll", streams, polls)
	}
}
