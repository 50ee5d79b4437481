package passes

import (
	"github.com/kiln-dev/kiln/ir"
)

// ActivationLayout is the blocked activation layout for c lanes: NCHW16c
// stores channel block cb, row h, column w, then the c channels cb*c..cb*c+c-1
// contiguously, so one vector load reads c channels of one pixel (oneDNN's
// nChw16c).
func ActivationLayout(c int) ir.Layout { return ir.NCHWc(c) }

// WeightLayout is the blocked conv weight layout for c lanes: OIhw16i16o
// stores output block ob, input block ib, kh, kw, then 16 input channels × 16
// output channels, so the inner loop loads one vector of c output channels per
// input channel.
func WeightLayout(c int) ir.Layout { return ir.OIhwIiOo(c) }

// layoutPass moves activations to the blocked NCHWc layout of the target and
// repacks conv weights once at build time.
//
// Rule: every 4-D activation (not the network input, not build-time values)
// gets Layout NCHW{c}c; the 4-D network input stays NCHW when a conv reads it
// and its channel count is not a multiple of c (the RGB image: no 3 -> c
// padding), and is reordered to NCHW{c}c for any other reader;
// every fused_conv weight that is a build-time value is wrapped in
// pack_weight(layout=OIhw{c}i{c}o); ops that need a logical tensor (flatten,
// dense, softmax, multi-result ops and anything not 4-D) get a reorder back to
// the plain layout in front of their blocked operands, and blocked readers of a
// plain 4-D result node reorder it; a concat whose channel offsets are not
// multiples of c runs on plain NCHW between reorders. Channel counts that are not a multiple of
// c are padded with zeros in the physical buffer; shapes stay logical.
var layoutPass = &Pass{
	Name:  "layout",
	Doc:   "NCHW -> blocked NCHWc activations, weights repacked at build time",
	After: []string{"fuse-epilogue", "concat-in-place"},
	Run: func(s *State) error {
		c := s.Target.Block
		act, wl := ActivationLayout(c), WeightLayout(c)
		g := s.Graph
		build := BuildTime(g)
		r := newRewriter(g)
		blocked := map[int]bool{} // new indices holding blocked activations
		plain := map[int]int{}    // new blocked index -> its reorder to plain
		toPlain := func(a int) int {
			if !blocked[a] {
				return a
			}
			if p, ok := plain[a]; ok {
				return p
			}
			p := r.emit(&ir.Node{Op: ir.OpReorder, Args: []int{a}, Attrs: ir.Attrs{"layout": ""}, Pos: r.g.Nodes[a].Pos})
			plain[a] = p
			return p
		}
		plainInput := map[int]bool{} // new indices of 4-D values left in NCHW (inputs, unaligned concats)
		toBlocked := map[int]int{}   // plain input -> its reorder to NCHWc
		blockedArg := func(a int) int {
			if !plainInput[a] {
				return a
			}
			if b, ok := toBlocked[a]; ok {
				return b
			}
			n := r.g.Nodes[a]
			b := r.emit(&ir.Node{Op: ir.OpReorder, Name: n.Name, Args: []int{a}, Attrs: ir.Attrs{"layout": act.String()}, Pos: n.Pos})
			toBlocked[a], blocked[b] = b, true
			return b
		}
		for i, n := range g.Nodes {
			r.at(i)
			switch {
			case (n.Op == ir.OpInput || n.Op == ir.OpParam && !build[i]) && n.Type.Rank() == 4:
				// Network inputs and mutable params (state, written by the
				// runtime) are stored plain; blocked readers reorder them.
				plainInput[r.copyNode(i)] = true
			case build[i] || n.Op == ir.OpInput:
				r.copyNode(i)
			case n.IsMulti() || n.Op == ir.OpResult:
				// Multi-result ops run on plain operands and their results
				// keep the producer's plain layout; blocked readers of a 4-D
				// result reorder it, as for a network input.
				nn := cloneNode(n)
				for k, a := range n.Args {
					nn.Args[k] = toPlain(r.arg(a))
				}
				r.m[i] = r.emit(nn)
				if n.Op == ir.OpResult && n.Type.Rank() == 4 {
					plainInput[r.m[i]] = true
				}
			case n.Op == ir.OpConcat && n.Type.Rank() == 4 && !alignedConcat(g, n, c):
				// A concat whose channel offsets are not multiples of c
				// cannot write whole vector blocks: it runs on plain NCHW,
				// where each operand is one contiguous copy per image.
				nn := cloneNode(n)
				for k, a := range n.Args {
					nn.Args[k] = toPlain(r.arg(a))
				}
				r.m[i] = r.emit(nn)
				plainInput[r.m[i]] = true
			case n.Op == ir.OpReshape:
				// A reshape reorders no elements of the logical
				// (row-major) value, so it runs on plain operands; a 4-D
				// result is reordered for blocked readers, as an input is.
				nn := cloneNode(n)
				nn.Args[0] = toPlain(r.arg(n.Args[0]))
				r.m[i] = r.emit(nn)
				if n.Type.Rank() == 4 {
					plainInput[r.m[i]] = true
				}
			case n.Type.Rank() == 4 && n.Type.Layout.IsPlain():
				nn := cloneNode(n)
				for k, a := range n.Args {
					nn.Args[k] = r.arg(a)
					// A conv reads a network input with few channels (the RGB
					// image) in NCHW directly, as oneDNN's first-layer kernels
					// do, instead of padding 3 channels to c.
					if !(k == 0 && n.Op == ir.OpFusedConv && g.Nodes[a].Op == ir.OpInput && g.Nodes[a].Type.Shape[1]%c != 0) {
						nn.Args[k] = blockedArg(nn.Args[k])
					}
				}
				// Conv weights are packed with the activations' block (the op
				// table's rule; grouped convolutions keep OIHW weights).
				if (n.Op == ir.OpFusedConv || n.Op == ir.OpConv2D) && build[n.Args[1]] && n.Attrs.Int("groups") == 1 {
					nn.Args[1] = r.emit(&ir.Node{Op: ir.OpPackWeight, Name: g.Nodes[n.Args[1]].Name, Args: []int{nn.Args[1]}, Attrs: ir.Attrs{"layout": wl.String()}, Pos: n.Pos})
				}
				nn.Type.Layout = act
				r.m[i] = r.emit(nn)
				blocked[r.m[i]] = true
			default:
				nn := cloneNode(n)
				for k, a := range n.Args {
					nn.Args[k] = toPlain(r.arg(a))
				}
				r.m[i] = r.emit(nn)
			}
		}
		// Outputs and the new values of mutable params leave in the
		// plain layout.
		out := r.finish()
		r.g = out
		for k, o := range out.Outputs {
			if blocked[o] {
				out.Outputs[k] = toPlain(o)
			}
		}
		for k, u := range out.Updates {
			if blocked[u.Value] {
				out.Updates[k].Value = toPlain(u.Value)
			}
		}
		s.Graph = out
		return nil
	},
}

// alignedConcat reports whether every operand of a channel concat starts at a
// multiple of c.
func alignedConcat(g *ir.Graph, n *ir.Node, c int) bool {
	if n.Attrs.Int("axis") != 1 {
		return false
	}
	off := 0
	for _, a := range n.Args {
		if off%c != 0 {
			return false
		}
		off += g.Nodes[a].Type.Shape[1]
	}
	return true
}

// BuildTime marks the nodes computable at build time: params and every node
// whose operands are all build-time values (weight folding and packing).
func BuildTime(g *ir.Graph) []bool {
	b := make([]bool, len(g.Nodes))
	for i, n := range g.Nodes {
		switch n.Op {
		case ir.OpParam:
			// Mutable state (a param the graph updates) changes between
			// runs, so nothing computed from it is a build-time constant.
			b[i] = !g.Mutable(i)
		case ir.OpInput, ir.OpEmpty:
		default:
			b[i] = len(n.Args) > 0
			for _, a := range n.Args {
				b[i] = b[i] && b[a]
			}
		}
	}
	return b
}
