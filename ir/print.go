package ir

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Print writes the graph's text form. One node per line:
//
//	%5 = conv2d "features.0.conv" (%0, %1) {stride=[2,2]} : f32[1,32,149,149] loc("v4.kiln":3:12)
//
// The quoted name, operand list, attributes (only those that differ from the
// op's default, in op-table order) and location are omitted when empty. A node
// with several results prints their types as a tuple, "(f32[1,8,4,4], f32[8],
// f32[8])". Then "return %a, ...", one "mark NAME %id" line per mark and one
// "update %param %value" line per update. Parse reads it back into an equal
// graph.
func Print(w io.Writer, g *Graph) error {
	var b strings.Builder
	fmt.Fprintf(&b, "graph %s {\n", quoteIdent(g.Name))
	for i, n := range g.Nodes {
		b.WriteString("  ")
		writeNode(&b, i, n)
		b.WriteByte('\n')
	}
	b.WriteString("  return")
	for i, o := range g.Outputs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %%%d", o)
	}
	b.WriteByte('\n')
	for _, m := range g.Marks {
		fmt.Fprintf(&b, "  mark %s %%%d\n", strconv.Quote(m.Name), m.Node)
	}
	for _, u := range g.Updates {
		fmt.Fprintf(&b, "  update %%%d %%%d\n", u.Param, u.Value)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// String returns the text form of the graph.
func (g *Graph) String() string {
	var b strings.Builder
	_ = Print(&b, g)
	return b.String()
}

// NodeString formats one node as it appears in the text form.
func NodeString(i int, n *Node) string {
	var b strings.Builder
	writeNode(&b, i, n)
	return b.String()
}

func writeNode(b *strings.Builder, i int, n *Node) {
	fmt.Fprintf(b, "%%%d = %s", i, n.Op)
	if n.Name != "" {
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(n.Name))
	}
	if len(n.Args) > 0 {
		b.WriteString(" (")
		for j, a := range n.Args {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(b, "%%%d", a)
		}
		b.WriteByte(')')
	}
	if s := attrString(n); s != "" {
		b.WriteString(" {")
		b.WriteString(s)
		b.WriteByte('}')
	}
	b.WriteString(" : ")
	if n.IsMulti() {
		b.WriteString(tupleString(n.Results))
	} else {
		b.WriteString(n.Type.String())
	}
	if n.Pos.File != "" || n.Pos.Line > 0 {
		fmt.Fprintf(b, " loc(%s:%d:%d)", strconv.Quote(n.Pos.File), n.Pos.Line, n.Pos.Col)
	}
}

// attrString prints the attributes that differ from their defaults, in op-table
// order; unknown ops print all attributes sorted by name.
func attrString(n *Node) string {
	def := Lookup(n.Op)
	var parts []string
	if def == nil {
		return ""
	}
	for _, a := range def.Attrs {
		v, ok := n.Attrs[a.Name]
		if !ok || (a.Default != nil && attrEqual(v, a.Default)) {
			continue
		}
		parts = append(parts, a.Name+"="+FormatAttr(v))
	}
	return strings.Join(parts, ", ")
}

func attrEqual(a, b any) bool {
	switch x := a.(type) {
	case []int:
		y, ok := b.([]int)
		return ok && ShapeEqual(x, y)
	}
	return a == b
}

// FormatAttr prints an attribute value: 3, 0.17, true, [1,7], "s". Floats use
// the shortest representation that parses back to the same float64 and always
// contain '.', 'e' or "Inf"/"NaN" so that they read back as floats.
func FormatAttr(v any) string {
	switch x := v.(type) {
	case int:
		return strconv.Itoa(x)
	case float64:
		s := strconv.FormatFloat(x, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eIN") {
			s += ".0"
		}
		return s
	case bool:
		return strconv.FormatBool(x)
	case string:
		return strconv.Quote(x)
	case []int:
		parts := make([]string, len(x))
		for i, d := range x {
			parts[i] = strconv.Itoa(d)
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprintf("%v", v)
}

func quoteIdent(s string) string {
	if s == "" {
		return `""`
	}
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return strconv.Quote(s)
		}
	}
	return s
}
