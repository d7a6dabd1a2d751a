package imageop

// A stand-in for the cost estimate, so the worker's admission builds and runs before the real one
// lands: rough figures, conservative on memory (every image taken as 16-bit RGBA).

import (
	"context"
	"io"
	"time"
)

// Estimate is what running a chain on an image is expected to cost.
type Estimate struct {
	CPU    time.Duration // CPU time on one core of decode + every step + encode
	Memory int64         // peak bytes held at once
	Steps  []StepEstimate
}

// StepEstimate is one step's share of an Estimate.
type StepEstimate struct {
	Name   string
	CPU    time.Duration
	Memory int64
}

// Estimate returns the rough cost of running c on an image with header h.
func (c Chain) Estimate(h Header) Estimate {
	const bytesPerPixel = 8  // 16-bit RGBA, the worst case
	const nsPerPixelOp = 100 // a blur of a 16-bit image costs about that
	w, hh := h.Width, h.Height
	largest := int64(w) * int64(hh)
	e := Estimate{}
	add := func(name string, px int64) {
		s := StepEstimate{Name: name, CPU: time.Duration(px * nsPerPixelOp), Memory: px * bytesPerPixel * 3}
		e.Steps = append(e.Steps, s)
		e.CPU += s.CPU
	}
	add("decode", largest)
	for _, o := range c.steps() {
		nw, nh, err := o.size(w, hh)
		if err == nil {
			w, hh = nw, nh
		}
		px := int64(w) * int64(hh)
		largest = max(largest, px)
		add(opName(o.kind), px)
	}
	add("encode", int64(w)*int64(hh))
	e.Memory = largest * bytesPerPixel * 3
	return e
}

// ApplyContext is Apply that gives up when ctx ends (the stand-in checks it only before starting).
func (p *Processor) ApplyContext(ctx context.Context, dst io.Writer, src io.Reader, chain Chain) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", context.Cause(ctx)
	}
	return p.Apply(dst, src, chain)
}
