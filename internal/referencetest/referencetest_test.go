package referencetest_test

import (
	"bytes"
	"context"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/referencetest"
	"github.com/imgmill/imgmill/internal/testimage"
)

type reply struct {
	status int
	body   string
}

func call(t *testing.T, method, addr, pathAndQuery string, body io.Reader) reply {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+addr+pathAndQuery, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, pathAndQuery, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{resp.StatusCode, string(b)}
}

func expect(t *testing.T, got reply, status int, body string) {
	t.Helper()
	if got.status != status || got.body != body {
		t.Errorf("got %d %q, want %d %q", got.status, got.body, status, body)
	}
}

const notFound = "404 page not found\n"

func TestKV(t *testing.T) {
	kv := referencetest.NewKV().Start(t)
	expect(t, call(t, "GET", kv, "/get?key=a", nil), 200, "")
	expect(t, call(t, "POST", kv, "/set?key=a&value=1", nil), 200, "success")
	expect(t, call(t, "POST", kv, "/set?key=a&value=2&ifAbsent=true", nil), 200, "success") // overwritten all the same
	expect(t, call(t, "GET", kv, "/get?key=a", nil), 200, "2")
	expect(t, call(t, "POST", kv, "/set?key=b&value=3&ttl=1s", nil), 200, "success")
	list := call(t, "GET", kv, "/list?prefix=a", nil)
	if list.status != 200 || !strings.Contains(list.body, "a : 2\n") || !strings.Contains(list.body, "b : 3\n") {
		t.Errorf("/list?prefix=a: %d %q, want both keys (no prefix filter)", list.status, list.body)
	}
	expect(t, call(t, "DELETE", kv, "/remove?key=a", nil), 200, "success")
	expect(t, call(t, "GET", kv, "/get?key=a", nil), 200, "")
	expect(t, call(t, "GET", kv, "/healthz", nil), 404, notFound)
}

func TestDatabase(t *testing.T) {
	kv := referencetest.NewKV()
	db := referencetest.NewDatabase().Start(t, kv.Start(t))
	if got := kv.Value("databaseAddress"); got != db {
		t.Errorf("registered %q, want %q", got, db)
	}
	expect(t, call(t, "POST", db, "/getNewTask", nil), 400, "Error: No non-started task.")
	expect(t, call(t, "POST", db, "/newTask?pending=true", nil), 200, "0") // claimable at once all the same
	expect(t, call(t, "POST", db, "/newTask", nil), 200, "1")
	expect(t, call(t, "POST", db, "/getNewTask?wait=10s", nil), 200, `{"id":0,"state":1}`)
	expect(t, call(t, "POST", db, "/getNewTask", nil), 200, `{"id":1,"state":1}`)
	expect(t, call(t, "POST", db, "/getNewTask", nil), 400, "Error: No non-started task.")
	expect(t, call(t, "POST", db, "/finishTask?id=0", nil), 200, "success")
	expect(t, call(t, "POST", db, "/finishTask?id=0", nil), 400, "Error: Task 0 is not in progress.")
	expect(t, call(t, "GET", db, "/getById?id=0", nil), 200, `{"id":0,"state":2}`)
	expect(t, call(t, "GET", db, "/getById?id=7", nil), 400, `Error: No task with id "7".`)
	expect(t, call(t, "POST", db, "/setById", strings.NewReader(`{"id":1,"state":0}`)), 200, "success")
	expect(t, call(t, "GET", db, "/list", nil), 200, "{\"id\":0,\"state\":2}\n{\"id\":1,\"state\":0}\n")
	for _, path := range []string{"/activateTask?id=1", "/failTask?id=1&reason=x", "/extendLease?id=1&token=1", "/stats"} {
		expect(t, call(t, "POST", db, path, nil), 404, notFound)
	}
}

// TestDatabaseHandsOutStuckTasks: a task in progress for StuckAfter is claimed again.
func TestDatabaseHandsOutStuckTasks(t *testing.T) {
	d := referencetest.NewDatabase()
	d.StuckAfter = time.Nanosecond
	db := d.Start(t, referencetest.NewKV().Start(t))
	expect(t, call(t, "POST", db, "/newTask", nil), 200, "0")
	expect(t, call(t, "POST", db, "/getNewTask", nil), 200, `{"id":0,"state":1}`)
	expect(t, call(t, "POST", db, "/getNewTask", nil), 200, `{"id":0,"state":1}`)
	expect(t, call(t, "POST", db, "/finishTask?id=0", nil), 200, "success")
	expect(t, call(t, "POST", db, "/getNewTask", nil), 400, "Error: No non-started task.")
}

