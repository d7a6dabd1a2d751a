package kvservice_test

import (
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore"
	"github.com/imgmill/imgmill/internal/kvstore/etcdkv"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
	"github.com/imgmill/imgmill/internal/servicetest"
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
	store, err := filekv.Open(path, filekv.Options{})
	if err != nil {
		t.Fatalf("filekv.Open: %v", err)
	}
	return serveStore(t, store)
}

func newKV(t *testing.T) *kvServer {
	return serve(t, filepath.Join(t.TempDir(), "kv.json"))
}

// serveStore runs the kv service over store, which it closes when the test ends.
func serveStore(t *testing.T, store kvstore.Store) *kvServer {
	t.Helper()
	servicetest.CloseAtCleanup(t, "store", store)
	srv := servicetest.Serve(t, kvservice.NewServer(store))
	return &kvServer{t: t, url: srv.URL, c: servicetest.NewHTTPClient(t)}
}

// call sends a request and checks what every reply must carry (see servicetest.ConventionError).
func (s *kvServer) call(method, path string, query url.Values) servicetest.Reply {
	s.t.Helper()
	u := s.url + path
	if query != nil {
		u += "?" + query.Encode()
	}
	r := servicetest.Call(s.t, s.c, method, u, nil)
	if err := servicetest.ConventionError(method, path, r); err != nil {
		s.t.Error(err)
	}
	return r
}

