package imageop

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// Every pixel loop checks its context once a row (or once a block of rows), and the decoders and
// encoders read and write through ones that fail once it ends, so that a task stops within a small
// fraction of a second of its deadline: a row of the largest image takes about a millisecond.

// stopped returns nil while ctx goes on, and once it has ended an error wrapping context.Cause(ctx)
// (and ctx.Err(), when a cause other than it was given, so errors.Is finds context.Canceled or
// context.DeadlineExceeded either way).
func stopped(ctx context.Context) error {
	err := ctx.Err()
	if err == nil {
		return nil
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, err) {
		return fmt.Errorf("imageop: stopped: %w (%w)", cause, err)
	}
	return fmt.Errorf("imageop: stopped: %w", err)
}

// ctxReader fails its reads once ctx has ended. It is an io.ReaderAt too when r is, so that the TIFF
// decoder, which reads strips and tiles at offsets, goes through it as well.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(b []byte) (int, error) {
	if err := stopped(c.ctx); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// ctxReaderAt is a ctxReader over an io.ReaderAt.
type ctxReaderAt struct {
	ctxReader
	ra io.ReaderAt
}

func (c *ctxReaderAt) ReadAt(b []byte, off int64) (int, error) {
	if err := stopped(c.ctx); err != nil {
		return 0, err
	}
	return c.ra.ReadAt(b, off)
}

// ctxWriter fails its writes once ctx has ended.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(b []byte) (int, error) {
	if err := stopped(c.ctx); err != nil {
		return 0, err
	}
	return c.w.Write(b)
}

// abortEncode is what jpegWriter panics with.
type abortEncode struct{ err error }

// jpegWriter is a ctxWriter that panics (with abortEncode) rather than failing: image/jpeg's encoder
// records a write error but goes on transforming every block to the end of the image, so the only
// way to stop it is to unwind it. encode recovers the panic. image/jpeg writes through a 4 KiB
// buffer, every few thousand pixels.
type jpegWriter struct{ ctxWriter }

func (j *jpegWriter) Write(b []byte) (int, error) {
	if err := stopped(j.ctx); err != nil {
		panic(abortEncode{err})
	}
	return j.w.Write(b)
}
