// Package httpapi is the HTTP plumbing every imgmill service shares, written once: error replies in the
// reference "Error: ..." form, request ids, access logs, panic recovery, servers and clients with timeouts.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/fault"
)

// Error is a failure with an HTTP status. Servers reply with it as "Error: <Msg>"; clients return it for a
// peer's non-2xx answer, so a proxying handler passes a peer's status and message through unchanged.
type Error struct {
	Status int
	Msg    string
	// RetryAfter, when set, is sent as the Retry-After header (whole seconds, at least 1): when a
	// refusal for load (429, 503) is worth trying again.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Msg) }

// Transient reports whether the answer says to come back later rather than that the request is wrong:
// a peer or an engine behind it is unavailable (502, 503, 504) or out of space (507). fault.IsTransient
// asks it.
func (e *Error) Transient() bool {
	switch e.Status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusInsufficientStorage:
		return true
	}
	return false
}

// Retry-After of the replies to transient failures (fault.Error) that name no wait of their own: an
// engine or peer that is away usually returns within seconds; a full disk needs an operator or the
// retention sweeper, so its clients are told to wait longer.
const (
	UnavailableRetryAfter = 2 * time.Second
	NoSpaceRetryAfter     = 10 * time.Second
)

// asError returns the *Error err answers with: its own when it is (or wraps) one; for a transient
// failure (fault.Error) 503 or 507 with Retry-After and the failure's message without its cause; nil
// otherwise (an internal error: 500).
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var f *fault.Error
	if errors.As(err, &f) {
		if f.Kind == fault.ErrNoSpace {
			return &Error{Status: http.StatusInsufficientStorage, Msg: f.Message() + ", retry later", RetryAfter: NoSpaceRetryAfter}
		}
		return &Error{Status: http.StatusServiceUnavailable, Msg: f.Message() + ", retry later", RetryAfter: UnavailableRetryAfter}
	}
	return nil
}

// Answer is the *Error a handler's failure err answers with: see asError; any other failure is a 500
// "internal error".
func Answer(err error) *Error {
	if e := asError(err); e != nil {
		return e
	}
	return &Error{Status: http.StatusInternalServerError, Msg: "internal error"}
}

// Errorf builds an *Error.
func Errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// StatusOf returns the HTTP status an error answers with: its own when it is (or wraps) an *Error, 503 or
// 507 for a transient failure (fault.Error), 500 otherwise.
func StatusOf(err error) int {
	if e := asError(err); e != nil {
		return e.Status
	}
	return http.StatusInternalServerError
}

// ErrorText is the body a reply carries for err. Internal errors are not spelled out to the caller; they
// are logged with the request id instead.
func ErrorText(err error) string {
	return "Error: " + ErrorMessage(err)
}

// ErrorMessage is the message a reply carries for err, without the "Error: " prefix: an *Error's own, a
// transient failure's (what is unavailable, without the cause), or "internal error".
func ErrorMessage(err error) string {
	if e := asError(err); e != nil {
		return e.Msg
	}
	return "internal error"
}

// HandlerFunc is a handler that may fail; the failure becomes an "Error: ..." reply.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

func (f HandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f(w, r); err != nil {
		writeError(w, r, err, writeTextError)
	}
}

// JSONHandlerFunc is a handler of a JSON API that may fail; the failure becomes a {"error":"..."} reply,
// with the status, Retry-After header and logging of HandlerFunc's.
type JSONHandlerFunc func(w http.ResponseWriter, r *http.Request) error

func (f JSONHandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := f(w, r); err != nil {
		writeError(w, r, err, writeJSONError)
	}
}

// ReplyError answers err as HandlerFunc does (its status, Retry-After and logging), with reply writing
// the body; nil writes the "Error: ..." text. For handlers that choose the form of their refusals.
func ReplyError(w http.ResponseWriter, r *http.Request, err error, reply func(w http.ResponseWriter, status int, err error)) {
	if reply == nil {
		reply = writeTextError
	}
	writeError(w, r, err, reply)
}

// JSONError is the body of a JSON API's error reply.
type JSONError struct {
	Error string `json:"error"`
}

func writeTextError(w http.ResponseWriter, status int, err error) {
	WriteText(w, status, ErrorText(err))
}

func writeJSONError(w http.ResponseWriter, status int, err error) {
	_ = WriteJSON(w, status, JSONError{Error: ErrorMessage(err)})
}

// StatusClientClosedRequest is the status logged for a request whose caller went away before the answer.
const StatusClientClosedRequest = 499

