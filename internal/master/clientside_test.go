package master_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// clientSide is the master's API for its clients: what the frontend calls (frontend.Master), and the
// rest of *client.Master's client methods, which master.Local offers in-process too.
type clientSide interface {
	frontend.Master
	New(ctx context.Context, r io.Reader, size int64) (int64, error)
	WaitReady(ctx context.Context, id int64, wait time.Duration) (bool, error)
}

var (
	_ clientSide = (*client.Master)(nil)
	_ clientSide = (*master.Local)(nil)
)

// TestClientSideHTTP runs the client-side contract against the HTTP client of a master server.
func TestClientSideHTTP(t *testing.T) {
	testClientSide(t, func(f *clientFixture, svc *master.Service, url string) clientSide {
		return client.NewMaster(f.HTTP, client.Static(servicetest.Addr(url)))
	})
}

// TestClientSideLocal runs the same contract against master.Local of a master server.
func TestClientSideLocal(t *testing.T) {
	testClientSide(t, func(_ *clientFixture, svc *master.Service, _ string) clientSide {
		return svc.Local()
	})
}

// clientFixture is a master service over a real database and storage (servicetest.Stack's), served over
// HTTP, with its client side under test (Client) and its worker side in-process (Worker) to finish
// tasks.
type clientFixture struct {
	*servicetest.Stack
	Client clientSide
	Worker *master.Local
	db     *databaseSwitch
}

func newClientFixture(t *testing.T, limits master.Limits, side func(*clientFixture, *master.Service, string) clientSide) *clientFixture {
	t.Helper()
	db := &databaseSwitch{}
	f := &clientFixture{Stack: servicetest.NewStack(t, servicetest.Options{WrapDatabase: db.wrap}), db: db}
	svc, err := master.NewService(master.Config{Database: f.Database, Storage: f.Storage, Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	url := servicetest.Serve(t, svc.Handler()).URL
	f.Worker = svc.Local()
	f.Client = side(f, svc, url)
	return f
}

// upload uploads img through the client side and returns its id.
func (f *clientFixture) upload(t *testing.T, img []byte, p client.UploadParams) client.Uploaded {
	t.Helper()
	up, err := f.Client.Upload(t.Context(), bytes.NewReader(img), int64(len(img)), p)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	return up
}

// finish claims task id through the worker side, stores result for it and finishes it.
func (f *clientFixture) finish(t *testing.T, id int64, result []byte) {
	t.Helper()
	task, err := f.Worker.GetNewTask(t.Context(), 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim = %+v, %v: want task %d", task, err, id)
	}
	if err := f.Storage.SendResult(t.Context(), id, task.Token, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatalf("store the result: %v", err)
	}
	if err := f.Worker.FinishTask(t.Context(), id, task.Token); err != nil {
		t.Fatalf("finish: %v", err)
	}
}

// expectImage reads img whole and checks its bytes and type.
func expectImage(t *testing.T, what string, img *client.Image, err error, want []byte) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer img.Close()
	got, err := io.ReadAll(img)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s: read %d bytes, %v; want the %d stored", what, len(got), err, len(want))
	}
	if img.ContentType != "image/png" || (img.Size >= 0 && img.Size != int64(len(want))) || img.Token != 0 {
		t.Errorf("%s: type %q, size %d, token %d; want image/png, %d bytes (or unknown), no token", what, img.ContentType,
			img.Size, img.Token, len(want))
	}
}

// expectTransient checks that err is a 503 with Retry-After whose message starts with msg.
func expectTransient(t *testing.T, what string, err error, msg string) {
	t.Helper()
	expectRefusal(t, what, err, http.StatusServiceUnavailable, msg)
	var e *httpapi.Error
	if !fault.IsTransient(err) || !errors.As(err, &e) || e.RetryAfter <= 0 {
		t.Errorf("%s: %v is not transient with a Retry-After", what, err)
	}
}

// expectCounts checks the database's count of tasks by state.
func (f *clientFixture) expectCounts(t *testing.T, what string, want wire.Stats) {
	t.Helper()
	if st, err := f.Database.Stats(t.Context()); err != nil || st != want {
		t.Errorf("%s: database counts %+v, %v; want %+v", what, st, err, want)
	}
}

