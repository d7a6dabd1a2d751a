package pngenc

import "encoding/binary"

// PNG filter types; filterAdaptive means choosing one per row.
const (
	ftNone = iota
	ftSub
	ftUp
	ftAverage
	ftPaeth
	filterAdaptive
)

// The filters work on 8 bytes at a time in a uint64 (SWAR): Go does not
// vectorise, and a byte at a time the filter choice cost about as much as
// compressing.

// chooseFilter returns the filter type for the scanline cur, below prev, with
// bpp bytes per pixel, by the heuristic of libpng and image/png: the filter
// whose output has the least sum of absolute values (bytes taken as signed),
// ties going the way image/png's order goes (Up, Paeth, None, Sub, Average).
// The sums of None, Sub, Up and Average come from one pass, without writing
// the filtered bytes; then Paeth's, the costliest, stops as soon as it
// cannot win. Paeth's filtered bytes go to out (len(cur) bytes): if it
// returns ftPaeth, out holds the filtered row.
func chooseFilter(out, cur, prev []byte, bpp int) int {
	none, sub, up, avg := sums(cur, prev, bpp)
	// Paeth wins if it is below Up and not above the others.
	limit := min(up, none+1, sub+1, avg+1)
	best, ft := up, ftUp
	if pae := paethFilter(out, cur, prev, bpp, limit); pae < limit {
		best, ft = pae, ftPaeth
	}
	if none < best {
		best, ft = none, ftNone
	}
	if sub < best {
		best, ft = sub, ftSub
	}
	if avg < best {
		ft = ftAverage
	}
	return ft
}

// Masks for SWAR on bytes.
const (
	hiBits    = 0x80808080_80808080
	loBits    = 0x7f7f7f7f_7f7f7f7f
	evenBytes = 0x00ff00ff_00ff00ff
)

// subBytes returns x - y byte by byte, each modulo 256.
func subBytes(x, y uint64) uint64 { return ((x | hiBits) - (y & loBits)) ^ ((x ^ ^y) & hiBits) }

// avgBytes returns (x + y) / 2 byte by byte, rounded down.
func avgBytes(x, y uint64) uint64 { return x&y + (x^y)>>1&loBits }

// absBytes returns the absolute value of each byte of d taken as signed
// (0..128).
func absBytes(d uint64) uint64 {
	neg := d & hiBits >> 7
	return d ^ neg*0xff + neg
}

// widen adds the odd bytes of v to the even ones, in 16-bit lanes.
func widen(v uint64) uint64 { return v&evenBytes + v>>8&evenBytes }

// sum16 adds up the 16-bit lanes of v.
func sum16(v uint64) uint {
	w := v&0x0000ffff_0000ffff + v>>16&0x0000ffff_0000ffff
	return uint(w&0xffffffff + w>>32)
}

// sums returns the sums of absolute values of cur filtered with None, Sub,
// Up and Average.
func sums(cur, prev []byte, bpp int) (none, sub, up, avg uint) {
	n := len(cur)
	prev = prev[:n]
	bpp = min(bpp, n)
	for i, x := range cur[:bpp] { // the left neighbours are 0
		b := prev[i]
		none += abs8(x)
		sub += abs8(x)
		up += abs8(x - b)
		avg += abs8(x - b>>1)
	}
	j := bpp
	for j+8 <= n {
		// Each 16-bit lane gains at most 256 a step: add them up before they overflow.
		var sn, ss, su, sa uint64
		for end := min(n, j+8*255); j+8 <= end; j += 8 {
			x := binary.LittleEndian.Uint64(cur[j:])
			a := binary.LittleEndian.Uint64(cur[j-bpp:])
			b := binary.LittleEndian.Uint64(prev[j:])
			sn += widen(absBytes(x))
			ss += widen(absBytes(subBytes(x, a)))
			su += widen(absBytes(subBytes(x, b)))
			sa += widen(absBytes(subBytes(x, avgBytes(a, b))))
		}
		none, sub, up, avg = none+sum16(sn), sub+sum16(ss), up+sum16(su), avg+sum16(sa)
	}
	for ; j < n; j++ {
		x, a, b := cur[j], cur[j-bpp], prev[j]
		none += abs8(x)
		sub += abs8(x - a)
		up += abs8(x - b)
		avg += abs8(x - uint8((uint(a)+uint(b))>>1))
	}
	return none, sub, up, avg
}

