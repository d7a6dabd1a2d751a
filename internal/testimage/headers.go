package testimage

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
)

// PNGHeaderLen is the length of a PNG's signature and IHDR chunk.
const PNGHeaderLen = 33

// PNGHeader returns the first 33 bytes of an 8-bit RGBA, non-interlaced PNG of width×height pixels: the
// signature and the IHDR chunk, with its CRC. Whatever follows, a reader of image headers takes the
// image's size from it, so a few bytes can claim to be an image of any size (up to 2³¹-1 pixels a side).
func PNGHeader(width, height int) []byte { return PNGHeaderDepth(width, height, 8) }

// PNGHeaderDepth is PNGHeader for an RGBA PNG of depth bits per channel, 8 or 16.
func PNGHeaderDepth(width, height, depth int) []byte {
	b := make([]byte, 0, PNGHeaderLen)
	b = append(b, "\x89PNG\r\n\x1a\n"...)
	b = binary.BigEndian.AppendUint32(b, 13) // IHDR data length
	chunk := len(b)
	b = append(b, "IHDR"...)
	b = binary.BigEndian.AppendUint32(b, uint32(width))
	b = binary.BigEndian.AppendUint32(b, uint32(height))
	b = append(b, byte(depth), 6, 0, 0, 0) // bit depth, colour type RGBA, deflate, adaptive filtering, no interlace
	return binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b[chunk:]))
}

// PaddedPNG returns size bytes (at least 33) that start with PNGHeader(width, height) and go on with
// deterministic filler: an upload that passes every header check at exactly the size wanted, but does
// not decode.
func PaddedPNG(width, height, size int) []byte {
	b := PNGHeader(width, height)
	rng := rand.New(rand.NewPCG(uint64(size), 0x706e67)) // "png"
	for len(b) < size {
		b = append(b, byte(rng.Uint32()))
	}
	return b[:max(size, PNGHeaderLen)]
}

// InsertJPEGMetadata returns a copy of the JPEG jpg with APP1 segments (the Exif marker) holding n
// bytes of filler in all inserted right after its start-of-image marker, so the frame header that
// says the image's size comes after at least n more bytes. A segment holds at most 65533 bytes, so
// large n makes several.
func InsertJPEGMetadata(jpg []byte, n int) []byte {
	out := append([]byte{}, jpg[:2]...) // SOI
	for n > 0 {
		k := min(n, 65533)
		out = append(out, 0xff, 0xe1)
		out = binary.BigEndian.AppendUint16(out, uint16(k+2))
		for i := range k {
			out = append(out, byte(i%251))
		}
		n -= k
	}
	return append(out, jpg[2:]...)
}
