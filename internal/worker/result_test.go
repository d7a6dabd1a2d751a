package worker

import (
	"bytes"
	"io"
	"testing"
)

func TestResultBufferSpillsLargeResults(t *testing.T) {
	for _, size := range []int{0, 1000, spillAt, spillAt + 1, 3*spillAt + 12345} {
		var b resultBuffer
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(i * 7)
		}
		// Written in uneven pieces, as an encoder does.
		for rest := want; len(rest) > 0; {
			n := min(len(rest), 70001)
			if _, err := b.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if spilled := b.file != nil; spilled != (size > spillAt) {
			t.Errorf("%d bytes: spilled to a file = %v", size, spilled)
		}
		if b.mem.Cap() > 2*spillAt { // a bytes.Buffer at most doubles
			t.Errorf("%d bytes: %d bytes held in memory", size, b.mem.Cap())
		}
		// Every retry reads it all again.
		for range 2 {
			got, err := io.ReadAll(b.reader())
			if err != nil || !bytes.Equal(got, want) || b.size != int64(size) {
				t.Fatalf("%d bytes: read back %d bytes (size %d), %v", size, len(got), b.size, err)
			}
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
