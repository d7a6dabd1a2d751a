package client_test

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// referenceKV stands in for the reference design's kv service: /set stores the value and answers
// "success" whatever else the query says (no ifAbsent, no ttl); /get answers a missing key with 200
// and an empty body; /remove answers "success"; /list lists every key, "key : value" a line, whatever
// the prefix.
type referenceKV struct {
	mu   sync.Mutex
	data map[string]string
	sets int
}

func newReferenceKV(t *testing.T, hc *http.Client) (*referenceKV, *client.KV) {
	t.Helper()
	kv := &referenceKV{data: map[string]string{}}
	srv := serve(t, func(w http.ResponseWriter, r *http.Request) {
		kv.mu.Lock()
		defer kv.mu.Unlock()
		q := r.URL.Query()
		switch r.URL.Path {
		case "/set":
			kv.data[q.Get("key")] = q.Get("value")
			kv.sets++
			httpapi.WriteText(w, http.StatusOK, "success")
		case "/get":
			httpapi.WriteText(w, http.StatusOK, kv.data[q.Get("key")])
		case "/remove":
			delete(kv.data, q.Get("key"))
			httpapi.WriteText(w, http.StatusOK, "success")
		case "/list":
			keys := slices.Sorted(func(yield func(string) bool) {
				for k := range kv.data {
					if !yield(k) {
						return
					}
				}
			})
			var b strings.Builder
			for _, k := range keys {
				fmt.Fprintf(&b, "%s : %s\n", k, kv.data[k])
			}
			httpapi.WriteText(w, http.StatusOK, b.String())
		default:
			http.NotFound(w, r)
		}
	})
	return kv, client.NewKV(hc, servicetest.Addr(srv.URL))
}

func (kv *referenceKV) get(key string) (string, bool) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	v, ok := kv.data[key]
	return v, ok
}

// newImgmillKV returns a client of imgmill's kv service over a file store.
func newImgmillKV(t *testing.T, hc *http.Client) *client.KV {
	t.Helper()
	store, err := filekv.Open(filepath.Join(t.TempDir(), "kv.json"), filekv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "kv store", store)
	return client.NewKV(hc, servicetest.Addr(servicetest.Serve(t, kvservice.NewServer(store)).URL))
}

// TestKVEmptyValueIsAbsent: a reference kv store's 200 with an empty body for a missing key is the
// same not-found error as imgmill's 404, and marked as the reference's answer.
func TestKVEmptyValueIsAbsent(t *testing.T) {
	ctx := t.Context()
	hc := servicetest.NewHTTPClient(t)
	_, ref := newReferenceKV(t, hc)
	own := newImgmillKV(t, hc)

	_, err := ref.Get(ctx, "missing")
	if !client.IsStatus(err, http.StatusNotFound) || !errors.Is(err, client.ErrEmptyValue) {
		t.Errorf("reference kv, Get of a missing key: %v, want a 404 marked ErrEmptyValue", err)
	}
	_, err = own.Get(ctx, "missing")
	if !client.IsStatus(err, http.StatusNotFound) || errors.Is(err, client.ErrEmptyValue) {
		t.Errorf("imgmill kv, Get of a missing key: %v, want its own 404", err)
	}
	for name, kv := range map[string]*client.KV{"reference": ref, "imgmill": own} {
		if err := kv.Set(ctx, "k", "v"); err != nil {
			t.Fatalf("%s kv: Set: %v", name, err)
		}
		if v, err := kv.Get(ctx, "k"); err != nil || v != "v" {
			t.Errorf("%s kv: Get after Set = %q, %v; want v", name, v, err)
		}
		if err := kv.Remove(ctx, "k"); err != nil {
			t.Fatalf("%s kv: Remove: %v", name, err)
		}
		if _, err := kv.Get(ctx, "k"); !client.IsStatus(err, http.StatusNotFound) {
			t.Errorf("%s kv: Get after Remove: %v, want 404", name, err)
		}
	}
}

