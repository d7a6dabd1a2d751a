// Package blobstoretest is the contract suite every blobstore.Store implementation must pass, so that
// fileblob today and S3 later behave the same to their callers.
package blobstoretest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"math/rand/v2"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/enginetest"
)

// Run runs the contract suite. open must return a fresh, empty store for each call; Run closes it when
// the subtest ends (and checks that Close succeeds), so open must not close it itself. The subtests run
// in parallel, so open must be safe for concurrent use; but the one that measures the heap runs alone,
// so the test calling Run must not run in parallel with others.
func Run(t *testing.T, open func(t *testing.T) blobstore.Store) {
	t.Helper()
	fresh := func(t *testing.T) blobstore.Store {
		t.Helper()
		s := open(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s blobstore.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"EmptyBlob", testEmptyBlob},
		{"OpenMissing", testOpenMissing},
		{"Overwrite", testOverwrite},
		{"UnknownSize", testUnknownSize},
		{"FailingReader", testFailingReader},
		{"CancelMidStream", testCancelMidStream},
		{"CancelledContext", testCancelledContext},
		{"Ping", testPing},
		{"InvalidKeys", testInvalidKeys},
		{"ValidKeys", testValidKeys},
		{"Delete", testDelete},
		{"Seek", testSeek},
		{"OpenBlobIsSnapshot", testOpenBlobIsSnapshot},
		{"ConcurrentOverwrite", testConcurrentOverwrite},
		{"ConcurrentNewKeys", testConcurrentNewKeys},
		{"Large", testLarge},
		{"FenceStored", testFenceStored},
		{"StaleFenceRefused", testStaleFenceRefused},
		{"EqualFenceAccepted", testEqualFenceAccepted},
		{"HigherFenceAccepted", testHigherFenceAccepted},
		{"UnfencedAlwaysAccepted", testUnfencedAlwaysAccepted},
		{"FailedFencedPut", testFailedFencedPut},
		{"ConcurrentFences", testConcurrentFences},
		{"DeleteClearsFence", testDeleteClearsFence},
		{"SizeMismatch", testSizeMismatch},
		{"List", testList},
		{"ListPrefixAndAfter", testListPrefixAndAfter},
		{"ListStopsEarly", testListStopsEarly},
		{"ListManyPages", testListManyPages},
		{"ListCancelled", testListCancelled},
	}
	// Large measures the process's heap, which the buffers of parallel subtests would inflate: it runs
	// alone, as parallel subtests wait until the test that called Run returns.
	alone := map[string]bool{"Large": true}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !alone[tc.name] {
				t.Parallel()
			}
			tc.fn(t, fresh(t))
		})
	}
}

var errBoom = errors.New("blobstoretest: reader failed on purpose")

// payload returns n deterministic pseudo-random bytes; seed makes payloads of the same length differ.
func payload(seed uint64, n int) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8(seedBytes(seed))
	rng.Read(b)
	return b
}

func seedBytes(seed uint64) [32]byte {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return s
}

// put stores data under key unfenced (fence 0).
func put(t *testing.T, s blobstore.Store, key string, data []byte) {
	t.Helper()
	putFenced(t, s, key, data, 0)
}

func putFenced(t *testing.T, s blobstore.Store, key string, data []byte, fence int64) {
	t.Helper()
	n, err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), fence)
	if err != nil {
		t.Fatalf("Put(%q, %d bytes, fence %d): %v", key, len(data), fence, err)
	}
	if n != int64(len(data)) {
		t.Fatalf("Put(%q) returned %d, want %d", key, n, len(data))
	}
}

// putStale expects a Put of data under key with fence to be refused as stale.
func putStale(t *testing.T, s blobstore.Store, key string, data []byte, fence int64) {
	t.Helper()
	_, err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), fence)
	if !errors.Is(err, blobstore.ErrStaleFence) {
		t.Fatalf("Put(%q, fence %d) = %v, want ErrStaleFence", key, fence, err)
	}
}

// wantBlob checks the content and the fence of the blob under key.
func wantBlob(t *testing.T, s blobstore.Store, key string, want []byte, fence int64) {
	t.Helper()
	wantContent(t, s, key, want)
	wantFence(t, s, key, fence)
}

func wantFence(t *testing.T, s blobstore.Store, key string, fence int64) {
	t.Helper()
	b, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	b.Close()
	if b.Fence != fence {
		t.Fatalf("Open(%q).Fence = %d, want %d", key, b.Fence, fence)
	}
}

// read opens key and returns its whole content, checking that Size agrees with it.
func read(t *testing.T, s blobstore.Store, key string) []byte {
	t.Helper()
	b, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	if b.Size != int64(len(data)) {
		t.Fatalf("Open(%q).Size = %d, but %d bytes were read", key, b.Size, len(data))
	}
	return data
}

