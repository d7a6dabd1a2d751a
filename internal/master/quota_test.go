package master_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/metrics"
	"github.com/imgmill/imgmill/internal/metrics/metricstest"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/wire"
)

// quotaStack is a stack whose master has limits and counts in a registry of its own.
func quotaStack(t *testing.T, limits master.Limits, retention time.Duration) (stack, *metrics.Registry, *master.Metrics) {
	t.Helper()
	reg := metrics.New("master")
	m := master.NewMetrics(reg)
	return newStack(t, servicetest.Options{Limits: limits, Retention: retention, MasterOptions: []master.Option{master.WithMetrics(m)}}), reg, m
}

// usage is what the database counts for the test client, whose uploads are owned by its address.
func (s stack) usage(t *testing.T) wire.Usage {
	t.Helper()
	u, err := s.Database.Usage(t.Context(), "127.0.0.1")
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	return u
}

// expectQuotaRefusal checks a refusal for a quota: status, Retry-After, and a message that says what the
// owner uses, the limit, and what frees room.
func expectQuotaRefusal(t *testing.T, what string, r servicetest.Reply, status int, mentions ...string) {
	t.Helper()
	if r.Status != status || r.Header.Get("Retry-After") == "" || !strings.HasPrefix(r.Body, "Error: quota: ") ||
		!strings.Contains(r.Body, "DELETE /task") || !strings.Contains(r.Body, "retention") {
		t.Errorf("%s: %d (Retry-After %q) %q, want %d with Retry-After and a quota message", what, r.Status, r.Header.Get("Retry-After"), r.Body, status)
	}
	for _, m := range mentions {
		if !strings.Contains(r.Body, m) {
			t.Errorf("%s: %q does not say %q", what, r.Body, m)
		}
	}
}

