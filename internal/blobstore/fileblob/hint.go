package fileblob

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"time"

	"github.com/imgmill/imgmill/internal/atomicfile"
)

// A hint file (seg-NNNNNNNN.hint, beside its segment) lists the headers of a sealed segment's records,
// without their data, so that Open reads a few bytes per blob instead of the whole segment: the idea of
// Bitcask's hint files. It is written once, when the segment is sealed by a roll, and trusted only if its
// CRC checks out and it covers the segment up to the length its successor's seal gives; otherwise Open
// reads the segment itself. A missing or stale hint costs time, never correctness.

const (
	hintMagic  = 0x54484d49 // "IMHT"
	hintFormat = 1
	// hintHeader: magic, format, the segment's valid length, the number of entries.
	hintHeader = 4 + 1 + 8 + 4
	// hintEntry: op, key length, fence, mtime, record offset, data length; then the key.
	hintEntry = 1 + 2 + 8 + 8 + 8 + 4
)

// recordHead is a record without its data: what the index needs of it.
type recordHead struct {
	op    byte
	key   string
	fence int64
	mod   time.Time
	off   int64 // of the record
	size  int64 // of its data
}

func (h *recordHead) end() int64 { return h.off + recordHeader + int64(len(h.key)) + h.size }

// headOf returns the head of the record rec (encodeRecord's bytes) at offset off.
func headOf(rec []byte, off int64) recordHead {
	keyLen := int(binary.LittleEndian.Uint16(rec[5:]))
	h := recordHead{
		op: rec[4], key: string(rec[recordHeader : recordHeader+keyLen]),
		fence: int64(binary.LittleEndian.Uint64(rec[7:])), off: off,
		size: int64(binary.LittleEndian.Uint32(rec[23:])),
	}
	if nanos := int64(binary.LittleEndian.Uint64(rec[15:])); nanos != 0 {
		h.mod = time.Unix(0, nanos)
	}
	return h
}

func hintPath(segment string) string { return segment + ".hint" }

// writeHint writes the hint file of a segment whose valid records end at end, from the heads of its
// records (those past end are left out: a failed write's).
func writeHint(segment string, end int64, heads []recordHead) error {
	var n uint32
	for _, h := range heads {
		if h.end() <= end {
			n++
		}
	}
	b := make([]byte, hintHeader, hintHeader+int(n)*(hintEntry+16)+4)
	binary.LittleEndian.PutUint32(b, hintMagic)
	b[4] = hintFormat
	binary.LittleEndian.PutUint64(b[5:], uint64(end))
	binary.LittleEndian.PutUint32(b[13:], n)
	for _, h := range heads {
		if h.end() > end {
			continue
		}
		var e [hintEntry]byte
		e[0] = h.op
		binary.LittleEndian.PutUint16(e[1:], uint16(len(h.key)))
		binary.LittleEndian.PutUint64(e[3:], uint64(h.fence))
		var nanos int64
		if !h.mod.IsZero() {
			nanos = h.mod.UnixNano()
		}
		binary.LittleEndian.PutUint64(e[11:], uint64(nanos))
		binary.LittleEndian.PutUint64(e[19:], uint64(h.off))
		binary.LittleEndian.PutUint32(e[27:], uint32(h.size))
		b = append(b, e[:]...)
		b = append(b, h.key...)
	}
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	_, err := atomicfile.Write(context.Background(), hintPath(segment), bytes.NewReader(b))
	return err
}

var errBadHint = errors.New("hint file does not check out")

// readHint returns the heads a segment's hint file lists, if it checks out and covers the segment up to
// end.
func readHint(segment string, end int64) ([]recordHead, error) {
	b, err := os.ReadFile(hintPath(segment))
	if err != nil {
		return nil, err
	}
	if len(b) < hintHeader+4 || binary.LittleEndian.Uint32(b) != hintMagic || b[4] != hintFormat ||
		crc32.Checksum(b[:len(b)-4], castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) ||
		int64(binary.LittleEndian.Uint64(b[5:])) != end {
		return nil, errBadHint
	}
	n := int(binary.LittleEndian.Uint32(b[13:]))
	heads := make([]recordHead, 0, n)
	b = b[hintHeader : len(b)-4]
	for range n {
		if len(b) < hintEntry {
			return nil, errBadHint
		}
		keyLen := int(binary.LittleEndian.Uint16(b[1:]))
		if len(b) < hintEntry+keyLen {
			return nil, errBadHint
		}
		h := recordHead{
			op: b[0], key: string(b[hintEntry : hintEntry+keyLen]), fence: int64(binary.LittleEndian.Uint64(b[3:])),
			off: int64(binary.LittleEndian.Uint64(b[19:])), size: int64(binary.LittleEndian.Uint32(b[27:])),
		}
		if nanos := int64(binary.LittleEndian.Uint64(b[11:])); nanos != 0 {
			h.mod = time.Unix(0, nanos)
		}
		if h.end() > end {
			return nil, errBadHint
		}
		heads = append(heads, h)
		b = b[hintEntry+keyLen:]
	}
	if len(b) != 0 {
		return nil, errBadHint
	}
	return heads, nil
}
