package frontend_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// expectJSONError checks that r is status with exactly the JSON body {"error":msg}.
func expectJSONError(t *testing.T, what string, r servicetest.Reply, status int, msg string) {
	t.Helper()
	want, _ := json.Marshal(httpapi.JSONError{Error: msg})
	if r.Status != status || r.Body != string(want) || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("%s: %d %q (%s), want %d %s", what, r.Status, r.Body, r.Header.Get("Content-Type"), status, want)
	}
}

// created checks a 201 answer to POST /api/tasks and returns the public id.
func (s *stack) created(t *testing.T, r servicetest.Reply) string {
	t.Helper()
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /api/tasks: %d %q, want 201", r.Status, r.Body)
	}
	var c struct{ ID string }
	if err := json.Unmarshal([]byte(r.Body), &c); err != nil {
		t.Fatalf("POST /api/tasks: %q: %v", r.Body, err)
	}
	pub := s.parsePublicID(t, c.ID)
	base := "/api/tasks/" + pub
	want := fmt.Sprintf(`{"id":%q,"state":"queued","statusUrl":%q,"resultUrl":%q,"eventsUrl":%q,"sourceUrl":%q}`,
		pub, base, base+"/result", base+"/events", base+"/source")
	if r.Body != want {
		t.Errorf("POST /api/tasks body %s, want %s", r.Body, want)
	}
	if loc := r.Header.Get("Location"); loc != base {
		t.Errorf("Location %q, want %q", loc, base)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	return pub
}

// createRaw posts img as the raw body of POST /api/tasks+query.
func (s *stack) createRaw(t *testing.T, query string, img []byte) servicetest.Reply {
	t.Helper()
	return s.call(t, http.MethodPost, "/api/tasks"+query, "image/png", bytes.NewReader(img))
}

func (s *stack) createForm(t *testing.T, query string, parts ...part) servicetest.Reply {
	t.Helper()
	ct, body := form(t, parts...)
	return s.call(t, http.MethodPost, "/api/tasks"+query, ct, bytes.NewReader(body))
}

func TestAPICreateTask(t *testing.T) {
	s := newStack(t)
	for _, c := range []struct {
		what   string
		create func(img []byte) servicetest.Reply
	}{
		{"raw", func(img []byte) servicetest.Reply { return s.createRaw(t, "", img) }},
		{"raw, no Content-Type", func(img []byte) servicetest.Reply {
			return s.call(t, http.MethodPost, "/api/tasks", "", bytes.NewReader(img))
		}},
		{"raw, op=swap", func(img []byte) servicetest.Reply { return s.createRaw(t, "?op=swap", img) }},
		{"multipart", func(img []byte) servicetest.Reply {
			return s.createForm(t, "", part{field: frontend.FileField, filename: "a.png", data: img})
		}},
		{"multipart with op", func(img []byte) servicetest.Reply {
			return s.createForm(t, "", part{field: frontend.OpField, data: []byte("swap")},
				part{field: frontend.FileField, filename: "a.png", data: img})
		}},
		{"multipart, op in the query", func(img []byte) servicetest.Reply {
			return s.createForm(t, "?op=swap", part{field: frontend.FileField, filename: "a.png", data: img})
		}},
		{"multipart, the same op in the query and the form", func(img []byte) servicetest.Reply {
			return s.createForm(t, "?op=swap", part{field: frontend.OpField, data: []byte("swap")},
				part{field: frontend.FileField, filename: "a.png", data: img})
		}},
		{"multipart, an empty op field and the query's", func(img []byte) servicetest.Reply {
			return s.createForm(t, "?op=swap", part{field: frontend.OpField},
				part{field: frontend.FileField, filename: "a.png", data: img})
		}},
	} {
		img := servicetest.PatternPNG(t, 10, int64(len(c.what)))
		pub := s.created(t, c.create(img))
		if got := s.working(t, s.internal(t, pub)); !bytes.Equal(got, img) {
			t.Errorf("%s: stored %d bytes, want the %d uploaded", c.what, len(got), len(img))
		}
	}
}

