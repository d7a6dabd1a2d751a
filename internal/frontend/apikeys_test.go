package frontend_test

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/servicetest"
)

var (
	aliceKey = strings.Repeat("a1", 16)
	bobKey   = strings.Repeat("b2", 20)
)

func testAPIKeys(t *testing.T) *frontend.APIKeys {
	t.Helper()
	keys, err := frontend.ParseAPIKeys(strings.NewReader("# clients\nalice " + aliceKey + "\n\n  bob\t" + bobKey + "  \n"))
	if err != nil {
		t.Fatal(err)
	}
	if keys.Len() != 2 {
		t.Fatalf("parsed %d keys, want 2", keys.Len())
	}
	return keys
}

func TestParseAPIKeysRefuses(t *testing.T) {
	for _, file := range []string{
		"alice",                        // no key
		"alice " + aliceKey + " extra", // three fields
		"alice short",                  // key too short
		"alice " + aliceKey + "\nbob " + aliceKey, // one key twice
		"al\x01ce " + aliceKey,                    // name not printable
		strings.Repeat("n", 200) + " " + aliceKey, // name too long
		"alice " + strings.Repeat("\x7f", 40),     // key not printable
	} {
		if _, err := frontend.ParseAPIKeys(strings.NewReader(file)); err == nil {
			t.Errorf("ParseAPIKeys(%q) accepted it", file)
		}
	}
}

// newKeyedStack is a frontend with API keys in front of a master that believes its owner header (as
// one that requires its token does).
func newKeyedStack(t *testing.T, opts frontend.Limits) *stack {
	t.Helper()
	ids, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{Stack: servicetest.NewStack(t, servicetest.Options{MaxUpload: maxUpload,
		Limits: master.Limits{TrustOwner: true}}), ids: ids}
	s.master = &countingEndpoint{Static: client.Static(servicetest.Addr(s.MasterURL))}
	s.frontendURL = servicetest.Serve(t, frontend.NewServer(client.NewMaster(s.HTTP, s.master), ids, opts)).URL
	return s
}

// TestAPIKeysOwnTasks: an upload with a listed key is owned by key:NAME, one without by its address,
// one with an unknown key is refused before the master hears of it.
func TestAPIKeysOwnTasks(t *testing.T) {
	opts := frontend.Limits{APIKeys: testAPIKeys(t)}
	s := newKeyedStack(t, opts)
	img := servicetest.PatternPNG(t, 8, 1)
	upload := func(header http.Header) servicetest.Reply {
		return s.callWith(t, http.MethodPost, "/api/tasks", "image/png", bytes.NewReader(img), header)
	}
	for _, c := range []struct {
		what   string
		header http.Header
		owner  string
	}{
		{"bearer", http.Header{"Authorization": {"Bearer " + aliceKey}}, "key:alice"},
		{"X-API-Key", http.Header{"X-Api-Key": {bobKey}}, "key:bob"},
		{"no key", nil, "127.0.0.1"},
	} {
		pub := s.created(t, upload(c.header))
		task, err := s.Database.GetByID(t.Context(), s.internal(t, pub))
		if err != nil {
			t.Fatal(err)
		}
		if task.Owner != c.owner {
			t.Errorf("%s: task owned by %q, want %q", c.what, task.Owner, c.owner)
		}
	}
	before := s.master.calls.Load()
	r := upload(http.Header{"Authorization": {"Bearer " + strings.Repeat("z", 32)}})
	expectJSONError(t, "unknown key", r, http.StatusUnauthorized, "unknown API key")
	r = s.submitWith(t, http.Header{"X-Api-Key": {"nope"}}, part{field: frontend.UploadField, filename: "x.png", data: img})
	if r.Status != http.StatusUnauthorized || r.Body != "Error: unknown API key" {
		t.Errorf("/submitTask with an unknown key: %d %q, want 401", r.Status, r.Body)
	}
	if n := s.master.calls.Load() - before; n != 0 {
		t.Errorf("refused uploads made %d master calls", n)
	}
}

// TestAPIKeysRateLimit: a key has its own upload bucket, apart from its address's.
func TestAPIKeysRateLimit(t *testing.T) {
	s := newKeyedStack(t, frontend.Limits{APIKeys: testAPIKeys(t), UploadRate: 0.5, UploadBurst: 1})
	img := servicetest.PatternPNG(t, 8, 2)
	upload := func(header http.Header) servicetest.Reply {
		return s.callWith(t, http.MethodPost, "/api/tasks", "image/png", bytes.NewReader(img), header)
	}
	alice := http.Header{"Authorization": {"Bearer " + aliceKey}}
	s.created(t, upload(alice))
	expectJSONError(t, "alice's second upload", upload(alice), http.StatusTooManyRequests, "too many uploads, retry in 2s")
	s.created(t, upload(http.Header{"X-Api-Key": {bobKey}}))
	s.created(t, upload(nil)) // the address's own bucket
}

// TestOwnerHeaderIgnoredUntrusted: a master that does not trust its callers (--insecure, no token) takes the owner from the
// connection, whatever the caller claims.
func TestOwnerHeaderIgnoredUntrusted(t *testing.T) {
	s := newStackWith(t, frontend.Limits{APIKeys: testAPIKeys(t)})
	pub := s.created(t, s.callWith(t, http.MethodPost, "/api/tasks", "image/png",
		bytes.NewReader(servicetest.PatternPNG(t, 8, 3)), http.Header{"Authorization": {"Bearer " + aliceKey}}))
	task, err := s.Database.GetByID(t.Context(), s.internal(t, pub))
	if err != nil {
		t.Fatal(err)
	}
	if task.Owner != "127.0.0.1" {
		t.Errorf("task owned by %q, want the frontend's address 127.0.0.1", task.Owner)
	}
}
