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

// TestResultBufferExpect: a result of about the expected size is written without growing the buffer, and
// one expected past the spill point goes straight to the file.
func TestResultBufferExpect(t *testing.T) {
	var b resultBuffer
	if err := b.expect(100_000); err != nil {
		t.Fatal(err)
	}
	before := b.mem.Cap()
	if before < 100_000 {
		t.Fatalf("expect(100000) made room for %d bytes", before)
	}
	data := bytes.Repeat([]byte{7}, 105_000)
	for i := 0; i < len(data); i += 4096 {
		if _, err := b.Write(data[i:min(i+4096, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if b.mem.Cap() != before {
		t.Errorf("a result 5%% over the expected size grew the buffer from %d to %d bytes", before, b.mem.Cap())
	}
	if got, _ := io.ReadAll(b.reader()); !bytes.Equal(got, data) {
		t.Error("read back differs")
	}
	// A result expected past the spill point goes to the file from its first byte.
	var big resultBuffer
	defer big.Close()
	if err := big.expect(spillAt + 1); err != nil {
		t.Fatal(err)
	}
	if big.file == nil || big.mem.Cap() != 0 {
		t.Fatalf("expect(spillAt+1): file %v, %d bytes reserved in memory; want the file and none", big.file != nil, big.mem.Cap())
	}
	if _, err := big.Write(data); err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(big.reader()); !bytes.Equal(got, data) || big.mem.Len() != 0 {
		t.Errorf("read back %d bytes, %d in memory; want %d, all in the file", len(got), big.mem.Len(), len(data))
	}
}
