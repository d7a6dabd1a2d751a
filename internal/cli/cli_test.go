package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/cli"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/testimage"
)

// startApp runs `imgmill serve` in-process on free ports, without the upload rate limit, and returns the
// frontend's URL; the app stops when the test ends.
func startApp(t *testing.T) string {
	t.Helper()
	return "http://" + deploytest.ServeApp(t, nil, "--concurrency", "2", "--upload-rate", "0")[0]
}

// imgmill runs one imgmill command in-process, like the binary would, with a deadline.
func imgmill(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	err = cli.Run(ctx, append([]string{"imgmill"}, args...), func(string) string { return "" }, &out, &errOut)
	return out.String(), errOut.String(), err
}

// writePatterns writes n test-pattern PNGs into dir and returns their paths and images.
func writePatterns(t *testing.T, dir string, n int) ([]string, []*image.NRGBA) {
	t.Helper()
	var paths []string
	var imgs []*image.NRGBA
	for i := range n {
		img := testimage.Pattern(20+i*7, int64(i+1))
		data, err := testimage.EncodePNG(img)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("photo%d.png", i))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		paths, imgs = append(paths, p), append(imgs, img)
	}
	return paths, imgs
}

func readPNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("result: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("result %s: %v", path, err)
	}
	return img
}

// waitLines parses what submit --wait prints on stdout, FILE<tab>ID<tab>RESULT per line, into
// FILE: {ID, RESULT}.
func waitLines(t *testing.T, stdout string) map[string][2]string {
	t.Helper()
	lines := map[string][2]string{}
	for l := range strings.Lines(stdout) {
		f := strings.Split(strings.TrimSuffix(l, "\n"), "\t")
		if len(f) != 3 {
			t.Errorf("stdout line %q is not FILE<tab>ID<tab>RESULT", l)
			continue
		}
		lines[f[0]] = [2]string{f[1], f[2]}
	}
	return lines
}

// umask is the process's umask, read by setting it and back.
func umask(t *testing.T) os.FileMode {
	t.Helper()
	m := syscall.Umask(0o022)
	syscall.Umask(m)
	return os.FileMode(m)
}

// submitOne submits file without --wait and returns its task id.
func submitOne(t *testing.T, server, file string) string {
	t.Helper()
	out, errOut, err := imgmill(t, "submit", "--server", server, file)
	if err != nil {
		t.Fatalf("submit %s: %v\n%s", file, err, errOut)
	}
	f, id, ok := strings.Cut(strings.TrimSpace(out), "\t")
	if !ok || f != file || id == "" {
		t.Fatalf("submit printed %q, want %q<tab>ID", out, file)
	}
	return id
}

