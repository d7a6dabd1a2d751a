// Package consistency checks that the task database and image storage agree, through their services'
// clients (so on every backend): images whose task is gone (orphans) and tasks whose images are gone.
// The master's orphan sweep removes orphans with it; imgmill fsck reports both and repairs what can be
// repaired.
//
// # Which images are orphans
//
// A blob "working/N" or "finished/N" belongs to task N. It is an orphan when the database has no task N
// (never created, or deleted: a tombstone answers as missing) and the blob was last written longer than
// the grace ago. The grace protects uploads in flight: the master creates the pending task before it
// stores the image, but a reference master against this storage may store the image first and create
// the task after, and a PostgreSQL sequence may hand out id N before a task N+1 commits. It also
// protects the results of tasks being processed, which a worker writes before reporting the task
// finished.
//
// An image whose id is beyond every task the database holds is never an orphan for the sweep: its task
// may be about to be created (the reference order above). Only imgmill fsck --repair removes those,
// past the grace, when asked to.
//
// The result of a task that failed or was cancelled is a stray result once both the task settled and
// the blob was written longer than the grace ago: a worker that lost its lease or was told of the cancel
// may have stored it before hearing. Results of tasks queued or processing are never touched: a worker
// writes the result before it reports the task finished. Uploads of settled tasks stay until the
// retention sweep removes the task with its images.
//
// # Several sweepers
//
// Every removal is an idempotent delete of a blob that no task wants, so several masters sweeping at
// once only repeat each other's deletes; nothing else changes.
package consistency

import (
	"context"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/imgmill/imgmill/internal/wire"
)

// DefaultGrace is how long an image is left alone after it was written, whatever its task.
const DefaultGrace = time.Hour

// maxDeferred bounds the images held back within one scan until the highest task id is known (see
// ScanImages): beyond it, the rest wait for the next scan.
const maxDeferred = 100_000

// Database is what a Checker asks of the task database: *client.Database, or the database of this
// process in-process.
type Database interface {
	Tasks(ctx context.Context) iter.Seq2[wire.Task, error]
	GetByID(ctx context.Context, id int64) (wire.Task, error)
	GetByIDs(ctx context.Context, ids []int64) (wire.Tasks, error)
	SetByID(ctx context.Context, t wire.Task) error
	FailTask(ctx context.Context, id, token int64, reason string, permanent bool) (wire.Task, error)
}

// Storage is what a Checker asks of image storage: *client.Storage, or the storage of this process
// in-process.
type Storage interface {
	ListBlobs(ctx context.Context, prefix, after string, limit int) (wire.BlobPage, error)
	DeleteImage(ctx context.Context, id int64, state string) error
}

