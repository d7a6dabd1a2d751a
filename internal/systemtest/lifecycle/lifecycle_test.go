package lifecycle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// heavyOp keeps a worker busy on a 4000x4000 image for longer than the test needs (about 12 s of one
// idle core by the master's estimate, under its 30 s cost limit; several times that on a busy machine
// or under -race), so that its task is still processing when it is cancelled or deleted.
var heavyOp = strings.TrimSuffix(strings.Repeat("blur:10,", 16), ",")

// TestCancelAndDeleteInEveryState: the split deployment with one worker process (two slots) holds
// tasks in every state: queued (both slots busy), pending (an upload held open halfway), processing (two
// heavy tasks), finished, failed (an upload that passes the checks but does not decode), cancelled and
// deleted. One task of each state is cancelled and another deleted, through the master, and through the
// frontend's JSON API for a queued and a finished one. Each answer must be the documented one; a deleted
// task's images must be gone from the storage's data directory and its record from the database; the
// worker must stop its heavy work, report no result for it, and go on to the next task; and every other
// task must be untouched: the settled ones' records and stored files byte for byte as before, the queued
// one finished with the right pixels.
func TestCancelAndDeleteInEveryState(t *testing.T) {
	if testing.Short() {
		t.Skip("starts every service as a process")
	}
	d := deploytest.New(t)
	d.StartBackends()
	// The default heartbeat, every 10 s, held by the master meanwhile. Info logs say when it stops a task.
	// No prefetch: with both slots busy, the next tasks must stay queued, not be claimed ahead.
	d.StartWorker("worker", "--log-level", "info", "--prefetch", "0")
	d.StartFrontend()
	d.WaitServing(d.FEAddr)
	ctx, cancel := deploytest.Within(t, 8*time.Minute)
	defer cancel()
	r := &rig{t: t, ctx: ctx, d: d, db: d.Database(), master: "http://" + d.RegisteredMaster(),
		storage: filepath.Join(d.Dir, "storage")}

	// Settled tasks: finished and failed ones, to act on and to leave alone.
	finishedC, finishedD, finishedU := r.upload(pattern(1), ""), r.upload(pattern(2), ""), r.upload(pattern(3), "")
	pubFinishedD, apiFinishedD := r.uploadAPI(pattern(4))
	undecodable := testimage.PaddedPNG(8, 8, 200)
	failedC, failedD, failedU := r.upload(undecodable, ""), r.upload(undecodable, ""), r.upload(undecodable, "")
	for _, id := range []int64{finishedC, finishedD, finishedU, apiFinishedD} {
		r.waitState(id, wire.Finished)
	}
	for _, id := range []int64{failedC, failedD, failedU} {
		r.waitState(id, wire.Failed)
	}

	// Processing: two heavy tasks take both of the worker's slots, so what comes next stays queued.
	heavy := heavyPNG(t)
	processingC, processingD := r.upload(heavy, heavyOp), r.upload(heavy, heavyOp)
	r.waitState(processingC, wire.InProgress)
	r.waitState(processingD, wire.InProgress)
	queuedC, queuedD, queuedU := r.upload(pattern(5), ""), r.upload(pattern(6), ""), r.upload(pattern(7), "")
	pubQueuedC, apiQueuedC := r.uploadAPI(pattern(8))
	cancelledC, cancelledD := r.upload(pattern(9), ""), r.upload(pattern(10), "")
	deletedC, deletedD := r.upload(pattern(11), ""), r.upload(pattern(12), "")
	for _, id := range []int64{cancelledC, cancelledD} {
		r.expect(r.cancel(id), http.StatusOK, `"state":"cancelled"`)
	}
	for _, id := range []int64{deletedC, deletedD} {
		r.expect(r.delete(id), http.StatusNoContent, "")
	}
	// Pending: uploads whose body stops after its first bytes, until released.
	pendingC, releaseC := r.holdUpload(bigPattern(t, 13))
	pendingD, releaseD := r.holdUpload(bigPattern(t, 14))

	before := r.snapshot()
	for _, id := range []int64{queuedC, queuedD, queuedU, apiQueuedC, processingC, processingD, pendingC, pendingD} {
		if task := before.tasks[id]; task.State.Word().Settled() {
			t.Fatalf("task %d is %v before the test acts on it: the heavy tasks finished too soon", id, task.State)
		}
	}

	// Cancel one task of each state: the master's answer per state, as docs/api.md says.
	cancelled := time.Now()
	for _, c := range []struct {
		name   string
		id     int64
		status int
		says   string
	}{
		{"queued", queuedC, http.StatusOK, `"state":"cancelled"`},
		{"pending", pendingC, http.StatusOK, `"state":"cancelled"`},
		{"processing", processingC, http.StatusOK, `"state":"cancelled"`},
		{"finished", finishedC, http.StatusConflict, fmt.Sprintf("Error: task %d already finished", finishedC)},
		{"failed", failedC, http.StatusConflict, fmt.Sprintf("Error: task %d already finished", failedC)},
		{"cancelled", cancelledC, http.StatusOK, `"state":"cancelled"`},
		{"deleted", deletedC, http.StatusNotFound, fmt.Sprintf("Error: no task with id %d", deletedC)},
	} {
		t.Run("cancel "+c.name, func(t *testing.T) { r.expectIn(t, r.cancel(c.id), c.status, c.says) })
	}
	r.expect(r.send(http.MethodPost, "http://"+d.FEAddr+"/api/tasks/"+pubQueuedC+"/cancel", nil), http.StatusOK, `"state":"cancelled"`)
	// Delete one task of each state: 204 for all, again for a deleted one.
	for _, c := range []struct {
		name string
		id   int64
	}{{"queued", queuedD}, {"pending", pendingD}, {"processing", processingD}, {"finished", finishedD},
		{"failed", failedD}, {"cancelled", cancelledD}, {"deleted", deletedD}} {
		t.Run("delete "+c.name, func(t *testing.T) { r.expectIn(t, r.delete(c.id), http.StatusNoContent, "") })
	}
	r.expect(r.send(http.MethodDelete, "http://"+d.FEAddr+"/api/tasks/"+pubFinishedD, nil), http.StatusNoContent, "")
	r.expect(r.send(http.MethodGet, "http://"+d.FEAddr+"/api/tasks/"+pubFinishedD, nil), http.StatusNotFound, "no such task")

	// The held uploads end now: neither may be answered with an id.
	for name, release := range map[string]func() servicetest.Reply{"cancelled": releaseC, "deleted": releaseD} {
		if reply := release(); reply.Status == http.StatusOK || reply.Status < 400 {
			t.Errorf("the upload of the %s pending task was answered %d %q, want a refusal", name, reply.Status, reply.Body)
		} else {
			t.Logf("the upload of the %s pending task was answered %d %q", name, reply.Status, reply.Body)
		}
	}

	// The worker stops both heavy tasks at a heartbeat, reports nothing for them, and goes on: the queued
	// task left alone is claimed and finishes.
	r.waitState(queuedU, wire.Finished)
	deploytest.WaitFor(t, ctx, "the worker's log to say it stopped both heavy tasks", func() bool {
		log := d.Log("worker")
		return !stoppedAt(log, processingC).IsZero() && !stoppedAt(log, processingD).IsZero()
	})
	// Not judged (the machine may be busy), but worth seeing: how soon the worker heard of the cancel.
	t.Logf("the worker stopped the cancelled heavy task %v after the cancel (heartbeat every 10 s)",
		stoppedAt(d.Log("worker"), processingC).Sub(cancelled).Round(time.Millisecond))
	r.waitIdle("worker")

	after := r.snapshot()
	deletedIDs := []int64{queuedD, pendingD, processingD, finishedD, apiFinishedD, failedD, cancelledD, deletedD, deletedC}
	for _, id := range deletedIDs {
		if task, ok := after.tasks[id]; ok {
			t.Errorf("deleted task %d is still listed: %+v", id, task)
		}
		if files := after.filesOf(id); len(files) > 0 {
			t.Errorf("deleted task %d still has files in the storage's data directory: %v", id, files)
		}
		r.expect(r.send(http.MethodGet, fmt.Sprintf("%s/status?id=%d", r.master, id), nil), http.StatusBadRequest,
			fmt.Sprintf("Error: no task with id %d", id))
	}
	for _, id := range []int64{queuedC, apiQueuedC, processingC, cancelledC, pendingC} {
		task := after.tasks[id]
		if task.State != wire.Cancelled {
			t.Errorf("cancelled task %d is %v, want cancelled", id, task.State)
		}
		if _, ok := after.files[key(wire.FinishedImage, id)]; ok {
			t.Errorf("cancelled task %d has a stored result", id)
		}
		r.expect(r.send(http.MethodGet, fmt.Sprintf("%s/get?id=%d", r.master, id), nil), http.StatusNotFound,
			fmt.Sprintf("Error: task %d was cancelled", id))
	}
	// The queued and processing tasks keep their uploads until deleted.
	for _, id := range []int64{queuedC, apiQueuedC, processingC, cancelledC} {
		if after.files[key(wire.WorkingImage, id)] != before.files[key(wire.WorkingImage, id)] {
			t.Errorf("cancelled task %d's upload changed or went", id)
		}
	}
	for _, id := range []int64{processingC, processingD} {
		if attempts := after.tasks[id].Attempts; id == processingC && attempts != 1 {
			t.Errorf("cancelled heavy task %d has %d attempts, want 1 (never claimed again)", id, attempts)
		}
	}

	// Everything else is untouched: the settled tasks (the refused cancels included) as they were,
	// record and files; the queued one finished, pixel-correct.
	acted := slices.Concat(deletedIDs, []int64{queuedC, apiQueuedC, processingC, cancelledC, pendingC, queuedU})
	for id, task := range before.tasks {
		if slices.Contains(acted, id) {
			continue
		}
		if got, ok := after.tasks[id]; !ok || got != task {
			t.Errorf("task %d changed:\nbefore %+v\nafter  %+v", id, task, got)
		}
	}
	for name, sum := range before.files {
		if id := idOfKey(name); slices.Contains(acted, id) {
			continue
		}
		if after.files[name] != sum {
			t.Errorf("stored file %s changed or went", name)
		}
	}
	for name := range after.files {
		if _, ok := before.files[name]; !ok && idOfKey(name) != queuedU {
			t.Errorf("stored file %s appeared", name)
		}
	}
	img := deploytest.FetchFromMaster(t, ctx, d.Master(), queuedU)
	if err := testimage.CheckSwapped(pattern(7).img, img); err != nil {
		t.Errorf("the queued task left alone: %v", err)
	}
}

