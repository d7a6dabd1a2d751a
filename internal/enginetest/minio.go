package enginetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// minioModule is what go install builds when no minio program is found.
const minioModule = "github.com/minio/minio@latest"

// MinIO is a throwaway MinIO server started by StartMinIO. Its methods are safe for concurrent use.
type MinIO struct {
	// AccessKey and SecretKey are the root credentials, generated for this server.
	AccessKey, SecretKey string
	// Dir holds the server's data.
	Dir string

	endpoint string
	buckets  atomic.Int64
	suffix   string
	// cmd is what starts the server (bin, args, env), again on Restart; logDir gets the logs.
	bin, logDir string
	args, env   []string

	mu     sync.Mutex
	proc   *Process
	starts int // for the log file names: a restart keeps the earlier logs
}

// StartMinIO starts a MinIO server on free loopback ports with its data in a temporary directory, and
// stops it when t ends. The minio program comes from $PATH or the Go bin directory; when it is in
// neither, it is built with go install (minutes), and when that is impossible the test is skipped (see
// Unavailable).
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	skipShort(t, "MinIO")
	bin, err := minioProgram(t)
	if err != nil {
		Unavailable(t, "MinIO", err)
		return nil
	}
	dir := t.TempDir()
	m := &MinIO{
		AccessKey: "imgmill-" + minioRandomHex(t, 4),
		SecretKey: minioRandomHex(t, 16),
		Dir:       filepath.Join(dir, "data"),
		suffix:    minioRandomHex(t, 4),
		bin:       bin,
		logDir:    dir,
	}
	addr := FreeAddr(t)
	m.endpoint = "http://" + addr
	m.args = []string{"server", m.Dir,
		"--address", addr,
		"--console-address", FreeAddr(t),
		// Not ~/.minio: the test leaves nothing behind.
		"--certs-dir", filepath.Join(dir, "certs"),
		"--quiet"}
	m.env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.AccessKey,
		"MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_UPDATE=off",
	)
	m.start(t)
	return m
}

// start starts the server process and waits until it serves S3 requests.
func (m *MinIO) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(m.bin, m.args...)
	cmd.Env = m.env
	m.mu.Lock()
	m.starts++
	log := "minio.log"
	if m.starts > 1 {
		log = fmt.Sprintf("minio.%d.log", m.starts)
	}
	m.proc = Start(t, cmd, filepath.Join(m.logDir, log))
	m.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	if err := m.waitLive(deadline); err != nil {
		t.Fatalf("MinIO: %v", err)
	}
	if err := m.waitS3(deadline); err != nil {
		t.Fatalf("MinIO: %v", err)
	}
}

