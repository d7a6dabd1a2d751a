package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// UnauthorizedText is the reply to a request to an internal service without the right bearer token.
const UnauthorizedText = "Error: missing or wrong bearer token"

const bearerScheme = "Bearer"

// MinTokenLen is the shortest token accepted: 32 characters, 128 bits or more however it was made
// (hex, base64), out of reach of guessing even at many attempts a second.
const MinTokenLen = 32

// Failed attempts allowed per client address (ClientAddr of the connection's peer): a burst, then one
// a second. A client that presents the right token is never limited.
const (
	failedAuthBurst = 10
	failedAuthRate  = 1.0
)

// constantTimeCompare compares the presented token with the expected one; a variable only so a test can
// see it is the one used.
var constantTimeCompare = subtle.ConstantTimeCompare

// RequireToken lets through only requests that carry "Authorization: Bearer <token>" (the scheme is
// case-insensitive), and answers every other one 401 with UnauthorizedText and "WWW-Authenticate: Bearer".
// GET (and HEAD) /healthz and /livez stay open for probes: they reveal nothing. The tokens are compared in
// constant time, as SHA-256 digests so that not even the length of the expected token leaks. An empty
// token turns the check off and returns next itself.
//
// Wrong tokens are throttled per client address (of the connection: a proxy's X-Forwarded-For is not
// trusted here): after failedAuthBurst of them, one a second, and the others answer 429 with
// Retry-After without being compared. The token is checked first, so the right one always passes.
func RequireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := sha256.Sum256([]byte(token))
	failures := NewKeyedLimiter(failedAuthRate, failedAuthBurst, MaxLimiterKeys, time.Now)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.URL.Path == "/healthz" || r.URL.Path == "/livez") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			next.ServeHTTP(w, r)
			return
		}
		if bearerMatches(r.Header.Get("Authorization"), want) {
			next.ServeHTTP(w, r)
			return
		}
		if wait, ok := failures.Allow(ClientAddr(r, false)); !ok {
			secs := RetryAfterSeconds(wait)
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			WriteText(w, http.StatusTooManyRequests, fmt.Sprintf("Error: too many failed attempts with a wrong token, retry in %ds", secs))
			return
		}
		w.Header().Set("WWW-Authenticate", bearerScheme)
		WriteText(w, http.StatusUnauthorized, UnauthorizedText)
	})
}

// bearerMatches reports whether an Authorization header value is the bearer token whose digest is want.
func bearerMatches(header string, want [sha256.Size]byte) bool {
	scheme, presented, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, bearerScheme) {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(presented)))
	return constantTimeCompare(got[:], want[:]) == 1
}

// CheckToken reports whether token can be used as the shared bearer token: it goes into a header, so it
// must be printable ASCII without spaces, and it must be long enough not to be guessed (MinTokenLen).
// The empty token (no token) is fine.
func CheckToken(token string) error {
	if token != "" && len(token) < MinTokenLen {
		return fmt.Errorf("the token is too short (%d of at least %d characters): use a long random one, e.g. from `openssl rand -base64 32`", len(token), MinTokenLen)
	}
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c > '~' {
			return errors.New("the token must be printable ASCII without spaces")
		}
	}
	return nil
}