// filterRow writes cur filtered with ft to out (len(cur) bytes).
func filterRow(out []byte, ft int, cur, prev []byte, bpp int) {
	n := len(cur)
	out, prev = out[:n], prev[:n]
	if ft == ftNone {
		copy(out, cur)
		return
	}
	if ft == ftPaeth {
		paethFilter(out, cur, prev, bpp, ^uint(0))
		return
	}
	bpp = min(bpp, n)
	for i := range bpp { // the left neighbours are 0
		switch ft {
		case ftSub:
			out[i] = cur[i]
		case ftUp:
			out[i] = cur[i] - prev[i]
		case ftAverage:
			out[i] = cur[i] - prev[i]>>1
		}
	}
	j := bpp
	for ; j+8 <= n; j += 8 {
		var p uint64 // the prediction
		switch ft {
		case ftSub:
			p = binary.LittleEndian.Uint64(cur[j-bpp:])
		case ftUp:
			p = binary.LittleEndian.Uint64(prev[j:])
		case ftAverage:
			p = avgBytes(binary.LittleEndian.Uint64(cur[j-bpp:]), binary.LittleEndian.Uint64(prev[j:]))
		}
		binary.LittleEndian.PutUint64(out[j:], subBytes(binary.LittleEndian.Uint64(cur[j:]), p))
	}
	for ; j < n; j++ {
		switch ft {
		case ftSub:
			out[j] = cur[j] - cur[j-bpp]
		case ftUp:
			out[j] = cur[j] - prev[j]
		case ftAverage:
			out[j] = cur[j] - uint8((uint(cur[j-bpp])+uint(prev[j]))>>1)
		}
	}
}

// paethFilter writes cur filtered with Paeth to out and returns the sum of
// the absolute values, but stops, returning a sum of at least limit, once it
// gets there.
func paethFilter(out, cur, prev []byte, bpp int, limit uint) uint {
	n := len(cur)
	out, prev = out[:n], prev[:n]
	bpp = min(bpp, n)
	var sum uint
	for i, x := range cur[:bpp] {
		out[i] = x - prev[i] // paeth(0, b, 0) is b
		sum += abs8(out[i])
	}
	const segment = 256 // bytes between checks against limit
	for j := bpp; j < n && sum < limit; j += segment {
		sum += paethSegment(out, cur, prev, bpp, j, min(j+segment, n))
	}
	return sum
}

// paethSegment writes cur[from:to] filtered with Paeth to out[from:to], for
// from >= bpp, and returns the sum of the absolute values, which must stay
// below 1<<16.
func paethSegment(out, cur, prev []byte, bpp, from, to int) uint {
	var acc uint64
	j := from
	for ; j+8 <= to; j += 8 {
		x := binary.LittleEndian.Uint64(cur[j:])
		a8 := binary.LittleEndian.Uint64(cur[j-bpp:])
		b8 := binary.LittleEndian.Uint64(prev[j:])
		c8 := binary.LittleEndian.Uint64(prev[j-bpp:])
		var pred uint64
		// The predictor in 16-bit lanes: the even bytes, then the odd ones.
		for k := uint(0); k < 16; k += 8 {
			a, b, c := a8>>k&evenBytes, b8>>k&evenBytes, c8>>k&evenBytes
			pa := absLanes(b + bias - c)         // |p - a| = |b - c|
			pb := absLanes(a + bias - c)         // |p - b| = |a - c|
			pc := absLanes(a + b + bias - c - c) // |p - c| = |a + b - 2c|
			m := geLanes(pc, pb)                 // b if pb <= pc, else c
			p, q := c^(b^c)&m, pc^(pb^pc)&m      // and its distance
			m = geLanes(q, pa)                   // a if no farther
			pred |= (p ^ (a^p)&m) << k
		}
		d := subBytes(x, pred)
		binary.LittleEndian.PutUint64(out[j:], d)
		acc += widen(absBytes(d))
	}
	sum := sum16(acc)
	for ; j < to; j++ {
		d := cur[j] - paeth(int(cur[j-bpp]), int(prev[j]), int(prev[j-bpp]))
		out[j] = d
		sum += abs8(d)
	}
	return sum
}

// bias is added to each 16-bit lane of a difference (within ±1023) so that
// lanes do not borrow from each other.
const bias = 0x0400_0400_0400_0400

// absLanes returns the absolute values of the differences in the 16-bit
// lanes of t, each biased. Flipping bit 10 takes the bias off and leaves the
// 11-bit two's complement difference, whose bit 10 is its sign.
func absLanes(t uint64) uint64 {
	u := t ^ bias
	neg := u >> 10 & 0x0001_0001_0001_0001
	return u ^ neg*0x7ff + neg
}

// geLanes returns 0xffff in the 16-bit lanes (each 0..0x7fff) where x >= y,
// 0 elsewhere: (x | 0x8000) - y keeps bit 15 exactly there.
func geLanes(x, y uint64) uint64 {
	const hi = 0x8000_8000_8000_8000
	return ((x | hi) - y) & hi >> 15 * 0xffff
}

// paeth is the Paeth predictor of the pixel with left neighbour a, upper b
// and upper left c (0..255 each), for the bytes paethSegment does not do 8 at
// a time.
func paeth(a, b, c int) uint8 {
	pa, pb := b-c, a-c // |p - a| and |p - b| with p = a + b - c, once made absolute
	pc := abs(pa + pb) // |p - c|
	pa, pb = abs(pa), abs(pb)
	if pb > pc { // b or c, whichever is nearer p, b on a tie; then a, if no farther
		b, pb = c, pc
	}
	if pa > pb {
		a = b
	}
	return uint8(a)
}

// abs8 is the absolute value of d taken as a signed byte.
func abs8(d uint8) uint {
	return min(uint(d), 256-uint(d))
}

func abs(x int) int { return max(x, -x) }
