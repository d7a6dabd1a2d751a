package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Server timeouts. Reads and writes are long enough to stream a large image over a slow link and to hold
// a worker's long poll; headers must arrive quickly so a slow client cannot pin a connection.
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = 10 * time.Minute
	WriteTimeout      = 10 * time.Minute
	IdleTimeout       = 2 * time.Minute
	// MaxHeaderBytes bounds a request's line and headers: beyond it the middleware answers 431 with an
	// Error: text. The server itself reads up to maxHeaderRead, past which it can only answer net/http's
	// own plain 431.
	MaxHeaderBytes = 64 << 10
	maxHeaderRead  = 1 << 20
	ShutdownGrace  = 20 * time.Second
)

// ServerTimeouts are a server's timeouts. A zero field takes its default (the constants above), so the
// zero value is the production configuration; tests shorten them.
type ServerTimeouts struct {
	ReadHeader time.Duration // request line and headers; default ReadHeaderTimeout
	Read       time.Duration // the whole request, body included; default ReadTimeout
	Write      time.Duration // from the end of the headers to the end of the reply; default WriteTimeout
	Idle       time.Duration // a keep-alive connection between requests; default IdleTimeout
}

// withDefaults fills every zero (or negative) field with its default.
func (t ServerTimeouts) withDefaults() ServerTimeouts {
	if t.ReadHeader <= 0 {
		t.ReadHeader = ReadHeaderTimeout
	}
	if t.Read <= 0 {
		t.Read = ReadTimeout
	}
	if t.Write <= 0 {
		t.Write = WriteTimeout
	}
	if t.Idle <= 0 {
		t.Idle = IdleTimeout
	}
	return t
}

// ServerOption changes how NewHTTPServer and Serve build a server.
type ServerOption func(*serverOptions)

type serverOptions struct {
	timeouts ServerTimeouts
	observer RequestObserver
}

// WithTimeouts sets the server's timeouts; zero fields keep their defaults.
func WithTimeouts(t ServerTimeouts) ServerOption {
	return func(o *serverOptions) { o.timeouts = t }
}

// WithObserver has the server tell o about every request it answered (a service's metrics); nil
// observes nothing.
func WithObserver(o RequestObserver) ServerOption {
	return func(opts *serverOptions) { opts.observer = o }
}

// NewHTTPServer wraps h in the shared middleware and sets every server timeout (the defaults above unless
// WithTimeouts says otherwise).
func NewHTTPServer(h http.Handler, logger *slog.Logger, opts ...ServerOption) *http.Server {
	var o serverOptions
	for _, opt := range opts {
		opt(&o)
	}
	t := o.timeouts.withDefaults()
	return &http.Server{
		Handler:           wrap(h, logger, o.observer),
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    maxHeaderRead,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// Listen opens a TCP listener on addr.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// Serve serves h on ln until ctx ends, then stops accepting and drains in-flight requests for up to
// ShutdownGrace. It returns nil after a clean shutdown. opts are passed to NewHTTPServer.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, logger *slog.Logger, opts ...ServerOption) error {
	srv := NewHTTPServer(h, logger, opts...)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.InfoContext(ctx, "listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownGrace)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if serveErr := <-errc; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), serveErr)
	}
	if err != nil {
		srv.Close()
		return fmt.Errorf("shutdown %s: %w", ln.Addr(), err)
	}
	logger.InfoContext(ctx, "stopped", "addr", ln.Addr().String())
	return nil
}

// AdvertiseAddr is the host:port other services should dial to reach a listener bound to bound: an
// unspecified host (":3001", "0.0.0.0:3001") becomes loopback.
func AdvertiseAddr(bound net.Addr) string {
	tcp, ok := bound.(*net.TCPAddr)
	if !ok {
		return bound.String()
	}
	ip := tcp.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(tcp.Port))
}
