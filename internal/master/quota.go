package master

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/imgmill/imgmill/internal/httpapi"
)

// quotaRetryAfter is the Retry-After of an upload refused for its owner's quota: room comes back as soon
// as the owner deletes a task, or when retention removes one, so a client should look again now and
// then rather than hammer.
const quotaRetryAfter = time.Minute

// quotaFreesRoom tells a refused client how room comes back.
const quotaFreesRoom = "delete tasks you no longer need (DELETE /task), or wait until retention removes old ones"

// quotaOn reports whether any per-owner quota is set: without one, uploads cost no usage lookup.
func (l Limits) quotaOn() bool { return l.QuotaTasks > 0 || l.QuotaBytes > 0 }

// checkQuota refuses an upload of size bytes (-1: unknown) by owner when the owner keeps as many tasks
// as QuotaTasks (429) or its images would pass QuotaBytes (507). Otherwise it returns what the upload's
// body must be read through: a reader that stops it at the owner's room (when its length is unknown it
// can only be told on the way). counted is whether the usage already holds the upload's own task
// (created pending before the check).
func (s *server) checkQuota(ctx context.Context, owner string, size int64, counted bool) (limit func(io.Reader) io.Reader, err error) {
	unlimited := func(r io.Reader) io.Reader { return r }
	if !s.limits.quotaOn() {
		return unlimited, nil
	}
	u, err := s.db.Usage(ctx, owner)
	if err != nil {
		return nil, fmt.Errorf("read the usage of the upload's owner: %w", err)
	}
	tasks := u.Tasks
	if counted {
		tasks--
	}
	if max := s.limits.QuotaTasks; max > 0 && tasks >= max {
		s.metrics.countQuotaRefusal("tasks")
		return nil, &httpapi.Error{Status: http.StatusTooManyRequests, RetryAfter: quotaRetryAfter,
			Msg: fmt.Sprintf("quota: %s keeps %d tasks, the most one owner may keep is %d: %s", ownerName(owner), tasks, max, quotaFreesRoom)}
	}
	max := s.limits.QuotaBytes
	if max <= 0 {
		return unlimited, nil
	}
	room := max - u.Bytes
	if room <= 0 || size > room {
		s.metrics.countQuotaRefusal("bytes")
		return nil, quotaBytesError(owner, u.Bytes, size, max)
	}
	return func(r io.Reader) io.Reader {
		return &quotaReader{r: r, room: room, over: errOverQuota{owner: owner, used: u.Bytes, max: max}}
	}, nil
}

// quotaBytesError refuses an upload of size bytes (-1: unknown, and already past the room) by an owner
// whose images take used bytes of the max it may keep.
func quotaBytesError(owner string, used, size, max int64) error {
	upload := ""
	if size >= 0 {
		upload = fmt.Sprintf(" and this image %d more", size)
	}
	return &httpapi.Error{Status: http.StatusInsufficientStorage, RetryAfter: quotaRetryAfter,
		Msg: fmt.Sprintf("quota: the images of %s take %d bytes%s, the most one owner may keep is %d: %s",
			ownerName(owner), used, upload, max, quotaFreesRoom)}
}

// ownerName names an owner in a refusal.
func ownerName(owner string) string {
	if owner == "" {
		return "the anonymous owner"
	}
	return fmt.Sprintf("owner %q", owner)
}

// errOverQuota is the error of an upload of unknown length that went past its owner's room: the owner's
// images took used bytes of the max it may keep before it.
type errOverQuota struct {
	owner     string
	used, max int64
}

func (e *errOverQuota) Error() string { return "upload past the quota of " + ownerName(e.owner) }

// quotaReader passes r through until more than room bytes came, then fails with errOverQuota: an upload
// of unknown length stops at its owner's room rather than being stored and then refused.
type quotaReader struct {
	r    io.Reader
	room int64
	over errOverQuota
}

func (q *quotaReader) Read(p []byte) (int, error) {
	if int64(len(p)) > q.room+1 {
		p = p[:q.room+1] // one byte past the room tells an upload that goes over from one that fits
	}
	n, err := q.r.Read(p)
	q.room -= int64(n)
	if q.room < 0 {
		return 0, &q.over
	}
	return n, err
}

// overQuota is the refusal of an upload that err stopped at its owner's room, if it did.
func overQuota(err error) (error, bool) {
	var e *errOverQuota
	if !errors.As(err, &e) {
		return nil, false
	}
	return quotaBytesError(e.owner, e.used, -1, e.max), true
}

// counting counts the bytes read through it: the size of the stored image, for the owner's usage.
type counting struct {
	r io.Reader
	n int64
}

func (c *counting) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
