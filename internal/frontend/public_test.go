package frontend

import (
	"errors"
	"fmt"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// TestPublicError: the master's refusals, which name internal ids, are reworded without them.
func TestPublicError(t *testing.T) {
	for _, c := range []struct {
		err    error
		status int
		text   string
	}{
		{&httpapi.Error{Status: 400, Msg: "no task with id 5"}, 404, "Error: no such task"},
		{&httpapi.Error{Status: 404, Msg: "no task with id 5"}, 404, "Error: no such task"},
		{&httpapi.Error{Status: 404, Msg: "task 5 is not finished"}, 404, "Error: task is not finished"},
		{&httpapi.Error{Status: 404, Msg: "task 5 failed: cannot decode image: bad"}, 404, "Error: task failed: cannot decode image: bad"},
		{&httpapi.Error{Status: 404, Msg: "task 5 failed: task 5 at 10.0.0.1 broke"}, 404, "Error: task failed: processing failed"},
		{&httpapi.Error{Status: 404, Msg: "no finished image for task 5"}, 404, "Error: the task's image is not available"},
		{fmt.Errorf("get: %w", &httpapi.Error{Status: 502, Msg: "master unavailable"}), 502, "Error: master unavailable"},
		{errors.New("boom"), 500, "Error: internal error"},
	} {
		err := publicError(c.err, 5)
		if httpapi.StatusOf(err) != c.status || httpapi.ErrorText(err) != c.text {
			t.Errorf("publicError(%v) = %d %q, want %d %q", c.err, httpapi.StatusOf(err), httpapi.ErrorText(err), c.status, c.text)
		}
	}
}

func TestPublicReason(t *testing.T) {
	for _, c := range []struct{ reason, want string }{
		{"cannot decode image: png: invalid format", "cannot decode image: png: invalid format"},
		{"upload never completed", "upload never completed"},
		{"lease lapsed on attempt 3 of 3", "lease lapsed on attempt 3 of 3"},
		{"fetch working image: 404 no working image for task 17", "processing failed"},
		{"store finished image: dial tcp 10.0.0.5:3002: connection refused", "processing failed"},
	} {
		if got := publicReason(c.reason); got != c.want {
			t.Errorf("publicReason(%q) = %q, want %q", c.reason, got, c.want)
		}
	}
}
