package s3blob

import (
	"context"
	"fmt"
	"iter"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/imgmill/imgmill/internal/blobstore"
)

// listPage is how many objects one ListObjectsV2 request asks for (S3's largest page).
const listPage = 1000

// List implements blobstore.Store with ListObjectsV2, one page (a request, under the watchdog) at a
// time. S3 lists keys in byte order, which is key order. Objects of the bucket that are not blobs of
// this store (outside Config.Prefix, or names that are not valid keys) are skipped.
func (s *Store) List(ctx context.Context, prefix, after string) iter.Seq2[blobstore.Entry, error] {
	return func(yield func(blobstore.Entry, error) bool) {
		fail := func(err error) { yield(blobstore.Entry{}, fmt.Errorf("s3blob: list %q: %w", prefix, err)) }
		if err := ctx.Err(); err != nil {
			fail(err)
			return
		}
		if err := s.notReady(); err != nil {
			fail(err)
			return
		}
		last := after
		for {
			var page []blobstore.Entry
			more := false
			err := s.do(ctx, func(ctx context.Context) error {
				// The listing goes on to the next page by itself: it is read one page at a time, and
				// ended (the context) once the page is full, so that the caller's work on the page does
				// not count against the request's watchdog.
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				opts := minio.ListObjectsOptions{Prefix: s.prefix + prefix, Recursive: true, MaxKeys: listPage}
				if last != "" {
					opts.StartAfter = s.prefix + last
				}
				for obj := range s.core.Client.ListObjects(ctx, s.bucket, opts) {
					if obj.Err != nil {
						return obj.Err
					}
					key, ok := strings.CutPrefix(obj.Key, s.prefix)
					if !ok || blobstore.ValidateKey(key) != nil {
						continue
					}
					page = append(page, blobstore.Entry{Key: key, Size: obj.Size, ModTime: obj.LastModified})
					if len(page) == listPage {
						more = true
						return nil
					}
				}
				return nil
			})
			if err != nil {
				fail(withCtx(ctx, err))
				return
			}
			for _, e := range page {
				if !yield(e, nil) {
					return
				}
			}
			if !more {
				return
			}
			last = page[len(page)-1].Key
		}
	}
}