func wantContent(t *testing.T, s blobstore.Store, key string, want []byte) {
	t.Helper()
	got := read(t, s, key)
	if !bytes.Equal(got, want) {
		t.Fatalf("content of %q: got %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			key, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func wantNotFound(t *testing.T, s blobstore.Store, key string) {
	t.Helper()
	b, err := s.Open(context.Background(), key)
	if err == nil {
		b.Close()
		t.Fatalf("Open(%q) succeeded (%d bytes), want ErrNotFound", key, b.Size)
	}
	if !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open(%q) = %v, want ErrNotFound", key, err)
	}
}

func testRoundTrip(t *testing.T, s blobstore.Store) {
	data := payload(1, 100<<10+7) // not a multiple of any buffer size
	before := time.Now()
	put(t, s, "working/42", data)
	after := time.Now()

	b, err := s.Open(context.Background(), "working/42")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	if b.Size != int64(len(data)) {
		t.Errorf("Size = %d, want %d", b.Size, len(data))
	}
	// Stores may keep coarse timestamps (whole seconds), hence the slack.
	if b.ModTime.Before(before.Add(-2*time.Second)) || b.ModTime.After(after.Add(2*time.Second)) {
		t.Errorf("ModTime = %v, want between %v and %v", b.ModTime, before, after)
	}
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes that differ from the %d put", len(got), len(data))
	}
	if err := b.Close(); err != nil {
		t.Errorf("Blob.Close: %v", err)
	}

	// Single-segment and deep keys, and siblings that must not disturb each other.
	other := payload(2, 1000)
	put(t, s, "x", other)
	put(t, s, "a/b/c/d/e", data[:500])
	put(t, s, "working/43", other)
	wantContent(t, s, "working/42", data)
	wantContent(t, s, "x", other)
	wantContent(t, s, "a/b/c/d/e", data[:500])
	wantContent(t, s, "working/43", other)
}

