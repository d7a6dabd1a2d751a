package cli

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/publicid"
)

// defineAll defines every command's flags, each on its own flag set, as Run would.
func defineAll(e *env) map[string]*flags {
	all := map[string]*flags{}
	for _, c := range commands() {
		f := newFlags(e, c)
		c.define(f)
		all[c.name] = f
	}
	return all
}

func quietEnv(vars map[string]string) (*env, *bytes.Buffer) {
	var errOut bytes.Buffer
	return &env{getenv: func(k string) string { return vars[k] }, stdout: &bytes.Buffer{}, stderr: &errOut}, &errOut
}

// One name, one meaning: a flag name (and so its IMGMILL_* variable) has the same type and the same
// description on every command that has it, so one exported variable never means two things. Only the
// default may differ (each service's own listen address). Deprecated spellings are exempt: they are
// never read from the environment.
func TestFlagNamesHaveOneMeaning(t *testing.T) {
	e, _ := quietEnv(nil)
	type use struct {
		cmd, usage string
		typ        reflect.Type
	}
	uses := map[string][]use{}
	for name, f := range defineAll(e) {
		f.VisitAll(func(fl *flag.Flag) {
			if _, old := f.deprecated[fl.Name]; old {
				return
			}
			uses[fl.Name] = append(uses[fl.Name], use{name, fl.Usage, reflect.TypeOf(fl.Value)})
		})
	}
	shared := 0
	for name, us := range uses {
		if len(us) > 1 {
			shared++
		}
		for _, u := range us[1:] {
			if u.typ != us[0].typ {
				t.Errorf("--%s is a %v on %s but a %v on %s", name, us[0].typ, us[0].cmd, u.typ, u.cmd)
			}
			if u.usage != us[0].usage {
				t.Errorf("--%s means two things:\n  %s: %s\n  %s: %s", name, us[0].cmd, us[0].usage, u.cmd, u.usage)
			}
		}
	}
	// The check has something to check: the service flags are shared by many commands.
	for _, name := range []string{"addr", "kv", "data", "token", "concurrency", "max-upload", "kv-store", "wait"} {
		if len(uses[name]) < 2 {
			t.Errorf("--%s is on %d command(s), expected on several", name, len(uses[name]))
		}
	}
	if shared < 20 {
		t.Errorf("only %d flag names are shared between commands", shared)
	}
}

// The names that meant two things: each now has one, and the old spelling is a deprecated alias that
// sets the new flag with a warning, on the command line only.
func TestRenamedFlags(t *testing.T) {
	for _, tc := range []struct {
		cmd, old, now, value string
	}{
		{"kv", "kv", "kv-store", "etcd://127.0.0.1:2379"},
		{"serve", "addr", "frontend-addr", "127.0.0.1:9999"},
		{"serve", "wait", "claim-wait", "7s"},
		{"worker", "wait", "claim-wait", "7s"},
		{"submit", "concurrency", "parallel", "3"},
	} {
		// Its variable is not the old flag's: IMGMILL_KV is the kv service's address elsewhere, and
		// exporting it does not break imgmill kv (nor IMGMILL_WAIT=true the worker).
		envValue := map[string]string{"kv": "127.0.0.1:3000", "addr": "0.0.0.0:1", "wait": "true", "concurrency": "8"}[tc.old]
		e, errOut := quietEnv(map[string]string{envName(tc.old): envValue})
		c := commandNamed(t, tc.cmd)
		f := newFlags(e, c)
		c.define(f)
		before := f.Lookup(tc.now).Value.String()
		if _, err := f.parseInterspersed(nil); err != nil {
			t.Errorf("imgmill %s with %s=%q: %v", tc.cmd, envName(tc.old), envValue, err)
		}
		if got := f.Lookup(tc.now).Value.String(); got != before {
			t.Errorf("imgmill %s: %s=%q set --%s to %q", tc.cmd, envName(tc.old), envValue, tc.now, got)
		}
		// The old spelling on the command line sets the new flag and says so.
		f = newFlags(e, c)
		c.define(f)
		if _, err := f.parseInterspersed([]string{"--" + tc.old, tc.value}); err != nil {
			t.Fatalf("imgmill %s --%s %s: %v", tc.cmd, tc.old, tc.value, err)
		}
		if got := f.Lookup(tc.now).Value.String(); got != tc.value {
			t.Errorf("imgmill %s --%s %s set --%s to %q", tc.cmd, tc.old, tc.value, tc.now, got)
		}
		if want := fmt.Sprintf("--%s is deprecated and will be removed: use --%s (%s)", tc.old, tc.now, envName(tc.now)); !strings.Contains(errOut.String(), want) {
			t.Errorf("imgmill %s --%s: stderr %q, want %q", tc.cmd, tc.old, errOut.String(), want)
		}
		// And help names it as deprecated, without a variable.
		_, help, _ := runCLI(t, nil, tc.cmd, "--help")
		if !strings.Contains(help, "  --"+tc.old+"\n    \tdeprecated: use --"+tc.now) || strings.Contains(help, "("+envName(tc.old)+")") && tc.old != "wait" {
			t.Errorf("imgmill %s --help does not list --%s as deprecated:\n%s", tc.cmd, tc.old, help)
		}
	}
}

