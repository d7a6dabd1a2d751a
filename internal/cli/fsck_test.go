package cli_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/cli"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/consistency"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestFsck: imgmill fsck finds the services through --kv, reports a finished task whose images are lost
// and an image no task has, exits 1, repairs both with --repair, and then finds nothing.
func TestFsck(t *testing.T) {
	const token = "fsck-test-token-long-enough-for-the-check"
	addrs := deploytest.ServeApp(t, nil, "--token", token, "--orphan-sweep-every", "0")
	kv := addrs[1]
	hc := httpapi.NewClient(httpapi.WithToken(token))
	t.Cleanup(hc.CloseIdleConnections)
	ctx := t.Context()
	db := client.NewDatabase(hc, client.Static(addrs[2]))
	st := client.NewStorage(hc, client.Static(addrs[3]))

	fsck := func(args ...string) (string, error) {
		t.Helper()
		stdout, stderr, err := imgmill(t, append([]string{"fsck", "--kv", kv, "--token", token}, args...)...)
		if err != nil && cli.ExitCode(err) != 1 {
			t.Fatalf("fsck %q: %v\n%s", args, err, stderr)
		}
		return stdout, err
	}
	if out, err := fsck(); err != nil || !strings.Contains(out, "no problems found") {
		t.Fatalf("fsck of an empty app: %v\n%s", err, out)
	}

	// A finished task whose images are gone (pending until set, so that no worker claims it), and an
	// image beyond every task.
	id, err := db.NewTask(ctx, client.NewTaskParams{Pending: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.SetByID(ctx, wire.Task{ID: id, State: wire.Finished}); err != nil {
		t.Fatal(err)
	}
	if err := st.SendImage(ctx, id+5, wire.WorkingImage, strings.NewReader("stray"), 5); err != nil {
		t.Fatal(err)
	}

	out, err := fsck("--orphan-grace", "1ns")
	t.Logf("fsck:\n%s", out)
	if err == nil || !strings.Contains(out, "source missing") || !strings.Contains(out, "ahead of the database") ||
		!strings.Contains(out, "2 problems found") {
		t.Errorf("fsck found %v:\n%s\nwant exit 1, the task's lost source and the image ahead", err, out)
	}

	out, err = fsck("--orphan-grace", "1ns", "--repair", "--json")
	if err != nil {
		t.Errorf("fsck --repair: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last struct{ Summary consistency.Summary }
	if err := json.NewDecoder(bytes.NewReader([]byte(lines[len(lines)-1]))).Decode(&last); err != nil {
		t.Fatalf("last line of fsck --json %q: %v", lines[len(lines)-1], err)
	}
	if last.Summary.Removed != 1 || last.Summary.Repaired != 1 || last.Summary.Unresolved() != 0 {
		t.Errorf("fsck --repair summary %+v, want 1 image removed and 1 task repaired", last.Summary)
	}
	task, err := db.GetByID(ctx, id)
	if err != nil || task.State != wire.Failed || task.Error != consistency.BothLostError {
		t.Errorf("task after the repair: %+v, %v; want failed with %q", task, err, consistency.BothLostError)
	}
	if out, err := fsck("--orphan-grace", "1ns"); err != nil || !strings.Contains(out, "no problems found") {
		t.Errorf("fsck after the repair: %v\n%s", err, out)
	}
	if _, _, err := imgmill(t, "fsck", "--kv", kv, "--token", token, "--orphan-grace", "0"); cli.ExitCode(err) != 2 {
		t.Errorf("fsck --orphan-grace 0: %v, want a usage error", err)
	}
}
