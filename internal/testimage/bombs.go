package testimage

import (
	"math/bits"
)

// JPEGScanBomb is a valid progressive greyscale JPEG of width×height pixels with scans AC scans, each a few
// dozen bytes of end-of-block runs that cover every block: a small file whose decoding walks all the
// image's blocks once per scan.
func JPEGScanBomb(width, height, scans int) []byte {
	b := []byte{0xff, 0xd8}
	// One quantisation table, all ones.
	b = append(b, 0xff, 0xdb, 0, 67, 0)
	for range 64 {
		b = append(b, 1)
	}
	// SOF2: 8-bit, one component (id 1, 1x1 sampling, table 0).
	b = append(b, 0xff, 0xc2, 0, 11, 8, byte(height>>8), byte(height), byte(width>>8), byte(width), 1, 1, 0x11, 0)
	// An AC table (class 1, id 0) of the 15 end-of-band run codes EOB0..EOB14 (symbols 0x00, 0x10, ...,
	// 0xe0), 4 bits each: EOBn is code n.
	b = append(b, 0xff, 0xc4, 0, 34, 0x10, 0, 0, 0, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	for n := range 15 {
		b = append(b, byte(n<<4))
	}
	blocks := ((width + 7) / 8) * ((height + 7) / 8)
	data := eobRuns(blocks)
	for range scans {
		// SOS: one component, AC table 0, spectral selection 1..63, no successive approximation.
		b = append(b, 0xff, 0xda, 0, 8, 1, 1, 0x00, 1, 63, 0)
		b = append(b, data...)
	}
	return append(b, 0xff, 0xd9)
}

// eobRuns is the entropy-coded data of an AC scan in which every one of blocks blocks is empty: end-of-
// band runs of at most 32767 blocks, each EOBn (n = log2 of the run) and the run's n low bits.
func eobRuns(blocks int) []byte {
	var w bitWriter
	for blocks > 0 {
		run := min(blocks, 1<<15-1)
		n := bits.Len(uint(run)) - 1
		w.write(uint32(n), 4)
		w.write(uint32(run-1<<n), uint(n))
		blocks -= run
	}
	return w.flush()
}

// bitWriter packs bits most significant first, stuffing a 0 after every 0xff byte as JPEG wants.
type bitWriter struct {
	out   []byte
	acc   uint32
	nbits uint
}

func (w *bitWriter) write(v uint32, n uint) {
	for i := int(n) - 1; i >= 0; i-- {
		w.acc = w.acc<<1 | (v>>uint(i))&1
		w.nbits++
		if w.nbits == 8 {
			w.emit(byte(w.acc))
			w.acc, w.nbits = 0, 0
		}
	}
}

func (w *bitWriter) emit(c byte) {
	w.out = append(w.out, c)
	if c == 0xff {
		w.out = append(w.out, 0)
	}
}

// flush pads the last byte with ones.
func (w *bitWriter) flush() []byte {
	if w.nbits > 0 {
		w.emit(byte(w.acc<<(8-w.nbits) | (1<<(8-w.nbits) - 1)))
		w.acc, w.nbits = 0, 0
	}
	return w.out
}
