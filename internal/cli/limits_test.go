package cli

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/master"
)

func TestLimitFlagsInHelp(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"master": {"max-upload", "max-dimension", "max-pixels", "max-queued", "max-task-cost", "max-task-memory", "quota-tasks", "quota-bytes"},
		"serve":  {"max-upload", "max-dimension", "max-pixels", "max-queued", "max-task-cost", "max-task-memory", "quota-tasks", "quota-bytes"},
		"worker": {"max-pixels"},
	} {
		checkHelpLists(t, cmd, flags...)
	}
}

// parseLimits defines and parses the master's limit flags as the master command does.
func parseLimits(t *testing.T, vars map[string]string, args ...string) (master.Limits, error) {
	t.Helper()
	e := &env{getenv: func(k string) string { return vars[k] }, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	f := newFlags(e, command{name: "master"})
	var l master.Limits
	f.maxUpload(&l.MaxUpload, master.DefaultMaxUpload)
	f.maxPixels(&l.MaxPixels)
	f.masterLimits(&l)
	err := f.parse(args)
	return l, err
}

func TestLimitFlags(t *testing.T) {
	l, err := parseLimits(t, nil)
	if want := (master.Limits{}).WithDefaults(); err != nil || l != want {
		t.Errorf("default limits = %+v, %v; want %+v", l, err, want)
	}
	if want := (master.Limits{MaxUpload: 256 << 20, MaxDimension: 16384, MaxPixels: 50_000_000, MaxQueued: 10000,
		MaxTaskCost: 30 * time.Second, MaxTaskMemory: 512 << 20}); l != want {
		t.Errorf("default limits = %+v, want %+v", l, want)
	}

	env := map[string]string{"IMGMILL_MAX_DIMENSION": "4096", "IMGMILL_MAX_PIXELS": "1000000", "IMGMILL_MAX_QUEUED": "50",
		"IMGMILL_MAX_UPLOAD": "1048576", "IMGMILL_MAX_TASK_COST": "1m30s", "IMGMILL_MAX_TASK_MEMORY": "1073741824"}
	l, err = parseLimits(t, env)
	if want := (master.Limits{MaxUpload: 1 << 20, MaxDimension: 4096, MaxPixels: 1_000_000, MaxQueued: 50,
		MaxTaskCost: 90 * time.Second, MaxTaskMemory: 1 << 30}); err != nil || l != want {
		t.Errorf("limits from the environment = %+v, %v; want %+v", l, err, want)
	}
	l, err = parseLimits(t, env, "--max-queued", "0", "--max-dimension", "100", "--max-task-cost", "0", "--max-task-memory", "0")
	if want := (master.Limits{MaxUpload: 1 << 20, MaxDimension: 100, MaxPixels: 1_000_000, MaxQueued: master.NoLimit,
		MaxTaskCost: master.NoLimit, MaxTaskMemory: master.NoLimit}); err != nil || l != want {
		t.Errorf("limits from flags over the environment = %+v, %v; want %+v (0: no limit)", l, err, want)
	}
	// Quotas are off by default (above), and take a count and a size.
	l, err = parseLimits(t, map[string]string{"IMGMILL_QUOTA_TASKS": "100"}, "--quota-bytes", "2GiB")
	if err != nil || l.QuotaTasks != 100 || l.QuotaBytes != 2<<30 {
		t.Errorf("quotas = %d tasks, %d bytes, %v; want 100 tasks and 2 GiB", l.QuotaTasks, l.QuotaBytes, err)
	}
	for _, args := range [][]string{{"--quota-tasks", "-1"}, {"--quota-bytes", "-1"}, {"--quota-bytes", "lots"}, {"--max-queued", "-1"}, {"--max-pixels", "-5"}, {"--max-dimension", "many"},
		{"--max-task-cost", "-1s"}, {"--max-task-cost", "30"}, {"--max-task-memory", "-1"}, {"--max-task-memory", "1GB"}} {
		if _, err := parseLimits(t, nil, args...); !errors.Is(err, errUsage) {
			t.Errorf("%v: err %v, want a usage error", args, err)
		}
	}
	if _, _, err := runCLI(t, nil, "worker", "--max-pixels", "-1"); !errors.Is(err, errUsage) {
		t.Errorf("worker --max-pixels -1: err %v, want a usage error", err)
	}
	if _, _, err := runCLI(t, nil, "master", "--max-queued", "-2"); !errors.Is(err, errUsage) {
		t.Errorf("master --max-queued -2: err %v, want a usage error", err)
	}
}