func TestAPICreateTaskRefusals(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 3)
	before := s.master.calls.Load()
	expectJSONError(t, "unknown op in the query", s.createRaw(t, "?op=blurr", img), http.StatusBadRequest,
		`op: unknown operation "blurr" (did you mean "blur"?); known: swap, grayscale, invert, brightness, contrast, gamma, blur, sharpen, resize, thumbnail, crop, rotate, flip, convert`)
	expectJSONError(t, "bad parameter in the query", s.createRaw(t, "?op=resize:800y600", img), http.StatusBadRequest,
		`op: resize: "800y600" is not WxH (e.g. 800x600, 800x or x600)`)
	expectJSONError(t, "unknown op in the form", s.createForm(t, "", part{field: frontend.OpField, data: []byte("x")},
		part{field: frontend.FileField, filename: "a.png", data: img}), http.StatusBadRequest,
		`op: unknown operation "x"; known: swap, grayscale, invert, brightness, contrast, gamma, blur, sharpen, resize, thumbnail, crop, rotate, flip, convert`)
	expectJSONError(t, "op too long in the form", s.createForm(t, "", part{field: frontend.OpField, data: []byte(strings.Repeat("gray,", 300))},
		part{field: frontend.FileField, filename: "a.png", data: img}), http.StatusBadRequest, `op: longer than 1024 bytes`)
	expectJSONError(t, "form without file", s.createForm(t, "", part{field: frontend.OpField, data: []byte("swap")}),
		http.StatusBadRequest, `no file in field "file"`)
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("refused uploads made %d master calls", n)
	}
	expectJSONError(t, "empty raw body", s.createRaw(t, "", nil), http.StatusBadRequest,
		"empty image: send the image bytes as the request body")
	r := s.createRaw(t, "", []byte("not an image at all"))
	if r.Status != http.StatusUnsupportedMediaType || !strings.HasPrefix(r.Body, `{"error":`) {
		t.Errorf("raw non-image: %d %q, want 415 JSON", r.Status, r.Body)
	}
	expectJSONError(t, "GET /api/tasks", s.call(t, http.MethodGet, "/api/tasks", "", nil), http.StatusMethodNotAllowed,
		"method GET not allowed on /api/tasks")
	expectJSONError(t, "PUT /api/tasks/x", s.call(t, http.MethodPut, "/api/tasks/x", "", nil), http.StatusMethodNotAllowed,
		"method PUT not allowed on /api/tasks/x")
	expectJSONError(t, "GET /api/nothing", s.call(t, http.MethodGet, "/api/nothing", "", nil), http.StatusNotFound,
		"no endpoint /api/nothing")
	expectJSONError(t, "GET /api/tasks/x/nothing", s.call(t, http.MethodGet, "/api/tasks/x/nothing", "", nil), http.StatusNotFound,
		"no endpoint /api/tasks/x/nothing")
	// The reference paths keep their text answers.
	servicetest.ExpectError(t, "GET /nothing", s.call(t, http.MethodGet, "/nothing", "", nil), http.StatusNotFound)
	servicetest.ExpectError(t, "DELETE /submitTask", s.call(t, http.MethodDelete, "/submitTask", "", nil), http.StatusMethodNotAllowed)
}

