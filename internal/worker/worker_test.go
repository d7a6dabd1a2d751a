package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	_ "image/png" // decoder for results
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/worker"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startWorker runs worker.Run until the test ends (or stop is called) and checks that it returns
// promptly once cancelled.
func startWorker(t *testing.T, cfg worker.Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan error, 1)
	go func() { returned <- worker.Run(ctx, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-returned:
				if err != nil {
					t.Errorf("worker.Run returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("worker.Run did not return within 10s of its context ending")
				// Leave it: goleak will report the stuck goroutines.
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

type upload struct {
	name string
	data []byte
	// want is the expected output image; nil means check with imageop.CheckSwapped against orig.
	orig image.Image
	want image.Image
}

func decode(t *testing.T, what string, b []byte) (image.Image, string) {
	t.Helper()
	img, format, err := image.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("decode %s: %v", what, err)
	}
	return img, format
}

func pngUpload(t *testing.T, name string, img image.Image) upload {
	t.Helper()
	data := servicetest.EncodePNG(t, img)
	orig, _ := decode(t, name, data)
	return upload{name: name, data: data, orig: orig}
}

// palettedImage is a paletted image whose palette has opaque, translucent and transparent entries.
func palettedImage(size int) *image.Paletted {
	pal := color.Palette{
		color.NRGBA{R: 250, G: 10, B: 30, A: 255},
		color.NRGBA{R: 20, G: 240, B: 60, A: 255},
		color.NRGBA{R: 90, G: 30, B: 200, A: 255},
		color.NRGBA{R: 200, G: 100, B: 0, A: 128},
		color.NRGBA{R: 10, G: 60, B: 140, A: 40},
		color.NRGBA{R: 0, G: 0, B: 0, A: 0},
		color.NRGBA{R: 255, G: 255, B: 0, A: 255},
	}
	m := image.NewPaletted(image.Rect(0, 0, size, size), pal)
	for y := range size {
		for x := range size {
			m.SetColorIndex(x, y, uint8((x/3+y*2)%len(pal)))
		}
	}
	return m
}

// jpegUpload encodes an opaque version of a test pattern as JPEG; the expected output is the decoded JPEG
// with red and green swapped.
func jpegUpload(t *testing.T, size int, seed int64) upload {
	t.Helper()
	src := imageop.TestPattern(size, seed)
	for i := 3; i < len(src.Pix); i += 4 {
		src.Pix[i] = 255
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, src, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	decoded, format := decode(t, "jpeg", buf.Bytes())
	if format != "jpeg" {
		t.Fatalf("encoded JPEG decodes as %s", format)
	}
	return upload{name: "jpeg", data: buf.Bytes(), want: imageop.SwapRedGreen(decoded)}
}

func gifUpload(t *testing.T) upload {
	t.Helper()
	var buf bytes.Buffer
	if err := gif.Encode(&buf, palettedImage(30), nil); err != nil {
		t.Fatal(err)
	}
	orig, _ := decode(t, "gif", buf.Bytes())
	return upload{name: "gif", data: buf.Bytes(), orig: orig}
}

// samePixels compares two images pixel by pixel in non-premultiplied 8-bit terms.
func samePixels(want, got image.Image) error {
	if want.Bounds() != got.Bounds() {
		return fmt.Errorf("bounds %v, want %v", got.Bounds(), want.Bounds())
	}
	b := want.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			w := color.NRGBAModel.Convert(want.At(x, y))
			g := color.NRGBAModel.Convert(got.At(x, y))
			if w != g {
				return fmt.Errorf("pixel (%d,%d) = %v, want %v", x, y, g, w)
			}
		}
	}
	return nil
}

// waitFinished polls the database until task id is finished.
func waitFinished(ctx context.Context, t *testing.T, s *servicetest.Stack, id int64) {
	t.Helper()
	var task client.Task
	finished := servicetest.Poll(ctx, func() bool {
		var err error
		task, err = s.Database.GetByID(ctx, id)
		if err != nil {
			t.Fatalf("database GetByID(%d): %v", id, err)
		}
		return task.State == client.StateFinished
	})
	if !finished {
		t.Fatalf("task %d not finished in time (state %d, attempts %d)", id, task.State, task.Attempts)
	}
}

func TestWorkerProcessesUploads(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	stop := startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 2, Wait: 2 * time.Second, Logger: servicetest.Discard})

	// An image that passes the master's sniffing but does not decode: the worker must survive it.
	bad := []byte("\x89PNG\r\n\x1a\n this is not really a PNG")
	badID, err := s.Master.New(ctx, bytes.NewReader(bad), int64(len(bad)))
	if err != nil {
		t.Fatalf("upload bad image: %v", err)
	}

	uploads := []upload{
		pngUpload(t, "pattern 1", imageop.TestPattern(1, 1)),
		pngUpload(t, "pattern 5", imageop.TestPattern(5, 2)),
		pngUpload(t, "pattern 64", imageop.TestPattern(64, 3)),
		pngUpload(t, "pattern 257", imageop.TestPattern(257, 4)),
		pngUpload(t, "paletted", palettedImage(37)),
		jpegUpload(t, 50, 5),
		gifUpload(t),
	}
	ids := make([]int64, len(uploads))
	for i, u := range uploads {
		if i%2 == 0 {
			ids[i], err = s.Master.New(ctx, bytes.NewReader(u.data), int64(len(u.data)))
		} else {
			ids[i], err = s.Master.New(ctx, io.MultiReader(bytes.NewReader(u.data)), -1) // unknown length
		}
		if err != nil {
			t.Fatalf("upload %s: %v", u.name, err)
		}
	}

	for i, u := range uploads {
		t.Run(u.name, func(t *testing.T) {
			id := ids[i]
			waitFinished(ctx, t, s, id)
			out, ok := s.StoredImage(t, id, client.Finished)
			if !ok {
				t.Fatalf("task %d finished but storage has no finished image", id)
			}
			if format, ok := imageop.Sniff(out); !ok || format != "png" {
				t.Fatalf("finished image starts %q, want a PNG", out[:min(len(out), 16)])
			}
			result, format := decode(t, "result", out)
			if format != "png" {
				t.Fatalf("finished image decodes as %s, want png", format)
			}
			if u.want != nil {
				if err := samePixels(u.want, result); err != nil {
					t.Errorf("result is not the swapped decoded input: %v", err)
				}
			} else if err := imageop.CheckSwapped(u.orig, result); err != nil {
				t.Errorf("result not swapped: %v", err)
			}
			// The input is kept as it was.
			resp, err := s.Storage.GetImage(t.Context(), id, client.Working)
			if err != nil {
				t.Fatalf("working image: %v", err)
			}
			in, _ := io.ReadAll(resp)
			resp.Close()
			if !bytes.Equal(in, u.data) {
				t.Errorf("working image changed")
			}
			// The master serves what storage holds.
			if ready, err := s.Master.IsReady(t.Context(), id); err != nil || !ready {
				t.Errorf("master IsReady(%d) = %v, %v; want true", id, ready, err)
			}
			got, err := s.Master.Get(t.Context(), id)
			if err != nil {
				t.Fatalf("master Get(%d): %v", id, err)
			}
			b, _ := io.ReadAll(got)
			got.Close()
			if !bytes.Equal(b, out) {
				t.Errorf("master /get differs from storage's finished image")
			}
		})
	}

	// The undecodable image was claimed, failed and left in progress (its lease will hand it out again);
	// it never gets a result.
	task, err := s.Database.GetByID(ctx, badID)
	if err != nil {
		t.Fatal(err)
	}
	if task.State != client.StateInProgress || task.Attempts != 1 {
		t.Errorf("undecodable task = %+v, want in progress after 1 attempt", task)
	}
	if _, ok := s.StoredImage(t, badID, client.Finished); ok {
		t.Errorf("undecodable task %d has a finished image", badID)
	}

	// Cancelling stops the worker promptly even while its loops wait in long polls.
	start := time.Now()
	stop()
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("worker took %v to stop", el)
	}
}

