package testimage

import (
	"bytes"
	"image/jpeg"
	"image/png"
	"testing"
)

// A scan bomb is a JPEG image/jpeg decodes, of the size asked, with the scans asked.
func TestJPEGScanBomb(t *testing.T) {
	for _, size := range [][2]int{{64, 64}, {1000, 999}, {8, 2000}} {
		b := JPEGScanBomb(size[0], size[1], 7)
		img, err := jpeg.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%dx%d: %v", size[0], size[1], err)
		}
		if got := img.Bounds().Size(); got.X != size[0] || got.Y != size[1] {
			t.Errorf("decoded %v, want %dx%d", got, size[0], size[1])
		}
		if n := bytes.Count(b, []byte{0xff, 0xda}); n != 7 {
			t.Errorf("%dx%d: %d start-of-scan markers, want 7", size[0], size[1], n)
		}
	}
}

// A 16-bit header says 16 bits, and its CRC still holds: image/png reads its size.
func TestPNGHeaderDepth(t *testing.T) {
	b := PNGHeaderDepth(300, 200, 16)
	if b[24] != 16 {
		t.Fatalf("bit depth byte %d, want 16", b[24])
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(b))
	if err != nil || cfg.Width != 300 || cfg.Height != 200 {
		t.Fatalf("DecodeConfig = %+v, %v; want 300x200", cfg, err)
	}
}
