package testimage

import "bytes"

// JPEGScanBomb is a greyscale progressive JPEG of w×h pixels with the given number of AC scans, each
// of which says in a few bytes of end-of-band runs that every block is empty: the shape of a scan
// bomb, tiny in bytes (55 KB for 1,000 scans of 7000×7000), in which image/jpeg visits every block
// once per scan. It decodes to a flat grey image.
func JPEGScanBomb(w, h, scans int) []byte {
	b := []byte{0xFF, 0xD8}
	// Quantisation table 0: all ones.
	b = append(b, 0xFF, 0xDB, 0, 67, 0)
	b = append(b, bytes.Repeat([]byte{1}, 64)...)
	// SOF2: 8 bits, h×w, one component (id 1, 1×1 sampling, table 0).
	b = append(b, 0xFF, 0xC2, 0, 11, 8, byte(h>>8), byte(h), byte(w>>8), byte(w), 1, 1, 0x11, 0)
	// AC table 0 with one code, "0", for symbol 0xE0: an end-of-band run of 2^14 plus 14 bits.
	b = append(b, 0xFF, 0xC4, 0, 3+16+1, 0x10, 1)
	b = append(b, make([]byte, 15)...)
	b = append(b, 0xE0)
	blocks := ((w + 7) / 8) * ((h + 7) / 8)
	for range scans {
		// SOS: one component, AC table 0, coefficients 1-63, no successive approximation.
		b = append(b, 0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 63, 0)
		var bw jpegBitWriter
		for left := blocks; left > 0; {
			run := min(max(left, 1<<14), 1<<15-1)
			bw.write(0, 1) // the code of 0xE0
			bw.write(uint32(run-1<<14), 14)
			left -= run
		}
		b = append(b, bw.flush()...)
	}
	return append(b, 0xFF, 0xD9)
}

// jpegBitWriter writes a JPEG entropy-coded segment: bits from the most significant, 0xFF stuffed
// with 0x00, the last byte padded with ones.
type jpegBitWriter struct {
	out  []byte
	acc  uint32
	nacc uint
}

func (w *jpegBitWriter) write(v uint32, n uint) {
	for i := int(n) - 1; i >= 0; i-- {
		w.acc = w.acc<<1 | (v>>uint(i))&1
		w.nacc++
		if w.nacc == 8 {
			w.emit(byte(w.acc))
		}
	}
}

func (w *jpegBitWriter) emit(c byte) {
	w.out = append(w.out, c)
	if c == 0xFF {
		w.out = append(w.out, 0)
	}
	w.acc, w.nacc = 0, 0
}

func (w *jpegBitWriter) flush() []byte {
	if w.nacc > 0 {
		w.emit(byte(w.acc<<(8-w.nacc) | (1<<(8-w.nacc) - 1)))
	}
	return w.out
}
