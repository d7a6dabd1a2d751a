// Package frontend is the public web frontend: the upload page and the reference paths (/submitTask,
// /isReady, /getImage, and /status), in front of the master.
//
// It is the only service meant to face the public, so it shows and accepts only opaque public ids
// (package publicid), never the master's sequential ones: a number that can be counted would let anyone
// read everybody's images. It also limits each client's upload rate and upload size, and sets strict
// security headers on every reply.
package frontend

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/publicid"
	"github.com/imgmill/imgmill/internal/service"
	"github.com/imgmill/imgmill/internal/wire"
)

//go:embed assets/index.html
var indexHTML []byte

// UploadField is the reference multipart field that carries the file.
const UploadField = "uploadfile"

// Defaults of Limits (and of the frontend's flags).
const (
	DefaultUploadRate  = 5  // uploads per second per client, sustained
	DefaultUploadBurst = 20 // uploads per client at once
	DefaultMaxUpload   = master.DefaultMaxUpload
	// DefaultMaxStreams is how many event streams a frontend keeps open at once, and
	// DefaultMaxStreamsPerClient how many of them one client address may hold: enough for a page
	// that follows many tasks.
	DefaultMaxStreams          = 1000
	DefaultMaxStreamsPerClient = 32
)

// formOverhead is what a multipart body may carry beyond the image itself (boundaries, part headers,
// small extra fields) before the frontend refuses it as too large.
const formOverhead = 64 << 10

// Limits are the frontend's limits on the public.
type Limits struct {
	// UploadRate is the sustained rate of POST /submitTask allowed per client address, per second, and
	// UploadBurst how many it may make at once (at least 1); UploadRate 0 turns the limit off.
	UploadRate  float64
	UploadBurst int
	// MaxUpload is the largest image accepted, in bytes; 0 means DefaultMaxUpload, a negative value no
	// limit (master.NoLimit). The master enforces its own limit as well.
	MaxUpload int64
	// MaxPixels is the largest image in pixels (width × height) that the master behind accepts, which
	// the frontend shows (GET /api/limits) but leaves to the master to enforce: 0 means
	// imageop.DefaultMaxPixels, the master's default, a negative value no limit.
	MaxPixels int64
	// TrustProxy takes the client address from the last X-Forwarded-For entry, the one added by a
	// reverse proxy in front, instead of from the connection. Only for a frontend that is reachable
	// through that proxy alone: otherwise anyone can pick their address.
	TrustProxy bool
	// APIKeys, when set, name clients by the key they present (see APIKeys); nil: every client is
	// named by its address, and keys are ignored.
	APIKeys *APIKeys
	// AllowedOrigins are the other sites (scheme://host[:port]) whose pages may upload here from a
	// browser; uploads from any other site's page are refused (see sameSite), those without the
	// browser's headers (curl, scripts) are not.
	AllowedOrigins []string
	// MaxStreams caps the open event streams (GET /api/tasks/{id}/events and GET /api/events, one place
	// each however many tasks it follows; 503 with Retry-After beyond)
	// and MaxStreamsPerClient those of one client address (429); 0 means the default, a negative
	// value no cap (master.NoLimit). However many streams are open, the frontend watches at most
	// wire.MaxStatusIDs tasks at once.
	MaxStreams          int
	MaxStreamsPerClient int
}

// CheckOrigins refuses an allowed origin that is not scheme://host[:port].
func CheckOrigins(origins []string) error {
	return newCrossSite(origins).err
}

// Master is the frontend's view of the master: the methods of *client.Master it calls (over HTTP), which
// master.Local has too (in-process, when both run in one process, as in imgmill serve).
type Master interface {
	Upload(ctx context.Context, r io.Reader, size int64, p client.UploadParams) (client.Uploaded, error)
	IsReady(ctx context.Context, id int64) (bool, error)
	Status(ctx context.Context, id int64) (wire.Status, error)
	Statuses(ctx context.Context, known []wire.Status, wait time.Duration) (wire.Statuses, error)
	Get(ctx context.Context, id int64) (*client.Image, error)
	Source(ctx context.Context, id int64) (*client.Image, error)
	Stats(ctx context.Context) (wire.Stats, error)
	Cancel(ctx context.Context, id int64) (wire.Status, error)
	Retry(ctx context.Context, id int64) (wire.Status, error)
	Delete(ctx context.Context, id int64) error
}

var _ Master = (*client.Master)(nil)

