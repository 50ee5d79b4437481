package ir

import (
	"fmt"
	"io"
	"strings"
)

// WriteDOT writes the graph in Graphviz DOT form. Parameters, and values
// computed only from parameters, are folded into the label of the op that
// uses them (they would otherwise double the node count); every other node is a box labelled with its op, name and shape, and
// inputs and outputs are drawn as ellipses.
func WriteDOT(w io.Writer, g *Graph) error { return WriteDOTWith(w, g, nil) }

// WriteDOTWith is WriteDOT with an extra label line per node from note (for
// example the arena buffer and channel slice a node writes); note may be nil
// or return "".
func WriteDOTWith(w io.Writer, g *Graph, note func(i int) string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "digraph %q {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n", g.Name)
	out := map[int]bool{}
	for _, o := range g.Outputs {
		out[o] = true
	}
	// Weights and everything computed only from weights (folding, packing)
	// are folded into the label of the op that uses them.
	weight := make([]bool, len(g.Nodes))
	for i, n := range g.Nodes {
		weight[i] = n.Op == OpParam
		if n.Op != OpInput && n.Op != OpEmpty && len(n.Args) > 0 {
			weight[i] = true
			for _, a := range n.Args {
				weight[i] = weight[i] && weight[a]
			}
		}
	}
	for i, n := range g.Nodes {
		if weight[i] {
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
			if p := g.Nodes[a]; weight[a] {
				ps = append(ps, ShapeString(p.Type.Shape))
			}
		}
		if len(ps) > 0 {
			lines = append(lines, "params "+strings.Join(ps, ", "))
		}
		lines = append(lines, n.Type.String())
		if note != nil {
			if s := note(i); s != "" {
				lines = append(lines, s)
			}
		}
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
			if !weight[a] && !weight[i] {
				fmt.Fprintf(&b, "  n%d -> n%d;\n", a, i)
			}
		}
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}
