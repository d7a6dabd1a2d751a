package imageop

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// ErrTooComplex is wrapped by the errors of a StructureReader for an image whose structure is over a
// decoding budget: small in bytes and pixels, but laid out so that decoding it costs far more than
// decoding any image an encoder writes (a progressive JPEG of a thousand scans). Its errors' text
// stands alone, a sentence for the client.
var ErrTooComplex = errors.New("image structure too complex")

// MaxJPEGScans is the most scans a progressive JPEG may have. image/jpeg walks every block of a
// scan's components once per scan (an AC scan of a 50 MP image visits 780,000 blocks even when a few
// bytes of end-of-band runs say they are all empty), so a scan costs about as much as a tenth of
// decoding the whole image, however few bytes it takes. Encoders write far fewer: libjpeg's and
// libjpeg-turbo's progressive script has 10 scans for colour and 6 for greyscale (6 per component,
// 24, for CMYK), mozjpeg picks its scans from a set of 64 candidates, so 100 leaves room for hand-made
// scripts (jpegtran -scans) and bounds the scans' cost to about that of decoding the image ten times.
// libjpeg-turbo offers the same defence as an option (djpeg and jpegtran -maxscans).
const MaxJPEGScans = 100

// StructureReader passes an image's bytes through unchanged while it walks the structure of its
// format, holding a few bytes of state (never the image), and fails as soon as the structure is over
// its format's budget: its Read then returns the bytes before the offending one and an error wrapping
// ErrTooComplex, and so does every later Read.
//
// Only JPEG has a budget (MaxJPEGScans; a sequential JPEG codes each component in exactly one scan,
// so it may have no more scans than components). The other formats pass unchecked: the decoders
// imgmill uses spend time in proportion to their bytes or their pixels, which the upload and pixel
// limits bound (see docs/security.md). Malformed or truncated input is not the reader's concern: it
// stops checking where the structure stops making sense and leaves the verdict to the decoder.
type StructureReader struct {
	r   io.Reader
	jpg *jpegWalker // nil: nothing to check
	err error       // the refusal, sticky
}

// CheckStructure returns a StructureReader of r, an image of format (as Sniff names it).
func CheckStructure(format string, r io.Reader) *StructureReader {
	s := &StructureReader{r: r}
	if format == "jpeg" {
		s.jpg = &jpegWalker{}
	}
	return s
}

// Read reads from the image, failing with an error wrapping ErrTooComplex once its structure is over
// budget. Errors of the underlying reader are returned as they are.
func (s *StructureReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	if s.jpg != nil && n > 0 {
		if k, werr := s.jpg.walk(p[:n]); werr != nil {
			s.err = werr
			return k, werr
		}
	}
	return n, err
}

// Err is the refusal the reader returned, or nil. A decoder may report a reader's error as a
// malformed image of its own; Err tells the two apart.
func (s *StructureReader) Err() error { return s.err }

// jpegWalker follows a JPEG's markers as image/jpeg does: after SOI, segments whose two-byte length
// is skipped, and between them (after a scan's header: its entropy-coded data) bytes skipped up to
// the next marker, 0xFF followed by anything but 0x00 (a stuffed 0xFF), 0xFF (fill) or RSTn.
type jpegWalker struct {
	state      jpegState
	marker     byte
	lenHi      byte
	left       int  // bytes of the current segment still to skip (jpegSkip) or to read (jpegSOF)
	sofAt      int  // bytes of the SOF segment read so far
	components int  // of the frame, once its SOF is read
	sequential bool // SOF0 or SOF1: each component is coded in one scan
	scans      int
}

type jpegState uint8

const (
	jpegStart  jpegState = iota // before the first byte
	jpegSOI                     // after 0xFF, expecting SOI
	jpegSearch                  // looking for the next marker's 0xFF
	jpegFF                      // after 0xFF: a marker code, fill, stuffing or RSTn follows
	jpegLenHi                   // a segment's length, first byte
	jpegLenLo                   // a segment's length, second byte
	jpegSkip                    // inside a segment's payload
	jpegSOF                     // inside a SOF segment's payload
	jpegDone                    // after EOI, or where the structure stopped making sense
)

