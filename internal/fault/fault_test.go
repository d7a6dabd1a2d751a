package fault_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"syscall"
	"testing"

	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
)

type peerAnswer struct{ status int }

func (p peerAnswer) Error() string   { return fmt.Sprint(p.status) }
func (p peerAnswer) Transient() bool { return p.status == 503 }

func TestClassification(t *testing.T) {
	cause := errors.New("dial tcp 10.0.0.1:5432: connection refused")
	for _, c := range []struct {
		name               string
		err                error
		transient, noSpace bool
	}{
		{"plain", cause, false, false},
		{"nil", nil, false, false},
		{"unavailable", fault.Unavailable("the task database", cause), true, false},
		{"wrapped unavailable", fmt.Errorf("create task: %w", fault.Unavailable("the task database", cause)), true, false},
		{"no space", fault.NoSpace("image storage", cause), true, true},
		{"ENOSPC", fault.Disk("image storage", &fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}), true, true},
		{"EDQUOT", fault.Disk("image storage", syscall.EDQUOT), true, true},
		{"EROFS", fault.Disk("image storage", syscall.EROFS), true, false},
		{"other disk error", fault.Disk("image storage", os.ErrPermission), false, false},
		{"peer says transient", fmt.Errorf("call: %w", peerAnswer{503}), true, false},
		{"peer says permanent", peerAnswer{400}, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := fault.IsTransient(c.err); got != c.transient {
				t.Errorf("IsTransient(%v) = %v, want %v", c.err, got, c.transient)
			}
			if got := fault.IsNoSpace(c.err); got != c.noSpace {
				t.Errorf("IsNoSpace(%v) = %v, want %v", c.err, got, c.noSpace)
			}
		})
	}
	if fault.Unavailable("x", nil) != nil || fault.NoSpace("x", nil) != nil || fault.Disk("x", nil) != nil {
		t.Error("a nil error must stay nil")
	}
}

func TestMessageHidesTheCause(t *testing.T) {
	cause := errors.New("dial tcp 10.0.0.1:5432: connection refused")
	err := fmt.Errorf("get task 3: %w", fault.Unavailable("the task database", cause))
	var e *fault.Error
	if !errors.As(err, &e) {
		t.Fatal("no *fault.Error in the chain")
	}
	if got, want := e.Message(), "the task database is temporarily unavailable"; got != want {
		t.Errorf("Message() = %q, want %q", got, want)
	}
	if got, want := e.Error(), "the task database is temporarily unavailable: "+cause.Error(); got != want {
		t.Errorf("Error() = %q, want %q (the cause for the log)", got, want)
	}
	if !errors.Is(err, cause) {
		t.Error("the cause must stay in the chain")
	}
	if got, want := fault.NoSpace("image storage", cause).(*fault.Error).Message(), "image storage is out of space"; got != want {
		t.Errorf("Message() = %q, want %q", got, want)
	}
}

func TestTimeout(t *testing.T) {
	live := context.Background()
	if err := fault.Timeout(live, "etcd", context.DeadlineExceeded); !fault.IsTransient(err) {
		t.Errorf("a deadline of the dependency's own with the caller still waiting: %v, want transient", err)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if err := fault.Timeout(ended, "etcd", fmt.Errorf("get: %w", context.DeadlineExceeded)); fault.IsTransient(err) {
		t.Errorf("the caller's own context ended: %v, want it unchanged", err)
	}
	if err := fault.Timeout(live, "etcd", context.Canceled); fault.IsTransient(err) {
		t.Errorf("a cancellation is not the dependency's fault: %v", err)
	}
}

// TestWritableAndRoom: the health checks of the file stores see a full disk as out of space, and a
// read-only one as unavailable; Room sees the space go and come back.
func TestWritableAndRoom(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("statfs checks are for Linux (and macOS)")
	}
	disk := enginetest.SmallDisk(t, 1<<20)
	if err := fault.Writable("image storage", disk.Dir()); err != nil {
		t.Fatalf("an empty disk: %v", err)
	}
	if room, ok := fault.Room(disk.Dir()); !ok || room < 512<<10 {
		t.Errorf("Room of an empty 1 MiB disk = %d, %v", room, ok)
	}
	disk.Fill(t)
	if err := fault.Writable("image storage", disk.Dir()); !fault.IsNoSpace(err) {
		t.Errorf("a full disk: %v, want out of space", err)
	}
	if room, ok := fault.Room(disk.Dir()); !ok || room != 0 {
		t.Errorf("Room of a full disk = %d, %v; want 0", room, ok)
	}
	disk.Free(t)
	disk.ReadOnly(t)
	if err := fault.Writable("image storage", disk.Dir()); !fault.IsTransient(err) || fault.IsNoSpace(err) {
		t.Errorf("a read-only disk: %v, want unavailable", err)
	}
	disk.Writable(t)
	if err := fault.Writable("image storage", disk.Dir()); err != nil {
		t.Errorf("writable again: %v", err)
	}
}
