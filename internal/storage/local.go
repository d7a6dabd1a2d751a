package storage

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/wire"
)

// LocalAddr is what Local.Addr names the storage by in logs: it is reached through no address.
const LocalAddr = "in-process"

// Local is the storage service's API for callers in the same process: the methods of *client.Storage,
// with its semantics and refusals (the same statuses, messages and Retry-After, through
// client.CallLocal, which also retries transient failures as the HTTP client does), served directly by
// the server behind the service's HTTP API, without HTTP or a copy of the image bytes.
type Local struct{ s *server }

// SendImage stores size bytes of r (-1: unknown) under id and state, unfenced, as
// (*client.Storage).SendImage does.
func (l *Local) SendImage(ctx context.Context, id int64, state string, r io.Reader, size int64) error {
	return l.send(ctx, id, state, 0, r, size)
}

// SendResult stores size bytes of r (-1: unknown) as the finished image of task id under the lease token
// of the worker's claim, as (*client.Storage).SendResult does: a result stored with a larger token stays,
// and the error wraps client.ErrStaleToken and carries status 409.
func (l *Local) SendResult(ctx context.Context, id int64, token int64, r io.Reader, size int64) error {
	if token < 0 {
		return fmt.Errorf("send result of task %d: negative lease token %d", id, token)
	}
	err := l.send(ctx, id, wire.FinishedImage, token, r, size)
	if client.IsStatus(err, http.StatusConflict) {
		return fmt.Errorf("%w: %w", client.ErrStaleToken, err)
	}
	return err
}

// send stores an image. As over HTTP, a transient refusal is tried again only when the body can be
// read again from where it started (client.Replayer); a failure to read the body is the caller's
// (client.IsBodyError).
func (l *Local) send(ctx context.Context, id int64, state string, token int64, r io.Reader, size int64) error {
	if size <= 0 {
		// As net/http sends a body of length 0 that is not empty: streamed, its end unknown.
		size = -1
	}
	replay := client.Replayer(r)
	_, err := client.CallLocal(ctx, replay != nil, func(ctx context.Context) (struct{}, error) {
		body := r
		if replay != nil {
			body = replay()
		}
		return client.ReadingBody(body, func(body io.Reader) (struct{}, error) {
			return struct{}{}, l.s.store(ctx, id, state, token, body, size)
		})
	})
	return err
}

// GetImage opens the image stored under id and state, as (*client.Storage).GetImage does: its
// ContentType sniffed from its first bytes as the HTTP API's, its Size and its Token. The caller
// reads the blob directly and must Close it.
func (l *Local) GetImage(ctx context.Context, id int64, state string) (*client.Image, error) {
	return client.CallLocal(ctx, true, func(ctx context.Context) (*client.Image, error) {
		blob, err := l.s.open(ctx, id, state)
		if err != nil {
			return nil, err
		}
		contentType, err := sniff(blob)
		if err != nil {
			blob.Close()
			return nil, fmt.Errorf("read the %s image of task %d: %w", state, id, err)
		}
		return &client.Image{ReadCloser: l.s.metrics.reading(blob, state), Size: blob.Size,
			ContentType: contentType, Token: blob.Fence}, nil
	})
}

// sniff returns the Content-Type of the blob's content as http.ServeContent sniffs it, leaving the
// blob at its start.
func sniff(blob io.ReadSeeker) (string, error) {
	var head [512]byte // what http.DetectContentType considers
	n, err := io.ReadFull(blob, head[:])
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return "", err
	}
	if _, err := blob.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	return http.DetectContentType(head[:n]), nil
}

// HasImage reports whether storage holds the image of task id in state, as (*client.Storage).HasImage
// does: a refusal of the id or state is no image either.
func (l *Local) HasImage(ctx context.Context, id int64, state string) (bool, error) {
	ok, err := client.CallLocal(ctx, true, func(ctx context.Context) (bool, error) {
		blob, err := l.s.open(ctx, id, state)
		if err != nil {
			return false, err
		}
		blob.Close()
		return true, nil
	})
	if client.IsStatus(err, http.StatusNotFound) || client.IsStatus(err, http.StatusBadRequest) {
		return false, nil
	}
	return ok, err
}

// DeleteImages removes both images of task id, its upload and its result; images that are not there are
// no error.
func (l *Local) DeleteImages(ctx context.Context, id int64) error {
	return l.remove(ctx, id, wire.WorkingImage, wire.FinishedImage)
}

// DeleteResult removes the result of task id, if any.
func (l *Local) DeleteResult(ctx context.Context, id int64) error {
	return l.remove(ctx, id, wire.FinishedImage)
}

// DeleteImage removes the image of task id in state (wire.WorkingImage or wire.FinishedImage), if any.
func (l *Local) DeleteImage(ctx context.Context, id int64, state string) error {
	return l.remove(ctx, id, state)
}

func (l *Local) remove(ctx context.Context, id int64, states ...string) error {
	_, err := client.CallLocal(ctx, true, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, l.s.remove(ctx, id, states...)
	})
	return err
}

// ListBlobs returns one page of the blobs whose keys start with prefix, in key order, from the first
// after the cursor after ("" from the start); limit <= 0 takes the default page (wire.MaxBlobPage), and
// one above it is refused (400), as over HTTP.
func (l *Local) ListBlobs(ctx context.Context, prefix, after string, limit int) (wire.BlobPage, error) {
	if limit <= 0 {
		limit = wire.MaxBlobPage
	}
	return client.CallLocal(ctx, true, func(ctx context.Context) (wire.BlobPage, error) {
		return l.s.list(ctx, prefix, after, limit)
	})
}

// Addr names the storage in logs: LocalAddr, as it is reached through no address.
func (l *Local) Addr(context.Context) (string, error) { return LocalAddr, nil }