// rig is the deployment and the calls the test makes.
type rig struct {
	t       *testing.T
	ctx     context.Context
	d       *deploytest.Deployment
	db      *client.Database
	master  string // the master's base URL
	storage string // the storage's data directory
}

// testImage is a small test pattern and its PNG file.
type testImage struct {
	img *image.NRGBA
	png []byte
}

func pattern(seed int64) testImage {
	img := testimage.Pattern(16, seed)
	b, err := testimage.EncodePNG(img)
	if err != nil {
		panic(err)
	}
	return testImage{img, b}
}

// bigPattern is a test pattern of 64 px and its PNG file.
func bigPattern(t *testing.T, seed int64) testImage {
	img := testimage.Pattern(64, seed)
	b, err := testimage.EncodePNG(img)
	if err != nil {
		t.Fatal(err)
	}
	return testImage{img, b}
}

// heavyPNG is a 4000x4000 image of one colour: a few KB to upload, 64 MB to blur.
func heavyPNG(t *testing.T) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, 4000, 4000))
	for i := range img.Pix {
		img.Pix[i] = 0x80
	}
	img.Set(0, 0, color.NRGBA{R: 255, A: 255})
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func (r *rig) send(method, url string, body io.Reader) servicetest.Reply {
	r.t.Helper()
	reply, err := servicetest.Send(r.ctx, r.d.HC, method, url, body)
	if err != nil {
		r.t.Fatalf("%s %s: %v", method, url, err)
	}
	return reply
}

