package cli

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/worker"
)

// The token of the tests here; never printed.
const testToken = "imgmill-test-token-0123456789-abcdefgh"

func TestHelpListsSecurityFlags(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"serve": {"token", "insecure"}, "kv": {"token", "insecure"}, "database": {"token", "insecure"},
		"storage": {"token", "insecure"}, "master": {"token", "insecure"},
		"worker": {"token"}, "frontend": {"token"}, "bench": {"token"},
	} {
		checkHelpLists(t, cmd, flags...)
	}
	// The token is never printed, not even when it is set.
	_, errOut, _ := runCLI(t, map[string]string{"IMGMILL_TOKEN": testToken}, "kv", "--help")
	if strings.Contains(errOut, testToken) {
		t.Errorf("kv --help prints the token:\n%s", errOut)
	}
}

// A token that cannot go into a header is a usage error naming where it came from.
func TestBadToken(t *testing.T) {
	_, _, err := runCLI(t, map[string]string{"IMGMILL_TOKEN": "two words"}, "kv", "--addr", "127.0.0.1:0", "--data", t.TempDir())
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "IMGMILL_TOKEN") {
		t.Errorf("IMGMILL_TOKEN with a space: %v, want a usage error naming the variable", err)
	}
	_, _, err = runCLI(t, nil, "worker", "--token", "new\nline")
	if !errors.Is(err, errUsage) {
		t.Errorf("--token with a newline: %v, want a usage error", err)
	}
	// A short token is refused at start, with the way to make a good one.
	for _, args := range [][]string{{"serve", "--token", "x"}, {"worker", "--token", "imgmill-test-token"}} {
		_, _, err = runCLI(t, nil, args...)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "of at least 32 characters): use a long random one, e.g. from `openssl rand -base64 32`") {
			t.Errorf("%v: %v, want a usage error asking for 32 characters", args, err)
		}
	}
	_, _, err = runCLI(t, map[string]string{"IMGMILL_TOKEN": "x"}, "kv", "--addr", "127.0.0.1:0", "--data", t.TempDir())
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "IMGMILL_TOKEN") || !strings.Contains(err.Error(), "the token is too short (1 of at least 32 characters)") {
		t.Errorf("IMGMILL_TOKEN=x: %v, want a usage error naming the variable and the length", err)
	}
}

// --pprof and --metrics-addr are listed with their variables.
func TestOpsFlagsInHelp(t *testing.T) {
	for _, cmd := range []string{"serve", "kv", "database", "storage", "master", "frontend", "worker"} {
		checkHelpLists(t, cmd, "pprof")
	}
	checkHelpLists(t, "worker", "metrics-addr", "insecure")
	if _, _, err := runCLI(t, nil, "worker", "--metrics-addr", "0.0.0.0:0", "--kv", "127.0.0.1:1"); err == nil ||
		!strings.Contains(err.Error(), "without a token") {
		t.Errorf("worker metrics on all addresses without a token: %v, want a refusal", err)
	}
}

func TestBytesValue(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1500000000": 1_500_000_000, "1.5GB": 1_500_000_000, "512MiB": 512 << 20, "512 MiB": 512 << 20,
		"2GiB": 2 << 30, "300MB": 300_000_000, "64kB": 64_000, "64KiB": 64 << 10, "100B": 100,
	} {
		var n int64
		if err := (bytesValue{&n}).Set(in); err != nil || n != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, n, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1", "1.5TB", "GB", "1e30"} {
		var n int64
		if err := (bytesValue{&n}).Set(in); err == nil {
			t.Errorf("Set(%q) = %d, want an error", in, n)
		}
	}
}

// --max-memory and --task-timeout are on worker and serve, and a worker budget smaller than what the
// process itself takes is a usage error.
func TestMemoryFlags(t *testing.T) {
	for _, cmd := range []string{"serve", "worker"} {
		checkHelpLists(t, cmd, "max-memory", "task-timeout")
	}
	if _, _, err := runCLI(t, nil, "worker", "--max-memory", "10MB", "--kv", "127.0.0.1:1"); !errors.Is(err, errUsage) ||
		!strings.Contains(err.Error(), "--max-memory") {
		t.Errorf("worker --max-memory 10MB: %v, want a usage error", err)
	}
	if _, _, err := runCLI(t, nil, "worker", "--task-timeout", "0s", "--kv", "127.0.0.1:1"); !errors.Is(err, errUsage) {
		t.Errorf("worker --task-timeout 0s: %v, want a usage error", err)
	}
}

// --min-free is on storage and serve; it reads a size, a percentage or both, the way it writes them.
func TestMinFreeFlag(t *testing.T) {
	for _, cmd := range []string{"serve", "storage"} {
		checkHelpLists(t, cmd, "min-free")
	}
	for in, want := range map[string]storage.MinFree{
		"1GiB,5%": storage.DefaultMinFree, "0": {}, "10%": {Percent: 10}, "1.5GB": {Bytes: 1_500_000_000},
		"512 MiB, 2.5%": {Bytes: 512 << 20, Percent: 2.5},
	} {
		var m storage.MinFree
		if err := (minFreeValue{&m}).Set(in); err != nil || m != want {
			t.Errorf("Set(%q) = %+v, %v; want %+v", in, m, err, want)
		}
	}
	def := storage.DefaultMinFree
	if got := (minFreeValue{&def}).String(); got != "1GiB,5%" {
		t.Errorf("the default reads %q", got)
	}
	if _, _, err := runCLI(t, nil, "storage", "--min-free", "lots", "--kv", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "min-free") {
		t.Errorf("storage --min-free lots: %v, want a refusal", err)
	}
}

// Every worker holds tasks ahead by default, in-process (serve, bench) or not.
func TestPrefetchDefault(t *testing.T) {
	e, _ := quietEnv(nil)
	all := defineAll(e)
	if worker.DefaultPrefetch <= 0 {
		t.Fatalf("worker.DefaultPrefetch = %d, want > 0", worker.DefaultPrefetch)
	}
	for _, cmd := range []string{"worker", "serve", "bench"} {
		fl := all[cmd].Lookup("prefetch")
		if fl == nil {
			t.Fatalf("%s has no --prefetch", cmd)
		}
		if want := strconv.Itoa(worker.DefaultPrefetch); fl.DefValue != want {
			t.Errorf("%s --prefetch defaults to %s, want %s", cmd, fl.DefValue, want)
		}
	}
}
