// Package s3blob is a blobstore.Store on an S3-compatible object store (MinIO, AWS S3, ...): key
// "working/42" is the object "working/42" (after Config.Prefix) in one bucket, which several stores, in
// several processes, may share.
//
// # Fences
//
// A blob's fence (see blobstore.Store) is kept in the object's user metadata, X-Amz-Meta-Imgmill-Fence
// (decimal; absent for fence 0), which S3 writes together with the content: an object appears whole,
// with its fence, or not at all. A fenced Put first streams the body (one PUT for a body that fits one
// part, else the parts of a multipart upload, which stay invisible), then commits it with a conditional
// write: first blind, with If-None-Match: * (most fenced writes are a key's first); when an object is
// there (412), HEAD it for its ETag and fence, refuse when the fence is larger, and send the PUT, or the
// CompleteMultipartUpload, with If-Match on that ETag (If-None-Match: * when there was no object). When
// another writer got in between, S3 answers 412 Precondition Failed and the commit starts over from the
// HEAD; the parts already uploaded are kept, so only the commit is repeated. The check
// and the replacement are thus one atomic step on the server, whatever the number of stores sharing
// the bucket. An unfenced Put (fence 0) is never refused and writes unconditionally.
//
// This needs conditional writes on PutObject and CompleteMultipartUpload: MinIO has them (checked
// under its per-object lock), AWS S3 since 2024. minio-go's PutObject cannot be used for it: it sends
// If-Match with the multipart upload's initiation only, not with its completion, so the check would
// precede the replacement by the whole upload. Put therefore drives uploads itself through minio.Core.
//
// One gap remains, inherent to ETags being digests of the content: if, between a stale writer's HEAD
// and its commit, a newer writer stores byte-for-byte the content the HEAD saw, the ETag is unchanged
// and the stale commit goes through. Deterministic workers write the same bytes anyway; the fence read
// back is then the stale one.
//
// # Memory
//
// Put holds at most one part in memory (Config.PartSize, 16 MiB by default). Bodies of unknown size
// are why it is set explicitly: minio-go sizes the parts of an unknown-length upload for a 5 TiB object
// (about 512 MiB each) and allocates one such buffer per Put. 16 MiB parts allow 156 GiB objects (S3
// takes 10,000 parts) for 16 MiB per concurrent Put; with a known size the parts grow as needed.
//
// # Open blobs
//
// An open Blob reads the version it was opened with. Buckets that Open creates get versioning, so that
// an open Blob keeps reading its version after an overwrite, like an open file.
//
// # Lifecycle
//
// Open sets the bucket's lifecycle rules, scoped to Config.Prefix (see ensureLifecycle): incomplete
// multipart uploads are aborted after a day and, in a versioned bucket, replaced versions and leftover
// delete markers expire after a day. They are merged by rule id into the rules the bucket already has,
// which stay. An engine that refuses the abort rule (MinIO, which removes stale uploads itself) gets the
// version rule alone; one without lifecycle support, or credentials without the permission, only make
// Open log a warning. Delete removes every version at once (see Delete). In a bucket without
// versioning, reading an open Blob after its object was replaced fails (If-Match on the ETag) rather
// than mixing two contents. Reads use the context given to Open.
//
// # Outages
//
// Errors of the service (it cannot be reached, does not answer, answers 5xx, or is out of space) are
// transient (fault.Unavailable, fault.NoSpace; see classify), so that callers wait and retry. minio-go
// retries a failed request only a few times, so that an outage reaches the caller within seconds; and a
// request fails once the service has made no progress for Config.StallTimeout (see watchdog), so that a
// service that hangs does not hold its callers. A store opened while the service is away opens all the
// same and becomes usable once it answers (see Open).
//
// A failed Put aborts its multipart upload; when even that fails (the process dies), the parts stay
// until the bucket's lifecycle rule or the server (MinIO drops stale uploads after 24 hours) removes them.
package s3blob

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/fault"
)

