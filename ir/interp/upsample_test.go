package interp

import (
	"math"
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// TestUpsample checks upsample against hand-computed values: nearest, and
// PyTorch's bilinear with align_corners false (half-pixel centres, source
// clamped at 0) and true, for factors 2 and 3, and NaN propagation
// (F.interpolate gives the same values).
func TestUpsample(t *testing.T) {
	nan := math.NaN()
	third := 1.0 / 3
	tests := []struct {
		name  string
		shape []int
		x     []float32
		attrs ir.Attrs
		want  []float64
	}{
		{"nearest x2", []int{1, 1, 2, 2}, []float32{1, 2, 3, 4}, ir.Attrs{"scale": 2}, []float64{
			1, 1, 2, 2,
			1, 1, 2, 2,
			3, 3, 4, 4,
			3, 3, 4, 4}},
		{"nearest x3 row", []int{1, 1, 1, 2}, []float32{5, 7}, ir.Attrs{"scale": 3}, []float64{
			5, 5, 5, 7, 7, 7, 5, 5, 5, 7, 7, 7, 5, 5, 5, 7, 7, 7}},
		{"bilinear x2", []int{1, 1, 2, 2}, []float32{1, 2, 3, 4}, ir.Attrs{"mode": "bilinear"}, []float64{
			1.0, 1.25, 1.75, 2.0,
			1.5, 1.75, 2.25, 2.5,
			2.5, 2.75, 3.25, 3.5,
			3.0, 3.25, 3.75, 4.0}},
		{"bilinear x2 align_corners", []int{1, 1, 2, 2}, []float32{1, 2, 3, 4}, ir.Attrs{"mode": "bilinear", "align_corners": true}, []float64{
			1, 1 + third, 1 + 2*third, 2,
			1 + 2*third, 2, 2 + third, 2 + 2*third,
			2 + third, 2 + 2*third, 3, 3 + third,
			3, 3 + third, 3 + 2*third, 4}},
		// src = (o-1)/3 clamped at 0: 0 0 1/3 2/3 1 4/3 5/3 2 7/3.
		{"bilinear x3", []int{1, 1, 1, 3}, []float32{0, 3, 9}, ir.Attrs{"mode": "bilinear", "scale": 3}, []float64{
			0, 0, 1, 2, 3, 5, 7, 9, 9,
			0, 0, 1, 2, 3, 5, 7, 9, 9,
			0, 0, 1, 2, 3, 5, 7, 9, 9}},
		// src = o·(3-1)/(9-1) = o/4.
		{"bilinear x3 align_corners", []int{1, 1, 1, 3}, []float32{0, 4, 12}, ir.Attrs{"mode": "bilinear", "scale": 3, "align_corners": true}, []float64{
			0, 1, 2, 3, 4, 6, 8, 10, 12,
			0, 1, 2, 3, 4, 6, 8, 10, 12,
			0, 1, 2, 3, 4, 6, 8, 10, 12}},
		{"bilinear NaN", []int{1, 1, 1, 2}, []float32{float32(nan), 1}, ir.Attrs{"mode": "bilinear"}, []float64{
			nan, nan, nan, 1,
			nan, nan, nan, 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBuilder(t, 1)
			in := b.input("x", tc.shape...)
			copy(b.inputs["x"].Data, tc.x)
			got := b.run(2, b.op(ir.OpUpsample, tc.attrs, in)).Outputs[0]
			if len(got.Data) != len(tc.want) {
				t.Fatalf("got %d elements (shape %v), want %d", len(got.Data), got.Shape, len(tc.want))
			}
			for i, w := range tc.want {
				g := float64(got.Data[i])
				if !(math.Abs(g-w) <= 1e-6*math.Abs(w) || math.IsNaN(g) && math.IsNaN(w)) {
					t.Errorf("element %d = %v, want %v", i, g, w)
				}
			}
		})
	}
}

// TestUpsampleRejects checks the shape rule's refusals.
func TestUpsampleRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		attrs ir.Attrs
	}{
		{"mode", ir.Attrs{"mode": "bicubic"}},
		{"scale", ir.Attrs{"scale": 0}},
		{"align_corners nearest", ir.Attrs{"align_corners": true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &ir.Graph{}
			x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.F32, Shape: []int{1, 1, 2, 2}}})
			if _, err := g.Add(&ir.Node{Op: ir.OpUpsample, Args: []int{x}, Attrs: tc.attrs}); err == nil {
				t.Errorf("Add accepted %v", tc.attrs)
			}
		})
	}
}
