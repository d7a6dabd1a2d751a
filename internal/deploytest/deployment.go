// Package deploytest runs imgmill deployments for system tests: every service as its own process (the
// test binary acting as imgmill, see Main), on the embedded engines or on PostgreSQL, MinIO and etcd, and
// the workloads and checks the system tests share.
package deploytest

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
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

// proc is one imgmill service running as its own process.
type proc struct {
	cmd  *exec.Cmd
	done <-chan struct{} // closed once it has exited
}

// SyncBuffer lets a process write its log while the test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Deployment is the split deployment: every service a separate process on loopback, started from the
// test binary acting as imgmill (see Main). kv and frontend keep fixed addresses (they are the entry
// points); database, storage and master take any free port and are found through the kv store, so a
// restarted one usually comes back somewhere else.
type Deployment struct {
	t testing.TB
	// Dir holds the services' data directories.
	Dir string
	// KVAddr is the kv service's address (a comma-separated list when there are several) and FEAddr
	// the frontend's.
	KVAddr, FEAddr string
	// HC is the client tests reach the services with.
	HC *http.Client
	// DBArgs are extra flags for the database (lease, attempts, ...).
	DBArgs []string
	// MasterArgs are extra flags for the master (--sweep-every, limits, ...).
	MasterArgs []string
	// Token, when set, is the shared secret every service gets through IMGMILL_TOKEN (and that HC must
	// then send).
	Token string

	mu    sync.Mutex
	procs map[string]*proc // the running process of each name
	all   []*proc          // every process started, replaced ones included
	args  map[string][]string
	logs  map[string]*SyncBuffer
}

// New makes an empty deployment with free addresses for the kv service and the frontend; every process
// it starts is killed when the test ends, or with the test binary if that dies first (see
// enginetest.TieToTest), and their logs are shown if the test failed.
func New(t testing.TB) *Deployment {
	t.Helper()
	addrs := enginetest.FreeAddrs(t, 2)
	d := &Deployment{t: t, Dir: t.TempDir(), KVAddr: addrs[0], FEAddr: addrs[1], HC: httpapi.NewClient(),
		procs: map[string]*proc{}, args: map[string][]string{}, logs: map[string]*SyncBuffer{}}
	t.Cleanup(func() {
		d.mu.Lock()
		all := d.all
		d.procs = map[string]*proc{}
		d.mu.Unlock()
		for _, p := range all {
			p.kill()
		}
		d.HC.CloseIdleConnections()
		if t.Failed() {
			for name, log := range d.logs {
				t.Logf("--- %s log ---\n%s", name, Tail(log.String(), 6000))
			}
		}
	})
	return d
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Start runs `imgmill args...` as the process called name (safe from any goroutine).
func (d *Deployment) Start(name string, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), childEnv+"=1", "IMGMILL_LOG_LEVEL=warn")
	if d.Token != "" {
		cmd.Env = append(cmd.Env, "IMGMILL_TOKEN="+d.Token)
	}
	d.mu.Lock()
	log := d.logs[name]
	if log == nil {
		log = &SyncBuffer{}
		d.logs[name] = log
	}
	d.mu.Unlock()
	fmt.Fprintf(log, "=== start %v\n", args)
	cmd.Stdout, cmd.Stderr = log, log
	exited, err := enginetest.StartTied(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: exited}
	d.mu.Lock()
	d.procs[name] = p
	d.all = append(d.all, p)
	d.args[name] = args
	d.mu.Unlock()
	return nil
}

func (d *Deployment) MustStart(name string, args ...string) {
	d.t.Helper()
	if err := d.Start(name, args...); err != nil {
		d.t.Fatal(err)
	}
}

// Restart starts name again with the arguments it last ran with.
func (d *Deployment) Restart(name string) error {
	d.mu.Lock()
	args := d.args[name]
	d.mu.Unlock()
	return d.Start(name, args...)
}

func (d *Deployment) take(name string) *proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[name]
	delete(d.procs, name)
	return p
}

