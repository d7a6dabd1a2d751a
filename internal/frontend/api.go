package frontend

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/wire"
)

// The JSON API under /api/: the same tasks as the reference paths, by the same public ids, with JSON
// answers and {"error":"..."} refusals (httpapi.JSONHandlerFunc).

// FileField is the multipart field of POST /api/tasks that carries the image; OpField names the
// operation (it must come before the file).
const (
	FileField = "file"
	OpField   = "op"
	// NameParam is the query parameter that names an upload (the file's name, to name the downloads):
	// the way to name a raw body; it wins over a multipart part's filename.
	NameParam = "name"
)

// openAPIDoc is the OpenAPI 3.1 document of the public API (every route of routes.go but the catch-all),
// kept by hand; TestOpenAPIDocument holds it to the routes and to real answers.
//
//go:embed openapi.json
var openAPIDoc []byte

func (s *server) handleOpenAPI(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-cache")
	_, err := w.Write(openAPIDoc)
	return err
}

// limitsMaxAge is how long a client may keep GET /api/limits: briefly, since an operator may change them.
const limitsMaxAge = "max-age=300"

// handleLimits answers the limits an upload must keep, for the page to show them before an upload and
// to refuse a file over maxUploadBytes before sending it.
func (s *server) handleLimits(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "public, "+limitsMaxAge)
	return httpapi.WriteJSON(w, http.StatusOK, wire.Limits{
		MaxUploadBytes: max(s.opts.MaxUpload, 0), MaxPixels: max(s.opts.MaxPixels, 0), MaxChainLength: imageop.MaxChainLen})
}

// handleOperations lists every operation with its parameters: the page's picker and imgmill submit
// build chains from it.
func (s *server) handleOperations(w http.ResponseWriter, r *http.Request) error {
	return httpapi.WriteJSON(w, http.StatusOK, wire.Operations{Operations: imageop.Operations()})
}

// handleCreateTask takes the image as the multipart field "file" (an "op" field may come first) or, with
// any other Content-Type, as the raw body, and streams it to the master under the same limits as
// /submitTask.
func (s *server) handleCreateTask(w http.ResponseWriter, r *http.Request) error {
	u, err := s.receive(w, r)
	if err != nil {
		return err
	}
	if err := u.setOp(r.URL.Query().Get(OpField)); err != nil {
		return err
	}
	u.setName(r.URL.Query().Get(NameParam))
	var id int64
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "multipart/form-data" {
		if id, err = u.send(r.Context(), w, u.body); err != nil {
			return err
		}
	} else if id, err = s.createFromForm(w, r, u); err != nil {
		return err
	}
	public := u.ids.Encode(id)
	base := "/api/tasks/" + public
	w.Header().Set("Location", base)
	return httpapi.WriteJSON(w, http.StatusCreated, wire.TaskCreated{ID: public, State: wire.QueuedWord, StatusURL: base,
		ResultURL: base + "/result", EventsURL: base + "/events", SourceURL: base + "/source"})
}

// createFromForm streams the file field of a multipart upload, taking an op field before it. Unlike
// /submitTask (the reference's, lenient for its clients), it refuses what it would otherwise ignore or
// guess: an unknown field, a second op, an op that contradicts the query's, and, once the file has
// streamed, any field after it (see restChecked).
func (s *server) createFromForm(w http.ResponseWriter, r *http.Request, u *upload) (int64, error) {
	mr, err := r.MultipartReader()
	if err != nil {
		return 0, httpapi.Errorf(http.StatusBadRequest, "malformed multipart body: %v", err)
	}
	queryOp, formOp := u.op, false
	for {
		part, err := mr.NextPart()
		if err := u.partError(err, FileField); err != nil {
			return 0, err
		}
		switch name := part.FormName(); name {
		case FileField:
			u.setName(part.FileName())
			rest := &restChecked{r: part, check: func() error { return u.checkRest(mr) }}
			id, err := u.send(r.Context(), w, rest)
			if rest.err != nil { // the master gave up the task of the broken-off body: nothing is queued
				return 0, rest.err
			}
			return id, err
		case OpField:
			if formOp {
				return 0, httpapi.Errorf(http.StatusBadRequest, "the %q field is given twice: give the operation chain once", OpField)
			}
			formOp = true
			spec, err := u.readField(part, OpField)
			if err != nil {
				return 0, err
			}
			if spec == "" { // an empty field is no chain, as an empty query op is
				continue
			}
			if err := u.setOp(spec); err != nil {
				return 0, err
			}
			if queryOp != "" && u.op != queryOp {
				return 0, httpapi.Errorf(http.StatusBadRequest,
					"op is given twice and differently: %q in the query, %q in the form: give the chain once, in the query or in the form", queryOp, u.op)
			}
		default:
			part.Close()
			return 0, unknownField(name)
		}
	}
}

