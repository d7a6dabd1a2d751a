package mixes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/frontend"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/kvservice"
	"github.com/imgmill/imgmill/internal/kvstore/filekv"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/referencetest"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// The six services, in the order a stack starts them.
const (
	kv = iota
	db
	st
	ma
	wk
	fe
	services
)

var serviceNames = [services]string{"kv", "database", "storage", "master", "worker", "frontend"}

// kinds says, for each service, whether the stack runs the reference's stand-in (true) or imgmill's.
type kinds [services]bool

func (k kinds) String() string {
	var ref, own []string
	for i, isRef := range k {
		if isRef {
			ref = append(ref, serviceNames[i])
		} else {
			own = append(own, serviceNames[i])
		}
	}
	return fmt.Sprintf("reference %v, imgmill %v", ref, own)
}

// raceWindow is how long the reference master waits between creating a task and storing its image when
// imgmill's worker faces it.
const raceWindow = 50 * time.Millisecond

// startTimeout bounds how long a stack takes to come up: every service listening and registered.
const startTimeout = time.Minute

// stack is a running deployment of six services, some imgmill's and some stand-ins.
type stack struct {
	kvAddr, frontendAddr, masterAddr string
	// refWorker is the reference worker, when the stack runs it.
	refWorker *referencetest.Worker
}

// startStack starts the services k names in this process, each stopped when the test ends (in the
// reverse order: kv last, so that imgmill's services deregister through it), and waits until the
// master, database and storage have registered and the frontend listens. The services' logs are shown
// if the test failed.
func startStack(t *testing.T, k kinds) stack {
	t.Helper()
	logs := &deploytest.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of the stack (%v):\n%s", k, deploytest.Tail(logs.String(), 20000))
		}
	})
	logger := slog.New(slog.NewTextHandler(logs, nil))
	hc := httpapi.NewClient()
	t.Cleanup(hc.CloseIdleConnections)
	dir := t.TempDir()
	options := func(addr, name string) service.Options {
		return service.Options{Addr: addr, Logger: logger.With("service", name)}
	}
	var s stack

	if k[kv] {
		s.kvAddr = referencetest.NewKV().Start(t)
	} else {
		store, err := filekv.Open(filepath.Join(dir, "kv.json"), filekv.Options{})
		if err != nil {
			t.Fatal(err)
		}
		closeAtCleanup(t, "kv store", store)
		s.kvAddr = enginetest.FreeAddr(t)
		run(t, "kv", func(ctx context.Context) error {
			return kvservice.Run(ctx, kvservice.Config{Options: options(s.kvAddr, "kv"), Store: store})
		})
		waitListening(t, s.kvAddr)
	}
	kvc := client.NewKV(hc, s.kvAddr)

	if k[db] {
		referencetest.NewDatabase().Start(t, s.kvAddr)
	} else {
		store, err := sqlitestore.Open(t.Context(), filepath.Join(dir, "tasks.db"), sqlitestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		closeAtCleanup(t, "task store", store)
		run(t, "database", func(ctx context.Context) error {
			return database.Run(ctx, database.Config{Options: options("127.0.0.1:0", "database"), KV: kvc, Store: store})
		})
	}

	if k[st] {
		referencetest.NewStorage(filepath.Join(dir, "reference-images")).Start(t, s.kvAddr)
	} else {
		blobs, err := fileblob.Open(filepath.Join(dir, "images"))
		if err != nil {
			t.Fatal(err)
		}
		closeAtCleanup(t, "blob store", blobs)
		run(t, "storage", func(ctx context.Context) error {
			return storage.Run(ctx, storage.Config{Options: options("127.0.0.1:0", "storage"), KV: kvc, Blobs: blobs})
		})
	}

	if k[ma] {
		m := referencetest.NewMaster(s.kvAddr)
		if !k[wk] {
			// imgmill's worker claims at once, long polling: most tasks are claimed before their image
			// is stored, and must be asked for again rather than lost.
			m.StoreDelay = raceWindow
		}
		m.Start(t)
	} else {
		run(t, "master", func(ctx context.Context) error {
			return master.Run(ctx, master.Config{Options: options("127.0.0.1:0", "master"), KV: kvc, HTTP: hc})
		})
	}

	if k[wk] {
		s.refWorker = referencetest.NewWorker(s.kvAddr, logger.With("service", "reference worker"))
		s.refWorker.Start(t)
	} else {
		m, st := worker.NewClients(hc, kvc)
		run(t, "worker", func(ctx context.Context) error {
			return worker.Run(ctx, worker.Config{Master: m, Storage: st, Concurrency: 2, Logger: logger.With("service", "worker")})
		})
	}

	if k[fe] {
		s.frontendAddr = referencetest.NewFrontend(s.kvAddr).Start(t)
	} else {
		s.frontendAddr = enginetest.FreeAddr(t)
		exited := run(t, "frontend", func(ctx context.Context) error {
			return frontend.Run(ctx, frontend.Config{Options: options(s.frontendAddr, "frontend"), KV: kvc, HTTP: hc, DataDir: dir})
		})
		// Before any upload: a frontend that finds tasks and no public id secret refuses to make one.
		waitHealthy(t, hc, s.frontendAddr, exited)
	}

	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	for _, key := range []string{wire.DatabaseKey, wire.StorageKey, wire.MasterKey} {
		for {
			addr, err := kvc.Get(ctx, key)
			if err == nil && addr != "" {
				if key == wire.MasterKey {
					s.masterAddr = addr
				}
				break
			}
			if !sleep(ctx, 20*time.Millisecond) {
				t.Fatalf("%s not registered in the kv store within %v: %v", key, startTimeout, err)
			}
		}
	}
	return s
}

// run runs an imgmill service until the test ends; a service that stops with an error fails the test.
// The channel is closed when the service has stopped.
func run(t *testing.T, name string, serve func(ctx context.Context) error) <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan struct{})
	var err error
	go func() {
		defer close(exited)
		err = serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-exited
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("imgmill's %s: %v", name, err)
		}
	})
	return exited
}

func closeAtCleanup(t *testing.T, what string, c io.Closer) {
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close %s: %v", what, err)
		}
	})
}

// waitListening waits until something accepts connections at addr.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	for {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			conn.Close()
			return
		}
		if !sleep(ctx, 20*time.Millisecond) {
			t.Fatalf("nothing listens at %s after %v: %v", addr, startTimeout, err)
		}
	}
}

// waitHealthy waits until imgmill's service at addr answers GET /healthz with 200. A service that does
// not (it stopped, or is not ready within startTimeout) fails the test, which goes on to show what
// works without it.
func waitHealthy(t *testing.T, hc *http.Client, addr string, exited <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	for {
		err := client.CheckHealth(ctx, hc, addr)
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Errorf("imgmill's service at %s stopped before it was ready: %v", addr, err)
			return
		case <-ctx.Done():
			t.Errorf("imgmill's service at %s not ready within %v: %v", addr, startTimeout, err)
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sleep waits d, or less when ctx ends first, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// trim cuts a body for a message.
func trim(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