// TestAPIFormTraps: a form field POST /api/tasks would ignore or have to guess about is refused with
// 400 saying what to do, and nothing is queued: before the file, without a call to the master; after
// it, by breaking off the upload, whose task the master gives up. /submitTask stays lenient.
func TestAPIFormTraps(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 5)
	file := part{field: frontend.FileField, filename: "a.png", data: img}
	op := func(spec string) part { return part{field: frontend.OpField, data: []byte(spec)} }
	unknown := func(name string) string {
		return fmt.Sprintf(`unknown form field %q: POST /api/tasks takes the fields "op" (the operation chain, before the file) and "file" (the image)`, name)
	}
	before := s.master.calls.Load()
	for _, c := range []struct {
		what, query string
		parts       []part
		msg         string
	}{
		{"misspelled op", "", []part{{field: "ops", data: []byte("grayscale")}, file}, unknown("ops")},
		{"the reference's field", "", []part{{field: frontend.UploadField, filename: "a.png", data: img}, file}, unknown("uploadfile")},
		{"op twice", "", []part{op("grayscale"), op("grayscale"), file}, `the "op" field is given twice: give the operation chain once`},
		{"query and form disagree", "?op=grayscale", []part{op("blur:2"), file},
			`op is given twice and differently: "grayscale" in the query, "blur:2" in the form: give the chain once, in the query or in the form`},
	} {
		expectJSONError(t, c.what, s.createForm(t, c.query, c.parts...), http.StatusBadRequest, c.msg)
	}
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("fields refused before the file made %d master calls", n)
	}
	// Big enough that the master has created the task before the form's end is read.
	file.data = paddedPNG(t, 64<<10)
	var givenUp int64
	for _, c := range []struct {
		what  string
		parts []part
		msg   string
	}{
		{"op after the file", []part{file, op("grayscale")},
			`the "op" field comes after the file, where it would be ignored: send "op" before "file", or give the chain in the query (?op=...)`},
		{"a field after the file", []part{op("swap"), file, {field: "note", data: []byte("hi")}}, unknown("note")},
		{"a second file", []part{file, file}, `a second "file" field: send one image per request`},
	} {
		expectJSONError(t, c.what, s.createForm(t, "", c.parts...), http.StatusBadRequest, c.msg)
		givenUp++
		s.expectGivenUp(t, c.what, givenUp)
	}
	s.ExpectNoClaimable(t)
	for id := range givenUp { // the refusals before the file created no task: these are ids 0 to 2
		if task, err := s.Database.GetByID(t.Context(), id); err != nil || task.State != wire.Failed || !strings.HasPrefix(task.Error, wire.AbandonedError) {
			t.Errorf("task %d: %+v, %v; want failed, %q", id, task, err, wire.AbandonedError)
		}
		if b, ok := s.StoredImage(t, id, wire.WorkingImage); ok {
			t.Errorf("task %d, refused after its file, left %d bytes in storage", id, len(b))
		}
	}

	// The reference path ignores what it does not know, as reference clients expect.
	id := s.parsePublicID(t, s.submit(t, part{field: "note", data: []byte("hi")},
		part{field: frontend.UploadField, filename: "a.png", data: img}, op("grayscale")).Body)
	var st wire.PublicStatus
	if r := s.call(t, http.MethodGet, "/api/tasks/"+id, "", nil); r.Status != http.StatusOK || json.Unmarshal([]byte(r.Body), &st) != nil || st.Op != "swap" {
		t.Errorf("/submitTask with an op after the file: %d %q, want the default chain, swap", r.Status, r.Body)
	}
}

func TestAPIRateLimit(t *testing.T) {
	s := newStackWith(t, frontend.Limits{UploadRate: 0.5, UploadBurst: 1})
	img := servicetest.PatternPNG(t, 8, 4)
	first := s.created(t, s.createRaw(t, "", img))
	before := s.master.calls.Load()
	r := s.createRaw(t, "", img)
	expectJSONError(t, "API upload over the limit", r, http.StatusTooManyRequests, "too many uploads, retry in 2s")
	if r.Header.Get("Retry-After") != "2" {
		t.Errorf("Retry-After %q, want 2", r.Header.Get("Retry-After"))
	}
	// One bucket for both upload paths.
	r = s.submit(t, part{field: frontend.UploadField, filename: "x.png", data: img})
	if r.Status != http.StatusTooManyRequests || r.Body != "Error: too many uploads, retry in 2s" {
		t.Errorf("/submitTask after the API used the bucket: %d %q, want 429", r.Status, r.Body)
	}
	// A retry queues work again: the same bucket.
	expectJSONError(t, "retry over the limit", s.call(t, http.MethodPost, "/api/tasks/"+first+"/retry", "", nil),
		http.StatusTooManyRequests, "too many uploads and retries, retry in 2s")
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("refused uploads made %d master calls", n)
	}
}

