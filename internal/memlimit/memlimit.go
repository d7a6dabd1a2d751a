// Package memlimit finds how much memory this process may use: the limit of its control group
// (cgroup v2 memory.max, or v1 memory.limit_in_bytes, its own or an ancestor's) when there is one,
// else the machine's total memory (MemTotal in /proc/meminfo).
package memlimit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Available returns the memory, in bytes, a process may use, reading /proc and /sys/fs/cgroup under
// root ("/" for the running system; tests give a directory of fake files). A cgroup limit above the
// machine's memory, or "max", is no limit.
func Available(root string) (int64, error) {
	total, err := memTotal(filepath.Join(root, "proc", "meminfo"))
	if err != nil {
		return 0, err
	}
	limit := total
	v2, v1 := cgroupPaths(filepath.Join(root, "proc", "self", "cgroup"))
	for _, c := range []struct {
		mount, cgroup, file string
	}{
		{filepath.Join(root, "sys", "fs", "cgroup"), v2, "memory.max"},
		{filepath.Join(root, "sys", "fs", "cgroup", "memory"), v1, "memory.limit_in_bytes"},
	} {
		// The limits of the cgroup and of each ancestor all apply.
		for p := c.cgroup; ; p = path.Dir(p) {
			if n, ok := readLimit(filepath.Join(c.mount, filepath.FromSlash(p), c.file)); ok {
				limit = min(limit, n)
			}
			if p == "/" || p == "." {
				break
			}
		}
	}
	return limit, nil
}

// memTotal reads MemTotal from a meminfo file, in bytes.
func memTotal(file string) (int64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("memlimit: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemTotal:" {
			kib, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || kib <= 0 {
				return 0, fmt.Errorf("memlimit: %s: bad MemTotal %q", file, f[1])
			}
			return kib << 10, nil
		}
	}
	return 0, fmt.Errorf("memlimit: %s has no MemTotal", file)
}

// cgroupPaths reads the process's cgroup file and returns its cgroup v2 path and its v1 memory
// controller's path; "/" for one it does not name (or when the file is missing: a cgroup namespace
// shows the process's own cgroup at the mount point's root).
func cgroupPaths(file string) (v2, v1 string) {
	v2, v1 = "/", "/"
	b, err := os.ReadFile(file)
	if err != nil {
		return v2, v1
	}
	for line := range strings.Lines(string(b)) {
		id, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		controllers, p, ok := strings.Cut(rest, ":")
		if !ok || !strings.HasPrefix(p, "/") {
			continue
		}
		switch {
		case id == "0" && controllers == "":
			v2 = path.Clean(p)
		case hasController(controllers, "memory"):
			v1 = path.Clean(p)
		}
	}
	return v2, v1
}

func hasController(list, name string) bool {
	for c := range strings.SplitSeq(list, ",") {
		if c == name {
			return true
		}
	}
	return false
}

// readLimit reads a cgroup memory limit file: ok is false when it is missing, unreadable or says
// "max".
func readLimit(file string) (int64, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}
