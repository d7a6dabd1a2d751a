package frontend

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/client"
)

// SetKeepAliveEvery changes how often event streams send a keep-alive comment, until restore.
func SetKeepAliveEvery(d time.Duration) (restore func()) {
	old := keepAliveEvery
	keepAliveEvery = d
	return func() { keepAliveEvery = old }
}

// UniqueName is uniqueName, for tests.
var UniqueName = uniqueName

// ThumbCacheBound puts thumbnails of the given sizes, in order, into a cache bounded to max bytes, and
// returns the indexes of those it still holds and their total size.
func ThumbCacheBound(max int64, sizes []int) (kept []int, total int64) {
	c := newThumbCache(max)
	for i, n := range sizes {
		c.put(thumbKey{id: int64(i)}, &thumb{body: make([]byte, n)})
	}
	for i := range sizes {
		if th, ok := c.get(thumbKey{id: int64(i)}); ok {
			kept = append(kept, i)
			total += int64(len(th.body))
		}
	}
	if total != c.bytes {
		panic("the cache's count of bytes is off")
	}
	return kept, total
}

// RenderTaskPage renders the page of a finished task whose upload was named name.
func RenderTaskPage(t testing.TB, name string) string {
	var b bytes.Buffer
	if err := pages.Execute(&b, taskPage{Title: "Finished", ID: "abc", Name: name, Say: "Your image is ready.", Finished: true}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// ResolveSecretSettling is ResolveSecret with settle in place of ReferenceKVSettle.
func ResolveSecretSettling(ctx context.Context, file string, kv *client.KV, m Master, logger *slog.Logger, settle time.Duration) ([]byte, error) {
	s := &secretStore{file: file, kv: kv, master: m, logger: logger, settle: settle}
	return s.resolve(ctx)
}
