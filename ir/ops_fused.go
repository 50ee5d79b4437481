package ir

import "fmt"

// Ops introduced by the optimization passes.
//
// Build-time weight transforms (fold_bn_weight, fold_bn_bias, fold_scale,
// pack_weight) read only params and other build-time values; the build
// evaluates that constant subgraph once, so folded and repacked weights cost
// nothing at run time, and no pass needs the weight data itself.
//
// fused_conv is a convolution with its epilogue (bias, residual add, ReLU) in
// the same op. fused_conv, maxpool and avgpool may also write into a channel
// slice of a destination tensor ("into" operand, destination-passing style as
// in MLIR bufferization): the result is the destination with channels
// [offset, offset+C) replaced. A chain of such writes builds a concatenation
// in place, with no concat op and no copy.
const (
	OpFusedConv    = "fused_conv"
	OpFoldBNWeight = "fold_bn_weight"
	OpFoldBNBias   = "fold_bn_bias"
	OpFoldScale    = "fold_scale"
	OpPackWeight   = "pack_weight"
	OpReorder      = "reorder"
	OpEmpty        = "empty"
)

// FusedConvOperands returns the operand indices (within n.Args) of a
// fused_conv's bias, residual and into operands, or -1 where absent. The
// operand order is x, weight, [bias], [residual], [into].
func FusedConvOperands(n *Node) (bias, residual, into int) {
	bias, residual, into = -1, -1, -1
	i := 2
	if n.Attrs.Bool("bias") {
		bias = i
		i++
	}
	if n.Attrs.Bool("residual") {
		residual = i
		i++
	}
	if n.Attrs.Bool("into") {
		into = i
	}
	return
}

// intoType checks a write of value type t into destination d at channel
// offset off, and returns the destination's type.
func intoType(t, d Type, off int) (Type, error) {
	if d.Rank() != t.Rank() || d.Rank() < 2 {
		return Type{}, fmt.Errorf("destination %s and value %s differ in rank", d, t)
	}
	for i := range t.Shape {
		if i != 1 && d.Shape[i] != t.Shape[i] {
			return Type{}, fmt.Errorf("value %s does not fit destination %s: they may differ only in channels", ShapeString(t.Shape), ShapeString(d.Shape))
		}
	}
	if off < 0 || off+t.Shape[1] > d.Shape[1] {
		return Type{}, fmt.Errorf("channels [%d, %d) outside destination's %d", off, off+t.Shape[1], d.Shape[1])
	}
	return same(d), nil
}

// IntoOperand returns the index within n.Args of the "into" destination of a
// fused_conv, maxpool or avgpool, or -1.
func IntoOperand(n *Node) int {
	switch n.Op {
	case OpFusedConv:
		_, _, into := FusedConvOperands(n)
		return into
	case OpMaxPool, OpAvgPool:
		if len(n.Args) == 2 {
			return 1
		}
	}
	return -1
}

