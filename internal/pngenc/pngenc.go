// Package pngenc writes PNG images in about half the time image/png takes,
// for the image types imgmill's pipeline makes (NRGBA, RGBA, Gray, Paletted
// and their 16-bit kin): in profiles of small PNGs, compress/flate and
// image/png's row filtering dominated. It reads rows straight from Pix,
// filters them 8 bytes at a time, compresses with
// github.com/klauspost/compress/zlib, and pools its buffers and zlib writers.
//
// The PNG is the one image/png would write, but for the deflate stream: same
// chunks, colour type and bit depth, same row filters, so the same pixels
// once decoded. Other image types are handed to image/png.
package pngenc

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io"
	"sync"

	"github.com/klauspost/compress/zlib"
)

// Encoder writes PNG images. It is safe for concurrent use, and meant to be
// shared: it keeps its buffers and zlib writers in pools for the next image.
// The zero value encodes at png.DefaultCompression. An Encoder must not be
// copied after first use.
type Encoder struct {
	// CompressionLevel is the effort, as for image/png: DefaultCompression
	// (the zero value), BestSpeed, BestCompression or NoCompression; other
	// values mean DefaultCompression. Set it before the first Encode.
	CompressionLevel png.CompressionLevel

	states sync.Pool // *state
	std    stdPool   // image/png's buffers, for the types handed to it
}

// Encode writes img to w as a PNG. Images of a type without a fast path here,
// and images image/png refuses (empty, too large, bad palette), are encoded by
// image/png, at the same compression level. Errors, w's included, are wrapped.
func (e *Encoder) Encode(w io.Writer, img image.Image) error {
	return e.EncodeContext(context.Background(), w, img)
}

// EncodeContext is Encode that stops, with an error wrapping ctx.Err(), once ctx ends: it checks
// ctx between batches of rows (every batchSize filtered bytes), since a well compressed image may
// give w nothing to write for most of its rows. Images handed to image/png stop only when a write
// to w fails.
func (e *Encoder) EncodeContext(ctx context.Context, w io.Writer, img image.Image) error {
	src, ok := newSource(img)
	if !ok {
		enc := png.Encoder{CompressionLevel: e.CompressionLevel, BufferPool: &e.std}
		if err := enc.Encode(w, img); err != nil {
			return fmt.Errorf("pngenc: %w", err)
		}
		return nil
	}
	s, _ := e.states.Get().(*state)
	if s == nil {
		s = new(state)
	}
	err := s.encode(ctx, w, &src, levelParams(e.CompressionLevel))
	s.release()
	e.states.Put(s)
	if err != nil {
		return fmt.Errorf("pngenc: %w", err)
	}
	return nil
}

// params are what a png.CompressionLevel means here.
type params struct {
	zlevel int // klauspost zlib level
	filter int // the filter type for every row, or filterAdaptive
}

// levelParams maps a png.CompressionLevel to a zlib level and row filtering.
// klauspost's levels 1-6 are fast greedy matchers that store blocks where
// they find no match, which costs dearly on noisy filtered rows (photos);
// 7-9 match lazily, like compress/flate's. Measured on photos and
// screenshots or logos (BenchmarkParams), against image/png:
//
//   - default, level 7: 0.6% (photos) to 1.5% (graphics) larger than
//     image/png's default, in 40-50% of its time;
//   - speed, level 4: about image/png's BestSpeed size, in 50-65% of its time;
//   - best, level 9: about image/png's BestCompression size, in 40-65% of
//     its time.
//
// Adaptive filtering pays at every level: no fixed filter came within 3% of
// its size on both kinds of image.
func levelParams(l png.CompressionLevel) params {
	switch l {
	case png.NoCompression:
		// Stored blocks: filtering buys nothing (image/png skips it too).
		return params{zlevel: zlib.NoCompression, filter: ftNone}
	case png.BestSpeed:
		return params{zlevel: 4, filter: filterAdaptive}
	case png.BestCompression:
		return params{zlevel: 9, filter: filterAdaptive}
	}
	return params{zlevel: 7, filter: filterAdaptive}
}

const (
	// batchSize is about how many filtered bytes are gathered before they are
	// handed to zlib: per-row writes cost more for small rows.
	batchSize = 16 << 10
	// idatSize is about how many compressed bytes an IDAT chunk holds; output
	// is handed to the io.Writer a chunk at a time, so a small image takes one
	// Write.
	idatSize = 64 << 10
	// maxPooled bounds the buffers kept for the next image, so one huge
	// image does not pin its buffers forever.
	maxPooled = 1 << 20
)

// state is one encoding's buffers and zlib writer, pooled by Encoder.
type state struct {
	w    io.Writer // destination of out
	err  error     // first error writing to w
	out  []byte    // PNG bytes not yet written to w
	idat int       // offset in out of the open IDAT chunk's length field
	zw   *zlib.Writer
	zlvl int       // zw's level
	rows [2][]byte // rows converted from Pix, current and previous
	zero []byte    // the row above the first one
	fbuf []byte    // filtered rows waiting for zlib
}