func TestAPIUploadTooLarge(t *testing.T) {
	const limit = 4000
	s := newStackWith(t, frontend.Limits{MaxUpload: limit})
	big := paddedPNG(t, 100_000)
	msg := "the image is larger than 3.9 KB, the largest upload: make it smaller (fewer pixels, or saved as JPEG) and upload it again"
	expectJSONError(t, "raw, known length", s.createRaw(t, "", big), http.StatusRequestEntityTooLarge,
		"the image is 97.7 KB; the largest upload is 3.9 KB: make it smaller (fewer pixels, or saved as JPEG) and upload it again")
	expectJSONError(t, "raw, one byte over", s.createRaw(t, "", big[:limit+1]), http.StatusRequestEntityTooLarge, msg)
	expectJSONError(t, "multipart", s.createForm(t, "", part{field: frontend.FileField, filename: "b.png", data: big[:limit+1]}),
		http.StatusRequestEntityTooLarge, msg)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.frontendURL+"/api/tasks", io.NopCloser(bytes.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	expectJSONError(t, "raw, streamed", servicetest.MustDo(t, s.HTTP, req), http.StatusRequestEntityTooLarge, msg)
	s.ExpectNoClaimable(t)
	pub := s.created(t, s.createRaw(t, "", big[:limit]))
	if got := s.working(t, s.internal(t, pub)); !bytes.Equal(got, big[:limit]) {
		t.Errorf("stored %d bytes, want %d", len(got), limit)
	}
}

func TestAPIOperations(t *testing.T) {
	s := newStack(t)
	r := s.call(t, http.MethodGet, "/api/operations", "", nil)
	want, err := json.Marshal(struct {
		Operations []wire.OperationInfo `json:"operations"`
	}{imageop.Operations()})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != http.StatusOK || r.Body != string(want) || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("GET /api/operations: %d %q, want 200 %s", r.Status, r.Body, want)
	}
	// Every operation the parser knows is listed, the default first, each with an example that parses.
	var got struct {
		Operations []struct{ Name, Example string }
	}
	if err := json.Unmarshal([]byte(r.Body), &got); err != nil || len(got.Operations) < 14 || got.Operations[0].Name != "swap" {
		t.Fatalf("operations %+v (%v), want at least 14 with swap first", got.Operations, err)
	}
	for _, op := range got.Operations {
		if _, err := imageop.ParseChain(op.Example); err != nil || !strings.HasPrefix(op.Example, op.Name) {
			t.Errorf("operation %s: example %q does not parse as itself: %v", op.Name, op.Example, err)
		}
	}
	expectJSONError(t, "POST /api/operations", s.call(t, http.MethodPost, "/api/operations", "", nil), http.StatusMethodNotAllowed,
		"method POST not allowed on /api/operations")
}

func TestAPIStatusAndResult(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	img := servicetest.PatternPNG(t, 12, 5)
	pub := s.created(t, s.createRaw(t, "", img))
	id := s.internal(t, pub)
	expect := func(word string) {
		t.Helper()
		got := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil)
		want := servicetest.Call(t, s.HTTP, http.MethodGet, fmt.Sprintf("%s/status?id=%d", s.MasterURL, id), nil)
		wantBody := strings.Replace(want.Body, fmt.Sprintf(`{"id":%d,`, id), fmt.Sprintf(`{"id":%q,`, pub), 1)
		if !strings.Contains(wantBody, fmt.Sprintf(`"state":%q`, word)) {
			t.Fatalf("master status %q, want state %q", want.Body, word)
		}
		if got.Status != http.StatusOK || got.Body != wantBody || got.Header.Get("Content-Type") != "application/json" ||
			got.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("GET /api/tasks/P = %d %q %v, want %q", got.Status, got.Body, got.Header, wantBody)
		}
	}
	expect("queued")
	expectJSONError(t, "result while queued", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil),
		http.StatusNotFound, "task is not finished")
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	expect("processing")
	result := servicetest.PatternPNG(t, 12, 6)
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	expectJSONError(t, "result while processing", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil),
		http.StatusNotFound, "task is not finished")
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	expect("finished")
	r := s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil)
	servicetest.ExpectPNGReply(t, "GET /api/tasks/P/result", r, result)
	if cd, want := r.Header.Get("Content-Disposition"), `attachment; filename="imgmill-`+pub[:12]+`-swap.png"`; cd != want {
		t.Errorf("Content-Disposition %q, want %q", cd, want)
	}
	// The source is still the upload.
	r = s.call(t, http.MethodGet, "/api/tasks/"+pub+"/source", "", nil)
	servicetest.ExpectPNGReply(t, "GET /api/tasks/P/source", r, img)
	if cd, want := r.Header.Get("Content-Disposition"), `inline; filename="imgmill-`+pub[:12]+`-source.png"`; cd != want {
		t.Errorf("Content-Disposition %q, want %q", cd, want)
	}

	// Ids that name no task, forged or genuine, on every path.
	for _, bad := range append(badIDs(t, pub), s.ids.Encode(12345)) {
		for _, suffix := range []string{"", "/result", "/source", "/events"} {
			path := "/api/tasks/" + escapePath(bad) + suffix
			expectJSONError(t, "GET "+path, s.call(t, http.MethodGet, path, "", nil), http.StatusNotFound, "no such task")
		}
	}
}

// escapePath escapes a bad id for a path segment.
func escapePath(s string) string {
	return strings.NewReplacer("%", "%25", "/", "%2F", " ", "%20", "+", "%2B", "=", "%3D").Replace(s)
}