func testEmptyBlob(t *testing.T, s blobstore.Store) {
	put(t, s, "empty", nil)
	if got := read(t, s, "empty"); len(got) != 0 {
		t.Fatalf("empty blob read back %d bytes", len(got))
	}
	n, err := s.Put(context.Background(), "empty2", eofReader{}, -1, 0)
	if err != nil || n != 0 {
		t.Fatalf("Put(empty, size -1) = %d, %v; want 0, nil", n, err)
	}
	if got := read(t, s, "empty2"); len(got) != 0 {
		t.Fatalf("empty blob read back %d bytes", len(got))
	}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func testOpenMissing(t *testing.T, s blobstore.Store) {
	wantNotFound(t, s, "nope")
	wantNotFound(t, s, "working/1")
	// A prefix of an existing key is not a blob (a directory in a file store, nothing in S3).
	put(t, s, "dir/sub/x", []byte("x"))
	wantNotFound(t, s, "dir")
	wantNotFound(t, s, "dir/sub")
	wantNotFound(t, s, "dir/sub/y")
	// Deeper than an existing blob: in a file store the blob is a file, not a directory.
	wantNotFound(t, s, "dir/sub/x/deeper")
}

func testOverwrite(t *testing.T, s blobstore.Store) {
	long := payload(1, 200<<10)
	short := payload(2, 1234) // shorter, so a store that does not truncate leaves a tail of long
	put(t, s, "k", long)
	put(t, s, "k", short)
	wantContent(t, s, "k", short)
	longer := payload(3, 300<<10)
	put(t, s, "k", longer)
	wantContent(t, s, "k", longer)
}

// opaqueReader hides every method but Read so a store cannot learn the length from the reader's type.
type opaqueReader struct{ r io.Reader }

func (o opaqueReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func testUnknownSize(t *testing.T, s blobstore.Store) {
	data := payload(4, 3<<20+11)
	n, err := s.Put(context.Background(), "unknown", opaqueReader{bytes.NewReader(data)}, -1, 0)
	if err != nil {
		t.Fatalf("Put(size -1): %v", err)
	}
	if n != int64(len(data)) {
		t.Fatalf("Put(size -1) = %d, want %d", n, len(data))
	}
	wantContent(t, s, "unknown", data)
}

// failingReader serves data up to limit bytes, then fails with err.
type failingReader struct {
	data  []byte
	limit int
	err   error
	off   int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.off >= f.limit {
		return 0, f.err
	}
	n := copy(p, f.data[f.off:min(f.limit, len(f.data))])
	f.off += n
	return n, nil
}

func testFailingReader(t *testing.T, s blobstore.Store) {
	old := payload(1, 50<<10)
	put(t, s, "k", old)
	newData := payload(2, 4<<20)
	for _, size := range []int64{int64(len(newData)), -1} {
		r := &failingReader{data: newData, limit: 1 << 20, err: errBoom}
		if _, err := s.Put(context.Background(), "k", r, size, 0); !errors.Is(err, errBoom) {
			t.Fatalf("Put(size %d) with failing reader = %v, want an error wrapping the reader's", size, err)
		}
		wantContent(t, s, "k", old)

		r = &failingReader{data: newData, limit: 1 << 20, err: errBoom}
		if _, err := s.Put(context.Background(), "fresh/k", r, size, 0); !errors.Is(err, errBoom) {
			t.Fatalf("Put(size %d) of a new key with failing reader = %v, want an error wrapping the reader's", size, err)
		}
		wantNotFound(t, s, "fresh/k")
	}
}

// cancellingReader serves data; once it has served after bytes it cancels the context and keeps serving,
// so a store that ignores the context would store everything and succeed.
type cancellingReader struct {
	data   []byte
	after  int
	cancel context.CancelFunc
	off    int
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	if c.off >= c.after {
		c.cancel()
	}
	if c.off >= len(c.data) {
		return 0, io.EOF
	}
	n := copy(p, c.data[c.off:])
	c.off += n
	return n, nil
}

func testCancelMidStream(t *testing.T, s blobstore.Store) {
	old := payload(1, 50<<10)
	put(t, s, "k", old)
	newData := payload(2, 8<<20)
	for _, size := range []int64{int64(len(newData)), -1} {
		for _, key := range []string{"k", "fresh/k"} {
			ctx, cancel := context.WithCancel(context.Background())
			r := &cancellingReader{data: newData, after: 1 << 20, cancel: cancel}
			_, err := s.Put(ctx, key, r, size, 0)
			cancel()
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Put(%q, size %d) cancelled mid-stream = %v, want context.Canceled", key, size, err)
			}
		}
		wantContent(t, s, "k", old)
		wantNotFound(t, s, "fresh/k")
	}
}

// testPing: Ping answers while the engine is up, and a cancelled call is not an outage.
func testPing(t *testing.T, s blobstore.Store) { enginetest.CheckPing(t, s.Ping) }

func testCancelledContext(t *testing.T, s blobstore.Store) {
	old := []byte("old")
	put(t, s, "k", old)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Put(ctx, "k", strings.NewReader("new"), 3, 0); err == nil {
		t.Fatal("Put with a cancelled context succeeded")
	}
	if _, err := s.Put(ctx, "other", strings.NewReader("new"), 3, 0); err == nil {
		t.Fatal("Put of a new key with a cancelled context succeeded")
	}
	if err := s.Delete(ctx, "k"); err == nil {
		t.Fatal("Delete with a cancelled context succeeded")
	}
	if b, err := s.Open(ctx, "k"); err == nil {
		b.Close()
		t.Fatal("Open with a cancelled context succeeded")
	}
	wantContent(t, s, "k", old)
	wantNotFound(t, s, "other")
}

func testInvalidKeys(t *testing.T, s blobstore.Store) {
	put(t, s, "a/b", []byte("keep"))
	keys := []string{
		"", "../x", "A/b", "a//b", "/a", "a/", "/", ".", "..", ".hidden", "a/.hidden", "a/../b", "a/./b",
		"a b", `a\b`, "a\x00b", "a:b", "a.b", "é", "a/b/", strings.Repeat("a", 513),
		".k.tmp-123", // what a file store's temporary file might be called
	}
	for _, key := range keys {
		if _, err := s.Put(context.Background(), key, strings.NewReader("data"), 4, 0); err == nil {
			t.Errorf("Put(%q) succeeded, want an invalid key error", key)
		}
		if b, err := s.Open(context.Background(), key); err == nil {
			b.Close()
			t.Errorf("Open(%q) succeeded, want an invalid key error", key)
		} else if errors.Is(err, blobstore.ErrNotFound) {
			// A malformed key is the caller's bug (400), not a missing blob (404).
			t.Errorf("Open(%q) = %v, want an invalid key error, not ErrNotFound", key, err)
		}
		if err := s.Delete(context.Background(), key); err == nil {
			t.Errorf("Delete(%q) succeeded, want an invalid key error", key)
		}
	}
	wantContent(t, s, "a/b", []byte("keep"))
}

func testValidKeys(t *testing.T, s blobstore.Store) {
	keys := []string{
		"a", "0", "-", "_", "a-b_c/0-9", "originals/000123", "p/q/r/s/t/u/v/w",
		strings.Repeat("ab/", 170) + "ab", // 512 characters, the longest valid key
	}
	for i, key := range keys {
		if err := blobstore.ValidateKey(key); err != nil {
			t.Fatalf("suite bug: %q should be valid: %v", key, err)
		}
		put(t, s, key, []byte(fmt.Sprint(i)))
	}
	for i, key := range keys {
		wantContent(t, s, key, []byte(fmt.Sprint(i)))
	}
}

func testDelete(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	put(t, s, "working/1", []byte("one"))
	put(t, s, "working/2", []byte("two"))
	if err := s.Delete(ctx, "working/1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, s, "working/1")
	wantContent(t, s, "working/2", []byte("two"))
	if err := s.Delete(ctx, "working/1"); err != nil {
		t.Fatalf("second Delete = %v, want nil", err)
	}
	if err := s.Delete(ctx, "never/was"); err != nil {
		t.Fatalf("Delete of a missing key = %v, want nil", err)
	}
	// A prefix of a key is no blob: deleting it is a no-op that must not touch the blobs below it.
	if err := s.Delete(ctx, "working"); err != nil {
		t.Fatalf("Delete of a key prefix = %v, want nil", err)
	}
	wantContent(t, s, "working/2", []byte("two"))
	// The key can be used again after a delete.
	put(t, s, "working/1", []byte("again"))
	wantContent(t, s, "working/1", []byte("again"))
}

func testSeek(t *testing.T, s blobstore.Store) {
	data := payload(5, 10000)
	put(t, s, "k", data)
	b, err := s.Open(context.Background(), "k")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()

	seekRead := func(offset int64, whence int, wantPos int64, n int) {
		t.Helper()
		pos, err := b.Seek(offset, whence)
		if err != nil {
			t.Fatalf("Seek(%d, %d): %v", offset, whence, err)
		}
		if pos != wantPos {
			t.Fatalf("Seek(%d, %d) = %d, want %d", offset, whence, pos, wantPos)
		}
		var got []byte
		if n < 0 {
			got, err = io.ReadAll(b)
		} else {
			got = make([]byte, n)
			_, err = io.ReadFull(b, got)
		}
		if err != nil {
			t.Fatalf("read after Seek(%d, %d): %v", offset, whence, err)
		}
		want := data[wantPos:]
		if n >= 0 {
			want = want[:n]
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("after Seek(%d, %d) read %d bytes that differ from data[%d:]", offset, whence, len(got), wantPos)
		}
	}
	seekRead(4000, io.SeekStart, 4000, -1) // the rest from an offset
	seekRead(-100, io.SeekEnd, 9900, -1)
	seekRead(0, io.SeekStart, 0, 10) // back to the start after reading to the end
	seekRead(990, io.SeekCurrent, 1000, 500)
	seekRead(-1500, io.SeekCurrent, 0, -1)
	if pos, err := b.Seek(0, io.SeekEnd); err != nil || pos != int64(len(data)) {
		t.Fatalf("Seek(0, SeekEnd) = %d, %v; want %d", pos, err, len(data))
	}
	if n, err := b.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end = %d, %v; want 0, EOF", n, err)
	}
}

func testOpenBlobIsSnapshot(t *testing.T, s blobstore.Store) {
	v1 := payload(1, 1<<20)
	v2 := payload(2, 1<<20)
	put(t, s, "k", v1)
	b, err := s.Open(context.Background(), "k")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	head := make([]byte, len(v1)/2)
	if _, err := io.ReadFull(b, head); err != nil {
		t.Fatalf("read: %v", err)
	}
	put(t, s, "k", v2) // an overwrite while the blob is open must not leak into it
	tail, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(append(head, tail...), v1) {
		t.Fatal("an open blob mixed the old and the new content after an overwrite")
	}
	if _, err := b.Seek(0, io.SeekStart); err != nil {
		t.Fatalf("Seek: %v", err)
	}
	all, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(all, v1) {
		t.Fatal("an open blob re-read after an overwrite is not the content it was opened with")
	}
	wantContent(t, s, "k", v2)
}

func testConcurrentOverwrite(t *testing.T, s blobstore.Store) {
	const writers, readers, rounds = 4, 4, 8
	// Payloads of different lengths and content: a mix of two would match neither hash or size.
	payloads := make([][]byte, writers)
	valid := make(map[[sha256.Size]byte]int, writers)
	for i := range payloads {
		payloads[i] = payload(uint64(100+i), 256<<10+i*4099)
		valid[sha256.Sum256(payloads[i])] = len(payloads[i])
	}
	put(t, s, "shared/k", payloads[0])

	ctx := context.Background()
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, writers+readers)
	for i := range writers {
		wg.Go(func() {
			for range rounds {
				p := payloads[i]
				// Half the writers say the size, half do not.
				size := int64(len(p))
				if i%2 == 1 {
					size = -1
				}
				if _, err := s.Put(ctx, "shared/k", opaqueReader{bytes.NewReader(p)}, size, 0); err != nil {
					errs <- fmt.Errorf("concurrent Put: %w", err)
					return
				}
			}
		})
	}
	var reads sync.WaitGroup
	for range readers {
		reads.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-done:
					if n > 0 {
						return
					}
				default:
				}
				b, err := s.Open(ctx, "shared/k")
				if err != nil {
					errs <- fmt.Errorf("concurrent Open: %w", err)
					return
				}
				h := sha256.New()
				m, err := io.Copy(h, b)
				b.Close()
				if err != nil {
					errs <- fmt.Errorf("concurrent read: %w", err)
					return
				}
				var sum [sha256.Size]byte
				h.Sum(sum[:0])
				if l, ok := valid[sum]; !ok || int64(l) != b.Size || m != b.Size {
					errs <- fmt.Errorf("a reader saw %d bytes (Size %d) that are none of the payloads", m, b.Size)
					return
				}
			}
		})
	}
	wg.Wait()
	close(done)
	reads.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := sha256.Sum256(read(t, s, "shared/k"))
	if _, ok := valid[got]; !ok {
		t.Error("final content is none of the payloads")
	}
}

