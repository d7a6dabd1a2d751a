// Package wire holds what imgmill's services and their clients say to each other: the task JSON, the
// status answers, the task states and their words, the discovery keys, the protocol's headers and
// constants. Servers and clients both import it, so neither imports the other for a type.
package wire

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// State is a task's lifecycle state, a number on the reference wire (the task JSON's "state"). 0 to 2
// are the reference's values; Failed and Cancelled are additive.
type State int

// Task states.
const (
	NotStarted State = 0
	InProgress State = 1
	Finished   State = 2
	Failed     State = 3
	// Cancelled: a client cancelled the task before it finished; it never runs (again).
	Cancelled State = 4
)

// Valid reports whether s is one of the four states an operator may set (setById): every state but
// Cancelled, which only a cancel reaches.
func (s State) Valid() bool { return s >= NotStarted && s <= Failed }

// Word is the state as the status API spells it.
func (s State) Word() Word {
	switch s {
	case NotStarted:
		return QueuedWord
	case InProgress:
		return ProcessingWord
	case Finished:
		return FinishedWord
	case Failed:
		return FailedWord
	case Cancelled:
		return CancelledWord
	}
	return "unknown"
}

func (s State) String() string { return string(s.Word()) }

// Word is a task's state as the status answers (/status, the JSON API, the page) spell it.
type Word string

// The state words.
const (
	QueuedWord     Word = "queued"
	ProcessingWord Word = "processing"
	FinishedWord   Word = "finished"
	FailedWord     Word = "failed"
	CancelledWord  Word = "cancelled"
)

// CancelledError is the error a cancelled task reports.
const CancelledError = "cancelled"

// Settled reports whether a task in this state will not change any more (finished, failed or cancelled).
func (w Word) Settled() bool { return w == FinishedWord || w == FailedWord || w == CancelledWord }

