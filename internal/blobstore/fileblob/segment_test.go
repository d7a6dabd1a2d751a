package fileblob

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/blobstoretest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
)

// storeModes are the two ways to keep blobs, for the tests that run on both.
var storeModes = map[string]Options{"files": {}, "segments": {SmallMax: 64 << 10}}

func openSegmented(t *testing.T, dir string) *Store {
	t.Helper()
	return openWith(t, dir, Options{SmallMax: 64 << 10})
}

func openWith(t *testing.T, dir string, o Options) *Store {
	t.Helper()
	s, err := OpenWith(dir, o)
	if err != nil {
		t.Fatalf("OpenWith(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSegmentedContract(t *testing.T) {
	blobstoretest.Run(t, func(t *testing.T) blobstore.Store {
		return openSegmented(t, t.TempDir())
	})
}

// TestSegmentedReopen: blobs, fences, deletes and replacements by large blobs survive a reopen, and a torn
// tail record (a crash mid-append) is cut off without losing the records before it.
func TestSegmentedReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openSegmented(t, dir)
	big := strings.Repeat("x", 100<<10)
	for _, p := range []struct {
		key, data string
		fence     int64
	}{{"a/1", "one", 3}, {"a/2", "two", 0}, {"a/3", "three", 0}, {"a/4", "small", 0}, {"a/4", big, 0}, {"a/5", big, 0}, {"a/5", "now small", 0}} {
		if _, err := s.Put(ctx, p.key, strings.NewReader(p.data), int64(len(p.data)), p.fence); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "a/2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A torn record at the tail.
	seg := filepath.Join(dir, segmentsDir, segmentName(1))
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0x49, 0x4d, 0x53, 0x47, 1, 9})
	f.Close()

	s = openSegmented(t, dir)
	defer s.Close()
	wantContent := func(key, want string, fence int64) {
		t.Helper()
		b, err := s.Open(ctx, key)
		if err != nil {
			t.Fatalf("Open(%s): %v", key, err)
		}
		defer b.Close()
		buf := new(strings.Builder)
		if _, err := io.Copy(buf, b); err != nil || buf.String() != want || b.Fence != fence {
			t.Fatalf("%s = %d bytes fence %d (%v), want %d bytes fence %d", key, buf.Len(), b.Fence, err, len(want), fence)
		}
	}
	wantContent("a/1", "one", 3)
	wantContent("a/3", "three", 0)
	wantContent("a/4", big, 0)
	wantContent("a/5", "now small", 0)
	if _, err := s.Open(ctx, "a/2"); err == nil {
		t.Fatal("a deleted blob came back")
	}
	if _, err := s.Put(ctx, "a/1", strings.NewReader("old"), 3, 2); err == nil {
		t.Fatal("a stale fence was accepted after reopen")
	}
	if u := s.Usage("a"); u.Objects != 4 {
		t.Fatalf("usage %+v, want 4 objects", u)
	}
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "a/6", strings.NewReader("six"), 3, 0); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Stat(seg)
	if fi2.Size() <= fi.Size() {
		t.Fatal("no append after the torn tail")
	}
	// What was appended after the cut is found by the next reopen (no garbage in front of it).
	s.Close()
	s = openSegmented(t, dir)
	wantContent("a/6", "six", 0)
	wantContent("a/1", "one", 3)
}

func putString(t *testing.T, s *Store, key, data string, fence int64) {
	t.Helper()
	if _, err := s.Put(t.Context(), key, strings.NewReader(data), int64(len(data)), fence); err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
}