func TestCLIEndToEnd(t *testing.T) {
	server := startApp(t)
	in := t.TempDir()

	t.Run("SubmitWait", func(t *testing.T) {
		files, imgs := writePatterns(t, in, 5)
		outDir := filepath.Join(t.TempDir(), "results") // created by submit
		stdout, stderr, err := imgmill(t, append([]string{"submit", "--server", server, "--wait", "--out", outDir, "--parallel", "2"}, files...)...)
		if err != nil {
			t.Fatalf("submit --wait: %v\nstderr:\n%s", err, stderr)
		}
		if !regexp.MustCompile(`(?m)^5 submitted, 5 finished, 0 failed in \d+\.\ds$`).MatchString(stderr) {
			t.Errorf("summary not on stderr:\n%s", stderr)
		}
		// stdout: FILE<tab>ID<tab>RESULT per file, and nothing else.
		lines := waitLines(t, stdout)
		if len(lines) != 5 {
			t.Fatalf("stdout has %d lines, want 5:\n%s", len(lines), stdout)
		}
		for i, f := range files {
			out := filepath.Join(outDir, strings.TrimSuffix(filepath.Base(f), ".png")+".imgmill.png")
			if l, ok := lines[f]; !ok || l[1] != out || len(l[0]) < 40 {
				t.Errorf("%s: stdout line %q, want its id and %s", f, l, out)
			}
			if err := testimage.CheckSwapped(imgs[i], readPNG(t, out)); err != nil {
				t.Errorf("%s: %v", out, err)
			}
			// 0666 less the umask (022 under go test here): readable by all, as a user's own tools write.
			if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o666&^umask(t) {
				t.Errorf("%s: mode %v (%v), want %v", out, fi.Mode().Perm(), err, 0o666&^umask(t))
			}
		}
	})

	t.Run("SubmitBadFiles", func(t *testing.T) {
		dir := t.TempDir()
		files, imgs := writePatterns(t, dir, 2)
		notImage := filepath.Join(dir, "notes.txt")
		os.WriteFile(notImage, []byte("this is not an image"), 0o644)
		undecodable := filepath.Join(dir, "broken.png") // passes the upload checks, fails processing
		os.WriteFile(undecodable, testimage.PaddedPNG(8, 8, 200), 0o644)
		outDir := t.TempDir()
		args := []string{"submit", "--server", server, "--wait", "--out", outDir, files[0], notImage, undecodable, files[1]}
		stdout, stderr, err := imgmill(t, args...)
		if err == nil || cli.ExitCode(err) != 1 {
			t.Fatalf("submit with bad files: err %v, want exit 1", err)
		}
		if !strings.Contains(stderr, notImage+": refused at upload: ") || !strings.Contains(stderr, "HTTP 415") {
			t.Errorf("stderr does not say %s was refused (415):\n%s", notImage, stderr)
		}
		if !strings.Contains(stderr, undecodable+": task ") || !strings.Contains(stderr, "failed: ") {
			t.Errorf("stderr does not say %s failed processing:\n%s", undecodable, stderr)
		}
		if !strings.Contains(stderr, "\n4 submitted, 2 finished, 2 failed (1 refused at upload) in ") {
			t.Errorf("summary not on stderr:\n%s", stderr)
		}
		lines := waitLines(t, stdout)
		if l := lines[notImage]; l[0] != "-" || !strings.HasPrefix(l[1], "refused at upload: ") || !strings.Contains(l[1], "HTTP 415") {
			t.Errorf("stdout line of %s: %q", notImage, l)
		}
		if l := lines[undecodable]; l[0] == "-" || !strings.HasPrefix(l[1], "task failed: ") {
			t.Errorf("stdout line of %s: %q", undecodable, l)
		}
		if len(lines) != 4 {
			t.Errorf("stdout has %d lines, want 4:\n%s", len(lines), stdout)
		}
		for i, f := range files {
			out := filepath.Join(outDir, strings.TrimSuffix(filepath.Base(f), ".png")+".imgmill.png")
			if err := testimage.CheckSwapped(imgs[i], readPNG(t, out)); err != nil {
				t.Errorf("%s: %v", out, err)
			}
		}
		if entries, _ := os.ReadDir(outDir); len(entries) != 2 {
			t.Errorf("out dir holds %d entries, want the 2 results", len(entries))
		}
	})

	t.Run("SubmitNoWait", func(t *testing.T) {
		files, _ := writePatterns(t, t.TempDir(), 3)
		stdout, stderr, err := imgmill(t, append([]string{"submit", "--server", server}, files...)...)
		if err != nil {
			t.Fatalf("submit: %v\n%s", err, stderr)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		if len(lines) != 3 {
			t.Fatalf("stdout %q, want 3 lines", stdout)
		}
		for _, l := range lines {
			f, id, ok := strings.Cut(l, "\t")
			if !ok || id == "" || !strings.HasPrefix(f, filepath.Dir(files[0])) {
				t.Errorf("line %q, want FILE<tab>ID", l)
				continue
			}
			// The task carries the file's name, which its download is named after.
			stdout, _, err := imgmill(t, "status", id, "--server", server)
			var st map[string]any
			if err != nil || json.Unmarshal([]byte(stdout), &st) != nil || st["name"] != filepath.Base(f) {
				t.Errorf("status of %s: %q (%v), want the name %q", id, stdout, err, filepath.Base(f))
			}
		}
	})

	t.Run("SubmitUnknownOp", func(t *testing.T) {
		files, _ := writePatterns(t, t.TempDir(), 1)
		_, _, err := imgmill(t, "submit", "--server", server, "--op", "frobnicate", files[0])
		if cli.ExitCode(err) != 2 || !strings.Contains(fmt.Sprint(err), `unknown operation "frobnicate"`) || !strings.Contains(fmt.Sprint(err), "swap") {
			t.Errorf("unknown op: %v (exit %d), want exit 2 listing swap", err, cli.ExitCode(err))
		}
		// The catalogue comes with it: every operation with its syntax.
		for _, o := range imageop.Operations() {
			if !strings.Contains(fmt.Sprint(err), "\n  "+o.Name+" ") || !strings.Contains(fmt.Sprint(err), o.Syntax) {
				t.Errorf("unknown op: the error does not list %s (%s):\n%v", o.Name, o.Syntax, err)
			}
		}
	})

	t.Run("SubmitChain", func(t *testing.T) {
		// grayscale, then a quarter turn clockwise, on a 40x24 image: 24x40, R=G=B, the luma of the
		// pixel turned there.
		dir := t.TempDir()
		orig := opaqueRect(40, 24, 3)
		file := testimage.WriteFile(t, dir, "wide.png", orig)
		outDir := t.TempDir()
		stdout, stderr, err := imgmill(t, "submit", "--server", server, "--op", "grayscale,rotate:90", "--wait", "--out", outDir, file)
		if err != nil {
			t.Fatalf("submit --op grayscale,rotate:90: %v\n%s", err, stderr)
		}
		if !strings.Contains(stderr, "\n1 submitted, 1 finished, 0 failed in ") {
			t.Errorf("summary not on stderr:\n%s", stderr)
		}
		if l := waitLines(t, stdout)[file]; l[1] != filepath.Join(outDir, "wide.imgmill.png") {
			t.Errorf("stdout %q, want %s's result", stdout, file)
		}
		got := readPNG(t, filepath.Join(outDir, "wide.imgmill.png"))
		if size := got.Bounds().Size(); size != image.Pt(24, 40) {
			t.Fatalf("result is %v, want 24x40 (40x24 turned a quarter)", size)
		}
		for y := range 40 {
			for x := range 24 {
				c := color.NRGBAModel.Convert(got.At(x, y)).(color.NRGBA)
				o := orig.NRGBAAt(y, 23-x) // the pixel a clockwise quarter turn brings to (x, y)
				luma := 0.299*float64(o.R) + 0.587*float64(o.G) + 0.114*float64(o.B)
				if c.R != c.G || c.G != c.B || c.A != 255 || math.Abs(float64(c.R)-luma) > 1.5 {
					t.Fatalf("result pixel (%d,%d) is %v, want grey %.1f (from %v)", x, y, c, luma, o)
				}
			}
		}
		// The task's status carries the chain.
		m := regexp.MustCompile(`submitted as task (\S+)`).FindStringSubmatch(stderr)
		if m == nil {
			t.Fatalf("stderr does not name the task:\n%s", stderr)
		}
		status, _, err := imgmill(t, "status", "--server", server, m[1])
		if err != nil || !strings.Contains(status, `"op": "grayscale,rotate:90"`) {
			t.Errorf("status %q (%v), want the op grayscale,rotate:90", status, err)
		}
	})

	t.Run("SubmitChainFormats", func(t *testing.T) {
		// A JPEG stays a JPEG, the rest become PNG, and convert chooses; --wait names each result by
		// its Content-Type.
		dir := t.TempDir()
		png1 := testimage.WriteFile(t, dir, "a.png", opaqueRect(40, 30, 4))
		jpg := testimage.WriteFile(t, dir, "b.jpg", opaqueRect(40, 30, 5))
		outDir := t.TempDir()
		if _, stderr, err := imgmill(t, "submit", "--server", server, "--op", "resize:20x12:exact", "--wait", "--out", outDir, png1, jpg); err != nil {
			t.Fatalf("submit --op resize:20x12:exact: %v\n%s", err, stderr)
		}
		png2 := testimage.WriteFile(t, dir, "c.png", opaqueRect(40, 30, 6))
		if _, stderr, err := imgmill(t, "submit", "--server", server, "--op", "crop:10x8+2+3,convert:jpeg:90", "--wait", "--out", outDir, png2); err != nil {
			t.Fatalf("submit --op crop:10x8+2+3,convert:jpeg:90: %v\n%s", err, stderr)
		}
		for name, want := range map[string]struct {
			format string
			size   image.Point
		}{
			"a.imgmill.png": {"png", image.Pt(20, 12)},
			"b.imgmill.jpg": {"jpeg", image.Pt(20, 12)},
			"c.imgmill.jpg": {"jpeg", image.Pt(10, 8)},
		} {
			f, err := os.Open(filepath.Join(outDir, name))
			if err != nil {
				t.Errorf("result %s: %v", name, err)
				continue
			}
			cfg, format, err := image.DecodeConfig(f)
			f.Close()
			if err != nil || format != want.format || image.Pt(cfg.Width, cfg.Height) != want.size {
				t.Errorf("result %s: %s %dx%d (%v), want %s %v", name, format, cfg.Width, cfg.Height, err, want.format, want.size)
			}
		}
		if entries, _ := os.ReadDir(outDir); len(entries) != 3 {
			t.Errorf("out dir holds %d entries, want the 3 results", len(entries))
		}
	})

	t.Run("SubmitBadOp", func(t *testing.T) {
		files, _ := writePatterns(t, t.TempDir(), 3)
		outDir := t.TempDir()
		stdout, _, err := imgmill(t, append([]string{"submit", "--server", server, "--op", "grayscale,rotate:45", "--wait", "--out", outDir}, files...)...)
		msg := fmt.Sprint(err)
		if cli.ExitCode(err) != 2 || !strings.Contains(msg, `the server refused --op "grayscale,rotate:45": `) ||
			!strings.Contains(msg, `rotate: angle "45"`) || !strings.Contains(msg, "HTTP 400") {
			t.Errorf("bad op: %v (exit %d), want exit 2 with the server's reason", err, cli.ExitCode(err))
		}
		if stdout != "" {
			t.Errorf("bad op: stdout %q, want nothing", stdout)
		}
		if entries, _ := os.ReadDir(outDir); len(entries) != 0 {
			t.Errorf("bad op: out dir holds %d entries", len(entries))
		}
	})

	t.Run("ListOps", func(t *testing.T) {
		stdout, stderr, err := imgmill(t, "submit", "--list-ops", "--server", server)
		if err != nil {
			t.Fatalf("submit --list-ops: %v\n%s", err, stderr)
		}
		for _, o := range imageop.Operations() {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(o.Name) + ` - `).MatchString(stdout) {
				t.Errorf("--list-ops does not list %s:\n%s", o.Name, stdout)
			}
			if !strings.Contains(stdout, "syntax:   "+o.Syntax+"\n") || !strings.Contains(stdout, "example:  "+o.Example+"\n") {
				t.Errorf("--list-ops does not give the syntax and example of %s", o.Name)
			}
		}
		for _, want := range []string{"percent   number -100..100, required", "size      WxH, sides 1..16384, required", "one of 90, 180, 270", "default 85"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("--list-ops does not say %q", want)
			}
		}
		if _, _, err := imgmill(t, "submit", "--list-ops", "--server", server, "x.png"); cli.ExitCode(err) != 2 {
			t.Errorf("--list-ops with a FILE: %v, want exit 2", err)
		}
	})

	t.Run("SubmitUsage", func(t *testing.T) {
		for _, args := range [][]string{{"submit"}, {"submit", "--parallel", "0", "x.png"}, {"submit", "--out", "d", "x.png"},
			{"submit", "--wait", "a/p.png", "b/p.jpg"}} {
			if _, _, err := imgmill(t, args...); cli.ExitCode(err) != 2 {
				t.Errorf("%q: %v, want exit 2", args, err)
			}
		}
	})

	files, imgs := writePatterns(t, t.TempDir(), 1)
	id := submitOne(t, server, files[0])

	t.Run("GetWait", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out.png")
		if _, stderr, err := imgmill(t, "get", id, "-o", out, "--server", server, "--wait"); err != nil {
			t.Fatalf("get --wait: %v\n%s", err, stderr)
		}
		if err := testimage.CheckSwapped(imgs[0], readPNG(t, out)); err != nil {
			t.Error(err)
		}
		// Again, finished already, to standard output.
		stdout, _, err := imgmill(t, "get", "--server", server, "-o", "-", id)
		if err != nil {
			t.Fatal(err)
		}
		if img, err := png.Decode(strings.NewReader(stdout)); err != nil || testimage.CheckSwapped(imgs[0], img) != nil {
			t.Errorf("get -o -: %v", err)
		}
	})

	t.Run("Status", func(t *testing.T) {
		stdout, _, err := imgmill(t, "status", id, "--server", server)
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		var st map[string]any
		if err := json.Unmarshal([]byte(stdout), &st); err != nil || st["state"] != "finished" || st["id"] != id {
			t.Errorf("status printed %q (%v), want the finished task", stdout, err)
		}
		if !strings.Contains(stdout, "\n  \"") {
			t.Errorf("status JSON is not indented: %q", stdout)
		}
	})

	t.Run("StatusAndGetOfFailedTask", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "broken.png")
		os.WriteFile(p, testimage.PaddedPNG(8, 8, 100), 0o644)
		bad := submitOne(t, server, p)
		out := filepath.Join(t.TempDir(), "out.png")
		_, _, err := imgmill(t, "get", bad, "-o", out, "--server", server, "--wait")
		if err == nil || !strings.Contains(err.Error(), "task "+bad+" failed: ") {
			t.Errorf("get --wait of a failed task: %v", err)
		}
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("get of a failed task wrote %s", out)
		}
		stdout, _, err := imgmill(t, "status", bad, "--server", server)
		if err == nil || cli.ExitCode(err) != 1 || !strings.Contains(stdout, `"state": "failed"`) {
			t.Errorf("status of a failed task: %v, printed %q; want the JSON and exit 1", err, stdout)
		}
		if _, _, err := imgmill(t, "get", bad, "-o", out, "--server", server); err == nil || !strings.Contains(err.Error(), "failed") {
			t.Errorf("get of a failed task: %v", err)
		}
	})

	t.Run("Retry", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "broken.png")
		os.WriteFile(p, testimage.PaddedPNG(8, 8, 100), 0o644)
		bad := submitOne(t, server, p)
		out := filepath.Join(t.TempDir(), "out.png")
		if _, _, err := imgmill(t, "get", bad, "-o", out, "--server", server, "--wait"); err == nil {
			t.Fatal("get --wait of a broken image succeeded")
		}
		files, _ := writePatterns(t, t.TempDir(), 1)
		done := submitOne(t, server, files[0])
		if _, stderr, err := imgmill(t, "get", done, "-o", out, "--server", server, "--wait"); err != nil {
			t.Fatalf("get --wait: %v\n%s", err, stderr)
		}
		stdout, stderr, err := imgmill(t, "retry", "--server", server, bad, done)
		if err == nil || cli.ExitCode(err) != 1 || stdout != bad+"\tqueued\n" ||
			!strings.Contains(stderr, done+": task is finished: only a failed or cancelled task can be retried") {
			t.Errorf("retry of a failed and a finished task: %v, printed %q and %q; want the failed one queued, the finished one refused, exit 1",
				err, stdout, stderr)
		}
		// The image is as broken as before: the retry fails again, for the same reason.
		if _, _, err := imgmill(t, "get", bad, "-o", out, "--server", server, "--wait"); err == nil || !strings.Contains(err.Error(), "task "+bad+" failed: ") {
			t.Errorf("get --wait of the retried broken image: %v, want it failed again", err)
		}
		if _, _, err := imgmill(t, "retry"); cli.ExitCode(err) != 2 {
			t.Errorf("retry without an ID: %v, want exit 2", err)
		}
	})

	t.Run("DeleteAndCancel", func(t *testing.T) {
		files, _ := writePatterns(t, t.TempDir(), 1)
		done := submitOne(t, server, files[0])
		if _, stderr, err := imgmill(t, "get", done, "-o", filepath.Join(t.TempDir(), "out.png"), "--server", server, "--wait"); err != nil {
			t.Fatalf("get --wait: %v\n%s", err, stderr)
		}
		if _, _, err := imgmill(t, "cancel", "--server", server, done); err == nil || cli.ExitCode(err) != 1 {
			t.Errorf("cancel of a finished task: %v, want exit 1", err)
		}
		unknown := strings.Repeat("A", 43)
		for range 2 { // deleting a deleted task succeeds again
			stdout, stderr, err := imgmill(t, "delete", "--server", server, done, unknown)
			if err == nil || cli.ExitCode(err) != 1 || stdout != done+"\tdeleted\n" || !strings.Contains(stderr, "no such task") {
				t.Errorf("delete of a task and an unknown id: %v, printed %q and %q; want the task deleted, the unknown refused, exit 1",
					err, stdout, stderr)
			}
		}
		if _, _, err := imgmill(t, "status", "--server", server, done); err == nil || !strings.Contains(err.Error(), "no such task") {
			t.Errorf("status of a deleted task: %v, want no such task", err)
		}
		for _, args := range [][]string{{"delete"}, {"cancel"}} {
			if _, _, err := imgmill(t, args...); cli.ExitCode(err) != 2 {
				t.Errorf("%q: %v, want exit 2", args, err)
			}
		}
	})

	t.Run("StatusAndGetUnknown", func(t *testing.T) {
		unknown := strings.Repeat("A", 43)
		if _, _, err := imgmill(t, "status", "--server", server, unknown); err == nil || cli.ExitCode(err) != 1 || !strings.Contains(err.Error(), "no such task") {
			t.Errorf("status of an unknown id: %v", err)
		}
		if _, _, err := imgmill(t, "get", "--server", server, unknown, "-o", filepath.Join(t.TempDir(), "x")); err == nil || cli.ExitCode(err) != 1 || !strings.Contains(err.Error(), "no such task") {
			t.Errorf("get of an unknown id: %v", err)
		}
		for _, args := range [][]string{{"status"}, {"status", "a", "b"}, {"get", "a"}, {"get", "-o", "x"}} {
			if _, _, err := imgmill(t, args...); cli.ExitCode(err) != 2 {
				t.Errorf("%q: %v, want exit 2", args, err)
			}
		}
	})
}

