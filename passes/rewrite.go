package passes

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
)

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
//
// The rewriter records the old node it is processing (at, copyNode), so
// that an internal error — an operand used after its removal, a node that
// does not verify — names that node and its source position (rewriteError,
// reported by runPass).
type rewriter struct {
	old *ir.Graph
	g   *ir.Graph
	m   []int
	cur int // old node being processed, or -1
}

func newRewriter(old *ir.Graph) *rewriter {
	m := make([]int, len(old.Nodes))
	for i := range m {
		m[i] = -1
	}
	return &rewriter{old: old, g: &ir.Graph{Name: old.Name}, m: m, cur: -1}
}

// at records that the pass is processing old node i.
func (r *rewriter) at(i int) { r.cur = i }

// rewriteError is an internal error of a pass's rewrite: what went wrong
// while processing old node Node (-1: the graph's outputs, marks and
// updates).
type rewriteError struct {
	Node int
	N    *ir.Node // nil when Node < 0
	Msg  string
}

func (e *rewriteError) Error() string {
	if e.N == nil {
		return "rewriting the outputs: " + e.Msg
	}
	return ir.Errorf(e.N.Pos, "at %%%d %s %q: %s", e.Node, e.N.Op, e.N.Name, e.Msg).Error()
}

// fail panics with a rewriteError for the current node.
func (r *rewriter) fail(format string, args ...any) {
	e := &rewriteError{Node: r.cur, Msg: fmt.Sprintf(format, args...)}
	if r.cur >= 0 && r.cur < len(r.old.Nodes) {
		e.N = r.old.Nodes[r.cur]
	} else {
		e.Node = -1
	}
	panic(e)
}

// arg maps an old operand index to the new graph.
func (r *rewriter) arg(old int) int {
	if r.m[old] < 0 {
		o := r.old.Nodes[old]
		r.fail("operand %%%d (%s %q) used after removal", old, o.Op, o.Name)
	}
	return r.m[old]
}

// emit adds a new node (operands already in new indices); the caller records
// the mapping. Type is re-inferred for non-leaf nodes.
func (r *rewriter) emit(n *ir.Node) int {
	if !ir.HasDeclaredType(n.Op) {
		n.Type = ir.Type{Layout: n.Type.Layout}
	}
	id, err := r.g.Add(n)
	if err != nil {
		r.fail("emitting %s: %v", n.Op, err)
	}
	return id
}

// copyNode copies old node i with remapped operands and records the mapping.
func (r *rewriter) copyNode(i int) int {
	r.cur = i
	n := cloneNode(r.old.Nodes[i])
	for k, a := range n.Args {
		n.Args[k] = r.arg(a)
	}
	r.m[i] = r.emit(n)
	return r.m[i]
}

// finish remaps outputs and marks and returns the new graph.
func (r *rewriter) finish() *ir.Graph {
	r.cur = -1
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