func wantBlob(t *testing.T, s *Store, key, want string, fence int64) {
	t.Helper()
	b, err := s.Open(t.Context(), key)
	if err != nil {
		t.Fatalf("Open(%s): %v", key, err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil || string(got) != want || b.Fence != fence || b.Size != int64(len(want)) {
		t.Fatalf("%s = %d bytes (size %d) fence %d (%v), want %d bytes fence %d", key, len(got), b.Size, b.Fence, err, len(want), fence)
	}
}

func wantMissing(t *testing.T, s *Store, key string) {
	t.Helper()
	if b, err := s.Open(t.Context(), key); !errors.Is(err, blobstore.ErrNotFound) {
		if err == nil {
			b.Close()
		}
		t.Fatalf("Open(%s) = %v, want ErrNotFound", key, err)
	}
}

func segmentCount(t *testing.T, dir string) int {
	t.Helper()
	nums, err := segmentFiles(filepath.Join(dir, segmentsDir))
	if err != nil {
		t.Fatal(err)
	}
	return len(nums)
}

// TestSegmentCompaction: compaction removes the oldest segments once they are mostly dead, keeps every
// live blob with its fence (also across a reopen, with the tombstones gone), and a Blob opened before
// keeps reading its segment after the file is removed.
func TestSegmentCompaction(t *testing.T) {
	dir := t.TempDir()
	o := Options{SmallMax: 64 << 10, SegmentSize: 8 << 10}
	s := openWith(t, dir, o)
	data := func(i int) string { return fmt.Sprintf("%04d", i) + strings.Repeat("x", 996) }
	for i := range 200 {
		putString(t, s, fmt.Sprintf("working/%d", i), data(i), int64(i))
	}
	kept := func(i int) bool { return i >= 150 || i%10 == 0 }
	held, err := s.Open(t.Context(), "working/3")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	before := s.SegmentStats()
	files := segmentCount(t, dir)
	var live int64
	for i := range 200 {
		key := fmt.Sprintf("working/%d", i)
		if kept(i) {
			live += recordHeader + int64(len(key)) + 1000
			continue
		}
		if err := s.Delete(t.Context(), key); err != nil {
			t.Fatal(err)
		}
	}
	if err := compactAll(s); err != nil {
		t.Fatal(err)
	}
	after := s.SegmentStats()
	if after.Compactions == 0 || after.Segments >= before.Segments || after.Bytes >= before.Bytes/2 || segmentCount(t, dir) >= files {
		t.Fatalf("compaction: %+v -> %+v (%d files before, %d after)", before, after, files, segmentCount(t, dir))
	}
	if after.LiveBytes != live {
		t.Errorf("live bytes %d, want %d (the kept blobs' records)", after.LiveBytes, live)
	}
	got, err := io.ReadAll(held)
	if err != nil || string(got) != data(3) {
		t.Errorf("a Blob opened before its segment was compacted away reads %d bytes, %v", len(got), err)
	}
	check := func(s *Store) {
		t.Helper()
		for i := range 200 {
			key := fmt.Sprintf("working/%d", i)
			if kept(i) {
				wantBlob(t, s, key, data(i), int64(i))
			} else {
				wantMissing(t, s, key)
			}
		}
		if u := s.Usage("working"); u.Objects != 65 || u.Bytes != 65*1000 {
			t.Errorf("usage %+v, want 65 blobs of 1000 bytes", u)
		}
		if _, err := s.Put(t.Context(), "working/160", strings.NewReader("stale"), 5, 159); !errors.Is(err, blobstore.ErrStaleFence) {
			t.Errorf("a stale Put of a compacted blob: %v, want ErrStaleFence", err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(openWith(t, dir, o))
}

// TestSegmentCompactionWaitsForBackup: while a backup holds the segments' lock, no segment is removed.
func TestSegmentCompactionWaitsForBackup(t *testing.T) {
	dir := t.TempDir()
	s := openWith(t, dir, Options{SmallMax: 64 << 10, SegmentSize: 4 << 10})
	for i := range 20 {
		putString(t, s, fmt.Sprintf("working/%d", i), strings.Repeat("y", 1000), 0)
	}
	lock, err := os.Open(filepath.Join(dir, segmentsDir, lockName))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := lockShared(lock); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := s.Delete(t.Context(), fmt.Sprintf("working/%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	files := segmentCount(t, dir)
	if removed, err := s.seg.compact(); removed || err != nil || segmentCount(t, dir) != files {
		t.Fatalf("compaction during a backup: removed %v, %v, %d -> %d files", removed, err, files, segmentCount(t, dir))
	}
	if err := unlockFile(lock); err != nil {
		t.Fatal(err)
	}
	// The compactor, woken by the Deletes, may get there first.
	if _, err := s.seg.compact(); err != nil || s.SegmentStats().Compactions == 0 || segmentCount(t, dir) >= files {
		t.Fatalf("compaction after the backup: %v, %d -> %d files", err, files, segmentCount(t, dir))
	}
}

// TestSegmentFailedFlush: a Put whose flush fails is not stored, even though its record may be on disk;
// the next Put goes to a new segment, and a reopen cuts the old one at its last good flush.
func TestSegmentFailedFlush(t *testing.T) {
	dir := t.TempDir()
	o := Options{SmallMax: 64 << 10}
	s := openWith(t, dir, o)
	putString(t, s, "a/1", "one", 1)
	s.seg.failSyncs.Store(1)
	if _, err := s.Put(t.Context(), "a/2", strings.NewReader("two"), 3, 2); err == nil {
		t.Fatal("a Put whose flush failed succeeded")
	}
	wantMissing(t, s, "a/2")
	putString(t, s, "a/3", "three", 3)
	if n := segmentCount(t, dir); n != 2 {
		t.Fatalf("%d segments after a failed flush, want 2 (the next Put starts a new one)", n)
	}
	wantBlob(t, s, "a/1", "one", 1)
	wantBlob(t, s, "a/3", "three", 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The failed Put's record is whole in the first segment: only the seal keeps it from coming back.
	s = openWith(t, dir, o)
	wantMissing(t, s, "a/2")
	wantBlob(t, s, "a/1", "one", 1)
	wantBlob(t, s, "a/3", "three", 3)
	if u := s.Usage("a"); u.Objects != 2 {
		t.Errorf("usage %+v after reopen, want 2 blobs", u)
	}
}

// TestSegmentForms: a key switching between a segment record and a file keeps its newest version across
// reopens; a moved key whose file is missing (a backup that copied the files before the switch) comes
// back as its segment blob; a file beside a live record (a crash between the two steps) wins; a Delete of
// a moved key does not let the older version come back.
func TestSegmentForms(t *testing.T) {
	dir := t.TempDir()
	o := Options{SmallMax: 64 << 10}
	big := strings.Repeat("B", 100<<10)
	s := openWith(t, dir, o)
	putString(t, s, "r/1", "small", 1)
	putString(t, s, "r/1", big, 2)
	wantBlob(t, s, "r/1", big, 2)
	if u := s.Usage("r"); u.Objects != 1 || u.Bytes != int64(len(big)) {
		t.Fatalf("usage %+v after a large blob replaced a small one", u)
	}
	if _, err := s.Put(t.Context(), "r/1", strings.NewReader("x"), 1, 1); !errors.Is(err, blobstore.ErrStaleFence) {
		t.Fatalf("a stale small Put over a file: %v", err)
	}
	s.Close()
	s = openWith(t, dir, o)
	wantBlob(t, s, "r/1", big, 2)
	s.Close()
	if err := os.Remove(filepath.Join(dir, "r", "1")); err != nil {
		t.Fatal(err)
	}
	s = openWith(t, dir, o)
	wantBlob(t, s, "r/1", "small", 1)
	putString(t, s, "r/1", big, 3)
	if err := s.Delete(t.Context(), "r/1"); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, "r/1")
	// A crash between a small Put's record and the removal of the file it replaces leaves both.
	putString(t, s, "r/2", "record", 0)
	s.Close()
	writeFile(t, filepath.Join(dir, "r", "2"), "file")
	s = openWith(t, dir, o)
	wantMissing(t, s, "r/1")
	wantBlob(t, s, "r/2", "file", 0)
	s.Close()
	s = openWith(t, dir, o)
	wantBlob(t, s, "r/2", "file", 0)
	if u := s.Usage("r"); u.Objects != 1 || u.Bytes != 4 {
		t.Errorf("usage %+v, want the one file of 4 bytes", u)
	}
}

// TestSegmentKeyConflicts: as with files, a key cannot be stored beside a key it extends or that
// extends it, whichever form each has.
func TestSegmentKeyConflicts(t *testing.T) {
	s := openSegmented(t, t.TempDir())
	big := strings.Repeat("B", 100<<10)
	putString(t, s, "a", "small", 0)
	putString(t, s, "c/d", "small", 0)
	putString(t, s, "e/f", big, 0)
	for _, p := range []struct{ key, data string }{
		{"a/b", "small"}, {"a/b", big}, {"c", "small"}, {"c", big}, {"e", "small"}, {"e/f/g", "small"},
	} {
		if _, err := s.Put(t.Context(), p.key, strings.NewReader(p.data), int64(len(p.data)), 0); err == nil {
			t.Errorf("Put(%s, %d bytes) beside a conflicting key succeeded", p.key, len(p.data))
		}
	}
	wantBlob(t, s, "a", "small", 0)
	wantBlob(t, s, "c/d", "small", 0)
}

// TestSegmentFullDisk: on a full disk a small Put fails as out of space, but Deletes and compaction
// still work (the reserve gives them room), and once there is room the reserve is back.
func TestSegmentFullDisk(t *testing.T) {
	disk := enginetest.SmallDisk(t, smallDiskSize)
	o := Options{SmallMax: 64 << 10, SegmentSize: 1 << 20}
	s := openWith(t, disk.Dir(), o)
	if !s.SegmentStats().Reserve {
		t.Fatal("no reserve on an empty disk")
	}
	data := strings.Repeat("z", 30<<10)
	for i := range 100 {
		putString(t, s, fmt.Sprintf("working/%d", i), data, int64(i))
	}
	disk.Fill(t)
	if _, err := s.Put(t.Context(), "working/x", strings.NewReader(data), int64(len(data)), 0); !fault.IsNoSpace(err) {
		t.Fatalf("a small Put on a full disk: %v, want out of space", err)
	}
	for i := range 90 {
		if err := s.Delete(t.Context(), fmt.Sprintf("working/%d", i)); err != nil {
			t.Fatalf("Delete on a full disk: %v", err)
		}
	}
	if err := compactAll(s); err != nil {
		t.Fatalf("on a full disk: %v", err)
	}
	if st := s.SegmentStats(); st.Bytes > 2<<20 {
		t.Errorf("after compaction on a full disk the segments hold %d bytes", st.Bytes)
	}
	for i := 90; i < 100; i++ {
		wantBlob(t, s, fmt.Sprintf("working/%d", i), data, int64(i))
	}
	disk.Free(t)
	s.seg.ensureReserve()
	if !s.SegmentStats().Reserve {
		t.Error("the reserve is not back once there is room")
	}
	putString(t, s, "working/x", data, 0)
}

// TestSegmentOpenReadOnly: a store opens on a disk it cannot write to (its segments and files are read),
// and the first Put once the disk takes writes again makes the segment files it needs.
func TestSegmentOpenReadOnly(t *testing.T) {
	disk := enginetest.SmallDisk(t, smallDiskSize)
	o := Options{SmallMax: 64 << 10}
	s := openWith(t, disk.Dir(), o)
	putString(t, s, "a/1", "one", 1)
	s.Close()
	// A torn tail that a read-only disk keeps Open from cutting off.
	f, err := os.OpenFile(filepath.Join(disk.Dir(), segmentsDir, segmentName(1)), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("IMSG-torn"))
	f.Close()
	if err := os.RemoveAll(filepath.Join(disk.Dir(), segmentsDir, reserveName)); err != nil {
		t.Fatal(err)
	}
	disk.ReadOnly(t)
	s = openWith(t, disk.Dir(), o)
	wantBlob(t, s, "a/1", "one", 1)
	if _, err := s.Put(t.Context(), "a/2", strings.NewReader("two"), 3, 0); !fault.IsTransient(err) {
		t.Fatalf("Put on a read-only disk: %v, want a transient error", err)
	}
	disk.Writable(t)
	putString(t, s, "a/2", "two", 2)
	s.Close()
	s = openWith(t, disk.Dir(), o)
	wantBlob(t, s, "a/1", "one", 1)
	wantBlob(t, s, "a/2", "two", 2)
}

// TestSegmentCompactionRace: Puts and Deletes from 8 goroutines into segments that roll over every few
// records, while compaction runs without pause: every acknowledged blob reads back at once and after a
// reopen, and deleted ones stay deleted.
func TestSegmentCompactionRace(t *testing.T) {
	dir := t.TempDir()
	o := Options{SmallMax: 64 << 10, SegmentSize: 2 << 10}
	s := openWith(t, dir, o)
	stop := make(chan struct{})
	compacted := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				compacted <- nil
				return
			default:
			}
			if _, err := s.seg.compact(); err != nil {
				compacted <- err
				return
			}
		}
	}()
	data := func(g, i int) string { return fmt.Sprintf("%d-%d.", g, i) + strings.Repeat("d", 400) }
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				key := fmt.Sprintf("k/%d/%d", g, i)
				if _, err := s.Put(t.Context(), key, strings.NewReader(data(g, i)), int64(len(data(g, i))), int64(i+1)); err != nil {
					errs <- err
					return
				}
				b, err := s.Open(t.Context(), key)
				if err != nil {
					errs <- fmt.Errorf("%s right after its Put: %w", key, err)
					return
				}
				got, err := io.ReadAll(b)
				b.Close()
				if err != nil || string(got) != data(g, i) {
					errs <- fmt.Errorf("%s right after its Put: %d bytes, %v", key, len(got), err)
					return
				}
				if i%2 == 1 {
					if err := s.Delete(t.Context(), key); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-compacted; err != nil {
		t.Fatalf("compact: %v", err)
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s.SegmentStats().Compactions == 0 {
		t.Fatal("nothing was compacted")
	}
	check := func(s *Store) {
		t.Helper()
		for g := range 8 {
			for i := range 150 {
				key := fmt.Sprintf("k/%d/%d", g, i)
				if i%2 == 1 {
					wantMissing(t, s, key)
				} else {
					wantBlob(t, s, key, data(g, i), int64(i+1))
				}
			}
		}
	}
	check(s)
	s.Close()
	check(openWith(t, dir, o))
}

// TestSegmentCompactionSparesPutsInFlight: a segment holding the record of a Put that has been flushed
// but is not in the index yet looks dead to the compactor, which leaves it alone until the Put has
// settled (rather than wait for the Put's key), and the blob survives compaction and a reopen.
func TestSegmentCompactionSparesPutsInFlight(t *testing.T) {
	dir := t.TempDir()
	o := Options{SmallMax: 64 << 10, SegmentSize: 2 << 10}
	s := openWith(t, dir, o)
	blob := strings.Repeat("s", 1500)
	// Dead segments before the one that will hold x.
	for i := range 6 {
		putString(t, s, fmt.Sprintf("old/%d", i), blob, 0)
	}
	for i := range 6 {
		if err := s.Delete(t.Context(), fmt.Sprintf("old/%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	putString(t, s, "roll/1", blob, 0) // x's segment starts empty, after this one
	reached, release := make(chan struct{}), make(chan struct{})
	s.seg.beforeIndex = func(key string) {
		if key == "x" {
			close(reached)
			<-release
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(t.Context(), "x", strings.NewReader(blob), int64(len(blob)), 7)
		done <- err
	}()
	<-reached
	// y joins x's segment, z starts the next one; with y deleted, x's segment holds nothing the index
	// knows of.
	putString(t, s, "y", blob, 0)
	putString(t, s, "z", blob, 0)
	if err := s.Delete(t.Context(), "y"); err != nil {
		t.Fatal(err)
	}
	compacted := make(chan error, 1)
	go func() { compacted <- compactAll(s) }()
	select {
	case err := <-compacted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("compaction waits for a Put in flight")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("Put(x): %v", err)
	}
	s.seg.beforeIndex = nil
	wantBlob(t, s, "x", blob, 7)
	if err := compactAll(s); err != nil {
		t.Fatal(err)
	}
	wantBlob(t, s, "x", blob, 7)
	s.Close()
	wantBlob(t, openWith(t, dir, o), "x", blob, 7)
}

// compactAll runs compaction rounds until one removes nothing.
func compactAll(s *Store) error {
	for range 1000 {
		removed, err := s.seg.compact()
		if err != nil {
			return fmt.Errorf("compact: %w", err)
		}
		if !removed {
			return nil
		}
	}
	return errors.New("compaction still removes segments after 1000 rounds")
}

// TestSegmentHints: a sealed segment's hint file gives Open the same index as reading the segment (blobs,
// fences, times, deletes, moved keys), without reading the data; a hint that does not check out, or
// does not cover the segment as sealed, is ignored.
func TestSegmentHints(t *testing.T) {
	dir := t.TempDir()
	o := Options{SmallMax: 64 << 10, SegmentSize: 4 << 10}
	s := openWith(t, dir, o)
	big := strings.Repeat("B", 100<<10)
	for i := range 40 {
		putString(t, s, fmt.Sprintf("h/%d", i), fmt.Sprintf("%d.", i)+strings.Repeat("h", 900), int64(i))
	}
	for i := 0; i < 40; i += 4 {
		if err := s.Delete(t.Context(), fmt.Sprintf("h/%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	putString(t, s, "h/5", big, 50)
	s.Close()
	hints, err := filepath.Glob(filepath.Join(dir, segmentsDir, "seg-*.hint"))
	if err != nil || len(hints) < 5 {
		t.Fatalf("%d hint files (%v), want one per sealed segment", len(hints), err)
	}
	type blob struct {
		data  string
		fence int64
		mod   time.Time
	}
	read := func(s *Store) map[string]blob {
		t.Helper()
		m := map[string]blob{}
		for e, err := range s.List(t.Context(), "", "") {
			if err != nil {
				t.Fatal(err)
			}
			b, err := s.Open(t.Context(), e.Key)
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(b)
			b.Close()
			if err != nil {
				t.Fatal(err)
			}
			m[e.Key] = blob{string(data), b.Fence, b.ModTime}
		}
		return m
	}
	s = openWith(t, dir, o)
	withHints := read(s)
	if len(withHints) != 30 || withHints["h/5"].data != big || withHints["h/7"].fence != 7 {
		t.Fatalf("with hints: %d blobs, h/5 %d bytes, h/7 fence %d", len(withHints), len(withHints["h/5"].data), withHints["h/7"].fence)
	}
	s.Close()
	// A hint is trusted: a flipped data byte in its segment goes unnoticed at Open, where reading the
	// segment would refuse it as corrupt. That is how the test sees the hint was used.
	first := filepath.Join(dir, segmentsDir, segmentName(1))
	flipByte(t, first, recordHeader+10)
	s = openWith(t, dir, o)
	s.Close()
	// Without the hint, the same flip fails Open.
	if err := os.Remove(hintPath(first)); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenWith(dir, o); err == nil {
		s.Close()
		t.Fatal("a corrupt sealed segment opened without its hint")
	}
	flipByte(t, first, recordHeader+10)
	// A hint that does not check out, and one that does not cover its segment, are ignored.
	flipByte(t, hints[1], hintHeader+3)
	wrong, err := os.ReadFile(hints[2])
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(wrong[5:], 7)
	binary.LittleEndian.PutUint32(wrong[len(wrong)-4:], crc32.Checksum(wrong[:len(wrong)-4], castagnoli))
	if err := os.WriteFile(hints[2], wrong, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openWith(t, dir, o)
	if got := read(s); !maps.Equal(got, withHints) {
		t.Errorf("with bad hints, the store differs from what it held:\n%v\nwant\n%v", got, withHints)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
