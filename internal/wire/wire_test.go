package wire_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/imgmill/imgmill/internal/wire"
)

// The reference wire spells a task's state as a number; the status answers as a word.
func TestStatesOnTheWire(t *testing.T) {
	for _, tc := range []struct {
		s       wire.State
		word    wire.Word
		settled bool
	}{
		{wire.NotStarted, "queued", false}, {wire.InProgress, "processing", false},
		{wire.Finished, "finished", true}, {wire.Failed, "failed", true},
	} {
		if !tc.s.Valid() || tc.s.Word() != tc.word || tc.word.Settled() != tc.settled || tc.s.String() != string(tc.word) {
			t.Errorf("state %d: valid %v, word %q (settled %v), want %q (settled %v)", tc.s, tc.s.Valid(), tc.s.Word(), tc.s.Word().Settled(), tc.word, tc.settled)
		}
	}
	// Cancelled has a word but only a cancel reaches it: an operator cannot set it.
	if wire.Cancelled.Valid() || wire.Cancelled.Word() != "cancelled" || !wire.CancelledWord.Settled() {
		t.Errorf("cancelled: valid %v, word %q, settled %v", wire.Cancelled.Valid(), wire.Cancelled.Word(), wire.CancelledWord.Settled())
	}
	if wire.State(5).Valid() || wire.State(-1).Valid() || wire.State(5).Word() != "unknown" {
		t.Error("states beyond the five are valid or have a word")
	}
	task, _ := json.Marshal(wire.Task{ID: 7, State: wire.Finished})
	if string(task) != `{"id":7,"state":2}` {
		t.Errorf("task JSON %s, want the reference's {\"id\":7,\"state\":2}", task)
	}
	status, _ := json.Marshal(wire.PublicStatus{ID: "pub", Status: wire.Status{ID: 7, State: wire.FailedWord}})
	if !strings.HasPrefix(string(status), `{"id":"pub","state":"failed"`) {
		t.Errorf("public status JSON %s: want the public id in place of the internal one, and the state's word", status)
	}
}

func TestCheckOp(t *testing.T) {
	for _, op := range []string{"", "swap", "resize:800x600,sharpen:1.5", "sepia:0.8", strings.Repeat("a", wire.MaxOpLen)} {
		if err := wire.CheckOp(op); err != nil {
			t.Errorf("CheckOp(%.20q) = %v", op, err)
		}
	}
	for _, op := range []string{strings.Repeat("a", wire.MaxOpLen+1), "blur:1\n", "blur:1\x00", "flip:é"} {
		if err := wire.CheckOp(op); err == nil {
			t.Errorf("CheckOp(%.20q) accepted", op)
		}
	}
}

func TestCheckIdempotencyKey(t *testing.T) {
	for _, key := range []string{"a", "550e8400-e29b-41d4-a716-446655440000", strings.Repeat("k", wire.MaxIdempotencyKeyLen)} {
		if err := wire.CheckIdempotencyKey(key); err != nil {
			t.Errorf("CheckIdempotencyKey(%.20q) = %v", key, err)
		}
	}
	for _, key := range []string{"", strings.Repeat("k", wire.MaxIdempotencyKeyLen+1), "new\nline", "ключ"} {
		if err := wire.CheckIdempotencyKey(key); err == nil || !strings.Contains(err.Error(), wire.IdempotencyKeyHeader) {
			t.Errorf("CheckIdempotencyKey(%.20q) = %v, want an error naming the header", key, err)
		}
	}
	if wire.InstancePrefix(wire.DatabaseKey) != "databaseAddress/" {
		t.Errorf("InstancePrefix = %q", wire.InstancePrefix(wire.DatabaseKey))
	}
}

func TestCleanName(t *testing.T) {
	for _, c := range []struct{ raw, want string }{
		{"leaf.jpg", "leaf.jpg"},
		{"../../etc/passwd", "passwd"},
		{`C:\photos\ğüş.jpg`, "ğüş.jpg"},
		{"x\r\ny.png", "xy.png"},
		{" a b.png ", "a b.png"},
		{"bad\xffutf8.png", "badutf8.png"},
		{"..", ""},
		{"dir/", ""},
		{"", ""},
		{strings.Repeat("ğ", 150) + ".jpg", strings.Repeat("ğ", 100)}, // cut at 200 bytes, on a character
	} {
		got := wire.CleanName(c.raw)
		if got != c.want {
			t.Errorf("CleanName(%q) = %q, want %q", c.raw, got, c.want)
		}
		if err := wire.CheckName(got); err != nil {
			t.Errorf("CheckName(CleanName(%q)) = %v", c.raw, err)
		}
	}
	for _, bad := range []string{"a/b", `a\b`, "a\nb", "a\x7fb", "\xff", "..", strings.Repeat("a", 201)} {
		if wire.CheckName(bad) == nil {
			t.Errorf("CheckName(%q) = nil, want an error", bad)
		}
	}
}
