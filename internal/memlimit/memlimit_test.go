package memlimit_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/memlimit"
)

const meminfo = "MemTotal:       24683748 kB\nMemFree:        21663072 kB\n"

const total = 24683748 << 10

// system writes files (path: content) under a new directory and returns it.
func system(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestAvailable(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  int64
	}{
		{"no cgroup: the machine's memory", map[string]string{"proc/meminfo": meminfo}, total},
		{"cgroup v2 limit at the namespace's root", map[string]string{
			"proc/meminfo": meminfo, "proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "2147483648\n"}, 2 << 30},
		{"cgroup v2 without a limit", map[string]string{
			"proc/meminfo": meminfo, "proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "max\n"}, total},
		{"cgroup v2 nested: an ancestor's lower limit applies", map[string]string{
			"proc/meminfo": meminfo, "proc/self/cgroup": "0::/a/b\n",
			"sys/fs/cgroup/a/b/memory.max": "max\n", "sys/fs/cgroup/a/memory.max": "1073741824\n"}, 1 << 30},
		{"cgroup v2 nested: its own lower limit applies", map[string]string{
			"proc/meminfo": meminfo, "proc/self/cgroup": "0::/a/b\n",
			"sys/fs/cgroup/a/b/memory.max": "536870912\n", "sys/fs/cgroup/a/memory.max": "1073741824\n"}, 512 << 20},
		{"cgroup v1 limit", map[string]string{
			"proc/meminfo":     meminfo,
			"proc/self/cgroup": "9:name=systemd:/\n4:memory:/job/x\n3:cpu,cpuacct:/\n0::/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes":       "9223372036854771712\n",
			"sys/fs/cgroup/memory/job/x/memory.limit_in_bytes": "3221225472\n"}, 3 << 30},
		{"cgroup v1 without a limit (a huge number)", map[string]string{
			"proc/meminfo": meminfo, "proc/self/cgroup": "4:memory:/job/x\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes":       "9223372036854771712\n",
			"sys/fs/cgroup/memory/job/x/memory.limit_in_bytes": "9223372036854771712\n"}, total},
		{"cgroup v1 in a namespace: no /proc/self/cgroup path", map[string]string{
			"proc/meminfo": meminfo, "sys/fs/cgroup/memory/memory.limit_in_bytes": "1610612736\n"}, 1536 << 20},
		{"a limit above the machine's memory", map[string]string{
			"proc/meminfo": meminfo, "sys/fs/cgroup/memory.max": "99999999999999\n"}, total},
		{"a limit file that is not a number", map[string]string{
			"proc/meminfo": meminfo, "sys/fs/cgroup/memory.max": "lots\n"}, total},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := memlimit.Available(system(t, tc.files))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Available = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestAvailableWithoutMeminfo(t *testing.T) {
	for _, files := range []map[string]string{
		{"sys/fs/cgroup/memory.max": "1073741824\n"},
		{"proc/meminfo": "MemFree: 1 kB\n"},
		{"proc/meminfo": "MemTotal: lots kB\n"},
	} {
		if n, err := memlimit.Available(system(t, files)); err == nil || !strings.Contains(err.Error(), "meminfo") {
			t.Errorf("Available with %v = %d, %v; want an error naming meminfo", files, n, err)
		}
	}
}

// The running system has some memory.
func TestAvailableHere(t *testing.T) {
	n, err := memlimit.Available("/")
	if err != nil {
		t.Skipf("no /proc/meminfo here: %v", err)
	}
	if n < 64<<20 {
		t.Errorf("Available(/) = %d bytes", n)
	}
	t.Logf("this process may use %.1f GiB", float64(n)/(1<<30))
}
