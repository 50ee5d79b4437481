package ir

import (
	"fmt"
	"io"
	"strings"
)

// WriteDOT writes the graph in Graphviz DOT form. Parameters are folded into
// the label of the op that uses them (they would otherwise double the node
// count); every other node is a box labelled with its op, name and shape, and
// inputs and outputs are drawn as ellipses.
func WriteDOT(w io.Writer, g *Graph) error {
	var b strings.Builder
	fmt.Fprintf(&b, "digraph %q {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n", g.Name)
	out := map[int]bool{}
	for _, o := range g.Outputs {
		out[o] = true
	}
	for i, n := range g.Nodes {
		if n.Op == OpParam {
			continue
		}
		lines := []string{fmt.Sprintf("%%%d %s", i, n.Op)}
		if n.Name != "" {
			lines = append(lines, n.Name)
		}
		if s := attrString(n); s != "" {
			lines = append(lines, s)
		}
		var ps []string
		for _, a := range n.Args {
			if p := g.Nodes[a]; p.Op == OpParam {
				ps = append(ps, ShapeString(p.Type.Shape))
			}
		}
		if len(ps) > 0 {
			lines = append(lines, "params "+strings.Join(ps, ", "))
		}
		lines = append(lines, n.Type.String())
		shape := ""
		if n.Op == OpInput || out[i] {
			shape = ", shape=ellipse"
		}
		label := strings.ReplaceAll(strings.Join(lines, "\n"), `"`, `\"`)
		label = strings.ReplaceAll(label, "\n", `\n`)
		fmt.Fprintf(&b, "  n%d [label=\"%s\"%s];\n", i, label, shape)
	}
	for i, n := range g.Nodes {
		for _, a := range n.Args {
			if g.Nodes[a].Op != OpParam {
				fmt.Fprintf(&b, "  n%d -> n%d;\n", a, i)
			}
		}
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}
