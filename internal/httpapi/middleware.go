package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"
)

// RequestIDHeader carries one request id across services.
const RequestIDHeader = "X-Request-Id"

type ctxKey int

const (
	requestIDKey ctxKey = iota
	loggerKey
	routeKey
)

// UnmatchedRoute is the route a RequestObserver is told for a request no route of the service matched
// (answered 404 or 405, or refused before routing, say 401 without the token).
const UnmatchedRoute = "unmatched"

// RequestObserver is told about every request a server answered, once the reply is done (see
// WithObserver): the metrics of a service.
type RequestObserver interface {
	// ObserveRequest gets the route, which is the ServeMux pattern that matched the request (r.Pattern,
	// such as "POST /new"), never its raw path, so that ids in paths cannot make one series per
	// request; UnmatchedRoute when no route matched. status is the reply's (500 after a panic).
	ObserveRequest(route, method string, status int, elapsed time.Duration)
}

// routeNote is where a fallback handler notes, for the observer, that no real route matched.
type routeNote struct{ unmatched bool }

// markUnmatched notes that r reached a fallback handler (see Unmatched), not a route.
func markUnmatched(r *http.Request) {
	if n, ok := r.Context().Value(routeKey).(*routeNote); ok {
		n.unmatched = true
	}
}

// routeOf is the route label of r once it was served.
func routeOf(r *http.Request, note *routeNote) string {
	if note.unmatched || r.Pattern == "" {
		return UnmatchedRoute
	}
	return r.Pattern
}

// RequestID returns the request id carried by ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

// WithRequestID returns ctx carrying id; outgoing requests made with it send the id on.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey, id)
}

// LoggerFrom returns the request-scoped logger stored by Wrap, or slog.Default.
func LoggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// NewRequestID returns 64 random bits in hex.
func NewRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Wrap adds the plumbing every service shares around its routes: a request id (taken from the caller so
// one upload can be followed through every service, or made here), a request-scoped logger, panic
// recovery and an access log line.
func Wrap(h http.Handler, logger *slog.Logger) http.Handler {
	return wrap(h, logger, nil)
}

// wrap is Wrap, also telling observer (when not nil) about every request.
func wrap(h http.Handler, logger *slog.Logger, observer RequestObserver) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get(RequestIDHeader)
		if id == "" || len(id) > 128 {
			id = NewRequestID()
		}
		w.Header().Set(RequestIDHeader, id)
		reqLogger := logger.With("request_id", id)
		ctx := context.WithValue(WithRequestID(r.Context(), id), loggerKey, reqLogger)
		note := &routeNote{}
		ctx = context.WithValue(ctx, routeKey, note)
		// The ServeMux below sets r.Pattern on this very request, which the observer reads afterwards.
		r = r.WithContext(ctx)
		rec := &recorder{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				reqLogger.ErrorContext(ctx, "panic", "panic", p, "stack", string(debug.Stack()))
				if rec.status == 0 {
					WriteText(rec, http.StatusInternalServerError, "Error: internal error")
				}
			}
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			elapsed := time.Since(start)
			level := slog.LevelInfo
			switch {
			case r.URL.Path == "/healthz" || r.URL.Path == "/livez" || r.URL.Path == "/metrics":
				// Probes and scrapes come every few seconds and say nothing about the work.
				level = slog.LevelDebug
			case status == http.StatusServiceUnavailable || status == http.StatusInsufficientStorage:
				// Refused while something it depends on is away or full: the service is working.
				level = slog.LevelWarn
			case status >= 500:
				level = slog.LevelError
			}
			reqLogger.Log(ctx, level, "request", "method", r.Method, "path", r.URL.Path,
				"status", status, "bytes", rec.bytes, "duration", elapsed)
			if observer != nil {
				observer.ObserveRequest(routeOf(r, note), r.Method, status, elapsed)
			}
		}()
		if n := headerBytes(r); n > MaxHeaderBytes {
			WriteText(rec, http.StatusRequestHeaderFieldsTooLarge,
				fmt.Sprintf("Error: the request's line and headers are %d bytes, over the limit of %d", n, MaxHeaderBytes))
			return
		}
		h.ServeHTTP(rec, r)
	})
}

// headerBytes is about how many bytes the request's line and headers took on the wire.
func headerBytes(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + 4
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// recorder remembers the status and size of a reply for the access log.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer (flushes, deadlines).
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
