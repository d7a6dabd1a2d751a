package fileblob

// Small blobs in segment files.
//
// A store opened with Options.SmallMax > 0 keeps every blob of at most that many bytes as a record appended
// to the active segment file dir/.segments/seg-NNNNNNNN, instead of a file of its own. Creating, renaming
// and unlinking a file and flushing its directory cost more CPU than writing and reading a small image;
// an append costs a write, and one fdatasync of the segment is shared by every Put in flight (groupsync).
// An in-memory index (a B-tree: key -> segment, offset, size, fence) is rebuilt at Open by reading the
// segments in order. Records are never rewritten, so reads are preads of a file that does not change
// under them, and an open Blob is a snapshot.
//
// # Records
//
// magic, op, key length, fence, mtime, data length, CRC-32C of all of it, key, data. A Put record stores a
// blob; a delete record (tombstone) ends it; a moved record says the key's newest version is a file (a
// larger blob replaced it); a seal record, the first of every segment, gives the previous segment's valid
// length. Open reads each segment up to the length its successor's seal gives, so whatever a failed
// write or flush left behind the last durable record (which nobody was told was stored) is cut off; the
// tail of the last segment ends at its last whole record (an append a crash interrupted). A record that
// does not check out anywhere else is corruption, and Open fails rather than serve a store that lost
// blobs.
//
// # Durability
//
// A Put returns once an fdatasync of its segment that began after its append has succeeded, and it has
// checked that no failed write or flush sealed the segment before its record's end: after a failed
// fdatasync the page cache cannot be trusted ("fsyncgate"), so the segment is sealed at the end of its
// last successful flush, every record after it fails its Put, and the next append starts a new segment
// whose seal record (made durable before anything is written after it) tells Open where the old one
// ends.
//
// # The two forms of a key
//
// Larger blobs stay files. While the store serves, a key's newest version is either an index entry or a
// file. The switches are ordered so that after a crash "the file exists" means "the file is the newest
// acknowledged version, or the switch was not acknowledged": a small Put over a file appends and flushes
// its record, then removes the file; a large Put over a segment blob renames its file into place, then
// appends a moved record. Open lets a file win over a Put record (and writes the moved record that was
// missing). A moved record whose file is missing brings the Put record before it back: that happens
// only in a backup (Copy), which copies the files first and the segments after, so a file renamed into
// place after the copy passed it is found, older, in the segments. A Delete of a moved key appends a
// tombstone before it removes the file, so the older version cannot come back after a crash. Readers
// look in the index, then the file, then the index again, so a concurrent switch never hides a blob.
//
// # Space
//
// A deleted or replaced blob's bytes stay in its segment until compaction. The compactor takes the
// oldest segments whose dead bytes outweigh their live ones (and are at least a quarter of a segment),
// appends their live records again to the active segment, flushes, switches the index and removes the
// old segments. Because it always takes the oldest segments, no older segment can still hold a Put that
// one of their tombstones ends, and the tombstones can go with them. A tombstone needs room on a full
// disk, and so does compaction: the store keeps a reserve file of one segment's size that it gives up
// when a Delete or the compactor meets a full disk, and takes back when there is room again. Copy holds a
// shared lock on the segments directory and the compactor an exclusive one that it only tries for, so a
// backup never misses a segment compacted away while it copies.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/btree"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/groupsync"
)

// segmentsDir holds the segment files; keys cannot start with '.', so no key maps to it.
const segmentsDir = ".segments"

// reserveName is the file holding space for tombstones and compaction on a full disk.
const reserveName = "reserve"

// lockName is the file Copy locks shared and the compactor exclusively.
const lockName = "lock"

// DefaultSegmentSize is the size past which a new segment file is started.
const DefaultSegmentSize = 16 << 20

