package enginetest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/imgmill/imgmill/internal/fault"
)

// Disk is a small file system of its own (a tmpfs) for the tests of what a store does when its disk is
// full or read-only: the store lives in Dir, Fill takes the rest of the space until Free gives it back,
// and ReadOnly remounts it read-only until Writable.
type Disk struct {
	mount  string // the mount point
	dir    string // Dir: where the store goes, beside the filler
	filler string
}

// SmallDisk mounts a tmpfs of size bytes (rounded up to pages) on a temporary directory and unmounts
// it when t ends. Mounting needs root; where it is impossible the test is skipped, or fails under
// CI=true (see Unavailable). The tmpfs keeps user extended attributes (Linux 6.6 and later), which
// fileblob needs. Its pages are memory: keep size small.
func SmallDisk(t testing.TB, size int64) *Disk {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "a small disk (tmpfs)", errors.New("mounting a tmpfs needs root"))
		return nil
	}
	if _, err := exec.LookPath("mount"); err != nil {
		Unavailable(t, "a small disk (tmpfs)", err)
		return nil
	}
	d := &Disk{mount: t.TempDir()}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.FormatInt(size, 10)+",mode=0700",
		"tmpfs", d.mount).CombinedOutput()
	if err != nil {
		Unavailable(t, "a small disk (tmpfs)", fmt.Errorf("mount -t tmpfs: %w: %s", err, strings.TrimSpace(string(out))))
		return nil
	}
	// Registered after TempDir's cleanup, so it runs before it: the directory is removed once unmounted.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", d.mount).CombinedOutput(); err != nil {
			// Something still holds a file open (a store the test did not close): detach it, so that the
			// mount goes once it is closed and the temporary directory can go now.
			if lout, lerr := exec.Command("umount", "-l", d.mount).CombinedOutput(); lerr != nil {
				t.Errorf("umount %s: %v: %s; umount -l: %v: %s", d.mount, err, out, lerr, lout)
			}
		}
	})
	d.dir = filepath.Join(d.mount, "data")
	d.filler = filepath.Join(d.mount, "filler")
	if err := os.Mkdir(d.dir, 0o755); err != nil {
		t.Fatalf("small disk: %v", err)
	}
	return d
}

// Dir returns the directory for the store under test, on the small disk (the filler is beside it, not
// in it).
func (d *Disk) Dir() string { return d.dir }

// Fill writes a filler file until the file system answers ENOSPC, down to the last byte, so that from
// then on every write of data fails with ENOSPC until Free. (Creating an empty file or a directory may
// still succeed: a tmpfs counts pages, not inodes.) Filling a full disk again adds nothing.
func (d *Disk) Fill(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(d.filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return // not even room for the filler's inode: as full as it gets
		}
		t.Fatalf("fill the small disk: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	// Large writes until one no longer fits, then ever smaller ones: the last page fills byte by byte.
	for n := len(buf); n > 0; {
		_, err := f.Write(buf[:n])
		switch {
		case err == nil:
		case errors.Is(err, syscall.ENOSPC):
			n /= 2
		default:
			t.Fatalf("fill the small disk: %v", err)
		}
	}
}

// FillTo writes to the filler file until about leave bytes of data are free (within a page), so that
// the disk is nearly full but not quite. Free gives the space back.
func (d *Disk) FillTo(t testing.TB, leave int64) {
	t.Helper()
	room, ok := fault.Room(d.mount)
	if !ok {
		t.Fatal("fill the small disk: statfs failed")
	}
	f, err := os.OpenFile(d.filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("fill the small disk: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n := int64(room) - leave; n > 0; {
		k, err := f.Write(buf[:min(n, int64(len(buf)))])
		if err != nil {
			t.Fatalf("fill the small disk to %d bytes free: %v", leave, err)
		}
		n -= int64(k)
	}
}

// Free removes the filler, giving its space back. Freeing a disk that is not full does nothing.
func (d *Disk) Free(t testing.TB) {
	t.Helper()
	if err := os.Remove(d.filler); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("free the small disk: %v", err)
	}
}

// ReadOnly remounts the disk read-only, as the kernel does with a disk after errors: from then on every
// write fails with EROFS, until Writable. It fails while a file on the disk is open for writing.
func (d *Disk) ReadOnly(t testing.TB) {
	t.Helper()
	d.remount(t, "ro")
}

// Writable remounts a disk that ReadOnly made read-only read-write again.
func (d *Disk) Writable(t testing.TB) {
	t.Helper()
	d.remount(t, "rw")
}

func (d *Disk) remount(t testing.TB, mode string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,"+mode, d.mount).CombinedOutput(); err != nil {
		t.Fatalf("remount the small disk %s: %v: %s", mode, err, strings.TrimSpace(string(out)))
	}
}

// DiskOutages are the outages of a store whose engine is a local disk of size bytes, by name:
// "DiskFull" (filled up: writes fail with fault.IsNoSpace) and "ReadOnly" (remounted read-only: writes
// fail as unavailable). Reads go on working in both, and a store opens during either. open opens a store
// with its data under dir.
func DiskOutages[S io.Closer](size int64, open func(t *testing.T, dir string) S) map[string]Outage[S] {
	outage := func(down, up func(d *Disk, t testing.TB), noSpace bool) Outage[S] {
		return Outage[S]{
			Engine: func(t *testing.T) Engine[S] {
				disk := SmallDisk(t, size)
				return Engine[S]{
					Open: func(t *testing.T) S { return open(t, disk.Dir()) },
					Down: func(t testing.TB) { down(disk, t) },
					Up:   func(t testing.TB) { up(disk, t) },
				}
			},
			NoSpace:       noSpace,
			ReadsWork:     true,
			OpenWhileDown: true,
		}
	}
	return map[string]Outage[S]{
		"DiskFull": outage((*Disk).Fill, (*Disk).Free, true),
		"ReadOnly": outage((*Disk).ReadOnly, (*Disk).Writable, false),
	}
}