// TestKVAnswersLikeReference tells the two kv stores apart without writing anything.
func TestKVAnswersLikeReference(t *testing.T) {
	ctx := t.Context()
	hc := servicetest.NewHTTPClient(t)
	refKV, ref := newReferenceKV(t, hc)
	for name, c := range map[string]struct {
		kv   *client.KV
		want bool
	}{"reference": {ref, true}, "imgmill": {newImgmillKV(t, hc), false}} {
		if got, err := c.kv.AnswersLikeReference(ctx); err != nil || got != c.want {
			t.Errorf("%s kv: AnswersLikeReference = %v, %v; want %v", name, got, err, c.want)
		}
	}
	if refKV.sets != 0 {
		t.Errorf("the probe wrote %d times", refKV.sets)
	}
	// A kv store that is away is an error, not an answer.
	if _, err := client.NewKV(hc, deadAddr(t)).AnswersLikeReference(shortRetries(ctx)); err == nil {
		t.Error("AnswersLikeReference of a dead kv store: no error")
	}
}

// TestKVSetIfAbsentWithoutSupport: a kv store that answers "success" to a set-if-absent has set the
// value unconditionally, which SetIfAbsent says instead of taking "success" for the stored value.
func TestKVSetIfAbsentWithoutSupport(t *testing.T) {
	ctx := t.Context()
	hc := servicetest.NewHTTPClient(t)
	refKV, ref := newReferenceKV(t, hc)
	for _, v := range []string{"first", "second"} {
		if got, err := ref.SetIfAbsent(ctx, "k", v); !errors.Is(err, client.ErrNoSetIfAbsent) {
			t.Errorf("reference kv: SetIfAbsent(%s) = %q, %v; want ErrNoSetIfAbsent", v, got, err)
		}
		if got, _ := refKV.get("k"); got != v {
			t.Errorf("reference kv holds %q after SetIfAbsent(%s): the stand-in replaces", got, v)
		}
	}
	own := newImgmillKV(t, hc)
	for _, v := range []string{"first", "second"} {
		if got, err := own.SetIfAbsent(ctx, "k", v); err != nil || got != "first" {
			t.Errorf("imgmill kv: SetIfAbsent(%s) = %q, %v; want first", v, got, err)
		}
	}
}

// TestResolverOnReferenceKV: discovery through a reference kv store, where services register only
// their one key (no instance keys) and a missing key reads as empty.
func TestResolverOnReferenceKV(t *testing.T) {
	hc := servicetest.NewHTTPClient(t)
	_, kv := newReferenceKV(t, hc)
	// Nothing registered: unavailable (503), not a call to an empty address.
	st := client.NewStorage(hc, client.NewResolver(kv, wire.StorageKey, time.Hour))
	_, err := st.GetImage(shortRetries(t.Context()), 1, wire.WorkingImage)
	wantStatus(t, "GetImage with no storage registered", err, http.StatusServiceUnavailable)
	if err == nil || !strings.Contains(err.Error(), "storage") {
		t.Errorf("error %v does not name the storage", err)
	}
	if _, err := kv.Instances(t.Context(), wire.StorageKey); !client.IsStatus(err, http.StatusNotFound) {
		t.Errorf("Instances with nothing registered: %v, want 404", err)
	}

	// A reference service registers its address under the key alone; an imgmill one also under its
	// instance key, which the reference kv lists among every other key.
	db, _ := fakeDatabase(t)
	if err := kv.Set(t.Context(), wire.DatabaseKey, servicetest.Addr(db.URL)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Set(t.Context(), "unrelated", "x"); err != nil {
		t.Fatal(err)
	}
	if got, err := kv.Instances(t.Context(), wire.DatabaseKey); err != nil || !slices.Equal(got, []string{servicetest.Addr(db.URL)}) {
		t.Errorf("Instances of a reference registration = %v, %v", got, err)
	}
	if err := kv.SetTTL(t.Context(), wire.InstancePrefix(wire.DatabaseKey)+"127.0.0.1:1", "127.0.0.1:1", time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, err := kv.Instances(t.Context(), wire.DatabaseKey); err != nil || !slices.Equal(got, []string{"127.0.0.1:1"}) {
		t.Errorf("Instances with an instance key = %v, %v", got, err)
	}
}