const (
	recordMagic = 0x47534d49 // "IMSG"
	opPut       = 1
	opDelete    = 2
	opMoved     = 3
	opSeal      = 4
	// recordHeader: magic, op, key length, fence, mtime, data length, CRC-32C.
	recordHeader = 4 + 1 + 2 + 8 + 8 + 4 + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// segFile is one segment file.
type segFile struct {
	num  int
	path string
	f    *os.File
	// refs counts the store (while the segment is in its list) and every open Blob reading it; the last
	// to let go closes the file.
	refs atomic.Int64
	// Guarded by segments.appendMu:
	size    int64 // end of the last record written
	durable int64 // end of the last record a successful flush covered
	sealed  int64 // -1, or where the valid records end after a failed write or flush
	// pending counts records appended whose writer has not yet updated the index (or given up): the
	// compactor leaves the segment alone until they are settled, or it would miss them.
	pending int
	// heads lists the records of the active segment, for its hint file (hint.go); guarded by
	// segments.appendMu.
	heads []recordHead
	// live is the bytes of the records the index points to; guarded by segments.mu.
	live int64
}

func (f *segFile) release() {
	if f.refs.Add(-1) == 0 {
		f.f.Close()
	}
}

// segEntry is the newest segment record of a key.
type segEntry struct {
	key   string
	file  *segFile // nil for a moved key whose Put record was compacted away
	off   int64    // of the record
	size  int64    // of the data
	fence int64
	mod   time.Time
	// moved: the key's newest version is a file; the record stays only for a backup's sake (see above).
	moved bool
}

func (e *segEntry) recordLen() int64 { return recordHeader + int64(len(e.key)) + e.size }
func (e *segEntry) dataOff() int64   { return e.off + recordHeader + int64(len(e.key)) }

// RecordSize is the bytes a blob of size bytes under key takes in a segment file.
func RecordSize(key string, size int) int64 { return recordHeader + int64(len(key)+size) }

func lessEntry(a, b *segEntry) bool { return a.key < b.key }

type segments struct {
	s    *Store
	dir  string
	max  int64 // the largest blob kept in a segment
	roll int64 // the segment size past which a new one is started
	log  *slog.Logger

	// appendMu serialises appends and rolls; taken before mu when both are needed.
	appendMu sync.Mutex
	active   *segFile
	rollNext bool // the active segment was sealed: the next append starts a new one

	mu    sync.RWMutex
	index *btree.BTreeG[*segEntry]
	files []*segFile // by number, the active one last

	flush *groupsync.Syncer
	// failSyncs makes that many of the next flushes fail (tests of a failing disk).
	failSyncs atomic.Int32
	// beforeIndex, when set (by tests), runs in a small Put between its flush and its index update.
	beforeIndex func(key string)

	lockFile  atomic.Pointer[os.File] // held open for flock
	compactMu sync.Mutex              // one compaction at a time (flock does not exclude within a process)
	closeOnce sync.Once
	kick      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	// compactions and compactErr are for Stats and tests.
	compactions atomic.Int64
	compactErr  atomic.Pointer[error]
}

// SegmentStats is what the segment files hold.
type SegmentStats struct {
	Segments    int   // files
	Bytes       int64 // their size
	LiveBytes   int64 // of records the index points to (the rest is dead until compaction)
	Compactions int64 // rounds that removed segments since Open
	// Reserve reports whether the reserve file is in place.
	Reserve bool
	// LastCompactError is the error of the last compaction round that failed since one succeeded, or nil.
	LastCompactError error
}

// SegmentStats returns what the store's segment files hold; zero when it keeps no blobs in segments.
func (s *Store) SegmentStats() SegmentStats {
	g := s.seg
	if g == nil {
		return SegmentStats{}
	}
	var st SegmentStats
	g.appendMu.Lock()
	g.mu.RLock()
	for _, f := range g.files {
		st.Segments++
		st.Bytes += f.size
		st.LiveBytes += f.live
	}
	g.mu.RUnlock()
	g.appendMu.Unlock()
	st.Compactions = g.compactions.Load()
	if p := g.compactErr.Load(); p != nil {
		st.LastCompactError = *p
	}
	_, err := os.Stat(filepath.Join(g.dir, reserveName))
	st.Reserve = err == nil
	return st
}

// Compaction implements blobstore.Compacting.
func (s *Store) Compaction() blobstore.Compaction {
	st := s.SegmentStats()
	return blobstore.Compaction{Bytes: st.Bytes, LiveBytes: st.LiveBytes, Rounds: st.Compactions}
}

func segmentName(n int) string { return fmt.Sprintf("seg-%08d", n) }

// record is one decoded record; data is valid until the next one is read.
type record struct {
	op    byte
	key   string
	fence int64
	mod   time.Time
	data  []byte
}

func (r *record) len() int64 { return recordHeader + int64(len(r.key)) + int64(len(r.data)) }

// encodeRecord returns the bytes of one record.
func encodeRecord(op byte, key string, fence int64, mod time.Time, data []byte) []byte {
	buf := make([]byte, recordHeader, recordHeader+len(key)+len(data))
	binary.LittleEndian.PutUint32(buf, recordMagic)
	buf[4] = op
	binary.LittleEndian.PutUint16(buf[5:], uint16(len(key)))
	binary.LittleEndian.PutUint64(buf[7:], uint64(fence))
	var nanos int64
	if !mod.IsZero() {
		nanos = mod.UnixNano()
	}
	binary.LittleEndian.PutUint64(buf[15:], uint64(nanos))
	binary.LittleEndian.PutUint32(buf[23:], uint32(len(data)))
	buf = append(buf, key...)
	buf = append(buf, data...)
	binary.LittleEndian.PutUint32(buf[27:], crc32.Update(crc32.Checksum(buf[4:27], castagnoli), castagnoli, buf[recordHeader:]))
	return buf
}

// sealData is a seal record's data: the number of the segment it seals and its valid length.
func sealData(num int, end int64) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, uint64(num))
	binary.LittleEndian.PutUint64(b[8:], uint64(end))
	return b
}