func TestAPIFailedTask(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 7)))
	id := s.internal(t, pub)
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	if _, err := s.Master.FailTask(ctx, id, task.Token, fmt.Sprintf("worker at 10.0.0.1 lost task %d", id), true); err != nil {
		t.Fatal(err)
	}
	expectJSONError(t, "result of a failed task", s.call(t, http.MethodGet, "/api/tasks/"+pub+"/result", "", nil),
		http.StatusNotFound, "task failed: processing failed")
	var st wire.PublicStatus
	r := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil)
	if err := json.Unmarshal([]byte(r.Body), &st); err != nil || st.State != "failed" || st.Error != "processing failed" || st.Op != "swap" {
		t.Errorf("status of a failed task: %q (%v)", r.Body, err)
	}
	// The event stream of a failed task says so and ends.
	events := s.events(t, pub)
	if ev := <-events; ev.name != "status" || !strings.Contains(ev.data, `"state":"failed"`) {
		t.Errorf("first event %+v, want the failed status", ev)
	}
	if ev, ok := <-events; ok {
		t.Errorf("event %+v after failed, want the end of the stream", ev)
	}
}

type event struct{ name, data string }

// events opens the event stream of task pub, checks its headers, and sends its events on the channel
// returned, closed when the stream ends (a comment is an event named ":"). The stream is closed when the
// test ends.
func (s *stack) events(t *testing.T, pub string) <-chan event {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.frontendURL+"/api/tasks/"+pub+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	return streamEvents(t, s.HTTP, req)
}

func streamEvents(t *testing.T, hc *http.Client, req *http.Request) <-chan event {
	t.Helper()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" ||
		resp.Header.Get("Cache-Control") != "no-store" {
		resp.Body.Close()
		t.Fatalf("GET events: %d %v", resp.StatusCode, resp.Header)
	}
	ch := make(chan event, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var ev event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev != (event{}) {
					ch <- ev
				}
				ev = event{}
			case strings.HasPrefix(line, ":"):
				ev = event{name: ":", data: strings.TrimSpace(line[1:])}
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[len("data: "):]
			default:
				t.Errorf("unexpected event stream line %q", line)
			}
		}
	}()
	t.Cleanup(func() {
		resp.Body.Close()
		<-done
	})
	return ch
}

// next is the next event on ch within a few seconds, ok false at the end of the stream.
func next(t *testing.T, ch <-chan event) (event, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
		return event{}, false
	}
}

// expectState expects the next event on ch to be a status with state word, and returns the status.
func expectState(t *testing.T, ch <-chan event, pub string, word wire.Word) wire.PublicStatus {
	t.Helper()
	ev, ok := next(t, ch)
	var st wire.PublicStatus
	if !ok || ev.name != "status" || json.Unmarshal([]byte(ev.data), &st) != nil || st.State != word || st.ID != pub || st.Op != "swap" {
		t.Fatalf("event %+v (stream open: %v), want status %q of %s", ev, ok, word, pub)
	}
	return st
}

func TestAPIEvents(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 8)))
	id := s.internal(t, pub)
	events := s.events(t, pub)
	first := expectState(t, events, pub, "queued")
	// The first event is the status JSON itself.
	r := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil)
	if b, _ := json.Marshal(first); r.Body != string(b) {
		t.Errorf("first event %s, want the status %s", b, r.Body)
	}
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	if st := expectState(t, events, pub, "processing"); st.Attempts != 1 {
		t.Errorf("processing with %d attempts, want 1", st.Attempts)
	}
	result := servicetest.PatternPNG(t, 8, 9)
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	expectState(t, events, pub, "finished")
	if ev, ok := next(t, events); ok {
		t.Errorf("event %+v after finished, want the end of the stream", ev)
	}
	// A finished task's stream is its one status.
	events = s.events(t, pub)
	expectState(t, events, pub, "finished")
	if ev, ok := next(t, events); ok {
		t.Errorf("event %+v after finished, want the end of the stream", ev)
	}
}

// TestAPIEventsRetry: a failed attempt that is retried is news too (attempts and error change).
func TestAPIEventsRetry(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 10)))
	id := s.internal(t, pub)
	events := s.events(t, pub)
	expectState(t, events, pub, "queued")
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	expectState(t, events, pub, "processing")
	if _, err := s.Master.FailTask(ctx, id, task.Token, "upload never completed", false); err != nil {
		t.Fatal(err)
	}
	if st := expectState(t, events, pub, "queued"); st.Attempts != 1 || st.Error != "upload never completed" {
		t.Errorf("after a failed attempt: %+v", st)
	}
}