// fakeAPI serves the public API contract with canned behaviour, for what the real app does not do on
// demand: refuse with 429 and Retry-After, keep a task queued.
func fakeAPI(t *testing.T, busy int) (string, *atomic.Int32) {
	url, posts, _ := fakeAPIKeys(t, busy)
	return url, posts
}

// fakeAPIKeys is fakeAPI that also returns the Idempotency-Key of every upload, in order.
func fakeAPIKeys(t *testing.T, busy int) (string, *atomic.Int32, func() []string) {
	var posts atomic.Int32
	var mu sync.Mutex
	var keys []string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/operations", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"operations":[{"name":"swap","description":"swap red and green","params":[]}]}`)
	})
	mux.HandleFunc("POST /api/tasks", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		keys = append(keys, r.Header.Get("Idempotency-Key"))
		mu.Unlock()
		if n := posts.Add(1); int(n) <= busy {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"error":"too many uploads, retry in 1s"}`)
			return
		}
		if op := r.URL.Query().Get("op"); op == "bad" {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"unknown operation \"bad\""}`)
			return
		}
		if _, sent := r.URL.Query()["op"]; r.ContentLength != int64(len(body)) || sent {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"content length %d, body %d, op %q"}`, r.ContentLength, len(body), r.URL.Query().Get("op"))
			return
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"id":"Q1","state":"queued"}`)
	})
	mux.HandleFunc("GET /api/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"id":%q,"state":"queued","op":"swap","attempts":0,"maxAttempts":3}`, r.PathValue("id"))
	})
	mux.HandleFunc("GET /api/tasks/{id}/result", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":"task is not finished"}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, &posts, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(keys)
	}
}

