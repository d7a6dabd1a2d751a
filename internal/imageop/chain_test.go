package imageop

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestParseChainValid(t *testing.T) {
	sixteen := strings.Repeat("invert,", 15) + "invert"
	for _, tc := range []struct{ spec, canonical string }{
		{"", "swap"},
		{"  \t ", "swap"},
		{"swap", "swap"},
		{" SWAP ", "swap"},
		{"swap,swap", "swap,swap"},
		{"resize:800x600,grayscale,sharpen:1.5", "resize:800x600,grayscale,sharpen:1.5"},
		{" Resize : 800X600 : FILL , Gray ", "resize:800x600:fill,grayscale"},
		{"resize:800x600:fit", "resize:800x600"},
		{"resize:800x600:exact", "resize:800x600:exact"},
		{"resize:800x", "resize:800x"},
		{"resize:x600", "resize:x600"},
		{"resize:0800x0600", "resize:800x600"},
		{"resize:16384x1", "resize:16384x1"},
		{"thumbnail:128", "thumbnail:128"},
		{"thumbnail:128x128", "thumbnail:128"},
		{"thumbnail:128x96", "thumbnail:128x96"},
		{"crop:100x80+10+20", "crop:100x80+10+20"},
		{"crop:100x80", "crop:100x80"},
		{"crop:100x80+0+0", "crop:100x80+0+0"},
		{"rotate:90", "rotate:90"},
		{"rotate:180,rotate:270", "rotate:180,rotate:270"},
		{"flip:h", "flip:h"},
		{"flip:horizontal,flip:vertical", "flip:h,flip:v"},
		{"fliph,FlipV", "flip:h,flip:v"},
		{"blur", "blur"},
		{"blur:1", "blur"},
		{"blur:1.0", "blur"},
		{"blur:2.50", "blur:2.5"},
		{"blur:.5", "blur:0.5"},
		{"blur:100", "blur:100"},
		{"blur:0.1", "blur:0.1"},
		{"sharpen", "sharpen"},
		{"sharpen:1:1", "sharpen"},
		{"sharpen:2", "sharpen:2"},
		{"sharpen:1:2", "sharpen:1:2"},
		{"sharpen:0.5:0.25", "sharpen:0.5:0.25"},
		{"brightness:-20", "brightness:-20"},
		{"brightness:+20", "brightness:20"},
		{"brightness:-0", "brightness:0"},
		{"brightness:-100,brightness:100", "brightness:-100,brightness:100"},
		{"contrast:30", "contrast:30"},
		{"contrast:-12.25", "contrast:-12.25"},
		{"gamma:2.2", "gamma:2.2"},
		{"gamma:0.1,gamma:10", "gamma:0.1,gamma:10"},
		{"grey,greyscale,grayscale", "grayscale,grayscale,grayscale"},
		{"negate", "invert"},
		{"convert:jpeg:85", "convert:jpeg:85"},
		{"convert:jpg", "convert:jpeg"},
		{"convert:JPG:100", "convert:jpeg:100"},
		{"convert:png", "convert:png"},
		{"convert:jpeg,grayscale", "grayscale,convert:jpeg"},
		{"swap,convert:png", "swap,convert:png"},
		{sixteen, sixteen},
		{sixteen[:len(sixteen)-len("invert")] + "convert:png", strings.Repeat("invert,", 15) + "convert:png"},
	} {
		c, err := ParseChain(tc.spec)
		if err != nil {
			t.Errorf("ParseChain(%q): %v", tc.spec, err)
			continue
		}
		if got := c.String(); got != tc.canonical {
			t.Errorf("ParseChain(%q).String() = %q, want %q", tc.spec, got, tc.canonical)
		}
		if c.IsDefault() != (tc.canonical == "swap") {
			t.Errorf("ParseChain(%q).IsDefault() = %v", tc.spec, c.IsDefault())
		}
		again, err := ParseChain(c.String())
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Errorf("ParseChain(%q) = %+v, %v; want the chain it came from, %+v", c.String(), again, err, c)
		}
	}
}

