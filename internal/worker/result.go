package worker

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/imgmill/imgmill/internal/fault"
)

// spillAt is the size beyond which a result is kept in a temporary file rather than in memory: small
// results (most) cost no disk I/O, and a large one costs no more memory than its decoded image, where a
// growing buffer would hold up to twice the result on top of it while it doubles.
const spillAt = 8 << 20

// tempDir names the worker's temporary directory in errors.
const tempDir = "the worker's temporary directory"

// resultBuffer holds an encoded result until it is sent, in a form every retry of the upload can read
// again from the start (io.ReaderAt and io.Seeker, as the client's retries need).
type resultBuffer struct {
	mem  bytes.Buffer
	file *os.File
	size int64
}

// expect prepares for a result of about size bytes (a hint; 0 or less: unknown), as most operations keep
// the input's size: a result that fits in memory gets its room at once, so it is written without growing
// the buffer (and so copying it, several times over); one past the spill point goes to the file at once.
func (b *resultBuffer) expect(size int64) error {
	if size <= 0 || b.file != nil || b.mem.Len() > 0 {
		return nil
	}
	if size > spillAt {
		return b.spill()
	}
	b.mem.Grow(int(min(size+size/8, spillAt)))
	return nil
}

// spill moves the result to an unlinked temporary file, where the rest of it goes too.
func (b *resultBuffer) spill() error {
	f, err := os.CreateTemp("", "imgmill-result-*")
	if err != nil {
		return fmt.Errorf("spill result to a temporary file: %w", fault.Disk(tempDir, err))
	}
	// Unlinked at once: the open file is all we need, and nothing is left behind on a crash.
	os.Remove(f.Name())
	b.file = f
	if _, err := f.Write(b.mem.Bytes()); err != nil {
		return fmt.Errorf("spill result to a temporary file: %w", fault.Disk(tempDir, err))
	}
	b.mem = bytes.Buffer{}
	return nil
}

func (b *resultBuffer) Write(p []byte) (int, error) {
	if b.file == nil && b.mem.Len()+len(p) > spillAt {
		if err := b.spill(); err != nil {
			return 0, err
		}
	}
	var n int
	var err error
	if b.file != nil {
		n, err = b.file.Write(p)
		err = fault.Disk(tempDir, err) // a full disk is waited out, not the task's fault
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