// NewServer returns the frontend's handler in front of m, showing task ids as ids' public ids.
func NewServer(m Master, ids *publicid.Codec, opts Limits) http.Handler {
	s := newServer(m, opts)
	s.codec.Store(ids)
	return s.handler()
}

func newServer(m Master, opts Limits) *server {
	if opts.MaxUpload == 0 {
		opts.MaxUpload = DefaultMaxUpload
	}
	if opts.MaxPixels == 0 {
		opts.MaxPixels = imageop.DefaultMaxPixels
	}
	if opts.MaxStreams == 0 {
		opts.MaxStreams = DefaultMaxStreams
	}
	if opts.MaxStreamsPerClient == 0 {
		opts.MaxStreamsPerClient = DefaultMaxStreamsPerClient
	}
	s := &server{master: m, opts: opts, crossSite: newCrossSite(opts.AllowedOrigins),
		streams: newStreamGate(opts.MaxStreams, opts.MaxStreamsPerClient), watcher: newWatcher(m),
		thumbs: newThumbnailer(opts.MaxPixels)}
	if opts.UploadRate > 0 {
		s.limiter = httpapi.NewKeyedLimiter(opts.UploadRate, opts.UploadBurst, httpapi.MaxLimiterKeys, time.Now)
	}
	return s
}

func (s *server) handler() http.Handler {
	mux := httpapi.NewMux()
	addRoutes(mux, s)
	return securityHeaders(s.crossSite.refuse(mux))
}

type server struct {
	master Master
	// codec makes and reads public ids; nil until the public id secret is resolved (see Run), and
	// until then every route that takes or answers an id answers 503.
	codec     atomic.Pointer[publicid.Codec]
	opts      Limits
	limiter   *httpapi.KeyedLimiter // uploads per client; nil: no rate limit
	crossSite crossSite
	streams   *streamGate // open event streams
	watcher   *watcher    // the tasks of the open event streams
	thumbs    *thumbnailer
}

// errNoSecretYet answers what needs public ids while the secret is being resolved.
var errNoSecretYet = &httpapi.Error{Status: http.StatusServiceUnavailable, RetryAfter: httpapi.UnavailableRetryAfter,
	Msg: "the frontend is starting: its public id secret is not resolved yet, retry later"}

// ids returns the public id codec, or errNoSecretYet.
func (s *server) ids() (*publicid.Codec, error) {
	if c := s.codec.Load(); c != nil {
		return c, nil
	}
	return nil, errNoSecretYet
}

// ready is the frontend's readiness: it can make and read public ids.
func (s *server) ready(context.Context) error {
	_, err := s.ids()
	return err
}

// securityHeaders sets the headers every frontend reply carries: no content sniffing, no framing, no
// referrer leaving the site (a public id in a URL is a capability).
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// indexCSP is the upload page's Content-Security-Policy: scripts, styles, images and requests from this
// site only (the files under /assets/; nothing inline, no eval), images also from blob: URLs (the
// page's previews of the files the user picked, and of the thumbnails it fetched), forms posting only
// to this site, no plugins, no framing.
const indexCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; " +
	"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

func (s *server) handleIndex() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", indexCSP)
		h.Set("Cache-Control", "no-cache")
		w.Write(indexHTML)
	})
}

// submitTask streams the uploadfile part of a multipart form to the master, never holding the whole
// file, and answers the task's public id; to the page's own form (UIField before the file), 303 See
// Other to the task's page instead (html.go). a learns which answer the form asked for.
func (s *server) submitTask(w http.ResponseWriter, r *http.Request, a *submitAnswer) error {
	u, err := s.receive(w, r)
	if err != nil {
		return err
	}
	a.read = true
	if err := u.setOp(r.URL.Query().Get(OpField)); err != nil {
		return err
	}
	u.setName(r.URL.Query().Get(NameParam))
	mr, err := r.MultipartReader()
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "expected a multipart/form-data upload with the file in field %q", UploadField)
	}
	for {
		part, err := mr.NextPart()
		if err := u.partError(err, UploadField); err != nil {
			return err
		}
		switch part.FormName() {
		case OpField: // additive: the operation chain, before the file
			if err := u.readOp(part); err != nil {
				return err
			}
			continue
		case UIField: // additive: the page's form, before the file
			ui, err := u.readField(part, UIField)
			if err != nil {
				return err
			}
			a.html = ui == UIHTML
			continue
		case UploadField:
			u.setName(part.FileName())
		default:
			part.Close()
			continue
		}
		id, err := u.send(r.Context(), w, part)
		if err != nil {
			return err
		}
		public := u.ids.Encode(id)
		if a.html {
			seeTaskPage(w, public)
			return nil
		}
		httpapi.WriteText(w, http.StatusOK, public)
		return nil
	}
}