// An owner keeps at most QuotaTasks tasks, whatever their state: the next upload is 429 before anything
// is stored (with an idempotency key too, leaving no task behind), and deleting a task frees room.
func TestQuotaTasks(t *testing.T) {
	s, reg, _ := quotaStack(t, master.Limits{QuotaTasks: 2}, 0)
	first := s.uploadOK(t, servicetest.PatternPNG(t, 16, 1))
	second := s.uploadOK(t, servicetest.PatternPNG(t, 16, 2))
	task := s.claim(t, first) // a finished task is kept, and counted, as much as a queued one
	if err := s.Database.FinishTask(t.Context(), first, task.Token); err != nil {
		t.Fatal(err)
	}
	if u := s.usage(t); u.Tasks != 2 {
		t.Fatalf("usage after two uploads = %+v, want 2 tasks", u)
	}
	expectQuotaRefusal(t, "upload past the task quota", s.upload(t, servicetest.PatternPNG(t, 16, 3)),
		http.StatusTooManyRequests, `owner "127.0.0.1" keeps 2 tasks`, "is 2")
	expectQuotaRefusal(t, "keyed upload past the task quota", s.uploadKey(t, servicetest.PatternPNG(t, 16, 4), "fe-quota-key-0001"),
		http.StatusTooManyRequests, "keeps 2 tasks")
	if ids := s.listIDs(t); len(ids) != 2 {
		t.Errorf("tasks after the refusals: %v, want only the two accepted", ids)
	}
	if r := s.delete(t, second); r.Status != http.StatusNoContent {
		t.Fatalf("DELETE /task: %d %q", r.Status, r.Body)
	}
	if u := s.usage(t); u.Tasks != 1 {
		t.Errorf("usage after a delete = %+v, want 1 task", u)
	}
	// The freed room takes one more upload, the keyed retry included; then the quota holds again.
	if r := s.uploadKey(t, servicetest.PatternPNG(t, 16, 4), "fe-quota-key-0001"); r.Status != http.StatusOK {
		t.Fatalf("keyed upload after a delete: %d %q", r.Status, r.Body)
	}
	expectQuotaRefusal(t, "upload past the task quota again", s.upload(t, servicetest.PatternPNG(t, 16, 5)),
		http.StatusTooManyRequests, "keeps 2 tasks")

	f := metricstest.Gather(t, reg.Gatherer())
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"imgmill_master_quota_refusals_total", []string{"quota", "tasks"}, 3},
		{"imgmill_master_quota_refusals_total", []string{"quota", "bytes"}, 0},
		{"imgmill_master_tasks_deleted_total", nil, 1},
	} {
		if got := f.Value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// An owner's images take at most QuotaBytes: an upload that would pass it is 507 before anything is
// stored, told from its length when it has one and stopped at the room when it is sent without one; a
// delete frees the room.
func TestQuotaBytes(t *testing.T) {
	small := servicetest.PaddedPNG(64, 64, 20<<10)
	large := servicetest.PaddedPNG(64, 64, 40<<10)
	quota := int64(len(small) + len(large) - 1) // both do not fit; each alone does
	s, reg, _ := quotaStack(t, master.Limits{QuotaBytes: quota}, 0)
	id := s.uploadOK(t, small)
	if u := s.usage(t); u != (wire.Usage{Tasks: 1, Bytes: int64(len(small))}) {
		t.Fatalf("usage after an upload of %d bytes = %+v", len(small), u)
	}
	expectQuotaRefusal(t, "upload past the byte quota", s.upload(t, large), http.StatusInsufficientStorage,
		fmt.Sprintf("take %d bytes and this image %d more", len(small), len(large)), fmt.Sprintf("is %d", quota))
	expectQuotaRefusal(t, "chunked upload past the byte quota", s.postChunked(t, large), http.StatusInsufficientStorage,
		fmt.Sprintf("take %d bytes", len(small)))
	if ids := s.listIDs(t); len(ids) != 1 || ids[0] != id {
		t.Errorf("tasks after the refusals: %v, want only task %d", ids, id)
	}
	if u := s.usage(t); u != (wire.Usage{Tasks: 1, Bytes: int64(len(small))}) {
		t.Errorf("usage after the refusals = %+v, want the first upload's", u)
	}
	// A chunked upload that fits is stored whole and counted.
	r := s.postChunked(t, small)
	if r.Status != http.StatusOK {
		t.Fatalf("chunked upload within the quota: %d %q", r.Status, r.Body)
	}
	if u := s.usage(t); u != (wire.Usage{Tasks: 2, Bytes: 2 * int64(len(small))}) {
		t.Errorf("usage after a chunked upload = %+v", u)
	}
	for _, id := range []int64{id, servicetest.ParseID(t, r.Body)} {
		if r := s.delete(t, id); r.Status != http.StatusNoContent {
			t.Fatalf("DELETE /task: %d %q", r.Status, r.Body)
		}
	}
	if r := s.upload(t, large); r.Status != http.StatusOK {
		t.Errorf("upload after a delete freed room: %d %q", r.Status, r.Body)
	}
	if u := s.usage(t); u != (wire.Usage{Tasks: 1, Bytes: int64(len(large))}) {
		t.Errorf("usage at the end = %+v, want the large upload's", u)
	}
	if got := metricstest.Gather(t, reg.Gatherer()).Value("imgmill_master_quota_refusals_total", "quota", "bytes"); got != 2 {
		t.Errorf("byte quota refusals counted: %v, want 2", got)
	}
}

// Without quotas (the default) nothing is refused and nothing is counted against one.
func TestQuotaOff(t *testing.T) {
	s, reg, _ := quotaStack(t, master.Limits{}, 0)
	for i := range 3 {
		s.uploadOK(t, servicetest.PatternPNG(t, 16, int64(i)))
	}
	if got := metricstest.Gather(t, reg.Gatherer()).Value("imgmill_master_quota_refusals_total"); got != 0 {
		t.Errorf("quota refusals without quotas: %v", got)
	}
}

// The lifecycle counters count cancels (not their repeats), deletes and the sweeper's removals.
func TestLifecycleMetrics(t *testing.T) {
	s, reg, m := quotaStack(t, master.Limits{}, time.Millisecond)
	value := func(name string) float64 { return metricstest.Gather(t, reg.Gatherer()).Value(name) }
	cancelled := s.uploadOK(t, servicetest.PatternPNG(t, 16, 1))
	for range 2 {
		if r := s.cancel(t, cancelled); r.Status != http.StatusOK {
			t.Fatalf("POST /cancel: %d %q", r.Status, r.Body)
		}
	}
	if got := value("imgmill_master_tasks_cancelled_total"); got != 1 {
		t.Errorf("cancelled after a cancel and its repeat = %v, want 1", got)
	}
	deleted := s.uploadOK(t, servicetest.PatternPNG(t, 16, 2))
	for range 2 {
		if r := s.delete(t, deleted); r.Status != http.StatusNoContent {
			t.Fatalf("DELETE /task: %d %q", r.Status, r.Body)
		}
	}
	if got := value("imgmill_master_tasks_deleted_total"); got != 2 {
		t.Errorf("deleted after two DELETE requests = %v, want 2", got)
	}
	if got := value("imgmill_master_tasks_expired_total"); got != 0 {
		t.Errorf("expired before any sweep = %v", got)
	}
	sweeper := master.NewSweeper(s.Database, s.Storage).WithMetrics(m)
	if !servicetest.PollFor(time.Minute, func() bool {
		if _, err := sweeper.Sweep(t.Context()); err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		return value("imgmill_master_tasks_expired_total") >= 1
	}) {
		t.Fatal("the sweeper counted no expired task in a minute")
	}
	if got := value("imgmill_master_tasks_expired_total"); got != 1 {
		t.Errorf("expired = %v, want 1 (the cancelled task)", got)
	}
}