// unknownField refuses a form field POST /api/tasks does not take (a typo such as "ops" would
// otherwise be ignored).
func unknownField(name string) error {
	return httpapi.Errorf(http.StatusBadRequest, "unknown form field %q: POST /api/tasks takes the fields %q (the operation chain, before the file) and %q (the image)",
		name, OpField, FileField)
}

// checkRest reads what follows the file part of a form: its closing boundary (nil), or a refusal of
// the field found there, which would otherwise go unread.
func (u *upload) checkRest(mr *multipart.Reader) error {
	part, err := mr.NextPart()
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return u.partError(err, FileField)
	}
	defer part.Close()
	switch name := part.FormName(); name {
	case OpField:
		return httpapi.Errorf(http.StatusBadRequest, "the %q field comes after the file, where it would be ignored: send %q before %q, or give the chain in the query (?op=...)",
			OpField, OpField, FileField)
	case FileField:
		return httpapi.Errorf(http.StatusBadRequest, "a second %q field: send one image per request", FileField)
	default:
		return unknownField(name)
	}
}

// restChecked reads the file part r and, at its end, runs check on the rest of the form before it
// answers EOF: a refusal then fails the read instead, so the upload to the master breaks off before its
// end and nothing is queued, though the file has already streamed. err is the refusal; it is read
// only after the upload call returned (lentReader orders the two).
type restChecked struct {
	r     io.Reader
	check func() error
	err   error
}

func (c *restChecked) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	if errors.Is(err, io.EOF) {
		if c.err = c.check(); c.err != nil {
			return n, c.err
		}
	}
	return n, err
}

// apiTask decodes the public id in the path.
func (s *server) apiTask(r *http.Request) (int64, string, error) {
	public := r.PathValue("id")
	id, err := s.decode(public)
	return id, public, err
}

func (s *server) handleTask(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.apiTask(r)
	if err != nil {
		return err
	}
	st, err := s.status(r.Context(), id, public)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, st)
}

// DownloadParam is the query parameter of GET /api/tasks/{id}/result that, as 0, serves the image
// inline (to open in a tab) rather than as an attachment.
const DownloadParam = "download"

// resultCSP is the Content-Security-Policy of an image served by the API: shown in a tab, it runs no
// script and loads nothing, whatever a browser would make of its bytes.
const resultCSP = "sandbox; default-src 'none'"

