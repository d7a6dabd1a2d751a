package enginetest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// etcdStartTimeout bounds how long a member (or a whole cluster) may take to become healthy.
const etcdStartTimeout = time.Minute

// EtcdCluster is a throwaway etcd cluster started by StartEtcd.
type EtcdCluster struct {
	members []*EtcdMember
}

// EtcdMember is one member of an EtcdCluster. Its methods are safe for concurrent use.
type EtcdMember struct {
	bin, name, dir string
	clientAddr     string // host:port of its client URL
	args           []string

	mu     sync.Mutex
	proc   *Process
	starts int // for the log file names: a restart keeps the earlier logs
}

// StartEtcd starts a cluster of members etcd members (1 or more) on free loopback ports, each with its
// own data directory under a temporary directory, waits until every member is healthy, and stops them
// when t ends. etcd comes from $PATH or /usr/bin/etcd, or is installed from Debian's etcd-server; when
// that is impossible the test is skipped (failed under CI=true).
//
// The members keep etcd's default heartbeat (100ms) and election timeout (1s): a killed leader is
// replaced within about two seconds, and the smallest lease TTL is 2s, as in production.
func StartEtcd(t testing.TB, members int) *EtcdCluster {
	t.Helper()
	if members < 1 {
		t.Fatalf("StartEtcd: %d members", members)
	}
	skipShort(t, "etcd")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // apt-get may be slow
	defer cancel()
	bin, err := DebianProgram(ctx, "etcd-server", "etcd", "/usr/bin/etcd")
	if err != nil {
		Unavailable(t, "etcd", err)
	}

	dir := t.TempDir()
	// Two addresses per member, all distinct: FreeAddr closes its listener, so it could hand out a port
	// twice.
	used := make(map[string]bool)
	freeAddr := func() string {
		for {
			if a := FreeAddr(t); !used[a] {
				used[a] = true
				return a
			}
		}
	}
	// Unique, so that a member never joins another test's cluster on a reused port.
	token := fmt.Sprintf("imgmill-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	c := &EtcdCluster{}
	peers := make([]string, members)
	for i := range members {
		m := &EtcdMember{bin: bin, name: fmt.Sprintf("member%d", i+1), dir: dir, clientAddr: freeAddr()}
		peerURL := "http://" + freeAddr()
		peers[i] = m.name + "=" + peerURL
		clientURL := "http://" + m.clientAddr
		m.args = []string{
			"--name", m.name,
			"--data-dir", filepath.Join(dir, m.name),
			"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster-state", "new", "--initial-cluster-token", token,
			"--logger", "zap", "--log-outputs", "stderr",
		}
		c.members = append(c.members, m)
	}
	initial := strings.Join(peers, ",")
	for _, m := range c.members {
		// Ignored on a restart: the data directory then says who the members are.
		m.args = append(m.args, "--initial-cluster", initial)
		m.start(t)
	}
	// The members must all be up before any is healthy: a member serves clients only once the cluster
	// has a quorum.
	for _, m := range c.members {
		if err := m.waitHealthy(etcdStartTimeout); err != nil {
			t.Fatalf("etcd cluster of %d: %v", members, err)
		}
	}
	return c
}

// Endpoints returns the members' client addresses, host:port.
func (c *EtcdCluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientAddr
	}
	return eps
}

// URL returns the cluster as imgmill's --kv flag takes it: etcd://HOST:PORT,HOST:PORT,...
func (c *EtcdCluster) URL() string { return "etcd://" + strings.Join(c.Endpoints(), ",") }

// Member returns member i (from 0).
func (c *EtcdCluster) Member(i int) *EtcdMember { return c.members[i] }

// Endpoint returns the member's client address, host:port.
func (m *EtcdMember) Endpoint() string { return m.clientAddr }

// Kill ends the member with SIGKILL, as a crash, and waits for it to exit.
func (m *EtcdMember) Kill() {
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	p.Kill()
}

// Restart starts a killed member again, on its data directory and ports, and waits until it has
// rejoined the cluster (it is healthy: it has a leader and answers). The new process is stopped when t
// ends.
func (m *EtcdMember) Restart(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	select {
	case <-p.Exited():
	default:
		t.Fatalf("restart of etcd %s, which is running", m.name)
	}
	m.start(t)
	if err := m.waitHealthy(etcdStartTimeout); err != nil {
		t.Fatalf("restart: %v", err)
	}
}

func (m *EtcdMember) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(m.bin, m.args...)
	// etcd reads ETCD_* variables as flags: keep the machine's out of the test cluster.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if runtime.GOARCH != "amd64" {
		// etcd 3.4 refuses to start on other architectures without it (3.5 supports arm64 and ignores it).
		cmd.Env = append(cmd.Env, "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.starts++
	m.proc = Start(t, cmd, filepath.Join(m.dir, fmt.Sprintf("%s.%d.log", m.name, m.starts)))
}

// waitHealthy waits until the member's /health says it is healthy: etcd answers true once the member has
// a leader and a request through raft succeeded.
func (m *EtcdMember) waitHealthy(timeout time.Duration) error {
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	// No keep-alive: an idle connection's goroutines would outlive the test (goleak).
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		resp, err := client.Get("http://" + m.clientAddr + "/health")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"health":"true"`) {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, body)
		} else {
			last = err.Error()
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("etcd %s exited (see %s)", m.name, p.Log)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd %s not healthy after %v: %s (see %s)", m.name, timeout, last, p.Log)
		}
	}
}