// TestCLISubmitRetriesWhenBusy: a refused upload is retried after the server's Retry-After, with the
// same Idempotency-Key, so that a retry whose answer is lost cannot make a second task.
func TestCLISubmitRetriesWhenBusy(t *testing.T) {
	server, posts, keys := fakeAPIKeys(t, 2)
	files, _ := writePatterns(t, t.TempDir(), 2)
	stdout, stderr, err := imgmill(t, "submit", "--server", server, "--parallel", "1", files[0], files[1])
	if err != nil || stdout != files[0]+"\tQ1\n"+files[1]+"\tQ1\n" {
		t.Fatalf("submit: %v, stdout %q, stderr %q", err, stdout, stderr)
	}
	if posts.Load() != 4 || strings.Count(stderr, "retrying in 1s") != 2 {
		t.Errorf("%d uploads, stderr %q; want 2 refused with Retry-After, then both accepted", posts.Load(), stderr)
	}
	k := keys()
	if len(k) != 4 || k[0] == "" || k[0] != k[1] || k[1] != k[2] || k[3] == k[0] || k[3] == "" {
		t.Errorf("idempotency keys %q: want one key for the three tries of the first file, another for the second", k)
	}
}

// TestCLISubmitWaitsForAServerThatIsDown: with no server listening yet, an upload waits (telling the
// user) and goes through once the server is up.
func TestCLISubmitWaitsForAServerThatIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there for now
	files, _ := writePatterns(t, t.TempDir(), 1)
	started := make(chan struct{})
	go func() {
		defer close(started)
		time.Sleep(1500 * time.Millisecond)
		server, _ := fakeAPI(t, 0)
		// The fake API on the address the CLI was given: a reverse proxy there.
		target, _ := url.Parse(server)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listen again on %s: %v", addr, err)
			return
		}
		srv := &http.Server{Handler: httputil.NewSingleHostReverseProxy(target)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}()
	stdout, stderr, err := imgmill(t, "submit", "--server", "http://"+addr, files[0])
	<-started
	if err != nil || stdout != files[0]+"\tQ1\n" {
		t.Fatalf("submit: %v, stdout %q, stderr %q", err, stdout, stderr)
	}
	if !strings.Contains(stderr, "server unavailable (connection refused: is imgmill serve running at http://"+addr+"?), retrying in") {
		t.Errorf("stderr %q does not say it waited for the server", stderr)
	}
}

