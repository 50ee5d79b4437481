package onnx

import (
	"fmt"
	"math"

	"github.com/kiln-dev/kiln/ir"
)

// Import of the activation and squeeze-and-excitation ops (ir/ops_ext.go):
//
//	Sigmoid, Tanh, HardSwish, GlobalMaxPool   sigmoid, tanh, hardswish, global_maxpool
//	Clip (opset 11+: min, max constants)      relu6 for (0, 6), clip otherwise;
//	                                          a missing max with min 0 is relu
//	Sub                                       a - b (two tensors of one shape)
//	Mul x * Sigmoid(x)                        silu (PyTorch's SiLU export)
//	Mul x * HardSigmoid(x) (1/6, 0.5)         hardswish (before opset 14)
//	Mul [N,C,H,W] * [N,C,1,1]                 a * b: the per-channel scale
//	                                          (squeeze-and-excitation)

// gateMul returns the Mul node that is the only reader of n's output and
// multiplies it by n's input (x * gate(x)), or nil.
func (c *importer) gateMul(n *Node) *Node {
	us := c.uses[n.Outputs[0]]
	if len(us) != 1 || c.outs[n.Outputs[0]] {
		return nil
	}
	mul := c.m.Graph.Nodes[us[0]]
	if mul.OpType != "Mul" || (mul.Domain != "" && mul.Domain != "ai.onnx") || len(mul.Inputs) != 2 || len(mul.Outputs) < 1 || len(mul.Attrs) != 0 {
		return nil
	}
	in := mul.Inputs
	if !(in[0] == n.Inputs[0] && in[1] == n.Outputs[0] || in[1] == n.Inputs[0] && in[0] == n.Outputs[0]) {
		return nil
	}
	return mul
}

// fuseGate converts gate node n and its Mul (see gateMul) into one
// statement op(x) bound to the Mul's output.
func (c *importer) fuseGate(n, mul *Node, x *value, op string) {
	c.skip[mul.Index] = true
	c.emit(n, c.tempName(op), fmt.Sprintf("%s(%s)", op, x.expr), "", op, []int{x.node}, nil)
	if v, ok := c.vals[n.Outputs[0]]; ok {
		c.vals[mul.Outputs[0]] = v
	}
}

