package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// Workload is a set of test images submitted through frontends and masters, and what was answered.
type Workload struct {
	originals []*image.NRGBA
	encoded   [][]byte

	mu       sync.Mutex
	answered map[int64]int // internal id (uploads through the master) -> image index
	// Uploads through a frontend are answered with a public id; their internal id is never known.
	answeredPublic map[string]int // public id -> image index
	refused        atomic.Int64
}

// NewWorkload makes images distinct test patterns, 8 to 40 pixels square.
func NewWorkload(t testing.TB, images int) *Workload {
	t.Helper()
	w := &Workload{originals: make([]*image.NRGBA, images), encoded: make([][]byte, images),
		answered: map[int64]int{}, answeredPublic: map[string]int{}}
	for i := range images {
		w.originals[i] = testimage.Pattern(8+i%33, int64(i))
		var err error
		if w.encoded[i], err = testimage.EncodePNG(w.originals[i]); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// Accepted is how many images were acknowledged.
func (w *Workload) Accepted() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.answered) + len(w.answeredPublic)
}

// Submit uploads every image from clients goroutines, half through the frontends at feAddrs (moving on
// to the next one after a refusal) and half through m, retrying refusals until each is accepted or ctx
// ends. The returned channel is closed when all are done.
func (w *Workload) Submit(t testing.TB, ctx context.Context, hc *http.Client, feAddrs []string, m *client.Master, clients int) <-chan struct{} {
	var next atomic.Int64
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			fe := c
			for {
				i := int(next.Add(1) - 1)
				if i >= len(w.encoded) {
					return
				}
				retry := backoff.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond}
				for {
					var err error
					if (i+c)%2 == 0 {
						var pub string
						if pub, err = SubmitViaFrontend(ctx, hc, feAddrs[fe%len(feAddrs)], w.encoded[i]); err == nil {
							w.Acknowledged(t, i, 0, pub)
						} else {
							fe++
						}
					} else {
						var id int64
						if id, err = m.New(ctx, bytes.NewReader(w.encoded[i]), int64(len(w.encoded[i]))); err == nil {
							w.Acknowledged(t, i, id, "")
						}
					}
					if err == nil {
						break
					}
					w.refused.Add(1)
					if ctx.Err() != nil {
						t.Errorf("image %d never accepted: %v", i, err)
						return
					}
					backoff.Sleep(ctx, retry.Next())
				}
			}
		})
	}
	submitted := make(chan struct{})
	go func() { wg.Wait(); close(submitted) }()
	return submitted
}

// Verify checks that every image was accepted, and every accepted one finished with a pixel-correct
// result; that every stored result was written by the claim that finished its task (no stale worker
// overwrote it); and that no task is stuck.
func (w *Workload) Verify(t testing.TB, ctx context.Context, hc *http.Client, feAddr string, db *client.Database, st *client.Storage) {
	t.Helper()
	if n := w.Accepted(); n != len(w.encoded) {
		t.Fatalf("%d of %d images accepted", n, len(w.encoded))
	}
	w.VerifyAnswered(t, ctx, hc, feAddr, db, st)
}

// VerifyAnswered is Verify without the check that every image was accepted: every upload that was
// answered with an id finished with a pixel-correct result written by the claim that finished it, and
// no task is stuck.
func (w *Workload) VerifyAnswered(t testing.TB, ctx context.Context, hc *http.Client, feAddr string, db *client.Database, st *client.Storage) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	// Uploads through a frontend are checked through it, by public id, as their users would: finished,
	// and the result pixel-correct. Their internal id is unknown, so the comparison of the stored
	// result's lease token with the finishing claim's (below) is skipped for them; the uploads through
	// the master, half of all, are checked for it.
	for pub, i := range w.answeredPublic {
		WaitFor(t, ctx, fmt.Sprintf("task %s finished at the frontend", pub), func() bool {
			st, err := FrontendStatus(ctx, hc, feAddr, pub)
			if err == nil && st.State == wire.FailedWord {
				t.Fatalf("acknowledged task %s failed: %s", pub, st.Error)
			}
			return err == nil && st.State == wire.FinishedWord
		})
		result, err := GetPNG(ctx, hc, "http://"+feAddr+"/getImage?id="+pub)
		if err != nil {
			t.Fatalf("result of task %s: %v", pub, err)
		}
		if err := testimage.CheckSwapped(w.originals[i], result); err != nil {
			t.Errorf("task %s: %v", pub, err)
		}
	}

	for id, i := range w.answered {
		var task wire.Task
		WaitFor(t, ctx, fmt.Sprintf("task %d finished", id), func() bool {
			var err error
			task, err = db.GetByID(ctx, id)
			if err == nil && task.State == wire.Failed {
				t.Fatalf("acknowledged task %d failed: %s", id, task.Error)
			}
			return err == nil && task.State == wire.Finished
		})
		img, err := st.GetImage(ctx, id, wire.FinishedImage)
		if err != nil {
			t.Fatalf("finished image of task %d: %v", id, err)
		}
		result, err := png.Decode(img)
		img.Close()
		if err != nil {
			t.Fatalf("decode result of task %d: %v", id, err)
		}
		if err := testimage.CheckSwapped(w.originals[i], result); err != nil {
			t.Errorf("task %d: %v", id, err)
		}
		if img.Token != task.Token {
			t.Errorf("task %d finished by token %d but its stored result was written by token %d", id, task.Token, img.Token)
		}
	}

	// Nothing stuck: every task ends finished, or failed when its upload was never acknowledged (an
	// acknowledged frontend upload that failed was caught above by its /status).
	WaitFor(t, ctx, "no queued or processing tasks", func() bool {
		tasks, err := ListTasks(ctx, db)
		if err != nil {
			return false
		}
		for _, task := range tasks {
			switch task.State {
			case wire.NotStarted, wire.InProgress:
				return false
			case wire.Failed:
				if _, ok := w.answered[task.ID]; ok {
					t.Fatalf("acknowledged task %d failed: %s", task.ID, task.Error)
				}
			}
		}
		return true
	})
}

// Len is the number of images.
func (w *Workload) Len() int { return len(w.encoded) }

// Encoded is image i as a PNG file.
func (w *Workload) Encoded(i int) []byte { return w.encoded[i] }

// Acknowledged records that image i was accepted as task id (through a master) or pub (the public id a
// frontend answered, when not ""). An id answered twice is an error.
func (w *Workload) Acknowledged(t testing.TB, i int, id int64, pub string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if pub != "" {
		if prev, dup := w.answeredPublic[pub]; dup {
			t.Errorf("public id %s answered for images %d and %d", pub, prev, i)
		}
		w.answeredPublic[pub] = i
		return
	}
	if prev, dup := w.answered[id]; dup {
		t.Errorf("id %d answered for images %d and %d", id, prev, i)
	}
	w.answered[id] = i
}

// Summary says how many images were accepted, how many of them through a frontend, and how many
// refused attempts were retried.
func (w *Workload) Summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%d images accepted (%d through a frontend), %d refused attempts retried",
		len(w.answered)+len(w.answeredPublic), len(w.answeredPublic), w.refused.Load())
}