// upload sends an image (a testImage, or bytes) to the master's /new with op and returns the task's id.
func (r *rig) upload(img any, op string) int64 {
	r.t.Helper()
	var data []byte
	switch img := img.(type) {
	case testImage:
		data = img.png
	case []byte:
		data = img
	}
	reply := r.send(http.MethodPost, r.master+"/new?op="+op, bytes.NewReader(data))
	id, err := strconv.ParseInt(reply.Body, 10, 64)
	if reply.Status != http.StatusOK || err != nil {
		r.t.Fatalf("POST /new: %d %q", reply.Status, reply.Body)
	}
	return id
}

// uploadAPI uploads through the frontend's JSON API and returns the public id and the internal one
// (the newest task: the test uploads one at a time).
func (r *rig) uploadAPI(img testImage) (string, int64) {
	r.t.Helper()
	reply := r.send(http.MethodPost, "http://"+r.d.FEAddr+"/api/tasks", bytes.NewReader(img.png))
	var created wire.TaskCreated
	if reply.Status != http.StatusCreated || json.Unmarshal([]byte(reply.Body), &created) != nil {
		r.t.Fatalf("POST /api/tasks: %d %q", reply.Status, reply.Body)
	}
	tasks, err := deploytest.ListTasks(r.ctx, r.db)
	if err != nil || len(tasks) == 0 {
		r.t.Fatalf("list tasks: %d, %v", len(tasks), err)
	}
	return created.ID, tasks[len(tasks)-1].ID
}