// scanRecords reads the records of r from offset 0 up to limit (or its end) and calls fn with each and
// its offset. It returns the offset after the last whole, valid record: less than the data's length when
// a torn or corrupt record follows. fn's error stops it.
func scanRecords(r io.ReaderAt, limit int64, fn func(rec *record, off int64) error) (int64, error) {
	br := bufio.NewReaderSize(io.NewSectionReader(r, 0, limit), 1<<20)
	var off int64
	hdr := make([]byte, recordHeader)
	var body []byte
	for {
		if _, err := io.ReadFull(br, hdr); err != nil {
			return off, nil
		}
		if binary.LittleEndian.Uint32(hdr) != recordMagic {
			return off, nil
		}
		op := hdr[4]
		keyLen := int(binary.LittleEndian.Uint16(hdr[5:]))
		dataLen := int64(binary.LittleEndian.Uint32(hdr[23:]))
		if op < opPut || op > opSeal || off+recordHeader+int64(keyLen)+dataLen > limit {
			return off, nil
		}
		if n := keyLen + int(dataLen); cap(body) < n {
			body = make([]byte, n)
		}
		body = body[:keyLen+int(dataLen)]
		if _, err := io.ReadFull(br, body); err != nil {
			return off, nil
		}
		if crc32.Update(crc32.Checksum(hdr[4:27], castagnoli), castagnoli, body) != binary.LittleEndian.Uint32(hdr[27:]) {
			return off, nil
		}
		rec := record{op: op, key: string(body[:keyLen]), fence: int64(binary.LittleEndian.Uint64(hdr[7:])), data: body[keyLen:]}
		if nanos := int64(binary.LittleEndian.Uint64(hdr[15:])); nanos != 0 {
			rec.mod = time.Unix(0, nanos)
		}
		if err := fn(&rec, off); err != nil {
			return off, err
		}
		off += rec.len()
	}
}

// segmentFiles returns the numbers of the segment files in dir, in order.
func segmentFiles(dir string) ([]int, error) {
	names, err := filepath.Glob(filepath.Join(dir, "seg-*"))
	if err != nil {
		return nil, err
	}
	var nums []int
	for _, name := range names {
		n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(name), "seg-"))
		if err != nil || n <= 0 {
			continue
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	return nums, nil
}

// firstSeal returns the segment and length a segment file's first record seals, if it is a seal record.
func firstSeal(f io.ReaderAt) (num int, end int64, ok bool) {
	var found bool
	scanRecords(f, recordHeader+16, func(rec *record, _ int64) error {
		if rec.op == opSeal && len(rec.data) == 16 {
			num = int(binary.LittleEndian.Uint64(rec.data))
			end = int64(binary.LittleEndian.Uint64(rec.data[8:]))
			found = true
		}
		return errStopped
	})
	return num, end, found
}