func TestCLIGetNotFinished(t *testing.T) {
	server, _ := fakeAPI(t, 0)
	out := filepath.Join(t.TempDir(), "x.png")
	_, _, err := imgmill(t, "get", "Q1", "-o", out, "--server", server)
	if err == nil || cli.ExitCode(err) != 1 || !strings.Contains(err.Error(), "not finished yet (queued)") {
		t.Errorf("get of a queued task: %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Error("get of a queued task wrote the file")
	}
}

func TestCLISubmitRefusedOpStops(t *testing.T) {
	server, posts := fakeAPI(t, 0)
	files, _ := writePatterns(t, t.TempDir(), 4)
	stdout, stderr, err := imgmill(t, append([]string{"submit", "--server", server, "--op", "bad", "--parallel", "1"}, files...)...)
	if cli.ExitCode(err) != 2 || !strings.Contains(fmt.Sprint(err), `the server refused --op "bad": unknown operation "bad" (HTTP 400)`) {
		t.Errorf("submit --op bad: %v (exit %d)", err, cli.ExitCode(err))
	}
	// The catalogue the fake server lists comes with an unknown operation.
	if !strings.Contains(fmt.Sprint(err), "\n  swap ") {
		t.Errorf("submit --op bad: the error does not list the operations: %v", err)
	}
	if posts.Load() != 1 || stdout != "" || stderr != "" {
		t.Errorf("%d uploads, stdout %q, stderr %q; want one, refused, and the rest not sent", posts.Load(), stdout, stderr)
	}
}

// opaqueRect returns a w×h opaque test image (the top of an opaque test pattern).
func opaqueRect(w, h int, seed int64) *image.NRGBA {
	p := testimage.Opaque(testimage.Pattern(max(w, h), seed))
	out := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		copy(out.Pix[y*out.Stride:y*out.Stride+4*w], p.Pix[y*p.Stride:])
	}
	return out
}

