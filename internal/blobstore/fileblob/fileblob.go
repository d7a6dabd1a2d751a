// Package fileblob is a blobstore.Store on the local file system: key "working/42" is the file
// dir/working/42. Each Put writes a temporary file beside the target, fsyncs it, renames it over the target
// and fsyncs the directory, so a crash leaves the old blob or the complete new one.
//
// # Fences
//
// A blob's fence (see blobstore.Store) is kept in the extended attribute user.imgmill.fence of the blob's
// own file, as decimal text, set on the temporary file before it is fsynced and renamed. The fence is then
// part of the inode that the rename publishes: one atomic rename replaces content and fence together, so a
// crash at any point leaves the old blob with its old fence or the new blob with its new one, and an open
// Blob reads the fence of the very inode it serves (no lock, no race with a concurrent Put). The
// alternatives were worse: a header inside the file would change what Open serves (Size, Seek), and a
// sidecar file ("42.fence") needs two renames per Put in a careful order, plus a lock around Open to pair
// a blob with its sidecar, and after a crash between the renames it can claim a fence the blob was not
// written with. An unfenced blob (fence 0) carries no attribute; so do blobs written before fences
// existed, which therefore read as fence 0.
//
// The price: the file system must support user extended attributes (ext4, xfs, btrfs, zfs, tmpfs since
// Linux 6.6, APFS). Open checks that it does and fails otherwise, rather than run without fencing. And the
// fences are lost by copies that drop extended attributes: back the directory up or move it with
// "cp -a --preserve=xattr", "rsync -X" or "tar --xattrs", never a plain cp. Only Linux and macOS are
// supported.
//
// # Errors
//
// A full disk (ENOSPC, EDQUOT) makes Puts fail with fault.NoSpace errors and a read-only one with
// fault.Unavailable ones, which callers wait out; reads go on working, and Ping reports either.
//
// A directory must be used by one Store (one process) at a time: Open deletes the temporary files it finds,
// which would break another process's writes in progress; and the check of a Put's fence against the
// stored one is atomic through a lock per key inside the Store.
package fileblob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/groupsync"
)

// what names the store in transient errors (fault).
const what = "image storage"

// tempPattern matches the temporary files of Puts (atomicfile names them "."+base+".tmp-"+digits) and of
// Open's check for extended attributes. Keys cannot start with '.', so no key maps to one.
const tempPattern = ".*.tmp-*"

// Store is a file system blob store. It is safe for concurrent use.
type Store struct {
	dir string
	// mkdirMu serialises directory creation so that a Put that finds a directory existing knows it has
	// already been fsynced into its parent by whoever created it.
	mkdirMu sync.Mutex
	// keys serialises the check-and-replace of Puts and Deletes per key.
	keys keyLocks
	// flush, where the system has one (Linux: syncfs), makes every write to the store's file system
	// durable at once and is shared by concurrent Puts (group commit); nil: each Put fsyncs its file
	// and directory.
	flush *groupsync.Syncer
	root  io.Closer // what flush holds open
	// usage counts the blobs under each prefix: walked at Open, then kept by every Put and Delete.
	usage usageCounts
	// seg holds the small blobs (segment.go); nil when every blob is a file.
	seg *segments
}

// Options are the choices of OpenWith.
type Options struct {
	// SmallMax: blobs of at most this many bytes are kept in segment files (segment.go) instead of a
	// file each; 0 keeps every new blob in a file of its own (segments written before are still read).
	SmallMax int64
	// SegmentSize is the size past which a new segment file is started (0: DefaultSegmentSize).
	SegmentSize int64
	// Logger hears of failed segment flushes and compactions (nil: nobody).
	Logger *slog.Logger
}

var (
	_ blobstore.Store      = (*Store)(nil)
	_ blobstore.FreeSpacer = (*Store)(nil)
	_ blobstore.Inventory  = (*Store)(nil)
	_ blobstore.Compacting = (*Store)(nil)
)

// Open opens the store rooted at dir, creating dir if needed. It removes the temporary files left by writes
// that a crash interrupted and fsyncs every directory, so that after Open an existing directory is durable.
// A full disk does not keep it from opening; Puts then fail with fault.NoSpace errors until there is room.
func Open(dir string) (*Store, error) { return OpenWith(dir, Options{}) }

