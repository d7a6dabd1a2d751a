package frontend_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// referenceKV stands in for the reference design's kv service: /set stores the value and answers
// "success" whatever else the query says (no ifAbsent, no ttl); /get answers a missing key with 200
// and an empty body; /remove answers "success"; /list lists every key. With pairAbsent, a /get that
// finds no public id secret waits (up to a wide bound) for a second one, so that two frontends starting
// together both find none and both write theirs: the race a set-if-absent would settle.
type referenceKV struct {
	pairAbsent bool

	mu         sync.Mutex
	data       map[string]string
	secretSets int // sets of frontend.SecretKey
	secretGets int // gets of frontend.SecretKey
	waiting    chan struct{}
	addr       string
}

func newReferenceKV(t *testing.T, pairAbsent bool) *referenceKV {
	t.Helper()
	kv := &referenceKV{pairAbsent: pairAbsent, data: map[string]string{}}
	kv.addr = servicetest.Addr(servicetest.Serve(t, http.HandlerFunc(kv.serve)).URL)
	return kv
}

func (kv *referenceKV) serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	key := q.Get("key")
	kv.mu.Lock()
	switch r.URL.Path {
	case "/set":
		kv.data[key] = q.Get("value")
		if key == frontend.SecretKey {
			kv.secretSets++
		}
		kv.mu.Unlock()
		httpapi.WriteText(w, http.StatusOK, "success")
	case "/get":
		v, ok := kv.data[key]
		if key != frontend.SecretKey {
			kv.mu.Unlock()
			httpapi.WriteText(w, http.StatusOK, v)
			return
		}
		kv.secretGets++
		var wait chan struct{}
		if !ok && kv.pairAbsent {
			if kv.waiting == nil {
				kv.waiting = make(chan struct{})
				wait = kv.waiting
			} else {
				close(kv.waiting)
				kv.waiting = nil
			}
		}
		kv.mu.Unlock()
		if wait != nil {
			select {
			case <-wait:
			case <-time.After(30 * time.Second):
			case <-r.Context().Done():
			}
		}
		httpapi.WriteText(w, http.StatusOK, v)
	case "/remove":
		delete(kv.data, key)
		kv.mu.Unlock()
		httpapi.WriteText(w, http.StatusOK, "success")
	case "/list":
		var b strings.Builder
		for k, v := range kv.data {
			fmt.Fprintf(&b, "%s : %s\n", k, v)
		}
		kv.mu.Unlock()
		httpapi.WriteText(w, http.StatusOK, b.String())
	default:
		kv.mu.Unlock()
		http.NotFound(w, r)
	}
}

func (kv *referenceKV) set(key, value string) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	kv.data[key] = value
}

// secret returns the kv's public id secret text and how often it was set and read.
func (kv *referenceKV) secret() (value string, sets, gets int) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	return kv.data[frontend.SecretKey], kv.secretSets, kv.secretGets
}

func (kv *referenceKV) client(t *testing.T) *client.KV {
	return client.NewKV(servicetest.NewHTTPClient(t), kv.addr)
}

// logBuffer is a logger's output, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// count returns how many lines hold s.
func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// referenceKVLog is in the line a frontend logs on finding a kv store of the reference design.
const referenceKVLog = "answers like the reference design's"

// testSettle is the settle time of the unit tests: far longer than the few milliseconds between two
// frontends' writes released together.
const testSettle = time.Second