func commandNamed(t *testing.T, name string) command {
	t.Helper()
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no command %q", name)
	return command{}
}

// Libraries say what is wrong; the command line says which flag: a bad store URL is reported with the
// flag that named it.
func TestStoreErrorsNameTheirFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"kv", "--kv-store", "redis://127.0.0.1:1"}, "--kv-store: "},
		{[]string{"database", "--tasks", "mysql://127.0.0.1/db"}, "--tasks: "},
		{[]string{"storage", "--blobs", "gs://bucket"}, "--blobs: "},
		{[]string{"serve", "--kv-store", "redis://127.0.0.1:1"}, "kv store: "},
	} {
		args := append(tc.args, "--data", t.TempDir(), "--addr", "127.0.0.1:0")
		if tc.args[0] == "serve" {
			args = append(tc.args, "--data", t.TempDir())
		}
		_, _, err := runCLI(t, nil, args...)
		if err == nil || !strings.Contains(err.Error(), tc.flag) || strings.Count(err.Error(), "--") > 1 {
			t.Errorf("imgmill %s: %v, want an error naming %q once", strings.Join(tc.args, " "), err, tc.flag)
		}
	}
}

// A limit's 0 is no limit on the command line, NoLimit in the config, translated by limitValue alone;
// a negative limit is refused.
func TestLimitFlagZeroIsNoLimit(t *testing.T) {
	var v int64 = 5
	l := limitValue[int64]{&v}
	if err := l.Set("0"); err != nil || v != -1 || l.String() != "0" {
		t.Errorf("Set(0): v=%d String=%q err=%v, want NoLimit shown as 0", v, l.String(), err)
	}
	if err := l.Set("-3"); err == nil {
		t.Error("Set(-3) accepted")
	}
	var small int
	if err := (limitValue[int]{&small}).Set("99999999999999999999"); err == nil {
		t.Error("an int limit accepted a number it cannot hold")
	}
	// Where the Go config's 0 is "the default", the command line refuses 0 rather than mean another thing.
	for _, args := range [][]string{{"worker", "--claim-wait", "0"}, {"database", "--lease", "0s"}, {"database", "--max-attempts", "0"}} {
		if _, _, err := runCLI(t, nil, args...); !errors.Is(err, errUsage) {
			t.Errorf("imgmill %s: %v, want a usage error", strings.Join(args, " "), err)
		}
	}
}

// --allowed-origins takes a list, checked when given.
func TestAllowedOriginsFlag(t *testing.T) {
	e, _ := quietEnv(map[string]string{"IMGMILL_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080"})
	c := commandNamed(t, "frontend")
	f := newFlags(e, c)
	c.define(f)
	if err := f.parse(nil); err != nil {
		t.Fatal(err)
	}
	if got := f.Lookup("allowed-origins").Value.String(); got != "https://a.example,http://b.example:8080" {
		t.Errorf("--allowed-origins from the environment = %q", got)
	}
	if _, _, err := runCLI(t, nil, "frontend", "--allowed-origins", "a.example/path"); !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "allowed-origins") {
		t.Errorf("a bad origin: %v, want a usage error naming the flag", err)
	}
}

// A public id may start with a dash (one in 64 do): it is an id wherever it stands, never a flag, and the
// flags around it still parse.
func TestPublicIDStartingWithDash(t *testing.T) {
	id := "-" + strings.Repeat("aB3_", 10) + "xy" // publicid.Len characters
	if len(id) != publicid.Len {
		t.Fatalf("test id has %d characters", len(id))
	}
	for _, name := range []string{"status", "get", "delete", "cancel"} {
		e, _ := quietEnv(nil)
		c := commandNamed(t, name)
		f := newFlags(e, c)
		c.define(f)
		pos, err := f.parseInterspersed([]string{id, "--server", "http://127.0.0.1:1", id[:10] + "-" + id[11:]})
		if err != nil || len(pos) != 2 || pos[0] != id {
			t.Errorf("imgmill %s %s --server URL ID2: positionals %q, %v; want both ids", name, id, pos, err)
		}
		if got := f.Lookup("server").Value.String(); got != "http://127.0.0.1:1" {
			t.Errorf("imgmill %s: --server = %q", name, got)
		}
	}
	// What is not an id's shape is still a flag.
	e, _ := quietEnv(nil)
	c := commandNamed(t, "status")
	f := newFlags(e, c)
	c.define(f)
	if _, err := f.parseInterspersed([]string{"-not-a-flag"}); err == nil {
		t.Error("an unknown short flag was taken for an id")
	}
}
