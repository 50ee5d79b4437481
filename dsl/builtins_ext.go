package dsl

import "github.com/kiln-dev/kiln/ir"

// Builtins for the ops of ir/ops_ext.go: sigmoid, tanh, silu (alias
// swish), hardswish, clip(x, lo, hi), relu6 (clip 0..6), global_maxpool.
// Tensor subtraction and the per-channel multiply are the operators x - y
// and x * s (elab.go's binary).

// defExtBuiltins registers them; builtins.go's init calls it.
func defExtBuiltins() {
	ext := func(name string, ps []sigParam, fn func(c *bcall) value) {
		builtins[name] = &builtin{sig: sig{name: name, params: ps}, fn: fn}
	}
	ext("sigmoid", params("x!"), unaryOp(ir.OpSigmoid))
	ext("tanh", params("x!"), unaryOp(ir.OpTanh))
	ext("silu", params("x!"), unaryOp(ir.OpSiLU))
	ext("swish", params("x!"), unaryOp(ir.OpSiLU))
	ext("hardswish", params("x!"), unaryOp(ir.OpHardSwish))
	ext("global_maxpool", params("x!"), unaryOp(ir.OpGlobalMaxPool))
	ext("clip", params("x!", "lo!", "hi!"), bClip)
	ext("relu6", params("x!"), func(c *bcall) value {
		x := c.tensor(0)
		if c.failed {
			return poison
		}
		return c.node(ir.OpClip, []int{x}, ir.Attrs{"lo": 0.0, "hi": 6.0})
	})
}

func bClip(c *bcall) value {
	x := c.tensor(0)
	lo, hi := c.float(1, 0), c.float(2, 0)
	if !c.failed && lo > hi {
		c.fail(c.args[1], "lo %g must not exceed hi %g", lo, hi)
	}
	if c.failed {
		return poison
	}
	return c.node(ir.OpClip, []int{x}, ir.Attrs{"lo": lo, "hi": hi})
}

// tensorBinary elaborates x - y (equal shapes: sub) and x * s or s * x
// with s of shape [N, C, 1, 1] and x [N, C, H, W] (channel_mul); ok is
// false when the operands are none of these.
func (e *elab) tensorBinary(x *Binary, a, b value, scope string) (value, bool) {
	if a.k != kTensor || b.k != kTensor {
		return value{}, false
	}
	switch x.Op {
	case "-":
		return e.node(x.Pos, ir.OpSub, scope, []int{a.node, b.node}, nil), true
	case "*":
		// The [N, C, 1, 1] operand is the scale; two such are fine too.
		// Anything else (equal [N, C, H, W] shapes) is not defined.
		scale := func(v value) bool {
			s := e.g.Nodes[v.node].Type.Shape
			return len(s) == 4 && s[2] == 1 && s[3] == 1
		}
		if !scale(b) {
			a, b = b, a
		}
		if !scale(b) {
			return value{}, false
		}
		return e.node(x.Pos, ir.OpChannelMul, scope, []int{a.node, b.node}, nil), true
	}
	return value{}, false
}
