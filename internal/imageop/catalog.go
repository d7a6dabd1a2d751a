package imageop

import (
	"slices"
	"strings"

	"github.com/imgmill/imgmill/internal/wire"
)

// opSpec is an operation's description and parser; opSpecs builds them afresh on each call, so
// nothing here is shared mutable state.
type opSpec struct {
	kind      opKind
	info      wire.OperationInfo
	aliasArgs map[string][]string // parameters an alias implies: fliph is flip:h
	implied   []string            // set by findSpec for the alias found
	parse     func(item string, args []string) (op, error)
}

// Operations lists every operation ParseChain accepts, the default (swap) first and convert last.
func Operations() []wire.OperationInfo {
	specs := opSpecs()
	out := make([]wire.OperationInfo, 0, len(specs)+1)
	for _, s := range specs {
		out = append(out, s.info)
	}
	return append(out, convertInfo())
}

func rng(lo, hi float64) (*float64, *float64) { return &lo, &hi }

func numberParam(name, desc string, lo, hi float64, def string) wire.ParamInfo {
	p := wire.ParamInfo{Name: name, Type: "number", Description: desc, Default: def, Required: def == ""}
	p.Min, p.Max = rng(lo, hi)
	return p
}

func convertInfo() wire.OperationInfo {
	q := wire.ParamInfo{Name: "quality", Type: "integer", Description: "JPEG quality, higher is better and larger",
		Default: "85", Required: false}
	q.Min, q.Max = rng(1, 100)
	return wire.OperationInfo{
		Name:    "convert",
		Summary: "Choose the output format",
		Description: "Writes the result as PNG or JPEG (with a quality), wherever convert stands in the list. " +
			"Without it a JPEG stays JPEG and every other input becomes PNG. Transparent pixels are flattened onto white in a JPEG.",
		Syntax: "convert:png | convert:jpeg[:QUALITY]",
		Params: []wire.ParamInfo{
			{Name: "format", Type: "enum", Description: "output format (jpg is jpeg too)", Allowed: []string{"png", "jpeg"}, Required: true},
			q,
		},
		Example: "convert:jpeg:85",
	}
}