// TestAPIEventsOutliveServerTimeouts: the stream lifts the server's read and write timeouts, and sends
// keep-alive comments; a client going away ends it (goleak checks the handler is gone).
func TestAPIEventsOutliveServerTimeouts(t *testing.T) {
	defer frontend.SetKeepAliveEvery(100 * time.Millisecond)()
	s := newStack(t)
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 11)))
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(frontend.NewServer(client.NewMaster(s.HTTP, s.master), s.ids, frontend.Limits{}), servicetest.Discard)
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Config.WriteTimeout = 300 * time.Millisecond
	srv.Start()
	defer srv.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/tasks/"+pub+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	events := streamEvents(t, s.HTTP, req)
	expectState(t, events, pub, "queued")
	deadline := time.Now().Add(time.Second)
	keepAlives := 0
	for time.Now().Before(deadline) {
		ev, ok := next(t, events)
		if !ok {
			t.Fatalf("stream ended after %d keep-alives, within the server's timeouts", keepAlives)
		}
		if ev.name != ":" || ev.data != "keep-alive" {
			t.Fatalf("event %+v, want keep-alive comments only", ev)
		}
		keepAlives++
	}
	if _, err := s.Database.GetNewTask(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	for {
		ev, ok := next(t, events)
		if !ok {
			t.Fatal("stream ended before the news")
		}
		if ev.name == "status" {
			break
		}
	}
	cancel() // the client goes away
}

// TestOpTravelsWithTheTask: the chain given to the JSON API (query or form field) or to the reference
// form (an op field before the file) reaches the task, in canonical form.
func TestOpTravelsWithTheTask(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 3)
	opOf := func(pub string) string {
		t.Helper()
		r := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil)
		var st struct{ Op string }
		if err := json.Unmarshal([]byte(r.Body), &st); err != nil {
			t.Fatalf("status %q: %v", r.Body, err)
		}
		return st.Op
	}
	for _, tc := range []struct {
		what string
		pub  string
		want string
	}{
		{"query", s.created(t, s.createRaw(t, "?op="+url.QueryEscape(" Gray , rotate:90"), img)), "grayscale,rotate:90"},
		{"form field", s.created(t, s.createForm(t, "", part{field: frontend.OpField, data: []byte("thumbnail:4,convert:jpg")},
			part{field: frontend.FileField, filename: "a.png", data: img})), "thumbnail:4,convert:jpeg"},
		{"reference form", s.submit(t, part{field: frontend.OpField, data: []byte("invert")},
			part{field: frontend.UploadField, filename: "a.png", data: img}).Body, "invert"},
		{"no op", s.created(t, s.createRaw(t, "", img)), "swap"},
	} {
		if got := opOf(tc.pub); got != tc.want {
			t.Errorf("%s: task op %q, want %q", tc.what, got, tc.want)
		}
	}
	r := s.submit(t, part{field: frontend.OpField, data: []byte("rotate:45")}, part{field: frontend.UploadField, filename: "a.png", data: img})
	if r.Status != http.StatusBadRequest || !strings.HasPrefix(r.Body, "Error: op: rotate:") {
		t.Errorf("reference form with rotate:45 = %d %q, want 400 Error: op: ...", r.Status, r.Body)
	}
}

// TestAPIIdempotencyKey: an upload retried with the same Idempotency-Key from the same client answers
// the same public id, says it is a replay, and creates nothing (on either upload path); the same key
// from another client names another task, so nobody learns someone else's id by replaying a key.
func TestAPIIdempotencyKey(t *testing.T) {
	s := newStackWith(t, frontend.Limits{TrustProxy: true})
	img := servicetest.PatternPNG(t, 8, 40)
	upload := func(key, from string) servicetest.Reply {
		t.Helper()
		h := http.Header{"Idempotency-Key": {key}, "X-Forwarded-For": {from}}
		return s.callWith(t, http.MethodPost, "/api/tasks", "image/png", bytes.NewReader(img), h)
	}
	r := upload("photo-1", "192.0.2.1")
	first := s.created(t, r)
	if got := r.Header.Get("Idempotent-Replayed"); got != "" {
		t.Errorf("the first upload with a key says Idempotent-Replayed: %q", got)
	}
	r = upload("photo-1", "192.0.2.1")
	if again := s.created(t, r); again != first || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry with the same key answered %s (Idempotent-Replayed: %q), want %s, replayed",
			again, r.Header.Get("Idempotent-Replayed"), first)
	}
	ct, body := form(t, part{field: frontend.UploadField, filename: "a.png", data: img})
	r = s.callWith(t, http.MethodPost, "/submitTask", ct, bytes.NewReader(body),
		http.Header{"Idempotency-Key": {"photo-1"}, "X-Forwarded-For": {"192.0.2.1"}})
	if r.Status != http.StatusOK || r.Body != first || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("/submitTask with the same key: %d %q (Idempotent-Replayed: %q), want %s, replayed",
			r.Status, r.Body, r.Header.Get("Idempotent-Replayed"), first)
	}
	r = upload("photo-1", "198.51.100.7")
	if other := s.created(t, r); other == first || r.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("another client's upload with the same key answered %s (Idempotent-Replayed: %q); the first client's id is %s",
			other, r.Header.Get("Idempotent-Replayed"), first)
	}
	if stats, err := s.Database.Stats(t.Context()); err != nil || stats.Queued != 2 {
		t.Errorf("%+v (%v) tasks, want 2 queued: one per client", stats, err)
	}
	r = upload(strings.Repeat("k", 256), "192.0.2.1")
	expectJSONError(t, "an overlong key", r, http.StatusBadRequest, "Idempotency-Key must be 1 to 255 characters")
}