// upload is an upload admitted by receive, its body capped.
type upload struct {
	master   Master
	ids      *publicid.Codec
	body     *cappedReader // the request body
	limit    int64         // of the image; < 0: none
	tooLarge error
	op       string // the operation chain, canonical; "" for the default
	// key is the idempotency key sent to the master: the client's, scoped to the client's address
	// (see scopedKey); "" for none.
	key string
	// owner is who makes the upload: "key:NAME" for a client with an API key, else its address.
	owner string
	// name is the upload's file name, cleaned (wire.CleanName); "" for none.
	name string
}

// setName names the upload after raw, a file name as the client gave it, unless it is named already
// (the query's name wins over a part's filename). Whatever the client sent is cleaned, never refused:
// the name only names the downloads.
func (u *upload) setName(raw string) {
	if u.name == "" {
		u.name = wire.CleanName(raw)
	}
}

// setOp validates an operation chain for the upload ("" keeps the default), so that a bad one is
// refused with 400 before any of the image is sent.
func (u *upload) setOp(spec string) error {
	if spec == "" {
		return nil
	}
	chain, err := imageop.ParseChain(spec)
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "op: %v", err)
	}
	u.op = chain.String()
	return nil
}

// readOp reads the op field of a multipart form into the upload.
func (u *upload) readOp(part io.ReadCloser) error {
	spec, err := u.readField(part, OpField)
	if err != nil {
		return err
	}
	return u.setOp(spec)
}

// readField reads a small field of a multipart form (at most imageop.MaxChainLen bytes), and closes it.
func (u *upload) readField(part io.ReadCloser, name string) (string, error) {
	b, err := io.ReadAll(io.LimitReader(part, imageop.MaxChainLen+1))
	part.Close()
	if err := u.partError(err, name); err != nil {
		return "", err
	}
	if len(b) > imageop.MaxChainLen {
		return "", httpapi.Errorf(http.StatusBadRequest, "%s: longer than %d bytes", name, imageop.MaxChainLen)
	}
	return string(b), nil
}

// receive admits the upload in r, for every upload path alike: the client's rate limit first (429 with
// Retry-After), then the size limit by the declared length (413); it caps the request body (r.Body is
// replaced), leaving room for a multipart form's overhead.
func (s *server) receive(w http.ResponseWriter, r *http.Request) (*upload, error) {
	ids, err := s.ids()
	if err != nil {
		return nil, err
	}
	// The owner (an API key's name, else the address) is whom claims serve in turn, whom the rate
	// limit counts, and whose idempotency keys are kept apart from others'.
	from, err := s.opts.APIKeys.owner(r, s.opts.TrustProxy)
	if err != nil {
		w.Header().Set("WWW-Authenticate", "Bearer")
		return nil, err
	}
	var key string
	if raw := r.Header.Get(wire.IdempotencyKeyHeader); raw != "" {
		if err := wire.CheckIdempotencyKey(raw); err != nil {
			return nil, httpapi.Errorf(http.StatusBadRequest, "%v", err)
		}
		key = scopedKey(ids, from, raw)
	}
	if s.limiter != nil {
		if wait, ok := s.limiter.Allow(from); !ok {
			return nil, &httpapi.Error{Status: http.StatusTooManyRequests, RetryAfter: wait,
				Msg: fmt.Sprintf("too many uploads, retry in %ds", httpapi.RetryAfterSeconds(wait))}
		}
	}
	limit := s.opts.MaxUpload // < 0: none
	u := &upload{master: s.master, ids: ids, key: key, owner: from, body: &cappedReader{r: r.Body, limit: -1}, limit: limit,
		tooLarge: master.TooLargeError(-1, limit)}
	if limit >= 0 {
		// A body whose declared length is already over is refused before any of it is read, so that
		// the client hears it at once rather than after sending it all.
		slack := int64(0)
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
			slack = formOverhead
		}
		if r.ContentLength > limit+slack {
			return nil, master.TooLargeError(r.ContentLength, limit)
		}
		u.body.r = http.MaxBytesReader(w, r.Body, limit+formOverhead)
	}
	r.Body = u.body
	return u, nil
}