const (
	// DefaultPartSize is the part size when Config.PartSize is 0: the memory one Put holds at most.
	DefaultPartSize = 16 << 20
	// MinPartSize is the smallest part S3 accepts (but for the last one).
	MinPartSize = 5 << 20
	maxPartSize = 5 << 30
	// maxParts is the most parts S3 accepts in one upload.
	maxParts = 10000
	// DefaultStallTimeout is Config.StallTimeout when it is 0.
	DefaultStallTimeout = 15 * time.Second
	// fenceMeta is the user metadata key of the fence; S3 sends it as X-Amz-Meta-Imgmill-Fence.
	fenceMeta   = "Imgmill-Fence"
	fenceHeader = "X-Amz-Meta-" + fenceMeta
	// maxCommits bounds the conditional commits one Put tries: each lost one means another writer
	// committed, so running out takes a storm of writers on one key.
	maxCommits = 100
	// maxRetries is how many times minio-go sends a request that failed in a way it deems transient (a
	// refused connection, a 503): a few, so that an outage reaches the caller within a second or two
	// rather than after ten attempts; callers wait out transient errors themselves, with longer pauses.
	maxRetries = 3
	// abortTimeout bounds the abort of a failed multipart upload, which runs after ctx may have ended.
	abortTimeout = 30 * time.Second
	// maxPingTimeout bounds Ping's request: a health check wants an answer soon.
	maxPingTimeout = 5 * time.Second
	// waitLogEvery spaces out the log lines of a store waiting for a service that did not answer at
	// Open, and bounds the pause between its checks.
	waitLogEvery = 5 * time.Second
	// lifecycleRuleID names the lifecycle rule that expires replaced versions (see ensureLifecycle).
	lifecycleRuleID = "imgmill-s3blob-expire-old-versions"
)

// Store is an S3 blob store. It is safe for concurrent use, and several Stores (processes) may share a
// bucket.
type Store struct {
	core *minio.Core // retries maxRetries times
	// probe tries each request once: the bucket check, which Open's wait repeats on its own, and Ping.
	probe        *minio.Client
	transport    *http.Transport
	cfg          Config
	bucket       string
	prefix       string
	partSize     int64
	stallTimeout time.Duration
	logger       *slog.Logger

	// ready is set once the bucket check succeeded, at Open or later by waitReady; until then pending is
	// why not, and every call fails with it.
	ready   atomic.Bool
	mu      sync.Mutex
	pending error
	// setUp is set while the bucket is ours to set up (we created it) and its set-up has not succeeded:
	// a check that finds it existing must finish the set-up. Only the check in progress uses it.
	setUp bool
	// stopWait ends waitReady (nil when there is none), which closes waitDone when it returns.
	stopWait  context.CancelFunc
	waitDone  chan struct{}
	closeOnce sync.Once

	// beforeWrite, when set (by tests), runs before each conditional write of a fenced commit: with
	// attempt 0 before the first one, blind (If-None-Match, no HEAD), then with 1, 2, ... between each
	// HEAD and its write, to let another writer in.
	beforeWrite func(attempt int)
}

var _ blobstore.Store = (*Store)(nil)

// Open connects to cfg's endpoint and checks that it answers and takes the credentials, creating the
// bucket (versioned, see the package comment) when it is missing; another process creating it at the
// same time is fine. ctx bounds the check: it fails Open when it ends first. An answer that the
// configuration is wrong (credentials refused, access denied) fails Open too, so that it shows at start
// rather than at the first Put.
//
// A service that cannot be reached, does not answer within the stall timeout or answers that it cannot
// serve yet (503) does not fail Open: the store is returned at once and repeats the check in the
// background, with backoff, logging through cfg.Logger at most every few seconds why it waits. Until
// the check succeeds every call, Ping included, fails with a fault.Unavailable error. Close ends the
// wait.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s, err := newStore(cfg)
	if err != nil {
		return nil, err
	}
	err = s.ensureBucket(ctx)
	if err == nil {
		s.ready.Store(true)
		return s, nil
	}
	if ctx.Err() != nil || !fault.IsTransient(err) {
		s.transport.CloseIdleConnections()
		return nil, err
	}
	s.pending = err
	s.logger.Warn("s3blob: waiting for S3 at "+cfg.Endpoint, "bucket", s.bucket, "err", err)
	wctx, stop := context.WithCancel(context.Background())
	s.stopWait, s.waitDone = stop, make(chan struct{})
	go s.waitReady(wctx)
	return s, nil
}

