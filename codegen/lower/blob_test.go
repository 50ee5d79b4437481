package lower

import (
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestBlobDTypes checks that the weights blob stores each value in its own
// dtype, 64-byte aligned, and returns offsets in elements of that dtype.
func TestBlobDTypes(t *testing.T) {
	var b blob
	vals := []float32{1.5, -2.25, 3.0e-3}
	want := []struct {
		dt  ir.DType
		off int
	}{{ir.F32, 0}, {ir.BF16, 32}, {ir.F16, 64}, {ir.F32, 48}}
	for i, w := range want {
		off, err := b.add(vals, w.dt)
		if err != nil {
			t.Fatal(err)
		}
		if off != w.off || (off*w.dt.Size())%64 != 0 {
			t.Errorf("chunk %d (%s): offset %d elements, want %d (64-byte aligned)", i, w.dt, off, w.off)
		}
	}
	out := b.bytes()
	if len(out) != 192+3*4 {
		t.Fatalf("blob is %d bytes, want %d", len(out), 192+12)
	}
	for i, v := range vals {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(out[4*i:])); got != v {
			t.Errorf("f32[%d] = %g, want %g", i, got, v)
		}
		if got := tensor.BF16ToF32(binary.LittleEndian.Uint16(out[64+2*i:])); math.Abs(float64(got-v)) > math.Abs(float64(v))/128 {
			t.Errorf("bf16[%d] = %g, want %g to bf16 precision", i, got, v)
		}
		if got := tensor.F16ToF32(binary.LittleEndian.Uint16(out[128+2*i:])); math.Abs(float64(got-v)) > math.Abs(float64(v))/1024 {
			t.Errorf("f16[%d] = %g, want %g to f16 precision", i, got, v)
		}
	}
	if _, err := b.add(vals, ir.I8); err == nil || !strings.Contains(err.Error(), "no quantization scheme") {
		t.Errorf("i8 weights: err = %v", err)
	}
}