func TestParseChainErrors(t *testing.T) {
	known := "swap, grayscale, invert, brightness, contrast, gamma, blur, sharpen, resize, thumbnail, crop, rotate, flip, convert"
	for _, tc := range []struct{ spec, msg string }{
		{strings.Repeat("invert,", 16) + "invert", "too many operations: 17, at most 16"},
		{strings.Repeat(" ", 1025), "operation list too long: 1025 bytes, at most 1024"},
		{"swap,,invert", `empty operation at position 2 of "swap,,invert" (two commas in a row, or one at an end)`},
		{"swap,", `empty operation at position 2 of "swap," (two commas in a row, or one at an end)`},
		{",swap", `empty operation at position 1 of ",swap" (two commas in a row, or one at an end)`},
		{"blurr", `unknown operation "blurr" (did you mean "blur"?); known: ` + known},
		{"Sharpne:2", `unknown operation "sharpne" (did you mean "sharpen"?); known: ` + known},
		{"flop", `unknown operation "flop" (did you mean "flip"?); known: ` + known},
		{"frobnicate", `unknown operation "frobnicate"; known: ` + known},
		{"résize:1x1", `unknown operation "résize" (did you mean "resize"?); known: ` + known},
		{"resize:800y600", `resize: "800y600" is not WxH (e.g. 800x600, 800x or x600)`},
		{"resize:x", `resize: "x" is not WxH (e.g. 800x600, 800x or x600)`},
		{"resize:800x:fill", `resize: "800x" is not WxH (e.g. 800x600)`},
		{"resize:x600:exact", `resize: "x600" is not WxH (e.g. 800x600)`},
		{"resize", `resize: missing parameter in "resize" (syntax resize:WxH[:fit|fill|exact], e.g. resize:800x600)`},
		{"resize:800x600:fill:1", `resize: too many parameters in "resize:800x600:fill:1" (syntax resize:WxH[:fit|fill|exact])`},
		{"resize:0x600", "resize: width 0 is out of range 1..16384"},
		{"resize:20000x10", "resize: width 20000 is out of range 1..16384"},
		{"resize:10x16385", "resize: height 16385 is out of range 1..16384"},
		{"resize:8.5x600", `resize: width "8.5" is not a whole number`},
		{"resize:-8x600", "resize: width -8 is out of range 1..16384"},
		{"resize:+8x600", `resize: width "+8" is not a whole number`},
		{"resize:800x600:stretch", `resize: mode "stretch" is not one of fit, fill, exact`},
		{"thumbnail:0", "thumbnail: size 0 is out of range 1..16384"},
		{"thumbnail:big", `thumbnail: size "big" is not a whole number`},
		{"thumbnail", `thumbnail: missing parameter in "thumbnail" (syntax thumbnail:N | thumbnail:WxH, e.g. thumbnail:128)`},
		{"thumbnail:10x", `thumbnail: "10x" is not WxH (e.g. 800x600)`},
		{"crop:100x80+10", `crop: "100x80+10" is not WxH or WxH+X+Y (e.g. 100x80+10+20; commas separate operations)`},
		{"crop:100x80+-1+0", "crop: x offset -1 is out of range 0..1048576"},
		{"crop:100x80+1+y", `crop: y offset "y" is not a whole number`},
		{"crop:0x80", "crop: width 0 is out of range 1..1048576"},
		{"crop:10,20,30,40", `crop: "10" is not WxH or WxH+X+Y (e.g. 100x80+10+20; commas separate operations)`},
		{"crop:x80", `crop: "x80" is not WxH (e.g. 800x600)`},
		{"rotate:45", `rotate: angle "45" is not one of 90, 180, 270 (degrees clockwise)`},
		{"rotate:-90", `rotate: angle "-90" is not one of 90, 180, 270 (degrees clockwise)`},
		{"rotate", `rotate: missing parameter in "rotate" (syntax rotate:DEGREES, e.g. rotate:90)`},
		{"flip:x", `flip: direction "x" is not one of h, v`},
		{"flip", `flip: missing parameter in "flip" (syntax flip:h|v, e.g. flip:h)`},
		{"fliph:v", `flip: too many parameters in "fliph:v" (syntax flip:h|v)`},
		{"blur:0", "blur: sigma 0 is out of range 0.1..100"},
		{"blur:100.5", "blur: sigma 100.5 is out of range 0.1..100"},
		{"blur:abc", `blur: sigma "abc" is not a number`},
		{"blur:", `blur: sigma "" is not a number`},
		{"blur:1e3", `blur: sigma "1e3" is not a number`},
		{"blur:0x10", `blur: sigma "0x10" is not a number`},
		{"blur:nan", `blur: sigma "nan" is not a number`},
		{"blur:inf", `blur: sigma "inf" is not a number`},
		{"blur:1.2.3", `blur: sigma "1.2.3" is not a number`},
		{"blur:-", `blur: sigma "-" is not a number`},
		{"blur:1:2", `blur: too many parameters in "blur:1:2" (syntax blur[:SIGMA])`},
		{"sharpen:1:20", "sharpen: amount 20 is out of range 0.1..10"},
		{"sharpen:11", "sharpen: sigma 11 is out of range 0.1..10"},
		{"gamma:0", "gamma: gamma 0 is out of range 0.1..10"},
		{"brightness", `brightness: missing parameter in "brightness" (syntax brightness:PERCENT, e.g. brightness:-20)`},
		{"brightness:101", "brightness: percent 101 is out of range -100..100"},
		{"contrast:-100.5", "contrast: percent -100.5 is out of range -100..100"},
		{"grayscale:5", `grayscale takes no parameters, got "grayscale:5"`},
		{"swap:1", `swap takes no parameters, got "swap:1"`},
		{"convert", `convert: missing format in "convert" (syntax convert:png or convert:jpeg[:QUALITY])`},
		{"convert:gif", `convert: output format "gif" is not one of png, jpeg`},
		{"convert:jpeg:0", "convert: quality 0 is out of range 1..100"},
		{"convert:jpeg:101", "convert: quality 101 is out of range 1..100"},
		{"convert:jpeg:high", `convert: quality "high" is not a whole number`},
		{"convert:jpeg:80:1", `convert: too many parameters in "convert:jpeg:80:1" (syntax convert:jpeg[:QUALITY])`},
		{"convert:png:50", `convert: png takes no quality, got "convert:png:50"`},
		{"convert:png,invert,convert:jpeg", `convert given twice ("convert:png" and "convert:jpeg"): the output has one format`},
		{"conver:png", `unknown operation "conver" (did you mean "convert"?); known: ` + known},
	} {
		c, err := ParseChain(tc.spec)
		if err == nil {
			t.Errorf("ParseChain(%q) = %q, want error %q", tc.spec, c, tc.msg)
			continue
		}
		if !errors.Is(err, ErrBadOp) || errors.Is(err, ErrDecode) || errors.Is(err, ErrTooLarge) {
			t.Errorf("ParseChain(%q): %v does not wrap ErrBadOp alone", tc.spec, err)
		}
		if err.Error() != tc.msg {
			t.Errorf("ParseChain(%q):\n got %s\nwant %s", tc.spec, err, tc.msg)
		}
	}
}