func writeError(w http.ResponseWriter, r *http.Request, err error, reply func(http.ResponseWriter, int, error)) {
	status := StatusOf(err)
	logger := LoggerFrom(r.Context())
	if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		// The caller hung up (a worker shutting down, a client that gave up): nothing failed here, and
		// nobody reads the answer. 499 is the usual mark for it in access logs.
		status = StatusClientClosedRequest
	}
	switch {
	case status == StatusClientClosedRequest:
		logger.DebugContext(r.Context(), "request abandoned by the caller", "err", err)
	case status == http.StatusServiceUnavailable || status == http.StatusInsufficientStorage:
		// Refusing work under load, or while a dependency is away or full, is the service doing its
		// job, not a fault of its own.
		logger.WarnContext(r.Context(), "request refused", "err", err)
	case status >= 500:
		logger.ErrorContext(r.Context(), "request failed", "err", err)
	default:
		logger.DebugContext(r.Context(), "request refused", "err", err)
	}
	if rec, ok := w.(*recorder); ok && rec.status != 0 {
		// The reply was already under way (a stream broke mid-body); all we can do is log.
		return
	}
	if e := asError(err); e != nil && e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(RetryAfterSeconds(e.RetryAfter)))
	}
	reply(w, status, err)
}

// WriteText replies with bare text, no trailing newline: reference clients compare and splice answers
// verbatim.
func WriteText(w http.ResponseWriter, status int, text string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(text)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(text))
}

// IDCommand is a handler for the reference commands that take an id parameter, act, and answer
// "success".
func IDCommand(act func(ctx context.Context, id int64) error) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := QueryID(r, "id")
		if err != nil {
			return err
		}
		if err := act(r.Context(), id); err != nil {
			return err
		}
		WriteText(w, http.StatusOK, "success")
		return nil
	}
}

// WriteJSON replies with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode reply: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(b)
	return err
}

// Query parameter helpers: each returns a 400 *Error naming the parameter.

// QueryID parses the decimal id parameter name.
func QueryID(r *http.Request, name string) (int64, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return 0, Errorf(http.StatusBadRequest, "missing %s parameter", name)
	}
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 0 {
		return 0, Errorf(http.StatusBadRequest, "%s must be a non-negative decimal integer, got %q", name, raw)
	}
	return id, nil
}

// QueryIDAndToken reads a leased task's call: its id and its optional lease token (0 when absent), each a
// non-negative decimal integer.
func QueryIDAndToken(r *http.Request) (id, token int64, err error) {
	if id, err = QueryID(r, "id"); err != nil {
		return 0, 0, err
	}
	if r.URL.Query().Has("token") {
		if token, err = QueryID(r, "token"); err != nil {
			return 0, 0, err
		}
	}
	return id, token, nil
}

// CheckID refuses a negative value v of the parameter name with QueryID's answer: for a service's
// in-process API, handed the value rather than a query.
func CheckID(name string, v int64) error {
	if v < 0 {
		return Errorf(http.StatusBadRequest, "%s must be a non-negative decimal integer, got %q", name, strconv.FormatInt(v, 10))
	}
	return nil
}

// CheckIDAndToken is CheckID of a leased task's id and token.
func CheckIDAndToken(id, token int64) error {
	if err := CheckID("id", id); err != nil {
		return err
	}
	return CheckID("token", token)
}

// QueryRequired returns the non-empty parameter name.
func QueryRequired(r *http.Request, name string) (string, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return "", Errorf(http.StatusBadRequest, "missing %s parameter", name)
	}
	return v, nil
}

// ReadErrorBody turns a peer's non-2xx reply into an *Error, keeping its status, message and
// Retry-After, so a proxying handler passes all three on.
func ReadErrorBody(status int, header http.Header, body []byte) *Error {
	msg := strings.TrimSpace(string(body))
	msg = strings.TrimPrefix(msg, "Error:")
	msg = strings.TrimSpace(msg)
	if msg == "" {
		msg = http.StatusText(status)
	}
	e := &Error{Status: status, Msg: msg}
	if secs, err := strconv.Atoi(header.Get("Retry-After")); err == nil && secs > 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	return e
}

// RetryAfterSeconds rounds a wait up to whole seconds, at least 1, for a Retry-After header.
func RetryAfterSeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// QueryDuration parses an optional duration parameter, a Go duration ("10s", "500ms") or whole seconds
// ("10"), between 0 and max; absent is 0.
func QueryDuration(r *http.Request, name string, max time.Duration) (time.Duration, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil {
		secs, serr := strconv.Atoi(raw)
		if serr != nil {
			return 0, Errorf(http.StatusBadRequest, "%s must be a duration like 10s, got %q", name, raw)
		}
		if secs < 0 || time.Duration(secs) > max/time.Second {
			// Checked before multiplying: a huge count of seconds would overflow into range.
			return 0, Errorf(http.StatusBadRequest, "%s must be between 0 and %s", name, max)
		}
		d = time.Duration(secs) * time.Second
	}
	if d < 0 || d > max {
		return 0, Errorf(http.StatusBadRequest, "%s must be between 0 and %s", name, max)
	}
	return d, nil
}
