package imageop

import (
	"bytes"
	"encoding/binary"
)

// jpegOrientation returns the EXIF orientation (orientNormal..orientRotate270) of the JPEG whose
// first bytes are head, or orientNormal when it has none that can be read. Cameras store the pixels
// as the sensor saw them and record in the Exif APP1 segment how to turn them. The segment comes
// before the frame header, so the bytes ReadHeader read to find the size hold it.
func jpegOrientation(head []byte) int {
	if len(head) < 2 || head[0] != 0xff || head[1] != 0xd8 {
		return orientNormal
	}
	for i := 2; i+4 <= len(head); {
		if head[i] != 0xff {
			return orientNormal // not a marker: malformed, let the decoder say so
		}
		switch marker := head[i+1]; {
		case marker == 0xff: // fill byte before a marker
			i++
			continue
		case marker == 0x01 || marker >= 0xd0 && marker <= 0xd8: // markers without a length
			i += 2
			continue
		case marker == 0xda || marker == 0xd9: // start of scan, end of image: no metadata after
			return orientNormal
		}
		end := i + 2 + int(binary.BigEndian.Uint16(head[i+2:]))
		if end < i+4 || end > len(head) {
			return orientNormal
		}
		if head[i+1] == 0xe1 {
			if o, ok := exifOrientation(head[i+4 : end]); ok {
				return o
			}
		}
		i = end
	}
	return orientNormal
}

// exifOrientation reads the Orientation tag (0x0112) of IFD0 from an APP1 segment's payload; ok is
// false when the payload is not Exif (XMP also uses APP1) or has no valid orientation.
func exifOrientation(b []byte) (o int, ok bool) {
	t, found := bytes.CutPrefix(b, []byte("Exif\x00\x00"))
	if !found || len(t) < 8 {
		return 0, false
	}
	// What follows is a TIFF header: byte order, 42, and the offset of IFD0 from its own start.
	var bo binary.ByteOrder
	switch string(t[:4]) {
	case "II*\x00":
		bo = binary.LittleEndian
	case "MM\x00*":
		bo = binary.BigEndian
	default:
		return 0, false
	}
	off := uint64(bo.Uint32(t[4:8]))
	if off < 8 || off+2 > uint64(len(t)) {
		return 0, false
	}
	n := int(bo.Uint16(t[off:]))
	entries := t[off+2:]
	for k := 0; k < n && 12*k+12 <= len(entries); k++ {
		e := entries[12*k : 12*k+12]
		if bo.Uint16(e) != 0x0112 {
			continue
		}
		// One SHORT (type 3), stored in the first two bytes of the value field.
		if bo.Uint16(e[2:]) != 3 || bo.Uint32(e[4:]) != 1 {
			return 0, false
		}
		if v := int(bo.Uint16(e[8:])); v >= orientNormal && v <= orientRotate270 {
			return v, true
		}
		return 0, false
	}
	return 0, false
}
