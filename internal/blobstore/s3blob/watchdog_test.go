package s3blob

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// watched sends a request with a watchdog of timeout through progressTransport and returns its
// context's end (nil when it did not end) and the request's error, the response read whole.
func watched(t *testing.T, method, url string, body io.Reader, timeout time.Duration) (stalledCtx bool, err error) {
	t.Helper()
	// Small socket buffers: the watchdog sees progress when the transport takes the body, so bytes parked
	// in the kernel (megabytes on loopback by default) would count as sent long before the server reads
	// them, and a steady slow server would look silent once the last of the body was parked.
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, smallSocketBuffer)
		}); err != nil {
			return err
		}
		return serr
	}}
	tr := &http.Transport{DialContext: dialer.DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: progressTransport{tr}}
	ctx, w := newWatchdog(t.Context(), timeout)
	defer w.release()
	w.arm()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return stalledBy(ctx, err), err
}

// smallSocketBuffer is the kernel's send and receive buffer of the tests' connections.
const smallSocketBuffer = 64 << 10

// newSmallBufferServer starts h on a loopback listener whose connections have small receive buffers
// (see watched).
func newSmallBufferServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			// Set on the listener, the size is inherited by accepted connections.
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, smallSocketBuffer)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	return srv
}

// A server that answers slowly but steadily is making progress: the request takes several times the
// timeout and succeeds.
func TestWatchdogSlowAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
		for range 10 {
			w.Write([]byte(" ")) // as S3 keeps a long CompleteMultipartUpload alive
			w.(http.Flusher).Flush()
			time.Sleep(250 * time.Millisecond)
		}
	}))
	defer srv.Close()
	// 2.5s in all, 250ms at a time: the timeout is generous for a busy machine, and still well short.
	if stalledCtx, err := watched(t, http.MethodPost, srv.URL, bytes.NewReader(make([]byte, 1<<20)), time.Second); err != nil || stalledCtx {
		t.Fatalf("a steady slow answer: %v (stalled %v), want success", err, stalledCtx)
	}
}

// A server that takes a large body slowly but steadily is making progress too.
func TestWatchdogSlowUpload(t *testing.T) {
	srv := newSmallBufferServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 1<<20)
		for {
			if _, err := io.ReadFull(r.Body, buf); err != nil {
				break
			}
			time.Sleep(100 * time.Millisecond) // 10 MiB/s: 32 MiB take over 3s
		}
	}))
	defer srv.Close()
	if stalledCtx, err := watched(t, http.MethodPut, srv.URL, bytes.NewReader(make([]byte, 32<<20)), 2*time.Second); err != nil || stalledCtx {
		t.Fatalf("a steady slow upload: %v (stalled %v), want success", err, stalledCtx)
	}
}

// A server that accepts the connection and answers nothing is cut off once nothing moved for the
// timeout: waiting for the answer to a small request, and sending a body it does not take.
func TestWatchdogSilentServer(t *testing.T) {
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Until the test ends: with the body not taken, the server cannot see the client go.
		<-done
	}))
	defer srv.Close()
	defer close(done)
	for _, size := range []int{0, 64 << 20} {
		start := time.Now()
		stalledCtx, err := watched(t, http.MethodPut, srv.URL, bytes.NewReader(make([]byte, size)), 300*time.Millisecond)
		if err == nil || !stalledCtx {
			t.Fatalf("a silent server, %d bytes sent: %v (stalled %v), want the watchdog to end the request", size, err, stalledCtx)
		}
		t.Logf("%d bytes to a silent server: cut off after %v: %v", size, time.Since(start).Round(time.Millisecond), err)
	}
}

// A disarmed watchdog waits for nothing, however long; armed, it ends its context.
func TestWatchdogDisarmed(t *testing.T) {
	ctx, w := newWatchdog(t.Context(), 50*time.Millisecond)
	defer w.release()
	w.arm()
	w.disarm()
	time.Sleep(200 * time.Millisecond)
	if ctx.Err() != nil {
		t.Fatalf("a disarmed watchdog ended its context: %v", context.Cause(ctx))
	}
	w.arm()
	<-ctx.Done()
	if !stalledBy(ctx, ctx.Err()) {
		t.Fatalf("the context ended with %v, want errStalled", context.Cause(ctx))
	}
	if stalledBy(ctx, errors.New("an answer that came in as the watchdog fired")) {
		t.Error("an answer that is not the context's end was taken for a stall")
	}
}