func TestResolveSecretOnReferenceKV(t *testing.T) {
	ctx := t.Context()
	var tasks atomic.Int64
	m := fakeMasterStats(t, &tasks)
	fileOf := func() string { return filepath.Join(t.TempDir(), frontend.SecretFile) }
	resolve := func(file string, kv *referenceKV, log *logBuffer) ([]byte, error) {
		return frontend.ResolveSecretSettling(ctx, file, kv.client(t), m, log.logger(), testSettle)
	}

	// Two frontends start together: both find no secret (the stand-in holds each read of the missing key
	// until the other's comes), both write theirs, the second write replaces the first, and both end with
	// the one the kv store holds.
	kv := newReferenceKV(t, true)
	var wg sync.WaitGroup
	secrets, files, logs := make([][]byte, 2), []string{fileOf(), fileOf()}, []*logBuffer{{}, {}}
	for i := range 2 {
		wg.Go(func() {
			var err error
			if secrets[i], err = resolve(files[i], kv, logs[i]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	stored, sets, _ := kv.secret()
	if sets != 2 {
		t.Errorf("%d sets of the secret, want 2: the race the test is about did not happen", sets)
	}
	want, err := publicid.ParseSecret(stored)
	if err != nil {
		t.Fatalf("the kv store holds %q: %v", stored, err)
	}
	for i := range 2 {
		if !bytes.Equal(secrets[i], want) {
			t.Errorf("frontend %d resolved %x, the kv store holds %x", i, secrets[i], want)
		}
		if b, err := os.ReadFile(files[i]); err != nil || strings.TrimSpace(string(b)) != stored {
			t.Errorf("frontend %d's file: %q, %v; want the kv store's secret", i, b, err)
		}
		if n := logs[i].count(referenceKVLog); n != 1 {
			t.Errorf("frontend %d logged the reference kv store %d times, want once", i, n)
		}
	}
	tasks.Store(3)

	// A frontend on a new machine takes it from the kv store, confirmed, and writes nothing there.
	log := &logBuffer{}
	if got, err := resolve(fileOf(), kv, log); err != nil || !bytes.Equal(got, want) {
		t.Errorf("resolve on a new machine: %x, %v; want %x", got, err, want)
	}
	if _, n, _ := kv.secret(); n != 2 {
		t.Errorf("the new machine's frontend wrote the secret (%d sets)", n)
	}
	if log.count(referenceKVLog) != 1 {
		t.Errorf("the reference kv store, found through the probe, was not logged once: %d", log.count(referenceKVLog))
	}

	// The kv store lost its data: the file's secret is put back, once.
	wiped := newReferenceKV(t, false)
	if got, err := resolve(files[0], wiped, &logBuffer{}); err != nil || !bytes.Equal(got, want) {
		t.Errorf("resolve with the file, kv store wiped: %x, %v; want %x", got, err, want)
	}
	if v, n, _ := wiped.secret(); v != stored || n != 1 {
		t.Errorf("the wiped kv store holds %q after %d sets, want the file's secret after 1", v, n)
	}

	// The kv store holds another secret: refused, and the kv store is not overwritten (a reference kv
	// store's set would replace it).
	other := newReferenceKV(t, false)
	otherText := publicid.FormatSecret(bytes.Repeat([]byte{7}, 32))
	other.set(frontend.SecretKey, otherText)
	if _, err := resolve(files[1], other, &logBuffer{}); err == nil || !strings.Contains(err.Error(), "differs from the one in the kv store") {
		t.Errorf("resolve with two different secrets: %v, want a refusal", err)
	}
	if v, n, _ := other.secret(); v != otherText || n != 0 {
		t.Errorf("the kv store's secret became %q (%d sets), want it left alone", v, n)
	}

	// Tasks exist, no secret anywhere: refused, as with imgmill's kv store; the empty value is absent,
	// not a secret of 0 bytes.
	empty := newReferenceKV(t, false)
	if _, err := resolve(fileOf(), empty, &logBuffer{}); err == nil || !strings.Contains(err.Error(), "tasks exist but no public id secret") {
		t.Errorf("resolve with tasks but no secret anywhere: %v, want the refusal", err)
	}
	if _, n, _ := empty.secret(); n != 0 {
		t.Errorf("a secret was stored all the same (%d sets)", n)
	}
}

// TestResolveSecretWithReferenceMaster: a master without /stats (the reference design's) cannot say
// whether tasks exist; the frontend makes the secret anyway, and says so.
func TestResolveSecretWithReferenceMaster(t *testing.T) {
	srv := servicetest.Serve(t, http.HandlerFunc(http.NotFound))
	m := client.NewMaster(servicetest.NewHTTPClient(t), client.Static(servicetest.Addr(srv.URL)))
	kv := newKVService(t)
	log := &logBuffer{}
	got, err := frontend.ResolveSecretSettling(t.Context(), filepath.Join(t.TempDir(), frontend.SecretFile), kv, m, log.logger(), testSettle)
	if err != nil || len(got) < publicid.MinSecretLen {
		t.Fatalf("resolve with a master without /stats: %x, %v", got, err)
	}
	if v, err := kv.Get(t.Context(), frontend.SecretKey); err != nil || v != publicid.FormatSecret(got) {
		t.Errorf("the kv store holds %q, %v; want the secret made", v, err)
	}
	if log.count("the master has no /stats") != 1 {
		t.Errorf("the master without /stats was not logged once")
	}
}

// fakeReferenceMaster answers /stats with no task (imgmill's master) and /isReady of any id with 1,
// recording the ids asked.
func fakeReadyMaster(t *testing.T) (addr string, asked func() []string) {
	var mu sync.Mutex
	var ids []string
	srv := servicetest.Serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stats":
			httpapi.WriteJSON(w, http.StatusOK, wire.Stats{})
		case "/isReady":
			mu.Lock()
			ids = append(ids, r.URL.Query().Get("id"))
			mu.Unlock()
			httpapi.WriteText(w, http.StatusOK, "1")
		default:
			http.NotFound(w, r)
		}
	}))
	return servicetest.Addr(srv.URL), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), ids...)
	}
}