func TestChainText(t *testing.T) {
	var v struct {
		Op Chain `json:"op"`
	}
	if err := json.Unmarshal([]byte(`{"op":"Resize:10x10 , gray"}`), &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil || string(b) != `{"op":"resize:10x10,grayscale"}` {
		t.Fatalf("round trip through JSON: %s, %v", b, err)
	}
	if err := json.Unmarshal([]byte(`{"op":"blurr"}`), &v); !errors.Is(err, ErrBadOp) {
		t.Fatalf("bad spec in JSON: %v", err)
	}
	if (Chain{}).String() != "swap" || !(Chain{}).IsDefault() {
		t.Fatal("the zero Chain is not the default")
	}
}

func TestOutputFormat(t *testing.T) {
	for _, tc := range []struct{ spec, in, out string }{
		{"", "png", "png"}, {"", "jpeg", "jpeg"}, {"", "gif", "png"}, {"", "webp", "png"}, {"", "bmp", "png"}, {"", "tiff", "png"},
		{"convert:jpeg", "png", "jpeg"}, {"convert:png", "jpeg", "png"}, {"grayscale", "jpeg", "jpeg"}, {"convert:jpeg:50", "gif", "jpeg"},
	} {
		c, _ := ParseChain(tc.spec)
		if got := c.OutputFormat(tc.in); got != tc.out {
			t.Errorf("%q of %s: %s, want %s", tc.spec, tc.in, got, tc.out)
		}
	}
}

func TestOperationsCatalogue(t *testing.T) {
	ops := Operations()
	var names []string
	kinds := map[opKind]bool{}
	for _, info := range ops {
		if info.Name == "" || info.Summary == "" || info.Description == "" || info.Syntax == "" || info.Params == nil {
			t.Errorf("%+v: incomplete", info)
		}
		names = append(names, info.Name)
		// The example is valid and canonical.
		c, err := ParseChain(info.Example)
		if err != nil || c.String() != info.Example {
			t.Errorf("%s: example %q parses to %q, %v", info.Name, info.Example, c, err)
		}
		if steps := c.steps(); len(steps) == 1 {
			kinds[steps[0].kind] = true
		}
		if info.Name == "swap" && !c.IsDefault() {
			t.Errorf("swap's example is not the default chain")
		}
		for _, a := range info.Aliases {
			if _, ok := findSpec(a); !ok {
				t.Errorf("%s: alias %q unknown to the parser", info.Name, a)
			}
		}
		for _, p := range info.Params {
			if p.Type == "" || p.Description == "" || p.Required == (p.Default != "") && p.Type != "enum" {
				t.Errorf("%s: param %+v", info.Name, p)
			}
			if (p.Type == "number" || p.Type == "integer" || p.Type == "size" || p.Type == "geometry") && (p.Min == nil || p.Max == nil) {
				t.Errorf("%s: param %s has no range", info.Name, p.Name)
			}
			if p.Type == "enum" && len(p.Allowed) == 0 {
				t.Errorf("%s: param %s allows nothing", info.Name, p.Name)
			}
		}
	}
	if names[0] != "swap" || names[len(names)-1] != "convert" {
		t.Errorf("order: %v", names)
	}
	for k := opSwap; k <= opFlip; k++ {
		if !kinds[k] {
			t.Errorf("no catalogue example for operation kind %d (%s)", k, opName(k))
		}
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	if len(slices.Compact(sorted)) != len(names) {
		t.Errorf("duplicate names: %v", names)
	}
	b, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"name":"swap"`, `"params":[]`, `"min":0.1,"max":100,"default":"1","required":false`,
		`"allowed":["fit","fill","exact"]`, `"example":"resize:800x600"`, `"summary":"Gaussian blur"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("catalogue JSON lacks %s", want)
		}
	}
	// Each call builds a fresh catalogue: changing one does not change the next.
	ops[0].Name = "changed"
	ops[1].Aliases[0] = "changed"
	if again := Operations(); again[0].Name != "swap" || again[1].Aliases[0] == "changed" {
		t.Error("Operations returns shared state")
	}
}

func FuzzParseChain(f *testing.F) {
	for _, s := range []string{"", "swap", "resize:800x600:fill,grayscale,sharpen:1.5:2,convert:jpeg:85", "crop:10x10+1+2,rotate:90",
		"blur:.5,brightness:-0,fliph", "thumbnail:12x7", "convert:png,,", "resize:x9", "gamma:10.000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		c, err := ParseChain(spec)
		if err != nil {
			if !errors.Is(err, ErrBadOp) || err.Error() == "" {
				t.Fatalf("ParseChain(%q): %v", spec, err)
			}
			return
		}
		again, err := ParseChain(c.String())
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("ParseChain(%q).String() = %q parses to %+v, %v; want %+v", spec, c.String(), again, err, c)
		}
	})
}
