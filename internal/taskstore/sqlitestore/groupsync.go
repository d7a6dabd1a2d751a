package sqlitestore

import (
	"fmt"
	"os"
	"sync"
)

// groupSync makes commits durable with as few fsyncs as possible: the writer commits with
// synchronous=NORMAL (the WAL is written but not fsynced, which survives a crash of the process but not
// of the machine), and a commit that must survive power loss then calls sync, which fsyncs the WAL file.
// One fsync covers every commit written before it started, so callers that arrive while one is running
// share the next one: under load, many acknowledged uploads cost one fsync (group commit).
type groupSync struct {
	path string // the WAL file
	// doSync is the fsync itself (g.fsync; tests replace it).
	doSync func() error

	mu        sync.Mutex
	cond      *sync.Cond
	f         *os.File
	running   bool
	started   uint64 // fsyncs started
	completed uint64 // the newest fsync finished
	err       error  // its result
}

func newGroupSync(walPath string) *groupSync {
	g := &groupSync{path: walPath}
	g.doSync = g.fsync
	g.cond = sync.NewCond(&g.mu)
	return g
}

// sync returns once an fsync of the WAL that started after the call has finished, with its error.
func (g *groupSync) sync() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	// An fsync already running may have started before our commit was written: wait for the next.
	need := g.started + 1
	for g.completed < need {
		if g.running {
			g.cond.Wait()
			continue
		}
		g.running = true
		g.started++
		n := g.started
		g.mu.Unlock()
		err := g.doSync()
		g.mu.Lock()
		g.running, g.completed, g.err = false, n, err
		g.cond.Broadcast()
	}
	return g.err
}

// fsync syncs the WAL file, (re)opening it when SQLite replaced it (it deletes the WAL when the last
// connection closes, and the pools may reconnect). Called by one goroutine at a time.
func (g *groupSync) fsync() error {
	if g.f != nil {
		held, err1 := g.f.Stat()
		current, err2 := os.Stat(g.path)
		if err1 != nil || err2 != nil || !os.SameFile(held, current) {
			g.f.Close()
			g.f = nil
		}
	}
	if g.f == nil {
		f, err := os.OpenFile(g.path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open WAL to sync it: %w", err)
		}
		g.f = f
	}
	if err := g.f.Sync(); err != nil {
		return fmt.Errorf("sync WAL: %w", err)
	}
	return nil
}

func (g *groupSync) close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.f == nil {
		return nil
	}
	err := g.f.Close()
	g.f = nil
	return err
}