func testConcurrentNewKeys(t *testing.T, s blobstore.Store) {
	// Many first Puts under the same new prefix at once (racing to create it in a file store).
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("new/prefix/k%d", i)
			data := payload(uint64(i), 1000+i)
			if _, err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
				errs <- fmt.Errorf("Put(%q): %w", key, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range n {
		wantContent(t, s, fmt.Sprintf("new/prefix/k%d", i), payload(uint64(i), 1000+i))
	}
}

// largeSize is big enough that a store buffering the whole blob shows in the heap.
const largeSize = 64 << 20

func testLarge(t *testing.T, s blobstore.Store) {
	if testing.Short() {
		t.Skip("large blob skipped in -short mode")
	}
	ctx := context.Background()
	// The data is generated as it is read and hashed on the way: the test never holds it either.
	want := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8(seedBytes(64)), largeSize), want)

	peak := WatchHeap()
	n, err := s.Put(ctx, "large", opaqueReader{src}, largeSize, 0)
	grew := peak()
	if err != nil {
		t.Fatalf("Put(64 MiB): %v", err)
	}
	if n != largeSize {
		t.Fatalf("Put(64 MiB) = %d, want %d", n, largeSize)
	}
	t.Logf("the heap grew by %d KiB during the Put", grew>>10)
	// A streaming store needs buffers, not the blob: half of it is a generous bound.
	if grew > largeSize/2 {
		t.Errorf("the heap grew by %d MiB while putting a %d MiB blob: Put does not stream", grew>>20, largeSize>>20)
	}

	b, err := s.Open(ctx, "large")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	if b.Size != largeSize {
		t.Errorf("Size = %d, want %d", b.Size, largeSize)
	}
	got := sha256.New()
	if m, err := io.Copy(got, b); err != nil || m != largeSize {
		t.Fatalf("read back %d bytes, %v; want %d", m, err, largeSize)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("the large blob read back differs from what was put")
	}
}

