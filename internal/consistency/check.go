package consistency

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/wire"
)

// Failure reasons that a repair gives the tasks whose images are lost.
const (
	SourceLostError = "the uploaded image is lost"
	BothLostError   = "the uploaded image and its result are lost"
)

// Problem is one inconsistency a check found on a task's side.
type Problem int

const (
	// SourceMissing: a task that is queued, processing or finished has no uploaded image.
	SourceMissing Problem = iota
	// ResultMissing: a finished task has no result, though its upload is there.
	ResultMissing
)

func (p Problem) String() string {
	if p == SourceMissing {
		return "source missing"
	}
	return "result missing"
}

// MarshalText writes the problem in words, for JSON reports.
func (p Problem) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// TaskFinding is a task with a missing image, and what the repair did about it.
type TaskFinding struct {
	Task    wire.Task `json:"task"`
	Problem Problem   `json:"problem"`
	// Repair is what a repair did ("failed: ...", "queued again") or, when it could not, why not; ""
	// without a repair.
	Repair   string `json:"repair,omitempty"`
	Repaired bool   `json:"repaired"`
}

// Summary counts what a check found.
type Summary struct {
	Tasks  int64 `json:"tasks"`  // tasks the database holds
	Images int64 `json:"images"` // images storage holds
	// Images by kind (see Kind), and how many of them were removed.
	Orphans      int64 `json:"orphans"`
	StrayResults int64 `json:"strayResults"`
	Ahead        int64 `json:"ahead"`
	Recent       int64 `json:"recent"`
	Unrecognised int64 `json:"unrecognised"`
	Removed      int64 `json:"removed"`
	// Tasks by problem, and how many a repair fixed.
	SourceMissing int64 `json:"sourceMissing"`
	ResultMissing int64 `json:"resultMissing"`
	Repaired      int64 `json:"repaired"`
}

// Problems counts the inconsistencies found: images that are nobody's (past the grace) and tasks
// missing an image. Recent and unrecognised images are not problems.
func (s Summary) Problems() int64 {
	return s.Orphans + s.StrayResults + s.Ahead + s.SourceMissing + s.ResultMissing
}

// Unresolved counts the problems that remain: those found less those removed or repaired.
func (s Summary) Unresolved() int64 { return s.Problems() - s.Removed - s.Repaired }

// Check walks every image and every task and reports, through image and task (either may be nil),
// what is wrong: images no task wants (see ScanImages) and tasks whose images are missing. With repair
// it removes the orphans, stray results and old images ahead of the database, queues again the finished
// tasks whose result is missing but whose upload is there (so that they are processed again), and fails
// for good the queued, processing or finished tasks whose upload is lost.
//
// It holds 8 bytes per stored image (the ids of the images present) while it walks the tasks. Tasks
// created or finished after the check began are not judged, as their images may postdate the listing.
func (c *Checker) Check(ctx context.Context, repair bool, image func(Image), task func(TaskFinding)) (Summary, error) {
	var sum Summary
	began := c.now()
	removal := RemoveNothing
	if repair {
		removal = RemoveAhead
	}
	var sources, results []int64
	err := c.ScanImages(ctx, removal, func(im Image) {
		sum.Images++
		switch im.Kind {
		case Orphan:
			sum.Orphans++
		case StrayResult:
			sum.StrayResults++
		case Ahead:
			sum.Ahead++
		case Recent:
			sum.Recent++
		case Unrecognised:
			sum.Unrecognised++
		}
		if im.Removed {
			sum.Removed++
		} else if im.Kind != Unrecognised {
			if im.State == wire.WorkingImage {
				sources = append(sources, im.ID)
			} else {
				results = append(results, im.ID)
			}
		}
		if im.Kind != Kept && image != nil {
			image(im)
		}
	})
	if err != nil {
		return sum, err
	}
	slices.Sort(sources)
	slices.Sort(results)
	has := func(ids []int64, id int64) bool { _, ok := slices.BinarySearch(ids, id); return ok }

	// Repairs wait until the listing is read: the database serves it from one read, which writes
	// would otherwise run beside.
	var found []TaskFinding
	for t, err := range c.DB.Tasks(ctx) {
		if err != nil {
			return sum, fmt.Errorf("list tasks: %w", err)
		}
		sum.Tasks++
		if t.Pending || !t.CreatedAt.Before(began) {
			continue // an upload in progress, or newer than the listing of images
		}
		source := has(sources, t.ID)
		switch t.State {
		case wire.NotStarted, wire.InProgress:
			if !source {
				found = append(found, TaskFinding{Task: t, Problem: SourceMissing})
			}
		case wire.Finished:
			if !t.FinishedAt.Before(began) {
				continue
			}
			result := has(results, t.ID)
			switch {
			case !source:
				found = append(found, TaskFinding{Task: t, Problem: SourceMissing})
			case !result:
				found = append(found, TaskFinding{Task: t, Problem: ResultMissing})
			}
		}
	}
	for _, f := range found {
		if f.Problem == SourceMissing {
			sum.SourceMissing++
		} else {
			sum.ResultMissing++
		}
		if repair {
			if err := c.repair(ctx, &f, has(results, f.Task.ID)); err != nil {
				return sum, err
			}
			if f.Repaired {
				sum.Repaired++
			}
		}
		if task != nil {
			task(f)
		}
	}
	return sum, nil
}

// errChanged stops a repair of a task that changed since the check saw it.
var errChanged = errors.New("the task changed since it was checked; check again")

// repair fixes the task of f, unless it changed since the check read it: a finished task whose result
// is missing is queued again; a task whose upload is lost fails, but for a finished one whose result is
// still there (result), which keeps serving it.
func (c *Checker) repair(ctx context.Context, f *TaskFinding, result bool) error {
	t := f.Task
	now, err := c.DB.GetByID(ctx, t.ID)
	if err != nil || now.State != t.State || now.Token != t.Token {
		f.Repair = errChanged.Error()
		if err != nil && !isGone(err) {
			return fmt.Errorf("repair task %d: %w", t.ID, err)
		}
		return nil
	}
	switch {
	case f.Problem == ResultMissing:
		if err := c.DB.SetByID(ctx, wire.Task{ID: t.ID, State: wire.NotStarted}); err != nil {
			return fmt.Errorf("queue task %d again: %w", t.ID, err)
		}
		f.Repair, f.Repaired = "queued again", true
	case t.State == wire.Finished && result:
		f.Repair = "not repaired: its result is still served"
	default:
		reason := SourceLostError
		if t.State == wire.Finished {
			reason = BothLostError
		}
		if err := c.fail(ctx, t, reason); err != nil {
			return fmt.Errorf("fail task %d: %w", t.ID, err)
		}
		f.Repair, f.Repaired = "failed: "+reason, true
	}
	return nil
}

// fail fails task t for good with reason. A task that is not in progress is first taken (set in
// progress, which gives it a token and a lease, so that no worker claims it meanwhile) to be failed
// under that token, the way a worker fails one.
func (c *Checker) fail(ctx context.Context, t wire.Task, reason string) error {
	if t.State != wire.InProgress {
		if err := c.DB.SetByID(ctx, wire.Task{ID: t.ID, State: wire.InProgress}); err != nil {
			return err
		}
		var err error
		if t, err = c.DB.GetByID(ctx, t.ID); err != nil {
			return err
		}
	}
	_, err := c.DB.FailTask(ctx, t.ID, t.Token, reason, true)
	return err
}

// isGone reports whether err is the database's answer for a task that no longer exists.
func isGone(err error) bool {
	return client.IsStatus(err, http.StatusBadRequest) || client.IsStatus(err, http.StatusNotFound)
}