// newStore makes the store's clients; it sends nothing.
func newStore(cfg Config) (*Store, error) {
	host, secure, _ := cfg.endpoint() // validate checked it
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("s3blob: %w", err)
	}
	newCore := func(retries int) (*minio.Core, error) {
		core, err := minio.NewCore(host, &minio.Options{
			Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
			Secure: secure,
			Region: cfg.Region,
			// Tells the watchdog of a request (see do) how it progresses.
			Transport:  progressTransport{tr},
			MaxRetries: retries,
		})
		if err != nil {
			return nil, fmt.Errorf("s3blob: %w", err)
		}
		return core, nil
	}
	core, err := newCore(maxRetries)
	if err != nil {
		return nil, err
	}
	probe, err := newCore(1)
	if err != nil {
		return nil, err
	}
	s := &Store{core: core, probe: probe.Client, transport: tr, cfg: cfg, bucket: cfg.Bucket,
		prefix: cfg.keyPrefix(), partSize: cfg.PartSize, stallTimeout: cfg.StallTimeout, logger: cfg.Logger}
	if s.partSize == 0 {
		s.partSize = DefaultPartSize
	}
	if s.stallTimeout == 0 {
		s.stallTimeout = DefaultStallTimeout
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// waitReady repeats the bucket check, with backoff, until it succeeds or ctx ends (Close), and logs
// why the store waits at most every waitLogEvery: at warning level while the service is unreachable,
// at error level once it answers but refuses (a configuration to fix; the check goes on, as the fix may
// be made on the service's side).
func (s *Store) waitReady(ctx context.Context) {
	defer close(s.waitDone)
	wait := backoff.Backoff{Min: 250 * time.Millisecond, Max: waitLogEvery}
	logged := time.Now()
	for backoff.Sleep(ctx, wait.Next()) {
		err := s.ensureBucket(ctx)
		if err == nil {
			s.ready.Store(true)
			s.mu.Lock()
			s.pending = nil
			s.mu.Unlock()
			s.logger.Info("s3blob: S3 at "+s.cfg.Endpoint+" answers; the store is ready", "bucket", s.bucket)
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.pending = err
		s.mu.Unlock()
		if time.Since(logged) >= waitLogEvery {
			level := slog.LevelWarn
			if !fault.IsTransient(err) {
				level = slog.LevelError
			}
			s.logger.Log(ctx, level, "s3blob: waiting for S3 at "+s.cfg.Endpoint, "bucket", s.bucket, "err", err)
			logged = time.Now()
		}
	}
}

// notReady returns the error of every call until the bucket check has succeeded, nil after: transient,
// whatever the check met, since the store may yet become ready.
func (s *Store) notReady() error {
	if s.ready.Load() {
		return nil
	}
	s.mu.Lock()
	pending := s.pending
	s.mu.Unlock()
	if pending == nil {
		return nil // became ready meanwhile
	}
	err := fmt.Errorf("s3blob: not ready: %w", pending)
	if fault.IsTransient(err) {
		return err
	}
	return fault.Unavailable(what, err)
}

// ensureBucket checks that the endpoint answers and takes the credentials, and creates the bucket if
// it is missing.
func (s *Store) ensureBucket(ctx context.Context) error {
	var exists bool
	err := s.do(ctx, func(ctx context.Context) (err error) {
		exists, err = s.probe.BucketExists(ctx, s.bucket)
		return err
	})
	if err != nil {
		return s.describeStartError(ctx, err)
	}
	if exists && !s.setUp {
		s.setLifecycle(ctx)
		return nil
	}
	if !exists {
		err = s.do(ctx, func(ctx context.Context) error {
			return s.core.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: s.cfg.Region})
		})
		if err != nil && s3Code(err) != "BucketAlreadyOwnedByYou" {
			return fmt.Errorf("s3blob: create bucket %s at %s: %w", s.bucket, s.cfg.Endpoint, withCtx(ctx, err))
		}
	}
	// Whoever created it, the bucket is new and ours to set up: both creators set the same settings.
	// Should a step fail, the next check finds the bucket existing and must not take it as set up.
	s.setUp = true
	if err := s.do(ctx, func(ctx context.Context) error { return s.core.EnableVersioning(ctx, s.bucket) }); err != nil {
		return fmt.Errorf("s3blob: enable versioning of new bucket %s: %w", s.bucket, withCtx(ctx, err))
	}
	s.setUp = false
	s.setLifecycle(ctx)
	return nil
}

