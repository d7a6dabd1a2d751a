package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"iter"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/blobstore"
	"github.com/imgmill/imgmill/internal/blobstore/fileblob"
	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/enginetest"
	"github.com/imgmill/imgmill/internal/fault"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/storage"
	"github.com/imgmill/imgmill/internal/wire"
	"github.com/imgmill/imgmill/internal/worker"
)

// storageAPI is what storage's callers use: the methods of *client.Storage, which storage.Local has too.
type storageAPI interface {
	SendImage(ctx context.Context, id int64, state string, r io.Reader, size int64) error
	SendResult(ctx context.Context, id int64, token int64, r io.Reader, size int64) error
	GetImage(ctx context.Context, id int64, state string) (*client.Image, error)
	HasImage(ctx context.Context, id int64, state string) (bool, error)
	DeleteImages(ctx context.Context, id int64) error
	DeleteResult(ctx context.Context, id int64) error
	DeleteImage(ctx context.Context, id int64, state string) error
	ListBlobs(ctx context.Context, prefix, after string, limit int) (wire.BlobPage, error)
	Addr(ctx context.Context) (string, error)
}

var (
	_ storageAPI     = (*client.Storage)(nil)
	_ storageAPI     = (*storage.Local)(nil)
	_ worker.Storage = (*storage.Local)(nil)
	_ worker.Storage = (*client.Storage)(nil)
)

// transport builds a storage service from cfg and returns its API as the transport reaches it.
type transport func(t *testing.T, cfg storage.Config) storageAPI

// overHTTP runs the service on a free loopback port and reaches it with the HTTP client.
func overHTTP(t *testing.T, cfg storage.Config) storageAPI {
	t.Helper()
	_, addr, hc := serve(t, cfg)
	return client.NewStorage(hc, client.Static(addr))
}

// serve runs the service built from cfg on a free loopback port until the test ends, and returns it,
// its address and an HTTP client.
func serve(t *testing.T, cfg storage.Config) (*storage.Service, string, *http.Client) {
	t.Helper()
	cfg.Addr, cfg.Logger = enginetest.FreeAddr(t), servicetest.Discard
	svc, err := storage.NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("storage service: %v", err)
		}
	})
	hc := servicetest.NewHTTPClient(t)
	if !servicetest.PollFor(30*time.Second, func() bool { return client.CheckHealth(ctx, hc, cfg.Addr) == nil }) {
		t.Fatalf("the storage service at %s never answered", cfg.Addr)
	}
	return svc, cfg.Addr, hc
}

// inProcess reaches the service through its Local API; it needs no Run.
func inProcess(t *testing.T, cfg storage.Config) storageAPI {
	t.Helper()
	svc, err := storage.NewService(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return svc.Local()
}

// TestContract runs the storage's contract against both of its transports, each over its own file blob
// store: what callers rely on (results, refusals with their status, message and Retry-After, fencing,
// retries) is the same whichever way they reach it.
func TestContract(t *testing.T) {
	for name, tr := range map[string]transport{"http": overHTTP, "local": inProcess} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runContract(t, tr)
		})
	}
}

// openFiles opens a file blob store in a temporary directory, closed when the test ends.
func openFiles(t *testing.T) *fileblob.Store {
	t.Helper()
	blobs, err := fileblob.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	servicetest.CloseAtCleanup(t, "blob store", blobs)
	return blobs
}

// answer is a refusal as callers see it.
type answer struct {
	status     int
	msg        string
	retryAfter time.Duration
}

func answerOf(err error) answer {
	var e *httpapi.Error
	if !errors.As(err, &e) {
		return answer{}
	}
	return answer{e.Status, e.Msg, e.RetryAfter}
}

// expectRefusal checks that err is the refusal want.
func expectRefusal(t *testing.T, what string, err error, want answer) {
	t.Helper()
	if got := answerOf(err); got != want {
		t.Errorf("%s = %v (%+v), want %+v", what, err, got, want)
	}
	if transient := want.status == http.StatusServiceUnavailable || want.status == http.StatusInsufficientStorage; fault.IsTransient(err) != transient {
		t.Errorf("%s: fault.IsTransient = %v, want %v", what, fault.IsTransient(err), transient)
	}
}

