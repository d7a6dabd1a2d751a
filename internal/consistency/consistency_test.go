package consistency_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/s3blob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/consistency"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore/pgstore"
	"github.com/imgmill/imgmill/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		key   string
		id    int64
		state string
		ok    bool
	}{
		{"working/42", 42, wire.WorkingImage, true},
		{"finished/0", 0, wire.FinishedImage, true},
		{"working/042", 0, "", false},
		{"working/", 0, "", false},
		{"working/4/2", 0, "", false},
		{"other/4", 0, "", false},
		{"working/-4", 0, "", false},
		{"working/99999999999999999999", 0, "", false},
		{"working", 0, "", false},
	} {
		id, state, ok := consistency.ParseKey(tc.key)
		if id != tc.id || state != tc.state || ok != tc.ok {
			t.Errorf("ParseKey(%q) = %d, %q, %v; want %d, %q, %v", tc.key, id, state, ok, tc.id, tc.state, tc.ok)
		}
	}
}

// fixture is a database and storage with crafted inconsistencies, and a checker whose clock can be
// moved past the grace.
type fixture struct {
	db      *client.Database
	storage *client.Storage
	checker *consistency.Checker
	shift   atomic.Int64 // added to the checker's clock
	ids     map[string]int64
}

func (f *fixture) later(d time.Duration) { f.shift.Store(int64(d)) }

func newFixture(t *testing.T, db *client.Database, st *client.Storage) *fixture {
	f := &fixture{db: db, storage: st, ids: map[string]int64{}}
	f.checker = &consistency.Checker{DB: db, Storage: st, Grace: time.Hour,
		Now: func() time.Time { return time.Now().Add(time.Duration(f.shift.Load())) }}
	ctx := t.Context()
	newTask := func(name string, pending bool) int64 {
		id, err := db.NewTask(ctx, client.NewTaskParams{Pending: pending})
		if err != nil {
			t.Fatalf("NewTask: %v", err)
		}
		f.ids[name] = id
		return id
	}
	send := func(id int64, state string) {
		img := []byte(fmt.Sprintf("%s image of task %d", state, id))
		if err := st.SendImage(ctx, id, state, bytes.NewReader(img), int64(len(img))); err != nil {
			t.Fatalf("SendImage(%d, %s): %v", id, state, err)
		}
	}
	set := func(id int64, state wire.State) {
		if err := db.SetByID(ctx, wire.Task{ID: id, State: state}); err != nil {
			t.Fatalf("SetByID(%d, %v): %v", id, state, err)
		}
	}
	deleteImage := func(id int64, state string) {
		if err := st.DeleteImage(ctx, id, state); err != nil {
			t.Fatal(err)
		}
	}
	// Sound tasks.
	queued := newTask("queued", false)
	send(queued, wire.WorkingImage)
	finished := newTask("finished", false)
	send(finished, wire.WorkingImage)
	send(finished, wire.FinishedImage)
	set(finished, wire.Finished)
	newTask("pending", true) // an upload in progress: no image yet
	failed := newTask("failed", false)
	set(failed, wire.Failed) // an upload refused: no image, nothing to fix

	// A queued task whose upload was removed behind the database's back.
	lost := newTask("lost source", false)
	send(lost, wire.WorkingImage)
	deleteImage(lost, wire.WorkingImage)
	// A finished task whose result was removed.
	noResult := newTask("lost result", false)
	send(noResult, wire.WorkingImage)
	send(noResult, wire.FinishedImage)
	set(noResult, wire.Finished)
	deleteImage(noResult, wire.FinishedImage)
	// A finished task whose upload was removed: its result is still served.
	noSource := newTask("finished without source", false)
	send(noSource, wire.FinishedImage)
	set(noSource, wire.Finished)
	// A deleted task whose images came back (a delete that lost its blob deletes).
	deleted := newTask("deleted", false)
	if err := db.DeleteTask(ctx, deleted); err != nil {
		t.Fatal(err)
	}
	send(deleted, wire.WorkingImage)
	send(deleted, wire.FinishedImage)
	// A cancelled task whose worker stored its result before hearing of the cancel.
	cancelled := newTask("cancelled", false)
	send(cancelled, wire.WorkingImage)
	if _, err := db.CancelTask(ctx, cancelled); err != nil {
		t.Fatal(err)
	}
	send(cancelled, wire.FinishedImage)
	// Last, a task so that the deleted one's id is below the highest, and an image beyond every task.
	last := newTask("last", false)
	send(last, wire.WorkingImage)
	f.ids["ahead"] = last + 1000
	send(last+1000, wire.WorkingImage)
	return f
}

// stored lists what storage holds.
func (f *fixture) stored(t *testing.T) []string {
	t.Helper()
	page, err := f.storage.ListBlobs(t.Context(), "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, b := range page.Blobs {
		keys = append(keys, b.Key)
	}
	slices.Sort(keys)
	return keys
}