// WatchHeap samples the heap until the returned function is called, which reports how far the heap grew
// above its starting size. Sampling can miss a short spike, but not a blob held for the whole Put.
// Stores' own streaming tests use it too.
func WatchHeap() func() uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	heap := func() uint64 {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	start := heap()
	stop := make(chan struct{})
	result := make(chan uint64)
	go func() {
		ticker := time.NewTicker(2 * time.Millisecond)
		defer ticker.Stop()
		var maxHeap uint64
		for {
			if h := heap(); h > maxHeap {
				maxHeap = h
			}
			select {
			case <-stop:
				result <- maxHeap
				return
			case <-ticker.C:
			}
		}
	}()
	return func() uint64 {
		close(stop)
		maxHeap := <-result
		if maxHeap < start {
			return 0
		}
		return maxHeap - start
	}
}

func testFenceStored(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	// Each blob reports the fence it was written with, 0 when unfenced.
	put(t, s, "unfenced", []byte("u"))
	wantBlob(t, s, "unfenced", []byte("u"), 0)
	putFenced(t, s, "finished/1", []byte("one"), 7)
	putFenced(t, s, "finished/2", []byte("two"), 1)
	putFenced(t, s, "max", []byte("max"), math.MaxInt64)
	putFenced(t, s, "empty", nil, 3)
	wantBlob(t, s, "finished/1", []byte("one"), 7)
	wantBlob(t, s, "finished/2", []byte("two"), 1)
	wantBlob(t, s, "max", []byte("max"), math.MaxInt64)
	wantBlob(t, s, "empty", nil, 3)
	// Of unknown size too.
	data := payload(6, 70<<10)
	if _, err := s.Put(ctx, "unknown", opaqueReader{bytes.NewReader(data)}, -1, 12); err != nil {
		t.Fatalf("Put(size -1, fence 12): %v", err)
	}
	wantBlob(t, s, "unknown", data, 12)

	// An open blob keeps the fence it was opened with, as it keeps its content.
	b, err := s.Open(ctx, "finished/1")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer b.Close()
	putFenced(t, s, "finished/1", []byte("newer"), 8)
	if b.Fence != 7 {
		t.Errorf("an open blob's Fence = %d after an overwrite, want 7", b.Fence)
	}
	wantBlob(t, s, "finished/1", []byte("newer"), 8)

	// A negative fence is no fence: refused, changing nothing.
	if _, err := s.Put(ctx, "finished/1", strings.NewReader("neg"), 3, -1); err == nil || errors.Is(err, blobstore.ErrStaleFence) {
		t.Errorf("Put with fence -1 = %v, want an invalid fence error", err)
	}
	if _, err := s.Put(ctx, "fresh", strings.NewReader("neg"), 3, -5); err == nil {
		t.Error("Put of a new key with fence -5 succeeded")
	}
	wantBlob(t, s, "finished/1", []byte("newer"), 8)
	wantNotFound(t, s, "fresh")
}

func testStaleFenceRefused(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	stored := payload(1, 100<<10)
	putFenced(t, s, "finished/9", stored, 5)
	for _, fence := range []int64{4, 1} {
		putStale(t, s, "finished/9", payload(2, 1000), fence)
		wantBlob(t, s, "finished/9", stored, 5)
	}
	// Refused whatever the size and however the stream is sent: the stored blob stays whole.
	for _, size := range []int64{4 << 20, -1} {
		data := payload(3, 4<<20)
		_, err := s.Put(ctx, "finished/9", opaqueReader{bytes.NewReader(data)}, size, 2)
		if !errors.Is(err, blobstore.ErrStaleFence) {
			t.Fatalf("Put(size %d, fence 2) = %v, want ErrStaleFence", size, err)
		}
		wantBlob(t, s, "finished/9", stored, 5)
	}
	// The refusal is about this key only.
	putFenced(t, s, "finished/10", []byte("other"), 1)
	wantBlob(t, s, "finished/10", []byte("other"), 1)
	// The largest fence stays the bar: far above it is fine, and then 5 is stale too.
	putFenced(t, s, "finished/9", []byte("latest"), math.MaxInt64)
	putStale(t, s, "finished/9", []byte("late"), 5)
	putStale(t, s, "finished/9", []byte("late"), math.MaxInt64-1)
	wantBlob(t, s, "finished/9", []byte("latest"), math.MaxInt64)
}

