package kvservice_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type kvServer struct {
	t   *testing.T
	url string
	c   *http.Client
}

// serve runs the kv service over the file store at path, wrapped as production wraps it. Everything is
// closed when the test ends.
func serve(t *testing.T, path string) *kvServer {
	t.Helper()
	store, err := filekv.Open(path)
	if err != nil {
		t.Fatalf("filekv.Open: %v", err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = httpapi.NewHTTPServer(kvservice.NewServer(store), slog.New(slog.DiscardHandler))
	srv.Start()
	c := httpapi.NewClient()
	t.Cleanup(func() {
		c.CloseIdleConnections()
		srv.Close()
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return &kvServer{t: t, url: srv.URL, c: c}
}

func newKV(t *testing.T) *kvServer {
	return serve(t, filepath.Join(t.TempDir(), "kv.json"))
}

type reply struct {
	status int
	body   string
	header http.Header
}

// call sends a request and checks what every reply must carry: a request id, and "Error:" on failure.
func (s *kvServer) call(method, path string, query url.Values, header http.Header) reply {
	s.t.Helper()
	u := s.url + path
	if query != nil {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := s.c.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read: %v", method, u, err)
	}
	r := reply{resp.StatusCode, string(b), resp.Header}
	if r.header.Get(httpapi.RequestIDHeader) == "" {
		s.t.Errorf("%s %s: no %s header", method, path, httpapi.RequestIDHeader)
	}
	if r.status/100 != 2 && !strings.HasPrefix(r.body, "Error:") {
		s.t.Errorf("%s %s: error reply %d %q does not start with Error:", method, path, r.status, r.body)
	}
	return r
}

func (s *kvServer) expect(method, path string, query url.Values, status int, body string) {
	s.t.Helper()
	r := s.call(method, path, query, nil)
	if r.status != status || r.body != body {
		s.t.Errorf("%s %s?%s = %d %q, want %d %q", method, path, query.Encode(), r.status, r.body, status, body)
	}
}

func (s *kvServer) set(key, value string) {
	s.t.Helper()
	s.expect(http.MethodPost, "/set", url.Values{"key": {key}, "value": {value}}, 200, "success")
}

func TestSetGet(t *testing.T) {
	kv := newKV(t)
	kv.set("storageAddress", "127.0.0.1:3002")
	kv.expect("GET", "/get", url.Values{"key": {"storageAddress"}}, 200, "127.0.0.1:3002")

	r := kv.call("GET", "/get", url.Values{"key": {"storageAddress"}}, nil)
	if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}

	// Overwrite.
	kv.set("storageAddress", "10.0.0.5:4000")
	kv.expect("GET", "/get", url.Values{"key": {"storageAddress"}}, 200, "10.0.0.5:4000")
}

func TestValuesRoundTripVerbatim(t *testing.T) {
	kv := newKV(t)
	for i, v := range []string{
		"a b&c=d?e#f%g+h",
		"ünïcødé ✓",
		" leading and trailing ",
		"line1\nline2",
		"Error: looks like an error",
		"x",
	} {
		key := fmt.Sprintf("k%d", i)
		kv.set(key, v)
		kv.expect("GET", "/get", url.Values{"key": {key}}, 200, v)
	}
	kv.set("key with spaces/and:colons", "v")
	kv.expect("GET", "/get", url.Values{"key": {"key with spaces/and:colons"}}, 200, "v")
}

func TestSetValidation(t *testing.T) {
	kv := newKV(t)
	tests := []struct {
		name  string
		query url.Values
		body  string
	}{
		{"no params", nil, "Error: missing key parameter"},
		{"empty key", url.Values{"key": {""}, "value": {"v"}}, "Error: missing key parameter"},
		{"no key", url.Values{"value": {"v"}}, "Error: missing key parameter"},
		{"empty value", url.Values{"key": {"k"}, "value": {""}}, "Error: missing value parameter"},
		{"no value", url.Values{"key": {"k"}}, "Error: missing value parameter"},
		// The store cannot hold invalid UTF-8: the caller's mistake, not an internal error.
		{"invalid UTF-8 key", url.Values{"key": {"\xff"}, "value": {"v"}}, "Error: key and value must be valid UTF-8"},
		{"invalid UTF-8 value", url.Values{"key": {"k"}, "value": {"a\xfe"}}, "Error: key and value must be valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv.expect("POST", "/set", tt.query, 400, tt.body)
		})
	}
	// Nothing was stored by the refused calls.
	kv.expect("GET", "/list", nil, 200, "")
	kv.expect("GET", "/get", url.Values{"key": {"k"}}, 404, `Error: no value for key "k"`)
}

func TestGetUnknown(t *testing.T) {
	kv := newKV(t)
	kv.expect("GET", "/get", url.Values{"key": {"nope"}}, 404, `Error: no value for key "nope"`)
	kv.expect("GET", "/get", nil, 400, "Error: missing key parameter")
}

func TestRemove(t *testing.T) {
	kv := newKV(t)
	kv.set("a", "1")
	kv.set("b", "2")
	kv.expect("DELETE", "/remove", url.Values{"key": {"a"}}, 200, "success")
	kv.expect("GET", "/get", url.Values{"key": {"a"}}, 404, `Error: no value for key "a"`)
	kv.expect("GET", "/get", url.Values{"key": {"b"}}, 200, "2")
	// Removing a missing key is not an error.
	kv.expect("DELETE", "/remove", url.Values{"key": {"a"}}, 200, "success")
	kv.expect("DELETE", "/remove", url.Values{"key": {"never"}}, 200, "success")
	kv.expect("DELETE", "/remove", nil, 400, "Error: missing key parameter")
	kv.expect("GET", "/list", nil, 200, "b : 2\n")
}

func TestList(t *testing.T) {
	kv := newKV(t)
	kv.expect("GET", "/list", nil, 200, "")
	kv.set("masterAddress", "127.0.0.1:3000")
	kv.set("databaseAddress", "127.0.0.1:3001")
	kv.set("storageAddress", "127.0.0.1:3002")
	// One "key : value" line per entry, sorted by key.
	kv.expect("GET", "/list", nil, 200,
		"databaseAddress : 127.0.0.1:3001\nmasterAddress : 127.0.0.1:3000\nstorageAddress : 127.0.0.1:3002\n")
}

func TestConcurrentSets(t *testing.T) {
	kv := newKV(t)
	const n = 16
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { kv.set(fmt.Sprintf("key%02d", i), fmt.Sprintf("value%d", i)) })
	}
	wg.Wait()
	var want strings.Builder
	for i := range n {
		fmt.Fprintf(&want, "key%02d : value%d\n", i, i)
	}
	kv.expect("GET", "/list", nil, 200, want.String())
}

func TestPersistsAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kv.json")
	t.Run("first", func(t *testing.T) {
		kv := serve(t, path)
		kv.set("databaseAddress", "127.0.0.1:3001")
		kv.set("gone", "x")
		kv.expect("DELETE", "/remove", url.Values{"key": {"gone"}}, 200, "success")
	})
	kv := serve(t, path)
	kv.expect("GET", "/get", url.Values{"key": {"databaseAddress"}}, 200, "127.0.0.1:3001")
	kv.expect("GET", "/list", nil, 200, "databaseAddress : 127.0.0.1:3001\n")
}

func TestPlumbing(t *testing.T) {
	kv := newKV(t)
	kv.expect("GET", "/healthz", nil, 200, "ok")

	tests := []struct {
		method, path string
		status       int
		body         string
		allow        string
	}{
		{"GET", "/nope", 404, "Error: no endpoint /nope", ""},
		{"GET", "/", 404, "Error: no endpoint /", ""},
		{"GET", "/set", 405, "Error: method GET not allowed on /set", "POST"},
		{"POST", "/get", 405, "Error: method POST not allowed on /get", "GET, HEAD"},
		{"GET", "/remove", 405, "Error: method GET not allowed on /remove", "DELETE"},
		{"POST", "/remove", 405, "Error: method POST not allowed on /remove", "DELETE"},
		{"DELETE", "/list", 405, "Error: method DELETE not allowed on /list", "GET, HEAD"},
		{"POST", "/healthz", 405, "Error: method POST not allowed on /healthz", "GET, HEAD"},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			r := kv.call(tt.method, tt.path, nil, nil)
			if r.status != tt.status || r.body != tt.body || r.header.Get("Allow") != tt.allow {
				t.Errorf("%s %s = %d %q Allow %q, want %d %q Allow %q", tt.method, tt.path,
					r.status, r.body, r.header.Get("Allow"), tt.status, tt.body, tt.allow)
			}
		})
	}

	r := kv.call("GET", "/get", url.Values{"key": {"x"}}, http.Header{httpapi.RequestIDHeader: {"kv-req-1"}})
	if got := r.header.Get(httpapi.RequestIDHeader); got != "kv-req-1" {
		t.Errorf("request id not echoed: %q", got)
	}
}
