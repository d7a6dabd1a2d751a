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
// write: HEAD the current object for its ETag and fence, refuse when the fence is larger, and send the
// PUT, or the CompleteMultipartUpload, with If-Match on that ETag (If-None-Match: * when there was no
// object). When another writer got in between, S3 answers 412 Precondition Failed and the commit starts
// over from the HEAD; the parts already uploaded are kept, so only the commit is repeated. The check
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
// an open Blob keeps reading its version after an overwrite or a Delete, like an open file, and a
// lifecycle rule that removes replaced and deleted versions after a day. In a bucket without
// versioning, reading an open Blob after its object was replaced fails (If-Match on the ETag) rather
// than mixing two contents. Reads use the context given to Open.
//
// A failed Put aborts its multipart upload; when even that fails (the process dies), the parts stay
// until the bucket's lifecycle rule (for buckets Open created) or the server (MinIO drops stale
// uploads after 24 hours) removes them.
package s3blob

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/lifecycle"

	"github.com/imgmill/imgmill/internal/backoff"
	"github.com/imgmill/imgmill/internal/blobstore"
)

const (
	// DefaultPartSize is the part size when Config.PartSize is 0: the memory one Put holds at most.
	DefaultPartSize = 16 << 20
	// MinPartSize is the smallest part S3 accepts (but for the last one).
	MinPartSize = 5 << 20
	maxPartSize = 5 << 30
	// maxParts is the most parts S3 accepts in one upload.
	maxParts = 10000
	// fenceMeta is the user metadata key of the fence; S3 sends it as X-Amz-Meta-Imgmill-Fence.
	fenceMeta   = "Imgmill-Fence"
	fenceHeader = "X-Amz-Meta-" + fenceMeta
	// maxCommits bounds the conditional commits one Put tries: each lost one means another writer
	// committed, so running out takes a storm of writers on one key.
	maxCommits = 100
	// abortTimeout bounds the abort of a failed multipart upload, which runs after ctx may have ended.
	abortTimeout = 30 * time.Second
	// lifecycleRuleID names the rule Open sets on buckets it creates.
	lifecycleRuleID = "imgmill-s3blob-expire-old-versions"
)

// Store is an S3 blob store. It is safe for concurrent use, and several Stores (processes) may share a
// bucket.
type Store struct {
	core      *minio.Core
	transport *http.Transport
	bucket    string
	prefix    string
	partSize  int64
	// beforeWrite, when set (by tests), runs between a commit's HEAD and its conditional write, to let
	// another writer in deterministically.
	beforeWrite func(attempt int)
}

var _ blobstore.Store = (*Store)(nil)

// Open connects to cfg's endpoint and checks that it answers and takes the credentials, creating the
// bucket (versioned, see the package comment) when it is missing; another process creating it at the
// same time is fine. ctx bounds these checks, and a failure is a clear error at start rather than at
// the first Put.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	host, secure, _ := cfg.endpoint() // validate checked it
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, fmt.Errorf("s3blob: %w", err)
	}
	newCore := func(maxRetries int) (*minio.Core, error) {
		return minio.NewCore(host, &minio.Options{
			Creds:      credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
			Secure:     secure,
			Region:     cfg.Region,
			Transport:  tr,
			MaxRetries: maxRetries,
		})
	}
	core, err := newCore(0) // minio-go's default retries of transient failures
	if err != nil {
		return nil, fmt.Errorf("s3blob: %w", err)
	}
	// The check at start does not retry: an endpoint that refuses connections or credentials should
	// fail at once, not after minio-go's ten attempts.
	probe, err := newCore(1)
	if err != nil {
		return nil, fmt.Errorf("s3blob: %w", err)
	}
	s := &Store{core: core, transport: tr, bucket: cfg.Bucket, prefix: cfg.keyPrefix(), partSize: cfg.PartSize}
	if s.partSize == 0 {
		s.partSize = DefaultPartSize
	}
	if err := s.ensureBucket(ctx, probe.Client, cfg); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	return s, nil
}