func TestWorkerPicksUpTaskWhileIdle(t *testing.T) {
	// Long polls are held at the database; a task appearing later is taken at once, not after the wait.
	s := servicetest.NewStack(t, servicetest.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	startWorker(t, worker.Config{Master: s.Master, Storage: s.Storage, Concurrency: 1, Wait: 30 * time.Second, Logger: servicetest.Discard})
	time.Sleep(300 * time.Millisecond) // let the loop settle into its long poll

	img := imageop.TestPattern(20, 9)
	start := time.Now()
	id, err := s.Master.New(ctx, bytes.NewReader(servicetest.EncodePNG(t, img)), -1)
	if err != nil {
		t.Fatal(err)
	}
	waitFinished(ctx, t, s, id)
	if el := time.Since(start); el > 15*time.Second {
		t.Errorf("task finished after %v: the waiting worker was not woken", el)
	}
	out, ok := s.StoredImage(t, id, client.Finished)
	if !ok {
		t.Fatal("no finished image")
	}
	result, _ := decode(t, "result", out)
	if err := imageop.CheckSwapped(img, result); err != nil {
		t.Error(err)
	}
}

// fakeMaster answers every claim at once with status and body (ignoring wait, like the reference master)
// and counts the claims.
func fakeMaster(t *testing.T, status int, body string) (*httptest.Server, *atomic.Int64, *atomic.Int64) {
	t.Helper()
	var claims, others atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/getNewTask" {
			claims.Add(1)
			httpapi.WriteText(w, status, body)
			return
		}
		others.Add(1)
		httpapi.WriteText(w, http.StatusNotFound, "Error: unexpected")
	}))
	t.Cleanup(srv.Close)
	return srv, &claims, &others
}