func (s *kvServer) expect(method, path string, query url.Values, status int, body string) {
	s.t.Helper()
	r := s.call(method, path, query)
	if r.Status != status || r.Body != body {
		s.t.Errorf("%s %s?%s = %d %q, want %d %q", method, path, query.Encode(), r.Status, r.Body, status, body)
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

	r := kv.call("GET", "/get", url.Values{"key": {"storageAddress"}})
	if ct := r.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
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
		// A newline would forge lines of /list, which has one "key : value" per line.
		{"newline in a value", url.Values{"key": {"k"}, "value": {"v\nforged : 10.0.0.66:3003"}}, "Error: key and value must not contain control characters (newlines, tabs, ...)"},
		{"newline in a key", url.Values{"key": {"k\nmasterAddress"}, "value": {"v"}}, "Error: key and value must not contain control characters (newlines, tabs, ...)"},
		{"tab in a value", url.Values{"key": {"k"}, "value": {"a\tb"}}, "Error: key and value must not contain control characters (newlines, tabs, ...)"},
		{"ttl not a duration", url.Values{"key": {"k"}, "value": {"v"}, "ttl": {"soon"}}, `Error: ttl must be a duration like 10s, got "soon"`},
		{"ttl without unit", url.Values{"key": {"k"}, "value": {"v"}, "ttl": {"1.5"}}, `Error: ttl must be a duration like 10s, got "1.5"`},
		{"ttl negative", url.Values{"key": {"k"}, "value": {"v"}, "ttl": {"-1s"}}, "Error: ttl must be between 0 and 24h0m0s"},
		{"ttl negative seconds", url.Values{"key": {"k"}, "value": {"v"}, "ttl": {"-5"}}, "Error: ttl must be between 0 and 24h0m0s"},
		{"ttl too long", url.Values{"key": {"k"}, "value": {"v"}, "ttl": {"25h"}}, "Error: ttl must be between 0 and 24h0m0s"},
		{"ttl too many seconds", url.Values{"key": {"k"}, "value": {"v"}, "ttl": {"86401"}}, "Error: ttl must be between 0 and 24h0m0s"},
		{"ttl overflowing", url.Values{"key": {"k"}, "value": {"v"}, "ttl": {"99999999999999999999"}}, `Error: ttl must be a duration like 10s, got "99999999999999999999"`},
		{"ttl and no key", url.Values{"value": {"v"}, "ttl": {"10s"}}, "Error: missing key parameter"},
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

// An entry set with a ttl disappears from /get and /list once the ttl lapses; one without a ttl, or with
// 0, stays, and a /set without ttl makes an expiring entry permanent. Real time: the ttl is short and the
// test polls rather than timing anything.
func TestSetTTL(t *testing.T) {
	kv := newKV(t)
	setTTL := func(key, value, ttl string) {
		t.Helper()
		kv.expect("POST", "/set", url.Values{"key": {key}, "value": {value}, "ttl": {ttl}}, 200, "success")
	}
	setTTL("renewed", "r", "1s")
	kv.set("renewed", "r") // permanent again, before any of the 1s entries below were set
	kv.set("databaseAddress", "127.0.0.1:3001")
	setTTL("zero", "z", "0")
	setTTL("long", "l", "1h")
	setTTL("seconds", "s", "1") // whole seconds
	setTTL("masterAddress", "127.0.0.1:3003", "1s")

	gone := func(key string) bool {
		r := kv.call("GET", "/get", url.Values{"key": {key}})
		return r.Status == http.StatusNotFound
	}
	if !servicetest.PollFor(10*time.Second, func() bool { return gone("masterAddress") && gone("seconds") }) {
		t.Fatal("entries set with ttl=1s still there after 10s")
	}
	kv.expect("GET", "/get", url.Values{"key": {"masterAddress"}}, 404, `Error: no value for key "masterAddress"`)
	kv.expect("GET", "/get", url.Values{"key": {"long"}}, 200, "l")
	kv.expect("GET", "/list", nil, 200, "databaseAddress : 127.0.0.1:3001\nlong : l\nrenewed : r\nzero : z\n")

	// Renewing an entry before it lapses keeps it; an expired key can be set again.
	setTTL("masterAddress", "127.0.0.1:4003", "1h")
	kv.expect("GET", "/get", url.Values{"key": {"masterAddress"}}, 200, "127.0.0.1:4003")
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

func TestListPrefix(t *testing.T) {
	kv := newKV(t)
	kv.set("masterAddress", "127.0.0.1:3000")
	kv.set("masterAddress/127.0.0.1:3000", "127.0.0.1:3000")
	kv.set("masterAddress/127.0.0.1:3010", "127.0.0.1:3010")
	kv.set("storageAddress/127.0.0.1:3002", "127.0.0.1:3002")
	kv.expect("GET", "/list", url.Values{"prefix": {"masterAddress/"}}, 200,
		"masterAddress/127.0.0.1:3000 : 127.0.0.1:3000\nmasterAddress/127.0.0.1:3010 : 127.0.0.1:3010\n")
	kv.expect("GET", "/list", url.Values{"prefix": {"nothing/"}}, 200, "")
	// An empty prefix is the whole list.
	kv.expect("GET", "/list", url.Values{"prefix": {""}}, 200, kv.call("GET", "/list", nil).Body)
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
	servicetest.CheckPlumbing(t, kv.c, kv.url, []servicetest.Route{
		{Method: "GET", Path: "/nope", Status: 404, Body: "Error: no endpoint /nope"},
		{Method: "GET", Path: "/", Status: 404, Body: "Error: no endpoint /"},
		{Method: "GET", Path: "/set", Status: 405, Body: "Error: method GET not allowed on /set", Allow: "POST"},
		{Method: "POST", Path: "/get", Status: 405, Body: "Error: method POST not allowed on /get", Allow: "GET, HEAD"},
		{Method: "GET", Path: "/remove", Status: 405, Body: "Error: method GET not allowed on /remove", Allow: "DELETE"},
		{Method: "POST", Path: "/remove", Status: 405, Body: "Error: method POST not allowed on /remove", Allow: "DELETE"},
		{Method: "DELETE", Path: "/list", Status: 405, Body: "Error: method DELETE not allowed on /list", Allow: "GET, HEAD"},
		{Method: "POST", Path: "/healthz", Status: 405, Body: "Error: method POST not allowed on /healthz", Allow: "GET, HEAD"},
	})
	servicetest.CheckEchoesRequestID(t, kv.c, "GET", kv.url+"/get?"+url.Values{"key": {"x"}}.Encode(), "kv-req-1")
}

// POST /set?ifAbsent=true stores only into an absent key and answers what the key holds afterwards.
func TestSetIfAbsent(t *testing.T) {
	kv := newKV(t)
	ifAbsent := func(key, value string) url.Values {
		return url.Values{"key": {key}, "value": {value}, "ifAbsent": {"true"}}
	}
	kv.expect("POST", "/set", ifAbsent("publicIdSecret", "first"), 200, "first")
	kv.expect("POST", "/set", ifAbsent("publicIdSecret", "second"), 200, "first")
	kv.expect("GET", "/get", url.Values{"key": {"publicIdSecret"}}, 200, "first")
	kv.expect("POST", "/set", url.Values{"key": {"k"}, "value": {"v"}, "ifAbsent": {"yes"}}, 400, "Error: ifAbsent must be true when given")
	kv.expect("POST", "/set", url.Values{"key": {"k"}, "value": {"v"}, "ifAbsent": {"true"}, "ttl": {"5s"}}, 400, "Error: ifAbsent entries do not expire: drop ttl")
	kv.expect("GET", "/get", url.Values{"key": {"k"}}, 404, `Error: no value for key "k"`)
}

// exerciseReferenceAPI runs the reference endpoints through one life of an empty kv service: what a
// client of the reference design does, and the additive ttl, prefix and ifAbsent parameters.
func exerciseReferenceAPI(t *testing.T, kv *kvServer) {
	kv.expect("GET", "/list", nil, 200, "")
	kv.set("masterAddress", "127.0.0.1:3003")
	kv.expect("GET", "/get", url.Values{"key": {"masterAddress"}}, 200, "127.0.0.1:3003")
	kv.set("masterAddress", "127.0.0.1:4003")
	kv.expect("GET", "/get", url.Values{"key": {"masterAddress"}}, 200, "127.0.0.1:4003")
	kv.set("odd value", "a b&c=d?e ünï line2")
	kv.expect("GET", "/get", url.Values{"key": {"odd value"}}, 200, "a b&c=d?e ünï line2")
	kv.expect("DELETE", "/remove", url.Values{"key": {"odd value"}}, 200, "success")
	kv.expect("GET", "/get", url.Values{"key": {"odd value"}}, 404, `Error: no value for key "odd value"`)
	kv.expect("POST", "/set", url.Values{"key": {"masterAddress/127.0.0.1:4003"}, "value": {"127.0.0.1:4003"}, "ttl": {"1s"}}, 200, "success")
	kv.expect("GET", "/list", url.Values{"prefix": {"masterAddress/"}}, 200, "masterAddress/127.0.0.1:4003 : 127.0.0.1:4003\n")
	kv.expect("POST", "/set", url.Values{"key": {"secret"}, "value": {"first"}, "ifAbsent": {"true"}}, 200, "first")
	kv.expect("POST", "/set", url.Values{"key": {"secret"}, "value": {"second"}, "ifAbsent": {"true"}}, 200, "first")
	// The registration lapses (etcd rounds ttls up to its minimum lease, a second or two).
	if !servicetest.PollFor(15*time.Second, func() bool {
		return kv.call("GET", "/get", url.Values{"key": {"masterAddress/127.0.0.1:4003"}}).Status == http.StatusNotFound
	}) {
		t.Fatal("an entry set with ttl=1s still there after 15s")
	}
	kv.expect("GET", "/list", nil, 200, "masterAddress : 127.0.0.1:4003\nsecret : first\n")
}

func TestReferenceAPI(t *testing.T) {
	exerciseReferenceAPI(t, newKV(t))
}

// TestReferenceAPIOnEtcd: the kv service's endpoints answer the same on etcd.
func TestReferenceAPIOnEtcd(t *testing.T) {
	cluster := enginetest.StartEtcd(t, 1)
	endpoints, err := etcdkv.ParseURL(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	store, err := etcdkv.Open(t.Context(), etcdkv.Options{Endpoints: endpoints, Prefix: "kvservice-test/"})
	if err != nil {
		t.Fatal(err)
	}
	exerciseReferenceAPI(t, serveStore(t, store))
}
