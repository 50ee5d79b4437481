package interp

import (
	"math"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestExtOps checks the evaluators of ir/ops_ext.go on exact points
// (PyTorch's values), NaN and ±Inf: sigmoid, tanh, SiLU (x/(1+e^-x), so
// -Inf gives NaN), hard-swish, clip, sub, channel_mul and global max pool.
func TestExtOps(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	x := []float32{0, 1, -1, 3, -3, 4, -100, 100, nan, inf, -inf, 0.5}
	tests := []struct {
		op    string
		attrs ir.Attrs
		f     func(v float64) float64
	}{
		{ir.OpSigmoid, nil, func(v float64) float64 { return 1 / (1 + math.Exp(-v)) }},
		{ir.OpTanh, nil, math.Tanh},
		{ir.OpSiLU, nil, func(v float64) float64 { return v / (1 + math.Exp(-v)) }},
		{ir.OpHardSwish, nil, func(v float64) float64 {
			switch {
			case v != v:
				return v
			case v <= -3:
				return v * 0
			case v >= 3:
				return v
			}
			return v * (v + 3) / 6
		}},
		{ir.OpClip, ir.Attrs{"lo": -0.5, "hi": 2.0}, func(v float64) float64 {
			if v != v {
				return v
			}
			return math.Min(math.Max(v, -0.5), 2)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			b := newBuilder(t, 1)
			in := b.input("x", 1, len(x))
			copy(b.inputs["x"].Data, x)
			got := b.run(1, b.op(tc.op, tc.attrs, in)).Outputs[0].Data
			for i, v := range x {
				want := float32(tc.f(float64(v)))
				if !(got[i] == want || got[i] != got[i] && want != want) {
					t.Errorf("%s(%v) = %v, want %v", tc.op, v, got[i], want)
				}
			}
		})
	}
	if got := sigmoid64(-800); got != 0 || sigmoid64(800) != 1 {
		t.Errorf("sigmoid64 saturation: %v", got)
	}
}

// TestChannelMulSubGlobalMaxPool checks the two-operand ops and global max
// pooling against float64 loops, plain and in NCHW16c (the input reordered
// first, so every op runs blocked), and NaN propagation of global max
// pooling.
func TestChannelMulSubGlobalMaxPool(t *testing.T) {
	for _, layout := range []string{"", "NCHW16c"} {
		b := newBuilder(t, 2)
		x := b.input("x", 2, 20, 3, 4)
		xv := b.inputs["x"].Data
		xv[7] = float32(math.NaN()) // plane (0, 0)
		xb := x
		if layout != "" {
			xb = b.op(ir.OpReorder, ir.Attrs{"layout": layout}, x)
		}
		s := b.op(ir.OpSigmoid, nil, b.op(ir.OpGlobalAvgPool, nil, xb))
		mul := b.op(ir.OpChannelMul, nil, xb, s)
		gmp := b.op(ir.OpGlobalMaxPool, nil, b.op(ir.OpSub, nil, mul, xb))
		if layout != "" {
			mul = b.op(ir.OpReorder, ir.Attrs{"layout": ""}, mul)
			gmp = b.op(ir.OpReorder, ir.Attrs{"layout": ""}, gmp)
		}
		res := b.run(2, mul, gmp)
		wmul, wmax := newRef(2, 20, 3, 4), newRef(2, 20, 1, 1)
		for p := 0; p < 40; p++ {
			var mean float64
			for i := 0; i < 12; i++ {
				mean += float64(xv[p*12+i]) / 12
			}
			sc := 1 / (1 + math.Exp(-mean))
			m := math.Inf(-1)
			for i := 0; i < 12; i++ {
				v := float64(xv[p*12+i])
				wmul.data[p*12+i] = v * sc
				if d := v*sc - v; d > m || d != d || m != m {
					m = d
				}
			}
			wmax.data[p] = m
		}
		// Plane (0, 0) holds the NaN: its scale and maximum are NaN.
		if g := res.Outputs[1].Data[0]; g == g {
			t.Errorf("%s: global max of a plane with NaN = %v, want NaN", layout, g)
		}
		for _, o := range []struct {
			got  *tensor.Tensor
			want *ref
			n    int
		}{{res.Outputs[0], wmul, 12}, {res.Outputs[1], wmax, 1}} {
			for i := 0; i < o.n; i++ {
				if g := o.got.Data[i]; g == g {
					t.Errorf("%s: element %d of plane 0 = %v, want NaN", layout, i, g)
				}
				o.got.Data[i], o.want.data[i] = 0, 0
			}
		}
		checkClose(t, layout+" channel_mul", res.Outputs[0], wmul, tol)
		checkClose(t, layout+" global_maxpool", res.Outputs[1], wmax, tol)
	}
}

// TestExtShapeRules checks the op table's rejections.
func TestExtShapeRules(t *testing.T) {
	tests := []struct {
		name string
		add  func(g *ir.Graph, x, y int) error
		want string
	}{
		{"clip bounds", func(g *ir.Graph, x, _ int) error {
			_, err := g.Add(&ir.Node{Op: ir.OpClip, Args: []int{x}, Attrs: ir.Attrs{"lo": 2.0, "hi": 1.0}})
			return err
		}, "lo 2 must not exceed hi 1"},
		{"sub shapes", func(g *ir.Graph, x, y int) error {
			_, err := g.Add(&ir.Node{Op: ir.OpSub, Args: []int{x, y}})
			return err
		}, "shapes differ"},
		{"channel_mul scale", func(g *ir.Graph, x, _ int) error {
			_, err := g.Add(&ir.Node{Op: ir.OpChannelMul, Args: []int{x, x}})
			return err
		}, "scale shape 2x4x3x3, want [2, 4, 1, 1]"},
		{"global_maxpool rank", func(g *ir.Graph, _, y int) error {
			_, err := g.Add(&ir.Node{Op: ir.OpGlobalMaxPool, Args: []int{y}})
			return err
		}, "input must have rank 4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &ir.Graph{}
			x := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "x", Type: ir.Type{DType: ir.F32, Shape: []int{2, 4, 3, 3}}})
			y := g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "y", Type: ir.Type{DType: ir.F32, Shape: []int{2, 4}}})
			err := tc.add(g, x, y)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
