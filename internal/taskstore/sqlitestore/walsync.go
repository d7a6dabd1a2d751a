package sqlitestore

import (
	"fmt"
	"os"
	"sync"

	"github.com/imgmill/imgmill/internal/groupsync"
)

// walSync makes commits durable with as few fsyncs as possible: the writer commits with
// synchronous=NORMAL (the WAL is written but not fsynced, which survives a crash of the process but not
// of the machine), and a commit that must survive power loss then calls sync, which fsyncs the WAL file.
// One fsync covers every commit written before it started, so callers that arrive while one is running
// share the next one (groupsync): under load, many acknowledged uploads cost one fsync.
type walSync struct {
	path   string // the WAL file
	syncer *groupsync.Syncer

	mu sync.Mutex // guards f (fsync runs one at a time, but close may come from elsewhere)
	f  *os.File
}

func newWALSync(walPath string) *walSync {
	w := &walSync{path: walPath}
	w.syncer = groupsync.New(w.fsync)
	return w
}

// sync returns once an fsync of the WAL that started after the call has finished.
func (w *walSync) sync() error { return w.syncer.Sync() }

// fsync syncs the WAL file, (re)opening it when SQLite replaced it (it deletes the WAL when the last
// connection closes, and the pools may reconnect).
func (w *walSync) fsync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f != nil {
		held, err1 := w.f.Stat()
		current, err2 := os.Stat(w.path)
		if err1 != nil || err2 != nil || !os.SameFile(held, current) {
			w.f.Close()
			w.f = nil
		}
	}
	if w.f == nil {
		f, err := os.OpenFile(w.path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("open WAL to sync it: %w", err)
		}
		w.f = f
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync WAL: %w", err)
	}
	return nil
}

func (w *walSync) close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}