// setLifecycle sets the bucket's lifecycle rules (see ensureLifecycle) and logs, once per Open, why it
// could not: an engine without lifecycle support or credentials without the permission leave the store
// working, only without the rules' clean-up.
func (s *Store) setLifecycle(ctx context.Context) {
	if err := s.ensureLifecycle(ctx); err != nil {
		s.logger.Warn("s3blob: the bucket's lifecycle rules (abort incomplete uploads, expire replaced versions after a day) are not set; "+
			"incomplete uploads and old versions stay until removed otherwise", "bucket", s.bucket, "code", s3Code(err), "err", err)
	}
}

// describeStartError turns the failure of the first request into an error that says what to fix. A
// transient failure stays transient.
func (s *Store) describeStartError(ctx context.Context, err error) error {
	cfg := s.cfg
	var resp minio.ErrorResponse
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("s3blob: %s did not answer in time: %w", cfg.Endpoint, withCtx(ctx, err))
	case !errors.As(err, &resp):
		return fmt.Errorf("s3blob: cannot reach %s: %w", cfg.Endpoint, err)
	case fault.IsTransient(err):
		return fmt.Errorf("s3blob: %s cannot serve yet (%s, HTTP %d): %w", cfg.Endpoint, resp.Code, resp.StatusCode, err)
	}
	switch resp.Code {
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("s3blob: %s refused the credentials of access key %q (%s): %w", cfg.Endpoint, cfg.AccessKey, resp.Code, err)
	case "AccessDenied":
		return fmt.Errorf("s3blob: %s denied access key %q access to bucket %s (wrong secret key, or no permission): %w",
			cfg.Endpoint, cfg.AccessKey, cfg.Bucket, err)
	}
	return fmt.Errorf("s3blob: check bucket %s at %s: %s (HTTP %d): %w", cfg.Bucket, cfg.Endpoint, resp.Code, resp.StatusCode, err)
}

// do runs one S3 request, fn, with a context that ends when the service makes no progress for the
// stall timeout (see watchdog), and returns its error classified (see classify).
func (s *Store) do(ctx context.Context, fn func(ctx context.Context) error) error {
	return s.doWithin(ctx, s.stallTimeout, fn)
}

// doWithin is do with another stall timeout.
func (s *Store) doWithin(ctx context.Context, timeout time.Duration, fn func(ctx context.Context) error) error {
	rctx, w := newWatchdog(ctx, timeout)
	w.arm()
	err := fn(rctx)
	w.release()
	if err != nil && ctx.Err() == nil && stalledBy(rctx, err) {
		return s.stallError(timeout)
	}
	return classify(ctx, err)
}

// stallError is the error of a request that the watchdog ended. It does not wrap the request's own
// error, a context.Canceled that would pass for the caller's cancellation.
func (s *Store) stallError(timeout time.Duration) error {
	return fault.Unavailable(what, fmt.Errorf("%s: %w for %v", s.cfg.Endpoint, errStalled, timeout))
}

// name maps a key to its object name.
func (s *Store) name(key string) (string, error) {
	if err := blobstore.ValidateKey(key); err != nil {
		return "", fmt.Errorf("s3blob: %w", err)
	}
	return s.prefix + key, nil
}

// Put implements blobstore.Store; see the package comment for how it streams and fences.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, fence int64) (int64, error) {
	name, err := s.name(key)
	if err != nil {
		return 0, err
	}
	if size < -1 {
		return 0, fmt.Errorf("s3blob: put %s: invalid size %d", key, size)
	}
	if fence < 0 {
		return 0, fmt.Errorf("s3blob: put %s: invalid fence %d", key, fence)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("s3blob: put %s: %w", key, err)
	}
	if err := s.notReady(); err != nil {
		return 0, fmt.Errorf("s3blob: put %s: %w", key, err)
	}
	n, err := s.put(ctx, name, r, size, fence)
	if err != nil {
		return 0, fmt.Errorf("s3blob: put %s: %w", key, withCtx(ctx, err))
	}
	return n, nil
}

