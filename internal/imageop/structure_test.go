package imageop

import (
	"bytes"
	"errors"
	"fmt"
	"image/jpeg"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/imgmill/imgmill/internal/testimage"
)

// jpegScanBomb is testimage.JPEGScanBomb.
func jpegScanBomb(w, h, scans int) []byte { return testimage.JPEGScanBomb(w, h, scans) }

// readChecked reads all of img through a StructureReader with reads of at most chunk bytes (0: as
// the reader likes) and returns what came through and the error.
func readChecked(format string, img []byte, chunk int) ([]byte, error) {
	var src io.Reader = bytes.NewReader(img)
	if chunk > 0 {
		src = &chunkReader{r: src, n: chunk}
	}
	return io.ReadAll(CheckStructure(format, src))
}

// chunkReader reads at most n bytes at a time.
type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

func TestScanBombDecodes(t *testing.T) {
	// The bomb is a valid image: what refuses it is the budget, not the decoder.
	m, err := jpeg.Decode(bytes.NewReader(jpegScanBomb(40, 24, 3)))
	if err != nil {
		t.Fatalf("the test's bomb does not decode: %v", err)
	}
	if b := m.Bounds(); b.Dx() != 40 || b.Dy() != 24 {
		t.Fatalf("bomb decodes to %v, want 40x24", b)
	}
}

func TestCheckStructurePassesImages(t *testing.T) {
	// Every fixture, and a progressive JPEG at the limit, comes through byte for byte, whatever the
	// reads' sizes.
	inputs := map[string][]byte{
		"scans at the limit": jpegScanBomb(64, 64, MaxJPEGScans),
		"baseline jpeg":      mustJPEG(t, opaquePattern(), 90),
		"stuffed and restarts": append(append(jpegScanBomb(16, 16, 2)[:0:0],
			0xFF, 0xD8, 0xFF, 0xFF, 0xFE, 0, 4, 0xFF, 0xDA), // a comment holding an SOS marker's bytes
			jpegScanBomb(16, 16, 2)[2:]...),
	}
	files, err := filepath.Glob("testdata/in/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		inputs[filepath.Base(f)] = b
	}
	for name, img := range inputs {
		format, ok := Sniff(img)
		if !ok {
			t.Fatalf("%s: not sniffed", name)
		}
		for _, chunk := range []int{0, 1, 7} {
			got, err := readChecked(format, img, chunk)
			if err != nil || !bytes.Equal(got, img) {
				t.Errorf("%s read %d bytes at a time: %d of %d bytes, equal %v, err %v; want all, unchanged",
					name, chunk, len(got), len(img), bytes.Equal(got, img), err)
			}
		}
	}
}

func TestCheckStructureRefusesScanBomb(t *testing.T) {
	bomb := jpegScanBomb(7000, 7000, 1000)
	for _, chunk := range []int{0, 1, 5} {
		got, err := readChecked("jpeg", bomb, chunk)
		if !errors.Is(err, ErrTooComplex) {
			t.Fatalf("reads of %d: err %v, want ErrTooComplex", chunk, err)
		}
		want := "progressive JPEG with more than 100 scans, over the limit of 100 (encoders write at most a few dozen)"
		if err.Error() != want {
			t.Errorf("message %q, want %q", err, want)
		}
		// It stops at the 101st scan's marker, having passed on an unchanged prefix.
		at := nthIndex(bomb, []byte{0xFF, 0xDA}, MaxJPEGScans+1)
		if !bytes.Equal(got, bomb[:len(got)]) || len(got) > at+1 || len(got) < at {
			t.Errorf("reads of %d: passed %d bytes, want the %d before the 101st scan's marker, unchanged", chunk, len(got), at)
		}
	}
	// One over the limit is refused, the limit itself passes (TestCheckStructurePassesImages).
	if _, err := readChecked("jpeg", jpegScanBomb(64, 64, MaxJPEGScans+1), 0); !errors.Is(err, ErrTooComplex) {
		t.Errorf("%d scans: %v, want ErrTooComplex", MaxJPEGScans+1, err)
	}
	// The same bytes named another format are not checked.
	if got, err := readChecked("png", bomb, 0); err != nil || len(got) != len(bomb) {
		t.Errorf("as PNG: %d bytes, %v; want all, unchecked", len(got), err)
	}
}

// nthIndex is the offset of the nth (from 1) occurrence of sep in b, or -1.
func nthIndex(b, sep []byte, n int) int {
	off := 0
	for range n - 1 {
		i := bytes.Index(b[off:], sep)
		if i < 0 {
			return -1
		}
		off += i + len(sep)
	}
	if i := bytes.Index(b[off:], sep); i >= 0 {
		return off + i
	}
	return -1
}

