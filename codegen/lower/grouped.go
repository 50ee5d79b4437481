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
//   - any other grouping (and a grouped convolution of the plain network
//     input): the dense kernel over a block-diagonal expansion of the
//     weight into super-groups whose channel counts are multiples of B
//     (superGroups, expandGroups), the FMAs of other groups' lanes masked
//     so that a NaN or Inf stays in its group (codegen/conv_groups.go).
func groupedConv(g *ir.Graph, n *ir.Node, i, B int, off func(int) int, weight weightFunc) (any, error) {
	x, w := g.Nodes[n.Args[0]], g.Nodes[n.Args[1]]
	gr := n.Attrs.Int("groups")
	xs, ws := x.Type.Shape, w.Type.Shape
	c, o := xs[1], ws[0]
	if !w.Type.Layout.IsPlain() {
		return nil, ir.Errorf(n.Pos, "codegen: grouped conv weight %s must be plain OIHW, is %s", w.Name, w.Type)
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
	case x.Type.Layout.IsPlain():
		// A network input read in NCHW (its channels are not a multiple
		// of B): the dense kernel over the expanded weight, below.
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
		spec.Clip, spec.Lo, spec.Hi = fusedClip(n)
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
		spec.Clip, spec.Lo, spec.Hi = fusedClip(n)
		return spec, nil
	}
	// Any other grouping: the block-diagonal expansion (superGroups).
	sg := superGroups(gr, c, o, B)
	if x.Type.Layout.IsPlain() {
		sg = 1
	}
	shape := []int{o, c / sg, ws[2], ws[3]}
	wOff, err := weight(n, "weight", one(func(v []float32) []float32 {
		return packOIhw(expandGroups(v, o, c, ws[2]*ws[3], gr, sg), shape, ir.OIhwIiOo(B))
	}), n.Args[1])
	if err != nil {
		return nil, err
	}
	spec := codegen.ConvSpec{
		N: xs[0], C: c, H: xs[2], W: xs[3], O: o, KH: ws[2], KW: ws[3],
		SH: st[0], SW: st[1], PH: pd[0], PW: pd[1], DH: dl[0], DW: dl[1], Groups: sg,
		MaskIn: c / gr, MaskOut: o / gr, // lanes of other groups masked (codegen/conv_groups.go)
		OH: n.Type.Shape[2], OW: n.Type.Shape[3],
		InOff: off(n.Args[0]), InPlain: x.Type.Layout.IsPlain(), WeightOff: wOff, Relu: n.Attrs.Bool("relu"),
		OutOff: off(i), OutC: n.Type.Shape[1], OutCOffset: n.Attrs.Int("offset"),
	}
	if spec.BiasOff, spec.HasBias, err = bias(); err != nil {
		return nil, err
	}
	if ri >= 0 {
		spec.HasResidual, spec.ResidualOff = true, off(n.Args[ri])
	}
	spec.Clip, spec.Lo, spec.Hi = fusedClip(n)
	return spec, nil
}

// superGroups returns the number of super-groups for a grouped
// convolution whose per-group channel counts are not multiples of the
// block b: the largest divisor s of groups with c/s and o/s multiples of b
// (1 when there is none). Each super-group unites groups/s groups, and its
// weight is their block-diagonal [o/s][c/s] matrix (expandGroups), so the
// dense kernel's grouped path (block-aligned groups), with the other
// groups' lanes masked where the input is not finite, computes the
// convolution exactly: groups/s times the necessary multiply-adds (the
// zeros off the diagonal) at the dense kernel's speed (BENCHMARKS.md),
// instead of a loop of small convolutions. E.g. groups=2 with 24 channels per group
// on block 16: s = 1 (one dense 48x48 convolution, 2x the MACs); groups=32
// with 4 channels per group (ResNeXt's 32x4d) on 128 channels: s = 8 (16
// channels per super-group, 4x the MACs).
func superGroups(groups, c, o, b int) int {
	for s := groups; s > 1; s-- {
		if groups%s == 0 && (c/s)%b == 0 && (o/s)%b == 0 {
			return s
		}
	}
	return 1
}

// expandGroups turns a grouped weight [o][c/groups][k] (k = KH·KW) into the
// weight [o][c/s][k] of s super-groups (see superGroups): output channel oc
// of group g = oc/(o/groups) reads its group's c/groups inputs at their
// offset within its super-group oc/(o/s); every other entry is zero.
func expandGroups(v []float32, o, c, k, groups, s int) []float32 {
	cg, cs := c/groups, c/s
	out := make([]float32, o*cs*k)
	for oc := 0; oc < o; oc++ {
		g, sg := oc/(o/groups), oc/(o/s)
		first := g*cg - sg*cs // the group's first input channel within the super-group
		copy(out[(oc*cs+first)*k:(oc*cs+first+cg)*k], v[oc*cg*k:(oc+1)*cg*k])
	}
	return out
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
