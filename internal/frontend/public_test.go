package frontend

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/wire"
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
		{&httpapi.Error{Status: 404, Msg: "task 5 failed: cannot decode image: bad"}, 404, "Error: task failed: cannot decode image: bad: save it as PNG or JPEG and upload it again"},
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

// TestPublicReason: every state's public error, each said once, the reason first and then what to do;
// attempts only for a task that will be retried.
func TestPublicReason(t *testing.T) {
	const advice = ": save it as PNG or JPEG and upload it again"
	for _, c := range []struct {
		state        wire.Word
		reason, want string
	}{
		{wire.FailedWord, "cannot decode image: png: invalid format", "cannot decode image: png: invalid format" + advice},
		{wire.FailedWord, "cannot read this TIFF: its header is malformed (x)" + advice, "cannot read this TIFF: its header is malformed (x)" + advice},
		{wire.FailedWord, imageop.NotImageMessage, imageop.NotImageMessage},
		{wire.FailedWord, "upload never completed", "upload never completed"},
		{wire.FailedWord, "image is 9000x9000 pixels, over the limit of 50000000 pixels (50 MP) in all: scale it down and upload it again", "image is 9000x9000 pixels, over the limit of 50000000 pixels (50 MP) in all: scale it down and upload it again"},
		{wire.FailedWord, "took longer than 30 s (the limit for this image and chain): try a smaller image or fewer steps",
			"took longer than 30 s (the limit for this image and chain): try a smaller image or fewer steps"},
		{wire.FailedWord, "lease lapsed on attempt 3 of 3",
			"processing stopped before it finished, every time it was tried: the image may be too large for the chain; try a smaller image or fewer steps"},
		{wire.QueuedWord, "lease lapsed on attempt 1 of 3", "processing stopped before it finished (attempt 1 of 3): it will be retried"},
		{wire.CancelledWord, wire.CancelledError, "cancelled"},
		{wire.CancelledWord, "cancelled by its owner at 10.0.0.1", "cancelled"},
		{wire.FailedWord, "fetch working image: 404 no working image for task 17", "processing failed"},
		{wire.FailedWord, "store finished image: dial tcp 10.0.0.5:3002: connection refused", "processing failed"},
	} {
		if got := publicReason(c.state, c.reason); got != c.want {
			t.Errorf("publicReason(%s, %q) = %q, want %q", c.state, c.reason, got, c.want)
		}
		if c.state != wire.QueuedWord && strings.Contains(publicReason(c.state, c.reason), "attempt") {
			t.Errorf("publicReason(%s, %q) mentions attempts for a task that is not retried", c.state, c.reason)
		}
	}
}