// runFrontend runs frontend.Run until the test ends and returns its base URL.
func runFrontend(t *testing.T, kvAddr, dataDir string, secret []byte, logger *slog.Logger) string {
	t.Helper()
	addr := enginetest.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- frontend.Run(ctx, frontend.Config{
			Options: service.Options{Addr: addr, Logger: logger},
			KV:      client.NewKV(servicetest.NewHTTPClient(t), kvAddr),
			HTTP:    servicetest.NewHTTPClient(t),
			Secret:  secret,
			DataDir: dataDir,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("frontend at %s: %v", addr, err)
		}
	})
	return "http://" + addr
}

// isReady asks a frontend whether task public is ready; it answers 503 until its secret is resolved.
func isReady(t *testing.T, base, public string) servicetest.Reply {
	t.Helper()
	r, err := servicetest.Send(t.Context(), servicetest.NewHTTPClient(t), http.MethodGet, base+"/isReady?id="+public, nil)
	if err != nil {
		return servicetest.Reply{Status: http.StatusServiceUnavailable}
	}
	return r
}

// TestFrontendsOnReferenceKV: two frontends start at once on a reference kv store (with imgmill's
// master, found through it): both end with the same public id secret, so the ids one hands out resolve
// in the other. A frontend given --secret uses it, neither reading nor writing the kv store's.
func TestFrontendsOnReferenceKV(t *testing.T) {
	kv := newReferenceKV(t, true)
	masterAddr, asked := fakeReadyMaster(t)
	kv.set(wire.MasterKey, masterAddr)
	dirs := []string{t.TempDir(), t.TempDir()}
	urls := make([]string, 2)
	for i := range 2 {
		urls[i] = runFrontend(t, kv.addr, dirs[i], nil, servicetest.Discard)
	}
	// Each frontend keeps the secret it settled on in its data directory; wait for both.
	texts := make([]string, 2)
	if !servicetest.PollFor(time.Minute, func() bool {
		for i, dir := range dirs {
			b, err := os.ReadFile(filepath.Join(dir, frontend.SecretFile))
			if err != nil {
				return false
			}
			texts[i] = strings.TrimSpace(string(b))
		}
		return true
	}) {
		t.Fatal("the frontends did not resolve their public id secret within a minute")
	}
	stored, sets, _ := kv.secret()
	if sets != 2 || texts[0] != stored || texts[1] != stored {
		t.Fatalf("frontends hold %q and %q, the kv store %q after %d sets; want the same everywhere after 2", texts[0], texts[1], stored, sets)
	}
	secret, err := publicid.ParseSecret(stored)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := publicid.New(secret)
	if err != nil {
		t.Fatal(err)
	}
	// An id of either frontend's resolves in the other (the master is asked about task 7, then 8).
	for i, id := range []int64{7, 8} {
		public := ids.Encode(id)
		var r servicetest.Reply
		servicetest.PollFor(time.Minute, func() bool {
			r = isReady(t, urls[i], public)
			return r.Status != http.StatusServiceUnavailable
		})
		if r.Status != http.StatusOK || r.Body != ready {
			t.Errorf("frontend %d, /isReady of task %d: %d %q; want 200 %q", i, id, r.Status, r.Body, ready)
		}
	}
	if got := asked(); len(got) != 2 || got[0] != "7" || got[1] != "8" {
		t.Errorf("the master was asked about tasks %v, want [7 8]", got)
	}

	// --secret wins: the kv store's secret is neither read nor replaced, and no file is kept.
	_, _, getsBefore := kv.secret()
	dir := t.TempDir()
	given := runFrontend(t, kv.addr, dir, testSecret, servicetest.Discard)
	givenIDs, err := publicid.New(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	var r servicetest.Reply
	servicetest.PollFor(time.Minute, func() bool {
		r = isReady(t, given, givenIDs.Encode(9))
		return r.Status != http.StatusServiceUnavailable
	})
	if r.Status != http.StatusOK || r.Body != ready {
		t.Errorf("frontend with --secret, /isReady of its own id: %d %q; want 200", r.Status, r.Body)
	}
	if r := isReady(t, given, ids.Encode(10)); r.Status != http.StatusNotFound {
		t.Errorf("frontend with --secret, /isReady of an id made with the kv store's secret: %d %q; want 404", r.Status, r.Body)
	}
	if v, n, gets := kv.secret(); v != stored || n != 2 || gets != getsBefore {
		t.Errorf("with --secret, the kv store's secret: %q after %d sets and %d more reads; want it untouched", v, n, gets-getsBefore)
	}
	if _, err := os.Stat(filepath.Join(dir, frontend.SecretFile)); !os.IsNotExist(err) {
		t.Errorf("with --secret, a secret file was kept: %v", err)
	}
}
