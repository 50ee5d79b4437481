package lower

import (
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/ir"
)

// groupedConv lowers a conv2d or fused_conv node n (%i) with groups > 1.
// The layout pass keeps grouped weights in plain OIHW (ir/rules.go); they
// are repacked here at build time, as dense weights are transposed:
//
//   - depthwise (groups = C = O, one input channel per group): the
//     dedicated kernel (codegen.Depthwise) with the weight packed
//     [C/B][KH][KW][B] (codegen.PackDepthwise);
//   - per-group input and output channel counts that are multiples of the
//     block B: the dense kernel with Groups set, the weight [O][C/G][KH][KW]
//     packed OIhw{B}i{B}o (each group's packed weight in turn);
//   - any other grouping has no compiled kernel yet; the error says so at
//     the node's position.
func groupedConv(g *ir.Graph, n *ir.Node, i, B int, off func(int) int, weight weightFunc) (any, error) {
	x, w := g.Nodes[n.Args[0]], g.Nodes[n.Args[1]]
	gr := n.Attrs.Int("groups")
	xs, ws := x.Type.Shape, w.Type.Shape
	c, o := xs[1], ws[0]
	if !w.Type.Layout.IsPlain() {
		return nil, ir.Errorf(n.Pos, "codegen: grouped conv weight %s must be plain OIHW, is %s", w.Name, w.Type)
	}
	if x.Type.Layout.IsPlain() {
		return nil, ir.Errorf(n.Pos, "codegen: grouped convolution (groups=%d) of a plain input has no compiled kernel", gr)
	}
	bi, ri, _ := ir.FusedConvOperands(n)
	if n.Op == ir.OpConv2D && len(n.Args) == 3 {
		bi = 2
	}
	st, pd, dl := n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), n.Attrs.Ints("dilation")
	bias := func() (int, bool, error) {
		if bi < 0 {
			return 0, false, nil
		}
		bOff, err := weight(n, "bias", one(func(v []float32) []float32 { return padTo(v, ceilTo(o, B)) }), n.Args[bi])
		return bOff, err == nil, err
	}
	switch {
	case gr == c && o == c:
		wOff, err := weight(n, "weight", one(func(v []float32) []float32 {
			return codegen.PackDepthwise(v, c, ws[2], ws[3], B)
		}), n.Args[1])
		if err != nil {
			return nil, err
		}
		spec := codegen.DepthwiseSpec{
			N: xs[0], C: c, H: xs[2], W: xs[3], KH: ws[2], KW: ws[3],
			SH: st[0], SW: st[1], PH: pd[0], PW: pd[1], DH: dl[0], DW: dl[1],
			OH: n.Type.Shape[2], OW: n.Type.Shape[3],
			InOff: off(n.Args[0]), WeightOff: wOff, Relu: n.Attrs.Bool("relu"),
			OutOff: off(i), OutC: n.Type.Shape[1], OutCOffset: n.Attrs.Int("offset"),
		}
		if spec.BiasOff, spec.HasBias, err = bias(); err != nil {
			return nil, err
		}
		if ri >= 0 {
			spec.HasResidual, spec.ResidualOff = true, off(n.Args[ri])
		}
		return spec, nil
	case (c/gr)%B == 0 && (o/gr)%B == 0:
		cg := c / gr
		wl := ir.OIhwIiOo(B)
		shape := []int{o, cg, ws[2], ws[3]}
		wOff, err := weight(n, "weight", one(func(v []float32) []float32 {
			return packOIhw(v, shape, wl)
		}), n.Args[1])
		if err != nil {
			return nil, err
		}
		spec := codegen.ConvSpec{
			N: xs[0], C: c, H: xs[2], W: xs[3], O: o, KH: ws[2], KW: ws[3],
			SH: st[0], SW: st[1], PH: pd[0], PW: pd[1], DH: dl[0], DW: dl[1], Groups: gr,
			OH: n.Type.Shape[2], OW: n.Type.Shape[3],
			InOff: off(n.Args[0]), WeightOff: wOff, Relu: n.Attrs.Bool("relu"),
			OutOff: off(i), OutC: n.Type.Shape[1], OutCOffset: n.Attrs.Int("offset"),
		}
		if spec.BiasOff, spec.HasBias, err = bias(); err != nil {
			return nil, err
		}
		if ri >= 0 {
			spec.HasResidual, spec.ResidualOff = true, off(n.Args[ri])
		}
		return spec, nil
	}
	return nil, ir.Errorf(n.Pos, "codegen: grouped convolution (groups=%d: %d input and %d output channels per group) has no compiled kernel: "+
		"the per-group channel counts must be multiples of the block %d, or the convolution depthwise (groups = input = output channels)",
		gr, c/gr, o/gr, B)
}

// packOIhw packs a plain OIHW weight of the given shape into layout wl
// (OIhw{B}i{B}o, zero padded), by the layout's own index arithmetic.
func packOIhw(v []float32, shape []int, wl ir.Layout) []float32 {
	n, _ := wl.PhysicalNumel(shape)
	out := make([]float32, n)
	k := 0
	for a := 0; a < shape[0]; a++ {
		for b := 0; b < shape[1]; b++ {
			for y := 0; y < shape[2]; y++ {
				for x := 0; x < shape[3]; x++ {
					out[wl.Offset(shape, a, b, y, x)] = v[k]
					k++
				}
			}
		}
	}
	return out
}