func TestCheckStructureSequentialScans(t *testing.T) {
	// A baseline JPEG codes each component once; a scan more would make the decoder do it all again.
	img := mustJPEG(t, opaquePattern(), 90) // 3 components, one interleaved scan
	sos := bytes.Index(img, []byte{0xFF, 0xDA})
	eoi := bytes.LastIndex(img, []byte{0xFF, 0xD9})
	scan := img[sos:eoi]
	for extra, ok := range map[int]bool{2: true, 3: false} {
		b := append(append([]byte(nil), img[:eoi]...), bytes.Repeat(scan, extra)...)
		b = append(b, 0xFF, 0xD9)
		_, err := readChecked("jpeg", b, 0)
		if ok && err != nil || !ok && !errors.Is(err, ErrTooComplex) {
			t.Errorf("baseline JPEG of 3 components with %d scans: %v, want refused %v", 1+extra, err, !ok)
		}
		if !ok && err != nil && !strings.Contains(err.Error(), "more scans than its 3 components") {
			t.Errorf("message %q", err)
		}
	}
}

func TestCheckStructureLeavesBrokenInputToDecoder(t *testing.T) {
	bomb := jpegScanBomb(64, 64, 3)
	cases := map[string][]byte{
		"truncated":      bomb[:len(bomb)/2],
		"no SOI":         append([]byte{0xFF, 0xD9}, bomb...),
		"short length":   {0xFF, 0xD8, 0xFF, 0xE0, 0, 1, 0xFF, 0xDA, 0, 8},
		"empty":          {},
		"after EOI":      append(append([]byte(nil), bomb...), jpegScanBomb(8, 8, 2*MaxJPEGScans)...),
		"just a marker":  {0xFF},
		"garbage":        []byte(strings.Repeat("\xff\x00\xff", 50)),
		"length at end":  {0xFF, 0xD8, 0xFF, 0xC4, 0},
		"sof components": {0xFF, 0xD8, 0xFF, 0xC0, 0, 8, 8, 0, 1, 0, 1},
	}
	for name, b := range cases {
		got, err := readChecked("jpeg", b, 3)
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s: %d of %d bytes, err %v; want all of them, no error", name, len(got), len(b), err)
		}
	}
	// A read error of the source is passed on as it is, not taken for a refusal.
	boom := errors.New("boom")
	r := CheckStructure("jpeg", io.MultiReader(bytes.NewReader(bomb[:100]), iotest.ErrReader(boom)))
	if _, err := io.ReadAll(r); !errors.Is(err, boom) || r.Err() != nil {
		t.Errorf("source failing: %v (Err %v), want boom and no refusal", err, r.Err())
	}
}

func TestDecodeRefusesScanBomb(t *testing.T) {
	// The worker's decode refuses the bomb as undecodable input (a permanent failure), not as a
	// read error, before decoding more than the budget's scans.
	_, _, err := Decode(bytes.NewReader(jpegScanBomb(7000, 7000, 1000)), 0)
	if !errors.Is(err, ErrTooComplex) || !errors.Is(err, ErrDecode) {
		t.Fatalf("Decode(bomb) = %v, want ErrTooComplex and ErrDecode", err)
	}
	if want := "cannot decode image: progressive JPEG with more than 100 scans"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("message %q, want it to start %q", err, want)
	}
}

// BenchmarkJPEGScanBomb decodes 7000×7000 progressive JPEGs of empty AC scans with image/jpeg,
// unchecked: what a scan costs, at the budget and at ten times it.
func BenchmarkJPEGScanBomb(b *testing.B) {
	for _, scans := range []int{10, MaxJPEGScans, 1000} {
		bomb := jpegScanBomb(7000, 7000, scans)
		b.Run(strconv.Itoa(scans)+"scans", func(b *testing.B) {
			for b.Loop() {
				if _, err := jpeg.Decode(bytes.NewReader(bomb)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(bomb)), "file-bytes")
		})
	}
}

// BenchmarkCheckStructureJPEG is the checker's own cost, per byte of a JPEG passed through it.
func BenchmarkCheckStructureJPEG(b *testing.B) {
	img := jpegScanBomb(2000, 2000, MaxJPEGScans)
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := io.Copy(io.Discard, CheckStructure("jpeg", bytes.NewReader(img))); err != nil {
			b.Fatal(err)
		}
	}
}

func TestTooComplexReason(t *testing.T) {
	_, err := readChecked("jpeg", jpegScanBomb(64, 64, MaxJPEGScans+1), 0)
	wrapped := fmt.Errorf("store image: %w", fmt.Errorf("read the request body: %w", err))
	if got, ok := TooComplexReason(wrapped); !ok || got != err.Error() {
		t.Errorf("TooComplexReason(wrapped refusal) = %q, %v; want %q", got, ok, err)
	}
	for _, other := range []error{nil, io.EOF, &imageError{kind: ErrTooLarge, msg: "big"}} {
		if got, ok := TooComplexReason(fmt.Errorf("x: %w", other)); ok {
			t.Errorf("TooComplexReason(%v) = %q, true; want none", other, got)
		}
	}
}
