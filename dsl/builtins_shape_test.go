package dsl

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// TestShapeBuiltins checks that upsample and reshape elaborate to their IR
// op with the expected attributes and result shape (x is [2, 4, 3, 6]).
func TestShapeBuiltins(t *testing.T) {
	tests := []struct {
		expr  string
		op    string
		attrs ir.Attrs
		shape []int
	}{
		{"upsample(x)", ir.OpUpsample, ir.Attrs{"scale": 2, "mode": "nearest", "align_corners": false}, []int{2, 4, 6, 12}},
		{`upsample(x, 3, "bilinear")`, ir.OpUpsample, ir.Attrs{"scale": 3, "mode": "bilinear", "align_corners": false}, []int{2, 4, 9, 18}},
		{`upsample(x, mode="bilinear", align_corners=true)`, ir.OpUpsample, ir.Attrs{"scale": 2, "mode": "bilinear", "align_corners": true}, []int{2, 4, 6, 12}},
		{"reshape(x, (-1, 12, 3, 2))", ir.OpReshape, ir.Attrs{"shape": []int{2, 12, 3, 2}}, []int{2, 12, 3, 2}},
		{"reshape(x, (2, -1))", ir.OpReshape, ir.Attrs{"shape": []int{2, 72}}, []int{2, 72}},
		{"reshape(flatten(x), (-1, 4, 3, 6))", ir.OpReshape, ir.Attrs{"shape": []int{2, 4, 3, 6}}, []int{2, 4, 3, 6}},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			src := "network n(x: f32[N, 4, 3, 6]) { return " + tc.expr + " }"
			g, err := Load("n.kiln", []byte(src), Options{Batch: 2})
			if err != nil {
				t.Fatal(err)
			}
			n := g.Nodes[g.Outputs[0]]
			if n.Op != tc.op {
				t.Fatalf("op %s, want %s", n.Op, tc.op)
			}
			for k, v := range tc.attrs {
				if fmt.Sprint(n.Attrs[k]) != fmt.Sprint(v) {
					t.Errorf("attribute %s = %v, want %v", k, n.Attrs[k], v)
				}
			}
			if !ir.ShapeEqual(n.Type.Shape, tc.shape) {
				t.Errorf("shape %v, want %v", n.Type.Shape, tc.shape)
			}
		})
	}
}

// TestShapeBuiltinErrors checks the positioned refusals.
func TestShapeBuiltinErrors(t *testing.T) {
	tests := []struct{ expr, want string }{
		{`upsample(x, mode="bicubic")`, `n.kiln:1:57: upsample: mode must be "nearest" or "bilinear", got "bicubic"`},
		{"upsample(x, 0)", "n.kiln:1:52: upsample: scale must be positive, got 0"},
		{"upsample(x, align_corners=true)", `n.kiln:1:66: upsample: align_corners applies to mode "bilinear" only`},
		{"upsample(flatten(x))", "upsample: x must be a 4-D tensor (N, C, H, W)"},
		{"reshape(x, (-1, 5))", "n.kiln:1:51: reshape: shape (-1, 5) does not fit tensor f32[2,4,3,6] (144 elements)"},
		{"reshape(x, (-1, -1))", "reshape: shape may contain -1 only once"},
		{"reshape(x, (0, 72))", "reshape: shape entries must be positive ints or -1"},
		{`reshape(x, "a")`, "reshape: shape must be a tuple of ints"},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			src := "network n(x: f32[N, 4, 3, 6]) { return " + tc.expr + " }"
			_, err := Load("n.kiln", []byte(src), Options{Batch: 2})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestUpsamplePrintParse checks that upsample's string and bool attributes
// survive the IR's text form.
func TestUpsamplePrintParse(t *testing.T) {
	src := "network n(x: f32[N, 4, 3, 6]) {\n    a = upsample(x, 3, mode=\"bilinear\", align_corners=true)\n" +
		"    return reshape(upsample(a), (-1, 16, 9, 18))\n}"
	g, err := Load("n.kiln", []byte(src), Options{Batch: 1})
	if err != nil {
		t.Fatal(err)
	}
	text := g.String()
	h, err := ir.Parse("n.ir", text)
	if err != nil {
		t.Fatalf("Parse: %v\n%s", err, text)
	}
	if back := h.String(); back != text {
		t.Errorf("round trip differs:\n%s\nvs\n%s", text, back)
	}
}
