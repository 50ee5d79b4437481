package tests

import (
	"testing"

	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
)

// TestPipelinePrefixes runs every prefix of the inference pipeline on the
// three networks (procedural weights, reduced 3x75x75 input, batch 2) and
// checks that the interpreter's output on the transformed graph equals the
// unoptimized graph's within 1e-5 x max|reference|. Every target layout is
// covered for the full pipeline.
func TestPipelinePrefixes(t *testing.T) {
	const tol = 1e-5
	for _, net := range networks {
		t.Run(net, func(t *testing.T) {
			g := loadNet(t, net, 2, []int{3, 75, 75})
			params := procedural(t, g)
			x, err := tensor.Generate("input", g.Inputs()[0].Type.Shape)
			if err != nil {
				t.Fatal(err)
			}
			in := map[string]*tensor.Tensor{g.Inputs()[0].Name: x}
			ref, err := interp.Run(g, params, in, interp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			check := func(name string, target passes.Target) {
				s, err := passes.Run(g, passes.Options{Target: target, VerifyEach: true, StopAfter: name})
				if err != nil {
					t.Fatal(err)
				}
				got, err := interp.Run(s.Graph, params, in, interp.Options{})
				if err != nil {
					t.Fatalf("after %s (%s): %v", name, target.Name, err)
				}
				rel := compare(t, net+" after "+name+" ("+target.Name+")", got.Outputs[0], ref.Outputs[0], tol)
				t.Logf("after %-20s %-6s max|diff|/max|ref| = %.2e", name, target.Name, rel)
			}
			for _, p := range passes.Pipeline() {
				check(p.Name, passes.Targets[0])
			}
			for _, target := range passes.Targets[1:] {
				check("plan-buffers", target)
			}
		})
	}
}
