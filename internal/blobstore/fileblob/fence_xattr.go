//go:build linux || darwin

package fileblob

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// fenceAttr is the extended attribute holding a blob's fence as decimal text; absent means fence 0.
const fenceAttr = "user.imgmill.fence"

// maxFenceLen is room for any int64 in decimal; a longer value is malformed.
const maxFenceLen = 24

// setFence records fence (> 0) on the open file f.
func setFence(f *os.File, fence int64) error {
	value := []byte(strconv.FormatInt(fence, 10))
	err := control(f, func(fd int) error { return unix.Fsetxattr(fd, fenceAttr, value, 0) })
	if err != nil {
		return fmt.Errorf("set %s: %w", fenceAttr, err)
	}
	return nil
}

// fileFence reads the fence of the open file f.
func fileFence(f *os.File) (int64, error) {
	var buf [maxFenceLen]byte
	var n int
	err := control(f, func(fd int) (err error) {
		n, err = unix.Fgetxattr(fd, fenceAttr, buf[:])
		return err
	})
	return parseFence(buf[:], n, err)
}

// pathFence reads the fence of the blob at path: 0 when there is none (no file, or a directory).
func pathFence(path string) (int64, error) {
	var buf [maxFenceLen]byte
	n, err := unix.Getxattr(path, fenceAttr, buf[:])
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return 0, nil
	}
	return parseFence(buf[:], n, err)
}

func parseFence(buf []byte, n int, err error) (int64, error) {
	if errors.Is(err, errNoAttr) {
		return 0, nil
	}
	if errors.Is(err, unix.ERANGE) {
		return 0, fmt.Errorf("%s is longer than %d bytes", fenceAttr, len(buf))
	}
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", fenceAttr, err)
	}
	fence, perr := strconv.ParseInt(string(buf[:n]), 10, 64)
	if perr != nil || fence <= 0 {
		// Not a value Put writes. Guessing could let a stale writer through; refuse to decide.
		return 0, fmt.Errorf("malformed %s %q", fenceAttr, buf[:n])
	}
	return fence, nil
}

// control runs fn on f's descriptor (without the side effects of f.Fd).
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// checkFenceSupport checks that the file system under dir keeps user extended attributes, writing,
// reading back and removing a temporary file (one that a crash leaves is removed by the next Open).
func checkFenceSupport(dir string) (err error) {
	f, err := os.CreateTemp(dir, ".fence-check.tmp-*")
	if err != nil {
		return fmt.Errorf("check extended attributes: %w", err)
	}
	defer func() {
		f.Close()
		if rerr := os.Remove(f.Name()); rerr != nil && err == nil {
			err = fmt.Errorf("check extended attributes: %w", rerr)
		}
	}()
	const probe = 1<<62 + 12345
	if err := setFence(f, probe); err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("the file system does not support user extended attributes, which hold the fences of blobs: %w", err)
		}
		return fmt.Errorf("check extended attributes: %w", err)
	}
	got, err := fileFence(f)
	if err != nil {
		return fmt.Errorf("check extended attributes: %w", err)
	}
	if got != probe {
		return fmt.Errorf("check extended attributes: wrote fence %d, read back %d", int64(probe), got)
	}
	return nil
}
