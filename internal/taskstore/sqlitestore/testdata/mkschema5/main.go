// Command mkschema5 writes a task database made by this release's sqlitestore, with a task in every state,
// and the tasks as this release reads them (JSON), for the upgrade test of the next release.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/imgmill/imgmill/internal/taskstore"
	"github.com/imgmill/imgmill/internal/taskstore/sqlitestore"
	"github.com/imgmill/imgmill/internal/wire"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: mkschema5 DB JSON")
	}
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	s, err := sqlitestore.Open(ctx, os.Args[1], sqlitestore.Options{Now: func() time.Time { return now }})
	check(err)
	tick := func() { now = now.Add(time.Minute) }
	create := func(p taskstore.CreateParams) int64 {
		id, err := s.Create(ctx, p)
		check(err)
		tick()
		return id
	}
	claim := func(lease time.Duration) taskstore.Task {
		t, err := s.Claim(ctx, lease)
		check(err)
		tick()
		return t
	}

	// 0: finished.
	create(taskstore.CreateParams{Op: "grayscale"})
	t := claim(time.Hour)
	check(s.Finish(ctx, t.ID, t.Token))
	tick()
	// 1: failed for good by the worker.
	create(taskstore.CreateParams{Op: "rotate:90", MaxAttempts: 1})
	t = claim(time.Hour)
	_, err = s.Fail(ctx, t.ID, t.Token, "decode: not an image", true)
	check(err)
	tick()
	// 2: failed because its only attempt's lease lapsed (Claim's sweep writes it when the next claim
	// comes; until then readers report it failed).
	create(taskstore.CreateParams{MaxAttempts: 1})
	claim(time.Minute)
	tick()
	// 3: handed back after a transient failure, waiting to be claimed again (retry_at in the future).
	create(taskstore.CreateParams{Op: "flip"})
	t = claim(time.Hour)
	_, err = s.Retry(ctx, t.ID, t.Token, "storage unavailable", taskstore.RetryBackoff{Min: time.Hour, Max: time.Hour})
	check(err)
	// 4: in progress, lease live.
	create(taskstore.CreateParams{Op: "swap"})
	claim(time.Hour)
	// 5: created with an idempotency key, finished.
	k, _, err := s.CreateOnce(ctx, taskstore.CreateParams{Pending: true}, "fe-0123456789abcdef", time.Hour)
	check(err)
	check(s.Activate(ctx, k.ID))
	tick()
	t = claim(time.Hour)
	check(s.Finish(ctx, t.ID, t.Token))
	tick()
	// 6: pending: its upload never completed.
	create(taskstore.CreateParams{Pending: true, Op: "blur:2"})
	// 7: queued: the one a claim takes next.
	create(taskstore.CreateParams{Op: "invert", MaxAttempts: 5})
	// 8: set to failed by hand.
	id := create(taskstore.CreateParams{})
	check(s.Set(ctx, id, wire.Failed, time.Hour))
	tick()

	var tasks []taskstore.Task
	for t, err := range s.List(ctx) {
		check(err)
		tasks = append(tasks, t)
	}
	check(s.Close())
	out, err := json.MarshalIndent(struct {
		Now   time.Time
		Tasks []taskstore.Task
	}{now, tasks}, "", "\t")
	check(err)
	check(os.WriteFile(os.Args[2], append(out, '\n'), 0o644))
	fmt.Println(len(tasks), "tasks at", now)
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
