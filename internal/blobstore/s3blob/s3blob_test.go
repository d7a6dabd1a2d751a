package s3blob

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
	"go.uber.org/goleak"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/blobstoretest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestS3 runs everything that needs a server against one MinIO per test binary, each subtest in its
// own bucket, so they run in parallel; but those that measure the heap (the contracts' Large and
// LargeUnknownSize) run alone, while the parallel ones wait for TestS3 to return.
func TestS3(t *testing.T) {
	m := enginetest.StartMinIO(t)
	alone := map[string]bool{"Contract": true, "ContractMinParts": true, "LargeUnknownSize": true}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, m *enginetest.MinIO)
	}{
		{"Contract", testContract},
		{"ContractMinParts", testContractMinParts},
		{"ConditionalWrites", testConditionalWrites},
		{"LostRaceRetried", testLostRaceRetried},
		{"RacingStores", testRacingStores},
		{"LargeUnknownSize", testLargeUnknownSize},
		{"FailedMultipartKeepsOld", testFailedMultipartKeepsOld},
		{"Layout", testLayout},
		{"Prefix", testPrefix},
		{"BucketCreated", testBucketCreated},
		{"ConcurrentOpenCreatesBucket", testConcurrentOpen},
		{"UnversionedBucket", testUnversionedBucket},
		{"LifecycleMerged", testLifecycleMerged},
		{"LifecycleUnversioned", testLifecycleUnversioned},
		{"DeleteEveryVersion", testDeleteEveryVersion},
		{"UnreachableEndpoint", testUnreachable},
		{"WrongCredentials", testWrongCredentials},
		{"PingRemovedBucket", testPingRemovedBucket},
		{"SlowCaller", testSlowCaller},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !alone[tc.name] {
				t.Parallel()
			}
			tc.fn(t, m)
		})
	}
}

// config returns the configuration of a new bucket on m.
func config(t *testing.T, m *enginetest.MinIO) Config {
	t.Helper()
	cfg, err := ParseURL(m.URL(m.NewBucket(t)), noEnv)
	if err != nil {
		t.Fatalf("ParseURL(%s): %v", m.URL("b"), err)
	}
	return cfg
}

func noEnv(string) string { return "" }