// read reads the image of id in state whole.
func read(t *testing.T, st storageAPI, id int64, state string) (body string, img *client.Image) {
	t.Helper()
	img, err := st.GetImage(t.Context(), id, state)
	if err != nil {
		t.Fatalf("GetImage(%d, %s): %v", id, state, err)
	}
	defer img.Close()
	b, err := io.ReadAll(img)
	if err != nil {
		t.Fatalf("read image %d %s: %v", id, state, err)
	}
	return string(b), img
}

// expectImage checks the image of id in state: its bytes and the lease token it was stored with.
func expectImage(t *testing.T, st storageAPI, id int64, state, want string, token int64) {
	t.Helper()
	if got, img := read(t, st, id, state); got != want || img.Token != token || img.Size != int64(len(want)) {
		t.Errorf("image %d %s = %.40q (size %d, token %d), want %.40q (size %d, token %d)",
			id, state, got, img.Size, img.Token, want, len(want), token)
	}
}

// expectNone checks that storage holds no image of id in state.
func expectNone(t *testing.T, st storageAPI, id int64, state string) {
	t.Helper()
	if has, err := st.HasImage(t.Context(), id, state); has || err != nil {
		t.Errorf("HasImage(%d, %s) = %v, %v; want false", id, state, has, err)
	}
}

// failingReader yields some bytes, then fails.
type failingReader struct {
	sent bool
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if !f.sent {
		f.sent = true
		return copy(p, "partial"), nil
	}
	return 0, f.err
}

