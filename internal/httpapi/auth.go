package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
)

// UnauthorizedText is the reply to a request to an internal service without the right bearer token.
const UnauthorizedText = "Error: missing or wrong bearer token"

const bearerScheme = "Bearer"

// constantTimeCompare compares the presented token with the expected one; a variable only so a test can
// see it is the one used.
var constantTimeCompare = subtle.ConstantTimeCompare

// RequireToken lets through only requests that carry "Authorization: Bearer <token>" (the scheme is
// case-insensitive), and answers every other one 401 with UnauthorizedText and "WWW-Authenticate: Bearer".
// GET (and HEAD) /healthz and /livez stay open for probes: they reveal nothing. The tokens are compared in
// constant time, as SHA-256 digests so that not even the length of the expected token leaks. An empty
// token turns the check off and returns next itself.
func RequireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.URL.Path == "/healthz" || r.URL.Path == "/livez") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			next.ServeHTTP(w, r)
			return
		}
		if !bearerMatches(r.Header.Get("Authorization"), want) {
			w.Header().Set("WWW-Authenticate", bearerScheme)
			WriteText(w, http.StatusUnauthorized, UnauthorizedText)
			return
		}
		next.ServeHTTP(w, r)
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
// must be printable ASCII without spaces. The empty token (no token) is fine.
func CheckToken(token string) error {
	for i := 0; i < len(token); i++ {
		if c := token[i]; c <= ' ' || c > '~' {
			return errors.New("the token must be printable ASCII without spaces")
		}
	}
	return nil
}
