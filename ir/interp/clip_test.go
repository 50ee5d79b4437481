package interp

import (
	"math"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestClipGradNorm runs sum_squares → global_norm_scale → scale_by over
// three "gradients" and compares with the closed form of PyTorch's
// clip_grad_norm_ in float64 (torch/nn/utils/clip_grad.py, 1.13):
// total = √(Σ g²) over every element of every tensor, coef =
// min(1, max_norm/(total + 1e-6)), g·coef. When max_norm exceeds the norm
// the coefficient is exactly 1 and every gradient must come back bit for
// bit; the results must not depend on the thread count.
func TestClipGradNorm(t *testing.T) {
	for _, c := range []struct {
		name    string
		maxNorm float64
		clips   bool
	}{
		{"clips hard", 0.01, true},
		{"clips a little", 5, true},
		{"norm within max_norm", 1e6, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, 3)
			gs := []int{b.input("g0", 4, 3, 3, 3), b.input("g1", 9), b.input("g2", 2, 5)}
			var sums []int
			for _, g := range gs {
				sums = append(sums, b.op(ir.OpSumSquares, nil, g))
			}
			s := b.op(ir.OpGlobalNormScale, ir.Attrs{"max_norm": c.maxNorm}, sums...)
			var outs []int
			for _, g := range gs {
				outs = append(outs, b.op(ir.OpScaleBy, nil, g, s))
			}
			got := b.runBoth(t, append(append(outs, s), sums...)...)
			var total float64
			for i, g := range gs {
				var ss float64
				for _, v := range f64(b.val(g).Data) {
					ss += v * v
				}
				total += ss
				if d := math.Abs(float64(got[len(gs)+1+i].Data[0]) - ss); d > 1e-6*ss {
					t.Errorf("sum_squares of g%d = %v, want %v", i, got[len(gs)+1+i].Data[0], ss)
				}
			}
			norm := math.Sqrt(total)
			coef := math.Min(1, c.maxNorm/(norm+1e-6))
			if (coef < 1) != c.clips {
				t.Fatalf("norm %v, max_norm %v: the case does not test what it says", norm, c.maxNorm)
			}
			if d := math.Abs(float64(got[len(gs)].Data[0]) - coef); d > 1e-7*coef {
				t.Errorf("global_norm_scale = %v, want %v", got[len(gs)].Data[0], coef)
			}
			for i, g := range gs {
				x := b.val(g)
				if !c.clips {
					sameBits(t, "unclipped gradient", got[i], x)
					continue
				}
				want := newRef(x.Shape...)
				for j, v := range x.Data {
					want.data[j] = float64(v) * coef
				}
				checkClose(t, "clipped gradient", got[i], want, 2e-7)
			}
		})
	}
}

// TestGlobalNormScaleNonFinite checks the coefficient for non-finite sums
// of squares: an infinite norm gives 0 and a NaN one NaN, as PyTorch's
// clip_coef.clamp(max=1) does with error_if_nonfinite=False.
func TestGlobalNormScaleNonFinite(t *testing.T) {
	for _, c := range []struct {
		name string
		v    float32
		want float64
	}{
		{"inf", float32(math.Inf(1)), 0},
		{"nan", float32(math.NaN()), math.NaN()},
		{"zero", 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, 1)
			in := b.input("s", 1)
			b.inputs["s"] = &tensor.Tensor{Shape: []int{1}, Data: []float32{c.v}}
			s := b.op(ir.OpGlobalNormScale, ir.Attrs{"max_norm": 1.0}, in)
			got := float64(b.run(1, s).Outputs[0].Data[0])
			if got != c.want && !(math.IsNaN(got) && math.IsNaN(c.want)) {
				t.Errorf("global_norm_scale of %v = %v, want %v", c.v, got, c.want)
			}
		})
	}
}
