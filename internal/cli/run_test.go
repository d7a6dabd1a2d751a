package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func runCLI(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	getenv := func(k string) string { return env[k] }
	err = Run(context.Background(), append([]string{"imgmill"}, args...), getenv, &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestUsage(t *testing.T) {
	out, _, err := runCLI(t, nil, "--help")
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, c := range []string{"serve", "kv", "database", "storage", "master", "worker", "frontend", "bench"} {
		if !strings.Contains(out, "\n  "+c+" ") {
			t.Errorf("usage does not list %q:\n%s", c, out)
		}
	}
	if _, _, err := runCLI(t, nil); !errors.Is(err, errUsage) || ExitCode(err) != 2 {
		t.Errorf("no command: err %v, want a usage error with exit code 2", err)
	}
	if _, _, err := runCLI(t, nil, "frobnicate"); !errors.Is(err, errUsage) {
		t.Errorf("unknown command: err %v, want usage error", err)
	}
}

func TestSubcommandHelpListsFlagsAndEnv(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"kv":       {"addr", "data"},
		"database": {"addr", "kv", "data", "lease"},
		"storage":  {"addr", "kv", "data"},
		"master":   {"addr", "kv"},
		"worker":   {"kv", "concurrency"},
		"frontend": {"addr", "kv"},
		"serve":    {"data"},
		"bench":    {"master", "size", "clients"},
	} {
		checkHelpLists(t, cmd, flags...)
	}
}

// checkHelpLists checks that `imgmill cmd --help` lists each flag with its environment variable.
func checkHelpLists(t *testing.T, cmd string, flags ...string) {
	t.Helper()
	_, errOut, err := runCLI(t, nil, cmd, "--help")
	if err != nil {
		t.Fatalf("%s --help: %v", cmd, err)
	}
	for _, f := range flags {
		if !strings.Contains(errOut, "--"+f+" ("+envName(f)+")") {
			t.Errorf("%s --help lacks --%s with its variable:\n%s", cmd, f, errOut)
		}
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	e := &env{getenv: func(k string) string {
		return map[string]string{"IMGMILL_ADDR": "127.0.0.1:9", "IMGMILL_LEASE": "5s", "IMGMILL_LOG_LEVEL": "debug"}[k]
	}, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	f := newFlags(e, command{name: "test"})
	addr, data := new(string), new(string)
	f.addr(addr, "", "127.0.0.1:1")
	lease := f.Duration("lease", 0, "")
	f.dataDir(data)
	if err := f.parse(nil); err != nil {
		t.Fatal(err)
	}
	if *addr != "127.0.0.1:9" || lease.String() != "5s" || *data != "./data" || f.logLevel.String() != "DEBUG" {
		t.Errorf("from env: addr %q lease %s data %q level %s", *addr, lease, *data, f.logLevel)
	}
	// The command line wins over the environment.
	f = newFlags(e, command{name: "test"})
	f.addr(addr, "", "127.0.0.1:1")
	if err := f.parse([]string{"--addr", "127.0.0.1:7"}); err != nil {
		t.Fatal(err)
	}
	if *addr != "127.0.0.1:7" {
		t.Errorf("flag should win over env: %q", *addr)
	}
	// A bad value in the environment is a usage error naming the variable.
	bad := &env{getenv: func(k string) string {
		if k == "IMGMILL_LEASE" {
			return "soon"
		}
		return ""
	}, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	f = newFlags(bad, command{name: "test"})
	f.Duration("lease", 0, "")
	if err := f.parse(nil); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "IMGMILL_LEASE") {
		t.Errorf("bad env value: %v", err)
	}
	if _, _, err := runCLI(t, nil, "kv", "--nope"); !errors.Is(err, errUsage) {
		t.Errorf("unknown flag: %v", err)
	}
	if _, _, err := runCLI(t, nil, "kv", "extra"); !errors.Is(err, errUsage) {
		t.Errorf("stray argument: %v", err)
	}
}

// TestHelpShowsFlagsAsTyped: a one-letter flag reads -o, without a variable; a boolean that is off has no
// default; a string default is shown as typed.
func TestHelpShowsFlagsAsTyped(t *testing.T) {
	_, help, err := runCLI(t, nil, "get", "--help")
	if err != nil {
		t.Fatalf("get --help: %v", err)
	}
	if !strings.Contains(help, "\n  -o\n") || strings.Contains(help, "--o") || strings.Contains(help, "IMGMILL_O") {
		t.Errorf("get --help does not show -o as typed, without a variable:\n%s", help)
	}
	if strings.Contains(help, `"false"`) || strings.Contains(help, "(default false)") {
		t.Errorf("get --help shows a boolean's default:\n%s", help)
	}
	if !strings.Contains(help, "(default http://localhost:8080)") {
		t.Errorf("get --help does not show --server's default as typed:\n%s", help)
	}
	// -o is not read from the environment.
	if _, _, err := runCLI(t, map[string]string{"IMGMILL_O": "x.png"}, "get", "ID"); ExitCode(err) != 2 || !strings.Contains(err.Error(), "-o FILE is required") {
		t.Errorf("get with IMGMILL_O set and no -o: %v, want -o required", err)
	}
}

// TestFlagErrorOnce: a mistake in the flags is said once, in the error Run returns (its caller prints it),
// with no help dumped after it.
func TestFlagErrorOnce(t *testing.T) {
	stdout, stderr, err := runCLI(t, nil, "submit", "--no-such-flag", "x.png")
	if ExitCode(err) != 2 || !strings.Contains(err.Error(), "flag provided but not defined: -no-such-flag") || !strings.Contains(err.Error(), "imgmill submit --help") {
		t.Errorf("unknown flag: %v (exit %d)", err, ExitCode(err))
	}
	if stdout != "" || stderr != "" {
		t.Errorf("unknown flag: stdout %q, stderr %q; want the error only once, from the caller", stdout, stderr)
	}
	_, stderr, err = runCLI(t, nil, "kv", "--addr")
	if ExitCode(err) != 2 || stderr != "" {
		t.Errorf("flag without its value: %v, stderr %q", err, stderr)
	}
}
