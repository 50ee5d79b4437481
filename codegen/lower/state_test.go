package lower

import (
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// TestMutableStateCompiled compiles a graph with a mutable parameter, an
// accumulator s' = conv(x, w) + s (the residual fused into the conv, s kept
// in the plain layout and reordered, its new value reordered back), and runs
// it three times: each run must read the state the previous one left, match
// the interpreter run with the same state within compiledTol, and
// Model.State / SetState must read and reset it.
func TestMutableStateCompiled(t *testing.T) {
	g := &ir.Graph{Name: "accumulator"}
	f32 := func(shape ...int) ir.Type { return ir.Type{DType: ir.F32, Shape: shape} }
	x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: f32(1, 16, 8, 8)})
	w := g.MustAdd(&ir.Node{Op: ir.OpParam, Name: "conv.weight", Type: f32(16, 16, 3, 3)})
	s := g.MustAdd(&ir.Node{Op: ir.OpParam, Name: "acc.running_mean", Attrs: ir.Attrs{"buffer": true}, Type: f32(1, 16, 8, 8)})
	c := g.MustAdd(&ir.Node{Op: ir.OpConv2D, Args: []int{x, w}, Attrs: ir.Attrs{"pad": []int{1, 1}}})
	y := g.MustAdd(&ir.Node{Op: ir.OpAdd, Args: []int{c, s}})
	g.Outputs = []int{y}
	g.Updates = []ir.Update{{Param: s, Value: y}}

	params, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	in, err := tensor.Generate("input", []int{1, 16, 8, 8})
	if err != nil {
		t.Fatal(err)
	}
	st, err := passes.Run(g, passes.Options{Target: passes.Targets[0], VerifyEach: true})
	if err != nil {
		t.Fatal(err)
	}
	a := build(t, st, params)
	if len(a.Manifest.State) != 1 || a.Manifest.State[0].Name != "acc.running_mean" {
		t.Fatalf("manifest state %+v, want acc", a.Manifest.State)
	}
	m, err := rt.Open(a.Artifact, rt.Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	ref := map[string]*tensor.Tensor{}
	for k, v := range params {
		ref[k] = v
	}
	var first *tensor.Tensor
	for run := 1; run <= 3; run++ {
		want, err := interp.Run(g, ref, map[string]*tensor.Tensor{"x": in}, interp.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ref["acc.running_mean"] = want.Updates["acc.running_mean"]
		got := tensor.New(1, 16, 8, 8)
		if err := m.Run(in.Data, got.Data); err != nil {
			t.Fatal(err)
		}
		if rel := relErr(t, got, want.Outputs[0]); !(rel <= compiledTol) {
			t.Fatalf("run %d: compiled differs from the interpreter by %.3g x max|ref|", run, rel)
		}
		if run == 1 {
			first = got
		}
		state, ok := m.State("acc.running_mean")
		if !ok {
			t.Fatal("Model.State: no acc")
		}
		if rel := relErr(t, &tensor.Tensor{Shape: got.Shape, Data: state}, want.Updates["acc.running_mean"]); !(rel <= compiledTol) {
			t.Fatalf("run %d: state differs from the interpreter's update by %.3g", run, rel)
		}
	}
	// Resetting the state replays the first run exactly.
	if err := m.SetState("acc.running_mean", params["acc.running_mean"].Data); err != nil {
		t.Fatal(err)
	}
	again := tensor.New(1, 16, 8, 8)
	if err := m.Run(in.Data, again.Data); err != nil {
		t.Fatal(err)
	}
	if d, _ := tensor.MaxAbsDiff(again, first); d != 0 {
		t.Errorf("after SetState the first run is not reproduced (max diff %g)", d)
	}
	if err := m.SetState("acc.running_mean", make([]float32, 3)); err == nil {
		t.Error("SetState with the wrong size succeeded")
	}
}