// OpenWith is Open with options.
func OpenWith(dir string, o Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("fileblob: empty directory")
	}
	dir = filepath.Clean(dir)
	s := &Store{dir: dir}
	if err := s.mkdirAll(dir); err != nil {
		return nil, fmt.Errorf("fileblob: create %s: %w", dir, err)
	}
	nums, err := segmentFiles(filepath.Join(dir, segmentsDir))
	if err != nil {
		return nil, fmt.Errorf("fileblob: open %s: %w", dir, err)
	}
	useSegments := o.SmallMax > 0 || len(nums) > 0
	// With segments, the blob files the walk finds: the keys that have a file, for openSegments to
	// settle with its records without a stat per record.
	var files map[string]bool
	if useSegments {
		files = make(map[string]bool)
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if err := atomicfile.SyncDir(path); err != nil {
				return err
			}
			if d.Name() == segmentsDir && filepath.Dir(path) == dir {
				return filepath.SkipDir // read by openSegments
			}
			return nil
		}
		if ok, _ := filepath.Match(tempPattern, d.Name()); ok && d.Type().IsRegular() {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove stale temporary file: %w", err)
			}
			return nil
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(dir, path)
			if err != nil {
				return err
			}
			s.usage.add(filepath.ToSlash(rel), 1, fi.Size())
			if files != nil {
				files[filepath.ToSlash(rel)] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("fileblob: open %s: %w", dir, err)
	}
	// Removals need no fsync: a temporary file that reappears after a crash is removed by the next Open.
	// A disk too full for the check's file opens all the same, to serve reads: the check is about the
	// file system's kind, and Puts fail clearly without extended attributes anyway.
	if err := checkFenceSupport(dir); err != nil && !fault.IsTransient(fault.Disk(what, err)) {
		return nil, fmt.Errorf("fileblob: open %s: %w", dir, err)
	}
	if s.flush, s.root, err = fileSystemFlush(dir); err != nil {
		return nil, fmt.Errorf("fileblob: open %s: %w", dir, err)
	}
	// Segments written with SmallMax are read without it too (nothing new is written to them then).
	if useSegments {
		if s.seg, err = openSegments(s, o, nums, files); err != nil {
			s.Close()
			return nil, fmt.Errorf("fileblob: open %s: %w", dir, err)
		}
	}
	return s, nil
}

// path maps a key to its file. ValidateKey caps segments at 200 bytes, so a segment plus the temporary
// suffix (a dot, ".tmp-" and up to 20 digits) still fits a 255-byte file name.
func (s *Store) path(key string) (string, error) {
	if err := blobstore.ValidateKey(key); err != nil {
		return "", fmt.Errorf("fileblob: %w", err)
	}
	return filepath.Join(s.dir, filepath.FromSlash(key)), nil
}

// Put implements blobstore.Store. The stream goes to a temporary file first, without any lock; only the
// fence check and the rename (and the directory fsync making it durable) hold the key's lock.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, fence int64) (int64, error) {
	path, err := s.path(key)
	if err != nil {
		return 0, err
	}
	if size < -1 {
		return 0, fmt.Errorf("fileblob: put %s: invalid size %d", key, size)
	}
	if fence < 0 {
		return 0, fmt.Errorf("fileblob: put %s: invalid fence %d", key, fence)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("fileblob: put %s: %w", key, err)
	}
	if s.seg != nil && s.seg.max > 0 {
		data, rest, small, err := readSmall(r, size, s.seg.max)
		if err != nil {
			return 0, putError(key, err)
		}
		if small {
			if err := s.putSmall(ctx, key, path, data, fence); err != nil {
				return 0, putError(key, err)
			}
			return int64(len(data)), nil
		}
		r = rest
	}
	if s.seg != nil {
		if s.seg.conflict(key) {
			return 0, fmt.Errorf("fileblob: put %s: the key is a prefix of other keys, or extends a blob's key: %w", key, fs.ErrExist)
		}
	}
	if err := s.mkdirAll(filepath.Dir(path)); err != nil {
		return 0, putError(key, err)
	}
	if size >= 0 {
		// A stream shorter or longer than announced is a truncated or confused upload: fail inside the
		// copy so that the temporary file is discarded instead of published.
		r = blobstore.ExactSize(r, size)
	}
	tmp, err := atomicfile.Create(path)
	if err != nil {
		return 0, putError(key, err)
	}
	// Removes the temporary file on every failure; nothing once it has been renamed over the blob.
	defer tmp.Abort()
	n, err := tmp.Fill(ctx, r)
	if err != nil {
		return n, putError(key, err)
	}
	if fence != 0 {
		if err := setFence(tmp.File(), fence); err != nil {
			return n, putError(key, err)
		}
	}
	// Without a shared flush, one fsync makes the content and the fence attribute (inode metadata)
	// durable. It closes the file too, and happens here, before the key's lock is taken.
	if s.flush == nil {
		if err := tmp.Sync(); err != nil {
			return n, putError(key, err)
		}
	}
	if err := s.replace(ctx, key, tmp, path, fence, n); err != nil {
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.EEXIST) || errors.Is(err, syscall.ENOTEMPTY) {
			return n, fmt.Errorf("fileblob: put %s: the key is a prefix of other keys: %w", key, err)
		}
		return n, putError(key, err)
	}
	return n, nil
}