// handleTaskResult serves the finished image, as an attachment or (?download=0) inline, or with ?w=N
// a thumbnail of it (thumb.go). Once the task
// is finished it is cacheable for good under an ETag made from its status (cache.go), and a request
// naming that ETag is answered 304 without reading the image.
func (s *server) handleTaskResult(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.apiTask(r)
	if err != nil {
		return err
	}
	download := true
	if v := r.URL.Query().Get(DownloadParam); v != "" {
		if download, err = strconv.ParseBool(v); err != nil {
			return httpapi.Errorf(http.StatusBadRequest, "%s=%q: give %s=0 to show the image, %s=1 (the default) to download it",
				DownloadParam, v, DownloadParam, DownloadParam)
		}
	}
	width, err := thumbWidth(r)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store") // "not finished" must not be kept: it changes
	st, etag, answered, err := s.checkImageETag(w, r, id, "result", public, width, func(st wire.Status) time.Time {
		if st.State != wire.FinishedWord {
			return time.Time{}
		}
		return st.FinishedAt
	})
	if err != nil || answered {
		return err
	}
	if width > 0 {
		// Not finished: the master's Get refuses it, as below.
		return s.serveThumb(w, r, id, "result", etag, width, s.master.Get)
	}
	// Not finished: the master's Get refuses it, in the same words as /getImage.
	img, err := s.master.Get(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	defer img.Close()
	disposition := "attachment"
	if !download {
		disposition = "inline"
	}
	return serveImage(w, r, img, ContentDisposition(disposition, DownloadName(st, public, img.ContentType)), etag)
}

// serveImage answers a task's image img under the Content-Disposition disposition: sandboxed,
// cacheable for good under etag when it has one, and with its size in bytes.
func serveImage(w http.ResponseWriter, r *http.Request, img *client.Image, disposition, etag string) error {
	h := w.Header()
	h.Set("Content-Disposition", disposition)
	h.Set("Content-Security-Policy", resultCSP)
	if etag != "" {
		cacheable(h, etag)
	}
	if img.Size >= 0 {
		h.Set(ImageBytesHeader, strconv.FormatInt(img.Size, 10))
	}
	return master.CopyImage(w, r, img)
}

// handleDeleteTask removes the task, its upload, its result and its record, and answers 204 (again for
// a task deleted before). Knowing the public id is the capability, as it is for reading the task.
func (s *server) handleDeleteTask(w http.ResponseWriter, r *http.Request) error {
	id, _, err := s.apiTask(r)
	if err != nil {
		return err
	}
	if err := s.master.Delete(r.Context(), id); err != nil {
		return publicError(err, id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleRetryTask queues a failed or cancelled task again with the image it was uploaded with, and
// answers its status, "queued"; another state is 409, a task whose upload is gone 410. A retry queues
// work as an upload does, so it counts in the client's upload rate limit (429).
func (s *server) handleRetryTask(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.apiTask(r)
	if err != nil {
		return err
	}
	if s.limiter != nil {
		from, err := s.opts.APIKeys.owner(r, s.opts.TrustProxy)
		if err != nil {
			w.Header().Set("WWW-Authenticate", "Bearer")
			return err
		}
		if wait, ok := s.limiter.Allow(from); !ok {
			return &httpapi.Error{Status: http.StatusTooManyRequests, RetryAfter: wait,
				Msg: fmt.Sprintf("too many uploads and retries, retry in %ds", httpapi.RetryAfterSeconds(wait))}
		}
	}
	st, err := s.master.Retry(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, publicStatus(st, public))
}

// handleCancelTask cancels a task that has not finished and answers its status, "cancelled" (again for
// a task cancelled before); a finished or failed task is 409.
func (s *server) handleCancelTask(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.apiTask(r)
	if err != nil {
		return err
	}
	st, err := s.master.Cancel(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, publicStatus(st, public))
}

// handleTaskSource serves the upload inline (with ?w=N a thumbnail of it, thumb.go); it is cacheable for good under an ETag made from the
// task's creation time (cache.go), and a request naming that ETag is answered 304 without reading it.
func (s *server) handleTaskSource(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.apiTask(r)
	if err != nil {
		return err
	}
	width, err := thumbWidth(r)
	if err != nil {
		return err
	}
	st, etag, answered, err := s.checkImageETag(w, r, id, "source", public, width, func(st wire.Status) time.Time { return st.CreatedAt })
	if err != nil || answered {
		return err
	}
	if width > 0 {
		return s.serveThumb(w, r, id, "source", etag, width, s.master.Source)
	}
	img, err := s.master.Source(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	defer img.Close()
	return serveImage(w, r, img, ContentDisposition("inline", SourceName(st, public, img.ContentType)), etag)
}