func testEqualFenceAccepted(t *testing.T, s blobstore.Store) {
	putFenced(t, s, "finished/3", []byte("first try"), 5)
	// The same holder retrying (its reply was lost, say) replaces its own result.
	putFenced(t, s, "finished/3", []byte("retry"), 5)
	wantBlob(t, s, "finished/3", []byte("retry"), 5)
	putFenced(t, s, "finished/3", []byte("retry again"), 5)
	wantBlob(t, s, "finished/3", []byte("retry again"), 5)
}

func testHigherFenceAccepted(t *testing.T, s blobstore.Store) {
	putFenced(t, s, "finished/4", []byte("by fence 5"), 5)
	putFenced(t, s, "finished/4", []byte("by fence 6"), 6)
	wantBlob(t, s, "finished/4", []byte("by fence 6"), 6)
	putFenced(t, s, "finished/4", []byte("by fence 100"), 100)
	wantBlob(t, s, "finished/4", []byte("by fence 100"), 100)
	// The bar moved: the previous holders are stale now.
	putStale(t, s, "finished/4", []byte("late 6"), 6)
	putStale(t, s, "finished/4", []byte("late 99"), 99)
	wantBlob(t, s, "finished/4", []byte("by fence 100"), 100)
	// Over an unfenced blob any fence goes.
	put(t, s, "finished/5", []byte("unfenced"))
	putFenced(t, s, "finished/5", []byte("by fence 1"), 1)
	wantBlob(t, s, "finished/5", []byte("by fence 1"), 1)
}

func testUnfencedAlwaysAccepted(t *testing.T, s blobstore.Store) {
	// Fence 0 is a writer that knows no fences: it is never refused, and what it writes carries fence 0.
	putFenced(t, s, "finished/6", []byte("by fence 9"), 9)
	put(t, s, "finished/6", []byte("unfenced"))
	wantBlob(t, s, "finished/6", []byte("unfenced"), 0)
	put(t, s, "finished/6", []byte("unfenced again"))
	wantBlob(t, s, "finished/6", []byte("unfenced again"), 0)
	// So after it no fence is stale: the bar starts again from 0.
	putFenced(t, s, "finished/6", []byte("by fence 2"), 2)
	wantBlob(t, s, "finished/6", []byte("by fence 2"), 2)
	putFenced(t, s, "finished/7", []byte("max"), math.MaxInt64)
	put(t, s, "finished/7", []byte("unfenced over max"))
	wantBlob(t, s, "finished/7", []byte("unfenced over max"), 0)
}

// A fenced Put that fails (reader, context) changes neither the blob nor its fence.
func testFailedFencedPut(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	old := payload(1, 50<<10)
	putFenced(t, s, "k", old, 5)
	newData := payload(2, 2<<20)
	r := &failingReader{data: newData, limit: 1 << 20, err: errBoom}
	if _, err := s.Put(ctx, "k", r, -1, 6); !errors.Is(err, errBoom) {
		t.Fatalf("fenced Put with failing reader = %v, want the reader's error", err)
	}
	wantBlob(t, s, "k", old, 5)
	if _, err := s.Put(ctx, "k", bytes.NewReader(newData[:10]), 11, 6); err == nil {
		t.Fatal("fenced Put of a stream shorter than its size succeeded")
	}
	wantBlob(t, s, "k", old, 5)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Put(cctx, "k", bytes.NewReader(newData), int64(len(newData)), 6); err == nil {
		t.Fatal("fenced Put with a cancelled context succeeded")
	}
	wantBlob(t, s, "k", old, 5)
	// A failed stale Put is still only a failure: nothing changed, and fence 5 still goes.
	r = &failingReader{data: newData, limit: 1 << 10, err: errBoom}
	if _, err := s.Put(ctx, "k", r, -1, 4); err == nil {
		t.Fatal("stale Put with a failing reader succeeded")
	}
	wantBlob(t, s, "k", old, 5)
	putFenced(t, s, "k", []byte("five again"), 5)
	wantBlob(t, s, "k", []byte("five again"), 5)
}