// scopedKey is the idempotency key the frontend sends the master for a client's key: a digest of it
// and the client's address (its IPv4 address or IPv6 /64, as the rate limit keys clients). Scoped, a
// key that another client guessed or reused names a different task, so that nobody learns the public
// id of someone else's upload by replaying their key; a client that retries from another network gets
// a new task instead of its first one.
func scopedKey(ids *publicid.Codec, from, key string) string {
	return "fe-" + ids.Digest("idempotency key", from, key)
}

// partError turns the error of a multipart reader's NextPart into the answer: too large when the body
// was cut off, 400 when the form ended without field or is malformed; nil for a part.
func (u *upload) partError(err error, field string) error {
	switch {
	case u.body.hit.Load():
		return u.tooLarge
	case errors.Is(err, io.EOF):
		return httpapi.Errorf(http.StatusBadRequest, "no file in field %q", field)
	case err != nil:
		return httpapi.Errorf(http.StatusBadRequest, "malformed multipart body: %v", err)
	}
	return nil
}

// send streams the image in src (a part of the body, or the body itself) to the master, never holding
// it whole, and returns the new task's id; a replay of an earlier upload (same idempotency key) is said
// so in w's headers, as the master says it.
func (u *upload) send(ctx context.Context, w http.ResponseWriter, src io.Reader) (int64, error) {
	file := &cappedReader{r: src, limit: u.limit}
	lent := &lentReader{r: file}
	up, err := u.master.Upload(ctx, lent, -1, client.UploadParams{Op: u.op, IdempotencyKey: u.key, Owner: u.owner, Name: u.name})
	lent.takeBack()
	switch {
	case file.hit.Load() || u.body.hit.Load():
		// The upload was cut short here; the master gives up the unfinished task.
		return 0, u.tooLarge
	case client.IsBodyError(err):
		// The client's own upload broke off (it went away); the master gives up the unfinished task.
		return 0, fmt.Errorf("%w: %w", httpapi.Errorf(http.StatusBadRequest, "the upload broke off before its end"), err)
	case err == nil && up.Replayed:
		w.Header().Set(wire.ReplayedHeader, "true")
	}
	return up.ID, err
}

// cappedReader reads r and fails once more than limit bytes came through (limit < 0: no limit of its
// own), remembering that it did, or that r failed with *http.MaxBytesError. The flag is atomic: the
// transport reads an upload's body on its own goroutine.
type cappedReader struct {
	r     io.Reader
	limit int64
	n     int64
	hit   atomic.Bool
}

func (c *cappedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		c.hit.Store(true)
	}
	if c.limit >= 0 && c.n > c.limit {
		c.hit.Store(true)
		return n, &http.MaxBytesError{Limit: c.limit}
	}
	return n, err
}

func (c *cappedReader) Close() error {
	if rc, ok := c.r.(io.Closer); ok {
		return rc.Close()
	}
	return nil
}

// lentReader lends r to the HTTP transport sending an upload. The transport may still be reading a
// request body after the call returned (when the master answered before it read everything: a refusal
// by the image header), so the part must not be touched again, nor the request body under it, before
// takeBack: it waits for a read under way to end, and every later read fails.
type lentReader struct {
	mu    sync.Mutex
	r     io.Reader
	taken bool
}

var errTakenBack = errors.New("upload body no longer available")

func (l *lentReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.taken {
		return 0, errTakenBack
	}
	return l.r.Read(p)
}

func (l *lentReader) takeBack() {
	l.mu.Lock()
	l.taken = true
	l.mu.Unlock()
}

// errNoSuchTask answers every id that names no task, whether it is malformed, forged, made with another
// secret, or genuine but unknown to the master: they are not told apart.
var errNoSuchTask = &httpapi.Error{Status: http.StatusNotFound, Msg: "no such task"}

// task decodes the public id in the id parameter. Anything that is not a genuine public id is refused
// here, by its form or its tag, without a call to the master.
func (s *server) task(r *http.Request) (id int64, public string, err error) {
	public = r.URL.Query().Get("id")
	if public == "" {
		return 0, "", httpapi.Errorf(http.StatusBadRequest, "missing id parameter")
	}
	id, err = s.decode(public)
	return id, public, err
}

