package servicetest

import (
	"testing"
	"time"
)

// CPUMeter adds up the CPU time (user and system) the whole process uses while a benchmark's timer
// runs, to report it per op next to the wall time. A hop benchmark runs the client and the service in
// one process, so cpu-ns/op is what one round trip costs both ends together; on a shared machine the
// wall time also counts the waits for a CPU and for the disk, the CPU time much less so.
type CPUMeter struct {
	total, start time.Duration
	ok           bool
}

// StartCPU returns a running CPUMeter; call it just before the benchmark's loop.
func StartCPU() *CPUMeter {
	m := &CPUMeter{}
	m.Resume()
	return m
}

// Pause stops counting, with b.StopTimer.
func (m *CPUMeter) Pause() {
	if now, ok := processCPU(); ok && m.ok {
		m.total += now - m.start
	}
	m.ok = false
}

// Resume counts again, with b.StartTimer.
func (m *CPUMeter) Resume() { m.start, m.ok = processCPU() }

// Report stops counting and reports cpu-ns/op over b.N ops; call it just after the loop. Where the
// CPU time cannot be read it reports nothing.
func (m *CPUMeter) Report(b *testing.B) {
	m.Pause()
	if m.total > 0 && b.N > 0 {
		b.ReportMetric(float64(m.total.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}
