package servicetest

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
)

// StackLease is the database's claim lease in a Stack.
const StackLease = 2 * time.Minute

// ServeDatabase serves the database service over a SQLite task store at path (see Serve); wrap, when
// given, wraps the service's handler. stop closes the done channel the service watches, ending its long
// polls; it may be called more than once, and is called when the test ends before the server is closed.
// The store is closed last.
func ServeDatabase(t testing.TB, path string, policy database.Policy, wrap ...func(http.Handler) http.Handler) (url string, stop func()) {
	t.Helper()
	store, err := sqlitestore.Open(context.Background(), path, sqlitestore.Options{})
	if err != nil {
		t.Fatalf("sqlitestore.Open: %v", err)
	}
	CloseAtCleanup(t, "task store", store)
	done := make(chan struct{})
	stop = sync.OnceFunc(func() { close(done) })
	h := database.NewServer(store, policy, done)
	for _, w := range wrap {
		h = w(h)
	}
	srv := Serve(t, h)
	t.Cleanup(stop) // end long polls before the server waits for them
	return srv.URL, stop
}

// ServeStorage serves the storage service over a file blob store in dir (see Serve); wrap, when not nil,
// wraps the service's handler. The store is closed after the server.
func ServeStorage(t testing.TB, dir string, wrap func(http.Handler) http.Handler) (url string) {
	t.Helper()
	blobs, err := fileblob.Open(dir)
	if err != nil {
		t.Fatalf("fileblob.Open: %v", err)
	}
	CloseAtCleanup(t, "blob store", blobs)
	var h http.Handler = storage.NewServer(blobs)
	if wrap != nil {
		h = wrap(h)
	}
	return Serve(t, h).URL
}

// Options adjust a Stack.
type Options struct {
	// MaxUpload is the master's upload limit; 0 means Limits.MaxUpload.
	MaxUpload int64
	// Limits are the master's limits (zero fields: the defaults).
	Limits master.Limits
	// WrapStorage and WrapDatabase, when set, wrap the storage or database service's handler (to watch
	// or refuse its requests).
	WrapStorage, WrapDatabase func(http.Handler) http.Handler
	// MasterDatabaseAddr and MasterStorageAddr, when set, are where the master looks for the database
	// and storage instead of the stack's own (the Stack's clients still reach the real ones).
	MasterDatabaseAddr, MasterStorageAddr string
	// Retention is the database's retention (0 keeps tasks forever).
	Retention time.Duration
	// MasterOptions adjust the master (say, master.WithMetrics).
	MasterOptions []master.Option
}

// Stack is a real database and storage service (their stores under t.TempDir()), a master in front of
// them, and clients of all three; everything is stopped when the test ends.
type Stack struct {
	// HTTP is the services' own client, used by the Stack's clients; its idle connections are closed when
	// the test ends.
	HTTP *http.Client

	DatabaseURL, StorageURL, MasterURL string

	Database *client.Database
	Storage  *client.Storage
	Master   *client.Master
}

// NewStack starts a Stack.
func NewStack(t testing.TB, opts Options) *Stack {
	t.Helper()
	dir := t.TempDir()
	s := &Stack{HTTP: NewHTTPClient(t)}
	var stopDatabase func()
	var wrapDatabase []func(http.Handler) http.Handler
	if opts.WrapDatabase != nil {
		wrapDatabase = append(wrapDatabase, opts.WrapDatabase)
	}
	s.DatabaseURL, stopDatabase = ServeDatabase(t, filepath.Join(dir, "tasks.db"), database.Policy{Lease: StackLease, Retention: opts.Retention}, wrapDatabase...)
	s.StorageURL = ServeStorage(t, filepath.Join(dir, "images"), opts.WrapStorage)
	s.Database = client.NewDatabase(s.HTTP, client.Static(Addr(s.DatabaseURL)))
	s.Storage = client.NewStorage(s.HTTP, client.Static(Addr(s.StorageURL)))

	db, st := s.Database, s.Storage
	if opts.MasterDatabaseAddr != "" {
		db = client.NewDatabase(s.HTTP, client.Static(opts.MasterDatabaseAddr))
	}
	if opts.MasterStorageAddr != "" {
		st = client.NewStorage(s.HTTP, client.Static(opts.MasterStorageAddr))
	}
	limits := opts.Limits
	if opts.MaxUpload != 0 {
		limits.MaxUpload = opts.MaxUpload
	}
	s.MasterURL = Serve(t, master.NewServer(db, st, limits, opts.MasterOptions...)).URL
	t.Cleanup(stopDatabase) // end long polls before the master's server waits for the requests holding them
	s.Master = client.NewMaster(s.HTTP, client.Static(Addr(s.MasterURL)))
	return s
}

// ExpectNoClaimable asks the database itself for a task and expects the reference refusal.
func (s *Stack) ExpectNoClaimable(t testing.TB) {
	t.Helper()
	r := Call(t, s.HTTP, http.MethodPost, s.DatabaseURL+"/getNewTask", nil)
	if r.Status != http.StatusBadRequest || r.Body != NoTaskReply {
		t.Errorf("database POST /getNewTask: %d %q, want 400 %q (a task was left claimable)", r.Status, r.Body, NoTaskReply)
	}
}

// StoredImage returns the image storage holds for task id in state, or ok false when it holds none.
func (s *Stack) StoredImage(t testing.TB, id int64, state string) (b []byte, ok bool) {
	t.Helper()
	img, err := s.Storage.GetImage(t.Context(), id, state)
	if client.IsStatus(err, http.StatusNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("storage GetImage(%d, %s): %v", id, state, err)
	}
	defer img.Close()
	b, err = io.ReadAll(img)
	if err != nil {
		t.Fatalf("read stored image %d/%s: %v", id, state, err)
	}
	return b, true
}