// putError is the error of a Put of key that failed with err. A full disk (ENOSPC, EDQUOT) or a
// read-only one is transient (fault.Disk): the same Put succeeds once space is freed or the disk is
// writable again. Errors that are not the file system's (the reader's, ctx's, a stale fence) are not
// changed by fault.Disk.
func putError(key string, err error) error {
	return fmt.Errorf("fileblob: put %s: %w", key, fault.Disk(what, err))
}

// replace renames tmp, written and synced with fence and holding n bytes, over path unless the blob there
// has a larger fence, and makes the rename durable. The key's lock makes the check and the rename one step
// for other Puts and Deletes, and keeps the usage counts exact.
func (s *Store) replace(ctx context.Context, key string, tmp *atomicfile.Temp, path string, fence, n int64) error {
	unlock := s.keys.lock(key)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	var small *segEntry // the key's segment blob, which this file replaces
	if s.seg != nil {
		small, _ = s.seg.lookup(key)
	}
	if fence != 0 {
		stored, err := pathFence(path)
		if err != nil {
			return err
		}
		if small != nil {
			stored = small.fence
		}
		if stored > fence {
			return fmt.Errorf("%w (stored blob has fence %d, this write %d)", blobstore.ErrStaleFence, stored, fence)
		}
	}
	// What the rename replaces, for the usage counts: nothing (a new blob) or a blob of old bytes.
	var objects, old int64 = 1, 0
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		objects, old = 0, fi.Size()
	}
	if small != nil {
		objects, old = 0, small.size
	}
	// The rename and its flush, under the lock so that a Put that saw this blob's fence saw a durable
	// one. The shared flush covers the content, the fence and the rename of every Put in flight.
	commit := tmp.Commit
	if s.flush != nil {
		commit = func() error { return tmp.CommitFlush(s.flush.Sync) }
	}
	if err := commit(); err != nil {
		return err
	}
	s.usage.add(key, objects, n-old)
	if small != nil {
		// The file is in place and durable: the segment blob is superseded (see segment.go).
		if err := s.seg.appendDurable(opMoved, key, 0, time.Time{}, nil, true); err != nil {
			return err
		}
		s.seg.forget(key, true)
	}
	return nil
}

// Open implements blobstore.Store.
func (s *Store) Open(ctx context.Context, key string) (*blobstore.Blob, error) {
	path, err := s.path(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fileblob: open %s: %w", key, err)
	}
	// Index, file, index: see segment.go for why a concurrent switch of forms cannot hide the blob.
	if b, ok := s.openSegment(key); ok {
		return b, nil
	}
	f, err := os.Open(path)
	if err != nil {
		if isMissing(err) {
			if b, ok := s.openSegment(key); ok {
				return b, nil
			}
			return nil, fmt.Errorf("fileblob: open %s: %w", key, blobstore.ErrNotFound)
		}
		return nil, fmt.Errorf("fileblob: open %s: %w", key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fileblob: stat %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		// A directory holds the blobs of longer keys; it is not a blob itself.
		f.Close()
		return nil, fmt.Errorf("fileblob: open %s: %w", key, blobstore.ErrNotFound)
	}
	// The open file keeps reading the inode it opened even if a Put renames a new file over the path,
	// which is what makes an open Blob a consistent snapshot, fence included.
	fence, err := fileFence(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fileblob: open %s: %w", key, err)
	}
	return &blobstore.Blob{ReadSeekCloser: f, Size: fi.Size(), ModTime: fi.ModTime(), Fence: fence}, nil
}

// Delete implements blobstore.Store. The fence goes with the file. Emptied directories are kept: removing
// them would race with a Put creating a file in them.
func (s *Store) Delete(ctx context.Context, key string) error {
	path, err := s.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fileblob: delete %s: %w", key, err)
	}
	unlock := s.keys.lock(key)
	defer unlock()
	if s.seg != nil {
		// A tombstone before the file goes: a moved key's older segment blob must not come back.
		if e, ok := s.seg.entry(key); ok {
			if err := s.seg.appendDurable(opDelete, key, 0, time.Time{}, nil, true); err != nil {
				return fmt.Errorf("fileblob: delete %s: %w", key, fault.Disk(what, err))
			}
			s.seg.forget(key, false)
			if !e.moved {
				s.usage.add(key, -1, -e.size)
			}
		}
	}
	fi, err := os.Lstat(path)
	if err != nil {
		if isMissing(err) {
			return nil
		}
		return fmt.Errorf("fileblob: delete %s: %w", key, err)
	}
	if fi.IsDir() {
		return nil // a prefix of other keys, no blob
	}
	if err := os.Remove(path); err != nil {
		if isMissing(err) {
			return nil
		}
		return fmt.Errorf("fileblob: delete %s: %w", key, fault.Disk(what, err))
	}
	s.usage.add(key, -1, -fi.Size())
	// Make the removal durable, so a deleted blob does not come back after a crash.
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("fileblob: delete %s: %w", key, fault.Disk(what, err))
	}
	return nil
}

