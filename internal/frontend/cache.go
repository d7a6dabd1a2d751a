package frontend

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// Caching of a task's images (/api/tasks/{id}/result and /source). Both are written once: the upload
// when the task is created, the result when it finishes. An operator may requeue a finished task by
// hand, and it then gets a new result, so the result's ETag is made from the finish time, which changes
// then, and the source's from the creation time. Both come from the task's status, so a conditional
// request is answered 304 without reading the image from the master.

// immutable is the Cache-Control of an image that never changes under its URL: kept a year, by this
// browser only (the URL is a capability), never revalidated.
const immutable = "private, max-age=31536000, immutable"

// imageETag is the strong ETag of the image kind ("result" or "source") of the task with public id
// public, written at at. It is opaque: the public id rather than the internal one goes into the digest,
// since a small internal id and a known time could be found from it by trying.
func imageETag(kind, public string, at time.Time) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + public + "\x00" + strconv.FormatInt(at.UnixNano(), 10)))
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:16]) + `"`
}

// noneMatch reports whether r's If-None-Match names etag (or is "*"): the client holds the image. The
// comparison is weak (RFC 9110, 13.1.2): a W/ prefix is ignored.
func noneMatch(r *http.Request, etag string) bool {
	for _, v := range r.Header.Values("If-None-Match") {
		for tag := range strings.SplitSeq(v, ",") {
			tag = strings.TrimSpace(tag)
			if tag == "*" || strings.TrimPrefix(tag, "W/") == etag {
				return true
			}
		}
	}
	return false
}

// cacheable sets the headers of an image that never changes under its URL.
func cacheable(h http.Header, etag string) {
	h.Set("ETag", etag)
	h.Set("Cache-Control", immutable)
}

// notModified answers 304 for an image the client holds: no body, the headers a 200 would cache by.
func notModified(w http.ResponseWriter, etag string) {
	cacheable(w.Header(), etag)
	w.WriteHeader(http.StatusNotModified)
}

// checkImageETag asks the master for task id's status and, when written finds the time its image of
// kind was written (zero: not written yet), returns the image's ETag, or its thumbnail's when width > 0;
// answered is true when the request named that ETag and has been answered 304. It returns the status
// too (the download's name is made from it).
func (s *server) checkImageETag(w http.ResponseWriter, r *http.Request, id int64, kind, public string, width int,
	written func(wire.Status) time.Time,
) (st wire.Status, etag string, answered bool, err error) {
	st, err = s.master.Status(r.Context(), id)
	if err != nil {
		return st, "", false, publicError(err, id)
	}
	at := written(st)
	if at.IsZero() {
		return st, "", false, nil
	}
	etag = imageETag(kind, public, at)
	if width > 0 {
		etag = thumbETag(etag, width)
	}
	if noneMatch(r, etag) {
		notModified(w, etag)
		return st, etag, true, nil
	}
	return st, etag, false, nil
}
