// Package groupsync shares one expensive flush (an fsync, a syncfs) among the callers that need one at
// the same time: group commit. A caller needs a flush that started after its own write was made; those
// that arrive while a flush runs all wait for the next one, which then covers them all, so under load
// many writes cost one flush instead of one each.
package groupsync

import "sync"

// Syncer runs flushes for its callers. The zero value is not usable; use New.
type Syncer struct {
	flush func() error

	mu        sync.Mutex
	cond      *sync.Cond
	running   bool
	started   uint64 // flushes started
	completed uint64 // the newest flush finished
	err       error  // its result
}

// New returns a Syncer whose flushes call flush (never two at once).
func New(flush func() error) *Syncer {
	s := &Syncer{flush: flush}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Sync returns once a flush that started after the call has finished, with that flush's error.
func (s *Syncer) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A flush already running may have started before the caller's write: wait for the next.
	need := s.started + 1
	for s.completed < need {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		n := s.started
		s.mu.Unlock()
		err := s.flush()
		s.mu.Lock()
		s.running, s.completed, s.err = false, n, err
		s.cond.Broadcast()
	}
	return s.err
}
