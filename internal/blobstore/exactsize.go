package blobstore

import (
	"errors"
	"fmt"
	"io"
)

// ErrSizeMismatch is wrapped by the read error of an ExactSize reader whose stream is shorter or longer
// than announced: a truncated or confused upload, which Put must refuse rather than store.
var ErrSizeMismatch = errors.New("stream length differs from the announced size")

// ExactSize returns a reader of r that fails (wrapping ErrSizeMismatch) when r ends before size bytes
// or goes on after them. Stores wrap Put's body in it when the size is known.
func ExactSize(r io.Reader, size int64) io.Reader { return &exactReader{r: r, remaining: size} }

type exactReader struct {
	r         io.Reader
	remaining int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.remaining == 0 {
		// Probe for excess data with a one-byte read rather than trusting the caller.
		var one [1]byte
		n, err := e.r.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("%w: more than announced", ErrSizeMismatch)
		}
		return 0, err
	}
	if int64(len(p)) > e.remaining {
		p = p[:e.remaining]
	}
	n, err := e.r.Read(p)
	e.remaining -= int64(n)
	if err == io.EOF && e.remaining > 0 {
		return n, fmt.Errorf("%w: %d bytes short: %w", ErrSizeMismatch, e.remaining, io.ErrUnexpectedEOF)
	}
	return n, err
}