// testClientSide is the contract of the master's client side, whatever the transport: side returns the
// API under test of the master service svc, served at url.
func testClientSide(t *testing.T, side func(f *clientFixture, svc *master.Service, url string) clientSide) {
	t.Run("UploadReadyGet", func(t *testing.T) {
		f := newClientFixture(t, master.Limits{}, side)
		img := servicetest.PatternPNG(t, 8, 1)
		up := f.upload(t, img, client.UploadParams{Name: "cat.png", Op: "rotate:90"})
		if up.Replayed {
			t.Errorf("first upload replayed")
		}
		st, err := f.Client.Status(t.Context(), up.ID)
		if err != nil || st.ID != up.ID || st.State != wire.QueuedWord || st.Name != "cat.png" || st.Op != "rotate:90" {
			t.Errorf("status = %+v, %v: want task %d queued, named cat.png, op rotate:90", st, err, up.ID)
		}
		if ready, err := f.Client.IsReady(t.Context(), up.ID); err != nil || ready {
			t.Errorf("IsReady of a queued task = %t, %v: want false", ready, err)
		}
		src, err := f.Client.Source(t.Context(), up.ID)
		expectImage(t, "source", src, err, img)
		_, err = f.Client.Get(t.Context(), up.ID)
		expectRefusal(t, "get of a queued task", err, http.StatusNotFound, fmt.Sprintf("task %d is not finished", up.ID))

		// A WaitReady long poll whose looks at the database all see the task queued: only the
		// finish's wake-up can answer it true within the wait.
		f.db.frozen1.Store(up.ID + 1)
		looked := make(chan struct{})
		var once sync.Once
		f.db.setWatch(func(path, id string) {
			if path == "/getById" && id == fmt.Sprint(up.ID) {
				once.Do(func() { close(looked) })
			}
		})
		ready := make(chan error, 1)
		go func() {
			ok, err := f.Client.WaitReady(t.Context(), up.ID, master.MaxReadyWait)
			if err == nil && !ok {
				err = errors.New("answered false: not woken by the finish")
			}
			ready <- err
		}()
		select {
		case <-looked:
		case err := <-ready:
			t.Fatalf("the ready poll ended before it waited: %v", err)
		}
		result := servicetest.PatternPNG(t, 8, 2)
		f.finish(t, up.ID, result)
		if err := <-ready; err != nil {
			t.Errorf("WaitReady: %v", err)
		}
		f.db.setWatch(nil)
		f.db.frozen1.Store(0)
		if ready, err := f.Client.IsReady(t.Context(), up.ID); err != nil || !ready {
			t.Errorf("IsReady of a finished task = %t, %v: want true", ready, err)
		}
		res, err := f.Client.Get(t.Context(), up.ID)
		expectImage(t, "get", res, err, result)
		stats, err := f.Client.Stats(t.Context())
		if err != nil || stats.Finished != 1 || stats.Queued != 0 {
			t.Errorf("stats = %+v, %v: want 1 finished", stats, err)
		}

		_, err = f.Client.WaitReady(t.Context(), up.ID, master.MaxReadyWait+time.Second)
		expectRefusal(t, "WaitReady too long", err, http.StatusBadRequest, "wait must be between 0 and 10s")
		_, err = f.Client.Status(t.Context(), -1)
		expectRefusal(t, "status of a negative id", err, http.StatusBadRequest, `id must be a non-negative decimal integer, got "-1"`)
		_, err = f.Client.Status(t.Context(), 4242)
		expectRefusal(t, "status of an unknown task", err, http.StatusBadRequest, "no task with id 4242")
		_, err = f.Client.IsReady(t.Context(), 4242)
		expectRefusal(t, "IsReady of an unknown task", err, http.StatusBadRequest, "no task with id 4242")
		_, err = f.Client.Source(t.Context(), 4242)
		expectRefusal(t, "source of an unknown task", err, http.StatusNotFound, "no task with id 4242")
		_, err = f.Client.Get(t.Context(), 4242)
		expectRefusal(t, "get of an unknown task", err, http.StatusNotFound, "no task with id 4242")
	})

	t.Run("UploadRefusals", func(t *testing.T) {
		const maxUpload = 64 << 10
		f := newClientFixture(t, master.Limits{MaxUpload: maxUpload}, side)
		big := servicetest.PaddedPNG(64, 64, 2*maxUpload)
		refuse := func(what string, body io.Reader, size int64, p client.UploadParams, status int, msg string) {
			t.Helper()
			_, err := f.Client.Upload(t.Context(), body, size, p)
			expectRefusal(t, what, err, status, msg)
		}
		img := servicetest.PatternPNG(t, 8, 1)
		refuse("upload over MaxUpload, its length declared", bytes.NewReader(big), int64(len(big)), client.UploadParams{},
			http.StatusRequestEntityTooLarge, "the image is 128 KB; the largest upload is 64 KB")
		refuse("upload over MaxUpload, streamed", iotest.HalfReader(bytes.NewReader(big)), -1, client.UploadParams{},
			http.StatusRequestEntityTooLarge, "the image is larger than 64 KB, the largest upload: make it smaller")
		refuse("not an image", strings.NewReader("hello, this is not an image at all"), -1, client.UploadParams{},
			http.StatusUnsupportedMediaType, "")
		refuse("empty", strings.NewReader(""), 0, client.UploadParams{}, http.StatusBadRequest, "empty image")
		refuse("bad op", bytes.NewReader(img), int64(len(img)), client.UploadParams{Op: "explode"}, http.StatusBadRequest, "op: ")
		refuse("bad name", bytes.NewReader(img), int64(len(img)), client.UploadParams{Name: "a/b.png"}, http.StatusBadRequest, "name: ")
		refuse("bad idempotency key", bytes.NewReader(img), int64(len(img)), client.UploadParams{IdempotencyKey: strings.Repeat("k", wire.MaxIdempotencyKeyLen+1)},
			http.StatusBadRequest, wire.IdempotencyKeyHeader+" must be 1 to")
		refuse("bad owner", bytes.NewReader(img), int64(len(img)), client.UploadParams{Owner: "ownér"}, http.StatusBadRequest,
			wire.OwnerHeader+" must be printable ASCII")
		refuse("pixels over the limit", bytes.NewReader(servicetest.PaddedPNG(20000, 10, 0)), -1, client.UploadParams{},
			http.StatusRequestEntityTooLarge, "")
		// Only the streamed upload over MaxUpload made a task before it was refused, given up at once.
		f.expectCounts(t, "after refused uploads", wire.Stats{Failed: 1})
		f.ExpectNoClaimable(t)

		// A body that breaks off is the caller's failure, and its pending task is given up (over HTTP
		// maybe only just after the caller heard of it).
		long := servicetest.PaddedPNG(64, 64, maxUpload/2)
		_, err := f.Client.Upload(t.Context(), io.MultiReader(bytes.NewReader(long[:maxUpload/4]), iotest.ErrReader(errors.New("client gone"))), -1,
			client.UploadParams{})
		if !client.IsBodyError(err) {
			t.Errorf("upload whose body broke off: %v, want a body error", err)
		}
		if !servicetest.PollFor(time.Minute, func() bool {
			st, err := f.Database.Stats(t.Context())
			return err == nil && st.Failed == 2
		}) {
			f.expectCounts(t, "after a broken upload", wire.Stats{Failed: 2})
		}
		f.ExpectNoClaimable(t)
	})

	t.Run("QueueFull", func(t *testing.T) {
		f := newClientFixture(t, master.Limits{MaxQueued: 1}, side)
		img := servicetest.PatternPNG(t, 8, 1)
		first := f.upload(t, img, client.UploadParams{})
		_, err := f.Client.Upload(t.Context(), bytes.NewReader(img), int64(len(img)), client.UploadParams{})
		expectTransient(t, "upload with the queue full", err, "too many queued tasks (1), retry later")
		// A retry is queued work too. Cancelled, the first task leaves room for a second once the
		// master counts the queue again (it trusts its count for a second).
		if _, err := f.Client.Cancel(t.Context(), first.ID); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		if !servicetest.PollFor(time.Minute, func() bool {
			_, err = f.Client.Upload(t.Context(), bytes.NewReader(img), int64(len(img)), client.UploadParams{})
			return err == nil
		}) {
			t.Fatalf("upload with room in the queue: %v", err)
		}
		_, err = f.Client.Retry(t.Context(), first.ID)
		expectTransient(t, "retry with the queue full", err, "too many queued tasks (1), retry later")
		f.expectCounts(t, "after the queue refusals", wire.Stats{Queued: 1, Cancelled: 1})
	})

	t.Run("Quota", func(t *testing.T) {
		f := newClientFixture(t, master.Limits{QuotaTasks: 1}, side)
		img := servicetest.PatternPNG(t, 8, 1)
		f.upload(t, img, client.UploadParams{Owner: "alice"})
		_, err := f.Client.Upload(t.Context(), bytes.NewReader(img), int64(len(img)), client.UploadParams{Owner: "alice"})
		expectRefusal(t, "alice's second upload", err, http.StatusTooManyRequests, `quota: owner "alice" keeps 1 tasks, the most one owner may keep is 1`)
		var e *httpapi.Error
		if errors.As(err, &e) && e.RetryAfter != time.Minute {
			t.Errorf("quota refusal's Retry-After %v, want 1m", e.RetryAfter)
		}
		// With a key, the task is created first and removed when refused.
		_, err = f.Client.Upload(t.Context(), bytes.NewReader(img), int64(len(img)), client.UploadParams{Owner: "alice", IdempotencyKey: "a-2"})
		expectRefusal(t, "alice's keyed second upload", err, http.StatusTooManyRequests, `quota: owner "alice" keeps 1 tasks`)
		f.upload(t, img, client.UploadParams{Owner: "bob"})
		for owner, want := range map[string]int64{"alice": 1, "bob": 1} {
			if u, err := f.Database.Usage(t.Context(), owner); err != nil || u.Tasks != want {
				t.Errorf("usage of %s = %+v, %v: want %d task", owner, u, err, want)
			}
		}
		f.expectCounts(t, "after the quota refusals", wire.Stats{Queued: 2})
	})

	t.Run("QuotaBytes", func(t *testing.T) {
		img := servicetest.PatternPNG(t, 8, 1)
		f := newClientFixture(t, master.Limits{QuotaBytes: int64(len(img)) + 10}, side)
		f.upload(t, img, client.UploadParams{Owner: "alice"})
		_, err := f.Client.Upload(t.Context(), bytes.NewReader(img), int64(len(img)), client.UploadParams{Owner: "alice"})
		expectRefusal(t, "alice's second upload", err, http.StatusInsufficientStorage, `quota: the images of owner "alice" take`)
		if !fault.IsTransient(err) {
			t.Errorf("byte quota refusal %v is not transient", err)
		}
		f.expectCounts(t, "after the byte quota refusal", wire.Stats{Queued: 1})
	})

	t.Run("IdempotencyKey", func(t *testing.T) {
		f := newClientFixture(t, master.Limits{}, side)
		img := servicetest.PatternPNG(t, 8, 1)
		first := f.upload(t, img, client.UploadParams{IdempotencyKey: "key-1"})
		again := f.upload(t, img, client.UploadParams{IdempotencyKey: "key-1"})
		if first.Replayed || !again.Replayed || again.ID != first.ID {
			t.Errorf("uploads with one key = %+v then %+v: want the same task, the second replayed", first, again)
		}
		other := f.upload(t, img, client.UploadParams{IdempotencyKey: "key-2"})
		if other.ID == first.ID || other.Replayed {
			t.Errorf("upload with another key = %+v: want a new task", other)
		}
		f.expectCounts(t, "after a replayed upload", wire.Stats{Queued: 2})
		if id, err := f.Client.New(t.Context(), bytes.NewReader(img), int64(len(img))); err != nil || id == first.ID || id == other.ID {
			t.Errorf("New = %d, %v: want a new task", id, err)
		}
	})

	t.Run("Statuses", func(t *testing.T) {
		f := newClientFixture(t, master.Limits{}, side)
		img := servicetest.PatternPNG(t, 8, 1)
		id := f.upload(t, img, client.UploadParams{}).ID
		got, err := f.Client.Statuses(t.Context(), []wire.Status{{ID: id}, {ID: 4242}}, 0)
		if err != nil || len(got.Statuses) != 1 || got.Statuses[0].State != wire.QueuedWord || len(got.Missing) != 1 || got.Missing[0] != 4242 {
			t.Fatalf("statuses = %+v, %v: want task %d queued and 4242 missing", got, err, id)
		}
		known := got.Statuses
		got, err = f.Client.Statuses(t.Context(), known, 0)
		if err != nil || len(got.Statuses) != 0 || len(got.Missing) != 0 {
			t.Errorf("statuses of what is known, no wait = %+v, %v: want no news", got, err)
		}
		// A long poll answers the cancel through the same master.
		polled := make(chan error, 1)
		go func() {
			got, err := f.Client.Statuses(t.Context(), known, master.MaxReadyWait)
			if err == nil && (len(got.Statuses) != 1 || got.Statuses[0].State != wire.CancelledWord) {
				err = fmt.Errorf("answered %+v, want the task cancelled", got)
			}
			polled <- err
		}()
		if _, err := f.Client.Cancel(t.Context(), id); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		if err := <-polled; err != nil {
			t.Errorf("statuses long poll: %v", err)
		}
		_, err = f.Client.Statuses(t.Context(), make([]wire.Status, wire.MaxStatusIDs+1), 0)
		expectRefusal(t, "statuses of too many tasks", err, http.StatusBadRequest, fmt.Sprintf("at most %d tasks at once", wire.MaxStatusIDs))
		_, err = f.Client.Statuses(t.Context(), known, master.MaxReadyWait+time.Second)
		expectRefusal(t, "statuses waiting too long", err, http.StatusBadRequest, "wait must be between 0 and 10s")
	})

	t.Run("CancelRetryDelete", func(t *testing.T) {
		f := newClientFixture(t, master.Limits{}, side)
		img := servicetest.PatternPNG(t, 8, 1)
		id := f.upload(t, img, client.UploadParams{}).ID
		st, err := f.Client.Cancel(t.Context(), id)
		if err != nil || st.ID != id || st.State != wire.CancelledWord {
			t.Errorf("cancel = %+v, %v: want task %d cancelled", st, err, id)
		}
		if st, err = f.Client.Cancel(t.Context(), id); err != nil || st.State != wire.CancelledWord {
			t.Errorf("cancel again = %+v, %v: want it cancelled still", st, err)
		}
		_, err = f.Client.Get(t.Context(), id)
		expectRefusal(t, "get of a cancelled task", err, http.StatusNotFound, fmt.Sprintf("task %d was cancelled", id))
		if st, err = f.Client.Retry(t.Context(), id); err != nil || st.State != wire.QueuedWord {
			t.Errorf("retry of a cancelled task = %+v, %v: want it queued", st, err)
		}
		_, err = f.Client.Retry(t.Context(), id)
		expectRefusal(t, "retry of a queued task", err, http.StatusConflict,
			fmt.Sprintf("task %d is queued: only a failed or cancelled task can be retried", id))
		f.finish(t, id, servicetest.PatternPNG(t, 8, 2))
		_, err = f.Client.Cancel(t.Context(), id)
		expectRefusal(t, "cancel of a finished task", err, http.StatusConflict, fmt.Sprintf("task %d already finished", id))

		// A cancelled task whose upload is gone cannot be retried.
		gone := f.upload(t, img, client.UploadParams{}).ID
		if _, err := f.Client.Cancel(t.Context(), gone); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		if err := f.Storage.DeleteImage(t.Context(), gone, wire.WorkingImage); err != nil {
			t.Fatalf("remove the upload: %v", err)
		}
		_, err = f.Client.Retry(t.Context(), gone)
		expectRefusal(t, "retry of a task whose upload is gone", err, http.StatusGone,
			fmt.Sprintf("the upload of task %d is gone: upload the image again", gone))

		if err := f.Client.Delete(t.Context(), id); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if err := f.Client.Delete(t.Context(), id); err != nil {
			t.Errorf("delete again: %v", err)
		}
		if _, held := f.StoredImage(t, id, wire.FinishedImage); held {
			t.Errorf("the result of deleted task %d is still stored", id)
		}
		_, err = f.Client.Get(t.Context(), id)
		expectRefusal(t, "get of a deleted task", err, http.StatusNotFound, "")
		expectRefusal(t, "delete of an unknown task", f.Client.Delete(t.Context(), 4242), http.StatusNotFound, "")
		_, err = f.Client.Cancel(t.Context(), 4242)
		expectRefusal(t, "cancel of an unknown task", err, http.StatusNotFound, "no task with id 4242")
		_, err = f.Client.Retry(t.Context(), 4242)
		expectRefusal(t, "retry of an unknown task", err, http.StatusNotFound, "no task with id 4242")
	})

	t.Run("DatabaseUnavailable", func(t *testing.T) {
		f := newClientFixture(t, master.Limits{MaxQueued: master.NoLimit}, side)
		img := servicetest.PatternPNG(t, 8, 1)
		id := f.upload(t, img, client.UploadParams{}).ID
		if _, err := f.Client.Cancel(t.Context(), id); err != nil {
			t.Fatalf("cancel: %v", err)
		}
		f.db.down.Store(true)
		// Neither call is retried by the caller (an upload without a key, a retry): one answer each.
		_, err := f.Client.Upload(t.Context(), bytes.NewReader(img), int64(len(img)), client.UploadParams{})
		expectTransient(t, "upload with the database away", err, "the task store is away")
		_, err = f.Client.Retry(t.Context(), id)
		expectTransient(t, "retry with the database away", err, "the task store is away")
		f.db.down.Store(false)
		if _, err := f.Client.Retry(t.Context(), id); err != nil {
			t.Errorf("retry with the database back: %v", err)
		}
	})
}
