package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
)

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
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get(RequestIDHeader)
		if id == "" || len(id) > 128 {
			id = NewRequestID()
		}
		w.Header().Set(RequestIDHeader, id)
		reqLogger := logger.With("request_id", id)
		ctx := context.WithValue(WithRequestID(r.Context(), id), loggerKey, reqLogger)
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
			level := slog.LevelInfo
			switch {
			case r.URL.Path == "/healthz":
				level = slog.LevelDebug
			case status >= 500:
				level = slog.LevelError
			}
			reqLogger.Log(ctx, level, "request", "method", r.Method, "path", r.URL.Path,
				"status", status, "bytes", rec.bytes, "duration", time.Since(start))
		}()
		h.ServeHTTP(rec, r)
	})
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
