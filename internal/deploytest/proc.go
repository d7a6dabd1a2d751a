package deploytest

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ProcStatusKiB reads a field in kB (VmRSS, VmHWM) of /proc/PID/status (Linux only).
func ProcStatusKiB(pid int, field string) (int64, error) {
	if pid == 0 {
		return 0, errors.New("not running")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	for line := range strings.Lines(string(status)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s of %d: %w", field, pid, err)
			}
			return kib, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// OpenFiles is the number of file descriptors process pid has open (Linux only).
func OpenFiles(pid int) (int, error) {
	if pid == 0 {
		return 0, errors.New("not running")
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("open files of %d: %w", pid, err)
	}
	return len(fds), nil
}
