package cli

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	stdout, _, err := runCLI(t, nil, "version")
	if err != nil || !strings.HasPrefix(stdout, "imgmill ") || !strings.Contains(stdout, "\ngo       go1.") {
		t.Errorf("version: %v, stdout %q", err, stdout)
	}
	// What a binary built in a checkout carries, printed a line each.
	var b bytes.Buffer
	writeVersion(&b, &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}, Settings: []debug.BuildSetting{
		{Key: "-trimpath", Value: "true"}, {Key: "vcs.modified", Value: "true"},
		{Key: "vcs.revision", Value: "e0843e1d"}, {Key: "vcs.time", Value: "2026-12-07T14:00:00Z"},
	}})
	want := "imgmill v1.4.0\nrevision e0843e1d\ntime     2026-12-07T14:00:00Z\nmodified true\ngo       go1.26.8\n"
	if b.String() != want {
		t.Errorf("version printed\n%s\nwant\n%s", b.String(), want)
	}
}