func opSpecs() []*opSpec {
	noParams := func(k opKind) func(string, []string) (op, error) {
		return func(item string, args []string) (op, error) {
			if len(args) > 0 {
				return op{}, badOp("%s takes no parameters, got %q", opName(k), item)
			}
			return op{kind: k}, nil
		}
	}
	specs := []*opSpec{
		{kind: opSwap, info: wire.OperationInfo{
			Name: "swap", Summary: "Swap the red and green channels",
			Description: "Swaps the red and green channels, keeping blue and alpha. The default when no operation is given.",
			Syntax:      "swap", Example: "swap",
		}, parse: noParams(opSwap)},
		{kind: opGrayscale, info: wire.OperationInfo{
			Name: "grayscale", Aliases: []string{"greyscale", "gray", "grey"}, Summary: "Convert to shades of grey",
			Description: "Replaces each colour by its luma (Rec. 601: 0.299 R + 0.587 G + 0.114 B), keeping alpha.",
			Syntax:      "grayscale", Example: "grayscale",
		}, parse: noParams(opGrayscale)},
		{kind: opInvert, info: wire.OperationInfo{
			Name: "invert", Aliases: []string{"negate"}, Summary: "Invert the colours (negative)",
			Description: "Replaces each channel value v by 255-v, keeping alpha.",
			Syntax:      "invert", Example: "invert",
		}, parse: noParams(opInvert)},
		{kind: opBrightness, info: wire.OperationInfo{
			Name: "brightness", Summary: "Lighten or darken",
			Description: "Adds PERCENT of full scale to every channel: -100 is black, 100 white.",
			Syntax:      "brightness:PERCENT", Example: "brightness:-20",
			Params: []wire.ParamInfo{numberParam("percent", "change in percent of full scale", -100, 100, "")},
		}},
		{kind: opContrast, info: wire.OperationInfo{
			Name: "contrast", Summary: "Raise or lower the contrast",
			Description: "Scales each channel's distance from mid-grey by 1+PERCENT/100: -100 is flat grey, 100 doubles the contrast.",
			Syntax:      "contrast:PERCENT", Example: "contrast:30",
			Params: []wire.ParamInfo{numberParam("percent", "change in percent", -100, 100, "")},
		}},
		{kind: opGamma, info: wire.OperationInfo{
			Name: "gamma", Summary: "Gamma correction",
			Description: "Maps each channel v (0..1) to v^(1/GAMMA): above 1 lightens the mid-tones, below 1 darkens them.",
			Syntax:      "gamma:GAMMA", Example: "gamma:2.2",
			Params: []wire.ParamInfo{numberParam("gamma", "gamma", 0.1, 10, "")},
		}},
		{kind: opBlur, info: wire.OperationInfo{
			Name: "blur", Summary: "Gaussian blur",
			Description: "Blurs with a Gaussian of standard deviation SIGMA pixels.",
			Syntax:      "blur[:SIGMA]", Example: "blur:2.5",
			Params: []wire.ParamInfo{numberParam("sigma", "standard deviation in pixels", 0.1, 100, "1")},
		}},
		{kind: opSharpen, info: wire.OperationInfo{
			Name: "sharpen", Summary: "Sharpen (unsharp mask)",
			Description: "Moves each colour away from its Gaussian blur (of SIGMA pixels) by AMOUNT times the difference.",
			Syntax:      "sharpen[:SIGMA[:AMOUNT]]", Example: "sharpen:1.5",
			Params: []wire.ParamInfo{
				numberParam("sigma", "radius of the blur compared against, in pixels", 0.1, 10, "1"),
				numberParam("amount", "strength", 0.1, 10, "1"),
			},
		}},
		{kind: opResize, info: wire.OperationInfo{
			Name: "resize", Summary: "Scale to a size",
			Description: "fit (the default) scales to fit inside WxH keeping the aspect ratio, one side may be left open (800x, x600); " +
				"fill scales to cover WxH and crops the overflow evenly; exact scales to WxH. Catmull-Rom resampling.",
			Syntax: "resize:WxH[:fit|fill|exact]", Example: "resize:800x600",
			Params: []wire.ParamInfo{
				sizeParam("size", "size", "the box in pixels", MaxSide),
				{Name: "mode", Type: "enum", Description: "how the image meets the box", Allowed: modeNames(), Default: "fit"},
			},
		}},
		{kind: opThumbnail, info: wire.OperationInfo{
			Name: "thumbnail", Summary: "Shrink to fit a box, fast",
			Description: "Shrinks to fit inside NxN (or WxH) keeping the aspect ratio, never enlarging; bilinear resampling, faster than resize.",
			Syntax:      "thumbnail:N | thumbnail:WxH", Example: "thumbnail:128",
			Params: []wire.ParamInfo{sizeParam("size", "size", "N for a square box, or WxH, in pixels", MaxSide)},
		}},
		{kind: opCrop, info: wire.OperationInfo{
			Name: "crop", Summary: "Cut out a rectangle",
			Description: "Keeps the WxH rectangle at X,Y from the top-left corner (clipped to the image), or the centred WxH rectangle when no offset is given.",
			Syntax:      "crop:WxH[+X+Y]", Example: "crop:100x80+10+20",
			Params: []wire.ParamInfo{sizeParam("rect", "geometry", "WxH, centred, or WxH+X+Y, in pixels", maxCropSide)},
		}},
		{kind: opRotate, info: wire.OperationInfo{
			Name: "rotate", Summary: "Rotate by quarter turns",
			Description: "Rotates clockwise by 90, 180 or 270 degrees.",
			Syntax:      "rotate:DEGREES", Example: "rotate:90",
			Params: []wire.ParamInfo{{Name: "degrees", Type: "enum", Description: "clockwise angle", Allowed: []string{"90", "180", "270"}, Required: true}},
		}},
		{kind: opFlip, info: wire.OperationInfo{
			Name: "flip", Aliases: []string{"fliph", "flipv"}, Summary: "Mirror",
			Description: "h mirrors left and right, v top and bottom; fliph and flipv are short for flip:h and flip:v.",
			Syntax:      "flip:h|v", Example: "flip:h",
			Params: []wire.ParamInfo{{Name: "direction", Type: "enum", Description: "h: horizontally, v: vertically", Allowed: []string{"h", "v"}, Required: true}},
		}, aliasArgs: map[string][]string{"fliph": {"h"}, "flipv": {"v"}}},
	}
	for _, s := range specs {
		if s.info.Params == nil {
			s.info.Params = []wire.ParamInfo{}
		}
		if s.parse == nil {
			s.parse = parserFor(s)
		}
	}
	return specs
}

