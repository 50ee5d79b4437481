package passes

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// TestVerifierRules takes tiny after the whole pipeline (a valid blocked
// graph), mutates one operand's layout or dtype per case, and expects
// ir.Verify to reject it with the rule's message naming the node (%N op)
// and its source position. One case per operand rule of the op table.
func TestVerifierRules(t *testing.T) {
	base := runPrefix(t, load(t, "tiny", 1, nil), Targets[0], "plan-buffers").Graph
	if err := base.Verify(); err != nil {
		t.Fatalf("tiny after the pipeline does not verify: %v", err)
	}
	act, wl := ActivationLayout(Targets[0].Block), WeightLayout(Targets[0].Block)
	// find returns the first node for which ok holds.
	find := func(t *testing.T, g *ir.Graph, ok func(i int, n *ir.Node) bool) int {
		t.Helper()
		for i, n := range g.Nodes {
			if ok(i, n) {
				return i
			}
		}
		t.Fatal("no node to mutate")
		return -1
	}
	isConv := func(g *ir.Graph) func(int, *ir.Node) bool {
		return func(_ int, n *ir.Node) bool {
			return n.Op == ir.OpFusedConv && n.Type.Layout == act && g.Nodes[n.Args[0]].Op != ir.OpInput
		}
	}
	cases := []struct {
		name string
		// mutate changes g and returns the node whose rule must fire and
		// the message expected after "%N op: ".
		mutate func(t *testing.T, g *ir.Graph) (int, string)
	}{
		{"fused_conv residual plain (issue 8's example)", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool { return n.Op == ir.OpFusedConv && n.Attrs.Bool("residual") })
			_, r, _ := ir.FusedConvOperands(g.Nodes[i])
			res := g.Nodes[i].Args[r]
			g.Nodes[res].Type.Layout = ir.Plain
			return i, fmt.Sprintf("residual (operand %d, %%%d) has layout plain, want %s (the result's)", r, res, act)
		}},
		{"fused_conv input plain but not a network input", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, isConv(g))
			x := g.Nodes[i].Args[0]
			g.Nodes[x].Type.Layout = ir.Plain
			return i, fmt.Sprintf("x (operand 0, %%%d) has layout plain, want %s (the result's); only a network input may be read as plain NCHW", x, act)
		}},
		{"fused_conv weight packed with another block", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, isConv(g))
			w := g.Nodes[i].Args[1]
			other := ir.OIhwIiOo(Targets[0].Block / 2)
			g.Nodes[w].Type.Layout = other
			g.Nodes[w].Attrs["layout"] = other.String()
			return i, fmt.Sprintf("weight (operand 1, %%%d) has layout %s, want %s (packed with the result's block)", w, other, wl)
		}},
		{"fused_conv weight not packed", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, isConv(g))
			w := g.Nodes[g.Nodes[i].Args[1]].Args[0] // the pack_weight's operand
			g.Nodes[i].Args[1] = w
			return i, fmt.Sprintf("weight (operand 1, %%%d) has layout plain, want %s", w, wl)
		}},
		{"fused_conv into destination plain", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool { return n.Op == ir.OpFusedConv && n.Attrs.Bool("into") })
			_, _, k := ir.FusedConvOperands(g.Nodes[i])
			d := g.Nodes[i].Args[k]
			g.Nodes[d].Type.Layout = ir.Plain
			return i, fmt.Sprintf("into (operand %d, %%%d) has layout plain, want %s (the result's)", k, d, act)
		}},
		{"pool reads another layout than it writes", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool {
				return n.Op == ir.OpMaxPool && n.Type.Layout == act && g.Nodes[n.Args[0]].Op == ir.OpFusedConv
			})
			x := g.Nodes[i].Args[0]
			g.Nodes[x].Type.Layout = ir.Plain
			return i, fmt.Sprintf("x (operand 0, %%%d) has layout plain, want %s (the result's)", x, act)
		}},
		{"flatten of a blocked value", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool { return n.Op == ir.OpFlatten })
			r := g.Nodes[i].Args[0] // the reorder to plain
			g.Nodes[i].Args[0] = g.Nodes[r].Args[0]
			return i, fmt.Sprintf("x (operand 0, %%%d) has layout %s, want plain", g.Nodes[r].Args[0], act)
		}},
		{"reorder to a weight layout", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool { return n.Op == ir.OpReorder && n.Type.Rank() == 4 })
			g.Nodes[i].Type.Layout = wl
			g.Nodes[i].Attrs["layout"] = wl.String()
			return i, fmt.Sprintf("layout %s is not an activation layout (plain or NCHW{B}c)", wl)
		}},
		{"pack_weight to an activation layout", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool { return n.Op == ir.OpPackWeight })
			g.Nodes[i].Type.Layout = act
			g.Nodes[i].Attrs["layout"] = act.String()
			return i, fmt.Sprintf("layout %s is not a weight layout (OIhw{B}i{B}o)", act)
		}},
		{"dense weight in bf16", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool { return n.Op == ir.OpDense })
			w := g.Nodes[i].Args[1]
			g.Nodes[w].Type.DType = ir.BF16
			return i, fmt.Sprintf("weight (operand 1, %%%d) has dtype bf16, the result f32: operands must share one dtype", w)
		}},
		{"fused_conv bias in f16", func(t *testing.T, g *ir.Graph) (int, string) {
			i := find(t, g, func(_ int, n *ir.Node) bool { return n.Op == ir.OpFusedConv && n.Attrs.Bool("bias") })
			b, _, _ := ir.FusedConvOperands(g.Nodes[i])
			v := g.Nodes[i].Args[b]
			g.Nodes[v].Type.DType = ir.F16
			return i, fmt.Sprintf("bias (operand %d, %%%d) has dtype f16, the result f32", b, v)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := Clone(base)
			i, msg := c.mutate(t, g)
			n := g.Nodes[i]
			want := fmt.Sprintf("%s: %%%d %s: %s", n.Pos, i, n.Op, msg)
			err := g.Verify()
			if err == nil {
				t.Fatalf("Verify accepted the mutated graph; want %q", want)
			}
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("Verify error\n%v\ndoes not contain\n%s", err, want)
			}
			if !n.Pos.IsValid() {
				t.Errorf("node %%%d has no source position", i)
			}
		})
	}
}

// TestPlanCheckRejectsLayoutMismatch is issue 8's example end to end: a
// fused_conv with NCHW16c input and output reading a plain residual, which
// Plan.Check used to accept; now it refuses the plan of such a graph,
// naming the operand.
func TestPlanCheckRejectsLayoutMismatch(t *testing.T) {
	s := runPrefix(t, load(t, "tiny", 1, nil), Targets[0], "plan-buffers")
	if err := s.Plan.Check(s.Graph); err != nil {
		t.Fatalf("valid plan refused: %v", err)
	}
	for _, n := range s.Graph.Nodes {
		if n.Op == ir.OpFusedConv && n.Attrs.Bool("residual") {
			_, r, _ := ir.FusedConvOperands(n)
			s.Graph.Nodes[n.Args[r]].Type.Layout = ir.Plain
			err := s.Plan.Check(s.Graph)
			if err == nil || !strings.Contains(err.Error(), "plan of an invalid graph") || !strings.Contains(err.Error(), "residual (operand") {
				t.Fatalf("Plan.Check = %v, want the residual's layout named", err)
			}
			return
		}
	}
	t.Fatal("tiny has no fused_conv with a residual")
}
