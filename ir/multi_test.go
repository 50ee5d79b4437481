package ir

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// trainBNGraph is one training-mode BatchNorm step: y = relu(bn_train(x)),
// running_mean ← 0.9·running_mean + 0.1·batch mean, running_var likewise.
func trainBNGraph(t testing.TB) *Graph {
	g := &Graph{Name: "bn_train"}
	pos := func(l int) Pos { return Pos{File: "bn.kiln", Line: l, Col: 5} }
	add := func(n *Node) int {
		id, err := g.Add(n)
		if err != nil {
			t.Fatalf("add %s: %v", n.Op, err)
		}
		return id
	}
	param := func(name string, buffer bool) int {
		return add(&Node{Op: OpParam, Name: name, Attrs: Attrs{"buffer": buffer}, Type: Type{DType: F32, Shape: []int{3}}, Pos: pos(2)})
	}
	x := add(&Node{Op: OpInput, Name: "x", Type: Type{DType: F32, Shape: []int{2, 3, 4, 5}}, Pos: pos(1)})
	w, b, rm, rv := param("bn.weight", false), param("bn.bias", false), param("bn.running_mean", true), param("bn.running_var", true)
	bn := add(&Node{Op: OpBatchNormTrain, Name: "bn", Args: []int{x, w, b}, Attrs: Attrs{"eps": 1e-3}, Pos: pos(3)})
	y := add(&Node{Op: OpResult, Args: []int{bn}, Attrs: Attrs{"index": 0}, Pos: pos(3)})
	mean := add(&Node{Op: OpResult, Args: []int{bn}, Attrs: Attrs{"index": 1}, Pos: pos(3)})
	vr := add(&Node{Op: OpResult, Args: []int{bn}, Attrs: Attrs{"index": 2}, Pos: pos(3)})
	ema := func(old, batch int) int {
		return add(&Node{Op: OpAdd, Args: []int{
			add(&Node{Op: OpMul, Args: []int{old}, Attrs: Attrs{"c": 0.9}, Pos: pos(4)}),
			add(&Node{Op: OpMul, Args: []int{batch}, Attrs: Attrs{"c": 0.1}, Pos: pos(4)})}, Pos: pos(4)})
	}
	newMean, newVar := ema(rm, mean), ema(rv, vr)
	out := add(&Node{Op: OpReLU, Args: []int{y}, Pos: pos(5)})
	g.Outputs = []int{out}
	g.Updates = []Update{{Param: rm, Value: newMean}, {Param: rv, Value: newVar}}
	return g
}

func TestMultiResultTypes(t *testing.T) {
	g := trainBNGraph(t)
	if err := g.Verify(); err != nil {
		t.Fatal(err)
	}
	bn := g.Nodes[5]
	want := []Type{{DType: F32, Shape: []int{2, 3, 4, 5}}, {DType: F32, Shape: []int{3}}, {DType: F32, Shape: []int{3}}}
	if diff := cmp.Diff(want, bn.Results); diff != "" {
		t.Errorf("batchnorm_train results (-want +got):\n%s", diff)
	}
	if bn.Type.DType != 0 || len(bn.Type.Shape) != 0 {
		t.Errorf("a multi-result node has type %s, want the zero type", bn.Type)
	}
	for i, want := range map[int][]int{6: {2, 3, 4, 5}, 7: {3}, 8: {3}} {
		if got := g.Nodes[i].Type.Shape; !ShapeEqual(got, want) {
			t.Errorf("result %%%d shape %v, want %v", i, got, want)
		}
	}
	if !g.Mutable(3) || !g.Mutable(4) || g.Mutable(1) {
		t.Error("Mutable: want the running statistics (and only them) mutable")
	}
}

// TestMultiResultRoundTrip prints and parses a graph with a multi-result node
// and updates; the result must equal the original field for field.
func TestMultiResultRoundTrip(t *testing.T) {
	g := trainBNGraph(t)
	text := g.String()
	for _, s := range []string{
		`%5 = batchnorm_train "bn" (%0, %1, %2) {eps=0.001} : (f32[2,3,4,5], f32[3], f32[3])`,
		`%7 = result (%5) {index=1} : f32[3]`,
		"update %3 %11",
		"update %4 %14",
	} {
		if !strings.Contains(text, s) {
			t.Errorf("printed graph lacks %q:\n%s", s, text)
		}
	}
	back, err := Parse("bn.ir", text)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, text)
	}
	if diff := cmp.Diff(g, back); diff != "" {
		t.Errorf("round trip (-printed +parsed):\n%s", diff)
	}
}

// TestMultiResultRules mutates the graph, one rule at a time, and expects
// Verify (or Parse) to reject it with the rule's message.
func TestMultiResultRules(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(g *Graph)
		want   string
	}{
		{"tuple used as an operand", func(g *Graph) { g.Nodes[15].Args[0] = 5 }, "operand 0 (%5, batchnorm_train) has 3 results; select one with result"},
		{"tuple returned", func(g *Graph) { g.Outputs = []int{5} }, "output %5 (batchnorm_train) has 3 results"},
		{"tuple marked", func(g *Graph) { g.SetMark("bn", 5) }, `mark "bn" refers to %5, which has several results`},
		{"index out of range", func(g *Graph) { g.Nodes[7].Attrs["index"] = 3 }, "index 3 out of range: %5 (batchnorm_train) has 3 results"},
		{"result of a single-result op", func(g *Graph) { g.Nodes[7].Args[0] = 4 }, "has a single result; result selects from multi-result ops only"},
		{"recorded result type", func(g *Graph) { g.Nodes[5].Results[1].Shape = []int{4} }, "recorded result 1 type f32[4] differs from inferred f32[3]"},
		{"update of a non-param", func(g *Graph) { g.Updates[0].Param = 0 }, "%0 is a input, only params are mutable"},
		{"update twice", func(g *Graph) { g.Updates[1].Param = 3 }, `param "bn.running_mean" (%3) is updated twice`},
		{"update type", func(g *Graph) { g.Updates[0].Value = 6 }, "value %6 has type f32[2,3,4,5], want the param's f32[3]"},
		{"update of a tuple", func(g *Graph) { g.Updates[0].Value = 5 }, "%5 has 3 results"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := trainBNGraph(t)
			c.mutate(g)
			err := g.Verify()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Verify = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestMultiResultParseErrors(t *testing.T) {
	g := trainBNGraph(t)
	text := g.String()
	for _, c := range []struct{ from, to, want string }{
		{"(f32[2,3,4,5], f32[3], f32[3])", "(f32[2,3,4,5], f32[3])", "printed 2 result types, batchnorm_train has 3 results"},
		{"(f32[2,3,4,5], f32[3], f32[3])", "(f32[2,3,4,5])", "a result tuple needs at least two types"},
		{"update %3 %11", "update %3 %99", "update of undefined node"},
	} {
		bad := strings.Replace(text, c.from, c.to, 1)
		if _, err := Parse("bn.ir", bad); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s -> %s: Parse = %v, want %q", c.from, c.to, err, c.want)
		}
	}
}
