package master_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/database"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
	"github.com/imgmill/imgmill/internal/wire"
)

// BenchmarkHopMasterNew is one upload over HTTP on loopback, as a client of imgmill makes it for every
// image: POST /new of a 64 px PNG (9-10 KiB) with an idempotency key, which the master turns into a
// pending task, the image sent to storage and the task activated (three more exchanges, with the
// database over SQLite and storage over files). Every service and the client run in this process, so
// cpu-ns/op and allocs/op count all of them. No worker runs: the tasks stay queued (no queue cap).
func BenchmarkHopMasterNew(b *testing.B) {
	s := servicetest.NewStack(b, servicetest.Options{Limits: master.Limits{MaxQueued: master.NoLimit}})
	img := servicetest.PatternPNG(b, 64, 1)
	ctx := context.Background()
	last := int64(-1)
	b.SetBytes(int64(len(img)))
	b.ReportAllocs()
	cpu := servicetest.StartCPU()
	for i := 0; b.Loop(); i++ {
		up, err := s.Master.Upload(ctx, bytes.NewReader(img), int64(len(img)), client.UploadParams{IdempotencyKey: fmt.Sprintf("hop-%d", i)})
		if err != nil {
			b.Fatalf("upload %d: %v", i, err)
		}
		if up.Replayed || up.ID <= last {
			b.Fatalf("upload %d answered task %d (replayed %t) after %d: want a new task each", i, up.ID, up.Replayed, last)
		}
		last = up.ID
	}
	cpu.Report(b)
}

// BenchmarkHopWorkerRound is the worker's side of one image, without the image work: claim a task
// through the master (which passes the claim to the database), read its upload from storage, and hand a
// 64 px result over under the claim's lease token. In two calls (http, local) the worker stores the
// result at storage and then finishes the task through the master, which checks the result is stored
// and passes the finish to the database; in one (http-one-call, local-one-call) it sends the result to
// the master's POST /finishTask, which stores it and finishes the task. The master's hops go over HTTP
// on loopback (http) or in-process through master.Local (local); the database and storage are reached
// over HTTP either way. Uploads are queued 200 at a time with the timer stopped.
func BenchmarkHopWorkerRound(b *testing.B) {
	for _, tc := range []struct {
		name           string
		local, oneCall bool
	}{
		{"http", false, false},
		{"local", true, false},
		{"http-one-call", false, true},
		{"local-one-call", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := servicetest.NewStack(b, servicetest.Options{})
			var worker workerSide = s.Master
			if tc.local {
				svc, err := master.NewService(master.Config{Database: s.Database, Storage: s.Storage})
				if err != nil {
					b.Fatal(err)
				}
				worker = svc.Local()
			}
			benchWorkerRound(b, s, worker, tc.oneCall)
		})
	}
}

func benchWorkerRound(b *testing.B, s *servicetest.Stack, worker workerSide, oneCall bool) {
	img := servicetest.PatternPNG(b, 64, 1)
	ctx := context.Background()
	queue := func() {
		for range 200 {
			if _, err := s.Master.Upload(ctx, bytes.NewReader(img), int64(len(img)), client.UploadParams{}); err != nil {
				b.Fatalf("queue an upload: %v", err)
			}
		}
	}
	left := 0
	var got bytes.Buffer
	b.ReportAllocs()
	cpu := servicetest.StartCPU()
	for b.Loop() {
		if left == 0 {
			b.StopTimer()
			cpu.Pause()
			queue()
			left = 200
			cpu.Resume()
			b.StartTimer()
		}
		task, err := worker.GetNewTask(ctx, 0)
		if err != nil {
			b.Fatalf("claim: %v", err)
		}
		upload, err := s.Storage.GetImage(ctx, task.ID, wire.WorkingImage)
		if err != nil {
			b.Fatalf("get the upload of task %d: %v", task.ID, err)
		}
		got.Reset()
		_, err = got.ReadFrom(upload)
		upload.Close()
		if err != nil || !bytes.Equal(got.Bytes(), img) {
			b.Fatalf("upload of task %d read as %d bytes (%v), want the %d sent", task.ID, got.Len(), err, len(img))
		}
		if oneCall {
			if err := worker.FinishWithResult(ctx, task.ID, task.Token, bytes.NewReader(img), int64(len(img))); err != nil {
				b.Fatalf("finish task %d with its result: %v", task.ID, err)
			}
		} else {
			if err := s.Storage.SendResult(ctx, task.ID, task.Token, bytes.NewReader(img), int64(len(img))); err != nil {
				b.Fatalf("store the result of task %d: %v", task.ID, err)
			}
			if err := worker.FinishTask(ctx, task.ID, task.Token); err != nil {
				b.Fatalf("finish task %d: %v", task.ID, err)
			}
		}
		left--
	}
	cpu.Report(b)
}

