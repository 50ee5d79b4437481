package lower

import (
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/ir"
)

// lowerUpsample lowers an upsample node (%i) to codegen.Upsample, which
// runs on the blocked layout (the layout pass blocks every 4-D value).
func lowerUpsample(g *ir.Graph, n *ir.Node, i int, name string, off func(int) int) (kernelSpec, error) {
	x := g.Nodes[n.Args[0]].Type
	if x.Layout.IsPlain() {
		return kernelSpec{}, ir.Errorf(n.Pos, "codegen: upsample of a plain value (run the layout pass)")
	}
	return kernelSpec{name: name, node: i, spec: codegen.UpsampleSpec{
		N: x.Shape[0], C: x.Shape[1], H: x.Shape[2], W: x.Shape[3], Scale: n.Attrs.Int("scale"),
		Bilinear: n.Attrs.String("mode") == ir.UpsampleBilinear, AlignCorners: n.Attrs.Bool("align_corners"),
		InOff: off(n.Args[0]), OutOff: off(i)}}, nil
}
