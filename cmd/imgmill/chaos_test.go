package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/testimage"
)

// TestChaos runs the split deployment as real processes, submits 500 images through the frontend and the
// master while every service in turn is killed with SIGKILL and restarted, and then checks that every
// upload that was answered with an id is finished and pixel-correct, that no task is stuck, and that
// every stored result was written by the claim that finished the task (no stale worker overwrote it).
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test is not run with -short")
	}
	const images = 500
	d := newDeployment(t)
	// Short leases and pending timeouts so crashed claims and uploads are recovered within the test;
	// attempts enough that a task survives several crashes of the worker holding it.
	d.dbArgs = []string{"--lease", "3s", "--pending-timeout", "4s", "--max-attempts", "10"}
	d.startBackends()
	workerFlags := []string{"--heartbeat", "500ms", "--drain", "2s", "--wait", "2s"}
	d.startWorker("worker-1", workerFlags...)
	d.startWorker("worker-2", workerFlags...)
	d.startFrontend()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	waitHealthy(t, ctx, d.hc, d.feAddr)

	w := newWorkload(t, images)
	submitted := w.submit(t, ctx, d.hc, []string{d.feAddr}, d.master(), 8)

	// Kill every service in turn, at least one full round and until every image was accepted.
	victims := []string{"worker-1", "master", "database", "storage", "kv", "frontend", "worker-2"}
	kills := 0
	rng := rand.New(rand.NewPCG(1, 2))
chaos:
	for round := 0; ; round++ {
		for _, name := range victims {
			if round > 0 && isDone(submitted) {
				break chaos
			}
			time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
			d.kill(name)
			kills++
			time.Sleep(time.Duration(50+rng.IntN(250)) * time.Millisecond)
			if err := d.restart(name); err != nil {
				t.Fatalf("restart %s: %v", name, err)
			}
		}
	}
	<-submitted
	t.Logf("chaos: %d images accepted (%d through the frontend), %d refused attempts retried, %d kills",
		w.accepted(), len(w.answeredPublic), w.refused.Load(), kills)
	w.verify(t, ctx, d.hc, d.feAddr, d.database(), d.storage())
}

// workload is a set of test images submitted through frontends and masters, and what was answered.
type workload struct {
	originals []*image.NRGBA
	encoded   [][]byte

	mu       sync.Mutex
	answered map[int64]int // internal id (uploads through the master) -> image index
	// Uploads through a frontend are answered with a public id; their internal id is never known.
	answeredPublic map[string]int // public id -> image index
	refused        atomic.Int64
}

func newWorkload(t *testing.T, images int) *workload {
	t.Helper()
	w := &workload{originals: make([]*image.NRGBA, images), encoded: make([][]byte, images),
		answered: map[int64]int{}, answeredPublic: map[string]int{}}
	for i := range images {
		w.originals[i] = testimage.Pattern(8+i%33, int64(i))
		var err error
		if w.encoded[i], err = imageop.EncodePNG(w.originals[i]); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func (w *workload) accepted() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.answered) + len(w.answeredPublic)
}

