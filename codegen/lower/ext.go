package lower

import (
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/ir"
)

// extElementwise maps the elementwise ops of ir/ops_ext.go to their
// ElementwiseSpec kind.
var extElementwise = map[string]codegen.EltOp{
	ir.OpSub:       codegen.EltSub,
	ir.OpSigmoid:   codegen.EltSigmoid,
	ir.OpTanh:      codegen.EltTanh,
	ir.OpSiLU:      codegen.EltSiLU,
	ir.OpHardSwish: codegen.EltHardSwish,
	ir.OpClip:      codegen.EltClip,
}

// lowerExt lowers node i, one of the ops of ir/ops_ext.go: the activations
// and sub as one ElementwiseSpec pass over the physical elements (padding
// lanes of a blocked value masked to zero where f(0) != 0), channel_mul as
// a ChannelMulSpec, global_maxpool as a GlobalMaxPoolSpec (blocked input).
func lowerExt(g *ir.Graph, n *ir.Node, i, B int, name string, off func(int) int) (kernelSpec, error) {
	x := g.Nodes[n.Args[0]].Type
	switch n.Op {
	case ir.OpChannelMul:
		hw := x.Shape[2] * x.Shape[3]
		return kernelSpec{name: name, node: i, spec: codegen.ChannelMulSpec{
			N: x.Shape[0], C: x.Shape[1], HW: hw, Blocked: !n.Type.Layout.IsPlain(),
			InOff: off(n.Args[0]), ScaleOff: off(n.Args[1]), OutOff: off(i)}}, nil
	case ir.OpGlobalMaxPool:
		if x.Layout.IsPlain() {
			return kernelSpec{}, ir.Errorf(n.Pos, "codegen: global_maxpool of a plain value (run the layout pass)")
		}
		return kernelSpec{name: name, node: i, spec: codegen.GlobalMaxPoolSpec{
			N: x.Shape[0], C: x.Shape[1], H: x.Shape[2], W: x.Shape[3], InOff: off(n.Args[0]), OutOff: off(i)}}, nil
	}
	elems, err := ir.PhysicalNumel(n.Type)
	if err != nil {
		return kernelSpec{}, ir.Errorf(n.Pos, "codegen: %s: %v", n.Op, err)
	}
	spec := codegen.ElementwiseSpec{Op: extElementwise[n.Op], Elems: elems, InOff: off(n.Args[0]), OutOff: off(i)}
	if n.Op == ir.OpSub {
		spec.In2Off = off(n.Args[1])
	}
	if n.Op == ir.OpClip {
		spec.C, spec.Hi = float32(n.Attrs.Float("lo")), float32(n.Attrs.Float("hi"))
	}
	if l := n.Type.Layout; !l.IsPlain() && n.Type.Rank() == 4 && n.Type.Shape[1]%B != 0 {
		spec.Channels, spec.Pixels = n.Type.Shape[1], n.Type.Shape[2]*n.Type.Shape[3]
	}
	return kernelSpec{name: name, node: i, spec: spec}, nil
}