// cancelOnWrite is a stderr that cancels the command's context the moment it is told something
// containing when: Ctrl-C at a chosen point, delivered the way Run receives it.
type cancelOnWrite struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	when   string
	cancel context.CancelFunc
}

func (w *cancelOnWrite) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if strings.Contains(string(p), w.when) {
		w.cancel()
	}
	return w.buf.Write(p)
}

// TestCLISubmitInterrupted: Ctrl-C while submit --wait waits names the tasks that keep running, says
// which files were not sent, exits 130 and reports no task as failed; the task finishes on the server.
func TestCLISubmitInterrupted(t *testing.T) {
	server := startApp(t)
	files, imgs := writePatterns(t, t.TempDir(), 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runCtx, interrupt := context.WithCancel(ctx)
	defer interrupt()
	// --parallel 1: the first file is uploaded, then the interrupt comes before anything else starts.
	stderr := &cancelOnWrite{when: "submitted as task", cancel: interrupt}
	var stdout bytes.Buffer
	err := cli.Run(runCtx, []string{"imgmill", "submit", "--server", server, "--wait", "--out", t.TempDir(), "--parallel", "1", files[0], files[1], files[2]},
		func(string) string { return "" }, &stdout, stderr)
	if cli.ExitCode(err) != 130 {
		t.Fatalf("interrupted submit: %v (exit %d), want exit 130\nstderr:\n%s", err, cli.ExitCode(err), stderr.buf.String())
	}
	lines := waitLines(t, stdout.String())
	id := lines[files[0]][0]
	if len(id) < 40 || lines[files[0]][1] != "interrupted: the task keeps running on the server" {
		t.Fatalf("stdout line of %s: %q\n%s", files[0], lines[files[0]], stdout.String())
	}
	for _, f := range files[1:] {
		if lines[f] != [2]string{"-", "not sent: interrupted"} {
			t.Errorf("stdout line of %s: %q", f, lines[f])
		}
	}
	if want := "interrupted: 1 task keeps running on the server: " + id + "; 2 files not sent"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want it to start %q", err, want)
	}
	if s := stderr.buf.String(); strings.Contains(s, "failed") || strings.Contains(s, "context canceled") {
		t.Errorf("stderr tells of failures:\n%s", s)
	}
	// The task was left running, not cancelled: it finishes, and its result can be fetched.
	out := filepath.Join(t.TempDir(), "later.png")
	if _, errOut, err := imgmill(t, "get", "--wait", "--server", server, id, "-o", out); err != nil {
		t.Fatalf("get --wait %s after the interrupt: %v\n%s", id, err, errOut)
	}
	if err := testimage.CheckSwapped(imgs[0], readPNG(t, out)); err != nil {
		t.Error(err)
	}
}