// Writers racing on one key with different fences (a presumed-dead worker and its successors) end with
// the largest fence's payload, whatever the order their streams finish in; every smaller one either
// landed before it or was refused. Meanwhile a reader sees fences that never go down, each with the
// payload written with it.
func testConcurrentFences(t *testing.T, s blobstore.Store) {
	const writers = 8
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	payloads := make([][]byte, writers+1) // payloads[f] is written with fence f
	for f := 1; f <= writers; f++ {
		payloads[f] = payload(uint64(200+f), 32<<10+f*997)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := context.Background()
	for round := range rounds {
		key := fmt.Sprintf("race/%d", round)
		if round%2 == 1 {
			put(t, s, key, []byte("unfenced before the race"))
		}
		order := rng.Perm(writers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, writers+1)
		for _, i := range order {
			fence := int64(i + 1)
			wg.Go(func() {
				<-start
				// Odd fences announce the size, even ones do not.
				size := int64(len(payloads[fence]))
				if fence%2 == 0 {
					size = -1
				}
				_, errs[fence] = s.Put(ctx, key, opaqueReader{bytes.NewReader(payloads[fence])}, size, fence)
			})
		}
		unfenced := []byte("unfenced before the race")
		readerErr := make(chan error, 1)
		done := make(chan struct{})
		go func() { readerErr <- watchFences(ctx, s, key, payloads, unfenced, done) }()
		close(start)
		wg.Wait()
		close(done)
		if err := <-readerErr; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for f := 1; f <= writers; f++ {
			if errs[f] != nil && !errors.Is(errs[f], blobstore.ErrStaleFence) {
				t.Fatalf("round %d: Put with fence %d: %v", round, f, errs[f])
			}
		}
		if errs[writers] != nil {
			t.Fatalf("round %d: the largest fence was refused: %v", round, errs[writers])
		}
		b, err := s.Open(ctx, key)
		if err != nil {
			t.Fatalf("round %d: Open: %v", round, err)
		}
		got, err := io.ReadAll(b)
		b.Close()
		if err != nil {
			t.Fatalf("round %d: read: %v", round, err)
		}
		if b.Fence != writers || !bytes.Equal(got, payloads[writers]) {
			t.Fatalf("round %d: stored %d bytes with fence %d, want the %d bytes of fence %d",
				round, len(got), b.Fence, len(payloads[writers]), writers)
		}
	}
}

// watchFences opens key until done is closed (and at least once after), checking that each blob holds the
// payload written with its fence (unfenced for fence 0) and that fences never go down.
func watchFences(ctx context.Context, s blobstore.Store, key string, payloads [][]byte, unfenced []byte, done <-chan struct{}) error {
	var last int64
	for {
		finished := false
		select {
		case <-done:
			finished = true
		default:
		}
		b, err := s.Open(ctx, key)
		if errors.Is(err, blobstore.ErrNotFound) {
			if last != 0 {
				return fmt.Errorf("the blob of fence %d vanished", last)
			}
		} else if err != nil {
			return fmt.Errorf("concurrent Open: %w", err)
		} else {
			got, err := io.ReadAll(b)
			b.Close()
			if err != nil {
				return fmt.Errorf("concurrent read: %w", err)
			}
			want := unfenced
			if b.Fence > 0 && b.Fence < int64(len(payloads)) {
				want = payloads[b.Fence]
			} else if b.Fence != 0 {
				return fmt.Errorf("a reader saw fence %d, which no writer used", b.Fence)
			}
			if !bytes.Equal(got, want) {
				return fmt.Errorf("a reader saw fence %d with %d bytes that are not its payload", b.Fence, len(got))
			}
			if b.Fence < last {
				return fmt.Errorf("a reader saw fence %d after fence %d", b.Fence, last)
			}
			last = b.Fence
		}
		if finished {
			return nil
		}
	}
}

func testDeleteClearsFence(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	putFenced(t, s, "finished/8", []byte("by fence 10"), 10)
	if err := s.Delete(ctx, "finished/8"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, s, "finished/8")
	// No blob, no fence: a low fence is accepted.
	putFenced(t, s, "finished/8", []byte("by fence 2"), 2)
	wantBlob(t, s, "finished/8", []byte("by fence 2"), 2)
	putStale(t, s, "finished/8", []byte("by fence 1"), 1)
	wantBlob(t, s, "finished/8", []byte("by fence 2"), 2)
	// A key never written has no fence either.
	putFenced(t, s, "finished/never", []byte("by fence 1"), 1)
	wantBlob(t, s, "finished/never", []byte("by fence 1"), 1)
}

// A stream shorter or longer than the size given to Put is a truncated or confused upload: refused,
// changing nothing, whether the body is small or spans many buffers (or parts).
func testSizeMismatch(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	old := payload(1, 1000)
	putFenced(t, s, "k", old, 3)
	big := payload(2, 6<<20)
	for _, tc := range []struct {
		data []byte
		size int64
	}{
		{[]byte("short"), 10},
		{[]byte("longer than said"), 4},
		{nil, 1},
		{[]byte("x"), 0},
		{big, int64(len(big)) + 1},
		{big, int64(len(big)) - 1},
		{big[:5<<20], 5<<20 + 1}, // ends exactly where a 5 MiB part would
		{big[:5<<20+1], 5 << 20},
	} {
		for _, fence := range []int64{0, 4} {
			if _, err := s.Put(ctx, "k", opaqueReader{bytes.NewReader(tc.data)}, tc.size, fence); err == nil {
				t.Fatalf("Put of %d bytes announced as %d (fence %d) succeeded", len(tc.data), tc.size, fence)
			}
			if _, err := s.Put(ctx, "fresh", opaqueReader{bytes.NewReader(tc.data)}, tc.size, fence); err == nil {
				t.Fatalf("Put of a new key, %d bytes announced as %d (fence %d), succeeded", len(tc.data), tc.size, fence)
			}
		}
	}
	wantBlob(t, s, "k", old, 3)
	wantNotFound(t, s, "fresh")
}

// listKeys collects a listing, failing the test on its error.
func listKeys(t *testing.T, seq iter.Seq2[blobstore.Entry, error]) []blobstore.Entry {
	t.Helper()
	var got []blobstore.Entry
	for e, err := range seq {
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		got = append(got, e)
	}
	return got
}

func keysOf(entries []blobstore.Entry) []string {
	keys := make([]string, len(entries))
	for i, e := range entries {
		keys[i] = e.Key
	}
	return keys
}

func wantKeys(t *testing.T, what string, got []blobstore.Entry, want ...string) {
	t.Helper()
	if g := keysOf(got); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Errorf("%s listed %q, want %q", what, g, want)
	}
}

