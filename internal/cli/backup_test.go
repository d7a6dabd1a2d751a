package cli_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgmill/imgmill/internal/cli"
	"github.com/imgmill/imgmill/internal/deploytest"
)

// fenceAttr is the extended attribute in which the file blob store keeps each image's fence.
const fenceAttr = "user.imgmill.fence"

// TestBackupRestore: imgmill backup copies a running serve's data directory; a serve started on the copy
// answers every task the original had, with the same results, under the same public ids, and goes on
// taking uploads.
func TestBackupRestore(t *testing.T) {
	data := t.TempDir()
	// A short lease: a task in progress when the backup is taken is claimed again on the copy once the
	// lease the original gave it lapses.
	args := []string{"--concurrency", "2", "--upload-rate", "0", "--lease", "6s", "--heartbeat", "1s"}
	server := "http://" + deploytest.ServeApp(t, nil, append([]string{"--data", data}, args...)...)[0]
	files, _ := writePatterns(t, t.TempDir(), 4)
	results := map[string][]byte{}
	var ids []string
	for _, file := range files[:3] {
		id := submitOne(t, server, file)
		out := filepath.Join(t.TempDir(), "result")
		if _, stderr, err := getResult(t, server, id, out, true); err != nil {
			t.Fatalf("get %s: %v\n%s", id, err, stderr)
		}
		result, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		results[id] = result
		ids = append(ids, id)
	}
	// Submitted just before the backup: finished, or not yet, when the snapshot is taken.
	late := submitOne(t, server, files[3])

	backup := filepath.Join(t.TempDir(), "backup")
	if _, _, err := imgmill(t, "backup", "--data", data); cli.ExitCode(err) != 2 {
		t.Fatalf("backup without --to: %v, want a usage error", err)
	}
	stdout, stderr, err := imgmill(t, "backup", "--data", data, "--to", backup)
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, stderr)
	}
	for _, want := range []string{"tasks.db\n", "kv.json\n", "public-id-secret\n", "backup complete: " + backup} {
		if !strings.Contains(stdout, want) {
			t.Errorf("backup printed %q; want it to name %q", stdout, want)
		}
	}
	if _, _, err := imgmill(t, "backup", "--data", data, "--to", backup); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("backup over an existing directory: %v, want a refusal", err)
	}
	if _, err := os.Stat(backup + ".partial"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the .partial directory is left over: %v", err)
	}
	checkImagesCopied(t, filepath.Join(data, "images"), filepath.Join(backup, "images"))

	restored := "http://" + deploytest.ServeApp(t, nil, append([]string{"--data", backup}, args...)...)[0]
	for _, id := range ids {
		out := filepath.Join(t.TempDir(), "result")
		if _, stderr, err := getResult(t, restored, id, out, false); err != nil {
			t.Fatalf("get %s from the restored copy: %v\n%s", id, err, stderr)
		}
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, results[id]) {
			t.Fatalf("result of %s from the restored copy differs (%d bytes, want %d; %v)", id, len(got), len(results[id]), err)
		}
	}
	out := filepath.Join(t.TempDir(), "late")
	if _, stderr, err := getResult(t, restored, late, out, true); err != nil {
		t.Fatalf("get %s (submitted just before the backup) from the restored copy: %v\n%s", late, err, stderr)
	}
	readPNG(t, out)
	id := submitOne(t, restored, files[0])
	if _, stderr, err := getResult(t, restored, id, filepath.Join(t.TempDir(), "new"), true); err != nil {
		t.Fatalf("a new upload on the restored copy: %v\n%s", err, stderr)
	}
}

// getResult runs imgmill get; the id goes after "--", since a public id may start with a dash.
func getResult(t *testing.T, server, id, out string, wait bool) (stdout, stderr string, err error) {
	t.Helper()
	return imgmill(t, "get", "--server", server, "-o", out, "--wait="+strconv.FormatBool(wait), "--", id)
}

// checkImagesCopied checks that every image of the copy is the original's, bytes and fence, and that
// every finished result was copied with a fence.
func checkImagesCopied(t *testing.T, orig, copied string) {
	t.Helper()
	var fenced int
	err := filepath.WalkDir(copied, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(copied, path)
		got, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		want, err := os.ReadFile(filepath.Join(orig, rel))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			t.Errorf("image %s: the copy differs from the original", rel)
		}
		if f, g := fence(t, filepath.Join(orig, rel)), fence(t, path); f != g {
			t.Errorf("image %s: fence %q in the copy, %q in the original", rel, g, f)
		} else if f != "" {
			fenced++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fenced < 3 {
		t.Fatalf("%d fenced images copied, want at least the 3 results", fenced)
	}
}

// fence is the fence attribute of the file at path, "" when it has none.
func fence(t *testing.T, path string) string {
	t.Helper()
	buf := make([]byte, 64)
	n, err := unix.Getxattr(path, fenceAttr, buf)
	if errors.Is(err, unix.ENODATA) {
		return ""
	}
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(buf[:n])
}
