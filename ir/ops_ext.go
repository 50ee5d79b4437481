package ir

import "fmt"

// Activation, elementwise and reduction ops beyond the Inception set
// (issue 10 item 3): the activations of MobileNet-v3 and EfficientNet
// (sigmoid, tanh, SiLU, hard-swish, clip/ReLU6), subtraction, the
// per-channel broadcast multiply of squeeze-and-excitation and global max
// pooling. Each is defined as PyTorch defines it (torch.sigmoid, torch.tanh,
// nn.SiLU, nn.Hardswish, torch.clamp, torch.sub, torch.mul with broadcast,
// nn.AdaptiveMaxPool2d(1)); a NaN input gives a NaN output.
const (
	OpSigmoid       = "sigmoid"
	OpTanh          = "tanh"
	OpSiLU          = "silu"
	OpHardSwish     = "hardswish"
	OpClip          = "clip"
	OpSub           = "sub"
	OpChannelMul    = "channel_mul"
	OpGlobalMaxPool = "global_maxpool"
)

func init() {
	unary := func(name, doc string, attrs ...AttrDef) {
		register(&OpDef{Name: name, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1, Doc: doc, Attrs: attrs, DTypes: floatDTypes,
			Infer: func(n *Node, a []Type) (Type, error) {
				if name == OpClip && n.Attrs.Float("lo") > n.Attrs.Float("hi") {
					return Type{}, fmt.Errorf("lo %g must not exceed hi %g", n.Attrs.Float("lo"), n.Attrs.Float("hi"))
				}
				return same(a[0]), nil
			}})
	}
	unary(OpSigmoid, "1 / (1 + exp(-x))")
	unary(OpTanh, "hyperbolic tangent")
	unary(OpSiLU, "SiLU (swish): x * sigmoid(x)")
	unary(OpHardSwish, "hard-swish: x * min(max(x + 3, 0), 6) / 6 (PyTorch's Hardswish)")
	unary(OpClip, "min(max(x, lo), hi); NaN stays NaN (relu6 is clip lo=0 hi=6)",
		AttrDef{Name: "lo", Kind: AttrFloat}, AttrDef{Name: "hi", Kind: AttrFloat})
	register(&OpDef{Name: OpSub, Operands: []string{"x", "y"}, MinArgs: 2, MaxArgs: 2, Doc: "elementwise x - y (equal shapes)",
		DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if !ShapeEqual(a[0].Shape, a[1].Shape) {
				return Type{}, fmt.Errorf("shapes differ: %s and %s", ShapeString(a[0].Shape), ShapeString(a[1].Shape))
			}
			return same(a[0]), nil
		}})
	// channel_mul's operands share the result's layout (the default rule):
	// both are 4-D, so the layout pass blocks both with the same block and
	// s[n][c] is the one lane of channel c in its pixel.
	register(&OpDef{Name: OpChannelMul, Operands: []string{"x", "s"}, MinArgs: 2, MaxArgs: 2,
		Doc:    "x[N,C,H,W] * s[N,C,1,1] broadcast over H and W (squeeze-and-excitation's scale)",
		DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			x, s := a[0], a[1]
			if err := rankIs(x, 4, "x"); err != nil {
				return Type{}, err
			}
			if s.Rank() != 4 || s.Shape[0] != x.Shape[0] || s.Shape[1] != x.Shape[1] || s.Shape[2] != 1 || s.Shape[3] != 1 {
				return Type{}, fmt.Errorf("scale shape %s, want [%d, %d, 1, 1]", ShapeString(s.Shape), x.Shape[0], x.Shape[1])
			}
			return same(x), nil
		}})
	register(&OpDef{Name: OpGlobalMaxPool, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc: "max over H and W: NCHW -> NC11; NaN propagates",
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := rankIs(a[0], 4, "input"); err != nil {
				return Type{}, err
			}
			return Type{DType: a[0].DType, Shape: []int{a[0].Shape[0], a[0].Shape[1], 1, 1}, Layout: a[0].Layout}, nil
		}})
}
