package tests

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

// TestRoundTrip checks Parse(Print(g)) == g for every network, before and
// after the full inference pipeline.
func TestRoundTrip(t *testing.T) {
	for _, net := range append(networks, "tiny") {
		g := loadNet(t, net, 2, nil)
		s, err := passes.Run(g, passes.Options{VerifyEach: true})
		if err != nil {
			t.Fatal(err)
		}
		for stage, gr := range map[string]*ir.Graph{"elaborated": g, "optimized": s.Graph} {
			back, err := ir.Parse(net+".ir", gr.String())
			if err != nil {
				t.Fatalf("%s %s: %v", net, stage, err)
			}
			if d := cmp.Diff(gr, back); d != "" {
				t.Fatalf("%s %s: round trip differs:\n%s", net, stage, d)
			}
		}
	}
}