func TestWorkerDoesNotSpin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"no task at once", http.StatusBadRequest, servicetest.NoTaskReply},
		{"master failing", http.StatusInternalServerError, "Error: internal error"},
		{"database unavailable", http.StatusBadGateway, "Error: database unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, claims, others := fakeMaster(t, tc.status, tc.body)
			hc := servicetest.NewHTTPClient(t)
			ep := client.Static(servicetest.Addr(srv.URL))
			const loops = 2
			stop := startWorker(t, worker.Config{
				Master: client.NewMaster(hc, ep), Storage: client.NewStorage(hc, ep),
				Concurrency: loops, Logger: servicetest.Discard, // default Wait: the fake ignores it
			})
			time.Sleep(time.Second)
			stop()
			n := claims.Load()
			t.Logf("%d claims in 1s by %d loops", n, loops)
			if n < loops {
				t.Errorf("%d claims, want at least one per loop (%d)", n, loops)
			}
			if n >= 30 {
				t.Errorf("%d claims in 1s: the worker spins on an immediate %d", n, tc.status)
			}
			if o := others.Load(); o != 0 {
				t.Errorf("%d requests other than claims", o)
			}
		})
	}
}

func TestWorkerSendsWait(t *testing.T) {
	// The claim asks the master to hold it (long poll) for the configured wait.
	var mu sync.Mutex
	var waits []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		waits = append(waits, r.URL.Query().Get("wait"))
		mu.Unlock()
		httpapi.WriteText(w, http.StatusBadRequest, servicetest.NoTaskReply)
	}))
	t.Cleanup(srv.Close)
	hc := servicetest.NewHTTPClient(t)
	ep := client.Static(servicetest.Addr(srv.URL))
	stop := startWorker(t, worker.Config{Master: client.NewMaster(hc, ep), Storage: client.NewStorage(hc, ep),
		Concurrency: 1, Wait: 7 * time.Second, Logger: servicetest.Discard})
	servicetest.PollFor(5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(waits) > 0
	})
	stop()
	mu.Lock()
	defer mu.Unlock()
	if len(waits) == 0 {
		t.Fatal("no claim reached the master")
	}
	for _, w := range waits {
		if d, err := time.ParseDuration(w); err != nil || d != 7*time.Second {
			t.Errorf("claim wait=%q, want 7s", w)
		}
	}
}
