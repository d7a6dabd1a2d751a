package imageop

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzCheckStructure feeds arbitrary bytes, read in chunks of a fuzzed size, through a StructureReader
// of each format and checks that it never panics, passes on an unchanged prefix of its input (all of
// it unless it refuses), and refuses exactly where a whole-buffer walk of the same markers
// (jpegRefusalRef) says the budget is exceeded.
func FuzzCheckStructure(f *testing.F) {
	files, err := filepath.Glob("testdata/in/*")
	if err != nil || len(files) == 0 {
		f.Fatalf("no fixtures: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(0), uint8(len(b)%251))
	}
	f.Add(jpegScanBomb(64, 64, MaxJPEGScans), uint8(1), uint8(1))
	f.Add(jpegScanBomb(64, 64, MaxJPEGScans+1), uint8(1), uint8(13))
	f.Add(jpegScanBomb(7000, 7000, 150), uint8(1), uint8(0))
	baseline := mustJPEG(f, opaquePattern(), 80)
	f.Add(baseline, uint8(1), uint8(3))
	sos := bytes.Index(baseline, []byte{0xFF, 0xDA})
	f.Add(append(append([]byte(nil), baseline[:len(baseline)-2]...), baseline[sos:]...), uint8(1), uint8(2))

	formats := Formats()
	f.Fuzz(func(t *testing.T, img []byte, formatSel, chunk uint8) {
		format := formats[int(formatSel)%len(formats)]
		got, err := readChecked(format, img, int(chunk))
		if !bytes.Equal(got, img[:min(len(got), len(img))]) || len(got) > len(img) {
			t.Fatalf("passed on %d bytes that are not a prefix of the %d read", len(got), len(img))
		}
		if err != nil && !errors.Is(err, ErrTooComplex) {
			t.Fatalf("error %v, want none or ErrTooComplex", err)
		}
		want := -1
		if format == "jpeg" {
			want = jpegRefusalRef(img)
		}
		switch {
		case want < 0 && err != nil:
			t.Fatalf("refused (%v) after %d bytes; the reference walk finds the image within budget", err, len(got))
		case want < 0 && len(got) != len(img):
			t.Fatalf("passed on %d of %d bytes without an error", len(got), len(img))
		case want >= 0 && err == nil:
			t.Fatalf("accepted; the reference walk refuses at byte %d", want)
		case want >= 0 && len(got) != want && len(got) != want+1:
			// want+1 when the marker's 0xFF came in an earlier read than its code.
			t.Fatalf("refused after %d bytes; the reference walk refuses at byte %d", len(got), want)
		}
	})
}

// jpegRefusalRef walks a whole JPEG in memory as image/jpeg reads its markers and returns the offset of
// the 0xFF of the scan marker that puts it over budget, or -1: the fuzz test's independent oracle.
func jpegRefusalRef(b []byte) int {
	if len(b) < 2 || b[0] != 0xFF || b[1] != 0xD8 {
		return -1
	}
	scans, components, sequential := 0, 0, false
	i := 2
	for {
		// Skip to the next marker: 0xFF, then fill, then a code that is not stuffing or RSTn.
		for i < len(b) && b[i] != 0xFF {
			i++
		}
		at := i
		for i < len(b) && b[i] == 0xFF {
			i++
		}
		if i >= len(b) {
			return -1
		}
		code := b[i]
		i++
		switch {
		case code == 0x00 || 0xD0 <= code && code <= 0xD7:
			continue
		case code == 0xD9:
			return -1
		}
		if code == 0xDA {
			scans++
			if sequential && components > 0 && scans > components || scans > MaxJPEGScans {
				// The 0xFF right before the code: fill bytes before it were passed on.
				return max(at, i-2)
			}
		}
		if i+2 > len(b) {
			return -1
		}
		n := int(b[i])<<8 | int(b[i+1])
		if n < 2 {
			return -1
		}
		if code == 0xC0 || code == 0xC1 || code == 0xC2 {
			sequential = code != 0xC2
			if i+2+5 < len(b) && n > 7 {
				components = int(b[i+2+5])
			} else if n > 7 {
				return -1 // the count is past the end: nothing more to refuse
			}
		}
		i += n
	}
}

func TestStructureReaderMemory(t *testing.T) {
	// The walker keeps a few bytes of state: reading a JPEG through it allocates nothing per read,
	// however long the image.
	img := jpegScanBomb(2000, 2000, MaxJPEGScans)
	buf := make([]byte, 512)
	allocs := testing.AllocsPerRun(5, func() {
		r := CheckStructure("jpeg", bytes.NewReader(img))
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
	})
	if allocs > 3 { // the reader, its walker and the bytes.Reader
		t.Errorf("reading %d bytes through the checker allocated %v times, want at most 3", len(img), allocs)
	}
}