func (f *fixture) keys(names ...string) []string {
	var keys []string
	for _, n := range names {
		state, name, _ := strings.Cut(n, ":")
		keys = append(keys, fmt.Sprintf("%s/%d", state, f.ids[name]))
	}
	slices.Sort(keys)
	return keys
}

func (f *fixture) state(t *testing.T, name string) wire.Task {
	t.Helper()
	task, err := f.db.GetByID(t.Context(), f.ids[name])
	if err != nil {
		t.Fatalf("GetByID(%s): %v", name, err)
	}
	return task
}

// check runs a check and returns its summary, the images it reported as "kind key" and the tasks as
// "problem name: repair".
func (f *fixture) check(t *testing.T, repair bool) (consistency.Summary, []string, []string) {
	t.Helper()
	names := map[int64]string{}
	for n, id := range f.ids {
		names[id] = n
	}
	var images, tasks []string
	sum, err := f.checker.Check(t.Context(), repair,
		func(im consistency.Image) {
			images = append(images, fmt.Sprintf("%v %s:%s removed=%v", im.Kind, im.State, names[im.ID], im.Removed))
		},
		func(tf consistency.TaskFinding) {
			problem := map[consistency.Problem]string{consistency.SourceMissing: "source missing", consistency.ResultMissing: "result missing"}[tf.Problem]
			tasks = append(tasks, fmt.Sprintf("%s %s: %s", problem, names[tf.Task.ID], tf.Repair))
		})
	if err != nil {
		t.Fatalf("Check(repair %v): %v", repair, err)
	}
	slices.Sort(images)
	slices.Sort(tasks)
	return sum, images, tasks
}

