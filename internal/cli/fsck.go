package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/imgmill/imgmill/internal/client"
	"github.com/imgmill/imgmill/internal/consistency"
	"github.com/imgmill/imgmill/internal/httpapi"
	"github.com/imgmill/imgmill/internal/wire"
)

func fsckCommand() command {
	return command{name: "fsck", summary: "check that the task database and image storage agree, and repair them",
		about: "Walks every image in storage and every task in the database, found through the kv service at --kv\n" +
			"(so on every backend, while the services run), and reports: images no task wants (orphans: their task\n" +
			"is unknown or deleted; stray results of failed or cancelled tasks; images beyond the database's last\n" +
			"task), queued, processing or finished tasks whose upload is missing, and finished tasks whose result\n" +
			"is missing; then a summary. Images written less than --orphan-grace ago are left alone.\n" +
			"With --repair it removes those images, queues the finished tasks whose result is missing again (their\n" +
			"upload is there), and fails the tasks whose upload is lost. Exits 1 when problems remain.",
		define: func(f *flags) runner {
			kv := f.kvAddrs()
			var token string
			var grace time.Duration
			var repair, asJSON bool
			f.token(&token)
			f.orphanGrace(&grace)
			f.fsck(&repair, &asJSON)
			return func(ctx context.Context, _ []string) error {
				if err := checkOrphanGrace(grace); err != nil {
					return err
				}
				hc := httpapi.NewClient(httpapi.WithToken(token))
				defer hc.CloseIdleConnections()
				kvc := client.NewKV(hc, *kv)
				checker := &consistency.Checker{
					DB:      client.NewDatabase(hc, client.NewResolver(kvc, wire.DatabaseKey, client.ResolveTTL)),
					Storage: client.NewStorage(hc, client.NewResolver(kvc, wire.StorageKey, client.ResolveTTL)),
					Grace:   grace,
				}
				out := fsckText{w: f.env.stdout, now: time.Now()}
				image, task := out.image, out.task
				if asJSON {
					enc := json.NewEncoder(f.env.stdout)
					image = func(im consistency.Image) {
						enc.Encode(struct {
							Image consistency.Image `json:"image"`
						}{im})
					}
					task = func(tf consistency.TaskFinding) {
						enc.Encode(struct {
							Task consistency.TaskFinding `json:"task"`
						}{tf})
					}
				}
				sum, err := checker.Check(ctx, repair, image, task)
				if err != nil {
					return fmt.Errorf("fsck: %w", err)
				}
				if asJSON {
					json.NewEncoder(f.env.stdout).Encode(struct {
						Summary consistency.Summary `json:"summary"`
					}{sum})
				} else {
					out.summary(sum, repair)
				}
				if n := sum.Unresolved(); n > 0 {
					return fmt.Errorf("fsck: %d problems remain", n)
				}
				return nil
			}
		}}
}

// fsckText prints fsck's findings for people, one line each.
type fsckText struct {
	w   io.Writer
	now time.Time
}

func (o fsckText) image(im consistency.Image) {
	action := ""
	switch {
	case im.Removed:
		action = "  removed"
	case im.Kind == consistency.Recent:
		action = "  left alone for now"
	}
	fmt.Fprintf(o.w, "%-22s %-20s %10d bytes, written %s ago%s\n", im.Kind, im.Key, im.Size, o.now.Sub(im.ModTime).Round(time.Second), action)
}

func (o fsckText) task(tf consistency.TaskFinding) {
	line := fmt.Sprintf("%-22s task %d (%s)", tf.Problem, tf.Task.ID, tf.Task.State)
	if tf.Repair != "" {
		line += ": " + tf.Repair
	}
	fmt.Fprintln(o.w, line)
}

func (o fsckText) summary(s consistency.Summary, repair bool) {
	fmt.Fprintf(o.w, "checked %d tasks and %d images\n", s.Tasks, s.Images)
	fmt.Fprintf(o.w, "images: %d orphans, %d stray results, %d ahead of the database, %d recent (left alone), %d unrecognised\n",
		s.Orphans, s.StrayResults, s.Ahead, s.Recent, s.Unrecognised)
	fmt.Fprintf(o.w, "tasks: %d missing their upload, %d missing their result\n", s.SourceMissing, s.ResultMissing)
	if repair {
		fmt.Fprintf(o.w, "repaired: %d images removed, %d tasks fixed\n", s.Removed, s.Repaired)
	}
	switch n := s.Unresolved(); {
	case s.Problems() == 0:
		fmt.Fprintln(o.w, "no problems found")
	case n == 0:
		fmt.Fprintln(o.w, "every problem found was repaired")
	case repair:
		fmt.Fprintf(o.w, "%d problems remain\n", n)
	default:
		fmt.Fprintf(o.w, "%d problems found; imgmill fsck --repair fixes what can be fixed\n", n)
	}
}
