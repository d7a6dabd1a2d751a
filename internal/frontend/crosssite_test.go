package frontend_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/servicetest"
)

// A page of another site cannot upload here through its visitors' browsers (no-cors form posts and
// fetches carry Sec-Fetch-Site and Origin); this site's own page, an allowed site, and clients that are
// not browsers (no such headers: curl, scripts, the reference's clients) can. Refusals create nothing.
func TestCrossSiteUploadsRefused(t *testing.T) {
	const partner = "https://partner.example"
	s := newStackWith(t, frontend.Limits{AllowedOrigins: []string{partner}})
	self := s.frontendURL // http://127.0.0.1:PORT, the Host the browser would send
	img := servicetest.PatternPNG(t, 8, 5)
	ct, body := form(t, part{field: frontend.UploadField, filename: "x.png", data: img})
	for _, tc := range []struct {
		name   string
		header http.Header
		ok     bool
	}{
		{"curl (no browser headers)", nil, true},
		{"this site's page", http.Header{"Sec-Fetch-Site": {"same-origin"}, "Origin": {self}}, true},
		{"this site's page, older browser", http.Header{"Origin": {self}}, true},
		{"typed by the user", http.Header{"Sec-Fetch-Site": {"none"}}, true},
		{"an allowed site", http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {partner}}, true},
		{"another site", http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://evil.example"}}, false},
		{"another site, older browser", http.Header{"Origin": {"https://evil.example"}}, false},
		{"a sibling subdomain", http.Header{"Sec-Fetch-Site": {"same-site"}, "Origin": {"https://evil.127.0.0.1.example"}}, false},
		{"a sandboxed page", http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"null"}}, false},
	} {
		before := s.master.calls.Load()
		form := s.callWith(t, http.MethodPost, "/submitTask", ct, bytes.NewReader(body), tc.header)
		api := s.callWith(t, http.MethodPost, "/api/tasks?op=invert", "image/png", bytes.NewReader(img), tc.header)
		if tc.ok {
			if form.Status != http.StatusOK || api.Status != http.StatusCreated {
				t.Errorf("%s: /submitTask %d %q, /api/tasks %d %q; want accepted", tc.name, form.Status, form.Body, api.Status, api.Body)
			}
			continue
		}
		var refusal struct{ Error string }
		if form.Status != http.StatusForbidden || !strings.HasPrefix(form.Body, "Error: uploads from a page of ") {
			t.Errorf("%s: /submitTask %d %q, want 403 Error: uploads from a page of ...", tc.name, form.Status, form.Body)
		}
		if api.Status != http.StatusForbidden || json.Unmarshal([]byte(api.Body), &refusal) != nil || !strings.Contains(refusal.Error, "are not accepted here") {
			t.Errorf("%s: /api/tasks %d %q, want 403 with a JSON error", tc.name, api.Status, api.Body)
		}
		if n := s.master.calls.Load() - before; n != 0 {
			t.Errorf("%s: refused uploads made %d master calls", tc.name, n)
		}
	}
	// Reading is never refused: GETs change nothing, and pages may link to results.
	r := s.callWith(t, http.MethodGet, "/api/operations", "", nil, http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://evil.example"}})
	if r.Status != http.StatusOK {
		t.Errorf("cross-site GET /api/operations: %d %q", r.Status, r.Body)
	}
}

func TestCheckOrigins(t *testing.T) {
	if err := frontend.CheckOrigins([]string{"https://a.example", "http://b.example:8080"}); err != nil {
		t.Errorf("valid origins refused: %v", err)
	}
	for _, bad := range []string{"a.example", "https://a.example/path", "https://a.example?q=1"} {
		if err := frontend.CheckOrigins([]string{bad}); err == nil {
			t.Errorf("origin %q accepted", bad)
		}
	}
}