func runContract(t *testing.T, newAPI transport) {
	t.Run("round trip", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t)})
		ctx := t.Context()
		pic := servicetest.PatternPNG(t, 16, 1)
		if err := st.SendImage(ctx, 1, wire.WorkingImage, bytes.NewReader(pic), int64(len(pic))); err != nil {
			t.Fatalf("SendImage: %v", err)
		}
		got, img := read(t, st, 1, wire.WorkingImage)
		if got != string(pic) || img.Size != int64(len(pic)) || img.ContentType != "image/png" || img.Token != 0 {
			t.Errorf("image 1 = %d bytes (size %d, %q, token %d), want the %d sent (image/png, token 0)",
				len(got), img.Size, img.ContentType, img.Token, len(pic))
		}
		if has, err := st.HasImage(ctx, 1, wire.WorkingImage); !has || err != nil {
			t.Errorf("HasImage(1, working) = %v, %v; want true", has, err)
		}
		expectNone(t, st, 1, wire.FinishedImage)
		// Of unknown length (streamed), and announced as 0 bytes but not empty: stored alike.
		if err := st.SendImage(ctx, 2, wire.WorkingImage, opaqueReader{strings.NewReader("plain text")}, -1); err != nil {
			t.Fatalf("SendImage(size -1): %v", err)
		}
		if got, img := read(t, st, 2, wire.WorkingImage); got != "plain text" || img.ContentType != "text/plain; charset=utf-8" {
			t.Errorf("image 2 = %q (%q), want %q (text/plain; charset=utf-8)", got, img.ContentType, "plain text")
		}
		if err := st.SendImage(ctx, 3, wire.WorkingImage, strings.NewReader("size 0"), 0); err != nil {
			t.Fatalf("SendImage(size 0) of 6 bytes: %v", err)
		}
		expectImage(t, st, 3, wire.WorkingImage, "size 0", 0)
		// A second send replaces the image.
		if err := st.SendImage(ctx, 1, wire.WorkingImage, strings.NewReader("again"), 5); err != nil {
			t.Fatalf("SendImage again: %v", err)
		}
		expectImage(t, st, 1, wire.WorkingImage, "again", 0)
		if addr, err := st.Addr(ctx); addr == "" || err != nil {
			t.Errorf("Addr = %q, %v; want a name", addr, err)
		}
	})

	t.Run("result fencing", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t)})
		ctx := t.Context()
		send := func(token int64, body string) error {
			return st.SendResult(ctx, 1, token, strings.NewReader(body), int64(len(body)))
		}
		if err := send(5, "by claim 5"); err != nil {
			t.Fatalf("SendResult(token 5): %v", err)
		}
		expectImage(t, st, 1, wire.FinishedImage, "by claim 5", 5)
		err := send(4, "by claim 4")
		if !errors.Is(err, client.ErrStaleToken) {
			t.Errorf("SendResult(token 4) = %v, want ErrStaleToken", err)
		}
		expectRefusal(t, "SendResult(token 4)", err, answer{http.StatusConflict, "stale lease token for task 1", 0})
		expectImage(t, st, 1, wire.FinishedImage, "by claim 5", 5)
		if err := send(5, "claim 5 again"); err != nil {
			t.Errorf("SendResult(token 5) again: %v", err)
		}
		if err := send(6, "by claim 6"); err != nil {
			t.Errorf("SendResult(token 6): %v", err)
		}
		expectImage(t, st, 1, wire.FinishedImage, "by claim 6", 6)
		if err := send(0, "unfenced"); err != nil {
			t.Errorf("SendResult(token 0): %v", err)
		}
		expectImage(t, st, 1, wire.FinishedImage, "unfenced", 0)
		if err := send(-1, "negative"); err == nil || errors.Is(err, client.ErrStaleToken) {
			t.Errorf("SendResult(token -1) = %v, want a refusal of the token", err)
		}
		expectImage(t, st, 1, wire.FinishedImage, "unfenced", 0)
	})

	t.Run("missing and malformed", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t)})
		ctx := t.Context()
		_, err := st.GetImage(ctx, 9, wire.WorkingImage)
		expectRefusal(t, "GetImage(9, working)", err, answer{http.StatusNotFound, "no working image for task 9", 0})
		expectNone(t, st, 9, wire.WorkingImage)
		badState := answer{http.StatusBadRequest, `state must be "working" or "finished", got "other"`, 0}
		_, err = st.GetImage(ctx, 9, "other")
		expectRefusal(t, "GetImage(9, other)", err, badState)
		err = st.SendImage(ctx, 9, "other", strings.NewReader("x"), 1)
		expectRefusal(t, "SendImage(9, other)", err, badState)
		expectNone(t, st, 9, "other") // a refusal is no image either
		_, err = st.GetImage(ctx, -1, wire.WorkingImage)
		expectRefusal(t, "GetImage(-1, working)", err,
			answer{http.StatusBadRequest, `id must be a non-negative decimal integer, got "-1"`, 0})
	})

	t.Run("empty body", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t)})
		ctx := t.Context()
		if err := st.SendImage(ctx, 1, wire.WorkingImage, strings.NewReader("kept"), 4); err != nil {
			t.Fatal(err)
		}
		empty := answer{http.StatusBadRequest, "empty image body", 0}
		expectRefusal(t, "SendImage of nothing", st.SendImage(ctx, 1, wire.WorkingImage, strings.NewReader(""), 0), empty)
		expectRefusal(t, "SendImage of nothing streamed", st.SendImage(ctx, 1, wire.WorkingImage, opaqueReader{strings.NewReader("")}, -1), empty)
		expectRefusal(t, "SendResult of nothing", st.SendResult(ctx, 2, 3, opaqueReader{strings.NewReader("")}, -1), empty)
		expectImage(t, st, 1, wire.WorkingImage, "kept", 0)
		expectNone(t, st, 2, wire.FinishedImage)
	})

	t.Run("broken body", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t)})
		cause := errors.New("the upload's client went away")
		err := st.SendImage(t.Context(), 1, wire.WorkingImage, &failingReader{err: cause}, 100)
		if !client.IsBodyError(err) || !errors.Is(err, cause) {
			t.Errorf("SendImage of a body that fails = %v, want a body error wrapping %v", err, cause)
		}
		expectNone(t, st, 1, wire.WorkingImage)
	})

	t.Run("delete", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t)})
		ctx := t.Context()
		for _, id := range []int64{4, 5} {
			for _, state := range []string{wire.WorkingImage, wire.FinishedImage} {
				if err := st.SendImage(ctx, id, state, strings.NewReader(state), int64(len(state))); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := st.DeleteResult(ctx, 4); err != nil {
			t.Fatalf("DeleteResult(4): %v", err)
		}
		expectNone(t, st, 4, wire.FinishedImage)
		expectImage(t, st, 4, wire.WorkingImage, "working", 0)
		for range 2 { // the second finds nothing, and is no error
			if err := st.DeleteImages(ctx, 4); err != nil {
				t.Fatalf("DeleteImages(4): %v", err)
			}
			expectNone(t, st, 4, wire.WorkingImage)
		}
		if err := st.DeleteImage(ctx, 5, wire.WorkingImage); err != nil {
			t.Fatalf("DeleteImage(5, working): %v", err)
		}
		expectNone(t, st, 5, wire.WorkingImage)
		expectImage(t, st, 5, wire.FinishedImage, "finished", 0)
		expectRefusal(t, "DeleteImage(5, other)", st.DeleteImage(ctx, 5, "other"),
			answer{http.StatusBadRequest, `state must be "working" or "finished", got "other"`, 0})
		expectImage(t, st, 5, wire.FinishedImage, "finished", 0)
	})

	t.Run("list", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t)})
		ctx := t.Context()
		for i, id := range []int64{3, 12, 1} {
			body := strings.Repeat("w", 10+i)
			if err := st.SendImage(ctx, id, wire.WorkingImage, strings.NewReader(body), int64(len(body))); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.SendResult(ctx, 12, 1, strings.NewReader("result"), 6); err != nil {
			t.Fatal(err)
		}
		page, err := st.ListBlobs(ctx, "", "", 0)
		if err != nil {
			t.Fatalf("ListBlobs: %v", err)
		}
		var got []string
		for _, b := range page.Blobs {
			got = append(got, b.Key+":"+strconv.FormatInt(b.Size, 10))
		}
		if strings.Join(got, " ") != "finished/12:6 working/1:12 working/12:11 working/3:10" || page.Next != "" {
			t.Errorf("ListBlobs = %q next %q, want finished/12:6 working/1:12 working/12:11 working/3:10", got, page.Next)
		}
		var paged []string
		after := ""
		for range 5 {
			page, err := st.ListBlobs(ctx, "working/", after, 2)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range page.Blobs {
				paged = append(paged, b.Key)
			}
			if after = page.Next; after == "" {
				break
			}
		}
		if strings.Join(paged, " ") != "working/1 working/12 working/3" {
			t.Errorf("pages of 2 = %q, want working/1 working/12 working/3", paged)
		}
		_, err = st.ListBlobs(ctx, "", "", wire.MaxBlobPage+1)
		expectRefusal(t, "ListBlobs(limit too large)", err, answer{http.StatusBadRequest,
			"limit must be a whole number from 1 to 1000, got \"1001\"", 0})
	})

	t.Run("full disk", func(t *testing.T) {
		st := newAPI(t, storage.Config{Blobs: openFiles(t), MinFree: storage.MinFree{Bytes: 1 << 60}})
		ctx := t.Context()
		for what, err := range map[string]error{
			"SendImage":                  st.SendImage(ctx, 1, wire.WorkingImage, strings.NewReader("image"), 5),
			"SendImage (not replayable)": st.SendImage(ctx, 1, wire.WorkingImage, opaqueReader{strings.NewReader("image")}, -1),
			"SendResult":                 st.SendResult(ctx, 1, 2, strings.NewReader("result"), 6),
		} {
			got := answerOf(err)
			if got.status != http.StatusInsufficientStorage || got.retryAfter != httpapi.NoSpaceRetryAfter ||
				!strings.HasPrefix(got.msg, "storage has ") || !fault.IsTransient(err) {
				t.Errorf("%s on a full disk = %v (%+v), want 507 \"storage has ...\" with Retry-After %v, transient",
					what, err, got, httpapi.NoSpaceRetryAfter)
			}
		}
		expectNone(t, st, 1, wire.WorkingImage)
		expectNone(t, st, 1, wire.FinishedImage)
	})

	t.Run("blob store unavailable", func(t *testing.T) {
		blobs := &flakyStore{Store: openFiles(t)}
		st := newAPI(t, storage.Config{Blobs: blobs})
		ctx := t.Context()
		if err := st.SendImage(ctx, 1, wire.WorkingImage, strings.NewReader("stored"), 6); err != nil {
			t.Fatal(err)
		}
		// Down for good: every call is refused as unavailable once its retries are spent.
		blobs.down.Store(true)
		brief := client.RetryFor(ctx, 100*time.Millisecond)
		unavailable := answer{http.StatusServiceUnavailable, "the blob store is temporarily unavailable, retry later", httpapi.UnavailableRetryAfter}
		_, err := st.GetImage(brief, 1, wire.WorkingImage)
		expectRefusal(t, "GetImage", err, unavailable)
		// The answer to HasImage's HEAD carries no message over HTTP.
		if has, err := st.HasImage(brief, 1, wire.WorkingImage); has || answerOf(err).status != http.StatusServiceUnavailable ||
			answerOf(err).retryAfter != httpapi.UnavailableRetryAfter || !fault.IsTransient(err) {
			t.Errorf("HasImage = %v, %v; want a 503 with Retry-After %v", has, err, httpapi.UnavailableRetryAfter)
		}
		expectRefusal(t, "SendImage", st.SendImage(brief, 2, wire.WorkingImage, strings.NewReader("x"), 1), unavailable)
		expectRefusal(t, "SendResult", st.SendResult(brief, 2, 1, strings.NewReader("x"), 1), unavailable)
		expectRefusal(t, "DeleteImages", st.DeleteImages(brief, 1), unavailable)
		_, err = st.ListBlobs(brief, "", "", 0)
		expectRefusal(t, "ListBlobs", err, unavailable)
		blobs.down.Store(false)

		// Down for one call: a call that can be made again is, after the Retry-After; a body that
		// cannot be read again goes once.
		patient := client.RetryFor(ctx, time.Minute)
		blobs.failNext.Store(1)
		opens := blobs.opens.Load()
		expectImageCtx(t, patient, st, 1, wire.WorkingImage, "stored")
		if n := blobs.opens.Load() - opens; n != 2 {
			t.Errorf("GetImage opened the blob %d times, want 2 (one failure, one retry)", n)
		}
		blobs.failNext.Store(1)
		puts := blobs.puts.Load()
		if err := st.SendImage(patient, 3, wire.WorkingImage, strings.NewReader("replayed"), 8); err != nil {
			t.Errorf("SendImage of a body that can be read again, the store down for one call: %v", err)
		}
		if n := blobs.puts.Load() - puts; n != 2 {
			t.Errorf("SendImage put %d times, want 2 (one failure, one retry)", n)
		}
		expectImageCtx(t, patient, st, 3, wire.WorkingImage, "replayed")
		blobs.failNext.Store(1)
		puts = blobs.puts.Load()
		err = st.SendImage(patient, 4, wire.WorkingImage, opaqueReader{strings.NewReader("once")}, 4)
		expectRefusal(t, "SendImage of a body that cannot be read again", err, unavailable)
		if n := blobs.puts.Load() - puts; n != 1 {
			t.Errorf("SendImage of a body that cannot be read again put %d times, want 1", n)
		}
	})
}

