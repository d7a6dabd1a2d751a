package master

import (
	"slices"
	"sync"
)

// finishWaiters wakes long polls when a task changes through this master: GET /isReady?wait= when it
// finishes (its worker's /registerTaskFinished), so a client learns of it at once instead of at its next
// poll; POST /statuses?wait= on any change. Tasks changed through another master are found by the
// polls' periodic recheck.
type finishWaiters struct {
	mu      sync.Mutex
	waiters map[int64][]*waiter
}

// waiter is one long poll, registered under every task it waits for; the first of them wakes it.
type waiter struct {
	ch   chan struct{}
	once sync.Once
}

func (w *waiter) wake() { w.once.Do(func() { close(w.ch) }) }

// wait returns a channel closed when task id is next reported here, and a function that withdraws it
// (call it when done waiting).
func (f *finishWaiters) wait(id int64) (<-chan struct{}, func()) {
	return f.waitAny([]int64{id})
}

// waitAny is wait for the first of several tasks.
func (f *finishWaiters) waitAny(ids []int64) (<-chan struct{}, func()) {
	w := &waiter{ch: make(chan struct{})}
	f.mu.Lock()
	if f.waiters == nil {
		f.waiters = map[int64][]*waiter{}
	}
	for _, id := range ids {
		f.waiters[id] = append(f.waiters[id], w)
	}
	f.mu.Unlock()
	return w.ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, id := range ids {
			list := slices.DeleteFunc(f.waiters[id], func(x *waiter) bool { return x == w })
			if len(list) == 0 {
				delete(f.waiters, id)
			} else {
				f.waiters[id] = list
			}
		}
	}
}

// finished wakes every waiter of task id.
func (f *finishWaiters) finished(id int64) {
	f.mu.Lock()
	list := f.waiters[id]
	delete(f.waiters, id)
	f.mu.Unlock()
	for _, w := range list {
		w.wake()
	}
}
