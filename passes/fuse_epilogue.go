package passes

import "github.com/kiln-dev/kiln/ir"

// fuseEpilogue turns every conv2d into a fused_conv and pulls its epilogue
// into it.
//
// Rule: starting from conv2d(x, w[, b]), absorb a following add(·, r) as the
// residual operand r, then a following relu, as long as each absorbed value has
// exactly one user and is not an output or mark, then a following clip with
// lo <= 0 <= hi (relu6: MobileNet-v2's activation, which as a kernel of its
// own cost a full pass over every expanded tensor); a clip with 0 outside
// [lo, hi] stays a kernel, as it would make the padding lanes of a blocked
// result nonzero. The fused op is placed where
// the last absorbed node was, so all its operands are already defined. In the
// Inception-ResNet blocks (after fold-residual-scale) the up-projection
// conv then reads the block's mixed branches and the block input and writes the
// block output relu(x + conv(mixed)) in one op.
//
// A standalone batchnorm (one fold-bn left: a pre-activation block's
// BN -> ReLU -> conv, or BN after a concat) followed by its only user, a
// relu, becomes one batchnorm with relu set: one pass over the tensor
// instead of two (DenseNet's and pre-activation ResNet's BN-ReLU pairs).
//
// An add fed by two convs (a ResNet projection shortcut: conv+BN on both
// paths, then add) is absorbed by one of them only, the first in graph
// order; the other conv stays a fused_conv of its own and its result is the
// residual operand. Each add (and the relu after it) is claimed by at most
// one conv.
var fuseEpilogue = &Pass{
	Name:  "fuse-epilogue",
	Doc:   "fuse bias, residual add, ReLU and a relu6/clip containing 0 into the producing conv; a ReLU into a standalone batchnorm",
	After: []string{"fold-bn", "fold-residual-scale"},
	Run: func(s *State) error {
		g := s.Graph
		users := g.Users()
		type fusion struct {
			residual int // old index, or -1
			relu     bool
			clip     *ir.Node // the absorbed clip, or nil
		}
		at := map[int]int{}        // final absorbed node -> conv
		plan := map[int]*fusion{}  // conv -> fusion
		absorbed := map[int]bool{} // nodes removed (conv and intermediate adds)
		claimed := map[int]bool{}  // adds absorbed by a conv
		single := func(i int) (int, bool) {
			if len(users[i]) == 1 && !isMarkedOrOutput(g, i) {
				return users[i][0], true
			}
			return -1, false
		}
		bnRelu := map[int]int{} // relu -> the standalone batchnorm it follows
		for i, n := range g.Nodes {
			if n.Op == ir.OpBatchNorm {
				if u, ok := single(i); ok && g.Nodes[u].Op == ir.OpReLU {
					bnRelu[u] = i
					absorbed[i] = true
				}
				continue
			}
			if n.Op != ir.OpConv2D {
				continue
			}
			f := &fusion{residual: -1}
			cur := i
			if u, ok := single(cur); ok && g.Nodes[u].Op == ir.OpAdd && g.Nodes[u].Args[0] != g.Nodes[u].Args[1] && !claimed[u] {
				a := g.Nodes[u].Args
				f.residual = a[0]
				if a[0] == cur {
					f.residual = a[1]
				}
				absorbed[cur] = true
				claimed[u] = true
				cur = u
			}
			if u, ok := single(cur); ok && g.Nodes[u].Op == ir.OpReLU {
				f.relu = true
				absorbed[cur] = true
				cur = u
			}
			if u, ok := single(cur); ok && g.Nodes[u].Op == ir.OpClip {
				if c := g.Nodes[u]; c.Attrs.Float("lo") <= 0 && 0 <= c.Attrs.Float("hi") {
					f.clip = c
					absorbed[cur] = true
					cur = u
				}
			}
			plan[i] = f
			at[cur] = i
		}
		r := newRewriter(g)
		for i := range g.Nodes {
			r.at(i)
			if ci, ok := at[i]; ok {
				conv, f := g.Nodes[ci], plan[ci]
				fc := cloneNode(conv)
				fc.Op = ir.OpFusedConv
				fc.Args = []int{r.arg(conv.Args[0]), r.arg(conv.Args[1])}
				if len(conv.Args) == 3 {
					fc.Args = append(fc.Args, r.arg(conv.Args[2]))
					fc.Attrs["bias"] = true
				}
				if f.residual >= 0 {
					fc.Args = append(fc.Args, r.arg(f.residual))
					fc.Attrs["residual"] = true
				}
				if f.relu {
					fc.Attrs["relu"] = true
				}
				if f.clip != nil {
					fc.Attrs["clip"] = true
					fc.Attrs["clip_lo"], fc.Attrs["clip_hi"] = f.clip.Attrs.Float("lo"), f.clip.Attrs.Float("hi")
				}
				r.m[i] = r.emit(fc)
				continue
			}
			if bi, ok := bnRelu[i]; ok {
				bn := cloneNode(g.Nodes[bi])
				for k, a := range bn.Args {
					bn.Args[k] = r.arg(a)
				}
				if bn.Attrs == nil {
					bn.Attrs = ir.Attrs{}
				}
				bn.Attrs["relu"] = true
				r.m[i] = r.emit(bn)
				continue
			}
			if absorbed[i] {
				continue
			}
			r.copyNode(i)
		}
		s.Graph = r.finish()
		return nil
	},
}
