package frontend_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// The master's quota refusals reach the client with their status, Retry-After and message, on the
// reference page's upload and on the JSON API; the frontend streams uploads without a length, so the
// byte quota is the one that stops a stream at the owner's room.
func TestQuotaRefusalsPassThrough(t *testing.T) {
	img := servicetest.PaddedPNG(64, 64, 20<<10)
	s := newStackOver(t, servicetest.Options{MaxUpload: maxUpload, Limits: master.Limits{QuotaTasks: 2, QuotaBytes: int64(len(img)) + 4096}},
		frontend.Limits{})
	expect := func(what string, r servicetest.Reply, status int, prefix, mention string) {
		t.Helper()
		if r.Status != status || r.Header.Get("Retry-After") == "" || !strings.HasPrefix(r.Body, prefix) || !strings.Contains(r.Body, mention) {
			t.Errorf("%s: %d (Retry-After %q) %q, want %d with Retry-After, %q ... %q", what, r.Status, r.Header.Get("Retry-After"), r.Body,
				status, prefix, mention)
		}
	}
	s.submitImage(t, img)
	expect("submitTask past the byte quota", s.submit(t, part{field: frontend.UploadField, filename: "x.png", data: img}),
		http.StatusInsufficientStorage, "Error: quota: ", "the most one owner may keep is")
	expect("API upload past the byte quota", s.createRaw(t, "", img), http.StatusInsufficientStorage, `{"error":"quota: `, "retention")
	s.submitImage(t, servicetest.PatternPNG(t, 8, 1)) // a small one still fits
	expect("API upload past the task quota", s.createRaw(t, "", servicetest.PatternPNG(t, 8, 2)), http.StatusTooManyRequests,
		`{"error":"quota: `, "keeps 2 tasks")
}
