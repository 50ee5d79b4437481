package dsl

import (
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// TestExtBuiltins checks that each activation builtin and the tensor
// operators x - y and x * s elaborate to their IR op with the attributes
// the op table expects.
func TestExtBuiltins(t *testing.T) {
	tests := []struct {
		expr  string
		op    string
		attrs ir.Attrs
	}{
		{"sigmoid(x)", ir.OpSigmoid, nil},
		{"tanh(x)", ir.OpTanh, nil},
		{"silu(x)", ir.OpSiLU, nil},
		{"swish(x)", ir.OpSiLU, nil},
		{"hardswish(x)", ir.OpHardSwish, nil},
		{"clip(x, -1, 2.5)", ir.OpClip, ir.Attrs{"lo": -1.0, "hi": 2.5}},
		{"clip(x, hi=3, lo=0)", ir.OpClip, ir.Attrs{"lo": 0.0, "hi": 3.0}},
		{"relu6(x)", ir.OpClip, ir.Attrs{"lo": 0.0, "hi": 6.0}},
		{"global_maxpool(x)", ir.OpGlobalMaxPool, nil},
		{"x - relu(x)", ir.OpSub, nil},
		{"x * global_avgpool(x)", ir.OpChannelMul, nil},
		{"global_avgpool(x) * x", ir.OpChannelMul, nil},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			src := "network n(x: f32[N, 4, 3, 3]) { return " + tc.expr + " }"
			g, err := Load("n.kiln", []byte(src), Options{})
			if err != nil {
				t.Fatal(err)
			}
			n := g.Nodes[g.Outputs[0]]
			if n.Op != tc.op {
				t.Fatalf("op %s, want %s", n.Op, tc.op)
			}
			for k, v := range tc.attrs {
				if n.Attrs[k] != v {
					t.Errorf("attribute %s = %v, want %v", k, n.Attrs[k], v)
				}
			}
			if tc.op == ir.OpChannelMul && g.Nodes[n.Args[1]].Type.Shape[2] != 1 {
				t.Errorf("channel_mul operands %v: the scale must be second", n.Args)
			}
		})
	}
}
