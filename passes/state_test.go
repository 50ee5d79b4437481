package passes

import (
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// stateGraph is conv → BatchNorm → relu whose BatchNorm running mean is
// mutable state: the graph updates it with a value nothing else uses.
func stateGraph(t *testing.T) (g *ir.Graph, mean int) {
	g = &ir.Graph{Name: "state"}
	p := func(name string, shape ...int) int {
		return g.MustAdd(&ir.Node{Op: ir.OpParam, Name: name, Type: ir.Type{DType: ir.F32, Shape: shape}})
	}
	x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.F32, Shape: []int{1, 16, 8, 8}}})
	c := g.MustAdd(&ir.Node{Op: ir.OpConv2D, Name: "conv", Args: []int{x, p("conv.weight", 16, 16, 3, 3)}, Attrs: ir.Attrs{"pad": []int{1, 1}}})
	gm, bt := p("bn.weight", 16), p("bn.bias", 16)
	mean = p("bn.running_mean", 16)
	bn := g.MustAdd(&ir.Node{Op: ir.OpBatchNorm, Name: "bn", Args: []int{c, gm, bt, mean, p("bn.running_var", 16)}})
	r := g.MustAdd(&ir.Node{Op: ir.OpReLU, Args: []int{bn}})
	upd := g.MustAdd(&ir.Node{Op: ir.OpMul, Args: []int{mean}, Attrs: ir.Attrs{"c": 0.5}})
	g.Outputs = []int{r}
	g.Updates = []ir.Update{{Param: mean, Value: upd}}
	return g, mean
}

// TestMutableState checks how passes treat mutable params: nothing computed
// from them is a build-time value, fold-bn leaves their BatchNorm alone, and
// DCE keeps update values (which no output needs) alive.
func TestMutableState(t *testing.T) {
	g, mean := stateGraph(t)
	bt := BuildTime(g)
	if bt[mean] || !bt[mean-2] {
		t.Errorf("BuildTime: running_mean (mutable) = %v, bn.weight (constant) = %v; want false, true", bt[mean], bt[mean-2])
	}
	s, err := Run(g, Options{StopAfter: "dce"})
	if err != nil {
		t.Fatal(err)
	}
	out := s.Graph
	if err := out.Verify(); err != nil {
		t.Fatal(err)
	}
	if c := OpCounts(out); c[ir.OpBatchNorm] != 1 || c[ir.OpFoldBNWeight] != 0 {
		t.Errorf("fold-bn folded a BatchNorm with mutable statistics: %v", c)
	}
	if len(out.Updates) != 1 {
		t.Fatalf("updates after the pipeline: %v", out.Updates)
	}
	u := out.Updates[0]
	if out.Nodes[u.Param].Name != "bn.running_mean" || out.Nodes[u.Value].Op != ir.OpMul {
		t.Errorf("update lost by the rewrites: %%%d %s <- %%%d %s", u.Param, out.Nodes[u.Param].Name, u.Value, out.Nodes[u.Value].Op)
	}

	// Without the update the same graph folds.
	g2, _ := stateGraph(t)
	g2.Updates = nil
	s2, err := Run(g2, Options{StopAfter: "dce"})
	if err != nil {
		t.Fatal(err)
	}
	if c := OpCounts(s2.Graph); c[ir.OpBatchNorm] != 0 {
		t.Errorf("constant BatchNorm not folded: %v", c)
	}
}

// TestMultiResultPlan runs the whole pipeline over a graph with a
// multi-result node: the layout pass keeps its operands and results plain
// (blocked readers reorder), the tuple gets no buffer, and each result's
// buffer is live from the producer, so the kernel that will write all results
// at once cannot clobber a live value.
func TestMultiResultPlan(t *testing.T) {
	g := &ir.Graph{Name: "multi"}
	p := func(name string, shape ...int) int {
		return g.MustAdd(&ir.Node{Op: ir.OpParam, Name: name, Type: ir.Type{DType: ir.F32, Shape: shape}})
	}
	x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.F32, Shape: []int{2, 16, 8, 8}}})
	c := g.MustAdd(&ir.Node{Op: ir.OpConv2D, Name: "conv", Args: []int{x, p("conv.weight", 16, 16, 3, 3)}, Attrs: ir.Attrs{"pad": []int{1, 1}}})
	bn := g.MustAdd(&ir.Node{Op: ir.OpBatchNormTrain, Args: []int{c, p("g", 16), p("b", 16)}})
	y := g.MustAdd(&ir.Node{Op: ir.OpResult, Args: []int{bn}, Attrs: ir.Attrs{"index": 0}})
	m := g.MustAdd(&ir.Node{Op: ir.OpResult, Args: []int{bn}, Attrs: ir.Attrs{"index": 1}})
	r := g.MustAdd(&ir.Node{Op: ir.OpReLU, Args: []int{y}})
	g.Outputs = []int{r, m}
	s, err := Run(g, Options{VerifyEach: true})
	if err != nil {
		t.Fatal(err)
	}
	out, plan := s.Graph, s.Plan
	tuples := 0
	for i, n := range out.Nodes {
		switch {
		case n.IsMulti():
			tuples++
			if plan.BufferOf[i] >= 0 {
				t.Errorf("tuple %%%d has buffer %d", i, plan.BufferOf[i])
			}
			for _, a := range n.Args {
				if !out.Nodes[a].Type.Layout.IsPlain() {
					t.Errorf("%s reads blocked %%%d", n.Op, a)
				}
			}
		case n.Op == ir.OpResult:
			if b := plan.Buffers[plan.BufferOf[i]]; b.Start > n.Args[0] {
				t.Errorf("result %%%d buffer live from %d, producer at %d", i, b.Start, n.Args[0])
			}
		}
	}
	if tuples != 1 {
		t.Fatalf("%d multi-result nodes after the pipeline, want 1", tuples)
	}
	// The check catches a result buffer that starts too late.
	for i, n := range out.Nodes {
		if n.Op == ir.OpResult {
			plan.Buffers[plan.BufferOf[i]].Start = i
			if err := plan.Check(out); err == nil {
				t.Error("Plan.Check accepted a result buffer live only from the result node")
			}
			break
		}
	}
}

// TestTrainingPlanLiveness checks the liveness rules a training step needs:
// an update's new value stays live to the end (it is read after the run,
// like an output), and inputs and params, written before the run, are live
// from the first step, so no kernel can overwrite them early.
func TestTrainingPlanLiveness(t *testing.T) {
	g, _ := stateGraph(t)
	s, err := RunTraining(g, Options{})
	if err != nil {
		t.Fatal(err)
	}
	out, p := s.Graph, s.Plan
	if err := p.Check(out); err != nil {
		t.Fatal(err)
	}
	last := len(out.Nodes) - 1
	for _, u := range out.Updates {
		if b := p.Buffers[p.BufferOf[u.Value]]; b.End != last {
			t.Errorf("update value %%%d live to %d, want the end (%d)", u.Value, b.End, last)
		}
	}
	for i, n := range out.Nodes {
		if (n.Op == ir.OpInput || n.Op == ir.OpParam) && p.BufferOf[i] >= 0 {
			if b := p.Buffers[p.BufferOf[i]]; b.Start != 0 {
				t.Errorf("%s %s live from step %d, want 0", n.Op, n.Name, b.Start)
			}
		}
	}
}