// heldPart is how much of a held upload is sent at first: more than the master reads of an image
// before it creates the task (512 bytes, where every PNG header is).
const heldPart = 600

// holdUpload starts an upload to the master whose body stops after its first heldPart bytes (the
// master has read its header and created the task, pending) and returns the task's id and a function
// that sends the rest and returns the answer.
func (r *rig) holdUpload(img testImage) (int64, func() servicetest.Reply) {
	r.t.Helper()
	if len(img.png) < 2*heldPart {
		r.t.Fatalf("an image of %d bytes is too small to hold its upload halfway", len(img.png))
	}
	known, err := deploytest.ListTasks(r.ctx, r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	pr, pw := io.Pipe()
	replies := make(chan servicetest.Reply, 1)
	go func() {
		reply, err := servicetest.Send(r.ctx, r.d.HC, http.MethodPost, r.master+"/new", pr)
		if err != nil {
			reply = servicetest.Reply{Body: err.Error()}
		}
		pr.CloseWithError(io.ErrClosedPipe) // should the master answer before reading it all
		replies <- reply
	}()
	if _, err := pw.Write(img.png[:heldPart]); err != nil {
		r.t.Fatal(err)
	}
	var id int64
	deploytest.WaitFor(r.t, r.ctx, "the held upload's pending task", func() bool {
		tasks, err := deploytest.ListTasks(r.ctx, r.db)
		if err == nil && len(tasks) > len(known) && tasks[len(tasks)-1].Pending {
			id = tasks[len(tasks)-1].ID
			return true
		}
		return false
	})
	return id, func() servicetest.Reply {
		pw.Write(img.png[heldPart:])
		pw.Close()
		return <-replies
	}
}

func (r *rig) cancel(id int64) servicetest.Reply {
	return r.send(http.MethodPost, fmt.Sprintf("%s/cancel?id=%d", r.master, id), nil)
}

func (r *rig) delete(id int64) servicetest.Reply {
	return r.send(http.MethodDelete, fmt.Sprintf("%s/task?id=%d", r.master, id), nil)
}

func (r *rig) expect(reply servicetest.Reply, status int, says string) {
	r.t.Helper()
	r.expectIn(r.t, reply, status, says)
}

func (r *rig) expectIn(t *testing.T, reply servicetest.Reply, status int, says string) {
	t.Helper()
	if reply.Status != status || !strings.Contains(reply.Body, says) {
		t.Errorf("answer %d %q, want %d with %q", reply.Status, reply.Body, status, says)
	}
}

// waitState waits until task id is in state (listed by the database).
func (r *rig) waitState(id int64, state wire.State) {
	r.t.Helper()
	deploytest.WaitFor(r.t, r.ctx, fmt.Sprintf("task %d %v", id, state), func() bool {
		task, err := r.db.GetByID(r.ctx, id)
		return err == nil && task.State == state
	})
}

// waitIdle waits until the process name has used less than a tenth of a core over a second: its image
// work has stopped. The heavy tasks alone would keep both of the worker's slots busy for minutes.
func (r *rig) waitIdle(name string) {
	r.t.Helper()
	pid := r.d.PID(name)
	deploytest.WaitFor(r.t, r.ctx, name+" idle", func() bool {
		before, err := cpuTime(pid)
		if err != nil {
			r.t.Fatal(err)
		}
		time.Sleep(time.Second)
		after, err := cpuTime(pid)
		if err != nil {
			r.t.Fatal(err)
		}
		return after-before < 100*time.Millisecond
	})
}

// cpuTime is the CPU time process pid has used, user and system.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	// utime and stime, the 14th and 15th fields, in clock ticks (100 a second on Linux).
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// stoppedAt is when the worker's log says it stopped task id as cancelled, or the zero time.
func stoppedAt(log string, id int64) time.Time {
	for line := range strings.Lines(log) {
		if strings.Contains(line, `msg="stopped: the task was cancelled"`) && strings.Contains(line, fmt.Sprintf(" task=%d ", id)) {
			stamp, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
			if at, err := time.Parse(time.RFC3339Nano, stamp); err == nil {
				return at
			}
		}
	}
	return time.Time{}
}

// snapshot is what the deployment holds: every task's record, and every stored image's digest by its
// key ("working/12").
type snapshot struct {
	tasks map[int64]wire.Task
	files map[string][sha256.Size]byte
}

func (r *rig) snapshot() snapshot {
	r.t.Helper()
	s := snapshot{tasks: map[int64]wire.Task{}, files: map[string][sha256.Size]byte{}}
	tasks, err := deploytest.ListTasks(r.ctx, r.db)
	if err != nil {
		r.t.Fatal(err)
	}
	for _, task := range tasks {
		s.tasks[task.ID] = task
	}
	// The storage serving the directory owns it: its blobs (files and segments) are read from a copy.
	copied := filepath.Join(r.t.TempDir(), "blobs")
	if _, _, err := fileblob.Copy(r.ctx, r.storage, copied); err != nil {
		r.t.Fatal(err)
	}
	store, err := fileblob.Open(copied)
	if err != nil {
		r.t.Fatal(err)
	}
	defer store.Close()
	for e, err := range store.List(r.ctx, "", "") {
		if err != nil {
			r.t.Fatal(err)
		}
		b, err := store.Open(r.ctx, e.Key)
		if err != nil {
			r.t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, b)
		b.Close()
		if err != nil {
			r.t.Fatal(err)
		}
		s.files[e.Key] = [sha256.Size]byte(h.Sum(nil))
	}
	return s
}

// filesOf names the stored files of task id.
func (s snapshot) filesOf(id int64) []string {
	var names []string
	for name := range s.files {
		if idOfKey(name) == id {
			names = append(names, name)
		}
	}
	return names
}

func key(state string, id int64) string { return state + "/" + strconv.FormatInt(id, 10) }

// idOfKey is the task id a stored file's path ends with, or -1.
func idOfKey(name string) int64 {
	id, err := strconv.ParseInt(name[strings.LastIndexByte(name, '/')+1:], 10, 64)
	if err != nil {
		return -1
	}
	return id
}
