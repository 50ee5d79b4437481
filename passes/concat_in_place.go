package passes

import (
	"sort"

	"github.com/kiln-dev/kiln/ir"
)

// concatInPlace removes channel concatenations by having each branch write
// straight into its slice of the concatenated tensor.
//
// Rule: concat(p1, ..., pk; axis=1) where every pi is a fused_conv, maxpool or
// avgpool with no other user (and not an output or mark), and every channel
// offset is a multiple of the target's channel block (so that blocked layouts
// keep slices vector-aligned), becomes
//
//	d0 = empty : type of the concat
//	d1 = p_(1)(..., into=d0, offset=o_(1))
//	...
//	dk = p_(k)(..., into=d(k-1), offset=o_(k))
//
// with the producers chained in graph order (not operand order), so that each
// write comes after its own operands; dk replaces the concat. Nested concats
// along the same axis whose only user is the outer concat are flattened first
// (Inception-C's 1x3/3x1 splits). A concat with an ineligible operand stays.
var concatInPlace = &Pass{
	Name:  "concat-in-place",
	Doc:   "make concat branches write into channel slices of one buffer",
	After: []string{"fuse-epilogue"},
	Run: func(s *State) error {
		g := s.Graph
		users := g.Users()
		block := s.Target.Block // channel offsets must be whole blocks
		// leaves flattens nested single-use concats; ok is false if an operand
		// cannot write in place.
		var leaves func(c int) ([]int, bool)
		leaves = func(c int) ([]int, bool) {
			var out []int
			for _, a := range g.Nodes[c].Args {
				n := g.Nodes[a]
				if len(users[a]) != 1 || isMarkedOrOutput(g, a) {
					return nil, false
				}
				switch {
				case n.Op == ir.OpConcat && n.Attrs.Int("axis") == 1:
					l, ok := leaves(a)
					if !ok {
						return nil, false
					}
					out = append(out, l...)
				case (n.Op == ir.OpFusedConv || n.Op == ir.OpMaxPool || n.Op == ir.OpAvgPool) && ir.IntoOperand(n) < 0:
					out = append(out, a)
				default:
					return nil, false
				}
			}
			return out, true
		}
		type write struct {
			concat, offset int
		}
		writes := map[int]write{} // producer -> its slice
		first := map[int]int{}    // concat -> its first producer in graph order
		last := map[int]int{}     // concat -> its last producer in graph order
		inner := map[int]bool{}   // flattened nested concats
		// Outer concats first (they come later in graph order), so a nested
		// concat is flattened into its outer one rather than converted alone.
		for i := len(g.Nodes) - 1; i >= 0; i-- {
			n := g.Nodes[i]
			if n.Op != ir.OpConcat || n.Attrs.Int("axis") != 1 || n.Type.Rank() != 4 || inner[i] {
				continue
			}
			ls, ok := leaves(i)
			if !ok {
				continue
			}
			offs := make([]int, len(ls))
			off := 0
			for k, p := range ls {
				offs[k] = off
				if off%block != 0 {
					ok = false
				}
				off += g.Nodes[p].Type.Shape[1]
			}
			if !ok {
				continue
			}
			for k, p := range ls {
				writes[p] = write{i, offs[k]}
			}
			markInner(g, i, inner)
			sorted := append([]int(nil), ls...)
			sort.Ints(sorted)
			first[i], last[i] = sorted[0], sorted[len(sorted)-1]
		}
		r := newRewriter(g)
		dest := map[int]int{} // concat -> current new-graph destination value
		for i, n := range g.Nodes {
			r.at(i)
			if w, ok := writes[i]; ok {
				c := g.Nodes[w.concat]
				if first[w.concat] == i {
					dest[w.concat] = r.emit(&ir.Node{Op: ir.OpEmpty, Name: c.Name, Type: ir.Type{DType: c.Type.DType, Shape: append([]int(nil), c.Type.Shape...)}, Pos: c.Pos})
				}
				p := cloneNode(n)
				for k, a := range p.Args {
					p.Args[k] = r.arg(a)
				}
				p.Args = append(p.Args, dest[w.concat])
				if p.Op == ir.OpFusedConv {
					p.Attrs["into"] = true
				}
				p.Attrs["offset"] = w.offset
				dest[w.concat] = r.emit(p)
				r.m[i] = dest[w.concat]
				if last[w.concat] == i {
					r.m[w.concat] = dest[w.concat]
				}
				continue
			}
			if _, converted := last[i]; converted || inner[i] {
				continue // replaced by its last write, or flattened
			}
			r.copyNode(i)
		}
		s.Graph = r.finish()
		return nil
	},
}

// markInner records the nested concats flattened into concat c.
func markInner(g *ir.Graph, c int, inner map[int]bool) {
	for _, a := range g.Nodes[c].Args {
		if g.Nodes[a].Op == ir.OpConcat {
			inner[a] = true
			markInner(g, a, inner)
		}
	}
}
