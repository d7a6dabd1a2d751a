package httpapi

import (
	"net"
	"net/http"
	"time"
)

// ClientTimeout bounds any single exchange, body included, as a backstop; calls also carry their own
// context deadlines.
const ClientTimeout = 15 * time.Minute

// ClientOption changes what NewClient builds.
type ClientOption func(*clientOptions)

type clientOptions struct{ token string }

// WithToken makes the client send "Authorization: Bearer <token>" on every request that does not set
// its own Authorization header: the shared secret of the internal services (see RequireToken). An empty
// token sends nothing.
func WithToken(token string) ClientOption {
	return func(o *clientOptions) { o.token = token }
}

// NewClient returns the HTTP client services use to call each other: bounded dials and handshakes, enough
// idle connections per peer that a busy pipeline reuses them instead of exhausting ports, the request id
// of the calling context sent on, and the bearer token when WithToken gives one.
func NewClient(opts ...ClientOption) *http.Client {
	var o clientOptions
	for _, opt := range opts {
		opt(&o)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:           dialer.DialContext,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	t := requestIDTransport{next: transport}
	if o.token != "" {
		t.authorization = bearerScheme + " " + o.token
	}
	return &http.Client{Transport: t, Timeout: ClientTimeout}
}

// requestIDTransport adds what every outgoing request carries: the request id of its context and, when
// set, the Authorization header.
type requestIDTransport struct {
	next          http.RoundTripper
	authorization string
}

func (t requestIDTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	id := RequestID(r.Context())
	addID := id != "" && r.Header.Get(RequestIDHeader) == ""
	addAuth := t.authorization != "" && r.Header.Get("Authorization") == ""
	if addID || addAuth {
		// A RoundTripper must not change the caller's request.
		r = r.Clone(r.Context())
		if addID {
			r.Header.Set(RequestIDHeader, id)
		}
		if addAuth {
			r.Header.Set("Authorization", t.authorization)
		}
	}
	return t.next.RoundTrip(r)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the wrapped transport; without it the
// call is a silent no-op and idle connections (and their goroutines) outlive the client's users.
func (t requestIDTransport) CloseIdleConnections() {
	if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
