package dsl

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// TestNetworkParamsOverride checks Options.Params: it replaces the
// defaults of the network's constant parameters (an integral value is an
// integer, so it can be a repeat count or a width), leaves the others at
// their defaults, and naming a parameter the network lacks is an error at
// the network's position.
func TestNetworkParamsOverride(t *testing.T) {
	src := `network n(x: f32[N, 3, 8, 8], k=1, w=4, s=1.0) -> f32[N, 10] {
    y = repeat k conv2d(x, w, 3, pad=1)
    z = s * y
    return dense(flatten(global_avgpool(z)), 10)
}
`
	convs := func(g *ir.Graph) (n, width int, scale float64) {
		for _, nd := range g.Nodes {
			switch nd.Op {
			case ir.OpConv2D:
				n++
				width = nd.Type.Shape[1]
			case ir.OpMul:
				scale = nd.Attrs.Float("c")
			}
		}
		return n, width, scale
	}
	for _, tc := range []struct {
		params map[string]float64
		n, w   int
		scale  float64
	}{
		{nil, 1, 4, 1},
		{map[string]float64{"k": 3}, 3, 4, 1},
		{map[string]float64{"w": 6, "s": 0.25}, 1, 6, 0.25},
	} {
		g, err := Load("n.kiln", []byte(src), Options{Params: tc.params})
		if err != nil {
			t.Fatalf("%v: %v", tc.params, err)
		}
		n, w, s := convs(g)
		if tc.scale == 1 && s == 0 {
			s = 1 // a multiplication by 1 may be elided
		}
		if n != tc.n || w != tc.w || s != tc.scale {
			t.Errorf("%v: %d convs of width %d, scale %v; want %d, %d, %v", tc.params, n, w, s, tc.n, tc.w, tc.scale)
		}
	}
	_, err := Load("n.kiln", []byte(src), Options{Params: map[string]float64{"depth": 2}})
	if err == nil || !strings.Contains(err.Error(), `no constant parameter "depth"`) || !strings.Contains(err.Error(), "n.kiln:1:") {
		t.Errorf("unknown parameter: got %v, want an error at n.kiln:1 naming it", err)
	}
}