// Ping implements blobstore.Store: the store's directory is there and its file system takes writes and
// has room for data (a stat, an access and a statfs). A full file system is a fault.NoSpace error and a
// read-only one a fault.Unavailable one, the errors Puts meet; so is a directory that cannot be reached
// (removed, or its disk gone).
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fileblob: ping: %w", err)
	}
	fi, err := os.Stat(s.dir)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("fileblob: ping: %w", err)
		}
		return fault.Unavailable(what, fmt.Errorf("fileblob: ping: %w", err))
	}
	if !fi.IsDir() {
		return fmt.Errorf("fileblob: ping: %s is not a directory", s.dir)
	}
	if err := fault.Writable(what, s.dir); err != nil {
		return fmt.Errorf("fileblob: ping: %w", err)
	}
	return nil
}

// FreeSpace implements blobstore.FreeSpacer: one statfs of the store's directory.
func (s *Store) FreeSpace(ctx context.Context) (free, size uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, fmt.Errorf("fileblob: free space: %w", err)
	}
	free, size, err = fault.Space(s.dir)
	if err != nil {
		return 0, 0, fmt.Errorf("fileblob: free space: %w", err)
	}
	return free, size, nil
}

// Usage implements blobstore.Inventory from the counts kept since Open.
func (s *Store) Usage(prefix string) blobstore.Usage { return s.usage.get(prefix) }

// Close implements blobstore.Store. Open Blobs stay readable.
func (s *Store) Close() error {
	if s.seg != nil {
		if err := s.seg.close(); err != nil {
			return fmt.Errorf("fileblob: close: %w", err)
		}
	}
	if s.root == nil {
		return nil
	}
	if err := s.root.Close(); err != nil {
		return fmt.Errorf("fileblob: close: %w", err)
	}
	return nil
}

// mkdirAll creates dir and its missing parents, fsyncing each new directory's parent so that the new
// entry, and so the blob about to be written below it, survives a crash.
func (s *Store) mkdirAll(dir string) error {
	// Under the lock, a directory that exists was fsynced into its parent by whoever created it (or was
	// there before Open, which fsynced it), so a Put never relies on an entry a concurrent Put has not
	// made durable yet. The lock covers a few stats; only the first Put into a directory does more.
	s.mkdirMu.Lock()
	defer s.mkdirMu.Unlock()
	return mkdirAllLocked(dir)
}

func mkdirAllLocked(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is a blob, so no key can extend it: %w", dir, syscall.ENOTDIR)
		}
		return nil
	}
	// ENOTDIR: a parent is a file; the recursion reaches it and says so.
	if !isMissing(err) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllLocked(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	return atomicfile.SyncDir(parent)
}

// isMissing reports whether err means the path holds nothing: it does not exist, or one of its parents is a
// file (a key extending an existing key's blob).
func isMissing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// keyLocks is a mutex per key, allocated while in use.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int // holders and waiters; guarded by keyLocks.mu
}

// lock locks key and returns the function that unlocks it.
func (k *keyLocks) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyLock)
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()

	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

// usageCounts is what the store holds under each prefix (a key's first segment).
type usageCounts struct {
	mu sync.Mutex
	m  map[string]blobstore.Usage
}

// add counts objects blobs more (or fewer) and bytes more (or fewer) under key's prefix.
func (u *usageCounts) add(key string, objects, bytes int64) {
	prefix, _, _ := strings.Cut(key, "/")
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = make(map[string]blobstore.Usage)
	}
	c := u.m[prefix]
	c.Objects += objects
	c.Bytes += bytes
	u.m[prefix] = c
}

func (u *usageCounts) get(prefix string) blobstore.Usage {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.m[prefix]
}
