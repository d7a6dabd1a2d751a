package enginetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// StartPostgresOptions configures StartPostgresWith.
type StartPostgresOptions struct {
	// Durable keeps fsync, synchronous commit and full-page writes on, for tests that kill the server
	// and check what survived. Otherwise they are off: a crash of the machine could lose data, a kill of
	// the server cannot, and the suites run several times faster.
	Durable bool
}

// Postgres is a throwaway PostgreSQL server started by StartPostgres: trust authentication, reachable
// only on its loopback port (and a unix socket in its private directory), as superuser postgres.
type Postgres struct {
	Addr string // 127.0.0.1:port
	Dir  string // its temporary directory: data/, sock/ and the log

	bin  string              // the directory of postgres and initdb
	args []string            // postgres' command line, for Restart
	cred *syscall.Credential // the postgres user when we are root; nil otherwise
	// createOpts go after CREATE DATABASE: with fsync off, STRATEGY FILE_COPY (PostgreSQL 15 on) takes
	// a third of the default's time.
	createOpts string
	proc       *Process
	starts     int          // numbers the log files, so a restart keeps the log of the crash
	seq        atomic.Int64 // numbers the databases NewDatabase creates
}

// StartPostgres starts a throwaway PostgreSQL server with fsync off, for the duration of t. See
// StartPostgresWith.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	return StartPostgresWith(t, StartPostgresOptions{})
}

// StartPostgresWith starts a throwaway PostgreSQL server (Debian's postgresql package, installed when
// missing and possible) in a temporary directory, waits until it accepts connections, and stops it and
// removes the directory when t ends. When PostgreSQL cannot be provisioned it ends t via Unavailable.
func StartPostgresWith(t testing.TB, opts StartPostgresOptions) *Postgres {
	t.Helper()
	skipShort(t, "PostgreSQL")
	// Installing the package may take minutes; the rest takes seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	postgres, err := DebianProgram(ctx, "postgresql", "/usr/lib/postgresql/*/bin/postgres")
	if err != nil {
		Unavailable(t, "PostgreSQL", err)
	}
	p := &Postgres{bin: filepath.Dir(postgres)}

	// initdb and postgres refuse to run as root: run them as the postgres user the package created.
	// Credential rather than runuser keeps postgres itself our child, so signals reach it directly.
	owner := func(string) error { return nil }
	if os.Geteuid() == 0 {
		uid, gid, err := lookupUser("postgres")
		if err != nil {
			Unavailable(t, "PostgreSQL", err)
		}
		p.cred = &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}
		owner = func(path string) error { return os.Chown(path, int(uid), int(gid)) }
	}

	// Not t.TempDir: its parent directories are private to root, so the postgres user could not reach
	// its own data directory.
	p.Dir, err = os.MkdirTemp("", "imgmill-postgres-")
	if err != nil {
		t.Fatalf("postgres temp dir: %v", err)
	}
	// Registered before the server starts, so it runs after the server has stopped.
	t.Cleanup(func() { os.RemoveAll(p.Dir) })
	data, sock := filepath.Join(p.Dir, "data"), filepath.Join(p.Dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		t.Fatalf("postgres socket dir: %v", err)
	}
	for _, d := range []string{p.Dir, sock} {
		if err := owner(d); err != nil {
			Unavailable(t, "PostgreSQL", fmt.Errorf("chown %s to postgres: %w", d, err))
		}
	}

	initdb := exec.CommandContext(ctx, filepath.Join(p.bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir = p.Dir // the postgres user may not be allowed into our working directory
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	if out, err := combinedOutputTied(initdb); err != nil {
		Unavailable(t, "PostgreSQL", fmt.Errorf("initdb: %w: %s", err, tail(out)))
	}

	settings := []string{
		"listen_addresses=127.0.0.1",
		"unix_socket_directories=" + sock,
		// Room for many pools: tests run stores side by side, several instances each.
		"max_connections=300",
	}
	if !opts.Durable {
		settings = append(settings, "fsync=off", "synchronous_commit=off", "full_page_writes=off")
	}
	p.args = []string{"-D", data}
	for _, s := range settings {
		p.args = append(p.args, "-c", s)
	}

	// The port comes from FreeAddr and another process may take it first; then postgres exits at once
	// and a new port is tried.
	for try := 1; ; try++ {
		p.Addr = FreeAddr(t)
		err := p.start(t)
		if err == nil {
			if !opts.Durable && p.version(t) >= 15_00_00 {
				p.createOpts = " STRATEGY FILE_COPY"
			}
			return p
		}
		if try == 3 {
			t.Fatalf("start postgres: %v", err)
		}
	}
}

// lookupUser returns the uid and gid of a system user.
func lookupUser(name string) (uid, gid uint32, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("running as root needs a %s user to run PostgreSQL as: %w", name, err)
	}
	id, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("uid of %s: %w", name, err)
	}
	g, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("gid of %s: %w", name, err)
	}
	return uint32(id), uint32(g), nil
}