func TestStorage(t *testing.T) {
	dir := t.TempDir()
	st := referencetest.NewStorage(dir).Start(t, referencetest.NewKV().Start(t))
	missing := call(t, "GET", st, "/getImage?id=3&state=finished", nil)
	if want := "Error: open " + dir; missing.status != 400 || !strings.HasPrefix(missing.body, want) || !strings.HasSuffix(missing.body, ": no such file or directory") {
		t.Errorf("missing image: %d %q, want 400 %q...", missing.status, missing.body, want)
	}
	expect(t, call(t, "POST", st, "/sendImage?id=3&state=finished", strings.NewReader("img")), 200, "success")
	expect(t, call(t, "GET", st, "/getImage?id=3&state=finished", nil), 200, "img")
	if got := call(t, "GET", st, "/getImage?id=3&state=working", nil); got.status != 400 {
		t.Errorf("working image never stored: %d %q, want 400", got.status, got.body)
	}
}

func TestMasterAnswersErrorsWith200(t *testing.T) {
	kv := referencetest.NewKV().Start(t)
	referencetest.NewDatabase().Start(t, kv)
	referencetest.NewStorage(t.TempDir()).Start(t, kv)
	m := referencetest.NewMaster(kv).Start(t)
	expect(t, call(t, "POST", m, "/getNewTask", nil), 200, "Error: No non-started task.")
	expect(t, call(t, "POST", m, "/registerTaskFinished?id=5", nil), 200, `Error: No task with id "5".`)
	expect(t, call(t, "POST", m, "/new", strings.NewReader("img")), 200, "0")
	expect(t, call(t, "GET", m, "/isReady?id=0", nil), 200, "0")
	unfinished := call(t, "GET", m, "/get?id=0", nil)
	if unfinished.status != 200 || !strings.HasPrefix(unfinished.body, "Error:open ") {
		t.Errorf("/get of an unfinished task: %d %q, want 200 \"Error:open ...\"", unfinished.status, unfinished.body)
	}
	expect(t, call(t, "POST", m, "/getNewTask", nil), 200, `{"id":0,"state":1}`)
	expect(t, call(t, "POST", m, "/registerTaskFinished?id=0", nil), 200, "success") // no result stored: finished all the same
	expect(t, call(t, "GET", m, "/isReady?id=0", nil), 200, "1")
	expect(t, call(t, "POST", m, "/failTask?id=0&reason=x", nil), 404, notFound)
}

// TestMasterRace: the master creates the task before it stores the image, so a worker may claim a task
// whose image is not there; StoreDelay holds the master in between.
func TestMasterRace(t *testing.T) {
	kv := referencetest.NewKV().Start(t)
	referencetest.NewDatabase().Start(t, kv)
	st := referencetest.NewStorage(t.TempDir()).Start(t, kv)
	master := referencetest.NewMaster(kv)
	master.StoreDelay = time.Hour // until the upload is given up below
	m := master.Start(t)

	ctx, cancel := context.WithCancel(t.Context())
	uploaded := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, "POST", "http://"+m+"/new", strings.NewReader("img"))
		if err == nil {
			var resp *http.Response
			if resp, err = http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		uploaded <- err
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		got := call(t, "POST", m, "/getNewTask", nil)
		if got.body == `{"id":0,"state":1}` {
			break
		}
		if got.status != 200 || got.body != "Error: No non-started task." || time.Now().After(deadline) {
			t.Fatalf("claim while the upload is held: %d %q", got.status, got.body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := call(t, "GET", st, "/getImage?id=0&state=working", nil); got.status != 400 || !strings.HasPrefix(got.body, "Error: open ") {
		t.Errorf("image of the claimed task: %d %q, want 400 Error: open ...", got.status, got.body)
	}
	cancel()
	if err := <-uploaded; err == nil {
		t.Error("the held upload was answered, want it given up")
	}
}

// TestStack runs one image through the six stand-ins, uploaded through the frontend's form.
func TestStack(t *testing.T) {
	kv := referencetest.NewKV().Start(t)
	referencetest.NewDatabase().Start(t, kv)
	referencetest.NewStorage(t.TempDir()).Start(t, kv)
	referencetest.NewMaster(kv).Start(t)
	referencetest.NewWorker(kv, nil).Start(t)
	fe := referencetest.NewFrontend(kv).Start(t)

	orig := testimage.Pattern(32, 1)
	img, err := testimage.EncodePNG(orig)
	if err != nil {
		t.Fatal(err)
	}
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, err := mw.CreateFormFile("uploadfile", "a.png")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(img)
	mw.Close()
	req, err := http.NewRequestWithContext(t.Context(), "POST", "http://"+fe+"/submitTask", &form)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(id) != "0" {
		t.Fatalf("/submitTask: %d %q, want 200 \"0\"", resp.StatusCode, id)
	}
	deadline := time.Now().Add(time.Minute)
	for call(t, "GET", fe, "/isReady?id=0", nil).body != referencetest.Ready {
		if time.Now().After(deadline) {
			t.Fatal("task 0 not finished within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	got := call(t, "GET", fe, "/getImage?id=0", nil)
	result, err := png.Decode(strings.NewReader(got.body))
	if err != nil {
		t.Fatalf("/getImage: %d, not a PNG: %v", got.status, err)
	}
	if err := testimage.CheckSwapped(orig, result); err != nil {
		t.Error(err)
	}
}
