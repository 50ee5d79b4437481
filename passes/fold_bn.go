package passes

import "github.com/kiln-dev/kiln/ir"

// foldBN folds an inference BatchNorm into the convolution that feeds it.
//
// Rule: batchnorm(conv2d(x, w[, b]), γ, β, μ, σ²; eps), where the conv has no
// other user, becomes conv2d(x, w', b') with
//
//	w'[o,...] = w[o,...] · γ[o]/sqrt(σ²[o]+eps)
//	b'[o]     = (b[o] − μ[o]) · γ[o]/sqrt(σ²[o]+eps) + β[o]     (b = 0 if absent)
//
// computed at build time by fold_bn_weight and fold_bn_bias over the params.
// Precondition: inference (running statistics fixed); training keeps
// BatchNorm, so the training pipeline does not run this pass. A BatchNorm whose
// input is not a single-use conv, or whose statistics or affine parameters are
// mutable state (Graph.Updates), stays.
var foldBN = &Pass{
	Name: "fold-bn",
	Doc:  "fold inference BatchNorm into the preceding conv's weight and bias",
	Run: func(s *State) error {
		g := s.Graph
		users := g.Users()
		r := newRewriter(g)
		fold := map[int]bool{} // conv nodes folded into their BatchNorm
		for i, n := range g.Nodes {
			if n.Op == ir.OpBatchNorm {
				if c := n.Args[0]; g.Nodes[c].Op == ir.OpConv2D && len(users[c]) == 1 && !isMarkedOrOutput(g, c) && !anyMutable(g, n.Args[1:]) {
					fold[c] = true
				}
			}
			_ = i
		}
		for i, n := range g.Nodes {
			r.at(i)
			switch {
			case fold[i]:
				// Emitted together with its BatchNorm.
			case n.Op == ir.OpBatchNorm && fold[n.Args[0]]:
				conv := g.Nodes[n.Args[0]]
				eps := n.Attrs.Float("eps")
				gamma, beta, mean, vr := r.arg(n.Args[1]), r.arg(n.Args[2]), r.arg(n.Args[3]), r.arg(n.Args[4])
				w := r.emit(&ir.Node{Op: ir.OpFoldBNWeight, Name: conv.Name + ".weight.bn",
					Args: []int{r.arg(conv.Args[1]), gamma, vr}, Attrs: ir.Attrs{"eps": eps}, Pos: n.Pos})
				bargs := []int{gamma, beta, mean, vr}
				if len(conv.Args) == 3 {
					bargs = append(bargs, r.arg(conv.Args[2]))
				}
				b := r.emit(&ir.Node{Op: ir.OpFoldBNBias, Name: conv.Name + ".bias.bn", Args: bargs, Attrs: ir.Attrs{"eps": eps}, Pos: n.Pos})
				c := cloneNode(conv)
				c.Args = []int{r.arg(conv.Args[0]), w, b}
				r.m[i] = r.emit(c)
			default:
				r.copyNode(i)
			}
		}
		s.Graph = r.finish()
		return nil
	},
}

// isMarkedOrOutput reports whether node i is observable from outside: a graph
// output or a mark. Fusions never hide such a value.
func isMarkedOrOutput(g *ir.Graph, i int) bool {
	for _, o := range g.Outputs {
		if o == i {
			return true
		}
	}
	for _, m := range g.Marks {
		if m.Node == i {
			return true
		}
	}
	return false
}

// anyMutable reports whether any of nodes is a param the graph updates.
func anyMutable(g *ir.Graph, nodes []int) bool {
	for _, a := range nodes {
		if g.Mutable(a) {
			return true
		}
	}
	return false
}
