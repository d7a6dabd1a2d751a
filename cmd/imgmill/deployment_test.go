package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/allinone"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
)

// proc is one imgmill service running as its own process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// syncBuffer lets a process write its log while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.Buffer.String()
}

// deployment is the split deployment: every service a separate process on loopback, started from the
// test binary acting as imgmill. kv and frontend keep fixed addresses (they are the entry points);
// database, storage and master take any free port and are found through the kv store, so a restarted
// one usually comes back somewhere else.
type deployment struct {
	t      testing.TB
	dir    string
	kvAddr string
	feAddr string
	hc     *http.Client
	// dbArgs are extra flags for the database (lease, attempts, ...).
	dbArgs []string
	// token, when set, is the shared secret every service gets through IMGMILL_TOKEN (and that hc must
	// then send: see newTokenDeployment).
	token string

	mu       sync.Mutex
	procs    map[string]*proc
	args     map[string][]string
	logs     map[string]*syncBuffer
	children sync.WaitGroup
}

func newDeployment(t testing.TB) *deployment {
	t.Helper()
	addrs, err := allinone.FreeAddrs(2)
	if err != nil {
		t.Fatal(err)
	}
	d := &deployment{t: t, dir: t.TempDir(), kvAddr: addrs[0], feAddr: addrs[1], hc: httpapi.NewClient(),
		procs: map[string]*proc{}, args: map[string][]string{}, logs: map[string]*syncBuffer{}}
	t.Cleanup(func() {
		d.mu.Lock()
		names := make([]string, 0, len(d.procs))
		for name := range d.procs {
			names = append(names, name)
		}
		d.mu.Unlock()
		for _, name := range names {
			d.kill(name)
		}
		d.children.Wait()
		d.hc.CloseIdleConnections()
		if t.Failed() {
			for name, log := range d.logs {
				t.Logf("--- %s log ---\n%s", name, tail(log.String(), 6000))
			}
		}
	})
	return d
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// start runs `imgmill args...` as the process called name (safe from any goroutine).
func (d *deployment) start(name string, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), childEnv+"=1", "IMGMILL_LOG_LEVEL=warn")
	if d.token != "" {
		cmd.Env = append(cmd.Env, "IMGMILL_TOKEN="+d.token)
	}
	d.mu.Lock()
	log := d.logs[name]
	if log == nil {
		log = &syncBuffer{}
		d.logs[name] = log
	}
	d.mu.Unlock()
	fmt.Fprintf(log, "=== start %v\n", args)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	d.children.Add(1)
	go func() {
		defer d.children.Done()
		cmd.Wait()
		close(p.done)
	}()
	d.mu.Lock()
	d.procs[name] = p
	d.args[name] = args
	d.mu.Unlock()
	return nil
}

func (d *deployment) mustStart(name string, args ...string) {
	d.t.Helper()
	if err := d.start(name, args...); err != nil {
		d.t.Fatal(err)
	}
}

// restart starts name again with the arguments it last ran with.
func (d *deployment) restart(name string) error {
	d.mu.Lock()
	args := d.args[name]
	d.mu.Unlock()
	return d.start(name, args...)
}

func (d *deployment) take(name string) *proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[name]
	delete(d.procs, name)
	return p
}

// pid is the process id of a running service, or 0.
func (d *deployment) pid(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.procs[name]; p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// kill ends a service with SIGKILL, as a crash would, and waits for it to be gone.
func (d *deployment) kill(name string) {
	if p := d.take(name); p != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// stop ends a service with SIGTERM and checks it shuts down cleanly.
func (d *deployment) stop(name string) {
	d.t.Helper()
	p := d.take(name)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		d.t.Fatalf("%s did not stop within 40s of SIGTERM", name)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Errorf("%s exited with %d after SIGTERM", name, code)
	}
}

func (d *deployment) startBackends() {
	d.t.Helper()
	d.mustStart("kv", "kv", "--addr", d.kvAddr, "--data", filepath.Join(d.dir, "kv"))
	d.mustStart("database", append([]string{"database", "--addr", "127.0.0.1:0", "--kv", d.kvAddr, "--data", filepath.Join(d.dir, "db")}, d.dbArgs...)...)
	d.mustStart("storage", "storage", "--addr", "127.0.0.1:0", "--kv", d.kvAddr, "--data", filepath.Join(d.dir, "storage"))
	d.mustStart("master", "master", "--addr", "127.0.0.1:0", "--kv", d.kvAddr)
	d.waitReady()
}

func (d *deployment) startWorker(name string, extra ...string) {
	d.t.Helper()
	d.mustStart(name, append([]string{"worker", "--kv", d.kvAddr, "--concurrency", "2"}, extra...)...)
}

func (d *deployment) startFrontend() {
	d.t.Helper()
	// No upload rate limit: the tests' many clients all upload from loopback.
	d.mustStart("frontend", "frontend", "--addr", d.feAddr, "--kv", d.kvAddr, "--upload-rate", "0")
}

func (d *deployment) waitReady() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := allinone.WaitReady(ctx, d.kvAddr, httpapi.WithToken(d.token)); err != nil {
		d.t.Fatal(err)
	}
}

// master returns a client of the master as registered in the kv store.
func (d *deployment) master() *client.Master {
	return client.NewMaster(d.hc, client.NewResolver(client.NewKV(d.hc, d.kvAddr), client.MasterKey, time.Second))
}

// database returns a client of the database as registered in the kv store.
func (d *deployment) database() *client.Database {
	return client.NewDatabase(d.hc, client.NewResolver(client.NewKV(d.hc, d.kvAddr), client.DatabaseKey, time.Second))
}

// storage returns a client of the storage as registered in the kv store.
func (d *deployment) storage() *client.Storage {
	return client.NewStorage(d.hc, client.NewResolver(client.NewKV(d.hc, d.kvAddr), client.StorageKey, time.Second))
}
