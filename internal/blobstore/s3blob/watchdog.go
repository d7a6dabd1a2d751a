package s3blob

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// errStalled is the cause of a request's context ending because the server made no progress for
// Config.StallTimeout.
var errStalled = errors.New("the server made no progress")

// A watchdog ends a request's context when the server makes no progress for a while: no byte of the
// request's body taken, no response header, no byte of the response's body. It is armed while the
// store waits for the server, and disarmed while it waits for someone else (the caller reading a Blob
// slowly). A deadline per request could not tell a large upload on a slow link from a server that hangs;
// without any, a server that accepts connections but answers nothing (hung, or stalled by its disk)
// would hold every caller until its own context ends: minio-go's transport waits a minute for response
// headers, and forever for a request body to be taken.
type watchdog struct {
	timeout time.Duration
	cancel  context.CancelCauseFunc

	mu    sync.Mutex
	armed bool
	timer *time.Timer
}

type watchdogKey struct{}

// newWatchdog returns a context derived from ctx that the watchdog ends with errStalled, and the
// watchdog, disarmed. Release it when done.
func newWatchdog(ctx context.Context, timeout time.Duration) (context.Context, *watchdog) {
	ctx, cancel := context.WithCancelCause(ctx)
	w := &watchdog{timeout: timeout, cancel: cancel}
	w.timer = time.AfterFunc(timeout, func() { cancel(errStalled) })
	w.timer.Stop()
	return context.WithValue(ctx, watchdogKey{}, w), w
}

// arm starts the wait for progress.
func (w *watchdog) arm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = true
	w.timer.Reset(w.timeout)
}

// disarm stops the wait: nothing is expected of the server for now.
func (w *watchdog) disarm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = false
	w.timer.Stop()
}

// kick records progress: the wait starts over.
func (w *watchdog) kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.armed {
		w.timer.Reset(w.timeout)
	}
}

// release disarms the watchdog and ends its context.
func (w *watchdog) release() {
	w.disarm()
	w.cancel(nil)
}

// stalledBy reports whether err is the end of ctx, a watchdog's context, by the watchdog: not an answer
// that came in just as it fired.
func stalledBy(ctx context.Context, err error) bool {
	return errors.Is(context.Cause(ctx), errStalled) && (errors.Is(err, context.Canceled) || errors.Is(err, errStalled))
}

// progressTransport tells the watchdog of a request's context (if any) of the request's progress.
type progressTransport struct{ base http.RoundTripper }

func (p progressTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	w, _ := req.Context().Value(watchdogKey{}).(*watchdog)
	if w == nil {
		return p.base.RoundTrip(req)
	}
	if req.Body != nil && req.Body != http.NoBody {
		// A RoundTripper must not change the caller's request: a shallow copy carries the wrapped body.
		r := req.Clone(req.Context())
		r.Body = progressBody{req.Body, w}
		if getBody := req.GetBody; getBody != nil {
			r.GetBody = func() (io.ReadCloser, error) {
				body, err := getBody()
				if err != nil {
					return nil, err
				}
				return progressBody{body, w}, nil
			}
		}
		req = r
	}
	resp, err := p.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	w.kick()
	resp.Body = progressBody{resp.Body, w}
	return resp, nil
}

// progressBody kicks the watchdog on every read that moved data: the transport took a piece of the
// request's body to send, or the server sent a piece of the response's.
type progressBody struct {
	io.ReadCloser
	w *watchdog
}

func (b progressBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.w.kick()
	}
	return n, err
}
