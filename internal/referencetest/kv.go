package referencetest

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// KV is the reference kv store: a map behind /set, /get, /remove and /list. It knows no TTL, no
// set-if-absent and no prefix (those parameters are ignored), /set answers "success" whether or not the
// key existed, and /get of a missing key answers 200 with an empty body.
type KV struct {
	mu     sync.Mutex
	values map[string]string
	mux    *http.ServeMux
}

// NewKV returns an empty kv store.
func NewKV() *KV {
	k := &KV{values: map[string]string{}, mux: http.NewServeMux()}
	k.mux.HandleFunc("/set", k.set)
	k.mux.HandleFunc("/get", k.get)
	k.mux.HandleFunc("/remove", k.remove)
	k.mux.HandleFunc("/list", k.list)
	return k
}

func (k *KV) ServeHTTP(w http.ResponseWriter, r *http.Request) { k.mux.ServeHTTP(w, r) }

// Start serves the kv store on a free loopback port until the test ends and returns its host:port.
func (k *KV) Start(t testing.TB) string {
	t.Helper()
	return serve(t, k)
}

// Value returns what the store holds under key ("" when nothing).
func (k *KV) Value(key string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.values[key]
}

func (k *KV) set(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	k.mu.Lock()
	k.values[q.Get("key")] = q.Get("value")
	k.mu.Unlock()
	text(w, http.StatusOK, "success")
}

func (k *KV) get(w http.ResponseWriter, r *http.Request) {
	text(w, http.StatusOK, k.Value(r.URL.Query().Get("key")))
}

func (k *KV) remove(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	delete(k.values, r.URL.Query().Get("key"))
	k.mu.Unlock()
	text(w, http.StatusOK, "success")
}

// list answers "key : value" per line in the map's order, which is no order.
func (k *KV) list(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	k.mu.Lock()
	for key, value := range k.values {
		fmt.Fprintf(&b, "%s : %s\n", key, value)
	}
	k.mu.Unlock()
	text(w, http.StatusOK, b.String())
}