// submit uploads every image from clients goroutines, half through the frontends at feAddrs (moving on
// to the next one after a refusal) and half through m, retrying refusals until each is accepted or ctx
// ends. The returned channel is closed when all are done.
func (w *workload) submit(t *testing.T, ctx context.Context, hc *http.Client, feAddrs []string, m *client.Master, clients int) <-chan struct{} {
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
						if pub, err = submitViaFrontend(ctx, hc, feAddrs[fe%len(feAddrs)], w.encoded[i]); err == nil {
							w.mu.Lock()
							if prev, dup := w.answeredPublic[pub]; dup {
								t.Errorf("public id %s answered for images %d and %d", pub, prev, i)
							}
							w.answeredPublic[pub] = i
							w.mu.Unlock()
						} else {
							fe++
						}
					} else {
						var id int64
						if id, err = m.New(ctx, bytes.NewReader(w.encoded[i]), int64(len(w.encoded[i]))); err == nil {
							w.mu.Lock()
							if prev, dup := w.answered[id]; dup {
								t.Errorf("id %d answered for images %d and %d", id, prev, i)
							}
							w.answered[id] = i
							w.mu.Unlock()
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

// verify checks that every image was accepted, and every accepted one finished with a pixel-correct
// result; that every stored result was written by the claim that finished its task (no stale worker
// overwrote it); and that no task is stuck.
func (w *workload) verify(t *testing.T, ctx context.Context, hc *http.Client, feAddr string, db *client.Database, st *client.Storage) {
	t.Helper()
	if n := w.accepted(); n != len(w.encoded) {
		t.Fatalf("%d of %d images accepted", n, len(w.encoded))
	}
	// Uploads through a frontend are checked through it, by public id, as their users would: finished,
	// and the result pixel-correct. Their internal id is unknown, so the comparison of the stored
	// result's lease token with the finishing claim's (below) is skipped for them; the uploads through
	// the master, half of all, are checked for it.
	for pub, i := range w.answeredPublic {
		waitFor(t, ctx, fmt.Sprintf("task %s finished at the frontend", pub), func() bool {
			st, err := frontendStatus(ctx, hc, feAddr, pub)
			if err == nil && st.State == "failed" {
				t.Fatalf("acknowledged task %s failed: %s", pub, st.Error)
			}
			return err == nil && st.State == "finished"
		})
		result, err := getPNG(ctx, hc, "http://"+feAddr+"/getImage?id="+pub)
		if err != nil {
			t.Fatalf("result of task %s: %v", pub, err)
		}
		if err := imageop.CheckSwapped(w.originals[i], result); err != nil {
			t.Errorf("task %s: %v", pub, err)
		}
	}

	for id, i := range w.answered {
		var task client.Task
		waitFor(t, ctx, fmt.Sprintf("task %d finished", id), func() bool {
			var err error
			task, err = db.GetByID(ctx, id)
			if err == nil && task.State == client.StateFailed {
				t.Fatalf("acknowledged task %d failed: %s", id, task.Error)
			}
			return err == nil && task.State == client.StateFinished
		})
		img, err := st.GetImage(ctx, id, client.Finished)
		if err != nil {
			t.Fatalf("finished image of task %d: %v", id, err)
		}
		result, err := png.Decode(img)
		img.Close()
		if err != nil {
			t.Fatalf("decode result of task %d: %v", id, err)
		}
		if err := imageop.CheckSwapped(w.originals[i], result); err != nil {
			t.Errorf("task %d: %v", id, err)
		}
		if img.Token != task.Token {
			t.Errorf("task %d finished by token %d but its stored result was written by token %d", id, task.Token, img.Token)
		}
	}

	// Nothing stuck: every task ends finished, or failed when its upload was never acknowledged (an
	// acknowledged frontend upload that failed was caught above by its /status).
	waitFor(t, ctx, "no queued or processing tasks", func() bool {
		tasks, err := listTasks(ctx, db)
		if err != nil {
			return false
		}
		for _, task := range tasks {
			switch task.State {
			case client.StateNotStarted, client.StateInProgress:
				return false
			case client.StateFailed:
				if _, ok := w.answered[task.ID]; ok {
					t.Fatalf("acknowledged task %d failed: %s", task.ID, task.Error)
				}
			}
		}
		return true
	})
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func listTasks(ctx context.Context, db *client.Database) ([]client.Task, error) {
	list, err := db.List(ctx)
	if err != nil {
		return nil, err
	}
	var tasks []client.Task
	sc := bufio.NewScanner(strings.NewReader(list))
	for sc.Scan() {
		var task client.Task
		if err := json.Unmarshal(sc.Bytes(), &task); err != nil {
			return nil, fmt.Errorf("list line %q: %w", sc.Text(), err)
		}
		tasks = append(tasks, task)
	}
	return tasks, sc.Err()
}