// Task is the task JSON of the wire API. id and state are the reference fields; the rest are additive.
type Task struct {
	ID          int64     `json:"id"`
	State       State     `json:"state"`
	Token       int64     `json:"token,omitempty"`
	Attempts    int       `json:"attempts,omitempty"`
	MaxAttempts int       `json:"maxAttempts,omitempty"`
	Error       string    `json:"error,omitempty"`
	CreatedAt   time.Time `json:"createdAt,omitzero"`
	StartedAt   time.Time `json:"startedAt,omitzero"`
	FinishedAt  time.Time `json:"finishedAt,omitzero"`
	LeaseUntil  time.Time `json:"leaseUntil,omitzero"`
	// Op is the operation chain the worker applies (additive; absent for the default, swap).
	Op string `json:"op,omitempty"`
	// RetryAt is when a task handed back after a transient failure may be claimed again, and Retries
	// how many such failures it had (additive).
	RetryAt time.Time `json:"retryAt,omitzero"`
	Retries int       `json:"retries,omitempty"`
	// Pending marks a task whose upload is not complete yet (additive).
	Pending bool `json:"pending,omitempty"`
	// Owner is who queued the task (additive; internal services only, never shown to other clients).
	Owner string `json:"owner,omitempty"`
	// Name is the upload's file name as the client gave it, a base name (CheckName); absent when none
	// (additive).
	Name string `json:"name,omitempty"`
	// ExpiresAt is when the retention sweep removes a settled task, its images and record (additive;
	// absent while the task has not settled, or when the database keeps tasks forever).
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// Stats is the database's (and the master's) GET /stats answer: how many tasks are in each state.
type Stats struct {
	Queued     int64 `json:"queued"`  // not started and claimable (now, or after a transient failure's wait)
	Pending    int64 `json:"pending"` // not started: uploads in progress (additive)
	Processing int64 `json:"processing"`
	Finished   int64 `json:"finished"`
	Failed     int64 `json:"failed"`
	Cancelled  int64 `json:"cancelled"` // additive
}

// Usage is the database's GET /usage answer (additive): what one owner keeps stored, counted for the
// master's quotas.
type Usage struct {
	Tasks int64 `json:"tasks"` // tasks not deleted, whatever their state
	Bytes int64 `json:"bytes"` // their source images' sizes, as told at activation
}

// Status is the master's /status answer.
type Status struct {
	ID    int64  `json:"id"`
	State Word   `json:"state"`
	Op    string `json:"op,omitempty"` // the operation chain, canonical (additive)
	// Name is the upload's file name as the client gave it, a base name (CheckName); absent when none
	// (additive). Downloads are named after it.
	Name        string    `json:"name,omitempty"`
	Attempts    int       `json:"attempts"`
	MaxAttempts int       `json:"maxAttempts"`
	Error       string    `json:"error,omitempty"`
	CreatedAt   time.Time `json:"createdAt,omitzero"`
	StartedAt   time.Time `json:"startedAt,omitzero"`
	FinishedAt  time.Time `json:"finishedAt,omitzero"`
	// RetryAt is set while a queued task waits after a transient failure (Error says which) before it
	// can be claimed again (additive).
	RetryAt time.Time `json:"retryAt,omitzero"`
	// ExpiresAt is when the task, its images and its record are removed (additive; see Task.ExpiresAt).
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// Limits is the frontend's GET /api/limits answer (additive): the limits an upload must keep. A limit
// that is off is absent.
type Limits struct {
	MaxUploadBytes int64 `json:"maxUploadBytes,omitempty"` // the largest image, in bytes
	MaxPixels      int64 `json:"maxPixels,omitempty"`      // the largest image, width × height
	MaxChainLength int   `json:"maxChainLength"`           // the longest operation chain (op), in bytes
}

// MaxStatusIDs caps how many tasks one POST /statuses (master) or POST /getByIds (database) asks about.
const MaxStatusIDs = 2000

// StatusesQuery is the body of the master's POST /statuses (additive): the tasks asked about, each as
// the caller last saw it (only ID for one it has not seen), so that the answer carries only news and a
// long poll (wait) answers as soon as there is some.
type StatusesQuery struct {
	Known []Status `json:"known"`
}

// Statuses is the answer to POST /statuses: the status of every task asked about that differs from
// the one given (by state, attempts, error or retry time), and the ids of the tasks that do not exist.
type Statuses struct {
	Statuses []Status `json:"statuses"`
	Missing  []int64  `json:"missing,omitempty"`
}

// Differs reports whether s is news to a caller who saw known: what a status stream shows changed.
func (s Status) Differs(known Status) bool {
	return s.State != known.State || s.Attempts != known.Attempts || s.MaxAttempts != known.MaxAttempts ||
		s.Error != known.Error || !s.RetryAt.Equal(known.RetryAt)
}

// TaskIDs is the body of the database's POST /getByIds and the answer to its POST /claimExpired
// (additive).
type TaskIDs struct {
	IDs []int64 `json:"ids"`
}

// Tasks is the answer to POST /getByIds: the tasks that exist, and the ids of those that do not; and
// to /getNewTask?max= (database and master): the tasks claimed, never Missing.
type Tasks struct {
	Tasks   []Task  `json:"tasks"`
	Missing []int64 `json:"missing,omitempty"`
}

// PublicStatus is the frontend's /status answer (and the JSON API's): the master's, with the public id
// in place of the internal one (the outer field wins in JSON) and a public failure reason.
type PublicStatus struct {
	ID string `json:"id"`
	Status
}

// TaskCreated is the JSON API's answer to an upload (POST /api/tasks). State is the word of the
// status answers (PublicStatus.State), queued.
type TaskCreated struct {
	ID        string `json:"id"`
	State     Word   `json:"state"`
	StatusURL string `json:"statusUrl"`
	ResultURL string `json:"resultUrl"`
	EventsURL string `json:"eventsUrl"`
	SourceURL string `json:"sourceUrl"`
}

// Operations is the JSON API's GET /api/operations answer.
type Operations struct {
	Operations []OperationInfo `json:"operations"`
}

// OperationInfo describes one image operation for clients (GET /api/operations): enough to build a
// picker and to write a spec by hand.
type OperationInfo struct {
	Name        string      `json:"name"`
	Aliases     []string    `json:"aliases,omitempty"` // other names a chain may use
	Summary     string      `json:"summary"`           // one line
	Description string      `json:"description"`       // what it does exactly, with units
	Syntax      string      `json:"syntax"`            // e.g. "resize:WxH[:fit|fill|exact]"
	Params      []ParamInfo `json:"params"`            // in the order they are written; empty, never null
	Example     string      `json:"example"`           // a valid spec
}

// ParamInfo describes one parameter of an operation.
type ParamInfo struct {
	Name string `json:"name"`
	// Type is "number" (a decimal such as -20 or 2.5), "integer", "size" (WxH, each side an
	// integer in Min..Max), "geometry" (WxH or WxH+X+Y: size in Min..Max, offsets from 0) or "enum"
	// (one of Allowed).
	Type        string   `json:"type"`
	Description string   `json:"description"`
	Min         *float64 `json:"min,omitempty"`
	Max         *float64 `json:"max,omitempty"`
	Allowed     []string `json:"allowed,omitempty"`
	Default     string   `json:"default,omitempty"` // as written in a spec; for optional parameters
	Required    bool     `json:"required"`
}

// MaxOpLen caps an operation chain's spec (the op parameter), in bytes.
const MaxOpLen = 1024

// CheckOp refuses an operation chain no service should store: longer than MaxOpLen or not printable
// ASCII. Whether its operations exist is for the master and the worker to say.
func CheckOp(op string) error {
	if len(op) > MaxOpLen {
		return fmt.Errorf("operation list too long: %d bytes, at most %d", len(op), MaxOpLen)
	}
	if i := notPrintable(op); i >= 0 {
		return fmt.Errorf("operation list has a byte that is not printable ASCII at %d", i)
	}
	return nil
}

// notPrintable is the index of the first byte of s that is not printable ASCII, or -1.
func notPrintable(s string) int {
	return strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r > 0x7e })
}