// walk takes the next bytes of the stream and returns how many of them it accepted: len(b), or the
// bytes before the marker that put the image over budget and the error saying so.
func (j *jpegWalker) walk(b []byte) (int, error) {
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch j.state {
		case jpegStart:
			j.state = jpegDone // not a JPEG: the decoder says so
			if c == 0xFF {
				j.state = jpegSOI
			}
		case jpegSOI:
			j.state = jpegDone
			if c == 0xD8 {
				j.state = jpegSearch
			}
		case jpegSearch:
			// A segment is followed straight by the next marker, a scan's header by its
			// entropy-coded data: image/jpeg skips whatever is not a marker either way.
			if c != 0xFF {
				k := bytes.IndexByte(b[i:], 0xFF)
				if k < 0 {
					return len(b), nil
				}
				i += k
			}
			j.state = jpegFF
		case jpegFF:
			switch {
			case c == 0xFF: // fill byte before a marker
			case c == 0x00 || 0xD0 <= c && c <= 0xD7: // stuffed 0xFF or restart marker
				j.state = jpegSearch
			case c == 0xD9: // EOI: the decoder stops here
				j.state = jpegDone
			default:
				if c == 0xDA {
					if err := j.scan(); err != nil {
						return max(i-1, 0), err // before the marker's 0xFF, unless a previous read passed it on
					}
				}
				j.marker = c
				j.state = jpegLenHi
			}
		case jpegLenHi:
			j.lenHi = c
			j.state = jpegLenLo
		case jpegLenLo:
			n := int(j.lenHi)<<8 | int(c)
			if n < 2 {
				j.state = jpegDone // malformed: the decoder refuses it
				break
			}
			j.left = n - 2
			j.state = jpegSkip
			if j.marker == 0xC0 || j.marker == 0xC1 || j.marker == 0xC2 {
				j.sequential = j.marker != 0xC2
				j.sofAt = 0
				j.state = jpegSOF
			}
			if j.left == 0 {
				j.state = jpegSearch
			}
		case jpegSkip:
			skip := min(j.left, len(b)-i)
			j.left -= skip
			i += skip - 1
			if j.left == 0 {
				j.state = jpegSearch
			}
		case jpegSOF:
			// Precision, height, width (5 bytes), then the number of components.
			if j.sofAt == 5 {
				j.components = int(c)
			}
			j.sofAt++
			j.left--
			if j.left == 0 {
				j.state = jpegSearch
			}
		case jpegDone:
			return len(b), nil
		}
	}
	return len(b), nil
}

// scan counts a scan (an SOS marker) and refuses one over the budget.
func (j *jpegWalker) scan() error {
	j.scans++
	if j.sequential && j.components > 0 && j.scans > j.components {
		return &imageError{kind: ErrTooComplex, msg: fmt.Sprintf(
			"sequential JPEG with more scans than its %d components (each is coded in one scan)", j.components)}
	}
	if j.scans > MaxJPEGScans {
		return &imageError{kind: ErrTooComplex, msg: fmt.Sprintf(
			"progressive JPEG with more than %d scans, over the limit of %d (encoders write at most a few dozen)",
			MaxJPEGScans, MaxJPEGScans)}
	}
	return nil
}

// TooComplexReason returns the text of the ErrTooComplex refusal in err's chain (a sentence for the
// client, without what wraps it), and whether there is one.
func TooComplexReason(err error) (string, bool) {
	var ie *imageError
	for e := err; errors.As(e, &ie); e = errors.Unwrap(ie) {
		if ie.kind == ErrTooComplex {
			return ie.msg, true
		}
	}
	return "", false
}
