package e2e

import (
	"bytes"
	"context"
	"fmt"
	"mime/multipart"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/deploytest"
	"github.com/imgmill/imgmill/internal/testimage"
	"github.com/imgmill/imgmill/internal/wire"
)

// TestAbortedUploadsBlockNobody: uploads that send their headers and 8 KB and then close the connection
// leave no pending task behind and do not fill the queue: with --max-queued 25, after 30 of them a
// normal upload is accepted at once.
func TestAbortedUploadsBlockNobody(t *testing.T) {
	d := deploytest.New(t)
	d.MustStart("kv", "kv", "--addr", d.KVAddr, "--data", filepath.Join(d.Dir, "kv"))
	d.MustStart("database", "database", "--addr", "127.0.0.1:0", "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "db"))
	d.MustStart("storage", "storage", "--addr", "127.0.0.1:0", "--kv", d.KVAddr, "--data", filepath.Join(d.Dir, "storage"))
	d.MustStart("master", "master", "--addr", "127.0.0.1:0", "--kv", d.KVAddr, "--max-queued", "25")
	d.WaitReady()
	d.StartFrontend()
	d.WaitServing(d.FEAddr)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	img := testimage.PaddedPNG(64, 64, 64<<10)
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	fw, err := mw.CreateFormFile("uploadfile", "a.png")
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(img)
	mw.Close()
	const aborted = 30
	for i := range aborted {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", d.FEAddr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /submitTask HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n",
			d.FEAddr, mw.FormDataContentType(), form.Len())
		if _, err := conn.Write(form.Bytes()[:8<<10]); err != nil {
			t.Fatalf("aborted upload %d: %v", i, err)
		}
		conn.Close()
	}
	db := d.Database()
	var st wire.Stats
	deploytest.WaitFor(t, ctx, "every aborted upload's task given up", func() bool {
		st, err = db.Stats(ctx)
		return err == nil && st.Pending == 0 && st.Failed == aborted
	})
	if st.Queued != 0 {
		t.Errorf("stats after the aborted uploads: %+v, want nothing queued", st)
	}
	if _, err := deploytest.SubmitViaFrontend(ctx, d.HC, d.FEAddr, img); err != nil {
		t.Fatalf("a normal upload after %d aborted ones: %v", aborted, err)
	}
	if st, err := db.Stats(ctx); err != nil || st.Queued != 1 || st.Pending != 0 {
		t.Errorf("stats after the normal upload: %+v, %v; want 1 queued, none pending", st, err)
	}
}