func (s *Store) put(ctx context.Context, name string, r io.Reader, size int64, fence int64) (int64, error) {
	partSize := s.partSize
	if size > partSize*maxParts {
		// A known size may need larger parts to fit S3's part count; round up to whole MiB.
		partSize = ((size+maxParts-1)/maxParts + 1<<20 - 1) &^ (1<<20 - 1)
		if partSize > maxPartSize {
			return 0, fmt.Errorf("%d bytes exceed the largest S3 object", size)
		}
	}
	var src io.Reader = ctxReader{ctx: ctx, r: r}
	if size >= 0 {
		// A stream shorter or longer than announced is a truncated or confused upload: fail before the
		// commit so that nothing is stored.
		src = blobstore.ExactSize(src, size)
	}
	// The bufio.Reader only peeks one byte past a full part to learn whether it was the last; reads
	// into parts go around its buffer.
	br := bufio.NewReaderSize(src, 16)
	// limit is the length of the next part: with a known size, exactly what remains, so that the
	// buffer of a body shorter than a part is allocated once at its length.
	limit := func(done int64) int {
		if size < 0 {
			return int(partSize)
		}
		return int(min(partSize, size-done))
	}
	first := limit(0)
	if size < 0 {
		first = 64 << 10 // grown as the body turns out longer
	}
	part, last, err := fillPart(br, make([]byte, 0, first), limit(0))
	if err != nil {
		return 0, err
	}
	if last {
		return s.putSingle(ctx, name, part, fence)
	}
	return s.putMultipart(ctx, name, br, part, limit, fence)
}

// putSingle stores a body that fits one part with one PUT.
func (s *Store) putSingle(ctx context.Context, name string, body []byte, fence int64) (int64, error) {
	err := s.commit(ctx, name, fence, func(cond condition) error {
		opts := putOptions(fence)
		cond.apply(&opts)
		return s.do(ctx, func(ctx context.Context) error {
			_, err := s.core.PutObject(ctx, s.bucket, name, bytes.NewReader(body), int64(len(body)), "", "", opts)
			return err
		})
	})
	if err != nil {
		return 0, err
	}
	return int64(len(body)), nil
}