// TestCLISubmitNotSent: a file that cannot be read is "not sent", with the reason, not "refused at
// upload"; the others go through.
func TestCLISubmitNotSent(t *testing.T) {
	server := startApp(t)
	files, _ := writePatterns(t, t.TempDir(), 1)
	missing := filepath.Join(t.TempDir(), "nonexist.png")
	stdout, stderr, err := imgmill(t, "submit", "--server", server, "--wait", "--out", t.TempDir(), missing, files[0])
	if cli.ExitCode(err) != 1 || err.Error() != "1 of 2 files failed" {
		t.Errorf("submit of a missing file: %v (exit %d)", err, cli.ExitCode(err))
	}
	if !strings.Contains(stderr, missing+": not sent: cannot read it: no such file or directory\n") || strings.Contains(stderr, "refused") {
		t.Errorf("stderr does not say %s was not sent, and why:\n%s", missing, stderr)
	}
	if !strings.Contains(stderr, "2 submitted, 1 finished, 1 failed (1 not sent) in ") {
		t.Errorf("summary:\n%s", stderr)
	}
	lines := waitLines(t, stdout)
	if lines[missing] != [2]string{"-", "not sent: cannot read it: no such file or directory"} || !strings.HasSuffix(lines[files[0]][1], ".imgmill.png") {
		t.Errorf("stdout:\n%s", stdout)
	}
}

