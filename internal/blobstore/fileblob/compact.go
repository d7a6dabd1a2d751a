package fileblob

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/imgmill/imgmill/internal/atomicfile"
	"github.com/imgmill/imgmill/internal/fault"
)

// compactEvery is how often the compactor looks at the segments without being woken.
const compactEvery = time.Minute

// compactPause is how long the compactor rests after each MiB it copies, so that it takes a small share
// of the disk and the CPUs from the Puts it runs beside.
const compactPause = 5 * time.Millisecond

// kickCompactor wakes the compactor when the dead bytes may be worth a round; it never blocks.
func (g *segments) kickCompactor() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

func (g *segments) compactLoop() {
	defer close(g.done)
	t := time.NewTicker(compactEvery)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-g.kick:
		case <-t.C:
		}
		if _, err := g.compact(); err != nil {
			g.compactErr.Store(&err)
			g.log.Warn("image storage: segment compaction failed; it is tried again later", "err", err)
		}
		g.ensureReserve()
	}
}

// pickPrefix returns how many of the oldest segments (never the active one) to compact: the fewest whose
// dead bytes are at least their live bytes and a quarter of a segment; 0 for none.
func (g *segments) pickPrefix() (files []*segFile) {
	g.appendMu.Lock()
	defer g.appendMu.Unlock()
	g.mu.RLock()
	defer g.mu.RUnlock()
	var live, dead int64
	for _, sf := range g.files {
		if sf == g.active || sf.pending > 0 {
			break
		}
		live += sf.live
		dead += sf.size - sf.live
		files = append(files, sf)
		if dead >= live && dead >= g.roll/4 {
			return files
		}
	}
	return nil
}

// compact runs one round: it copies the live records of the oldest segments worth it to the active one,
// and removes them. It reports whether it removed any.
func (g *segments) compact() (bool, error) {
	g.compactMu.Lock()
	defer g.compactMu.Unlock()
	// A backup copying the segments holds the lock shared: wait for the next round rather than remove a
	// segment it has still to copy.
	lock := g.lockFile.Load()
	if lock == nil {
		return false, nil // no segment was ever written
	}
	locked, err := tryLockExclusive(lock)
	if err != nil {
		return false, fmt.Errorf("lock segments: %w", err)
	}
	if !locked {
		return false, nil
	}
	defer unlockFile(lock)
	prefix := g.pickPrefix()
	if len(prefix) == 0 {
		return false, nil
	}
	for _, sf := range prefix {
		if err := g.copyLive(sf); err != nil {
			return false, err
		}
	}
	// Every live record of the prefix now has a durable copy the index points to; what the prefix still
	// holds is dead, and its tombstones end Puts that are all in the prefix too.
	g.mu.Lock()
	for _, sf := range prefix {
		if sf.live != 0 {
			g.mu.Unlock()
			return false, fmt.Errorf("segment %s still has %d live bytes after its copy", sf.path, sf.live)
		}
	}
	var moved []*segEntry
	g.index.Ascend(func(e *segEntry) bool {
		if e.moved && e.file != nil && isIn(e.file, prefix) {
			moved = append(moved, e)
		}
		return true
	})
	for _, e := range moved {
		m := *e
		m.file = nil
		g.index.ReplaceOrInsert(&m)
	}
	g.files = g.files[len(prefix):]
	g.mu.Unlock()
	var errs []error
	for _, sf := range prefix {
		if err := os.Remove(sf.path); err != nil {
			errs = append(errs, err)
		}
		if err := os.Remove(hintPath(sf.path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		sf.release()
	}
	if err := atomicfile.SyncDir(g.dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return true, fmt.Errorf("remove compacted segments: %w", err)
	}
	g.compactions.Add(1)
	g.compactErr.Store(nil)
	return true, nil
}

func isIn(sf *segFile, files []*segFile) bool {
	for _, f := range files {
		if f == sf {
			return true
		}
	}
	return false
}

// copyLive appends a copy of every record of sf the index points to, with its fence and mtime, makes the
// copies durable and points the index at them.
func (g *segments) copyLive(sf *segFile) error {
	type copied struct {
		key      string
		from, to int64
		file     *segFile
		end      int64
	}
	var done []copied
	// The copies are settled once the index points at them (or they are given up).
	defer func() {
		for _, c := range done {
			g.settle(c.file)
		}
	}()
	var sinceRest int64
	g.appendMu.Lock()
	limit := sf.size
	g.appendMu.Unlock()
	_, err := scanRecords(sf.f, limit, func(rec *record, off int64) error {
		if rec.op != opPut {
			return nil
		}
		select {
		case <-g.stop:
			return errStopped
		default:
		}
		// Under the key's lock, so that no Put of the key comes between the check and the copy: a copy
		// appended after a newer Put's record would win over it at the next Open.
		unlock := g.s.keys.lock(rec.key)
		defer unlock()
		e, ok := g.lookup(rec.key)
		if !ok || e.file != sf || e.off != off {
			return nil
		}
		b := encodeRecord(opPut, rec.key, rec.fence, rec.mod, rec.data)
		to, at, err := g.appendSpending(b)
		if err != nil {
			return err
		}
		done = append(done, copied{key: rec.key, from: off, to: at, file: to, end: at + int64(len(b))})
		if sinceRest += int64(len(b)); sinceRest >= 1<<20 {
			sinceRest = 0
			time.Sleep(compactPause)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("copy the live records of %s: %w", sf.path, fault.Disk(what, err))
	}
	if len(done) == 0 {
		return nil
	}
	// One flush covers every copy.
	if err := g.flush.Sync(); err != nil {
		return fmt.Errorf("copy the live records of %s: %w", sf.path, fault.Disk(what, err))
	}
	for _, c := range done {
		if err := g.flushed(c.file, c.end); err != nil {
			return fmt.Errorf("copy the live records of %s: %w", sf.path, err)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range done {
		e, ok := g.index.Get(&segEntry{key: c.key})
		// A Put or Delete since the copy made it dead: it stays as dead bytes in the active segment.
		if !ok || e.moved || e.file != sf || e.off != c.from {
			continue
		}
		m := *e
		m.file, m.off = c.file, c.to
		g.index.ReplaceOrInsert(&m)
		sf.live -= m.recordLen()
		c.file.live += m.recordLen()
	}
	return nil
}

// ensureReserve creates the reserve file, a segment's size of allocated space, when it is missing and
// the disk has room for it and more.
func (g *segments) ensureReserve() {
	path := filepath.Join(g.dir, reserveName)
	if _, err := os.Stat(path); err == nil {
		return
	}
	free, _, err := fault.Space(g.dir)
	if err != nil || free < uint64(4*g.roll) {
		return
	}
	f, err := os.OpenFile(path+".tmp", os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return
	}
	err = allocate(f, g.roll)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(path+".tmp", path)
	}
	if err != nil {
		os.Remove(path + ".tmp")
		g.log.Warn("image storage: cannot create the segment reserve", "err", err)
		return
	}
	atomicfile.SyncDir(g.dir)
}

// releaseReserve removes the reserve file, freeing its space for tombstones and compaction, and wakes
// the compactor; it reports whether there was one.
func (g *segments) releaseReserve() bool {
	if err := os.Remove(filepath.Join(g.dir, reserveName)); err != nil {
		return false
	}
	g.log.Warn("image storage: the disk is full; the segment reserve was released to delete and compact")
	g.kickCompactor()
	return true
}