func sizeParam(name, typ, desc string, hi float64) wire.ParamInfo {
	p := wire.ParamInfo{Name: name, Type: typ, Description: desc, Required: true}
	p.Min, p.Max = rng(1, hi)
	return p
}

// parserFor returns the parser of an operation with parameters.
func parserFor(s *opSpec) func(item string, args []string) (op, error) {
	name := s.info.Name
	return func(item string, args []string) (op, error) {
		o := op{kind: s.kind}
		var err error
		switch s.kind {
		case opBrightness, opContrast, opGamma:
			p := s.info.Params[0]
			if err = arity(s, item, args, 1, 1); err == nil {
				o.f, err = parseNumber(name, p.Name, args[0], *p.Min, *p.Max)
			}
		case opBlur, opSharpen:
			o.f, o.g = 1, 1
			if err = arity(s, item, args, 0, len(s.info.Params)); err != nil {
				break
			}
			for i, a := range args {
				p := s.info.Params[i]
				v, perr := parseNumber(name, p.Name, a, *p.Min, *p.Max)
				if perr != nil {
					return op{}, perr
				}
				if i == 0 {
					o.f = v
				} else {
					o.g = v
				}
			}
		case opResize:
			if err = arity(s, item, args, 1, 2); err != nil {
				break
			}
			if len(args) == 2 {
				if o.mode = slices.Index(modeNames(), args[1]); o.mode < 0 {
					return op{}, badOp("resize: mode %q is not one of fit, fill, exact", args[1])
				}
			}
			o.w, o.h, err = parseSize(name, args[0], 1, MaxSide, o.mode == modeFit)
		case opThumbnail:
			if err = arity(s, item, args, 1, 1); err != nil {
				break
			}
			if !strings.Contains(args[0], "x") {
				o.w, err = parseInt(name, "size", args[0], 1, MaxSide)
				o.h = o.w
				break
			}
			o.w, o.h, err = parseSize(name, args[0], 1, MaxSide, false)
		case opCrop:
			if err = arity(s, item, args, 1, 1); err != nil {
				break
			}
			o, err = parseCrop(args[0])
		case opRotate:
			if err = arity(s, item, args, 1, 1); err != nil {
				break
			}
			switch args[0] {
			case "90", "180", "270":
				o.w, _ = parseInt(name, "", args[0], 90, 270)
			default:
				err = badOp("rotate: angle %q is not one of 90, 180, 270 (degrees clockwise)", args[0])
			}
		case opFlip:
			if err = arity(s, item, args, 1, 1); err != nil {
				break
			}
			switch args[0] {
			case "h", "horizontal":
			case "v", "vertical":
				o.vertical = true
			default:
				err = badOp("flip: direction %q is not one of h, v", args[0])
			}
		}
		if err != nil {
			return op{}, err
		}
		return o, nil
	}
}

// parseCrop parses WxH (centred) or WxH+X+Y.
func parseCrop(s string) (op, error) {
	o := op{kind: opCrop, centered: true}
	size, offset, hasOffset := strings.Cut(s, "+")
	xs, ys, ok := strings.Cut(offset, "+")
	if !strings.Contains(size, "x") || hasOffset && !ok {
		return op{}, badOp("crop: %q is not WxH or WxH+X+Y (e.g. 100x80+10+20; commas separate operations)", s)
	}
	var err error
	if o.w, o.h, err = parseSize("crop", size, 1, maxCropSide, false); err != nil {
		return op{}, err
	}
	if !hasOffset {
		return o, nil
	}
	o.centered = false
	if o.x, err = parseInt("crop", "x offset", xs, 0, maxCropSide); err != nil {
		return op{}, err
	}
	if o.y, err = parseInt("crop", "y offset", ys, 0, maxCropSide); err != nil {
		return op{}, err
	}
	return o, nil
}
