package passes

import "github.com/kiln-dev/kiln/ir"

// Clone deep-copies a graph.
func Clone(g *ir.Graph) *ir.Graph {
	out := &ir.Graph{Name: g.Name, Outputs: append([]int(nil), g.Outputs...), Marks: append([]ir.Mark(nil), g.Marks...),
		Updates: append([]ir.Update(nil), g.Updates...)}
	for _, n := range g.Nodes {
		out.Nodes = append(out.Nodes, cloneNode(n))
	}
	return out
}

func cloneNode(n *ir.Node) *ir.Node {
	c := *n
	c.Args = append([]int(nil), n.Args...)
	if n.Attrs != nil {
		c.Attrs = ir.Attrs{}
		for k, v := range n.Attrs {
			if l, ok := v.([]int); ok {
				v = append([]int(nil), l...)
			}
			c.Attrs[k] = v
		}
	}
	c.Type.Shape = append([]int(nil), n.Type.Shape...)
	if n.Results != nil {
		c.Results = make([]ir.Type, len(n.Results))
		for k, t := range n.Results {
			c.Results[k] = t
			c.Results[k].Shape = append([]int(nil), t.Shape...)
		}
	}
	return &c
}

// rewriter rebuilds a graph node by node. Passes walk the old graph in order
// and either copy a node (with operands remapped) or emit replacements; m maps
// old node indices to new ones (-1: removed). Outputs and marks are remapped at
// the end; a mark on a removed node is dropped.
type rewriter struct {
	old *ir.Graph
	g   *ir.Graph
	m   []int
}

func newRewriter(old *ir.Graph) *rewriter {
	m := make([]int, len(old.Nodes))
	for i := range m {
		m[i] = -1
	}
	return &rewriter{old: old, g: &ir.Graph{Name: old.Name}, m: m}
}

// arg maps an old operand index to the new graph.
func (r *rewriter) arg(old int) int {
	if r.m[old] < 0 {
		panic("passes: operand used after removal")
	}
	return r.m[old]
}

// emit adds a new node (operands already in new indices); the caller records
// the mapping. Type is re-inferred for non-leaf nodes.
func (r *rewriter) emit(n *ir.Node) int {
	if !ir.HasDeclaredType(n.Op) {
		n.Type = ir.Type{Layout: n.Type.Layout}
	}
	return r.g.MustAdd(n)
}

// copyNode copies old node i with remapped operands and records the mapping.
func (r *rewriter) copyNode(i int) int {
	n := cloneNode(r.old.Nodes[i])
	for k, a := range n.Args {
		n.Args[k] = r.arg(a)
	}
	r.m[i] = r.emit(n)
	return r.m[i]
}

// finish remaps outputs and marks and returns the new graph.
func (r *rewriter) finish() *ir.Graph {
	for _, o := range r.old.Outputs {
		r.g.Outputs = append(r.g.Outputs, r.arg(o))
	}
	for _, mk := range r.old.Marks {
		if r.m[mk.Node] >= 0 {
			r.g.Marks = append(r.g.Marks, ir.Mark{Name: mk.Name, Node: r.m[mk.Node]})
		}
	}
	for _, u := range r.old.Updates {
		r.g.Updates = append(r.g.Updates, ir.Update{Param: r.arg(u.Param), Value: r.arg(u.Value)})
	}
	return r.g
}
