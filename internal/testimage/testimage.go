// Package testimage makes the images that tests and benchmarks feed the pipeline (and that imgmill
// bench uploads): deterministic, photo-like, with every kind of alpha; crafted headers that claim any
// size; and the check that a result is its original with red and green swapped. It imports nothing of
// imgmill, so that every package's tests can use it, imageop's and the image packages below it
// included.
package testimage

import (
	"image"
	"math/rand/v2"
)

// Pattern returns a deterministic size×size *image.NRGBA (Min at 0,0)
// generated from a PCG seeded with seed. Colours are smooth gradients plus
// mild noise, so it compresses roughly like a photo rather than like noise,
// and R, G and B differ almost everywhere so a missed swap shows. Alpha varies
// by horizontal band: opaque; a 0..255 ramp across the row; noisy mid values;
// and 8×8 blocks alternating fully transparent and opaque. Any size of at
// least 4 therefore has pixels with alpha 0, 255 and in between. A size <= 0
// yields an empty image.
func Pattern(size int, seed int64) *image.NRGBA {
	if size <= 0 {
		return image.NewNRGBA(image.Rectangle{})
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0x696d676d696c6c)) // "imgmill"
	m := image.NewNRGBA(image.Rect(0, 0, size, size))
	span := max(size-1, 1)
	for y := range size {
		fy := y * 255 / span
		band := 4 * y / size
		row := m.Pix[y*m.Stride : y*m.Stride+4*size]
		for x := range size {
			fx := x * 255 / span
			// One draw per pixel, split into 4-bit noise terms in [-7, 8].
			n := rng.Uint64()
			noise := func(k uint) int { return int(n>>(4*k)&15) - 7 }
			var a int
			switch band {
			case 0:
				a = 255
			case 1:
				a = fx // exact ramp: 0 at the left edge, 255 at the right
			case 2:
				a = 128 + 5*noise(3)
			default:
				if (x/8+y/8)%2 == 0 {
					a = 0
				} else {
					a = 255
				}
			}
			p := row[4*x : 4*x+4 : 4*x+4]
			p[0] = clamp8(fx + noise(0))
			p[1] = clamp8(fy + noise(1))
			p[2] = clamp8(255 - (fx+fy)/2 + noise(2))
			p[3] = uint8(a)
		}
	}
	return m
}

func clamp8(v int) uint8 {
	return uint8(min(max(v, 0), 255))
}
