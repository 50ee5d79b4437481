package ir

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// clipGraph is the gradient-clipping tail of a step graph over two
// gradients: sum_squares of each, global_norm_scale, scale_by, and a
// clip-by-value.
func clipGraph(t testing.TB) *Graph {
	g := &Graph{Name: "clip"}
	line := 0
	add := func(n *Node) int {
		line++
		n.Pos = Pos{File: "clip.kiln", Line: line, Col: 5}
		id, err := g.Add(n)
		if err != nil {
			t.Fatalf("add %s: %v", n.Op, err)
		}
		return id
	}
	a := add(&Node{Op: OpInput, Name: "a", Type: Type{DType: F32, Shape: []int{4, 3, 3, 3}}})
	b := add(&Node{Op: OpInput, Name: "b", Type: Type{DType: F32, Shape: []int{4}}})
	sa := add(&Node{Op: OpSumSquares, Args: []int{a}})
	sb := add(&Node{Op: OpSumSquares, Args: []int{b}})
	s := add(&Node{Op: OpGlobalNormScale, Args: []int{sa, sb}, Attrs: Attrs{"max_norm": 0.5}})
	ca := add(&Node{Op: OpScaleBy, Args: []int{a, s}})
	cb := add(&Node{Op: OpScaleBy, Args: []int{add(&Node{Op: OpClip, Args: []int{b}, Attrs: Attrs{"lo": -0.25, "hi": 0.25}}), s}})
	g.Outputs = []int{ca, cb, s}
	return g
}

// TestClipOpsRoundTrip prints and parses the clipping ops; the parsed graph
// must equal the original field for field (eps, at its default, is filled
// in and not printed).
func TestClipOpsRoundTrip(t *testing.T) {
	g := clipGraph(t)
	if err := g.Verify(); err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{OpSumSquares, OpGlobalNormScale, OpScaleBy} {
		if d := Lookup(op); d == nil || d.Doc == "" {
			t.Errorf("op %s is not registered with a Doc", op)
		}
	}
	text := g.String()
	for _, s := range []string{
		`%2 = sum_squares (%0) : f32[] loc("clip.kiln":3:5)`,
		`%4 = global_norm_scale (%2, %3) {max_norm=0.5} : f32[] loc("clip.kiln":5:5)`,
		`%5 = scale_by (%0, %4) : f32[4,3,3,3]`,
	} {
		if !strings.Contains(text, s) {
			t.Errorf("printed graph lacks %q", s)
		}
	}
	if eps := g.Nodes[4].Attrs.Float("eps"); eps != 1e-6 {
		t.Errorf("global_norm_scale eps = %v, want the default 1e-6", eps)
	}
	back, err := Parse("clip.ir", text)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, text)
	}
	if d := cmp.Diff(g, back); d != "" {
		t.Fatalf("round trip differs (-want +got):\n%s", d)
	}
	if back.String() != text {
		t.Fatal("second print differs")
	}
}

// TestClipOpErrors adds ill-formed clipping nodes and expects an error at
// the node's position naming the problem.
func TestClipOpErrors(t *testing.T) {
	in := func(name string, shape ...int) *Node {
		return &Node{Op: OpInput, Name: name, Type: Type{DType: F32, Shape: shape}}
	}
	cases := []struct {
		name  string
		args  []*Node
		op    string
		attrs Attrs
		want  string
	}{
		{"norm scale of a tensor", []*Node{in("s", 3)}, OpGlobalNormScale, Attrs{"max_norm": 1.0}, "operand 0 is f32[3], want one element"},
		{"norm scale without operands", nil, OpGlobalNormScale, Attrs{"max_norm": 1.0}, "want at least 1 operands"},
		{"max_norm missing", []*Node{in("s", 1)}, OpGlobalNormScale, nil, `global_norm_scale: missing attribute "max_norm"`},
		{"max_norm zero", []*Node{in("s", 1)}, OpGlobalNormScale, Attrs{"max_norm": 0.0}, "attribute max_norm: must be positive and finite, got 0"},
		{"max_norm negative", []*Node{in("s", 1)}, OpGlobalNormScale, Attrs{"max_norm": -1.0}, "must be positive and finite, got -1"},
		{"eps negative", []*Node{in("s", 1)}, OpGlobalNormScale, Attrs{"max_norm": 1.0, "eps": -1.0}, "attribute eps: must not be negative"},
		{"scale_by a vector", []*Node{in("x", 2, 3), in("s", 2)}, OpScaleBy, nil, "scale s is f32[2], want one element"},
		{"scale_by arity", []*Node{in("x", 2, 3)}, OpScaleBy, nil, "want 2 operands (x, s), got 1"},
		{"sum_squares arity", []*Node{in("x", 2), in("y", 2)}, OpSumSquares, nil, "want 1 operands (x), got 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := &Graph{Name: "bad"}
			var args []int
			for _, a := range c.args {
				id, err := g.Add(a)
				if err != nil {
					t.Fatal(err)
				}
				args = append(args, id)
			}
			_, err := g.Add(&Node{Op: c.op, Args: args, Attrs: c.attrs, Pos: Pos{File: "bad.kiln", Line: 2, Col: 7}})
			if err == nil {
				t.Fatalf("Add succeeded, want an error containing %q", c.want)
			}
			if !strings.HasPrefix(err.Error(), "bad.kiln:2:7: ") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Add = %q, want bad.kiln:2:7: ...%s", err, c.want)
			}
		})
	}
}