// MaxNameLen caps an upload's name (Task.Name), in bytes.
const MaxNameLen = 200

// CheckName refuses an upload's name no service should store: longer than MaxNameLen, not valid
// UTF-8, with a control character, or with a directory part (a slash or backslash). "" is allowed
// (no name). CleanName makes any name pass.
func CheckName(name string) error {
	switch {
	case len(name) > MaxNameLen:
		return fmt.Errorf("name too long: %d bytes, at most %d", len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return errors.New("name is not valid UTF-8")
	case strings.ContainsFunc(name, unicode.IsControl):
		return errors.New("name has a control character")
	case strings.ContainsAny(name, `/\`):
		return errors.New("name has a directory part")
	case name == "." || name == "..":
		return fmt.Errorf("name %q is not a file name", name)
	}
	return nil
}

// CleanName reduces the file name a client gave (a multipart part's filename, say) to what CheckName
// admits: the base name after the last slash or backslash, invalid UTF-8 and control characters
// dropped, spaces trimmed, cut to at most MaxNameLen bytes on a character boundary; "" for a name
// with nothing left ("." and ".." included).
func CleanName(raw string) string {
	if i := strings.LastIndexAny(raw, `/\`); i >= 0 {
		raw = raw[i+1:]
	}
	name := strings.Map(func(r rune) rune {
		if r == utf8.RuneError || unicode.IsControl(r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(raw, ""))
	name = strings.TrimSpace(name)
	for len(name) > MaxNameLen {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	if name = strings.TrimSpace(name); name == "." || name == ".." {
		return ""
	}
	return name
}

// Discovery keys under which services register their host:port in the kv store (reference names).
const (
	DatabaseKey = "databaseAddress"
	StorageKey  = "storageAddress"
	MasterKey   = "masterAddress"
)

// InstancePrefix is the prefix of the kv keys under which the instances of the service registered
// under key (the reference name, such as databaseAddress) each register their own address.
func InstancePrefix(key string) string { return key + "/" }

// AbandonedError is the failure reason of a task whose upload was refused or broke off.
const AbandonedError = "upload never completed"

// Image kinds in storage (the reference's state parameter of /sendImage and /getImage).
const (
	WorkingImage  = "working"
	FinishedImage = "finished"
)

// LeaseTokenHeader is the header of a storage GET /getImage reply that carries the lease token the image
// was stored with; it is absent when that is 0 (uploads, results of workers that know no tokens).
const LeaseTokenHeader = "X-Lease-Token"

// NoTaskMessage is the reference reply when no task can be claimed.
const NoTaskMessage = "No non-started task."

// MaxLeaseWait caps the wait of a heartbeat held as a long poll (POST /extendLease?wait=, additive).
const MaxLeaseWait = 10 * time.Second

// MaxWait caps a long poll on /getNewTask.
const MaxWait = 60 * time.Second

// MaxTasksParam is /getNewTask's additive parameter asking for up to that many tasks in one claim,
// answered as Tasks (without it, or with 1, the answer is one task as in the reference). A peer that
// ignores it answers one task: callers tell the answers apart by their shape.
const MaxTasksParam = "max"

// MaxTasksPerClaim caps MaxTasksParam.
const MaxTasksPerClaim = 64

// OwnerHeader names who queues a task, on the master's POST /new and the database's /newTask: the
// frontend sets it to an API key's name ("key:NAME") or the client's address; the master believes it
// only from a caller that presented its token. Claims serve owners in turn.
const OwnerHeader = "X-Imgmill-Owner"

// APIKeyHeader carries a client's API key on the frontend, as "Authorization: Bearer KEY" does.
const APIKeyHeader = "X-API-Key"

// MaxOwnerLen caps an owner's length.
const MaxOwnerLen = 128

// CheckOwner refuses an owner longer than MaxOwnerLen or not printable ASCII; "" is allowed (no owner).
func CheckOwner(owner string) error {
	if len(owner) > MaxOwnerLen {
		return fmt.Errorf("%s must be at most %d characters", OwnerHeader, MaxOwnerLen)
	}
	if notPrintable(owner) >= 0 {
		return fmt.Errorf("%s must be printable ASCII", OwnerHeader)
	}
	return nil
}

// Idempotent requests: a client names a request with IdempotencyKeyHeader, and a replay of it (the same
// key again) is answered with what the first one did, with ReplayedHeader set to "true". The database
// also says whether the replayed task is still pending (PendingHeader), so that the master finishes an
// upload that broke off.
const (
	IdempotencyKeyHeader = "Idempotency-Key"
	ReplayedHeader       = "Idempotent-Replayed"
	PendingHeader        = "X-Imgmill-Pending"
	// MaxIdempotencyKeyLen caps a key's length.
	MaxIdempotencyKeyLen = 255
	// IdempotencyWindow is how long a key is remembered: a request with a key first seen longer ago
	// creates a new task.
	IdempotencyWindow = 24 * time.Hour
)

// CheckIdempotencyKey refuses a key that is empty, longer than MaxIdempotencyKeyLen or not printable
// ASCII (keys are usually UUIDs or random tokens).
func CheckIdempotencyKey(key string) error {
	if key == "" || len(key) > MaxIdempotencyKeyLen {
		return fmt.Errorf("%s must be 1 to %d characters", IdempotencyKeyHeader, MaxIdempotencyKeyLen)
	}
	if notPrintable(key) >= 0 {
		return fmt.Errorf("%s must be printable ASCII", IdempotencyKeyHeader)
	}
	return nil
}

// MaxBlobPage caps the blobs in one page of storage's GET /list (additive), and is its default: a
// page of the longest keys stays well under a megabyte of JSON, what clients read of a reply.
const MaxBlobPage = 1000

// BlobPage is the answer to storage's GET /list: blobs in key order, and Next, the cursor to pass as
// the after parameter for the following page; empty when the listing is complete.
type BlobPage struct {
	Blobs []BlobInfo `json:"blobs"`
	Next  string     `json:"next,omitempty"`
}

// BlobInfo is one blob of a BlobPage: its key ("working/42", "finished/42"), size in bytes and the time
// it was last written.
type BlobInfo struct {
	Key     string    `json:"key"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
}
