package frontend_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/testimage"
)

// TestUploadScanBombRefused: the master's 422 for an image over a decoding budget reaches the client of
// either upload path with its message.
func TestUploadScanBombRefused(t *testing.T) {
	s := newStack(t)
	bomb := testimage.JPEGScanBomb(7000, 7000, 1000)
	msg := fmt.Sprintf("progressive JPEG with more than %d scans, over the limit of %[1]d (encoders write at most a few dozen)",
		imageop.MaxJPEGScans)
	expectJSONError(t, "scan bomb, raw", s.createRaw(t, "", bomb), http.StatusUnprocessableEntity, msg)
	r := s.submit(t, part{field: frontend.UploadField, filename: "bomb.jpg", data: bomb})
	if r.Status != http.StatusUnprocessableEntity || r.Body != "Error: "+msg {
		t.Errorf("scan bomb, /submitTask: %d %q, want 422 %q", r.Status, r.Body, "Error: "+msg)
	}
}