// decode decodes a public id; anything but a genuine one is errNoSuchTask.
func (s *server) decode(public string) (int64, error) {
	ids, err := s.ids()
	if err != nil {
		return 0, err
	}
	id, err := ids.Decode(public)
	if err != nil {
		return 0, errNoSuchTask
	}
	return id, nil
}

// publicError rewrites the master's refusal about task id for the public: its messages name internal
// ids (and storage's, passed on, may too), which the frontend never shows. Failures of the master
// itself (5xx) pass unchanged: they name services, not tasks.
func publicError(err error, id int64) error {
	var e *httpapi.Error
	if !errors.As(err, &e) || e.Status >= 500 {
		return err
	}
	switch {
	case strings.HasPrefix(e.Msg, "no task with id "):
		return errNoSuchTask
	case e.Msg == fmt.Sprintf("task %d is not finished", id):
		return httpapi.Errorf(http.StatusNotFound, "task is not finished")
	case e.Msg == fmt.Sprintf("task %d was cancelled", id):
		return httpapi.Errorf(http.StatusNotFound, "task was cancelled")
	case e.Msg == fmt.Sprintf("task %d already finished", id):
		return httpapi.Errorf(http.StatusConflict, "task already finished")
	case e.Status == http.StatusConflict && strings.HasPrefix(e.Msg, fmt.Sprintf("task %d is ", id)):
		// A retry refused (master's retryConflict): the state and what can be retried.
		return httpapi.Errorf(http.StatusConflict, "task %s", strings.TrimPrefix(e.Msg, fmt.Sprintf("task %d ", id)))
	case e.Msg == fmt.Sprintf("the upload of task %d is gone: upload the image again", id):
		return httpapi.Errorf(http.StatusGone, "the upload is gone: upload the image again")
	case strings.HasPrefix(e.Msg, fmt.Sprintf("task %d failed: ", id)):
		return httpapi.Errorf(http.StatusNotFound, "task failed: %s", publicReason(wire.FailedWord, strings.TrimPrefix(e.Msg, fmt.Sprintf("task %d failed: ", id))))
	}
	return &httpapi.Error{Status: e.Status, Msg: "the task's image is not available"}
}

// waitingReason is the public error of a queued task waiting to be retried after a transient failure.
const waitingReason = "a service it needs was unavailable: it will be retried"

// publicReasons are the prefixes of the failure reasons shown to the public as they are: imageop's
// words about the image itself and the worker's about a task over its time or memory, which say what
// to do. Any other reason (a worker's error text may name internal ids, addresses, paths) is shown as
// "processing failed".
var publicReasons = []string{imageop.ErrDecode.Error(), imageop.UnreadablePrefix, imageop.NotImageMessage, "upload never completed",
	"image is ", "took longer than ", "needs about "}

// lapsedFormat is the database's reason for a task whose worker stopped renewing its lease.
const lapsedFormat = "lease lapsed on attempt %d of %d"

// publicReason is the public error of a task in state whose reason is reason: the reason first, then
// what to do. Only a task that will be retried mentions attempts.
func publicReason(state wire.Word, reason string) string {
	if state == wire.CancelledWord {
		return wire.CancelledError
	}
	var n, of int
	if _, err := fmt.Sscanf(reason, lapsedFormat, &n, &of); err == nil {
		if state == wire.FailedWord {
			return "processing stopped before it finished, every time it was tried: the image may be too large for the chain; try a smaller image or fewer steps"
		}
		return fmt.Sprintf("processing stopped before it finished (attempt %d of %d): it will be retried", n, of)
	}
	for _, p := range publicReasons {
		if !strings.HasPrefix(reason, p) {
			continue
		}
		if strings.HasPrefix(reason, imageop.ErrDecode.Error()) && !strings.HasSuffix(reason, imageop.ResaveAdvice) {
			// A decoder's own words (an older worker's, or a failure past the header) say only what is wrong.
			return reason + ": " + imageop.ResaveAdvice
		}
		return reason
	}
	return "processing failed"
}