func (s *state) encode(ctx context.Context, w io.Writer, src *source, p params) error {
	s.w, s.err = w, nil
	s.out = append(s.out[:0], "\x89PNG\r\n\x1a\n"...)
	s.writeIHDR(src)
	if src.colorType == ctPaletted {
		s.writePLTEAndTRNS(src.pal[:src.npal])
	}
	s.idat = len(s.out)
	s.out = append(s.out, 0, 0, 0, 0, 'I', 'D', 'A', 'T')
	if s.zw == nil || s.zlvl != p.zlevel {
		zw, err := zlib.NewWriterLevel(s, p.zlevel)
		if err != nil {
			return err // a bug in levelParams
		}
		s.zw, s.zlvl = zw, p.zlevel
	} else {
		s.zw.Reset(s)
	}
	if err := s.writeRows(ctx, src, p.filter); err != nil {
		return err
	}
	if err := s.zw.Close(); err != nil {
		return err
	}
	s.closeIDAT()
	s.out = appendChunk(s.out, "IEND", nil)
	return s.flush()
}

// release drops what the state should not keep in the pool.
func (s *state) release() {
	s.w, s.err = nil, nil
	for _, b := range []*[]byte{&s.out, &s.rows[0], &s.rows[1], &s.zero, &s.fbuf} {
		if cap(*b) > maxPooled {
			*b = nil
		}
	}
}

// writeRows filters src's rows and writes them to the zlib writer.
func (s *state) writeRows(ctx context.Context, src *source, filter int) error {
	n := src.rowLen
	for i := range s.rows {
		s.rows[i] = grow(s.rows[i], n)
	}
	s.zero = grow(s.zero, n)
	clear(s.zero)
	if cap(s.fbuf) < batchSize+n+1 {
		s.fbuf = make([]byte, 0, batchSize+n+1)
	}
	fbuf := s.fbuf[:0]
	if src.colorType == ctPaletted {
		filter = ftNone // as image/png: filters rarely help palette indices
	}
	prev := s.zero
	for y := range src.h {
		cur := src.row(y, s.rows[y&1])
		start := len(fbuf)
		fbuf = append(fbuf, make([]byte, 1+n)...) // within capacity: no allocation
		out := fbuf[start+1:]
		ft := filter
		if ft == filterAdaptive {
			ft = chooseFilter(out, cur, prev, src.bpp)
		}
		if ft != ftPaeth || filter != filterAdaptive { // else chooseFilter filtered the row
			filterRow(out, ft, cur, prev, src.bpp)
		}
		fbuf[start] = byte(ft)
		if len(fbuf) >= batchSize {
			if err := ctx.Err(); err != nil {
				return err
			}
			if _, err := s.zw.Write(fbuf); err != nil {
				return err
			}
			fbuf = fbuf[:0]
		}
		prev = cur
	}
	if _, err := s.zw.Write(fbuf); err != nil {
		return err
	}
	return nil
}

// Write takes the zlib stream into IDAT chunks, and hands full ones to s.w.
func (s *state) Write(b []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	s.out = append(s.out, b...)
	if len(s.out)-s.idat >= idatSize {
		s.closeIDAT()
		if err := s.flush(); err != nil {
			return 0, err
		}
		s.idat = 0
		s.out = append(s.out, 0, 0, 0, 0, 'I', 'D', 'A', 'T')
	}
	return len(b), nil
}

// closeIDAT completes the IDAT chunk at s.idat, or drops it if empty.
func (s *state) closeIDAT() {
	n := len(s.out) - s.idat - 8
	if n == 0 {
		s.out = s.out[:s.idat]
		return
	}
	binary.BigEndian.PutUint32(s.out[s.idat:], uint32(n))
	s.out = binary.BigEndian.AppendUint32(s.out, crc32.ChecksumIEEE(s.out[s.idat+4:]))
}

func (s *state) flush() error {
	if s.err == nil {
		_, s.err = s.w.Write(s.out)
	}
	s.out = s.out[:0]
	return s.err
}

func (s *state) writeIHDR(src *source) {
	var b [13]byte
	binary.BigEndian.PutUint32(b[0:], uint32(src.w))
	binary.BigEndian.PutUint32(b[4:], uint32(src.h))
	b[8], b[9] = src.depth, src.colorType // compression, filter and interlace methods 0
	s.out = appendChunk(s.out, "IHDR", b[:])
}

// writePLTEAndTRNS writes the palette, with alpha only up to the last entry
// that is not opaque, as image/png does.
func (s *state) writePLTEAndTRNS(pal []color.NRGBA) {
	var b [4 * 256]byte
	plte, trns := b[:0:3*256], b[3*256:3*256]
	last := -1
	for i, c := range pal {
		plte = append(plte, c.R, c.G, c.B)
		trns = append(trns, c.A)
		if c.A != 0xff {
			last = i
		}
	}
	s.out = appendChunk(s.out, "PLTE", plte)
	if last >= 0 {
		s.out = appendChunk(s.out, "tRNS", trns[:last+1])
	}
}

// appendChunk appends a whole chunk: length, name, data and CRC.
func appendChunk(out []byte, name string, data []byte) []byte {
	out = binary.BigEndian.AppendUint32(out, uint32(len(data)))
	start := len(out)
	out = append(out, name...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(out[start:]))
}

// grow returns b with length n, reallocated if its capacity is short.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// stdPool is a png.EncoderBufferPool backed by sync.Pool.
type stdPool struct{ p sync.Pool }

func (sp *stdPool) Get() *png.EncoderBuffer {
	b, _ := sp.p.Get().(*png.EncoderBuffer)
	return b // nil: png.Encoder allocates one
}

func (sp *stdPool) Put(b *png.EncoderBuffer) { sp.p.Put(b) }