// minioProgram finds the minio program, installing it with go install when it is missing.
func minioProgram(t testing.TB) (string, error) {
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	binDir, err := minioBinDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "minio")
	if p, ok := firstExisting(bin); ok {
		return p, nil
	}
	err = withInstallLock(func() error {
		if _, ok := firstExisting(bin); ok {
			return nil // another test binary built it while we waited
		}
		t.Logf("MinIO not found: building it with go install %s into %s; this takes 3-4 minutes", minioModule, binDir)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		out, err := combinedOutputTied(exec.CommandContext(ctx, "go", "install", minioModule))
		if err != nil {
			return fmt.Errorf("go install %s: %w: %s", minioModule, err, tail(out))
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if p, ok := firstExisting(bin); ok {
		return p, nil
	}
	return "", fmt.Errorf("go install %s succeeded but %s is missing", minioModule, bin)
}

// minioBinDir is where go install puts programs: $GOBIN, else the first GOPATH entry's bin.
func minioBinDir() (string, error) {
	if _, err := exec.LookPath("go"); err != nil {
		return "", errors.New("minio not on $PATH and no Go toolchain to build it")
	}
	out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output()
	if err != nil {
		return "", fmt.Errorf("go env: %w", err)
	}
	lines := strings.Split(string(out), "\n")
	if len(lines) >= 1 && strings.TrimSpace(lines[0]) != "" {
		return strings.TrimSpace(lines[0]), nil
	}
	if len(lines) >= 2 {
		if gopath := strings.TrimSpace(lines[1]); gopath != "" {
			return filepath.Join(filepath.SplitList(gopath)[0], "bin"), nil
		}
	}
	return "", errors.New("go env names neither GOBIN nor GOPATH")
}

// waitLive waits until the server's liveness probe says it serves, the server exits, or deadline passes.
func (m *MinIO) waitLive(deadline time.Time) error {
	proc := m.Process()
	client := &http.Client{Timeout: time.Second}
	// Without keep-alives no idle connection outlives the wait.
	client.Transport = &http.Transport{DisableKeepAlives: true}
	var last error
	for {
		resp, err := client.Get(m.endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			// Live answers 200 as soon as the server listens, flagging in a header that it cannot
			// serve S3 requests yet (503 XMinioServerNotInitialized).
			status := resp.Header.Get("X-Minio-Server-Status")
			if resp.StatusCode == http.StatusOK && status != "unavailable" {
				return nil
			}
			err = fmt.Errorf("liveness probe answered %s (server status %q)", resp.Status, status)
		}
		last = err
		select {
		case <-proc.Exited():
			return fmt.Errorf("minio exited before it was live (see %s)", proc.Log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("minio not live at %s: %w", m.endpoint, last)
		}
	}
}

// waitS3 waits until the server answers a signed S3 request. Being live is not enough: for a while
// after, MinIO still answers 503 XMinioServerNotInitialized while it sets up IAM and its configuration.
func (m *MinIO) waitS3(deadline time.Time) error {
	proc := m.Process()
	tr := &http.Transport{DisableKeepAlives: true}
	client, err := minio.New(strings.TrimPrefix(m.endpoint, "http://"), &minio.Options{
		Creds:      credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		Transport:  tr,
		MaxRetries: 1, // this loop retries
	})
	if err != nil {
		return err
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.ListBuckets(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-proc.Exited():
			return fmt.Errorf("minio exited before it served S3 requests (see %s)", proc.Log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("minio at %s does not serve S3 requests: %w", m.endpoint, err)
		}
	}
}

// Endpoint returns the server's S3 endpoint, http://127.0.0.1:PORT.
func (m *MinIO) Endpoint() string { return m.endpoint }

// URL returns the s3:// URL of bucket on this server with its credentials, as s3blob.ParseURL reads it.
func (m *MinIO) URL(bucket string) string {
	q := url.Values{}
	q.Set("endpoint", m.endpoint)
	q.Set("access_key", m.AccessKey)
	q.Set("secret_key", m.SecretKey)
	return (&url.URL{Scheme: "s3", Host: bucket, RawQuery: q.Encode()}).String()
}

// NewBucket returns a bucket name not used before on this server (the bucket is not created), so that
// each test gets an empty store.
func (m *MinIO) NewBucket(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("test-%s-%d", m.suffix, m.buckets.Add(1))
}

// Stop ends the server gracefully and waits for it.
func (m *MinIO) Stop() { m.Process().Stop() }

// Kill ends the server at once (a crash) and waits for it.
func (m *MinIO) Kill() { m.Process().Kill() }

// Pause freezes the server (SIGSTOP): it keeps its port, so clients connect but get no answer and time
// out, as with a hung server. Resume continues it.
func (m *MinIO) Pause() { m.Process().Pause() }

// Resume continues a server that Pause froze.
func (m *MinIO) Resume() { m.Process().Resume() }

// Restart stops the server if it still runs (gracefully) and starts it again with the same endpoint,
// credentials and data, and waits until it serves S3 requests, as a server coming back after an outage.
// The new process is stopped when t ends.
func (m *MinIO) Restart(t testing.TB) {
	t.Helper()
	m.Stop()
	m.start(t)
}

// Process returns the server's current process (a new one after Restart).
func (m *MinIO) Process() *Process {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc
}

func minioRandomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}
