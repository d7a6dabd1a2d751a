package cli_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/cli"
	"github.com/imgmill/imgmill/internal/deploytest"
)

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
// every finished result was copied with a fence. The original is in use by a running serve, so it is
// read through a second copy taken now: an image only changes by being deleted.
func checkImagesCopied(t *testing.T, orig, copied string) {
	t.Helper()
	ctx := t.Context()
	now := filepath.Join(t.TempDir(), "now")
	if _, _, err := fileblob.Copy(ctx, orig, now); err != nil {
		t.Fatal(err)
	}
	open := func(dir string) *fileblob.Store {
		s, err := fileblob.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	copyStore, nowStore := open(copied), open(now)
	read := func(s *fileblob.Store, key string) ([]byte, int64, error) {
		b, err := s.Open(ctx, key)
		if err != nil {
			return nil, 0, err
		}
		defer b.Close()
		data, err := io.ReadAll(b)
		return data, b.Fence, err
	}
	var fenced, images int
	for e, err := range copyStore.List(ctx, "", "") {
		if err != nil {
			t.Fatal(err)
		}
		images++
		got, gotFence, err := read(copyStore, e.Key)
		if err != nil {
			t.Fatal(err)
		}
		want, wantFence, err := read(nowStore, e.Key)
		if errors.Is(err, blobstore.ErrNotFound) {
			continue // deleted since the backup
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("image %s: the copy differs from the original", e.Key)
		}
		if gotFence != wantFence {
			t.Errorf("image %s: fence %d in the copy, %d in the original", e.Key, gotFence, wantFence)
		} else if gotFence != 0 {
			fenced++
		}
	}
	if fenced < 3 {
		t.Fatalf("%d fenced images copied (of %d), want at least the 3 results", fenced, images)
	}
}
