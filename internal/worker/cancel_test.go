package worker_test

import (
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// TestWorkerStopsOnCancel: a task cancelled while a worker processes it is refused (410) at the worker's
// next heartbeat, which cuts the work short: the worker reports nothing, stores no result, and goes on to
// claim other work.
func TestWorkerStopsOnCancel(t *testing.T) {
	hook := newWorkingHook(time.Minute) // the task would take a minute
	r := newRig(t, rigOptions{wrapStorage: hook.wrap})
	id := r.upload(t, testimage.Pattern(8, 13))
	stop := startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		Heartbeat: 50 * time.Millisecond, Logger: servicetest.Discard})
	hook.waitArrived(t) // the worker claimed the task and is fetching its image

	st, err := r.master.Cancel(t.Context(), id)
	if err != nil || st.State != wire.CancelledWord {
		t.Fatalf("cancel: %+v, %v; want cancelled", st, err)
	}
	poll(t, "the worker to abandon fetching the cancelled task's input", func() bool { return hook.abandoned.Load() == 1 })
	poll(t, "the worker to claim again", func() bool { return r.calls.count("/getNewTask") >= 2 })
	stop()

	for _, path := range []string{"/finishTask", "/registerTaskFinished", "/failTask", "/releaseTask"} {
		if n := r.calls.count(path); n != 0 {
			t.Errorf("%d calls of %s for a cancelled task, want none", n, path)
		}
	}
	if _, _, ok := finishedImage(t, r.storage, id); ok {
		t.Error("a result was stored for a cancelled task")
	}
	if task := r.task(t, id); task.State != wire.Cancelled || task.Attempts != 1 {
		t.Errorf("task = %+v, want cancelled after 1 attempt", task)
	}
}

// TestWorkerHearsCancelWhileHeartbeatHeld: the worker's heartbeat is a long poll, sent when it claims
// and held by the master; a cancel answers it (410) at once. The worker stops having sent that one
// heartbeat, although its next one is not due for seconds: without the long poll, it would have heard
// of the cancel only at a second heartbeat.
func TestWorkerHearsCancelWhileHeartbeatHeld(t *testing.T) {
	hook := newWorkingHook(time.Minute) // the task would take a minute
	r := newRig(t, rigOptions{lease: 10 * time.Minute, wrapStorage: hook.wrap})
	id := r.upload(t, testimage.Pattern(8, 14))
	stop := startWorker(t, worker.Config{Master: r.master, Storage: r.storage, Concurrency: 1, Wait: time.Second,
		Heartbeat: worker.DefaultHeartbeat, Logger: servicetest.Discard})
	hook.waitArrived(t)
	poll(t, "the worker's first heartbeat", func() bool { return r.calls.count("/extendLease") == 1 })

	if st, err := r.master.Cancel(t.Context(), id); err != nil || st.State != wire.CancelledWord {
		t.Fatalf("cancel: %+v, %v; want cancelled", st, err)
	}
	poll(t, "the worker to abandon the cancelled task", func() bool { return hook.abandoned.Load() == 1 })
	poll(t, "the worker to claim again", func() bool { return r.calls.count("/getNewTask") >= 2 })
	stop()
	if n := r.calls.count("/extendLease"); n != 1 {
		t.Errorf("%d heartbeats, want 1: the held one hears the cancel", n)
	}
	if q := r.calls.queries("/extendLease"); len(q) == 0 || q[0].Get("wait") != worker.DefaultHeartbeat.String() {
		t.Errorf("heartbeat queries %v, want a wait of %v", q, worker.DefaultHeartbeat)
	}
	if task := r.task(t, id); task.State != wire.Cancelled || task.Attempts != 1 {
		t.Errorf("task = %+v, want cancelled after 1 attempt", task)
	}
}