// putMultipart uploads first and the rest of br as the parts of a multipart upload, reusing one buffer,
// and commits the upload. Any failure aborts it: nothing becomes visible.
func (s *Store) putMultipart(ctx context.Context, name string, br *bufio.Reader, first []byte, limit func(done int64) int, fence int64) (n int64, err error) {
	var uploadID string
	err = s.do(ctx, func(ctx context.Context) (err error) {
		uploadID, err = s.core.NewMultipartUpload(ctx, s.bucket, name, putOptions(fence))
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("start multipart upload: %w", err)
	}
	defer func() {
		if err != nil {
			// Detached from ctx: a cancelled Put must still release its parts.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
			defer cancel()
			// Best effort (see the package comment); the watchdog keeps a service that hangs from holding
			// the failed Put for all of abortTimeout.
			_ = s.do(actx, func(ctx context.Context) error { return s.core.AbortMultipartUpload(ctx, s.bucket, name, uploadID) })
		}
	}()
	var parts []minio.CompletePart
	buf, last := first, false
	for number := 1; ; number++ {
		if number > maxParts {
			return 0, fmt.Errorf("the body exceeds %d parts of %d bytes", maxParts, len(first))
		}
		var p minio.ObjectPart
		err := s.do(ctx, func(ctx context.Context) (err error) {
			p, err = s.core.PutObjectPart(ctx, s.bucket, name, uploadID, number, bytes.NewReader(buf), int64(len(buf)), minio.PutObjectPartOptions{})
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("upload part %d: %w", number, err)
		}
		parts = append(parts, minio.CompletePart{PartNumber: number, ETag: p.ETag})
		n += int64(len(buf))
		if last {
			break
		}
		if buf, last, err = fillPart(br, buf[:0], limit(n)); err != nil {
			return 0, err
		}
		if len(buf) == 0 {
			break // the previous part happened to end the body
		}
	}
	err = s.commit(ctx, name, fence, func(cond condition) error {
		var opts minio.PutObjectOptions
		cond.apply(&opts)
		// The service answers at once and keeps the connection alive with whitespace while it assembles
		// the parts: the watchdog sees progress.
		return s.do(ctx, func(ctx context.Context) error {
			_, err := s.core.CompleteMultipartUpload(ctx, s.bucket, name, uploadID, parts, opts)
			return err
		})
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

func putOptions(fence int64) minio.PutObjectOptions {
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	if fence != 0 {
		opts.UserMetadata = map[string]string{fenceMeta: strconv.FormatInt(fence, 10)}
	}
	return opts
}

// condition is the precondition of a commit.
type condition struct {
	ifMatch     string // the ETag the object must still have
	ifNoneMatch bool   // there must still be no object
}

func (c condition) apply(opts *minio.PutObjectOptions) {
	switch {
	case c.ifMatch != "":
		opts.SetMatchETag(c.ifMatch)
	case c.ifNoneMatch:
		opts.SetMatchETagExcept("*")
	}
}

// commit makes the uploaded body the object name: at once when unfenced, else by a conditional write
// that refuses a stored larger fence and starts over when another writer committed in between.
func (s *Store) commit(ctx context.Context, name string, fence int64, write func(condition) error) error {
	if fence == 0 {
		return write(condition{})
	}
	// Most fenced writes are a task's first result, under a key that holds nothing yet: try that first,
	// without the HEAD (one request instead of two). An object already there fails it with 412, and the
	// loop below reads its fence.
	if s.beforeWrite != nil {
		s.beforeWrite(0)
	}
	if err := write(condition{ifNoneMatch: true}); err == nil || !lostRace(err) {
		return err
	}
	wait := backoff.Backoff{Min: time.Millisecond, Max: 100 * time.Millisecond}
	for attempt := 1; ; attempt++ {
		info, found, err := s.stat(ctx, name)
		if err != nil {
			return err
		}
		var cond condition
		if found {
			stored, err := fenceOf(info)
			if err != nil {
				return err
			}
			if stored > fence {
				return fmt.Errorf("%w (stored blob has fence %d, this write %d)", blobstore.ErrStaleFence, stored, fence)
			}
			cond.ifMatch = info.ETag
		} else {
			cond.ifNoneMatch = true
		}
		if s.beforeWrite != nil {
			s.beforeWrite(attempt)
		}
		err = write(cond)
		if err == nil || !lostRace(err) {
			return err
		}
		if attempt == maxCommits {
			return fmt.Errorf("gave up after %d commits lost to concurrent writers: %w", attempt, err)
		}
		// Another writer committed between the HEAD and the write; writers with equal fences would
		// otherwise keep retrying in step.
		if !backoff.Sleep(ctx, wait.Next()) {
			return ctx.Err()
		}
	}
}

// lostRace reports whether a conditional write failed because the object changed since the HEAD.
func lostRace(err error) bool {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return false
	}
	switch {
	case resp.StatusCode == http.StatusPreconditionFailed, resp.Code == "PreconditionFailed":
		return true
	case resp.Code == "ConditionalRequestConflict": // AWS: a concurrent conditional write is under way
		return true
	case resp.Code == "NoSuchKey": // If-Match on an object deleted meanwhile
		return true
	}
	return false
}

// stat returns the object's information, or found false when there is none (or a delete marker).
func (s *Store) stat(ctx context.Context, name string) (info minio.ObjectInfo, found bool, err error) {
	err = s.do(ctx, func(ctx context.Context) (err error) {
		info, err = s.core.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		var resp minio.ErrorResponse
		if errors.As(err, &resp) && (resp.StatusCode == http.StatusNotFound || resp.Code == "NoSuchKey") {
			return minio.ObjectInfo{}, false, nil
		}
		return minio.ObjectInfo{}, false, fmt.Errorf("stat: %w", err)
	}
	if info.IsDeleteMarker {
		return minio.ObjectInfo{}, false, nil
	}
	return info, true, nil
}

// fenceOf reads the fence from an object's metadata; an object without it was written unfenced.
func fenceOf(info minio.ObjectInfo) (int64, error) {
	raw := info.Metadata.Get(fenceHeader)
	if raw == "" {
		return 0, nil
	}
	fence, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || fence < 0 {
		return 0, fmt.Errorf("object %s has a malformed fence %q", info.Key, raw)
	}
	return fence, nil
}

// Open implements blobstore.Store. The Blob reads with ctx, the version (or, without versioning, the
// ETag) that the HEAD found, so its content, Size and Fence always belong together.
func (s *Store) Open(ctx context.Context, key string) (*blobstore.Blob, error) {
	name, err := s.name(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("s3blob: open %s: %w", key, err)
	}
	if err := s.notReady(); err != nil {
		return nil, fmt.Errorf("s3blob: open %s: %w", key, err)
	}
	info, found, err := s.stat(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("s3blob: open %s: %w", key, withCtx(ctx, err))
	}
	if !found {
		return nil, fmt.Errorf("s3blob: open %s: %w", key, blobstore.ErrNotFound)
	}
	fence, err := fenceOf(info)
	if err != nil {
		return nil, fmt.Errorf("s3blob: open %s: %w", key, err)
	}
	var opts minio.GetObjectOptions
	if info.VersionID != "" && info.VersionID != "null" {
		opts.VersionID = info.VersionID
	} else if err := opts.SetMatchETag(info.ETag); err != nil {
		return nil, fmt.Errorf("s3blob: open %s: %w", key, err)
	}
	// The Object requests nothing until the first Read or Seek, and ranges after a Seek.
	rctx, w := newWatchdog(ctx, s.stallTimeout)
	obj, err := s.core.Client.GetObject(rctx, s.bucket, name, opts)
	if err != nil {
		w.release()
		return nil, fmt.Errorf("s3blob: open %s: %w", key, err)
	}
	r := &objectReader{s: s, obj: obj, ctx: ctx, rctx: rctx, w: w}
	return &blobstore.Blob{ReadSeekCloser: r, Size: info.Size, ModTime: info.LastModified, Fence: fence}, nil
}

// objectReader reads an object for a Blob. Its watchdog is armed only while a Read or Seek waits for the
// service: between them, the caller's pace is nobody's failure.
type objectReader struct {
	s    *Store
	obj  *minio.Object
	ctx  context.Context // the caller's, which the reads use
	rctx context.Context // ctx with the watchdog
	w    *watchdog
}

func (r *objectReader) Read(p []byte) (int, error) {
	r.w.arm()
	n, err := r.obj.Read(p)
	r.w.disarm()
	return n, r.fail(err)
}

func (r *objectReader) Seek(offset int64, whence int) (int64, error) {
	r.w.arm()
	n, err := r.obj.Seek(offset, whence)
	r.w.disarm()
	return n, r.fail(err)
}

// Close ends the object's requests and its watchdog.
func (r *objectReader) Close() error {
	err := r.obj.Close()
	r.w.release()
	return err
}

// fail classifies the error of a read; io.EOF stays as it is.
func (r *objectReader) fail(err error) error {
	switch {
	case err == nil || err == io.EOF:
		return err
	case r.ctx.Err() == nil && stalledBy(r.rctx, err):
		return r.s.stallError(r.s.stallTimeout)
	}
	return classify(r.ctx, err)
}

// Delete implements blobstore.Store. S3 deletes are idempotent: a missing key is no error. In a
// versioned bucket it removes every version of the object (and the delete markers), so that the bytes
// are gone when it returns, not when the lifecycle rule would take them: a delete is someone asking for
// their image to be removed. An open Blob of the object fails its next read.
func (s *Store) Delete(ctx context.Context, key string) error {
	name, err := s.name(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3blob: delete %s: %w", key, err)
	}
	if err := s.notReady(); err != nil {
		return fmt.Errorf("s3blob: delete %s: %w", key, err)
	}
	err = s.do(ctx, func(ctx context.Context) error {
		if err := s.core.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
			return err
		}
		return s.removeVersions(ctx, name)
	})
	if err != nil {
		return fmt.Errorf("s3blob: delete %s: %w", key, withCtx(ctx, err))
	}
	return nil
}

// removeVersions removes every version of object name and every delete marker; in a bucket without
// versioning there are none left after the plain delete. Versions are listed in key order, those of name
// first among the keys it prefixes, so the listing stops at the first other key.
func (s *Store) removeVersions(ctx context.Context, name string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the listing when it stops early
	var versions []string
	for obj := range s.core.Client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: name, WithVersions: true}) {
		if obj.Err != nil {
			return obj.Err
		}
		if obj.Key != name {
			break
		}
		versions = append(versions, obj.VersionID)
	}
	for _, v := range versions {
		if v == "" {
			continue // an unversioned object, removed already
		}
		if err := s.core.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{VersionID: v}); err != nil {
			return err
		}
	}
	return nil
}

// Ping implements blobstore.Store: one HEAD of the bucket, not retried, which fails as unavailable when
// the service makes no progress for the stall timeout or 5s, whichever is shorter. Until the check at
// Open has succeeded, it fails with why the store waits.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3blob: ping: %w", err)
	}
	if err := s.notReady(); err != nil {
		return fmt.Errorf("s3blob: ping: %w", err)
	}
	var exists bool
	err := s.doWithin(ctx, min(s.stallTimeout, maxPingTimeout), func(ctx context.Context) (err error) {
		exists, err = s.probe.BucketExists(ctx, s.bucket)
		return err
	})
	if err != nil {
		return fmt.Errorf("s3blob: ping %s: %w", s.cfg.Endpoint, withCtx(ctx, err))
	}
	if !exists {
		return fmt.Errorf("s3blob: ping: bucket %s at %s does not exist", s.bucket, s.cfg.Endpoint)
	}
	return nil
}

