package ir

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// smallGraph builds conv-bn-relu, a residual add with scale, concat, pools and a
// dense head: every op of the table at least once.
func smallGraph(t testing.TB) *Graph {
	g := &Graph{Name: "small"}
	pos := func(l int) Pos { return Pos{File: "small.kiln", Line: l, Col: 3} }
	add := func(n *Node) int {
		id, err := g.Add(n)
		if err != nil {
			t.Fatalf("add %s: %v", n.Op, err)
		}
		return id
	}
	param := func(name string, buffer bool, shape ...int) int {
		return add(&Node{Op: OpParam, Name: name, Attrs: Attrs{"buffer": buffer}, Type: Type{DType: F32, Shape: shape}, Pos: pos(2)})
	}
	x := add(&Node{Op: OpInput, Name: "image", Type: Type{DType: F32, Shape: []int{2, 3, 9, 7}}, Pos: pos(1)})
	w := param("c.conv.weight", false, 8, 3, 3, 3)
	c := add(&Node{Op: OpConv2D, Name: "c.conv", Args: []int{x, w}, Attrs: Attrs{"pad": []int{1, 1}}, Pos: pos(3)})
	bn := add(&Node{Op: OpBatchNorm, Name: "c.bn", Args: []int{c, param("c.bn.weight", false, 8), param("c.bn.bias", false, 8),
		param("c.bn.running_mean", true, 8), param("c.bn.running_var", true, 8)}, Attrs: Attrs{"eps": 0.001}, Pos: pos(4)})
	r := add(&Node{Op: OpReLU, Name: "c", Args: []int{bn}, Pos: pos(5)})
	up := add(&Node{Op: OpConv2D, Name: "up", Args: []int{r, param("up.weight", false, 8, 8, 1, 1), param("up.bias", false, 8)}, Pos: pos(6)})
	s := add(&Node{Op: OpMul, Args: []int{up}, Attrs: Attrs{"c": 0.17}, Pos: pos(7)})
	sum := add(&Node{Op: OpAdd, Args: []int{r, s}, Pos: pos(7)})
	mp := add(&Node{Op: OpMaxPool, Name: "mp", Args: []int{sum}, Attrs: Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}}, Pos: pos(8)})
	ap := add(&Node{Op: OpAvgPool, Name: "ap", Args: []int{sum}, Attrs: Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "count_include_pad": false}, Pos: pos(9)})
	cat := add(&Node{Op: OpConcat, Args: []int{mp, ap}, Pos: pos(10)})
	gp := add(&Node{Op: OpGlobalAvgPool, Args: []int{cat}, Pos: pos(11)})
	fl := add(&Node{Op: OpFlatten, Args: []int{gp}, Pos: pos(11)})
	dr := add(&Node{Op: OpDropout, Args: []int{fl}, Attrs: Attrs{"p": 0.2}, Pos: pos(12)})
	fc := add(&Node{Op: OpDense, Name: "fc", Args: []int{dr, param("fc.weight", false, 10, 16), param("fc.bias", false, 10)}, Pos: pos(13)})
	sm := add(&Node{Op: OpSoftmax, Args: []int{fc}})
	g.Outputs = []int{sm}
	g.SetMark("c", r)
	g.SetMark("fc", fc)
	return g
}

