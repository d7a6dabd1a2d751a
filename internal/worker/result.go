package worker

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// spillAt is the size beyond which a result is kept in a temporary file rather than in memory: small
// results (most) cost no disk I/O, and a large one costs no more memory than its decoded image, where a
// growing buffer would hold up to twice the result on top of it while it doubles.
const spillAt = 8 << 20

// resultBuffer holds an encoded result until it is sent, in a form every retry of the upload can read
// again from the start (io.ReaderAt and io.Seeker, as the client's retries need).
type resultBuffer struct {
	mem  bytes.Buffer
	file *os.File
	size int64
}

// expect makes room for a result of about size bytes (a hint; 0 or less: unknown), so that a result of the
// input's size (most operations keep it close) is written without growing the buffer, and so copying it,
// several times over. A result that will spill anyway gets no room in memory.
func (b *resultBuffer) expect(size int64) {
	if size > 0 && b.file == nil && b.mem.Len() == 0 {
		if room := size + size/8; room <= spillAt {
			b.mem.Grow(int(room))
		}
	}
}

func (b *resultBuffer) Write(p []byte) (int, error) {
	if b.file == nil && b.mem.Len()+len(p) > spillAt {
		f, err := os.CreateTemp("", "imgmill-result-*")
		if err != nil {
			return 0, fmt.Errorf("spill result to a temporary file: %w", err)
		}
		// Unlinked at once: the open file is all we need, and nothing is left behind on a crash.
		os.Remove(f.Name())
		b.file = f
		if _, err := f.Write(b.mem.Bytes()); err != nil {
			return 0, fmt.Errorf("spill result to a temporary file: %w", err)
		}
		b.mem = bytes.Buffer{}
	}
	var n int
	var err error
	if b.file != nil {
		n, err = b.file.Write(p)
	} else {
		n, err = b.mem.Write(p)
	}
	b.size += int64(n)
	return n, err
}

// reader returns the whole result, readable again from any offset.
func (b *resultBuffer) reader() io.Reader {
	if b.file != nil {
		return io.NewSectionReader(b.file, 0, b.size)
	}
	return bytes.NewReader(b.mem.Bytes())
}

// Close releases the temporary file, if any.
func (b *resultBuffer) Close() error {
	if b.file == nil {
		return nil
	}
	return b.file.Close()
}
