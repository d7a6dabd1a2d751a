package servicetest

import (
	"image"
	"testing"

	"github.com/imgmill/imgmill/internal/testimage"
)

// EncodePNG encodes img as PNG.
func EncodePNG(t testing.TB, img image.Image) []byte {
	t.Helper()
	b, err := testimage.EncodePNG(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// PatternPNG is testimage.Pattern(size, seed) encoded as PNG.
func PatternPNG(t testing.TB, size int, seed int64) []byte {
	t.Helper()
	return EncodePNG(t, testimage.Pattern(size, seed))
}

// PaddedPNG is testimage.PaddedPNG(width, height, size): size bytes that the master accepts as a
// width×height PNG (its header is valid), but that do not decode.
func PaddedPNG(width, height, size int) []byte { return testimage.PaddedPNG(width, height, size) }
