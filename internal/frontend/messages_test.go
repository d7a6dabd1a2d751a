package frontend_test

import (
	"bytes"
	"cmp"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestRefusalTexts: the exact words of each refusal of an upload a person may meet, said once, the
// reason first and then what to do, through both upload paths.
func TestRefusalTexts(t *testing.T) {
	const limit = 4000
	s := newStackWith(t, frontend.Limits{MaxUpload: limit})
	const resave = ": save it as PNG or JPEG and upload it again"
	png := servicetest.PatternPNG(t, 8, 3)
	big := paddedPNG(t, 100_000)
	streamed := func(body []byte) func() servicetest.Reply {
		return func() servicetest.Reply {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.frontendURL+"/api/tasks", io.NopCloser(bytes.NewReader(body)))
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = -1
			return servicetest.MustDo(t, s.HTTP, req)
		}
	}
	for _, c := range []struct {
		name   string
		body   []byte
		send   func() servicetest.Reply // nil: POST the body to /api/tasks with its length
		status int
		msg    string
		// formMsg is /submitTask's, when it differs: its declared length counts the form too.
		formMsg string
	}{
		{name: "not an image", body: []byte("just some text, no image"), status: http.StatusUnsupportedMediaType,
			msg: "this file is not an image imgmill reads (PNG, JPEG, GIF, WebP, BMP, TIFF): choose an image file"},
		{name: "PNG cut short", body: png[:20], status: http.StatusUnsupportedMediaType,
			msg: "cannot read this PNG: the file is cut short: it ends after 20 bytes, before the image size (unexpected EOF)" + resave},
		{name: "TIFF directory far in", body: []byte("II*\x00\x00\x00\x00\x80"), status: http.StatusUnsupportedMediaType,
			msg: "cannot read this TIFF: its image directory starts at byte 2147483648, past the first 262144 bytes" + resave},
		{name: "too large by its length", body: big, status: http.StatusRequestEntityTooLarge,
			msg:     "the image is 97.7 KB; the largest upload is 3.9 KB: make it smaller (fewer pixels, or saved as JPEG) and upload it again",
			formMsg: "the image is 97.9 KB; the largest upload is 3.9 KB: make it smaller (fewer pixels, or saved as JPEG) and upload it again"},
		{name: "too large, streamed", send: streamed(big), status: http.StatusRequestEntityTooLarge,
			msg: "the image is larger than 3.9 KB, the largest upload: make it smaller (fewer pixels, or saved as JPEG) and upload it again"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.send != nil {
				expectJSONError(t, "POST /api/tasks", c.send(), c.status, c.msg)
				return
			}
			expectJSONError(t, "POST /api/tasks", s.createRaw(t, "", c.body), c.status, c.msg)
			want := "Error: " + cmp.Or(c.formMsg, c.msg)
			if r := s.submit(t, part{field: frontend.UploadField, filename: "a.img", data: c.body}); r.Status != c.status || r.Body != want {
				t.Errorf("POST /submitTask: %d %q, want %d %q", r.Status, r.Body, c.status, want)
			}
		})
	}
	s.ExpectNoClaimable(t)
}

// TestStateMessages: the public error of each state, through the status API: none while queued or
// finished, the reason of a failure (without attempts), "cancelled" for a cancelled task.
func TestStateMessages(t *testing.T) {
	s := newStack(t)
	img := servicetest.PatternPNG(t, 8, 4)
	status := func(pub string) wire.PublicStatus {
		t.Helper()
		var st wire.PublicStatus
		if r := s.call(t, http.MethodGet, "/api/tasks/"+pub, "", nil); json.Unmarshal([]byte(r.Body), &st) != nil {
			t.Fatalf("GET /api/tasks/%s: %d %q", pub, r.Status, r.Body)
		}
		return st
	}
	queued := s.submitImage(t, img)
	if st := status(queued); st.State != wire.QueuedWord || st.Error != "" {
		t.Errorf("queued: %s %q, want queued without error", st.State, st.Error)
	}
	task, err := s.Database.GetNewTask(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	const reason = "cannot read this PNG: png: invalid format: invalid checksum: save it as PNG or JPEG and upload it again"
	if _, err := s.Master.FailTask(t.Context(), task.ID, task.Token, reason, true); err != nil {
		t.Fatal(err)
	}
	if st := status(queued); st.State != wire.FailedWord || st.Error != reason {
		t.Errorf("failed: %s %q, want failed %q", st.State, st.Error, reason)
	}
	cancelled := s.submitImage(t, img)
	s.call(t, http.MethodPost, "/api/tasks/"+cancelled+"/cancel", "", nil)
	if st := status(cancelled); st.State != wire.CancelledWord || st.Error != "cancelled" {
		t.Errorf("cancelled: %s %q, want cancelled %q", st.State, st.Error, "cancelled")
	}
}