// TestStatusWhileWaitingToRetry: a task handed back after a transient failure is queued with its retryAt,
// and the public hears what that means, not the worker's error (which names services and addresses).
func TestStatusWhileWaitingToRetry(t *testing.T) {
	s := newStack(t)
	ctx := t.Context()
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 41)))
	id := s.internal(t, pub)
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	if _, err := s.Master.RetryTask(ctx, id, task.Token, "fetch working image: 503 storage unavailable: dial tcp 10.1.2.3:3002"); err != nil {
		t.Fatal(err)
	}
	r := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil)
	var st wire.PublicStatus
	if err := json.Unmarshal([]byte(r.Body), &st); err != nil || r.Status != 200 {
		t.Fatalf("status: %d %q", r.Status, r.Body)
	}
	if st.State != "queued" || st.RetryAt.IsZero() || st.Error != "a service it needs was unavailable: it will be retried" || st.Attempts != 0 {
		t.Errorf("status %+v, want queued, a retryAt, the public reason and no attempt used", st)
	}
	if strings.Contains(r.Body, "10.1.2.3") {
		t.Errorf("the status shows an internal address: %s", r.Body)
	}
}

// TestAPIEventsSurviveMasterOutage: while the master cannot answer (503), an open event stream waits,
// sending keep-alives, instead of ending with an error; it carries on when the master is back.
func TestAPIEventsSurviveMasterOutage(t *testing.T) {
	defer frontend.SetKeepAliveEvery(100 * time.Millisecond)()
	ids, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	st := servicetest.NewStack(t, servicetest.Options{})
	target, _ := url.Parse(st.MasterURL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var down atomic.Bool
	front := servicetest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() && (r.URL.Path == "/status" || r.URL.Path == "/statuses") {
			w.Header().Set("Retry-After", "1")
			httpapi.WriteText(w, http.StatusServiceUnavailable, "Error: database unavailable")
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	s := &stack{Stack: st, ids: ids, master: &countingEndpoint{Static: client.Static(servicetest.Addr(front.URL))}}
	s.frontendURL = servicetest.Serve(t, frontend.NewServer(client.NewMaster(s.HTTP, s.master), ids, frontend.Limits{})).URL
	ctx := t.Context()
	pub := s.created(t, s.createRaw(t, "", servicetest.PatternPNG(t, 8, 42)))
	id := s.internal(t, pub)
	events := s.events(t, pub)
	expectState(t, events, pub, "queued")
	down.Store(true)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if ev, ok := next(t, events); !ok || ev.name != ":" {
			t.Fatalf("during the outage: event %+v (stream open: %v), want keep-alives only", ev, ok)
		}
	}
	task, err := s.Database.GetNewTask(ctx, 0)
	if err != nil || task.ID != id {
		t.Fatalf("claim: %+v %v", task, err)
	}
	result := servicetest.PatternPNG(t, 8, 43)
	if err := s.Storage.SendImage(ctx, id, wire.FinishedImage, bytes.NewReader(result), int64(len(result))); err != nil {
		t.Fatal(err)
	}
	if err := s.Database.FinishTask(ctx, id, task.Token); err != nil {
		t.Fatal(err)
	}
	down.Store(false)
	for {
		ev, ok := next(t, events)
		if !ok {
			t.Fatal("the stream ended without the finished status")
		}
		if ev.name == "status" {
			// A watch request the master took in before the outage may still bring the claim.
			var got wire.PublicStatus
			if err := json.Unmarshal([]byte(ev.data), &got); err != nil || (got.State != "finished" && got.State != "processing") {
				t.Fatalf("status after the outage: %q, want processing or finished", ev.data)
			}
			if got.State == "finished" {
				return
			}
		}
	}
}

// expectGivenUp waits for the task of a broken upload to be given up at once (failed, not left
// pending until it expires): failed tasks become want, and none is pending.
func (s *stack) expectGivenUp(t *testing.T, what string, want int64) {
	t.Helper()
	var st wire.Stats
	if !servicetest.PollFor(10*time.Second, func() bool {
		var err error
		st, err = s.Database.Stats(t.Context())
		return err == nil && st.Pending == 0 && st.Failed == want
	}) {
		t.Errorf("%s: %d pending and %d failed tasks, want the broken upload's task given up at once (0 pending, %d failed)",
			what, st.Pending, st.Failed, want)
	}
}

// TestTruncatedUploads: a multipart body that ends without its closing boundary, or in the middle of
// the file, is the client's mistake (400 "Error: ..."), never the master's (502), and leaves no
// pending task behind; so is a raw upload shorter than it said.
func TestTruncatedUploads(t *testing.T) {
	s := newStack(t)
	img := paddedPNG(t, 64<<10)
	ct, whole := form(t, part{field: frontend.FileField, filename: "a.png", data: img})
	noClosing := whole[:bytes.LastIndex(whole, []byte("\r\n--"))]
	midFile := whole[:len(whole)/2]
	var failed int64
	for _, path := range []string{"/api/tasks", "/submitTask"} {
		ct, whole := ct, whole
		if path == "/submitTask" {
			ct, whole = form(t, part{field: frontend.UploadField, filename: "a.png", data: img})
			noClosing, midFile = whole[:bytes.LastIndex(whole, []byte("\r\n--"))], whole[:len(whole)/2]
		}
		for name, body := range map[string][]byte{"no closing boundary": noClosing, "cut in the file": midFile} {
			what := path + ", " + name
			r := s.call(t, http.MethodPost, path, ct, bytes.NewReader(body))
			if r.Status != http.StatusBadRequest || !strings.Contains(r.Body, "the upload broke off before its end") {
				t.Errorf("%s: %d %q, want 400 \"the upload broke off before its end\"", what, r.Status, r.Body)
			}
			failed++
			s.expectGivenUp(t, what, failed)
		}
	}
	// A client that goes away mid-file (the connection closes after 8 KB of a declared 64 KB).
	for _, path := range []string{"/api/tasks", "/submitTask"} {
		ct, whole := form(t, part{field: frontend.FileField, filename: "a.png", data: img})
		if path == "/submitTask" {
			ct, whole = form(t, part{field: frontend.UploadField, filename: "a.png", data: img})
		}
		sendAndClose(t, s.frontendURL, path, ct, whole, 8<<10)
		failed++
		s.expectGivenUp(t, path+", client gone", failed)
	}
	s.ExpectNoClaimable(t)
	// The frontend still takes uploads.
	s.created(t, s.createRaw(t, "", img))
}

// sendAndClose sends a POST of body to baseURL+path declaring its full length, but only its first n
// bytes, and closes the connection.
func sendAndClose(t *testing.T, baseURL, path, contentType string, body []byte, n int) {
	t.Helper()
	conn, err := net.Dial("tcp", servicetest.Addr(baseURL))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", path, contentType, len(body))
	if _, err := conn.Write(body[:n]); err != nil {
		t.Fatal(err)
	}
}

// TestAPIPassesOnCostRefusal: the master's 413 for a chain over its cost limits reaches the client
// as it said it, in JSON.
func TestAPIPassesOnCostRefusal(t *testing.T) {
	s := newStack(t)
	tiny := append(testimage.PNGHeader(1, 1), make([]byte, 100)...)
	op := "resize:7071x7071:exact" + strings.Repeat(",blur:6", 15)
	r := s.createRaw(t, "?op="+url.QueryEscape(op), tiny)
	var body httpapi.JSONError
	if err := json.Unmarshal([]byte(r.Body), &body); err != nil || r.Status != http.StatusRequestEntityTooLarge ||
		!strings.HasPrefix(body.Error, "op: the chain would take about ") || !strings.HasSuffix(body.Error, "times the limit of 30 s (--max-task-cost)") {
		t.Errorf("a 1x1 PNG made 7071x7071 and blurred 15 times: %d %q, want 413 with the master's message", r.Status, r.Body)
	}
}