// Close implements blobstore.Store: it ends the wait for a service that did not answer at Open and
// closes idle connections. Open Blobs stay readable.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.stopWait != nil {
			s.stopWait()
			<-s.waitDone
		}
	})
	s.transport.CloseIdleConnections()
	return nil
}

// s3Code returns the S3 error code of err, or "".
func s3Code(err error) string {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		return resp.Code
	}
	return ""
}

// withCtx adds ctx's error to err when ctx has ended, so that callers can tell a cancelled request
// (errors.Is context.Canceled) from a failed one: minio-go does not always wrap it.
func withCtx(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", err, cerr)
	}
	return err
}

// fillPart reads from br into buf (appending, growing it up to limit) until it holds limit bytes or the
// body ends; last reports the end. A full part is followed by a one-byte peek, so that a body ending
// exactly at a part boundary is known to end there.
func fillPart(br *bufio.Reader, buf []byte, limit int) (part []byte, last bool, err error) {
	empty := 0 // consecutive reads of nothing
	for len(buf) < limit {
		if len(buf) == cap(buf) {
			// Grow geometrically up to limit, so that small bodies of unknown size cost little memory;
			// but not for a body that ends here.
			if _, err := br.Peek(1); err == io.EOF {
				return buf, true, nil
			}
			grown := make([]byte, len(buf), min(max(2*cap(buf), 64<<10), limit))
			copy(grown, buf)
			buf = grown
		}
		n, err := br.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n == 0 && err == nil {
			// Large reads bypass bufio's own guard against a reader that never progresses.
			if empty++; empty == 100 {
				return nil, false, fmt.Errorf("read body: %w", io.ErrNoProgress)
			}
			continue
		}
		empty = 0
		if err == io.EOF {
			return buf, true, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("read body: %w", err)
		}
	}
	if _, err := br.Peek(1); err != nil {
		if err == io.EOF {
			return buf, true, nil
		}
		return nil, false, fmt.Errorf("read body: %w", err)
	}
	return buf, false, nil
}

// ctxReader fails reads once ctx has ended, so that a cancelled Put stops reading its body.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
