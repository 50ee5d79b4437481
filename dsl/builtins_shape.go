package dsl

import "github.com/kiln-dev/kiln/ir"

// Builtins for upsampling and reshaping (issue 10 item 3):
//
//	upsample(x, scale=2, mode="nearest", align_corners=false)
//	reshape(x, shape)   shape a tuple of ints; one entry may be -1
//
// upsample is PyTorch's nn.Upsample(scale_factor=scale, mode=mode,
// align_corners=align_corners) for an integer factor ("nearest" or
// "bilinear"); reshape is torch.reshape (row-major order, -1 inferred from
// the element count, as x.view(x.size(0), -1)).

// defShapeBuiltins registers them; builtins.go's init calls it.
func defShapeBuiltins() {
	ext := func(name string, ps []sigParam, fn func(c *bcall) value) {
		builtins[name] = &builtin{sig: sig{name: name, params: ps}, fn: fn}
	}
	ext("upsample", params("x!", "scale", "mode", "align_corners"), bUpsample)
	ext("reshape", params("x!", "shape!"), bReshape)
}

func bUpsample(c *bcall) value {
	x := c.tensor(0)
	s := c.size(1, 2, 1)
	mode := ir.UpsampleNearest
	if a := c.get(2); a != nil {
		if a.v.k != kString || a.v.s != ir.UpsampleNearest && a.v.s != ir.UpsampleBilinear {
			c.fail(a, "mode must be %q or %q, got %s", ir.UpsampleNearest, ir.UpsampleBilinear, c.describe(a.v))
		} else {
			mode = a.v.s
		}
	}
	ac := c.boolean(3, false)
	if ac && mode != ir.UpsampleBilinear && !c.failed {
		c.fail(c.args[3], "align_corners applies to mode %q only", ir.UpsampleBilinear)
	}
	if sh := c.shape(x); !c.failed && len(sh) != 4 {
		c.fail(c.args[0], "x must be a 4-D tensor (N, C, H, W), got %s", c.describe(c.args[0].v))
	}
	if c.failed {
		return poison
	}
	return c.node(ir.OpUpsample, []int{x}, ir.Attrs{"scale": s, "mode": mode, "align_corners": ac})
}

func bReshape(c *bcall) value {
	x := c.tensor(0)
	a := c.get(1)
	if c.failed || a == nil {
		return poison
	}
	var elems []value
	switch a.v.k {
	case kTuple:
		elems = a.v.elems
	case kInt, kFloat:
		elems = []value{a.v}
	}
	if len(elems) == 0 {
		c.fail(a, "shape must be a tuple of ints, got %s", c.describe(a.v))
		return poison
	}
	numel := 1
	for _, d := range c.shape(x) {
		numel *= d
	}
	shape, known, infer := make([]int, len(elems)), 1, -1
	for i, v := range elems {
		d, ok := toInt(v)
		switch {
		case !ok || d == 0 || d < -1:
			c.fail(a, "shape entries must be positive ints or -1, got %s", c.describe(v))
			return poison
		case d == -1 && infer >= 0:
			c.fail(a, "shape may contain -1 only once")
			return poison
		case d == -1:
			infer = i
		default:
			c.checkRange(a, "shape entry", d, 1)
			known *= d
		}
		shape[i] = d
	}
	if c.failed {
		return poison
	}
	if infer >= 0 && known > 0 && numel%known == 0 {
		shape[infer] = numel / known
		known *= shape[infer]
	}
	if known != numel {
		c.fail(a, "shape %s does not fit %s (%d elements)", c.describe(a.v), c.describe(c.args[0].v), numel)
		return poison
	}
	return c.node(ir.OpReshape, []int{x}, ir.Attrs{"shape": shape})
}