// start starts postgres on p.Addr and waits until it accepts connections.
func (p *Postgres) start(t testing.TB) error {
	t.Helper()
	_, port, err := net.SplitHostPort(p.Addr)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(p.bin, "postgres"), append(p.args, "-p", port)...)
	cmd.Dir = p.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	p.starts++
	p.proc = Start(t, cmd, filepath.Join(p.Dir, fmt.Sprintf("postgres-%d.log", p.starts)))
	// Start's cleanup stops with SIGTERM, PostgreSQL's smart shutdown, which waits for every client
	// to disconnect; this one runs first and asks for a fast shutdown.
	proc := p.proc
	t.Cleanup(func() { stopFast(proc) })
	if err := p.waitReady(60 * time.Second); err != nil {
		stopFast(proc)
		return err
	}
	return nil
}

// waitReady waits until the server accepts a session (not just the TCP connection: it refuses
// sessions while it starts up or recovers), the process exits, or timeout passes.
func (p *Postgres) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, p.DSN("postgres"))
		if err == nil {
			err = conn.Close(ctx)
			cancel()
			return err
		}
		cancel()
		select {
		case <-p.proc.Exited():
			b, _ := os.ReadFile(p.proc.Log)
			return fmt.Errorf("postgres exited before accepting connections on %s: %s", p.Addr, tail(b))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres not accepting connections on %s after %s: %w", p.Addr, timeout, err)
		}
	}
}

// stopFast ends the server with a fast shutdown (SIGINT: roll back open transactions, disconnect
// clients, checkpoint) and waits up to 10s; a server still running is left to Process.Stop.
func stopFast(proc *Process) {
	select {
	case <-proc.Exited():
		return
	default:
	}
	if err := proc.Cmd.Process.Signal(syscall.SIGINT); err != nil {
		return
	}
	select {
	case <-proc.Exited():
	case <-time.After(10 * time.Second):
	}
}

// DSN is the URL of database db on the server, for pgx and pgstore.
func (p *Postgres) DSN(db string) string {
	return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Host: p.Addr, Path: "/" + db,
		RawQuery: "sslmode=disable"}).String()
}

// NewDatabase creates an empty database with a fresh name, drops it when t ends, and returns its DSN.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	name := databaseName(p.seq.Add(1), t.Name())
	if err := p.admin(t.Context(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+p.createOpts); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		select {
		case <-p.proc.Exited():
			return // a test killed the server; its directory goes anyway
		default:
		}
		// FORCE ends sessions the test left open; the database is only scratch.
		if err := p.admin(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	return p.DSN(name)
}

// databaseName makes a database name from a sequence number and a test name: lower case, letters,
// digits and underscores, within PostgreSQL's 63 bytes.
func databaseName(seq int64, test string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "t%d_", seq)
	for _, r := range strings.ToLower(test) {
		if b.Len() == 63 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// admin runs one statement in the postgres database.
func (p *Postgres) admin(ctx context.Context, sql string) error {
	return p.withConn(ctx, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql)
		return err
	})
}

// version returns the server's version number, e.g. 150004 for 15.4.
func (p *Postgres) version(t testing.TB) int {
	t.Helper()
	var v int
	err := p.withConn(t.Context(), func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::integer").Scan(&v)
	})
	if err != nil {
		t.Fatalf("postgres version: %v", err)
	}
	return v
}

// withConn runs fn on a fresh connection to the postgres database.
func (p *Postgres) withConn(ctx context.Context, fn func(context.Context, *pgx.Conn) error) (err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.DSN("postgres"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, conn.Close(ctx)) }()
	return fn(ctx, conn)
}

// Kill ends the server with SIGKILL at once (a crash) and waits for it.
func (p *Postgres) Kill() { p.proc.Kill() }

// Stop shuts the server down (fast shutdown, as pg_ctl stop does) and waits for it.
func (p *Postgres) Stop() {
	stopFast(p.proc)
	p.proc.Stop()
}

// Restart starts the server again on the same data directory and port after Kill or Stop, and waits
// until it accepts connections (after crash recovery, if it was killed). t should be the test that
// started it, so the server lives as long as before.
func (p *Postgres) Restart(t testing.TB) {
	t.Helper()
	select {
	case <-p.proc.Exited():
	default:
		t.Fatalf("restart postgres: it is still running")
	}
	// After a kill the backends outlive the postmaster for a moment (they run in sessions of their own,
	// so the signal to its group misses them, and exit when they notice it is gone); until the last
	// one has, the new server refuses to start on their shared memory. Retry that case for a while.
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := p.start(t)
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "pre-existing shared memory block") || time.Now().After(deadline) {
			t.Fatalf("restart postgres: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