// PID is the process id of a running service, or 0.
func (d *Deployment) PID(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if p := d.procs[name]; p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// Log returns what the service called name has logged so far.
func (d *Deployment) Log(name string) string {
	d.mu.Lock()
	l := d.logs[name]
	d.mu.Unlock()
	if l == nil {
		return ""
	}
	return l.String()
}

// Signal sends sig to a running service (SIGSTOP, SIGCONT: pause and resume it).
func (d *Deployment) Signal(name string, sig syscall.Signal) {
	d.t.Helper()
	if pid := d.PID(name); pid == 0 {
		d.t.Fatalf("signal %v to %s, which is not running", sig, name)
	} else if err := syscall.Kill(pid, sig); err != nil {
		d.t.Fatalf("signal %v to %s: %v", sig, name, err)
	}
}

// Kill ends a service with SIGKILL, as a crash would, and waits for it to be gone.
func (d *Deployment) Kill(name string) {
	if p := d.take(name); p != nil {
		p.kill()
	}
}

// kill ends p with SIGKILL, unless it has exited already, and waits for it to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop ends a service with SIGTERM and checks it shuts down cleanly.
func (d *Deployment) Stop(name string) {
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

// StartKV starts the kv service and waits until it answers; it returns how long that took: how long a
// service takes to (re)start on this machine, as busy as it is now.
func (d *Deployment) StartKV() time.Duration {
	d.t.Helper()
	start := time.Now()
	d.MustStart("kv", "kv", "--addr", d.KVAddr, "--data", filepath.Join(d.Dir, "kv"))
	d.WaitServing(d.KVAddr)
	return time.Since(start)
}

// StartBackends starts kv (unless StartKV did), the database (with DBArgs), storage and master, and
// waits until they are ready.
func (d *Deployment) StartBackends() {
	d.t.Helper()
	if d.PID("kv") == 0 {
		d.MustStart("kv", "kv", "--addr", d.KVAddr, "--data", filepath.Join(d.Dir, "kv"))
	}
	d.MustStart("database", append([]string{"database", "--addr", "127.0.0.1:0", "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "db")}, d.DBArgs...)...)
	d.MustStart("storage", "storage", "--addr", "127.0.0.1:0", "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "storage"))
	d.MustStart("master", append([]string{"master", "--addr", "127.0.0.1:0", "--kv", d.KVAddr}, d.MasterArgs...)...)
	d.WaitReady()
}

func (d *Deployment) StartWorker(name string, extra ...string) {
	d.t.Helper()
	d.MustStart(name, append([]string{"worker", "--kv", d.KVAddr, "--concurrency", "2"}, extra...)...)
}

func (d *Deployment) StartFrontend() {
	d.t.Helper()
	// No upload rate limit: the tests' many clients all upload from loopback.
	d.MustStart("frontend", "frontend", "--addr", d.FEAddr, "--kv", d.KVAddr, "--upload-rate", "0",
		"--data", filepath.Join(d.Dir, "frontend"))
}

func (d *Deployment) WaitReady() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := allinone.WaitReady(ctx, d.KVAddr, httpapi.WithToken(d.Token)); err != nil {
		d.t.Fatal(err)
	}
}

// Master returns a client of the master as registered in the kv store.
func (d *Deployment) Master() *client.Master {
	return client.NewMaster(d.HC, client.NewResolver(client.NewKV(d.HC, d.KVAddr), wire.MasterKey, time.Second))
}

// Database returns a client of the database as registered in the kv store.
func (d *Deployment) Database() *client.Database {
	return client.NewDatabase(d.HC, client.NewResolver(client.NewKV(d.HC, d.KVAddr), wire.DatabaseKey, time.Second))
}

// Storage returns a client of the storage as registered in the kv store.
func (d *Deployment) Storage() *client.Storage {
	return client.NewStorage(d.HC, client.NewResolver(client.NewKV(d.HC, d.KVAddr), wire.StorageKey, time.Second))
}

// WaitServing waits until the services at addrs answer /healthz with 200, for as long as the test has
// (see Within), and fails the test at once should a process of the deployment end meanwhile.
func (d *Deployment) WaitServing(addrs ...string) {
	d.t.Helper()
	ctx, cancel := Within(d.t, time.Hour)
	defer cancel()
	for _, addr := range addrs {
		WaitFor(d.t, ctx, addr+" healthy", func() bool {
			if name, state := d.anyExited(); name != "" {
				d.t.Fatalf("%s exited (%s) while waiting for %s to serve", name, state, addr)
			}
			return client.CheckHealth(ctx, d.HC, addr) == nil
		})
	}
}

// anyExited names a process of the deployment that has ended by itself and says how, or returns "".
func (d *Deployment) anyExited() (name, state string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, p := range d.procs {
		select {
		case <-p.done:
			return name, p.cmd.ProcessState.String()
		default:
		}
	}
	return "", ""
}

// Exited reports whether the process called name has ended by itself (one that was never started or was
// killed by the test has not).
func (d *Deployment) Exited(name string) bool {
	d.mu.Lock()
	p := d.procs[name]
	d.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// RegisteredMaster returns the address the master registered in the kv store.
func (d *Deployment) RegisteredMaster() string {
	d.t.Helper()
	addr, err := client.NewKV(d.HC, d.KVAddr).Get(d.t.Context(), wire.MasterKey)
	if err != nil {
		d.t.Fatalf("master address: %v", err)
	}
	return addr
}
