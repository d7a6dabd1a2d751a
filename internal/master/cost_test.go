package master_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imgmill/imgmill/internal/imageop"
	"github.com/imgmill/imgmill/internal/master"
	"github.com/imgmill/imgmill/internal/servicetest"
	"github.com/imgmill/imgmill/internal/testimage"
)

// uploadOp POSTs body to the master's /new with the operation chain op.
func (s stack) uploadOp(op string) func(*testing.T, []byte) servicetest.Reply {
	return func(t *testing.T, body []byte) servicetest.Reply {
		t.Helper()
		return s.call(t, http.MethodPost, s.MasterURL+"/new?op="+url.QueryEscape(op), bytes.NewReader(body))
	}
}

// paddedPNG is a header-only PNG of w×h pixels at depth bits per channel: the master reads only the
// header, so it stands for an image of any size.
func paddedPNG(w, h, depth int) []byte {
	return append(testimage.PNGHeaderDepth(w, h, depth), make([]byte, 200)...)
}

// The attacks the cost limits are for: a tiny PNG blown up to 50 MP and blurred 15 times (a minute of
// CPU for a 68-byte upload), and a 16-bit 50 MP PNG turned and blurred (800 MB held at once).
var (
	cpuAttack    = "resize:7071x7071:exact" + strings.Repeat(",blur:6", 15)
	memoryAttack = "rotate:90,blur:6,sharpen:10,rotate:90,blur:6,sharpen:10"
)

func TestNewRefusesCostlyChains(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	tiny := paddedPNG(1, 1, 8)
	wantCPU := regexp.MustCompile(`^Error: op: the chain would take about [0-9]+ s of CPU \(blur:6 on 7071x7071: [0-9.]+ s each, 15 times\), ` +
		`[0-9]\.[0-9] times the limit of 30 s \(--max-task-cost\)$`)
	r := s.uploadOp(cpuAttack)(t, tiny)
	if r.Status != http.StatusRequestEntityTooLarge || !wantCPU.MatchString(r.Body) {
		t.Errorf("a 1x1 PNG made 7071x7071 and blurred 15 times: %d %q, want 413 matching %s", r.Status, r.Body, wantCPU)
	}
	// The numbers in the message are the estimate's.
	e := mustChain(t, cpuAttack).Estimate(imageop.Header{Format: "png", Width: 1, Height: 1, Depth: 8})
	_, each, _ := e.Costliest()
	if want := fmt.Sprintf("about %.0f s of CPU (blur:6 on 7071x7071: %.2g s each", e.CPU.Seconds(), each.Seconds()); !strings.Contains(r.Body, want) {
		t.Errorf("message %q does not say %q", r.Body, want)
	}
	s.expectRefused(t, "CPU attack", s.uploadOp(cpuAttack), tiny, http.StatusRequestEntityTooLarge, r.Body)

	s.expectRefused(t, "memory attack", s.uploadOp(memoryAttack), paddedPNG(7071, 7071, 16), http.StatusRequestEntityTooLarge,
		"Error: op: the chain would hold about 800 MB at once (during rotate:90 on 7071x7071), 1.5 times the limit of 536870912 bytes (--max-task-memory)")
	// The same chain on the same size at 8 bits holds half as much.
	s.claim(t, s.expectStored(t, "8-bit memory attack", s.uploadOp(memoryAttack)(t, paddedPNG(7071, 7071, 8)), paddedPNG(7071, 7071, 8)))
}

// TestNewAcceptsOrdinaryPhotoWork: the default cost limits let through what photos go through.
func TestNewAcceptsOrdinaryPhotoWork(t *testing.T) {
	s := newStack(t, servicetest.Options{})
	for _, tc := range []struct {
		w, h, depth int
		op          string
	}{
		{6000, 4000, 8, "resize:2048x2048,sharpen,convert:jpeg"},
		{6000, 4000, 8, "sharpen:2,resize:3000x,convert:jpeg"},
		{6000, 4000, 8, "sharpen:10,convert:jpeg"},
		{6000, 4000, 16, "rotate:90,sharpen:2,convert:png"},
		{8660, 5773, 8, "swap"},
		{8660, 5773, 8, "rotate:90"},
		{8660, 5773, 16, "swap"},
		{8660, 5773, 16, "resize:2000x"},
	} {
		name := fmt.Sprintf("%dx%d %d-bit %s", tc.w, tc.h, tc.depth, tc.op)
		body := paddedPNG(tc.w, tc.h, tc.depth)
		s.claim(t, s.expectStored(t, name, s.uploadOp(tc.op)(t, body), body))
	}
}

func TestNewCostLimitsSetAndOff(t *testing.T) {
	tight := newStack(t, servicetest.Options{Limits: master.Limits{MaxTaskCost: 100 * time.Millisecond, MaxTaskMemory: 10 << 20}})
	// 1000x1000: decode 29 ms, swap 1 ms, encode 60 ms; 4 MB.
	small := paddedPNG(1000, 1000, 8)
	tight.claim(t, tight.expectStored(t, "within both", tight.upload(t, small), small))
	r := tight.uploadOp("blur:6")(t, small)
	if r.Status != http.StatusRequestEntityTooLarge || !strings.Contains(r.Body, "(blur:6 on 1000x1000: ") || !strings.HasSuffix(r.Body, "times the limit of 0.1 s (--max-task-cost)") {
		t.Errorf("blur:6 over a 0.1 s limit: %d %q", r.Status, r.Body)
	}
	// The CPU limit off, the memory one alone: 2000x2000 holds 16 MB.
	memOnly := newStack(t, servicetest.Options{Limits: master.Limits{MaxTaskCost: master.NoLimit, MaxTaskMemory: 10 << 20}})
	memOnly.claim(t, memOnly.expectStored(t, "memory only, blur", memOnly.uploadOp(strings.Repeat("blur:6,", 15)+"blur:6")(t, small), small))
	r = memOnly.upload(t, paddedPNG(2000, 2000, 8))
	if r.Status != http.StatusRequestEntityTooLarge || !strings.Contains(r.Body, "at once (during ") || !strings.HasSuffix(r.Body, "the limit of 10485760 bytes (--max-task-memory)") {
		t.Errorf("16 MB over a 10 MiB limit: %d %q", r.Status, r.Body)
	}

	off := newStack(t, servicetest.Options{Limits: master.Limits{MaxTaskCost: master.NoLimit, MaxTaskMemory: master.NoLimit}})
	for _, tc := range []struct {
		op   string
		body []byte
	}{{cpuAttack, paddedPNG(1, 1, 8)}, {memoryAttack, paddedPNG(7071, 7071, 16)}} {
		off.claim(t, off.expectStored(t, "no limit: "+tc.op, off.uploadOp(tc.op)(t, tc.body), tc.body))
	}
}

func mustChain(t *testing.T, spec string) imageop.Chain {
	t.Helper()
	c, err := imageop.ParseChain(spec)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