// ensureBucket checks that the endpoint answers and takes the credentials, and creates the bucket if
// it is missing.
func (s *Store) ensureBucket(ctx context.Context, probe *minio.Client, cfg Config) error {
	exists, err := probe.BucketExists(ctx, s.bucket)
	if err != nil {
		return describeStartError(ctx, cfg, err)
	}
	if exists {
		return nil
	}
	err = s.core.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: cfg.Region})
	if err != nil && s3Code(err) != "BucketAlreadyOwnedByYou" {
		return fmt.Errorf("s3blob: create bucket %s at %s: %w", s.bucket, cfg.Endpoint, withCtx(ctx, err))
	}
	// Whoever created it, the bucket is new and ours to set up: both creators set the same settings.
	if err := s.core.EnableVersioning(ctx, s.bucket); err != nil {
		return fmt.Errorf("s3blob: enable versioning of new bucket %s: %w", s.bucket, withCtx(ctx, err))
	}
	rule := lifecycle.Rule{
		ID:     lifecycleRuleID,
		Status: "Enabled",
		// Versions replaced by a Put or hidden by a Delete serve only Blobs open at the time.
		NoncurrentVersionExpiration: lifecycle.NoncurrentVersionExpiration{NoncurrentDays: 1},
		// A Delete leaves a delete marker; once the versions below it are gone, so can it go.
		Expiration: lifecycle.Expiration{DeleteMarker: true},
	}
	if err := s.core.SetBucketLifecycle(ctx, s.bucket, &lifecycle.Configuration{Rules: []lifecycle.Rule{rule}}); err != nil {
		return fmt.Errorf("s3blob: set the lifecycle of new bucket %s: %w", s.bucket, withCtx(ctx, err))
	}
	return nil
}

// describeStartError turns the failure of the first request into an error that says what to fix.
func describeStartError(ctx context.Context, cfg Config, err error) error {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		if ctx.Err() != nil {
			return fmt.Errorf("s3blob: %s did not answer in time: %w", cfg.Endpoint, withCtx(ctx, err))
		}
		return fmt.Errorf("s3blob: cannot reach %s: %w", cfg.Endpoint, err)
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
		_, err := s.core.PutObject(ctx, s.bucket, name, bytes.NewReader(body), int64(len(body)), "", "", opts)
		return err
	})
	if err != nil {
		return 0, err
	}
	return int64(len(body)), nil
}

// putMultipart uploads first and the rest of br as the parts of a multipart upload, reusing one buffer,
// and commits the upload. Any failure aborts it: nothing becomes visible.
func (s *Store) putMultipart(ctx context.Context, name string, br *bufio.Reader, first []byte, limit func(done int64) int, fence int64) (n int64, err error) {
	uploadID, err := s.core.NewMultipartUpload(ctx, s.bucket, name, putOptions(fence))
	if err != nil {
		return 0, fmt.Errorf("start multipart upload: %w", err)
	}
	defer func() {
		if err != nil {
			// Detached from ctx: a cancelled Put must still release its parts.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
			defer cancel()
			_ = s.core.AbortMultipartUpload(actx, s.bucket, name, uploadID) // best effort; see the package comment
		}
	}()
	var parts []minio.CompletePart
	buf, last := first, false
	for number := 1; ; number++ {
		if number > maxParts {
			return 0, fmt.Errorf("the body exceeds %d parts of %d bytes", maxParts, len(first))
		}
		p, err := s.core.PutObjectPart(ctx, s.bucket, name, uploadID, number, bytes.NewReader(buf), int64(len(buf)), minio.PutObjectPartOptions{})
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
		_, err := s.core.CompleteMultipartUpload(ctx, s.bucket, name, uploadID, parts, opts)
		return err
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
	info, err = s.core.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{})
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
	obj, err := s.core.Client.GetObject(ctx, s.bucket, name, opts)
	if err != nil {
		return nil, fmt.Errorf("s3blob: open %s: %w", key, err)
	}
	return &blobstore.Blob{ReadSeekCloser: obj, Size: info.Size, ModTime: info.LastModified, Fence: fence}, nil
}

// Delete implements blobstore.Store. S3 deletes are idempotent: a missing key is no error. In a
// versioned bucket the object's versions stay for open Blobs until the lifecycle rule removes them.
func (s *Store) Delete(ctx context.Context, key string) error {
	name, err := s.name(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3blob: delete %s: %w", key, err)
	}
	if err := s.core.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("s3blob: delete %s: %w", key, withCtx(ctx, err))
	}
	return nil
}

// Close implements blobstore.Store: it closes idle connections. Open Blobs stay readable.
func (s *Store) Close() error {
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