func (s *server) handleIsReady(w http.ResponseWriter, r *http.Request) error {
	id, _, err := s.task(r)
	if err != nil {
		return err
	}
	ready, err := s.master.IsReady(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	answer := "Your image is not ready yet."
	if ready {
		answer = "Your image is ready."
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteText(w, http.StatusOK, answer)
	return nil
}

// status asks the master for the status of task id, for the public.
func (s *server) status(ctx context.Context, id int64, public string) (wire.PublicStatus, error) {
	st, err := s.master.Status(ctx, id)
	if err != nil {
		return wire.PublicStatus{}, publicError(err, id)
	}
	return publicStatus(st, public), nil
}

// publicStatus is the master's status of the task with public id public, for the public.
func publicStatus(st wire.Status, public string) wire.PublicStatus {
	st.ID = 0 // hidden by the public id anyway; never keep the internal one around
	out := wire.PublicStatus{ID: public, Status: st}
	switch {
	case !st.RetryAt.IsZero():
		// The worker's reason names services and addresses; the public hears what it means.
		out.Error = waitingReason
	case st.Error != "":
		out.Error = publicReason(st.State, st.Error)
	}
	return out
}

func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.task(r)
	if err != nil {
		return err
	}
	if r.URL.Query().Get(UIField) == UIHTML { // for people: the task's page
		seeTaskPage(w, public)
		return nil
	}
	st, err := s.status(r.Context(), id, public)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return httpapi.WriteJSON(w, http.StatusOK, st)
}

func (s *server) handleGetImage(w http.ResponseWriter, r *http.Request) error {
	id, public, err := s.task(r)
	if err != nil {
		return err
	}
	return s.serveResult(w, r, id, public)
}

// serveResult sends the finished image of task id as an attachment named after the upload and its chain
// (DownloadName).
func (s *server) serveResult(w http.ResponseWriter, r *http.Request, id int64, public string) error {
	img, err := s.master.Get(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	defer img.Close()
	// The name and the chain are the status's; a task finished once stays so, so asking after the
	// image cannot name another task's state.
	st, err := s.master.Status(r.Context(), id)
	if err != nil {
		return publicError(err, id)
	}
	w.Header().Set("Content-Disposition", ContentDisposition("attachment", DownloadName(st, public, img.ContentType)))
	return master.CopyImage(w, r, img)
}

// DefaultAddr is the frontend's listen address unless told otherwise: every interface, since it is
// the public service.
const DefaultAddr = ":8080"

// Config configures Run.
type Config struct {
	// Options.Token, when set, is what the frontend sends to kv and master, and the bearer token
	// /metrics and /debug/pprof/ require here; without one they are not served, since the frontend is
	// public (see service.Spec.OpsToken). Advertise and Insecure do not apply.
	service.Options
	KV   *client.KV
	HTTP *http.Client
	// Secret is the server secret public ids are made with (at least publicid.MinSecretLen bytes); nil
	// means the one shared by all frontends, kept in DataDir and in the kv store (see SecretFile).
	Secret []byte
	// DataDir is where the frontend keeps the shared public id secret (SecretFile).
	DataDir string
	Limits  Limits
	// Master, when set, is the master the frontend calls (the master of this process, in-process:
	// master.Local); nil: found through KV and called over HTTP.
	Master Master
}

// Run serves the frontend until ctx ends; it finds the master through the kv store unless cfg.Master
// gives it. It listens at once:
// until the public id secret is resolved (which may wait for the kv store and the master), the page
// loads and everything that takes or answers a public id answers 503 with Retry-After, and /healthz
// says it is not ready.
func Run(ctx context.Context, cfg Config) error {
	m := cfg.Master
	if m == nil {
		m = client.NewMaster(cfg.HTTP, client.NewResolver(cfg.KV, wire.MasterKey, client.ResolveTTL))
	}
	s := newServer(m, cfg.Limits)
	if s.crossSite.err != nil {
		return s.crossSite.err
	}
	useSecret := func(secret []byte) error {
		ids, err := publicid.New(secret)
		if err != nil {
			return err
		}
		s.codec.Store(ids)
		return nil
	}
	var background []func(context.Context) error
	if cfg.Secret != nil {
		if err := useSecret(cfg.Secret); err != nil {
			return err
		}
	} else {
		file := filepath.Join(cfg.DataDir, SecretFile)
		background = append(background, func(ctx context.Context) error {
			secret, err := ResolveSecret(ctx, file, cfg.KV, m, cfg.Logger)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			return useSecret(secret)
		})
	}
	spec := cfg.Spec(service.Spec{Handler: s.handler(), Ready: s.ready, Background: background,
		Metrics: metrics.New("frontend"), OpsToken: cfg.Token})
	spec.Token, spec.Insecure, spec.Advertise = "", false, "" // a public service: its routes are open to all
	return service.Run(ctx, spec)
}
