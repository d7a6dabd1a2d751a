package fileblob

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/fault"
)

// List implements blobstore.Store by walking the directory tree in key order, one directory's names
// in memory at a time. Key order is not the order of file names in a directory: '-' sorts before '/',
// so the blobs of key "a-b" come before those under directory "a" ("a/b"); each directory is
// therefore sorted as its keys would be, a subdirectory's name with the '/' that follows it. Temporary
// files of Puts in progress, and any name that is not a valid key, are skipped.
func (s *Store) List(ctx context.Context, prefix, after string) iter.Seq2[blobstore.Entry, error] {
	return func(yield func(blobstore.Entry, error) bool) {
		if s.seg == nil {
			l := lister{ctx: ctx, root: s.dir, prefix: prefix, after: after, yield: yield}
			if err := l.walk(""); err != nil && err != errStopped {
				yield(blobstore.Entry{}, fmt.Errorf("fileblob: list %q: %w", prefix, err))
			}
			return
		}
		// The segment blobs, read from the index a page at a time, merged into the walk's files. A key in
		// both (a switch of forms in progress) is yielded once.
		small := segmentPager{g: s.seg, prefix: prefix, after: after}
		merged := func(e blobstore.Entry, err error) bool {
			for err == nil {
				next, ok := small.peek()
				if !ok || next.Key > e.Key {
					break
				}
				small.pop()
				if next.Key < e.Key && !yield(next, nil) {
					return false
				}
			}
			return yield(e, err)
		}
		l := lister{ctx: ctx, root: s.dir, prefix: prefix, after: after, yield: merged}
		if err := l.walk(""); err != nil {
			if err != errStopped {
				yield(blobstore.Entry{}, fmt.Errorf("fileblob: list %q: %w", prefix, err))
			}
			return
		}
		for {
			next, ok := small.peek()
			if !ok {
				return
			}
			small.pop()
			if err := ctx.Err(); err != nil {
				yield(blobstore.Entry{}, fmt.Errorf("fileblob: list %q: %w", prefix, err))
				return
			}
			if !yield(next, nil) {
				return
			}
		}
	}
}

// segmentPager reads the segment blobs of a listing from the index a page at a time.
type segmentPager struct {
	g             *segments
	prefix, after string
	page          []blobstore.Entry
	done          bool
}

func (p *segmentPager) peek() (blobstore.Entry, bool) {
	if len(p.page) == 0 && !p.done {
		p.page = p.g.ascend(p.prefix, p.after, 256)
		if len(p.page) < 256 {
			p.done = true
		}
		if len(p.page) > 0 {
			p.after = p.page[len(p.page)-1].Key
		}
	}
	if len(p.page) == 0 {
		return blobstore.Entry{}, false
	}
	return p.page[0], true
}

func (p *segmentPager) pop() { p.page = p.page[1:] }

// errStopped ends a walk whose consumer stopped asking.
var errStopped = errors.New("listing stopped")

type lister struct {
	ctx                 context.Context
	root, prefix, after string
	yield               func(blobstore.Entry, error) bool
}

// walk yields the blobs under directory dir ("" for the root, else a key prefix ending in '/').
func (l *lister) walk(dir string) error {
	if err := l.ctx.Err(); err != nil {
		return err
	}
	entries, err := os.ReadDir(filepath.Join(l.root, filepath.FromSlash(dir)))
	if err != nil {
		if isMissing(err) && dir != "" {
			return nil // removed since its parent was read
		}
		return fault.Disk(what, err)
	}
	type named struct {
		key   string // the blob's key, or the directory's key prefix ending in '/'
		isDir bool
	}
	names := make([]named, 0, len(entries))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a temporary file (keys cannot start with '.')
		}
		key := dir + e.Name()
		if e.IsDir() {
			names = append(names, named{key + "/", true})
		} else if e.Type().IsRegular() {
			names = append(names, named{key, false})
		}
	}
	entries = nil
	slices.SortFunc(names, func(a, b named) int { return strings.Compare(a.key, b.key) })
	for _, n := range names {
		if !l.overlaps(n.key, n.isDir) {
			continue
		}
		if n.isDir {
			if err := l.walk(n.key); err != nil {
				return err
			}
			continue
		}
		if blobstore.ValidateKey(n.key) != nil {
			continue
		}
		fi, err := os.Lstat(filepath.Join(l.root, filepath.FromSlash(n.key)))
		if err != nil {
			if isMissing(err) {
				continue // deleted since the directory was read
			}
			return fault.Disk(what, err)
		}
		if !l.yield(blobstore.Entry{Key: n.key, Size: fi.Size(), ModTime: fi.ModTime()}, nil) {
			return errStopped
		}
	}
	return nil
}

// overlaps reports whether key (a blob's key, or a directory's prefix ending in '/') is, or holds,
// keys that start with the listing's prefix and sort after its after.
func (l *lister) overlaps(key string, isDir bool) bool {
	if isDir {
		if !strings.HasPrefix(key, l.prefix) && !strings.HasPrefix(l.prefix, key) {
			return false
		}
		// Every key under the directory sorts after key and before any string that sorts after key
		// without extending it.
		return l.after < key || strings.HasPrefix(l.after, key)
	}
	return strings.HasPrefix(key, l.prefix) && key > l.after
}