// Checker checks storage's images against the database's tasks.
type Checker struct {
	DB      Database
	Storage Storage
	// Grace is how long an image is left alone after it was written; 0 takes DefaultGrace.
	Grace time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Kind is what a scan found an image to be.
type Kind int

const (
	// Kept: an image its task has (or may yet have): nothing to do.
	Kept Kind = iota
	// Orphan: its task is unknown or deleted, and it is older than the grace.
	Orphan
	// StrayResult: the result of a task that failed or was cancelled, both older than the grace.
	StrayResult
	// Recent: an orphan, stray result or image ahead of the database but for the grace; left for a
	// later scan.
	Recent
	// Ahead: its id is beyond every task the database holds; only fsck --repair removes it, past the grace.
	Ahead
	// Unrecognised: a key that names no task image; never touched.
	Unrecognised
)

func (k Kind) String() string {
	switch k {
	case Kept:
		return "kept"
	case Orphan:
		return "orphan"
	case StrayResult:
		return "stray result"
	case Recent:
		return "recent"
	case Ahead:
		return "ahead of the database"
	case Unrecognised:
		return "unrecognised"
	}
	return "unknown"
}

// MarshalText writes the kind in words, for JSON reports.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Image is one stored blob as a scan saw it.
type Image struct {
	wire.BlobInfo
	ID    int64  `json:"id"`    // its task's id (-1 when Unrecognised)
	State string `json:"state"` // wire.WorkingImage or wire.FinishedImage ("" when Unrecognised)
	Kind  Kind   `json:"kind"`
	// Old: written longer than the grace ago.
	Old bool `json:"old"`
	// Removed: the scan deleted it.
	Removed bool `json:"removed"`
}

// Removal says which images a scan deletes.
type Removal int

const (
	// RemoveNothing only reports.
	RemoveNothing Removal = iota
	// RemoveOrphans deletes orphans and stray results (the master's sweep).
	RemoveOrphans
	// RemoveAhead deletes orphans, stray results and, past the grace, images ahead of the database
	// (imgmill fsck --repair).
	RemoveAhead
)

func (c *Checker) grace() time.Duration {
	if c.Grace > 0 {
		return c.Grace
	}
	return DefaultGrace
}

func (c *Checker) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// ParseKey splits a blob key into its task id and state ("working/42": 42, wire.WorkingImage); ok is
// false for a key that names no task image.
func ParseKey(key string) (id int64, state string, ok bool) {
	state, rest, found := strings.Cut(key, "/")
	if !found || (state != wire.WorkingImage && state != wire.FinishedImage) || rest == "" || strings.Trim(rest, "0123456789") != "" {
		return 0, "", false
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || strconv.FormatInt(id, 10) != rest {
		return 0, "", false // leading zeros: not a key storage would write
	}
	return id, state, true
}

// ScanImages pages through storage's images, asks the database about their tasks one page at a time
// (POST /getByIds), removes what removal says, and calls visit for every image with what it found.
//
// An image whose task is missing is an orphan only when some task with a larger id exists. Keys come in
// byte order ("working/10" before "working/9"), so the highest task id is known only at the end: such
// images are held back (up to a bound) and decided once the scan has seen every page, after asking the
// database about them again.
func (c *Checker) ScanImages(ctx context.Context, removal Removal, visit func(Image)) error {
	grace := c.grace()
	var highest int64 = -1 // the highest id of a task found
	var deferred []Image
	after := ""
	for {
		page, err := c.Storage.ListBlobs(ctx, "", after, 0)
		if err != nil {
			return fmt.Errorf("list images: %w", err)
		}
		images := make([]Image, 0, len(page.Blobs))
		for _, b := range page.Blobs {
			im := Image{BlobInfo: b, ID: -1}
			id, state, ok := ParseKey(b.Key)
			if ok {
				im.ID, im.State = id, state
			} else {
				im.Kind = Unrecognised
			}
			im.Old = c.now().Sub(b.ModTime) > grace
			images = append(images, im)
		}
		tasks, err := c.tasksOf(ctx, images)
		if err != nil {
			return err
		}
		for _, t := range tasks {
			highest = max(highest, t.ID)
		}
		for _, im := range images {
			if im.Kind == Unrecognised {
				visit(im)
				continue
			}
			t, found := tasks[im.ID]
			if !found && im.ID > highest {
				if len(deferred) < maxDeferred {
					deferred = append(deferred, im)
				}
				continue
			}
			if err := c.settle(ctx, &im, t, found, removal, grace); err != nil {
				return err
			}
			visit(im)
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	// The held back images, against the highest id now known: asked about again, as their tasks may have
	// been created meanwhile.
	for chunk := range slices.Chunk(deferred, wire.MaxStatusIDs) {
		tasks, err := c.tasksOf(ctx, chunk)
		if err != nil {
			return err
		}
		for _, t := range tasks {
			highest = max(highest, t.ID)
		}
		for _, im := range chunk {
			t, found := tasks[im.ID]
			if !found && im.ID > highest {
				im.Kind = Ahead
				if !im.Old {
					im.Kind = Recent // its task may be on its way
				} else if removal == RemoveAhead {
					if err := c.remove(ctx, &im); err != nil {
						return err
					}
				}
				visit(im)
				continue
			}
			if err := c.settle(ctx, &im, t, found, removal, grace); err != nil {
				return err
			}
			visit(im)
		}
	}
	return nil
}

// settle decides what im is, given its task t (found false: unknown or deleted, with a task of a larger
// id existing), and removes it when it should.
func (c *Checker) settle(ctx context.Context, im *Image, t wire.Task, found bool, removal Removal, grace time.Duration) error {
	switch {
	case !found:
		im.Kind = Orphan
	case im.State == wire.FinishedImage && (t.State == wire.Failed || t.State == wire.Cancelled):
		im.Kind = StrayResult
		if c.now().Sub(t.FinishedAt) <= grace {
			im.Kind = Recent
			return nil
		}
	default:
		im.Kind = Kept
		return nil
	}
	if !im.Old {
		im.Kind = Recent
		return nil
	}
	if removal == RemoveNothing {
		return nil
	}
	return c.remove(ctx, im)
}

// remove deletes im from storage; deleting an image already gone is no error.
func (c *Checker) remove(ctx context.Context, im *Image) error {
	if err := c.Storage.DeleteImage(ctx, im.ID, im.State); err != nil {
		return fmt.Errorf("remove %s: %w", im.Key, err)
	}
	im.Removed = true
	return nil
}

// tasksOf asks the database about the tasks of images (at most wire.MaxStatusIDs distinct ids, which a
// page of storage's listing never exceeds) and returns those that exist by id.
func (c *Checker) tasksOf(ctx context.Context, images []Image) (map[int64]wire.Task, error) {
	ids := make([]int64, 0, len(images))
	for _, im := range images {
		if im.Kind != Unrecognised {
			ids = append(ids, im.ID)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	tasks := make(map[int64]wire.Task, len(ids))
	if len(ids) == 0 {
		return tasks, nil
	}
	got, err := c.DB.GetByIDs(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("ask the database about %d tasks: %w", len(ids), err)
	}
	for _, t := range got.Tasks {
		tasks[t.ID] = t
	}
	return tasks, nil
}