// open opens cfg and closes the store when t ends.
func open(t *testing.T, cfg Config) *Store {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", cfg, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func testContract(t *testing.T, m *enginetest.MinIO) {
	blobstoretest.Run(t, func(t *testing.T) blobstore.Store {
		s, err := Open(context.Background(), config(t, m))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// testContractMinParts runs the contract with the smallest parts, so that its 8 MiB and larger bodies
// take the multipart path, fenced commits included.
func testContractMinParts(t *testing.T, m *enginetest.MinIO) {
	if testing.Short() {
		t.Skip("second contract run skipped in -short mode")
	}
	blobstoretest.Run(t, func(t *testing.T) blobstore.Store {
		cfg := config(t, m)
		cfg.PartSize = MinPartSize
		s, err := Open(context.Background(), cfg)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// payload returns n deterministic pseudo-random bytes.
func payload(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	s[1] = byte(seed >> 8)
	rand.NewChaCha8(s).Read(b)
	return b
}

func put(t *testing.T, s *Store, key string, data []byte, fence int64) {
	t.Helper()
	if _, err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data)), fence); err != nil {
		t.Fatalf("Put(%q, %d bytes, fence %d): %v", key, len(data), fence, err)
	}
}

// wantBlob checks the content and fence under key.
func wantBlob(t *testing.T, s *Store, key string, want []byte, fence int64) {
	t.Helper()
	b, err := s.Open(context.Background(), key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	if !bytes.Equal(got, want) || b.Fence != fence {
		t.Fatalf("%q holds %d bytes (sha256 %.8x) with fence %d; want %d bytes (sha256 %.8x) with fence %d",
			key, len(got), sha256.Sum256(got), b.Fence, len(want), sha256.Sum256(want), fence)
	}
}

// testConditionalWrites checks the server support the fencing relies on: PutObject and
// CompleteMultipartUpload refuse with 412 when If-Match or If-None-Match fails, and a multipart upload
// survives a refused completion, so that the commit can be retried.
func testConditionalWrites(t *testing.T, m *enginetest.MinIO) {
	s := open(t, config(t, m))
	ctx := context.Background()
	c := s.core
	want412 := func(what string, err error) {
		t.Helper()
		var resp minio.ErrorResponse
		if !errors.As(err, &resp) || resp.StatusCode != http.StatusPreconditionFailed {
			t.Fatalf("%s = %v, want 412 Precondition Failed", what, err)
		}
		if !lostRace(err) {
			t.Fatalf("lostRace(%v) = false", err)
		}
	}
	putWith := func(cond condition, data string) error {
		var opts minio.PutObjectOptions
		cond.apply(&opts)
		_, err := c.PutObject(ctx, s.bucket, "k", strings.NewReader(data), int64(len(data)), "", "", opts)
		return err
	}
	if err := putWith(condition{ifNoneMatch: true}, "first"); err != nil {
		t.Fatalf("If-None-Match: * on a missing object: %v", err)
	}
	want412("If-None-Match: * on an existing object", putWith(condition{ifNoneMatch: true}, "second"))
	info, _, err := s.stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	want412("If-Match on another ETag", putWith(condition{ifMatch: "0123456789abcdef0123456789abcdef"}, "second"))
	if err := putWith(condition{ifMatch: info.ETag}, "second"); err != nil {
		t.Fatalf("If-Match on the current ETag: %v", err)
	}
	// The old ETag no longer matches.
	want412("If-Match on a replaced ETag", putWith(condition{ifMatch: info.ETag}, "third"))

	// Multipart: the condition is checked at completion.
	info, _, err = s.stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.NewMultipartUpload(ctx, s.bucket, "k", putOptions(3))
	if err != nil {
		t.Fatal(err)
	}
	part, err := c.PutObjectPart(ctx, s.bucket, "k", id, 1, strings.NewReader("multi"), 5, minio.PutObjectPartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	parts := []minio.CompletePart{{PartNumber: 1, ETag: part.ETag}}
	complete := func(cond condition) error {
		var opts minio.PutObjectOptions
		cond.apply(&opts)
		_, err := c.CompleteMultipartUpload(ctx, s.bucket, "k", id, parts, opts)
		return err
	}
	want412("CompleteMultipartUpload with If-None-Match: * on an existing object", complete(condition{ifNoneMatch: true}))
	want412("CompleteMultipartUpload with If-Match on another ETag", complete(condition{ifMatch: "0123456789abcdef0123456789abcdef"}))
	wantBlob(t, s, "k", []byte("second"), 0)
	if err := complete(condition{ifMatch: info.ETag}); err != nil {
		t.Fatalf("CompleteMultipartUpload retried with the current ETag: %v", err)
	}
	wantBlob(t, s, "k", []byte("multi"), 3)
}

// testLostRaceRetried lets another store commit between a Put's HEAD and its conditional write, on the
// single-PUT and the multipart path: the write gets 412 and the commit starts over, then refuses the
// stale fence, or, for an equal fence, succeeds.
func testLostRaceRetried(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	cfg.PartSize = MinPartSize
	a, b := open(t, cfg), open(t, cfg)
	ctx := context.Background()
	for _, n := range []int{1000, MinPartSize + 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			key := fmt.Sprintf("finished/%d", n)
			// A first fenced write under a new key is one blind conditional write, without a HEAD.
			var first []int
			a.beforeWrite = func(attempt int) { first = append(first, attempt) }
			put(t, a, key, []byte("before the race"), 1)
			a.beforeWrite = nil
			if !slices.Equal(first, []int{0}) {
				t.Fatalf("writes attempted for a new key: %v, want [0]", first)
			}
			for _, tc := range []struct {
				aFence, bFence int64
				wantStale      bool
			}{
				{aFence: 5, bFence: 7, wantStale: true}, // b is newer: a is refused after the lost race
				{aFence: 9, bFence: 9},                  // the same holder retrying: a goes through on the retry
			} {
				aData, bData := payload(uint64(tc.aFence), n), payload(uint64(tc.bFence)+100, n)
				var attempts []int
				a.beforeWrite = func(attempt int) {
					attempts = append(attempts, attempt)
					if attempt == 1 {
						put(t, b, key, bData, tc.bFence)
					}
				}
				_, err := a.Put(ctx, key, bytes.NewReader(aData), -1, tc.aFence)
				a.beforeWrite = nil
				if tc.wantStale {
					if !errors.Is(err, blobstore.ErrStaleFence) {
						t.Fatalf("Put with fence %d after fence %d got in = %v, want ErrStaleFence", tc.aFence, tc.bFence, err)
					}
					if !slices.Equal(attempts, []int{0, 1}) {
						t.Fatalf("writes attempted: %v, want [0 1] (a blind first write refused, then the second HEAD refuses)", attempts)
					}
					wantBlob(t, a, key, bData, tc.bFence)
				} else {
					if err != nil {
						t.Fatalf("Put with fence %d after an equal fence got in: %v", tc.aFence, err)
					}
					if !slices.Equal(attempts, []int{0, 1, 2}) {
						t.Fatalf("writes attempted: %v, want [0 1 2] (a blind first write refused, 412, then success)", attempts)
					}
					wantBlob(t, a, key, aData, tc.aFence)
				}
			}
			// No multipart upload is left over, whichever way the commits went.
			wantNoUploads(t, a)
		})
	}
}

// wantNoUploads checks that no multipart upload is in progress in s's bucket.
func wantNoUploads(t *testing.T, s *Store) {
	t.Helper()
	res, err := s.core.ListMultipartUploads(context.Background(), s.bucket, "", "", "", "", 100)
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	if len(res.Uploads) != 0 {
		t.Fatalf("%d multipart uploads left over, e.g. %s", len(res.Uploads), res.Uploads[0].Key)
	}
}

// testRacingStores has two stores (two storage service instances) on one bucket race Puts on the same
// keys with different fences, small and multipart bodies: each key ends with the largest fence's
// payload, and every smaller fence either landed before it or was refused.
func testRacingStores(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	cfg.PartSize = MinPartSize
	stores := []*Store{open(t, cfg), open(t, cfg)}
	ctx := context.Background()
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	const writers = 6
	for round := range rounds {
		size := 20 << 10
		if round%3 == 2 {
			size = MinPartSize + 1<<20 // two parts
		}
		key := fmt.Sprintf("race/%d", round)
		payloads := make([][]byte, writers+1)
		errs := make([]error, writers+1)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for f := 1; f <= writers; f++ {
			payloads[f] = payload(uint64(round*100+f), size+f)
			s := stores[(f+round)%2]
			wg.Go(func() {
				<-start
				_, errs[f] = s.Put(ctx, key, opaqueReader{bytes.NewReader(payloads[f])}, -1, int64(f))
			})
		}
		close(start)
		wg.Wait()
		for f := 1; f <= writers; f++ {
			if errs[f] != nil && !errors.Is(errs[f], blobstore.ErrStaleFence) {
				t.Fatalf("round %d: Put with fence %d: %v", round, f, errs[f])
			}
		}
		if errs[writers] != nil {
			t.Fatalf("round %d: the largest fence was refused: %v", round, errs[writers])
		}
		for _, s := range stores {
			wantBlob(t, s, key, payloads[writers], writers)
		}
		// Late stale writers, through either store, are refused and change nothing.
		for i, s := range stores {
			if _, err := s.Put(ctx, key, strings.NewReader("late"), 4, int64(writers-1-i)); !errors.Is(err, blobstore.ErrStaleFence) {
				t.Fatalf("round %d: a late stale Put = %v, want ErrStaleFence", round, err)
			}
		}
		wantBlob(t, stores[0], key, payloads[writers], writers)
	}
	wantNoUploads(t, stores[0])
}

// opaqueReader hides every method but Read.
type opaqueReader struct{ r io.Reader }

func (o opaqueReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// testLargeUnknownSize streams 100 MB of unknown size, generated as it is read, and checks that the
// heap grows by far less than that: Put holds one part at a time.
func testLargeUnknownSize(t *testing.T, m *enginetest.MinIO) {
	if testing.Short() {
		t.Skip("100 MB upload skipped in -short mode")
	}
	const size = 100_000_000
	const bound = 64 << 20
	s := open(t, config(t, m))
	ctx := context.Background()
	want := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), want)

	runtime.GC()
	peak := blobstoretest.WatchHeap()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n, err := s.Put(ctx, "large", opaqueReader{src}, -1, 3)
	runtime.ReadMemStats(&after)
	grew := peak()
	if err != nil {
		t.Fatalf("Put(100 MB, size -1): %v", err)
	}
	if n != size {
		t.Fatalf("Put = %d, want %d", n, size)
	}
	t.Logf("100 MB of unknown size: heap peak +%d MiB, %d MiB allocated in all", grew>>20, (after.TotalAlloc-before.TotalAlloc)>>20)
	if grew > bound {
		t.Errorf("the heap grew by %d MiB while putting 100 MB: Put does not stream", grew>>20)
	}

	b, err := s.Open(ctx, "large")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size != size || b.Fence != 3 {
		t.Errorf("Size, Fence = %d, %d; want %d, 3", b.Size, b.Fence, size)
	}
	got := sha256.New()
	if m, err := io.Copy(got, b); err != nil || m != size {
		t.Fatalf("read back %d bytes, %v", m, err)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("the blob read back differs from what was put")
	}
}

// failAfter serves n pseudo-random bytes, then fails.
type failAfter struct {
	n   int
	err error
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	for i := range p[:k] {
		p[i] = byte(i)
	}
	f.n -= k
	return k, nil
}

// testFailedMultipartKeepsOld fails and cancels Puts after some parts were uploaded: the old blob and its
// fence stay, and the multipart uploads are aborted.
func testFailedMultipartKeepsOld(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	cfg.PartSize = MinPartSize
	s := open(t, cfg)
	old := payload(1, 1000)
	put(t, s, "k", old, 4)
	boom := errors.New("boom")
	for _, size := range []int64{-1, 3 * MinPartSize} {
		_, err := s.Put(context.Background(), "k", &failAfter{n: 2*MinPartSize + 100, err: boom}, size, 5)
		if !errors.Is(err, boom) {
			t.Fatalf("Put(size %d) with a reader failing after two parts = %v, want boom", size, err)
		}
		wantBlob(t, s, "k", old, 4)

		ctx, cancel := context.WithCancel(context.Background())
		r := io.MultiReader(&failAfter{n: MinPartSize + 100, err: io.EOF}, readerFunc(func(p []byte) (int, error) {
			cancel()
			return len(p), nil
		}))
		_, err = s.Put(ctx, "k", r, size, 5)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Put(size %d) cancelled after a part = %v, want context.Canceled", size, err)
		}
		wantBlob(t, s, "k", old, 4)
	}
	wantNoUploads(t, s)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// testLayout checks that keys are object names as they are, the fence in the metadata.
func testLayout(t *testing.T, m *enginetest.MinIO) {
	s := open(t, config(t, m))
	put(t, s, "working/42", []byte("pixels"), 12)
	info, err := s.core.StatObject(context.Background(), s.bucket, "working/42", minio.StatObjectOptions{})
	if err != nil {
		t.Fatalf("the blob is not the object working/42: %v", err)
	}
	if got := info.Metadata.Get("X-Amz-Meta-Imgmill-Fence"); got != "12" || info.Size != 6 {
		t.Fatalf("object working/42: %d bytes, fence metadata %q; want 6 bytes, fence 12", info.Size, got)
	}
	put(t, s, "finished/42", []byte("done"), 0)
	info, err = s.core.StatObject(context.Background(), s.bucket, "finished/42", minio.StatObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Metadata.Get("X-Amz-Meta-Imgmill-Fence"); got != "" {
		t.Fatalf("an unfenced blob carries fence metadata %q", got)
	}
}

// testPrefix checks that a prefix keeps two stores in one bucket apart.
func testPrefix(t *testing.T, m *enginetest.MinIO) {
	plain := config(t, m)
	prefixed := plain
	prefixed.Prefix = "imgmill/a"
	s, p := open(t, plain), open(t, prefixed)
	put(t, p, "working/1", []byte("prefixed"), 0)
	if _, err := s.Open(context.Background(), "working/1"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("the store without prefix sees the prefixed blob: %v", err)
	}
	wantBlob(t, s, "imgmill/a/working/1", []byte("prefixed"), 0)
	wantBlob(t, p, "working/1", []byte("prefixed"), 0)
}

// testBucketCreated checks that Open creates a missing bucket, versioned with the lifecycle rule, and
// that opening it again is fine.
func testBucketCreated(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	s := open(t, cfg)
	ctx := context.Background()
	if ok, err := s.core.BucketExists(ctx, cfg.Bucket); err != nil || !ok {
		t.Fatalf("BucketExists = %v, %v after Open", ok, err)
	}
	v, err := s.core.GetBucketVersioning(ctx, cfg.Bucket)
	if err != nil || !v.Enabled() {
		t.Fatalf("versioning of the new bucket: %+v, %v", v, err)
	}
	lc, err := s.core.GetBucketLifecycle(ctx, cfg.Bucket)
	// MinIO refuses the rule that aborts incomplete uploads (it removes them itself), so only the
	// version rule is set.
	if err != nil || len(lc.Rules) != 1 || lc.Rules[0].ID != lifecycleRuleID || lc.Rules[0].NoncurrentVersionExpiration.NoncurrentDays != 1 {
		t.Fatalf("lifecycle of the new bucket: %+v, %v", lc, err)
	}
	put(t, s, "k", []byte("v"), 1)
	again := open(t, cfg)
	wantBlob(t, again, "k", []byte("v"), 1)
}

// testDeleteEveryVersion: in a versioned bucket (one Open created), Delete leaves no version of the object
// and no delete marker, and leaves the objects its name prefixes alone.
func testDeleteEveryVersion(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	s := open(t, cfg)
	ctx := context.Background()
	put(t, s, "finished/1", []byte("v1"), 1)
	put(t, s, "finished/1", []byte("v2"), 2)
	put(t, s, "finished/10", []byte("other"), 1)
	if err := s.Delete(ctx, "finished/1"); err != nil {
		t.Fatal(err)
	}
	name, err := s.name("finished/1")
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for obj := range s.core.Client.ListObjects(ctx, cfg.Bucket, minio.ListObjectsOptions{Prefix: name, WithVersions: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		if obj.Key == name {
			left = append(left, fmt.Sprintf("%s (delete marker %v)", obj.VersionID, obj.IsDeleteMarker))
		}
	}
	if len(left) != 0 {
		t.Errorf("versions left after Delete: %v", left)
	}
	wantBlob(t, s, "finished/10", []byte("other"), 1)
}

// testConcurrentOpen has several processes' worth of stores create the same bucket at once.
func testConcurrentOpen(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			s, err := Open(context.Background(), cfg)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Errorf("concurrent Open: %v", err)
		}
	}
}

// testUnversionedBucket uses a bucket made by someone else, without versioning: everything works, but an
// open blob re-read after an overwrite fails instead of serving the new content under the old fence.
func testUnversionedBucket(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	setup := open(t, config(t, m)) // any store, for its client
	if err := setup.core.MakeBucket(context.Background(), cfg.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	s := open(t, cfg)
	if v, err := s.core.GetBucketVersioning(context.Background(), cfg.Bucket); err != nil || v.Enabled() {
		t.Fatalf("Open changed the versioning of an existing bucket: %+v, %v", v, err)
	}
	v1, v2 := payload(1, 1<<20), payload(2, 1<<20)
	put(t, s, "k", v1, 1)
	b, err := s.Open(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(b, head); err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", v2, 2)
	if _, err := b.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err == nil {
		t.Fatalf("re-reading a replaced blob succeeded (%d bytes; same as the old: %v)", len(got), bytes.Equal(got, v1))
	}
	t.Logf("re-read after overwrite: %v", err)
	wantBlob(t, s, "k", v2, 2)
	if err := s.Delete(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(context.Background(), "k"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open after Delete = %v", err)
	}
}

// logBuffer is a slog handler's output, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wantUnavailable checks that err is a transient failure that is not out of space.
func wantUnavailable(t *testing.T, what string, err error) {
	t.Helper()
	if !fault.IsTransient(err) || fault.IsNoSpace(err) {
		t.Errorf("%s = %v, want a transient (unavailable) error", what, err)
	}
}

// An endpoint where nothing listens is no reason to fail Open: the store opens, fails every call as
// unavailable, saying why, and logs that it waits; Close ends the wait (goleak would see it otherwise).
func testUnreachable(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	cfg.Endpoint = "http://" + enginetest.FreeAddr(t) // nothing listens there
	var log logBuffer
	cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open of an unreachable endpoint = %v, want a store that waits for it", err)
	}
	defer s.Close()
	err = s.Ping(ctx)
	wantUnavailable(t, "Ping", err)
	if err == nil || !strings.Contains(err.Error(), "cannot reach "+cfg.Endpoint) {
		t.Errorf("Ping = %v, want it to say that %s cannot be reached", err, cfg.Endpoint)
	}
	t.Log(err)
	_, err = s.Put(ctx, "k", strings.NewReader("v"), 1, 1)
	wantUnavailable(t, "Put", err)
	_, err = s.Open(ctx, "k")
	wantUnavailable(t, "Open", err)
	wantUnavailable(t, "Delete", s.Delete(ctx, "k"))
	// Invalid keys are still the caller's fault.
	if _, err := s.Open(ctx, "Bad Key"); !errors.Is(err, blobstore.ErrInvalidKey) || fault.IsTransient(err) {
		t.Errorf("Open of an invalid key = %v, want ErrInvalidKey", err)
	}
	if got := log.String(); !strings.Contains(got, "waiting for S3 at "+cfg.Endpoint) {
		t.Errorf("the log does not say that the store waits for %s:\n%s", cfg.Endpoint, got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A server that accepts connections but never answers: ctx bounds Open's wait, and Open fails when
	// the caller gives up first; with time to spare, the store opens and waits.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	conns.Go(func() {
		var held []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			held = append(held, c)
		}
	})
	defer conns.Wait()
	defer ln.Close()
	cfg.Endpoint = "http://" + ln.Addr().String()
	cfg.StallTimeout = 500 * time.Millisecond
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Open(short, cfg); !errors.Is(err, context.DeadlineExceeded) || fault.IsTransient(err) {
		t.Fatalf("Open of a silent endpoint bounded by ctx = %v, want the caller's DeadlineExceeded", err)
	} else {
		t.Log(err)
	}
	s, err = Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open of a silent endpoint = %v, want a store that waits for it", err)
	}
	defer s.Close()
	err = s.Ping(ctx)
	wantUnavailable(t, "Ping of a silent endpoint", err)
	if !errors.Is(err, errStalled) || errors.Is(err, context.Canceled) {
		t.Errorf("Ping of a silent endpoint = %v, want it to say that the server made no progress", err)
	}
	t.Log(err)
}

func testWrongCredentials(t *testing.T, m *enginetest.MinIO) {
	for _, tc := range []struct {
		name       string
		key, secre string
		want       string
	}{
		{"secret", m.AccessKey, "wrong-secret-key", "refused the credentials"},
		{"access key", "nobody", m.SecretKey, "refused the credentials"},
	} {
		cfg := config(t, m)
		cfg.AccessKey, cfg.SecretKey = tc.key, tc.secre
		_, err := Open(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open with a wrong %s = %v, want an error containing %q", tc.name, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), tc.secre) {
			t.Errorf("the error shows the secret key: %v", err)
		}
		t.Log(err)
	}
}

// testPingRemovedBucket: a removed bucket is reachable but not usable: a permanent error, no outage.
func testPingRemovedBucket(t *testing.T, m *enginetest.MinIO) {
	s := open(t, config(t, m))
	// The bucket removed under the store: reachable, but not usable; no outage.
	if err := s.core.RemoveBucketWithOptions(t.Context(), s.bucket, minio.RemoveBucketOptions{ForceDelete: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(t.Context()); err == nil || fault.IsTransient(err) {
		t.Errorf("Ping of a removed bucket = %v, want a permanent error", err)
	}
}

// slowReader serves r, pausing before each read of a new chunk.
type slowReader struct {
	r     io.Reader
	pause time.Duration
}

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.pause)
	return s.r.Read(p[:min(len(p), 1<<20)])
}

// A caller that takes its time, to send a body or read a blob, is not a server that hangs: the watchdog
// waits for the server only while a request waits for it.
func testSlowCaller(t *testing.T, m *enginetest.MinIO) {
	cfg := config(t, m)
	cfg.PartSize = MinPartSize
	cfg.StallTimeout = 2 * time.Second
	s := open(t, cfg)
	ctx := t.Context()
	data := payload(9, MinPartSize+100) // two parts
	// Half a second's pause per read of at most 1 MiB: filling a part (9 reads, as the buffer grows)
	// takes more than twice the stall timeout.
	if _, err := s.Put(ctx, "slow", slowReader{bytes.NewReader(data), 500 * time.Millisecond}, -1, 1); err != nil {
		t.Fatalf("Put of a slow body: %v", err)
	}
	b, err := s.Open(ctx, "slow")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(b, head); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * cfg.StallTimeout) // the caller is busy elsewhere
	rest, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("reading on after a pause: %v", err)
	}
	if !bytes.Equal(append(head, rest...), data) {
		t.Fatal("the blob read back differs from what was put")
	}
}