func expectImageCtx(t *testing.T, ctx context.Context, st storageAPI, id int64, state, want string) {
	t.Helper()
	img, err := st.GetImage(ctx, id, state)
	if err != nil {
		t.Errorf("GetImage(%d, %s): %v", id, state, err)
		return
	}
	defer img.Close()
	if b, err := io.ReadAll(img); string(b) != want || err != nil {
		t.Errorf("image %d %s = %q, %v; want %q", id, state, b, err, want)
	}
}

// flakyStore is a file store whose engine is down (down), or down for the next failNext calls: its
// calls then fail as unavailable, as a store's do when their engine cannot be reached. It counts the
// Puts and Opens it is asked for. Ping always answers, so that the service starts.
type flakyStore struct {
	*fileblob.Store
	down        atomic.Bool
	failNext    atomic.Int32
	puts, opens atomic.Int32
}

var errEngineDown = errors.New("connection refused")

func (f *flakyStore) fail() error {
	if f.down.Load() || f.failNext.Add(-1) >= 0 {
		return fault.Unavailable("the blob store", errEngineDown)
	}
	f.failNext.Store(0)
	return nil
}

func (f *flakyStore) Put(ctx context.Context, key string, r io.Reader, size, fence int64) (int64, error) {
	f.puts.Add(1)
	if err := f.fail(); err != nil {
		return 0, err
	}
	return f.Store.Put(ctx, key, r, size, fence)
}

func (f *flakyStore) Open(ctx context.Context, key string) (*blobstore.Blob, error) {
	f.opens.Add(1)
	if err := f.fail(); err != nil {
		return nil, err
	}
	return f.Store.Open(ctx, key)
}

func (f *flakyStore) Delete(ctx context.Context, key string) error {
	if err := f.fail(); err != nil {
		return err
	}
	return f.Store.Delete(ctx, key)
}

func (f *flakyStore) List(ctx context.Context, prefix, after string) iter.Seq2[blobstore.Entry, error] {
	return func(yield func(blobstore.Entry, error) bool) {
		if err := f.fail(); err != nil {
			yield(blobstore.Entry{}, err)
			return
		}
		for e, err := range f.Store.List(ctx, prefix, after) {
			if !yield(e, err) {
				return
			}
		}
	}
}