func wantList(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

// runCheckAndRepair: a check reports every crafted inconsistency and changes nothing; within the grace
// no image is a problem; a repair fixes what can be fixed and touches nothing else; a second check
// finds only what cannot be fixed.
func runCheckAndRepair(t *testing.T, db *client.Database, st *client.Storage) {
	f := newFixture(t, db, st)
	all := f.stored(t)
	wantList(t, "images stored", all, f.keys("working:queued", "working:finished", "finished:finished", "working:lost result",
		"finished:finished without source", "working:deleted", "finished:deleted", "working:cancelled", "finished:cancelled",
		"working:last", "working:ahead")...)

	// Within the grace, the images no task wants are not problems yet.
	sum, images, _ := f.check(t, false)
	if sum.Orphans+sum.StrayResults+sum.Ahead != 0 || sum.Recent != 4 || sum.Removed != 0 {
		t.Errorf("check within the grace: %+v, want 4 recent images and no orphans", sum)
	}
	wantList(t, "images within the grace", images, "recent working:deleted removed=false", "recent finished:deleted removed=false",
		"recent finished:cancelled removed=false", "recent working:ahead removed=false")

	f.later(2 * time.Hour)
	sum, images, tasks := f.check(t, false)
	want := consistency.Summary{Tasks: 9, Images: int64(len(all)), Orphans: 2, StrayResults: 1, Ahead: 1,
		SourceMissing: 2, ResultMissing: 1}
	if sum != want || sum.Problems() != 7 {
		t.Errorf("check = %+v, want %+v (7 problems)", sum, want)
	}
	wantList(t, "images reported", images, "orphan working:deleted removed=false", "orphan finished:deleted removed=false",
		"stray result finished:cancelled removed=false", "ahead of the database working:ahead removed=false")
	wantList(t, "tasks reported", tasks, "source missing lost source: ", "result missing lost result: ",
		"source missing finished without source: ")
	wantList(t, "images after a check without repair", f.stored(t), all...)
	if got := f.state(t, "lost source"); got.State != wire.NotStarted {
		t.Errorf("a check without repair changed a task: %+v", got)
	}

	sum, _, tasks = f.check(t, true)
	if sum.Removed != 4 || sum.Repaired != 2 {
		t.Errorf("repair: %+v, want 4 images removed and 2 tasks repaired", sum)
	}
	wantList(t, "tasks repaired", tasks, "source missing lost source: failed: "+consistency.SourceLostError,
		"result missing lost result: queued again", "source missing finished without source: not repaired: its result is still served")
	wantList(t, "images after the repair", f.stored(t), f.keys("working:queued", "working:finished", "finished:finished",
		"working:lost result", "finished:finished without source", "working:cancelled", "working:last")...)
	if got := f.state(t, "lost source"); got.State != wire.Failed || got.Error != consistency.SourceLostError {
		t.Errorf("task with a lost upload after the repair: state %v error %q, want failed with %q", got.State, got.Error, consistency.SourceLostError)
	}
	if got := f.state(t, "lost result"); got.State != wire.NotStarted {
		t.Errorf("finished task without its result after the repair: %v, want queued", got.State)
	}
	for name, state := range map[string]wire.State{"queued": wire.NotStarted, "pending": wire.NotStarted, "last": wire.NotStarted,
		"failed": wire.Failed, "finished": wire.Finished, "finished without source": wire.Finished, "cancelled": wire.Cancelled} {
		if got := f.state(t, name); got.State != state || got.Error == consistency.SourceLostError {
			t.Errorf("task %s after the repair: %v %q, want %v untouched", name, got.State, got.Error, state)
		}
	}

	// Only the unfixable remains.
	sum, images, tasks = f.check(t, true)
	if sum.Problems() != 1 || sum.SourceMissing != 1 || len(images) != 0 {
		t.Errorf("check after the repair: %+v, images %q; want only the finished task without its upload", sum, images)
	}
	wantList(t, "tasks after the repair", tasks, "source missing finished without source: not repaired: its result is still served")
}

func TestCheckAndRepair(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	runCheckAndRepair(t, s.Database, s.Storage)
}

// TestCheckAndRepairPostgresS3 runs the same check over PostgreSQL and MinIO.
func TestCheckAndRepairPostgresS3(t *testing.T) {
	pg := enginetest.StartPostgres(t)
	m := enginetest.StartMinIO(t)
	ctx := context.Background()
	tasks, err := pgstore.Open(ctx, pg.NewDatabase(t), pgstore.Options{})
	if err != nil {
		t.Fatalf("pgstore.Open: %v", err)
	}
	servicetest.CloseAtCleanup(t, "task store", tasks)
	cfg, err := s3blob.ParseURL(m.URL(m.NewBucket(t)), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := s3blob.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("s3blob.Open: %v", err)
	}
	servicetest.CloseAtCleanup(t, "blob store", blobs)
	done := make(chan struct{})
	dbURL := servicetest.Serve(t, database.NewServer(tasks, database.Policy{Lease: time.Minute}, done)).URL
	t.Cleanup(func() { close(done) })
	stURL := servicetest.Serve(t, storage.NewServer(blobstore.Store(blobs))).URL
	hc := servicetest.NewHTTPClient(t)
	runCheckAndRepair(t, client.NewDatabase(hc, client.Static(servicetest.Addr(dbURL))), client.NewStorage(hc, client.Static(servicetest.Addr(stURL))))
}

// TestSweepRemovesOrphansOnly: the master's sweep (RemoveOrphans) removes orphans and stray results
// past the grace, and neither images ahead of the database nor any image a task has; a second sweep,
// as by another master, finds nothing more and fails on nothing.
func TestSweepRemovesOrphansOnly(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{})
	f := newFixture(t, s.Database, s.Storage)
	all := f.stored(t)
	err := f.checker.ScanImages(t.Context(), consistency.RemoveOrphans, func(im consistency.Image) {
		if im.Removed {
			t.Errorf("a sweep within the grace removed %s", im.Key)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	wantList(t, "images after a sweep within the grace", f.stored(t), all...)
	f.later(2 * time.Hour)
	removed := map[consistency.Kind]int{}
	for range 2 {
		err := f.checker.ScanImages(t.Context(), consistency.RemoveOrphans, func(im consistency.Image) {
			if im.Removed {
				removed[im.Kind]++
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if removed[consistency.Orphan] != 2 || removed[consistency.StrayResult] != 1 || len(removed) != 2 {
		t.Errorf("sweeps removed %v, want 2 orphans and 1 stray result", removed)
	}
	wantList(t, "images after the sweeps", f.stored(t), f.keys("working:queued", "working:finished", "finished:finished",
		"working:lost result", "finished:finished without source", "working:cancelled", "working:last", "working:ahead")...)
}

// TestSweepStorageAway: a sweep whose storage does not answer fails with a transient error.
func TestSweepStorageAway(t *testing.T) {
	s := servicetest.NewStack(t, servicetest.Options{WrapStorage: func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "Error: storage away", http.StatusServiceUnavailable)
		})
	}})
	checker := &consistency.Checker{DB: s.Database, Storage: s.Storage}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	err := checker.ScanImages(ctx, consistency.RemoveOrphans, func(consistency.Image) { t.Error("visited an image") })
	if err == nil {
		t.Fatal("ScanImages with storage away succeeded")
	}
}

// BenchmarkScanImages measures a sweep that finds nothing to remove over 3000 images of 2000 tasks (on
// SQLite and files): the cost of the master's hourly walk, per image.
func BenchmarkScanImages(b *testing.B) {
	s := servicetest.NewStack(b, servicetest.Options{})
	ctx := b.Context()
	for i := range 2000 {
		id, err := s.Database.NewTask(ctx, client.NewTaskParams{})
		if err != nil {
			b.Fatal(err)
		}
		states := []string{wire.WorkingImage}
		if i%2 == 0 {
			states = append(states, wire.FinishedImage)
		}
		for _, state := range states {
			if err := s.Storage.SendImage(ctx, id, state, strings.NewReader("image"), 5); err != nil {
				b.Fatal(err)
			}
		}
	}
	checker := &consistency.Checker{DB: s.Database, Storage: s.Storage}
	images := 0
	for b.Loop() {
		images = 0
		if err := checker.ScanImages(ctx, consistency.RemoveOrphans, func(consistency.Image) { images++ }); err != nil {
			b.Fatal(err)
		}
	}
	if images != 3000 {
		b.Fatalf("scanned %d images, want 3000", images)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(images), "ns/image")
}