func TestShapes(t *testing.T) {
	g := smallGraph(t)
	want := map[string][]int{"c": {2, 8, 9, 7}, "mp": {2, 8, 4, 3}, "ap": {2, 8, 4, 3}, "fc": {2, 10}}
	for _, n := range g.Nodes {
		if w, ok := want[n.Name]; ok && !ShapeEqual(n.Type.Shape, w) {
			t.Errorf("%s: shape %v, want %v", n.Name, n.Type.Shape, w)
		}
	}
	if err := g.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	g := smallGraph(t)
	text := g.String()
	back, err := Parse("small.ir", text)
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

func TestAddErrors(t *testing.T) {
	in := func(shape ...int) *Node {
		return &Node{Op: OpInput, Name: "x", Type: Type{DType: F32, Shape: shape}}
	}
	tests := []struct {
		name  string
		build func(g *Graph) *Node
		want  string
	}{
		{"unknown op", func(g *Graph) *Node { return &Node{Op: "frobnicate"} }, `unknown op "frobnicate"`},
		{"add mismatch", func(g *Graph) *Node {
			a := g.MustAdd(in(1, 3, 4, 4))
			b := g.MustAdd(&Node{Op: OpInput, Name: "y", Type: Type{DType: F32, Shape: []int{1, 3, 5, 4}}})
			return &Node{Op: OpAdd, Args: []int{a, b}}
		}, "shapes differ: 1x3x4x4 and 1x3x5x4"},
		{"concat mismatch", func(g *Graph) *Node {
			a := g.MustAdd(in(1, 3, 4, 4))
			b := g.MustAdd(&Node{Op: OpInput, Name: "y", Type: Type{DType: F32, Shape: []int{1, 3, 5, 4}}})
			return &Node{Op: OpConcat, Args: []int{a, b}}
		}, "may differ only in axis 1"},
		{"zero dim", func(g *Graph) *Node { return in(1, 0, 4) }, "non-positive dimension"},
		{"conv channels", func(g *Graph) *Node {
			a := g.MustAdd(in(1, 3, 4, 4))
			w := g.MustAdd(&Node{Op: OpParam, Name: "w", Type: Type{DType: F32, Shape: []int{8, 4, 3, 3}}})
			return &Node{Op: OpConv2D, Args: []int{a, w}}
		}, "expects 4 input channels per group, input has 3"},
		{"conv too big", func(g *Graph) *Node {
			a := g.MustAdd(in(1, 3, 2, 2))
			w := g.MustAdd(&Node{Op: OpParam, Name: "w", Type: Type{DType: F32, Shape: []int{8, 3, 3, 3}}})
			return &Node{Op: OpConv2D, Args: []int{a, w}}
		}, "does not fit input"},
		{"bad stride", func(g *Graph) *Node {
			a := g.MustAdd(in(1, 3, 4, 4))
			return &Node{Op: OpMaxPool, Args: []int{a}, Attrs: Attrs{"kernel": []int{3, 3}, "stride": []int{0, 1}}}
		}, "must be positive"},
		{"arity", func(g *Graph) *Node {
			a := g.MustAdd(in(1, 3, 4, 4))
			return &Node{Op: OpAdd, Args: []int{a}}
		}, "want 2 operands"},
		{"forward ref", func(g *Graph) *Node { return &Node{Op: OpReLU, Args: []int{3}} }, "not an earlier node"},
		{"attr kind", func(g *Graph) *Node {
			a := g.MustAdd(in(1, 3, 4, 4))
			return &Node{Op: OpMul, Args: []int{a}, Attrs: Attrs{"c": 2}}
		}, "want float"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &Graph{}
			n := tc.build(g)
			n.Pos = Pos{File: "f.kiln", Line: 7, Col: 9}
			_, err := g.Add(n)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "f.kiln:7:9: ") {
				t.Fatalf("error %v, want f.kiln:7:9: ...%s", err, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	good := smallGraph(t).String()
	tests := []struct{ name, src, want string }{
		{"empty", "", "expected \"graph\""},
		{"sequence", strings.Replace(good, "%1 =", "%2 =", 1), "out of sequence"},
		{"type", strings.Replace(good, "f32[2,8,9,7]", "f32[2,8,9,8]", 1), "differs from inferred"},
		{"unknown op", strings.Replace(good, "= relu", "= relux", 1), `unknown op "relux"`},
		{"attr", strings.Replace(good, "eps=0.001", "epsilon=0.001", 1), `no attribute "epsilon"`},
		{"trailing", good + "x", "after graph"},
		{"truncated", good[:len(good)/2], "small.ir:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("small.ir", tc.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDOT(t *testing.T) {
	var b strings.Builder
	if err := WriteDOT(&b, smallGraph(t)); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	for _, want := range []string{`digraph "small"`, "conv2d", "params 8x3x3x3", "n0 -> n2;"} {
		if !strings.Contains(s, want) {
			t.Errorf("DOT lacks %q:\n%s", want, s)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(smallGraph(f).String())
	f.Add("graph g {\n  %0 = input \"x\" : f32[1,2]\n  return %0\n}\n")
	f.Fuzz(func(t *testing.T, src string) {
		g, err := Parse("fuzz.ir", src)
		if err != nil {
			return
		}
		// Whatever parses must print and parse back to the same graph.
		back, err := Parse("fuzz.ir", g.String())
		if err != nil {
			t.Fatalf("reparse: %v\n%s", err, g.String())
		}
		if d := cmp.Diff(g, back); d != "" {
			t.Fatalf("round trip differs:\n%s", d)
		}
	})
}