// TestOutage runs the outage part of the contract with MinIO stopped, and frozen (SIGSTOP: it keeps its
// port, so requests time out rather than being refused), each subtest on a MinIO of its own.
func TestOutage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		down, up func(m *enginetest.MinIO, t testing.TB)
	}{
		{"Stopped", func(m *enginetest.MinIO, _ testing.TB) { m.Stop() }, (*enginetest.MinIO).Restart},
		{"Paused", func(m *enginetest.MinIO, _ testing.TB) { m.Pause() }, func(m *enginetest.MinIO, _ testing.TB) { m.Resume() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blobstoretest.RunOutage(t, blobstoretest.Outage{
				Engine: func(t *testing.T) blobstoretest.Engine {
					m := enginetest.StartMinIO(t)
					cfg := config(t, m)
					// Short, to keep the frozen server's calls short; long enough for a busy machine.
					cfg.StallTimeout = 5 * time.Second
					cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
					return blobstoretest.Engine{
						Open: func(t *testing.T) blobstore.Store {
							s, err := Open(t.Context(), cfg)
							if err != nil {
								t.Fatalf("Open: %v", err)
							}
							return s
						},
						Down: func(t testing.TB) { tc.down(m, t) },
						Up:   func(t testing.TB) { tc.up(m, t) },
					}
				},
				OpenWhileDown: true,
			})
		})
	}
}

