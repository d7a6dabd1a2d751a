package imageop

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/imgmill/imgmill/internal/wire"
)

// ErrBadOp is wrapped by the errors of ParseChain, and by Apply's for an operation that cannot apply
// to the image at hand (a crop outside it). The error's text is a sentence for the client.
var ErrBadOp = errors.New("invalid operation")

// Limits of an operation chain.
const (
	MaxChainOps = 16            // operations in one chain
	MaxChainLen = wire.MaxOpLen // bytes of a spec
	MaxSide     = 16384         // largest width or height resize and thumbnail make
	maxCropSide = 1 << 20
)

// DefaultJPEGQuality is the JPEG quality used when neither the chain nor the Processor sets one.
const DefaultJPEGQuality = 85

type opKind uint8

const (
	opSwap opKind = iota + 1
	opGrayscale
	opInvert
	opBrightness
	opContrast
	opGamma
	opBlur
	opSharpen
	opResize
	opThumbnail
	opCrop
	opRotate
	opFlip
)

// Resize modes.
const (
	modeFit   = iota // fit inside W×H, keeping the aspect ratio
	modeFill         // cover W×H, keeping the aspect ratio, and crop the overflow evenly
	modeExact        // exactly W×H, stretching
)

// modeNames lists the resize modes' names, indexed by mode.
func modeNames() []string { return []string{modeFit: "fit", modeFill: "fill", modeExact: "exact"} }

// op is one parsed operation. It is comparable, so two chains compare element by element.
type op struct {
	kind opKind
	w, h int // resize, thumbnail: the box, 0 for an open side; crop: the size; rotate: w is the angle
	x, y int // crop: the offset from the top-left corner
	// centered: crop without an offset; flip: vertical rather than horizontal.
	centered, vertical bool
	mode               int     // resize
	f, g               float64 // brightness, contrast: percent; gamma; blur, sharpen: sigma; sharpen: g is the amount
}

// Chain is a parsed, validated list of operations, applied in order by Processor.Apply, and the
// output format. The zero Chain is the default: swap, in the input's format. A Chain's String is its
// canonical spec: ParseChain(c.String()) gives c back.
type Chain struct {
	ops     []op
	format  string // output: "" (the input's, see OutputFormat), "png" or "jpeg"
	quality int    // JPEG quality 1..100, 0 for the Processor's
}

// IsDefault reports whether c is the default chain: swap, in the input's format.
func (c Chain) IsDefault() bool { return len(c.ops) == 0 && c.format == "" }

