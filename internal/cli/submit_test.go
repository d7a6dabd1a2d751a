package cli

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNotSentReason: why a file was not sent reads as a reason, not as the error chain of the HTTP
// client, and a refused connection asks whether imgmill runs there.
func TestNotSentReason(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there
	// What the API client's upload fails with when the server cannot be reached (its retries aside).
	_, refused := http.Post(server+"/api/tasks", "application/octet-stream", strings.NewReader("x"))
	refused = fmt.Errorf("POST %s/api/tasks: %w", server, refused)
	file := filepath.Join(t.TempDir(), "nonexist.png")
	_, missing := os.Open(file)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{refused, "connection refused: is imgmill serve running at " + server + "?"},
		{missing, "cannot read it: no such file or directory"},
		{errOpRefused, "the server refused the op"},
		{errors.New("x is not a regular file"), "x is not a regular file"},
	} {
		if got := notSentReason(tc.err, server); got != tc.want {
			t.Errorf("notSentReason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if got := outageReason(refused, server); !strings.HasPrefix(got, "server unavailable (connection refused") {
		t.Errorf("outageReason(%v) = %q", refused, got)
	}
}