// testList: every blob, in byte order of keys (which is not the order of a directory walk: "a-b" sorts
// before "a/b"), with its size and a modification time around the Put.
func testList(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	wantKeys(t, "an empty store", listKeys(t, s.List(ctx, "", "")))
	before := time.Now().Add(-time.Minute) // engines' clocks may differ a little from ours
	keys := []string{"working/10", "working/2", "working/1", "finished/1", "working-x", "w/a", "a/b", "a-b", "a_b/c/d"}
	for i, k := range keys {
		put(t, s, k, payload(uint64(i), 10+i))
	}
	after := time.Now().Add(time.Minute)
	got := listKeys(t, s.List(ctx, "", ""))
	wantKeys(t, "List", got, "a-b", "a/b", "a_b/c/d", "finished/1", "w/a", "working-x", "working/1", "working/10", "working/2")
	for _, e := range got {
		i := slices.Index(keys, e.Key)
		if e.Size != int64(10+i) {
			t.Errorf("%s: size %d, want %d", e.Key, e.Size, 10+i)
		}
		if e.ModTime.Before(before) || e.ModTime.After(after) {
			t.Errorf("%s: modification time %v, want between %v and %v", e.Key, e.ModTime, before, after)
		}
	}
	// Deleted blobs are gone from listings; overwritten ones are listed once, with their new size.
	if err := s.Delete(ctx, "working/10"); err != nil {
		t.Fatal(err)
	}
	put(t, s, "working/2", payload(99, 3))
	got = listKeys(t, s.List(ctx, "working/", ""))
	wantKeys(t, "List after a delete", got, "working/1", "working/2")
	if len(got) == 2 && got[1].Size != 3 {
		t.Errorf("overwritten blob listed with size %d, want 3", got[1].Size)
	}
}

// testListPrefixAndAfter: the prefix is a string prefix of keys, after a cursor that need not be a key.
func testListPrefixAndAfter(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	for _, k := range []string{"working/1", "working/12", "working/2", "working/3", "workingx", "finished/1", "finished/2"} {
		put(t, s, k, []byte(k))
	}
	for _, tc := range []struct {
		prefix, after string
		want          []string
	}{
		{"working/", "", []string{"working/1", "working/12", "working/2", "working/3"}},
		{"working", "", []string{"working/1", "working/12", "working/2", "working/3", "workingx"}},
		{"working/", "working/12", []string{"working/2", "working/3"}},
		{"working/", "working/15", []string{"working/2", "working/3"}},
		{"working/", "working/", []string{"working/1", "working/12", "working/2", "working/3"}},
		{"working/1", "", []string{"working/1", "working/12"}},
		{"", "finished/2", []string{"working/1", "working/12", "working/2", "working/3", "workingx"}},
		{"", "finished/", []string{"finished/1", "finished/2", "working/1", "working/12", "working/2", "working/3", "workingx"}},
		{"", "working/3", []string{"workingx"}},
		{"finished/", "working/", nil},
		{"nothing/", "", nil},
	} {
		wantKeys(t, fmt.Sprintf("List(%q, %q)", tc.prefix, tc.after), listKeys(t, s.List(ctx, tc.prefix, tc.after)), tc.want...)
	}
}

// testListStopsEarly: a consumer that stops gets no more entries, and a listing resumed after the last
// key it saw yields the rest.
func testListStopsEarly(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	for i := range 5 {
		put(t, s, fmt.Sprintf("working/%d", i), []byte("x"))
	}
	var first []string
	for e, err := range s.List(ctx, "working/", "") {
		if err != nil {
			t.Fatal(err)
		}
		first = append(first, e.Key)
		if len(first) == 2 {
			break
		}
	}
	rest := keysOf(listKeys(t, s.List(ctx, "working/", first[len(first)-1])))
	if all := append(first, rest...); fmt.Sprint(all) != fmt.Sprint([]string{"working/0", "working/1", "working/2", "working/3", "working/4"}) {
		t.Errorf("listing stopped after 2 and resumed = %q", all)
	}
}

// testListManyPages: more blobs than an engine answers in one page (S3: 1000), each listed once, in order.
func testListManyPages(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	const n = 1050
	var want []string
	var wg sync.WaitGroup
	keys := make(chan string)
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range keys {
				if _, err := s.Put(ctx, k, strings.NewReader("x"), 1, 0); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range n {
		k := fmt.Sprintf("working/%d", i)
		want = append(want, k)
		keys <- k
	}
	close(keys)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Put: %v", err)
	}
	slices.Sort(want)
	got := keysOf(listKeys(t, s.List(ctx, "working/", "")))
	if !slices.Equal(got, want) {
		t.Errorf("listed %d keys, want %d in byte order", len(got), len(want))
	}
}

// testListCancelled: a listing under an ended context yields its error.
func testListCancelled(t *testing.T, s blobstore.Store) {
	put(t, s, "working/1", []byte("x"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var err error
	for _, err = range s.List(ctx, "", "") {
		if err != nil {
			break
		}
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("List with a cancelled context ended with %v, want context.Canceled", err)
	}
}