// String returns c's canonical spec: primary names in lower case, numbers in their shortest form,
// optional parameters at their defaults left out, convert last. The default chain is "swap".
func (c Chain) String() string {
	if c.IsDefault() {
		return "swap"
	}
	parts := make([]string, 0, len(c.ops)+1)
	for _, o := range c.ops {
		parts = append(parts, o.String())
	}
	if c.format != "" {
		s := "convert:" + c.format
		if c.quality != 0 {
			s += ":" + strconv.Itoa(c.quality)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ",")
}

// MarshalText returns the canonical spec, so a Chain can sit in JSON as a string.
func (c Chain) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// UnmarshalText parses a spec with ParseChain.
func (c *Chain) UnmarshalText(b []byte) error {
	p, err := ParseChain(string(b))
	if err != nil {
		return err
	}
	*c = p
	return nil
}

// OutputFormat is the format Apply writes for an input of the given format: convert's, or else the
// input's own where it can be written (PNG, JPEG), PNG for the rest.
func (c Chain) OutputFormat(input string) string {
	switch {
	case c.format != "":
		return c.format
	case input == "jpeg":
		return "jpeg"
	}
	return "png"
}

// steps returns the operations to run: the default chain's is one swap.
func (c Chain) steps() []op {
	if c.IsDefault() {
		return []op{{kind: opSwap}}
	}
	return c.ops
}

func (o op) String() string {
	name := opName(o.kind)
	switch o.kind {
	case opBrightness, opContrast, opGamma:
		return name + ":" + num(o.f)
	case opBlur:
		if o.f == 1 {
			return name
		}
		return name + ":" + num(o.f)
	case opSharpen:
		switch {
		case o.g != 1:
			return name + ":" + num(o.f) + ":" + num(o.g)
		case o.f != 1:
			return name + ":" + num(o.f)
		}
		return name
	case opResize:
		s := name + ":" + sizeString(o.w, o.h)
		if o.mode != modeFit {
			s += ":" + modeNames()[o.mode]
		}
		return s
	case opThumbnail:
		if o.w == o.h {
			return name + ":" + strconv.Itoa(o.w)
		}
		return name + ":" + sizeString(o.w, o.h)
	case opCrop:
		s := name + ":" + sizeString(o.w, o.h)
		if !o.centered {
			s += fmt.Sprintf("+%d+%d", o.x, o.y)
		}
		return s
	case opRotate:
		return name + ":" + strconv.Itoa(o.w)
	case opFlip:
		if o.vertical {
			return name + ":v"
		}
		return name + ":h"
	}
	return name
}

func sizeString(w, h int) string {
	s := ""
	if w > 0 {
		s = strconv.Itoa(w)
	}
	s += "x"
	if h > 0 {
		s += strconv.Itoa(h)
	}
	return s
}

// num formats a parameter in the shortest form that parses back to the same value.
func num(f float64) string {
	if f == 0 {
		f = 0 // no "-0"
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// ParseChain parses an operation spec: operations separated by commas, applied in order, each a
// name or name:param[:param...], names case-insensitive, whitespace around items and parameters
// ignored. "" is the default chain (swap). Operations() lists the names and their parameters. At
// most one convert is allowed; it sets the output format wherever it stands.
//
// Errors wrap ErrBadOp, and their text names the offending item and what is allowed, for the client.
func ParseChain(spec string) (Chain, error) {
	if len(spec) > MaxChainLen {
		return Chain{}, badOp("operation list too long: %d bytes, at most %d", len(spec), MaxChainLen)
	}
	if strings.TrimSpace(spec) == "" {
		return Chain{}, nil
	}
	items := strings.Split(spec, ",")
	if len(items) > MaxChainOps {
		return Chain{}, badOp("too many operations: %d, at most %d", len(items), MaxChainOps)
	}
	var c Chain
	convert := ""
	for i, item := range items {
		item = strings.TrimSpace(item)
		if item == "" {
			return Chain{}, badOp("empty operation at position %d of %q (two commas in a row, or one at an end)", i+1, spec)
		}
		fields := strings.Split(item, ":")
		for j := range fields {
			fields[j] = strings.ToLower(strings.TrimSpace(fields[j]))
		}
		name, args := fields[0], fields[1:]
		if name == "convert" {
			if convert != "" {
				return Chain{}, badOp("convert given twice (%q and %q): the output has one format", convert, item)
			}
			convert = item
			var err error
			if c.format, c.quality, err = parseConvert(item, args); err != nil {
				return Chain{}, err
			}
			continue
		}
		s, ok := findSpec(name)
		if !ok {
			return Chain{}, unknownOp(fields[0])
		}
		args = append(s.implied[:len(s.implied):len(s.implied)], args...)
		o, err := s.parse(item, args)
		if err != nil {
			return Chain{}, err
		}
		c.ops = append(c.ops, o)
	}
	if len(c.ops) == 1 && c.ops[0].kind == opSwap && c.format == "" {
		return Chain{}, nil // "swap" is the default chain
	}
	return c, nil
}

func badOp(format string, args ...any) error {
	return &imageError{kind: ErrBadOp, msg: fmt.Sprintf(format, args...)}
}

func unknownOp(name string) error {
	names := make([]string, 0, 16)
	best, bestDist := "", 3 // suggest only names within two edits
	for _, s := range opSpecs() {
		names = append(names, s.info.Name)
		for _, n := range append([]string{s.info.Name}, s.info.Aliases...) {
			if d := editDistance(name, n); d < bestDist {
				best, bestDist = n, d
			}
		}
	}
	names = append(names, "convert")
	if best == "" && editDistance(name, "convert") < 3 {
		best = "convert"
	}
	hint := ""
	if best != "" {
		hint = fmt.Sprintf(" (did you mean %q?)", best)
	}
	return badOp("unknown operation %q%s; known: %s", name, hint, strings.Join(names, ", "))
}

// editDistance is the Levenshtein distance between short ASCII strings.
func editDistance(a, b string) int {
	if len(a) > 32 || len(b) > 32 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func parseConvert(item string, args []string) (format string, quality int, err error) {
	if len(args) == 0 {
		return "", 0, badOp("convert: missing format in %q (syntax convert:png or convert:jpeg[:QUALITY])", item)
	}
	switch args[0] {
	case "png":
		if len(args) > 1 {
			return "", 0, badOp("convert: png takes no quality, got %q", item)
		}
		return "png", 0, nil
	case "jpeg", "jpg":
		switch len(args) {
		case 1:
			return "jpeg", 0, nil
		case 2:
			q, err := parseInt("convert", "quality", args[1], 1, 100)
			return "jpeg", q, err
		}
		return "", 0, badOp("convert: too many parameters in %q (syntax convert:jpeg[:QUALITY])", item)
	}
	return "", 0, badOp("convert: output format %q is not one of png, jpeg", args[0])
}

// parseNumber parses a plain decimal number in lo..hi: an optional sign, digits and at most one
// point (no exponent, hex, underscores, infinities or NaN, which strconv would take).
func parseNumber(opName, what, s string, lo, hi float64) (float64, error) {
	body := strings.TrimLeft(s, "+-")
	digits := strings.Trim(body, "0123456789")
	ok := len(s)-len(body) <= 1 && (digits == "" || digits == ".") && strings.Count(body, ".") <= 1 && body != "" && body != "."
	v, err := strconv.ParseFloat(s, 64)
	if !ok || err != nil {
		return 0, badOp("%s: %s %q is not a number", opName, what, s)
	}
	if v < lo || v > hi {
		return 0, badOp("%s: %s %s is out of range %s..%s", opName, what, s, num(lo), num(hi))
	}
	return v, nil
}

// parseInt parses a decimal integer in lo..hi.
func parseInt(opName, what, s string, lo, hi int) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil || s == "" || strings.ContainsAny(s, "+_") {
		return 0, badOp("%s: %s %q is not a whole number", opName, what, s)
	}
	if v < lo || v > hi {
		return 0, badOp("%s: %s %d is out of range %d..%d", opName, what, v, lo, hi)
	}
	return v, nil
}

// parseSize parses WxH, or with open set also Wx and xH (the other side left open, 0).
func parseSize(opName, s string, lo, hi int, open bool) (w, h int, err error) {
	ws, hs, ok := strings.Cut(s, "x")
	if !ok || ws == "" && hs == "" || !open && (ws == "" || hs == "") {
		eg := "e.g. 800x600"
		if open {
			eg += ", 800x or x600"
		}
		return 0, 0, badOp("%s: %q is not WxH (%s)", opName, s, eg)
	}
	if ws != "" {
		if w, err = parseInt(opName, "width", ws, lo, hi); err != nil {
			return 0, 0, err
		}
	}
	if hs != "" {
		if h, err = parseInt(opName, "height", hs, lo, hi); err != nil {
			return 0, 0, err
		}
	}
	return w, h, nil
}

// arity checks that an operation got between lo and hi parameters.
func arity(s *opSpec, item string, args []string, lo, hi int) error {
	switch {
	case len(args) < lo:
		return badOp("%s: missing parameter in %q (syntax %s, e.g. %s)", s.info.Name, item, s.info.Syntax, s.info.Example)
	case len(args) > hi && hi == 0:
		return badOp("%s takes no parameters, got %q", s.info.Name, item)
	case len(args) > hi:
		return badOp("%s: too many parameters in %q (syntax %s)", s.info.Name, item, s.info.Syntax)
	}
	return nil
}

func findSpec(name string) (*opSpec, bool) {
	for _, s := range opSpecs() {
		if s.info.Name == name {
			return s, true
		}
		for _, a := range s.info.Aliases {
			if a == name {
				s.implied = s.aliasArgs[a]
				return s, true
			}
		}
	}
	return nil, false
}

func opName(k opKind) string {
	for _, s := range opSpecs() {
		if s.kind == k {
			return s.info.Name
		}
	}
	return "?"
}