// hardSigmoid maps HardSigmoid(alpha 1/6, beta 0.5) whose only reader is
// Mul by its input, PyTorch's Hardswish before opset 14 (and Kiln's export),
// to hardswish.
func (c *importer) hardSigmoid(n *Node) {
	as, ok := c.attrs(n, "alpha", "beta")
	if !ok || !c.onlyOutput(n) {
		return
	}
	alpha, ok1 := c.attrFloat(n, as, "alpha", 0.2)
	beta, ok2 := c.attrFloat(n, as, "beta", 0.5)
	if !ok1 || !ok2 {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	mul := c.gateMul(n)
	if math.Abs(float64(alpha)-1.0/6) > 1e-7 || beta != 0.5 || mul == nil {
		c.fail(n, "HardSigmoid is supported only as x * HardSigmoid(x) with alpha 1/6 and beta 0.5 (hard-swish); alpha %v, beta %v", alpha, beta)
		return
	}
	c.fuseGate(n, mul, x, ir.OpHardSwish)
}

// extUnary maps an elementwise or pooling op without attributes; a Sigmoid
// whose only reader is Mul by its input becomes silu.
func (c *importer) extUnary(n *Node) {
	if _, ok := c.attrs(n); !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	if mul := c.gateMul(n); n.OpType == "Sigmoid" && mul != nil {
		c.fuseGate(n, mul, x, ir.OpSiLU)
		return
	}
	op := map[string]string{"Sigmoid": ir.OpSigmoid, "Tanh": ir.OpTanh, "HardSwish": ir.OpHardSwish,
		"GlobalMaxPool": ir.OpGlobalMaxPool}[n.OpType]
	c.emit(n, c.tempName(op), fmt.Sprintf("%s(%s)", op, x.expr), "", op, []int{x.node}, nil)
}

// clip maps Clip with constant bounds (inputs 1 and 2, opset 11+).
func (c *importer) clip(n *Node) {
	if _, ok := c.attrs(n); !ok || !c.onlyOutput(n) {
		return
	}
	x, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	bound := func(k int) (float32, bool, bool) {
		if k >= len(n.Inputs) || n.Inputs[k] == "" {
			return 0, false, true
		}
		t, ok := c.constInput(n, k, []string{"", "min", "max"}[k])
		if !ok {
			return 0, false, false
		}
		_, d, ok := c.floats(n, t)
		if !ok {
			return 0, false, false
		}
		if len(d) != 1 || math.IsNaN(float64(d[0])) || math.IsInf(float64(d[0]), 0) {
			c.fail(n, "Clip bound %q must be one finite value", t.Name)
			return 0, false, false
		}
		return d[0], true, true
	}
	lo, hasLo, ok1 := bound(1)
	hi, hasHi, ok2 := bound(2)
	switch {
	case !ok1 || !ok2:
		return
	case hasLo && !hasHi && lo == 0:
		c.emit(n, c.tempName(ir.OpReLU), fmt.Sprintf("relu(%s)", x.expr), "", ir.OpReLU, []int{x.node}, nil)
		return
	case !hasLo || !hasHi:
		c.fail(n, "Clip without both min and max is supported only as min 0 (ReLU)")
		return
	case lo > hi:
		c.fail(n, "Clip min %v exceeds max %v", lo, hi)
		return
	}
	ls, lv := fmtFloat(lo)
	hs, hv := fmtFloat(hi)
	attrs := ir.Attrs{"lo": lv, "hi": hv}
	if lo == 0 && hi == 6 {
		c.emit(n, c.tempName("relu6"), fmt.Sprintf("relu6(%s)", x.expr), "", ir.OpClip, []int{x.node}, attrs)
		return
	}
	c.emit(n, c.tempName(ir.OpClip), fmt.Sprintf("clip(%s, %s, %s)", x.expr, ls, hs), "", ir.OpClip, []int{x.node}, attrs)
}

// sub maps Sub of two computed tensors of one shape.
func (c *importer) sub(n *Node) {
	if _, ok := c.attrs(n); !ok || !c.onlyOutput(n) {
		return
	}
	a, ok := c.tensorInput(n, 0)
	if !ok {
		return
	}
	b, ok := c.tensorInput(n, 1)
	if !ok {
		return
	}
	c.emit(n, c.tempName(ir.OpSub), fmt.Sprintf("%s - %s", a.expr, b.expr), "", ir.OpSub, []int{a.node, b.node}, nil)
}

// mulTensors maps Mul of two computed tensors: x * sigmoid(x) is SiLU, a
// [N,C,H,W] by [N,C,1,1] product the per-channel scale.
func (c *importer) mulTensors(n *Node, a, b *value) {
	for _, p := range [][2]*value{{a, b}, {b, a}} {
		if s := c.g.Nodes[p[1].node]; s.Op == ir.OpSigmoid && s.Args[0] == p[0].node {
			c.emit(n, c.tempName(ir.OpSiLU), fmt.Sprintf("silu(%s)", p[0].expr), "", ir.OpSiLU, []int{p[0].node}, nil)
			return
		}
	}
	sa, sb := c.shapeOf(a), c.shapeOf(b)
	if len(sb) == 4 && sb[2]*sb[3] == 1 && len(sa) == 4 && sa[2]*sa[3] != 1 {
		// already x, s
	} else if len(sa) == 4 && sa[2]*sa[3] == 1 && len(sb) == 4 {
		a, b = b, a
	}
	c.emit(n, c.tempName("mul"), fmt.Sprintf("%s * %s", a.expr, b.expr), "", ir.OpChannelMul, []int{a.node, b.node}, nil)
}
