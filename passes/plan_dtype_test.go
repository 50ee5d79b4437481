package passes

import (
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// TestPlanDTypes plans the same small blocked graph in f32, bf16, f16 and
// i8: every buffer is the value's physical element count (padding lanes
// included) times its dtype's size, rounded up to Alignment bytes.
func TestPlanDTypes(t *testing.T) {
	for _, dt := range []ir.DType{ir.F32, ir.BF16, ir.F16, ir.I8} {
		g := &ir.Graph{Name: "dt"}
		x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: dt, Shape: []int{1, 20, 5, 5}}})
		r := g.MustAdd(&ir.Node{Op: ir.OpReorder, Args: []int{x}, Attrs: ir.Attrs{"layout": "NCHW16c"}})
		p := g.MustAdd(&ir.Node{Op: ir.OpMaxPool, Args: []int{r}, Attrs: ir.Attrs{"kernel": []int{2, 2}}})
		g.Outputs = []int{g.MustAdd(&ir.Node{Op: ir.OpReorder, Args: []int{p}})}
		plan := MakePlan(g)
		if err := plan.Check(g); err != nil {
			t.Fatalf("%s: %v", dt, err)
		}
		size := int64(dt.Size())
		align := func(b int64) int64 { return (b + Alignment - 1) / Alignment * Alignment }
		want := map[int]int64{
			x: align(20 * 25 * size), // plain
			r: align(32 * 25 * size), // 20 channels padded to 2 blocks of 16
			p: align(32 * 16 * size),
		}
		for v, w := range want {
			b := plan.Buffers[plan.BufferOf[v]]
			if b.Size != w {
				t.Errorf("%s: %%%d (%s) buffer of %d bytes, want %d", dt, v, g.Nodes[v].Type, b.Size, w)
			}
			if b.Offset%Alignment != 0 {
				t.Errorf("%s: %%%d at offset %d, not %d-byte aligned", dt, v, b.Offset, Alignment)
			}
		}
	}
}