// openSegments reads the segments of s's directory (nums: their numbers, from segmentFiles) into the
// index, opens the last for appends, settles what a crash left between a key's two forms (files: the
// keys that have a blob file), and starts the compactor.
func openSegments(s *Store, o Options, nums []int, files map[string]bool) (*segments, error) {
	g := &segments{
		s: s, dir: filepath.Join(s.dir, segmentsDir), max: o.SmallMax, roll: o.SegmentSize, log: o.Logger,
		index: btree.NewG(32, lessEntry),
		kick:  make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if g.roll <= 0 {
		g.roll = DefaultSegmentSize
	}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	// A disk that is full or read-only now does not keep the store from opening to serve reads; the
	// first append makes what is missing (rollLocked).
	if err := s.mkdirAll(g.dir); err != nil && !fault.IsTransient(fault.Disk(what, err)) {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			g.closeFiles()
		}
	}()
	if err := g.openLock(); err != nil && !fault.IsTransient(fault.Disk(what, err)) {
		return nil, err
	}
	for i, n := range nums {
		// Only the last segment is ever written again. On a disk refusing writes it is opened read-only,
		// and the first append starts a new one.
		mode := os.O_RDONLY
		if i == len(nums)-1 {
			mode = os.O_RDWR
		}
		f, err := os.OpenFile(filepath.Join(g.dir, segmentName(n)), mode, 0)
		if err != nil && mode == os.O_RDWR && fault.IsTransient(fault.Disk(what, err)) {
			f, err = os.OpenFile(filepath.Join(g.dir, segmentName(n)), os.O_RDONLY, 0)
			g.rollNext = true
		}
		if err != nil {
			return nil, err
		}
		sf := &segFile{num: n, path: f.Name(), f: f, sealed: -1}
		sf.refs.Store(1)
		g.files = append(g.files, sf)
	}
	// Each segment's valid length, from its successor's seal record.
	limits := make(map[int]int64)
	for _, sf := range g.files {
		if num, end, ok := firstSeal(sf.f); ok {
			limits[num] = end
		}
	}
	for i, sf := range g.files {
		fi, err := sf.f.Stat()
		if err != nil {
			return nil, err
		}
		limit, sealed := limits[sf.num]
		if !sealed {
			limit = fi.Size()
		}
		last := i == len(g.files)-1
		var end int64
		if heads, err := readHint(sf.path, limit); sealed && err == nil {
			// A sealed segment with its hint: its headers, without reading its data.
			for _, h := range heads {
				g.apply(sf, h)
			}
			end = limit
		} else {
			end, err = scanRecords(sf.f, limit, func(rec *record, off int64) error {
				h := recordHead{op: rec.op, key: rec.key, fence: rec.fence, mod: rec.mod, off: off, size: int64(len(rec.data))}
				g.apply(sf, h)
				if last {
					sf.heads = append(sf.heads, h)
				}
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
		if end < limit && !last {
			return nil, fmt.Errorf("segment %s: corrupt record at offset %d of %d", sf.path, end, limit)
		}
		if end < fi.Size() {
			// An append a crash interrupted, or what a failed write or flush left after the seal: no Put
			// of it was acknowledged. Cutting it off is tidy but not needed (appends overwrite it, and a
			// roll seals the segment before it), so a disk that refuses writes now does not stop Open.
			if err := sf.f.Truncate(end); err == nil {
				sf.f.Sync()
			}
		}
		sf.size, sf.durable = end, end
	}
	if len(g.files) > 0 {
		g.active = g.files[len(g.files)-1]
	}
	g.flush = groupsync.New(g.flushActive)
	if err := g.settleForms(files); err != nil {
		return nil, err
	}
	g.index.Ascend(func(e *segEntry) bool {
		if !e.moved {
			s.usage.add(e.key, 1, e.size)
		}
		return true
	})
	g.ensureReserve()
	ok = true
	go g.compactLoop()
	return g, nil
}

// openLock opens (creating) the file that Copy and the compactor lock.
func (g *segments) openLock() error {
	f, err := os.OpenFile(filepath.Join(g.dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	g.lockFile.Store(f)
	return nil
}

// apply updates the index with one record read at open.
func (g *segments) apply(sf *segFile, rec recordHead) {
	old, had := g.index.Get(&segEntry{key: rec.key})
	if had && !old.moved && old.file != nil {
		old.file.live -= old.recordLen()
	}
	switch rec.op {
	case opPut:
		e := &segEntry{key: rec.key, file: sf, off: rec.off, size: rec.size, fence: rec.fence, mod: rec.mod}
		sf.live += e.recordLen()
		g.index.ReplaceOrInsert(e)
	case opDelete:
		g.index.Delete(&segEntry{key: rec.key})
	case opMoved:
		e := &segEntry{key: rec.key, moved: true}
		if had && old.file != nil {
			*e = *old
			e.moved = true
		}
		g.index.ReplaceOrInsert(e)
	}
}

// settleForms resolves, at open, keys that are both a file and a segment entry (a crash between the
// two steps of a switch: the file is the newer) and moved keys without a file (a backup copied before
// the file was in place: the segment record is the blob).
func (g *segments) settleForms(files map[string]bool) error {
	var toMove, toRestore, toDrop []*segEntry
	g.index.Ascend(func(e *segEntry) bool {
		isFile := files[e.key]
		switch {
		case isFile && !e.moved:
			toMove = append(toMove, e)
		case !isFile && e.moved && e.file != nil:
			toRestore = append(toRestore, e)
		case !isFile && e.moved:
			toDrop = append(toDrop, e)
		}
		return true
	})
	for _, e := range toMove {
		// Without the record (a disk refusing writes now) the next Open decides the same way.
		if err := g.appendDurable(opMoved, e.key, 0, time.Time{}, nil, false); err != nil && !fault.IsTransient(fault.Disk(what, err)) {
			return err
		}
		e.file.live -= e.recordLen()
		e.moved = true
	}
	for _, e := range toRestore {
		e.moved = false
		e.file.live += e.recordLen()
	}
	for _, e := range toDrop {
		g.index.Delete(e)
	}
	return nil
}

// flushActive is the shared flush: an fdatasync of the active segment, which also covers every earlier
// segment (a roll makes the old one durable first).
func (g *segments) flushActive() error {
	g.appendMu.Lock()
	sf := g.active
	if sf == nil {
		g.appendMu.Unlock()
		return nil
	}
	end := sf.size
	sf.refs.Add(1)
	g.appendMu.Unlock()
	defer sf.release()
	err := g.datasync(sf.f)
	g.appendMu.Lock()
	defer g.appendMu.Unlock()
	if err != nil {
		g.sealLocked(sf)
		return fmt.Errorf("flush segment: %w", err)
	}
	if sf.durable < end && sf.sealed < 0 {
		sf.durable = end
	}
	return nil
}

// datasync is datasync(f), unless a test asked for failures.
func (g *segments) datasync(f *os.File) error {
	for n := g.failSyncs.Load(); n > 0; n = g.failSyncs.Load() {
		if g.failSyncs.CompareAndSwap(n, n-1) {
			return errors.New("flush failure injected by a test")
		}
	}
	return datasync(f)
}

// sealLocked marks sf unreliable past its last successful flush; appendMu held.
func (g *segments) sealLocked(sf *segFile) {
	if sf.sealed < 0 {
		sf.sealed = sf.durable
		g.log.Warn("image storage: a segment write or flush failed; starting a new segment", "segment", sf.path, "valid", sf.durable)
	}
	if sf == g.active {
		g.rollNext = true
	}
}

// rollLocked starts a new segment, first making the active one durable (or sealing it), and makes the
// new file and its seal record durable; appendMu held (or at open).
func (g *segments) rollLocked() error {
	num := 1
	var seal []byte
	if old := g.active; old != nil {
		num = old.num + 1
		if old.sealed < 0 {
			if err := g.datasync(old.f); err != nil {
				g.sealLocked(old)
			} else {
				old.durable = old.size
			}
		}
		end := old.size
		if old.sealed >= 0 {
			end = old.sealed
		}
		seal = encodeRecord(opSeal, "", 0, time.Time{}, sealData(old.num, end))
		defer func() {
			// Once the seal is durable, the old segment's records are final: list them for the next
			// Open. Without the hint (a write that failed), Open reads the segment instead.
			if g.active != old {
				if err := writeHint(old.path, end, old.heads); err != nil {
					g.log.Warn("image storage: cannot write a segment's hint file; it is read whole at the next start", "segment", old.path, "err", err)
				}
				old.heads = nil
			}
		}()
	}
	if err := g.s.mkdirAll(g.dir); err != nil {
		return err
	}
	if g.lockFile.Load() == nil {
		if err := g.openLock(); err != nil {
			return err
		}
	}
	path := filepath.Join(g.dir, segmentName(num))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	sf := &segFile{num: num, path: path, f: f, sealed: -1}
	sf.refs.Store(1)
	fail := func(err error) error {
		f.Close()
		os.Remove(path)
		return err
	}
	if seal != nil {
		if _, err := f.WriteAt(seal, 0); err != nil {
			return fail(err)
		}
		sf.size = int64(len(seal))
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := atomicfile.SyncDir(g.dir); err != nil {
		return fail(err)
	}
	sf.durable = sf.size
	g.mu.Lock()
	g.files = append(g.files, sf)
	g.mu.Unlock()
	g.active = sf
	g.rollNext = false
	return nil
}

// appendRecord writes one record at the end of the active segment and returns the segment and the
// record's offset. It is not durable yet: see confirm. Once the index says what the record means (or
// the write is given up), the caller calls settle.
func (g *segments) appendRecord(rec []byte) (*segFile, int64, error) {
	g.appendMu.Lock()
	defer g.appendMu.Unlock()
	if g.active == nil || g.rollNext || g.active.size >= g.roll {
		if err := g.rollLocked(); err != nil {
			return nil, 0, err
		}
	}
	sf := g.active
	off := sf.size
	if _, err := sf.f.WriteAt(rec, off); err != nil {
		// A short write leaves garbage past size, which the next append overwrites (or Open cuts off).
		// Only a full disk is expected to go away; anything else may have hurt what the page cache holds.
		if !isNoSpace(err) {
			g.sealLocked(sf)
		}
		return nil, 0, err
	}
	sf.size += int64(len(rec))
	sf.pending++
	sf.heads = append(sf.heads, headOf(rec, off))
	return sf, off, nil
}

// settle tells the compactor that a record appended to sf is reflected in the index, or abandoned.
func (g *segments) settle(sf *segFile) {
	g.appendMu.Lock()
	sf.pending--
	g.appendMu.Unlock()
}

// appendSpending is appendRecord for the writes that free space (tombstones, moved records,
// compaction's copies): one that meets a full disk gives up the reserve and tries once more.
func (g *segments) appendSpending(rec []byte) (*segFile, int64, error) {
	sf, off, err := g.appendRecord(rec)
	if err != nil && isNoSpace(err) && g.releaseReserve() {
		sf, off, err = g.appendRecord(rec)
	}
	return sf, off, err
}

// isNoSpace reports whether err is a full disk or quota, which goes away by itself.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// confirm waits for a shared flush covering a record appended at off..end of sf, and reports whether it
// made it durable.
func (g *segments) confirm(sf *segFile, end int64) error {
	if err := g.flush.Sync(); err != nil {
		return err
	}
	return g.flushed(sf, end)
}

// flushed reports whether a flush that succeeded after a record ending at end of sf was appended made
// the record durable: not when a failed write or flush sealed sf before end.
func (g *segments) flushed(sf *segFile, end int64) error {
	g.appendMu.Lock()
	defer g.appendMu.Unlock()
	if sf.sealed >= 0 && end > sf.sealed {
		return errors.New("flush segment: the segment was sealed after a failed write or flush")
	}
	return nil
}

// appendDurable appends a record and waits until it is durable. A tombstone or moved record (spend true)
// that meets a full disk gives up the reserve and tries once more.
func (g *segments) appendDurable(op byte, key string, fence int64, mod time.Time, data []byte, spend bool) error {
	rec := encodeRecord(op, key, fence, mod, data)
	appendRec := g.appendRecord
	if spend {
		appendRec = g.appendSpending
	}
	sf, off, err := appendRec(rec)
	if err != nil {
		return err
	}
	// Settled by the caller's index update, which follows at once; a tombstone or moved record that the
	// compactor dropped with its segment would change nothing: the Puts it ends were older.
	defer g.settle(sf)
	return g.confirm(sf, off+int64(len(rec)))
}

// lookup returns key's live segment entry.
func (g *segments) lookup(key string) (*segEntry, bool) {
	e, ok := g.entry(key)
	if !ok || e.moved {
		return nil, false
	}
	return e, true
}

// entry returns key's index entry, live or moved.
func (g *segments) entry(key string) (*segEntry, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.index.Get(&segEntry{key: key})
}

// put records e (just made durable) as key's newest version; key's lock held.
func (g *segments) put(e *segEntry) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if old, ok := g.index.ReplaceOrInsert(e); ok && !old.moved && old.file != nil {
		old.file.live -= old.recordLen()
		g.kickCompactor()
	}
	e.file.live += e.recordLen()
}

// forget drops key's entry after a durable tombstone (moved false) or marks it moved after a durable
// moved record; key's lock held.
func (g *segments) forget(key string, moved bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e, ok := g.index.Get(&segEntry{key: key})
	if !ok {
		return
	}
	if !e.moved && e.file != nil {
		e.file.live -= e.recordLen()
	}
	if moved {
		m := *e
		m.moved = true
		g.index.ReplaceOrInsert(&m)
	} else {
		g.index.Delete(e)
	}
	g.kickCompactor()
}

// conflict reports whether key cannot be stored because it extends a blob's key or other keys extend
// it, looking at the segment entries (files: the directory tree says so itself).
func (g *segments) conflict(key string) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	for i := strings.IndexByte(key, '/'); i >= 0; i = next(key, i) {
		if e, ok := g.index.Get(&segEntry{key: key[:i]}); ok && !e.moved {
			return true
		}
	}
	found := false
	g.index.AscendGreaterOrEqual(&segEntry{key: key + "/"}, func(e *segEntry) bool {
		found = strings.HasPrefix(e.key, key+"/") && !e.moved
		return !found && strings.HasPrefix(e.key, key+"/")
	})
	return found
}

func next(s string, i int) int {
	j := strings.IndexByte(s[i+1:], '/')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

// open returns a Blob reading e's data; the segment stays open until the Blob is closed.
func (g *segments) open(key string) (*blobstore.Blob, bool) {
	g.mu.RLock()
	e, ok := g.index.Get(&segEntry{key: key})
	if !ok || e.moved {
		g.mu.RUnlock()
		return nil, false
	}
	// Under mu, so a compaction cannot drop the segment between the lookup and this reference.
	e.file.refs.Add(1)
	g.mu.RUnlock()
	r := &segReader{SectionReader: io.NewSectionReader(e.file.f, e.dataOff(), e.size), file: e.file}
	return &blobstore.Blob{ReadSeekCloser: r, Size: e.size, ModTime: e.mod, Fence: e.fence}, true
}

type segReader struct {
	*io.SectionReader
	file   *segFile
	closed atomic.Bool
}

func (r *segReader) Close() error {
	if r.closed.CompareAndSwap(false, true) {
		r.file.release()
	}
	return nil
}

// ascend calls fn with up to n live entries whose keys start with prefix and sort after after, in order.
func (g *segments) ascend(prefix, after string, n int) []blobstore.Entry {
	g.mu.RLock()
	defer g.mu.RUnlock()
	var out []blobstore.Entry
	from := max(prefix, after)
	g.index.AscendGreaterOrEqual(&segEntry{key: from}, func(e *segEntry) bool {
		if !strings.HasPrefix(e.key, prefix) {
			return false
		}
		if e.key > after && !e.moved {
			out = append(out, blobstore.Entry{Key: e.key, Size: e.size, ModTime: e.mod})
		}
		return len(out) < n
	})
	return out
}

// closeFiles stops the compactor and lets go of the segments; open Blobs keep theirs.
func (g *segments) close() error {
	g.closeOnce.Do(func() {
		close(g.stop)
		<-g.done
		g.closeFiles()
	})
	return nil
}

func (g *segments) closeFiles() {
	g.mu.Lock()
	files := g.files
	g.files = nil
	g.mu.Unlock()
	for _, sf := range files {
		sf.release()
	}
	if f := g.lockFile.Load(); f != nil {
		f.Close()
	}
}

// readSmall reads r whole when it holds at most max bytes: (data, nil, true). Otherwise it returns a reader
// of the whole stream (what it read, then the rest) and false.
func readSmall(r io.Reader, size, max int64) ([]byte, io.Reader, bool, error) {
	if size > max {
		return nil, r, false, nil
	}
	var data []byte
	if size >= 0 {
		// One byte past size tells a longer stream (ExactSize reports one when probed past size); read
		// into a slice of that length, since a bytes.Buffer with one byte to spare doubles to look for EOF.
		buf := make([]byte, size+1)
		n, err := io.ReadFull(r, buf)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			return nil, nil, false, err
		}
		data = buf[:n]
	} else {
		b := bytes.NewBuffer(make([]byte, 0, 64<<10))
		if _, err := b.ReadFrom(io.LimitReader(r, max+1)); err != nil {
			return nil, nil, false, err
		}
		data = b.Bytes()
	}
	if int64(len(data)) > max {
		return nil, io.MultiReader(bytes.NewReader(data), r), false, nil
	}
	if size >= 0 && int64(len(data)) != size {
		return nil, nil, false, fmt.Errorf("%w: %d bytes, %d announced", blobstore.ErrSizeMismatch, len(data), size)
	}
	return data, nil, true, nil
}

// putSmall stores data under key in the active segment: fence check, append, shared flush, index, and
// the removal of a file the key had, all under the key's lock.
func (s *Store) putSmall(ctx context.Context, key, path string, data []byte, fence int64) error {
	g := s.seg
	unlock := s.keys.lock(key)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	old, inSeg := g.lookup(key)
	fi, ferr := os.Lstat(path)
	isFile := ferr == nil && fi.Mode().IsRegular()
	if ferr == nil && fi.IsDir() || g.conflict(key) {
		return fmt.Errorf("the key is a prefix of other keys, or extends a blob's key: %w", fs.ErrExist)
	}
	if ferr != nil && errors.Is(ferr, syscall.ENOTDIR) {
		return fmt.Errorf("the key extends a blob's key: %w", ferr)
	}
	if fence != 0 {
		stored := int64(0)
		switch {
		case inSeg:
			stored = old.fence
		case isFile:
			var err error
			if stored, err = pathFence(path); err != nil {
				return err
			}
		}
		if stored > fence {
			return fmt.Errorf("%w (stored blob has fence %d, this write %d)", blobstore.ErrStaleFence, stored, fence)
		}
	}
	mod := time.Now()
	rec := encodeRecord(opPut, key, fence, mod, data)
	sf, off, err := g.appendRecord(rec)
	if err != nil {
		return err
	}
	defer g.settle(sf)
	if err := g.confirm(sf, off+int64(len(rec))); err != nil {
		return err
	}
	if g.beforeIndex != nil {
		g.beforeIndex(key)
	}
	g.put(&segEntry{key: key, file: sf, off: off, size: int64(len(data)), fence: fence, mod: mod})
	switch {
	case inSeg:
		s.usage.add(key, 0, int64(len(data))-old.size)
	case isFile:
		s.usage.add(key, 0, int64(len(data))-fi.Size())
		if err := os.Remove(path); err != nil && !isMissing(err) {
			return err
		}
		if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
			return err
		}
	default:
		s.usage.add(key, 1, int64(len(data)))
	}
	return nil
}

// openSegment opens key's segment blob, if it has one.
func (s *Store) openSegment(key string) (*blobstore.Blob, bool) {
	if s.seg == nil {
		return nil, false
	}
	return s.seg.open(key)
}
