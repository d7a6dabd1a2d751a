package testimage

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
)

// EncodePNG encodes img as PNG with image/png at its default compression, as a client's own encoder
// would (the inputs of tests and benchmarks).
func EncodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("testimage: encode PNG: %w", err)
	}
	return buf.Bytes(), nil
}
