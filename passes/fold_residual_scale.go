package passes

import "github.com/kiln-dev/kiln/ir"

// foldResidualScale folds a constant scale into the conv it multiplies.
//
// Rule: mul(conv2d(x, w[, b]); c), where the conv has no other user, becomes
// conv2d(x, w', b') with w' = c·w and b' = c·b (fold_scale at build time).
// This is the Inception-ResNet residual branch x + s·conv(y) (Szegedy et al.
// 2016, §3.3): after this pass the add reads the conv directly, and
// fuse-epilogue can put the add into the conv's store. Exact up to one float32
// rounding per weight.
var foldResidualScale = &Pass{
	Name:  "fold-residual-scale",
	Doc:   "fold x + s*conv(y) scales into the conv's weight and bias",
	After: []string{"fold-bn"},
	Run: func(s *State) error {
		g := s.Graph
		users := g.Users()
		r := newRewriter(g)
		fold := map[int]bool{}
		for _, n := range g.Nodes {
			if n.Op == ir.OpMul {
				if c := n.Args[0]; g.Nodes[c].Op == ir.OpConv2D && len(users[c]) == 1 && !isMarkedOrOutput(g, c) {
					fold[c] = true
				}
			}
		}
		for i, n := range g.Nodes {
			r.at(i)
			switch {
			case fold[i]:
			case n.Op == ir.OpMul && fold[n.Args[0]]:
				conv := g.Nodes[n.Args[0]]
				c := n.Attrs.Float("c")
				nc := cloneNode(conv)
				nc.Args = []int{r.arg(conv.Args[0])}
				for _, p := range conv.Args[1:] {
					nc.Args = append(nc.Args, r.emit(&ir.Node{Op: ir.OpFoldScale, Name: r.old.Nodes[p].Name + ".scaled",
						Args: []int{r.arg(p)}, Attrs: ir.Attrs{"c": c}, Pos: n.Pos}))
				}
				r.m[i] = r.emit(nc)
			default:
				r.copyNode(i)
			}
		}
		s.Graph = r.finish()
		return nil
	},
}