// BenchmarkHopHeartbeat is one worker heartbeat through the master, over HTTP on loopback (http) or
// in-process through master.Local (local): the master renews the claim's lease at the database (over
// HTTP either way), so the difference between the two is the master's own hop.
func BenchmarkHopHeartbeat(b *testing.B) {
	for _, transport := range []string{"http", "local"} {
		b.Run(transport, func(b *testing.B) {
			s := servicetest.NewStack(b, servicetest.Options{})
			var worker workerSide = s.Master
			if transport == "local" {
				svc, err := master.NewService(master.Config{Database: s.Database, Storage: s.Storage})
				if err != nil {
					b.Fatal(err)
				}
				worker = svc.Local()
			}
			ctx := context.Background()
			img := servicetest.PatternPNG(b, 4, 1)
			if _, err := s.Master.New(ctx, bytes.NewReader(img), int64(len(img))); err != nil {
				b.Fatalf("upload: %v", err)
			}
			task, err := worker.GetNewTask(ctx, 0)
			if err != nil {
				b.Fatalf("claim: %v", err)
			}
			b.ReportAllocs()
			cpu := servicetest.StartCPU()
			for b.Loop() {
				renewed, err := worker.ExtendLease(ctx, task.ID, task.Token)
				if err != nil || renewed.Token != task.Token {
					b.Fatalf("heartbeat = %+v, %v: want the claim renewed", renewed, err)
				}
			}
			cpu.Report(b)
		})
	}
}

// BenchmarkHopMasterUpload is BenchmarkHopMasterNew's upload (a 64 px PNG with an idempotency key) with
// the client's hop to the master over HTTP on loopback (http) or in-process through master.Local
// (local), as the frontend makes it in imgmill serve. The master reaches the database and storage over
// HTTP (http, local), or in-process through database.Local and storage.Local as in imgmill serve
// (serve-http, serve-local): there the master's own hop is the only one that differs.
func BenchmarkHopMasterUpload(b *testing.B) {
	for _, transport := range []string{"http", "local", "serve-http", "serve-local"} {
		b.Run(transport, func(b *testing.B) {
			var db master.Database
			var st master.Storage
			hc := servicetest.NewHTTPClient(b)
			if strings.HasPrefix(transport, "serve-") {
				db, st = inProcessStores(b)
			} else {
				s := servicetest.NewStack(b, servicetest.Options{})
				db, st, hc = s.Database, s.Storage, s.HTTP
			}
			svc, err := master.NewService(master.Config{Database: db, Storage: st, Limits: master.Limits{MaxQueued: master.NoLimit}})
			if err != nil {
				b.Fatal(err)
			}
			var m clientSide = svc.Local()
			if strings.HasSuffix(transport, "http") {
				m = client.NewMaster(hc, client.Static(servicetest.Addr(servicetest.Serve(b, svc.Handler()).URL)))
			}
			img := servicetest.PatternPNG(b, 64, 1)
			ctx := context.Background()
			last := int64(-1)
			b.SetBytes(int64(len(img)))
			b.ReportAllocs()
			cpu := servicetest.StartCPU()
			for i := 0; b.Loop(); i++ {
				up, err := m.Upload(ctx, bytes.NewReader(img), int64(len(img)), client.UploadParams{IdempotencyKey: fmt.Sprintf("hop-%d", i)})
				if err != nil {
					b.Fatalf("upload %d: %v", i, err)
				}
				if up.Replayed || up.ID <= last {
					b.Fatalf("upload %d answered task %d (replayed %t) after %d: want a new task each", i, up.ID, up.Replayed, last)
				}
				last = up.ID
			}
			cpu.Report(b)
		})
	}
}

// inProcessStores are a database service over SQLite and a storage service over files, reached
// in-process (their Local), as imgmill serve's master reaches them.
func inProcessStores(b *testing.B) (master.Database, master.Storage) {
	dir := b.TempDir()
	store, err := sqlitestore.Open(context.Background(), filepath.Join(dir, "tasks.db"), sqlitestore.Options{})
	if err != nil {
		b.Fatalf("sqlitestore.Open: %v", err)
	}
	servicetest.CloseAtCleanup(b, "task store", store)
	dbSvc, err := database.NewService(database.Config{Store: store, Policy: database.Policy{Lease: servicetest.StackLease}})
	if err != nil {
		b.Fatal(err)
	}
	blobs, err := fileblob.Open(filepath.Join(dir, "images"))
	if err != nil {
		b.Fatal(err)
	}
	servicetest.CloseAtCleanup(b, "blob store", blobs)
	stSvc, err := storage.NewService(storage.Config{Blobs: blobs})
	if err != nil {
		b.Fatal(err)
	}
	return dbSvc.Local(), stSvc.Local()
}