func init() {
	convDef := table[OpConv2D]
	register(&OpDef{
		Name: OpFusedConv, Operands: []string{"x", "weight", "bias?", "residual?", "into?"}, MinArgs: 2, MaxArgs: 5,
		Layouts: convLayouts, DTypes: floatDTypes,
		Doc: "clip?(relu?(conv(x, weight) + bias? + residual?)), written into channels [offset, offset+O) of into? when present; " +
			"clip is min(max(v, clip_lo), clip_hi) with clip_lo <= 0 <= clip_hi (a fused relu6 or clip)",
		Attrs: append(append([]AttrDef(nil), convDef.Attrs...),
			AttrDef{Name: "bias", Kind: AttrBool, Default: false},
			AttrDef{Name: "residual", Kind: AttrBool, Default: false},
			AttrDef{Name: "relu", Kind: AttrBool, Default: false},
			AttrDef{Name: "clip", Kind: AttrBool, Default: false},
			AttrDef{Name: "clip_lo", Kind: AttrFloat, Default: 0.0},
			AttrDef{Name: "clip_hi", Kind: AttrFloat, Default: 6.0},
			AttrDef{Name: "into", Kind: AttrBool, Default: false},
			AttrDef{Name: "offset", Kind: AttrInt, Default: 0, Check: nonNegative}),
		Infer: func(n *Node, a []Type) (Type, error) {
			b, r, into := FusedConvOperands(n)
			want := 2
			for _, k := range []int{b, r, into} {
				if k >= 0 {
					want++
				}
			}
			if len(a) != want {
				return Type{}, fmt.Errorf("attributes bias=%v residual=%v into=%v need %d operands, got %d",
					n.Attrs.Bool("bias"), n.Attrs.Bool("residual"), n.Attrs.Bool("into"), want, len(a))
			}
			convArgs := a[:2]
			if b >= 0 {
				convArgs = append(append([]Type(nil), a[:2]...), a[b])
			}
			t, err := convDef.Infer(n, convArgs)
			if err != nil {
				return Type{}, err
			}
			if r >= 0 && !ShapeEqual(a[r].Shape, t.Shape) {
				return Type{}, fmt.Errorf("residual shape %s differs from the conv's %s", ShapeString(a[r].Shape), ShapeString(t.Shape))
			}
			if lo, hi := n.Attrs.Float("clip_lo"), n.Attrs.Float("clip_hi"); n.Attrs.Bool("clip") && !(lo <= 0 && 0 <= hi) {
				// clip(0) must be 0: the padding lanes of a blocked result stay zero.
				return Type{}, fmt.Errorf("a fused clip needs clip_lo <= 0 <= clip_hi, got [%v, %v]", lo, hi)
			}
			if into >= 0 {
				return intoType(t, a[into], n.Attrs.Int("offset"))
			}
			if n.Attrs.Int("offset") != 0 {
				return Type{}, fmt.Errorf("offset needs an into operand")
			}
			return t, nil
		},
		MACs: func(n *Node, a []Type) int64 {
			w := a[1].Shape
			x := a[0].Shape
			s, p, d := n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), n.Attrs.Ints("dilation")
			ho, wo := ConvOut(x[2], DilatedKernel(w[2], d[0]), s[0], p[0]), ConvOut(x[3], DilatedKernel(w[3], d[1]), s[1], p[1])
			return int64(x[0]*w[0]*ho*wo) * int64(w[1]*w[2]*w[3])
		},
	})
	// Pools gain an optional destination.
	for _, op := range []string{OpMaxPool, OpAvgPool} {
		d := table[op]
		base := d.Infer
		d.Operands = []string{"x", "into?"}
		d.MaxArgs = 2
		d.Attrs = append(d.Attrs, AttrDef{Name: "offset", Kind: AttrInt, Default: 0, Check: nonNegative})
		d.Infer = func(n *Node, a []Type) (Type, error) {
			t, err := base(n, a[:1])
			if err != nil {
				return Type{}, err
			}
			if len(a) == 2 {
				return intoType(t, a[1], n.Attrs.Int("offset"))
			}
			if n.Attrs.Int("offset") != 0 {
				return Type{}, fmt.Errorf("offset needs an into operand")
			}
			return t, nil
		}
	}
	epsAttr := table[OpBatchNorm].Attrs[0]
	register(&OpDef{Name: OpFoldBNWeight, Operands: []string{"weight", "bn_weight", "running_var"}, MinArgs: 3, MaxArgs: 3,
		Doc:     "build time: weight[o,...] * bn_weight[o] / sqrt(running_var[o] + eps)",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: []AttrDef{epsAttr},
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := perChannel(a[0], a[1:]...); err != nil {
				return Type{}, err
			}
			return same(a[0]), nil
		}})
	register(&OpDef{Name: OpFoldBNBias, Operands: []string{"bn_weight", "bn_bias", "running_mean", "running_var", "bias?"}, MinArgs: 4, MaxArgs: 5,
		Doc:     "build time: (bias - running_mean) * bn_weight / sqrt(running_var + eps) + bn_bias, bias 0 when absent",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: []AttrDef{epsAttr},
		Infer: func(n *Node, a []Type) (Type, error) {
			if err := perChannel(Type{Shape: []int{a[0].Shape[0]}}, a...); err != nil {
				return Type{}, err
			}
			return same(a[0]), nil
		}})
	register(&OpDef{Name: OpFoldScale, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc:    "build time: x * c (a residual scale folded into a conv's weight and bias)",
		DTypes: floatDTypes,
		Attrs:  []AttrDef{{Name: "c", Kind: AttrFloat}},
		Infer:  func(n *Node, a []Type) (Type, error) { return same(a[0]), nil }})
	register(&OpDef{Name: OpPackWeight, Operands: []string{"weight"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "build time: repack a weight into a blocked layout (e.g. OIhw16i16o); the logical shape is unchanged",
		Attrs:   []AttrDef{{Name: "layout", Kind: AttrString, Check: layoutAttr}},
		Layouts: packWeightLayouts,
		Infer:   layoutFromAttr})
	register(&OpDef{Name: OpEmpty, Doc: "an uninitialized tensor of the declared type, the destination of a chain of in-place writes",
		Infer: declared})
	register(&OpDef{Name: OpReorder, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "convert an activation between physical layouts (e.g. NCHW <-> NCHW16c); the logical shape is unchanged",
		Attrs:   []AttrDef{{Name: "layout", Kind: AttrString, Default: "", Check: layoutAttr}},
		Layouts: reorderLayouts,
		Infer:   layoutFromAttr})
}

// layoutAttr checks that a layout attribute parses.
func layoutAttr(v any) error {
	_, err := ParseLayout(v.(string))
	return err
}

// layoutFromAttr is the type rule of reorder and pack_weight: the operand's
// type in the layout named by the layout attribute.
func layoutFromAttr(n *Node, a []Type) (Type, error) {
	l, err := ParseLayout(n.Attrs.String("layout"))
	if err != nil {
		return Type{}, err
	}
	t := same(a[0])
	t.Layout = l
	return t, nil
}

// SetsLayout reports whether op's result layout is given by its layout
// attribute (reorder, pack_weight) rather than chosen by the layout pass.
func SetsLayout(op string) bool { return op == OpReorder || op == OpPackWeight }

// perChannel checks that every vector in vs has one element per row of t.
func perChannel(t Type, vs ...Type) error {
	if t.Rank() < 1 {
		return fmt.Errorf("operand must have rank >= 1")
	}
	for _, v := range vs {
		if v.Rank() != 1 || v.Shape[0] != t.Shape[0] {
			return fmt.Errorf("per-channel operand shape %s, want %d", ShapeString(v.Shape), t.Shape[0])
		}
	}
	return nil
}

// HasDeclaredType reports whether op's result type is declared on the node
// rather than inferred from operands (input, param, empty).
func HasDeclaredType(op string) bool {
	return op == OpInput || op == OpParam || op == OpEmpty
}