// TestCLISubmitStdin: submit - uploads standard input; with --wait its result is stdin.imgmill.EXT.
func TestCLISubmitStdin(t *testing.T) {
	server := startApp(t)
	img := testimage.Pattern(30, 9)
	data, err := testimage.EncodePNG(img)
	if err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	var stdout, stderr bytes.Buffer
	err = cli.RunIO(t.Context(), []string{"imgmill", "submit", "--server", server, "--wait", "--out", outDir, "-"},
		func(string) string { return "" }, bytes.NewReader(data), &stdout, &stderr)
	if err != nil {
		t.Fatalf("submit -: %v\n%s", err, stderr.String())
	}
	want := filepath.Join(outDir, "stdin.imgmill.png")
	if l := waitLines(t, stdout.String())["-"]; l[1] != want {
		t.Errorf("stdout %q, want - and %s", stdout.String(), want)
	}
	if err := testimage.CheckSwapped(img, readPNG(t, want)); err != nil {
		t.Error(err)
	}
	// Without standard input, or twice, - is a usage mistake.
	if _, _, err := imgmill(t, "submit", "--server", server, "-"); cli.ExitCode(err) != 2 {
		t.Errorf("submit - without standard input: %v, want exit 2", err)
	}
	err = cli.RunIO(t.Context(), []string{"imgmill", "submit", "--server", server, "-", "-"}, func(string) string { return "" },
		bytes.NewReader(data), io.Discard, io.Discard)
	if cli.ExitCode(err) != 2 {
		t.Errorf("submit - -: %v, want exit 2", err)
	}
}
