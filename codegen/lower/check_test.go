package lower

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

var x86 = []codegen.Target{codegen.AVX512, codegen.AVX2}

// pipeline loads net and runs the whole pipeline for the AVX-512 target.
func pipeline(t *testing.T, net string) *passes.State {
	t.Helper()
	g, err := dsl.LoadFile(net+".kiln", dsl.Options{Batch: 1, FS: archs.FS})
	if err != nil {
		t.Fatal(err)
	}
	s, err := passes.Run(g, passes.Options{Target: passes.Targets[0]})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCheckNetworks: the three networks and tiny pass Check (no weights, no
// LLVM) for the x86-64 targets.
func TestCheckNetworks(t *testing.T) {
	for _, net := range []string{"tiny", "inception_v4", "inception_resnet_v1", "inception_resnet_v2"} {
		t.Run(net, func(t *testing.T) {
			if err := Check(pipeline(t, net), x86); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// bf16Net is a consistent bf16 graph: it verifies and plans, but no bf16
// kernels exist yet.
func bf16Net() *passes.State {
	g := &ir.Graph{Name: "bf16"}
	pos := ir.Pos{File: "bf16.kiln", Line: 3, Col: 5}
	x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.BF16, Shape: []int{1, 16, 4, 4}}, Pos: pos})
	r := g.MustAdd(&ir.Node{Op: ir.OpReorder, Args: []int{x}, Attrs: ir.Attrs{"layout": "NCHW16c"}, Pos: pos})
	p := g.MustAdd(&ir.Node{Op: ir.OpMaxPool, Args: []int{r}, Attrs: ir.Attrs{"kernel": []int{2, 2}}, Pos: pos})
	g.Outputs = []int{g.MustAdd(&ir.Node{Op: ir.OpReorder, Args: []int{p}, Pos: pos})}
	return &passes.State{Graph: g, Plan: passes.MakePlan(g)}
}

// TestCheckFailures: Check refuses what Lower refuses, with the same
// positioned message (the code is shared).
func TestCheckFailures(t *testing.T) {
	tiny := pipeline(t, "tiny")
	cases := []struct {
		name    string
		state   func() *passes.State
		targets []codegen.Target
		want    string
	}{
		{"bf16 kernels", bf16Net, x86, `bf16.kiln:3:5: codegen: bf16 kernels not implemented yet (input "x" is bf16[1,16,4,4])`},
		{"no plan", func() *passes.State { return &passes.State{Graph: tiny.Graph} }, x86, "has no memory plan"},
		{"block of another target", func() *passes.State { return tiny }, []codegen.Target{codegen.NEON},
			"but the target's kernels use NCHW4c (run the pipeline for this target)"},
		{"mismatched layouts (issue 8's example)", func() *passes.State {
			g := passes.Clone(tiny.Graph)
			for _, n := range g.Nodes {
				if n.Op == ir.OpFusedConv && n.Attrs.Bool("residual") {
					_, r, _ := ir.FusedConvOperands(n)
					g.Nodes[n.Args[r]].Type.Layout = ir.Plain
					break
				}
			}
			return &passes.State{Graph: g, Plan: passes.MakePlan(g)}
		}, x86, "has layout plain, want NCHW16c (the result's)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Check(c.state(), c.targets)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Check: got %v, want %q", err, c.want)
			}
			_, lerr := Lower(c.state(), nil, c.targets)
			if lerr == nil || lerr.Error() != err.Error() {
				t.Fatalf("Lower: got %v, Check said %v", lerr, err)
			}
		})
	}
}
