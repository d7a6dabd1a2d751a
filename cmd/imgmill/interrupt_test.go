package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
)

// TestSubmitInterruptedBySIGINT: Ctrl-C during submit --wait exits 130 and says once which task keeps
// running on the server, without calling it failed.
func TestSubmitInterruptedBySIGINT(t *testing.T) {
	// A server whose task stays queued: submit --wait waits until interrupted.
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/tasks", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"id":"Q1","status":"queued"}`)
	})
	mux.HandleFunc("GET /api/tasks/{id}", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"id":"Q1","state":"queued","op":"swap","attempts":0,"maxAttempts":3}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "a.png")
	if err := os.WriteFile(file, []byte("\x89PNG not really"), 0o644); err != nil {
		t.Fatal(err)
	}

	var out deploytest.SyncBuffer
	cmd, exited := start(t, &out, "submit", "--wait", "--server", srv.URL, "--out", t.TempDir(), file)
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(out.String(), "submitted as task Q1") {
		if time.Now().After(deadline) {
			t.Fatalf("submit did not upload within a minute:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatalf("submit did not stop within a minute of SIGINT:\n%s", out.String())
	}
	got := out.String()
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Errorf("exit code %d after SIGINT, want 130:\n%s", code, got)
	}
	if strings.Count(got, "interrupted: 1 task keeps running on the server: Q1") != 1 || strings.Contains(got, "failed") || strings.Contains(got, "context canceled") {
		t.Errorf("output after SIGINT:\n%s", got)
	}
	if !strings.Contains(got, file+"\tQ1\tinterrupted: the task keeps running on the server\n") {
		t.Errorf("no FILE<tab>ID<tab>interrupted line:\n%s", got)
	}
}
