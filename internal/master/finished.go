package master

import "sync"

// finishWaiters wakes the long polls of GET /isReady?wait= when a task finishes through this master
// (its worker's /registerTaskFinished), so a client learns of it at once instead of at its next poll.
// Tasks finished through another master are found by the polls' periodic recheck.
type finishWaiters struct {
	mu      sync.Mutex
	waiters map[int64][]chan struct{}
}

// wait returns a channel closed when task id is next reported finished here, and a function that
// withdraws it (call it when done waiting).
func (f *finishWaiters) wait(id int64) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	f.mu.Lock()
	if f.waiters == nil {
		f.waiters = map[int64][]chan struct{}{}
	}
	f.waiters[id] = append(f.waiters[id], ch)
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		list := f.waiters[id]
		for i, c := range list {
			if c == ch {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(f.waiters, id)
		} else {
			f.waiters[id] = list
		}
	}
}

// finished wakes every waiter of task id.
func (f *finishWaiters) finished(id int64) {
	f.mu.Lock()
	list := f.waiters[id]
	delete(f.waiters, id)
	f.mu.Unlock()
	for _, ch := range list {
		close(ch)
	}
}
