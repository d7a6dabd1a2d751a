package httpapi

import (
	"net"
	"net/http"
	"time"
)

// ClientTimeout bounds any single exchange, body included, as a backstop; calls also carry their own
// context deadlines.
const ClientTimeout = 15 * time.Minute

// NewClient returns the HTTP client services use to call each other: bounded dials and handshakes, enough
// idle connections per peer that a busy pipeline reuses them instead of exhausting ports, and the request
// id of the calling context sent on.
func NewClient() *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:           dialer.DialContext,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: requestIDTransport{transport}, Timeout: ClientTimeout}
}

type requestIDTransport struct{ next http.RoundTripper }

func (t requestIDTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if id := RequestID(r.Context()); id != "" && r.Header.Get(RequestIDHeader) == "" {
		r = r.Clone(r.Context())
		r.Header.Set(RequestIDHeader, id)
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