// testLifecycleMerged: on an existing versioned bucket with a rule of its owner's, Open adds the rule
// that expires replaced versions, scoped to the store's prefix, and keeps the owner's rule as it was;
// opening again replaces the store's rule rather than adding a second one. (MinIO refuses the rule
// aborting incomplete uploads, which Open then does without.)
func testLifecycleMerged(t *testing.T, m *enginetest.MinIO) {
	ctx := context.Background()
	cfg := config(t, m)
	cfg.Prefix = "imgmill/"
	setup := open(t, config(t, m)) // any store, for its client
	if err := setup.core.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := setup.core.EnableVersioning(ctx, cfg.Bucket); err != nil {
		t.Fatal(err)
	}
	theirs := lifecycle.Rule{ID: "owner-expire-logs", Status: "Enabled", RuleFilter: lifecycle.Filter{Prefix: "logs/"},
		Expiration: lifecycle.Expiration{Days: 30}}
	if err := setup.core.SetBucketLifecycle(ctx, cfg.Bucket, &lifecycle.Configuration{Rules: []lifecycle.Rule{theirs}}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s := open(t, cfg)
		lc, err := s.core.GetBucketLifecycle(ctx, cfg.Bucket)
		if err != nil {
			t.Fatal(err)
		}
		ids := []string{}
		for _, r := range lc.Rules {
			ids = append(ids, r.ID)
			switch r.ID {
			case theirs.ID:
				if r.Expiration.Days != 30 || r.RuleFilter.Prefix != "logs/" {
					t.Errorf("the owner's rule changed: %+v", r)
				}
			case lifecycleRuleID:
				if r.NoncurrentVersionExpiration.NoncurrentDays != 1 || r.RuleFilter.Prefix != "imgmill/" {
					t.Errorf("the store's rule: %+v, want replaced versions under imgmill/ expired after a day", r)
				}
			}
		}
		if fmt.Sprint(ids) != fmt.Sprint([]string{theirs.ID, lifecycleRuleID}) {
			t.Errorf("lifecycle rules %q, want the owner's and the store's version rule", ids)
		}
	}
}

// testLifecycleUnversioned: on an existing unversioned bucket Open leaves the lifecycle alone on MinIO
// (no version rule to set, and the abort rule refused), and opens all the same.
func testLifecycleUnversioned(t *testing.T, m *enginetest.MinIO) {
	ctx := context.Background()
	cfg := config(t, m)
	setup := open(t, config(t, m))
	if err := setup.core.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	s := open(t, cfg)
	if lc, err := s.core.GetBucketLifecycle(ctx, cfg.Bucket); err == nil && len(lc.Rules) != 0 {
		t.Errorf("lifecycle of an unversioned bucket on MinIO: %+v, want none", lc.Rules)
	}
	put(t, s, "k", []byte("v"), 1)
}
