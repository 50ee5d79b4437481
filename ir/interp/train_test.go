package interp

import (
	"fmt"
	"math"
	"testing"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// Gradient checks of the training ops (train.go).
//
// Each gradient op is checked against central finite differences of a float64
// reference of the corresponding forward op: with r a random tensor of the
// forward result's shape (fed to the gradient op as dy), the scalar
// L(x) = Σ r·f(x) has ∂L/∂x_i ≈ (L(x + h·e_i) − L(x − h·e_i)) / 2h in
// float64, with h = 1e-6 (the operands are of order 1, so this is a relative
// step; for the logits around ±1000 of the loss test an absolute step keeps
// the truncation error small) and 2h taken as the difference of the two
// perturbed values as stored. The forward reference runs on the very float32
// values the interpreter sees (widened), so both sides differentiate the same
// function; the finite-difference error is about 1e-9 relative, the
// interpreter's float32 rounding about 1e-7, and the tolerance fdTol.

// fdTol is the tolerance of the gradient checks, relative to max|ref|.
const fdTol = 1e-5

// forward64 is a float64 reference of a forward op over its operands.
type forward64 func(xs [][]float64) []float64

// numGrad returns the central-difference gradient of Σ r·f(xs) with respect
// to xs[j].
func numGrad(f forward64, xs [][]float64, j int, r []float64) []float64 {
	loss := func() float64 {
		var s float64
		for i, v := range f(xs) {
			s += r[i] * v
		}
		return s
	}
	g := make([]float64, len(xs[j]))
	for i, v := range xs[j] {
		hi, lo := v+1e-6, v-1e-6
		xs[j][i] = hi
		lp := loss()
		xs[j][i] = lo
		lm := loss()
		xs[j][i] = v
		g[i] = (lp - lm) / (hi - lo)
	}
	return g
}

// checkGrad fails unless max|got−want| <= fdTol·max|want| and got has shape,
// and logs the measured relative error.
func checkGrad(t *testing.T, what string, got *tensor.Tensor, shape []int, want []float64) {
	t.Helper()
	if !ir.ShapeEqual(got.Shape, shape) || len(got.Data) != len(want) {
		t.Fatalf("%s: shape %s with %d values, want %s with %d", what, ir.ShapeString(got.Shape), len(got.Data), ir.ShapeString(shape), len(want))
	}
	maxRef, maxErr, at := 0.0, 0.0, 0
	for i, w := range want {
		maxRef = math.Max(maxRef, math.Abs(w))
		if d := math.Abs(float64(got.Data[i]) - w); d > maxErr || d != d {
			maxErr, at = d, i
		}
	}
	if maxRef == 0 {
		t.Fatalf("%s: the reference gradient is all zero; the check would prove nothing", what)
	}
	rel := maxErr / maxRef
	t.Logf("%s: max|got-ref|/max|ref| = %.2g", what, rel)
	if !(rel <= fdTol) {
		t.Errorf("%s: max|got-ref| = %.3g at element %d %v (got %v, ref %v), relative %.3g > %g (max|ref| %.3g)",
			what, maxErr, at, unravel(at, shape), got.Data[at], want[at], rel, fdTol, maxRef)
	}
}

// vals returns the float64 values of the given input or param nodes.
func (b *builder) vals(ids ...int) [][]float64 {
	out := make([][]float64, len(ids))
	for i, id := range ids {
		out[i] = f64(b.val(id).Data)
	}
	return out
}

// runBoth runs the graph with 1 and 4 threads, requires bitwise identical
// outputs and returns them.
func (b *builder) runBoth(t *testing.T, outputs ...int) []*tensor.Tensor {
	t.Helper()
	one := b.run(1, outputs...).Outputs
	four := b.run(4, outputs...).Outputs
	for i := range one {
		sameBits(t, fmt.Sprintf("output %d with 4 threads vs 1", i), four[i], one[i])
	}
	return one
}

// conv64 is conv2d in float64 (cross-correlation, zero padding, groups).
func conv64(x, w []float64, xs, ws []int, stride, pad []int, groups int) []float64 {
	n, c, h, wd := xs[0], xs[1], xs[2], xs[3]
	o, cg, kh, kw := ws[0], ws[1], ws[2], ws[3]
	ho, wo := ir.ConvOut(h, kh, stride[0], pad[0]), ir.ConvOut(wd, kw, stride[1], pad[1])
	og := o / groups
	out := make([]float64, n*o*ho*wo)
	for b := 0; b < n; b++ {
		for oc := 0; oc < o; oc++ {
			g := oc / og
			for oy := 0; oy < ho; oy++ {
				for ox := 0; ox < wo; ox++ {
					var s float64
					for ic := 0; ic < cg; ic++ {
						for ky := 0; ky < kh; ky++ {
							for kx := 0; kx < kw; kx++ {
								iy, ix := oy*stride[0]-pad[0]+ky, ox*stride[1]-pad[1]+kx
								if iy >= 0 && iy < h && ix >= 0 && ix < wd {
									s += x[((b*c+g*cg+ic)*h+iy)*wd+ix] * w[((oc*cg+ic)*kh+ky)*kw+kx]
								}
							}
						}
					}
					out[((b*o+oc)*ho+oy)*wo+ox] = s
				}
			}
		}
	}
	return out
}

// TestConv2DGrads checks conv2d_grad_input and conv2d_grad_weight against
// finite differences of conv64 for the kernel shapes of the Inception
// networks (1×7, 7×1, 1×3, 3×1, 3×3, 1×1), strides 1 and 2, paddings 0 and
// 1 (and 3 for the 7-taps), odd sizes where the output size floors, and
// groups 1 and 2.
func TestConv2DGrads(t *testing.T) {
	cases := []struct {
		name        string
		n, c, h, w  int
		o, kh, kw   int
		stride, pad []int
		groups      int
	}{
		{"1x7/pad0,3", 2, 3, 5, 9, 4, 1, 7, []int{1, 1}, []int{0, 3}, 1},
		{"7x1/pad3,0", 1, 3, 9, 4, 4, 7, 1, []int{1, 1}, []int{3, 0}, 1},
		{"1x3/pad0,1", 2, 3, 5, 7, 3, 1, 3, []int{1, 1}, []int{0, 1}, 1},
		{"3x1/pad1,0", 1, 4, 7, 5, 2, 3, 1, []int{1, 1}, []int{1, 0}, 1},
		{"3x3/stride2/pad0/floors", 2, 3, 9, 8, 4, 3, 3, []int{2, 2}, []int{0, 0}, 1},
		{"3x3/stride2/pad1", 1, 2, 8, 7, 3, 3, 3, []int{2, 2}, []int{1, 1}, 1},
		{"3x3/pad1", 2, 3, 6, 5, 3, 3, 3, []int{1, 1}, []int{1, 1}, 1},
		{"3x3/pad1/groups2", 2, 4, 6, 5, 6, 3, 3, []int{1, 1}, []int{1, 1}, 2},
		{"5x3/stride2,1/pad1,0/groups2", 1, 4, 9, 6, 2, 5, 3, []int{2, 1}, []int{1, 0}, 2},
		{"1x1", 2, 5, 3, 4, 3, 1, 1, []int{1, 1}, []int{0, 0}, 1},
		{"1x1/stride2/odd", 1, 5, 7, 7, 3, 1, 1, []int{2, 2}, []int{0, 0}, 1},
		{"1x3/stride3/pad1/width1", 2, 2, 4, 1, 3, 1, 3, []int{1, 3}, []int{0, 1}, 1}, // taps entirely in the padding
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, int64(100+i))
			xs, ws := []int{c.n, c.c, c.h, c.w}, []int{c.o, c.c / c.groups, c.kh, c.kw}
			conv := ir.Attrs{"stride": c.stride, "pad": c.pad, "groups": c.groups}
			x := b.input("x", xs...)
			w := b.param("w", -1, 1, ws...)
			y := b.op(ir.OpConv2D, conv, x, w)
			dy := b.input("dy", b.typ(y).Shape...)
			gi := b.op(ir.OpConv2DGradInput, ir.Attrs{"stride": c.stride, "pad": c.pad, "groups": c.groups, "input_hw": []int{c.h, c.w}}, dy, w)
			gw := b.op(ir.OpConv2DGradWeight, ir.Attrs{"stride": c.stride, "pad": c.pad, "groups": c.groups, "kernel": []int{c.kh, c.kw}}, dy, x)
			out := b.runBoth(t, gi, gw)
			f := func(v [][]float64) []float64 { return conv64(v[0], v[1], xs, ws, c.stride, c.pad, c.groups) }
			v, r := b.vals(x, w), f64(b.val(dy).Data)
			checkGrad(t, "dx", out[0], xs, numGrad(f, v, 0, r))
			checkGrad(t, "dweight", out[1], ws, numGrad(f, v, 1, r))
		})
	}
}

// TestConvGradsLarge checks the conv gradients on a size where the parallel
// split and the long sums matter (K blocks of several hundred terms), on 200
// sampled elements per operand: L = Σ r·conv(x, w) is linear in each
// element, so L(x + e_i) − L(x) in float64 is its exact partial derivative
// (a difference with step 1, no truncation error). All elements are compared
// between 1 and 4 threads.
func TestConvGradsLarge(t *testing.T) {
	b := newBuilder(t, 5)
	xs, ws := []int{3, 16, 13, 11}, []int{24, 16, 3, 3}
	stride, pad := []int{2, 2}, []int{1, 1}
	x := b.input("x", xs...)
	w := b.param("w", -1, 1, ws...)
	y := b.op(ir.OpConv2D, ir.Attrs{"stride": stride, "pad": pad}, x, w)
	dy := b.input("dy", b.typ(y).Shape...)
	gi := b.op(ir.OpConv2DGradInput, ir.Attrs{"stride": stride, "pad": pad, "input_hw": []int{13, 11}}, dy, w)
	gw := b.op(ir.OpConv2DGradWeight, ir.Attrs{"stride": stride, "pad": pad, "kernel": []int{3, 3}}, dy, x)
	out := b.runBoth(t, gi, gw)
	v, r := b.vals(x, w), f64(b.val(dy).Data)
	loss := func() float64 {
		var s float64
		for i, y := range conv64(v[0], v[1], xs, ws, stride, pad, 1) {
			s += r[i] * y
		}
		return s
	}
	for j, got := range out {
		maxRef, maxErr := 0.0, 0.0
		for k := 0; k < 200; k++ {
			i := b.r.Intn(len(v[j]))
			old := v[j][i]
			v[j][i] = old + 1
			// Linear in each element: L(x+e_i) − L(x) is the exact partial
			// derivative, up to float64 rounding.
			lp := loss()
			v[j][i] = old
			want := lp - loss()
			maxRef = math.Max(maxRef, math.Abs(want))
			maxErr = math.Max(maxErr, math.Abs(float64(got.Data[i])-want))
		}
		t.Logf("operand %d: max|got-ref|/max|ref| = %.2g over 200 sampled elements", j, maxErr/maxRef)
		if !(maxErr <= fdTol*maxRef) {
			t.Errorf("operand %d: max|got-ref| = %.3g, tolerance %.3g", j, maxErr, fdTol*maxRef)
		}
	}
}

// TestReLUGrad checks relu_grad(dy, relu(x)) against finite differences of
// ReLU, and that y = 0 (x ≤ 0) blocks the gradient.
func TestReLUGrad(t *testing.T) {
	b := newBuilder(t, 11)
	x := b.input("x", 2, 3, 4, 5)
	dy := b.input("dy", 2, 3, 4, 5)
	g := b.op(ir.OpReLUGrad, nil, dy, b.op(ir.OpReLU, nil, x))
	out := b.runBoth(t, g)
	f := func(v [][]float64) []float64 {
		y := make([]float64, len(v[0]))
		for i, u := range v[0] {
			y[i] = math.Max(u, 0)
		}
		return y
	}
	checkGrad(t, "dx", out[0], []int{2, 3, 4, 5}, numGrad(f, b.vals(x), 0, f64(b.val(dy).Data)))
}

// TestBiasGrad checks bias_grad against finite differences of x + bias
// (broadcast over axis 1) for rank 4 and rank 2.
func TestBiasGrad(t *testing.T) {
	for _, shape := range [][]int{{3, 4, 5, 2}, {6, 7}} {
		t.Run(ir.ShapeString(shape), func(t *testing.T) {
			b := newBuilder(t, 12)
			x := b.input("x", shape...)
			bias := b.param("bias", -1, 1, shape[1])
			dy := b.input("dy", shape...)
			out := b.runBoth(t, b.op(ir.OpBiasGrad, nil, dy))
			_, ch, inner := channelLayout(shape)
			f := func(v [][]float64) []float64 {
				y := make([]float64, len(v[0]))
				for i, u := range v[0] {
					y[i] = u + v[1][i/inner%ch]
				}
				return y
			}
			checkGrad(t, "dbias", out[0], []int{shape[1]}, numGrad(f, b.vals(x, bias), 1, f64(b.val(dy).Data)))
		})
	}
}

// bnTrain64 is batchnorm_train's y in float64: batch mean and biased
// variance per channel, y = (x−μ)/√(σ²+eps)·γ + β.
func bnTrain64(x, gamma, beta []float64, shape []int, eps float64) []float64 {
	outer, ch, inner := channelLayout(shape)
	m := float64(outer * inner)
	y := make([]float64, len(x))
	for c := 0; c < ch; c++ {
		var s, ss float64
		for o := 0; o < outer; o++ {
			for i := (o*ch + c) * inner; i < (o*ch+c+1)*inner; i++ {
				s += x[i]
			}
		}
		mu := s / m
		for o := 0; o < outer; o++ {
			for i := (o*ch + c) * inner; i < (o*ch+c+1)*inner; i++ {
				ss += (x[i] - mu) * (x[i] - mu)
			}
		}
		inv := 1 / math.Sqrt(ss/m+eps)
		for o := 0; o < outer; o++ {
			for i := (o*ch + c) * inner; i < (o*ch+c+1)*inner; i++ {
				y[i] = (x[i]-mu)*inv*gamma[c] + beta[c]
			}
		}
	}
	return y
}

// TestBatchNormTrainGrad checks batchnorm_train_grad, fed with
// batchnorm_train's own batch mean and variance, against finite differences
// of bnTrain64 with respect to x, weight and bias (the x gradient includes
// the paths through the batch statistics).
func TestBatchNormTrainGrad(t *testing.T) {
	for _, c := range []struct {
		shape []int
		eps   float64
	}{{[]int{3, 4, 5, 3}, 1e-3}, {[]int{4, 3, 1, 1}, 1e-5}, {[]int{6, 5}, 1e-5}} {
		t.Run(ir.ShapeString(c.shape), func(t *testing.T) {
			b := newBuilder(t, 13)
			x := b.input("x", c.shape...)
			gamma := b.param("bn.weight", 0.5, 1.5, c.shape[1])
			beta := b.param("bn.bias", -1, 1, c.shape[1])
			dy := b.input("dy", c.shape...)
			eps := ir.Attrs{"eps": c.eps}
			bn := b.op(ir.OpBatchNormTrain, eps, x, gamma, beta)
			mean := b.op(ir.OpResult, ir.Attrs{"index": 1}, bn)
			vr := b.op(ir.OpResult, ir.Attrs{"index": 2}, bn)
			g := b.op(ir.OpBatchNormTrainGrad, eps, dy, x, gamma, mean, vr)
			var res []int
			for k := 0; k < 3; k++ {
				res = append(res, b.op(ir.OpResult, ir.Attrs{"index": k}, g))
			}
			out := b.runBoth(t, res...)
			f := func(v [][]float64) []float64 { return bnTrain64(v[0], v[1], v[2], c.shape, c.eps) }
			v, r := b.vals(x, gamma, beta), f64(b.val(dy).Data)
			checkGrad(t, "dx", out[0], c.shape, numGrad(f, v, 0, r))
			checkGrad(t, "dweight", out[1], []int{c.shape[1]}, numGrad(f, v, 1, r))
			checkGrad(t, "dbias", out[2], []int{c.shape[1]}, numGrad(f, v, 2, r))
		})
	}
}

// pool64 is maxpool or avgpool in float64 (the in-bounds pixels of each
// window; avgpool divides by kh·kw or by their count).
func pool64(x []float64, shape, k, s, p []int, isMax, includePad bool) []float64 {
	n, c, h, w := shape[0], shape[1], shape[2], shape[3]
	ho, wo := ir.ConvOut(h, k[0], s[0], p[0]), ir.ConvOut(w, k[1], s[1], p[1])
	out := make([]float64, n*c*ho*wo)
	for pl := 0; pl < n*c; pl++ {
		for oy := 0; oy < ho; oy++ {
			for ox := 0; ox < wo; ox++ {
				m, sum, cnt := math.Inf(-1), 0.0, 0
				for ky := 0; ky < k[0]; ky++ {
					for kx := 0; kx < k[1]; kx++ {
						iy, ix := oy*s[0]-p[0]+ky, ox*s[1]-p[1]+kx
						if iy < 0 || iy >= h || ix < 0 || ix >= w {
							continue
						}
						v := x[(pl*h+iy)*w+ix]
						m = math.Max(m, v)
						sum += v
						cnt++
					}
				}
				if !isMax {
					if includePad {
						cnt = k[0] * k[1]
					}
					m = sum / float64(cnt)
				}
				out[(pl*ho+oy)*wo+ox] = m
			}
		}
	}
	return out
}

// TestPoolGrads checks maxpool_grad and avgpool_grad (both count_include_pad
// values) against finite differences of pool64, with padding, strides 1 and
// 2, overlapping windows, 1×3/3×1 windows and odd sizes.
func TestPoolGrads(t *testing.T) {
	cases := []struct {
		shape   []int
		k, s, p []int
	}{
		{[]int{2, 3, 9, 7}, []int{3, 3}, []int{2, 2}, []int{0, 0}},
		{[]int{1, 3, 7, 6}, []int{3, 3}, []int{1, 1}, []int{1, 1}},
		{[]int{2, 2, 8, 9}, []int{3, 3}, []int{2, 2}, []int{1, 1}},
		{[]int{1, 2, 6, 7}, []int{1, 3}, []int{1, 2}, []int{0, 1}},
		{[]int{1, 2, 7, 5}, []int{3, 1}, []int{2, 1}, []int{1, 0}},
		{[]int{2, 2, 8, 8}, []int{2, 2}, []int{2, 2}, []int{0, 0}},
	}
	for ci, c := range cases {
		for _, kind := range []string{"max", "avg/include_pad", "avg/exclude_pad"} {
			name := fmt.Sprintf("%s/%s/k%s/s%s/p%s", kind, ir.ShapeString(c.shape), ir.ShapeString(c.k), ir.ShapeString(c.s), ir.ShapeString(c.p))
			t.Run(name, func(t *testing.T) {
				b := newBuilder(t, int64(200+ci))
				x := b.input("x", c.shape...)
				// Add fills in defaults, so each node gets its own map.
				attrs := func() ir.Attrs { return ir.Attrs{"kernel": c.k, "stride": c.s, "pad": c.p} }
				isMax, includePad := kind == "max", kind == "avg/include_pad"
				var g int
				if isMax {
					y := b.op(ir.OpMaxPool, attrs(), x)
					dy := b.input("dy", b.typ(y).Shape...)
					g = b.op(ir.OpMaxPoolGrad, attrs(), dy, x)
				} else {
					fa, ga := attrs(), attrs()
					fa["count_include_pad"], ga["count_include_pad"] = includePad, includePad
					ga["input_hw"] = c.shape[2:]
					y := b.op(ir.OpAvgPool, fa, x)
					dy := b.input("dy", b.typ(y).Shape...)
					g = b.op(ir.OpAvgPoolGrad, ga, dy)
				}
				out := b.runBoth(t, g)
				f := func(v [][]float64) []float64 { return pool64(v[0], c.shape, c.k, c.s, c.p, isMax, includePad) }
				r := f64(b.inputs["dy"].Data)
				checkGrad(t, "dx", out[0], c.shape, numGrad(f, b.vals(x), 0, r))
			})
		}
	}
}

// TestMaxPoolGradTies pins maxpool_grad's choice where finite differences
// cannot: on ties the first maximum in row-major window order gets the
// gradient, padding never does (an all-negative window next to the padding),
// overlapping windows add, and a NaN takes the gradient, as evalMaxPool picks
// its value.
func TestMaxPoolGradTies(t *testing.T) {
	nan := float32(math.NaN())
	cases := []struct {
		name    string
		h, w    int
		x       []float32
		k, s, p []int
		dy      []float32
		want    []float32
	}{
		{"tie", 2, 2, []float32{1, 1, 1, 1}, []int{2, 2}, []int{2, 2}, []int{0, 0},
			[]float32{5}, []float32{5, 0, 0, 0}},
		{"tie later row", 2, 2, []float32{0, 0, 2, 2}, []int{2, 2}, []int{2, 2}, []int{0, 0},
			[]float32{5}, []float32{0, 0, 5, 0}},
		// 3×3 windows, stride 1, pad 1 over a 2×2 all-negative plane: every
		// window holds all four pixels, and -1 (index 1) is the maximum of each.
		{"padding never wins", 2, 2, []float32{-3, -1, -2, -4}, []int{3, 3}, []int{1, 1}, []int{1, 1},
			[]float32{1, 2, 3, 4}, []float32{0, 10, 0, 0}},
		{"all -inf", 1, 2, []float32{float32(math.Inf(-1)), float32(math.Inf(-1))}, []int{1, 2}, []int{1, 1}, []int{0, 0},
			[]float32{7}, []float32{7, 0}},
		{"NaN wins", 1, 3, []float32{9, nan, nan}, []int{1, 3}, []int{1, 1}, []int{0, 0},
			[]float32{2}, []float32{0, 2, 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, 1)
			x := b.input("x", 1, 1, c.h, c.w)
			copy(b.inputs["x"].Data, c.x)
			y := b.op(ir.OpMaxPool, ir.Attrs{"kernel": c.k, "stride": c.s, "pad": c.p}, x)
			dy := b.input("dy", b.typ(y).Shape...)
			copy(b.inputs["dy"].Data, c.dy)
			got := b.run(1, b.op(ir.OpMaxPoolGrad, ir.Attrs{"kernel": c.k, "stride": c.s, "pad": c.p}, dy, x)).Outputs[0]
			for i := range c.want {
				if got.Data[i] != c.want[i] {
					t.Fatalf("dx = %v, want %v", got.Data, c.want)
				}
			}
		})
	}
}

// TestGlobalAvgPoolGrad checks global_avgpool_grad against finite
// differences of the plane mean.
func TestGlobalAvgPoolGrad(t *testing.T) {
	shape := []int{2, 3, 5, 7}
	b := newBuilder(t, 14)
	x := b.input("x", shape...)
	dy := b.input("dy", 2, 3, 1, 1)
	out := b.runBoth(t, b.op(ir.OpGlobalAvgPoolGrad, ir.Attrs{"input_hw": []int{5, 7}}, dy))
	f := func(v [][]float64) []float64 {
		y := make([]float64, 6)
		for i, u := range v[0] {
			y[i/35] += u / 35
		}
		return y
	}
	checkGrad(t, "dx", out[0], shape, numGrad(f, b.vals(x), 0, f64(b.val(dy).Data)))
}

// TestDenseGrads checks dense_grad_input and dense_grad_weight against finite
// differences of x·Wᵀ + bias.
func TestDenseGrads(t *testing.T) {
	const n, in, o = 4, 7, 5
	b := newBuilder(t, 15)
	x := b.input("x", n, in)
	w := b.param("w", -1, 1, o, in)
	bias := b.param("b", -1, 1, o)
	b.op(ir.OpDense, nil, x, w, bias)
	dy := b.input("dy", n, o)
	out := b.runBoth(t, b.op(ir.OpDenseGradInput, nil, dy, w), b.op(ir.OpDenseGradWeight, nil, dy, x))
	f := func(v [][]float64) []float64 {
		y := make([]float64, n*o)
		for i := 0; i < n; i++ {
			for j := 0; j < o; j++ {
				s := v[2][j]
				for k := 0; k < in; k++ {
					s += v[0][i*in+k] * v[1][j*in+k]
				}
				y[i*o+j] = s
			}
		}
		return y
	}
	v, r := b.vals(x, w, bias), f64(b.val(dy).Data)
	checkGrad(t, "dx", out[0], []int{n, in}, numGrad(f, v, 0, r))
	checkGrad(t, "dweight", out[1], []int{o, in}, numGrad(f, v, 1, r))
}

// TestSliceIsConcatGrad checks that slice of dy is each concat operand's
// gradient (finite differences of concat) along axes 1 and 3.
func TestSliceIsConcatGrad(t *testing.T) {
	for _, axis := range []int{1, 3} {
		t.Run(fmt.Sprintf("axis%d", axis), func(t *testing.T) {
			b := newBuilder(t, 16)
			sa, sb := []int{2, 3, 4, 5}, []int{2, 3, 4, 5}
			sa[axis], sb[axis] = 2, 4
			xa, xb := b.input("a", sa...), b.input("b", sb...)
			cat := b.op(ir.OpConcat, ir.Attrs{"axis": axis}, xa, xb)
			dy := b.input("dy", b.typ(cat).Shape...)
			ga := b.op(ir.OpSlice, ir.Attrs{"axis": axis, "offset": 0, "size": 2}, dy)
			gb := b.op(ir.OpSlice, ir.Attrs{"axis": axis, "offset": 2, "size": 4}, dy)
			out := b.runBoth(t, ga, gb)
			f := func(v [][]float64) []float64 { return concat64(v[0], v[1], sa, sb, axis) }
			v, r := b.vals(xa, xb), f64(b.val(dy).Data)
			checkGrad(t, "da", out[0], sa, numGrad(f, v, 0, r))
			checkGrad(t, "db", out[1], sb, numGrad(f, v, 1, r))
		})
	}
}

// concat64 concatenates a and b (shapes sa, sb) along axis in float64.
func concat64(a, b []float64, sa, sb []int, axis int) []float64 {
	outer := 1
	for _, d := range sa[:axis] {
		outer *= d
	}
	ca, cb := len(a)/outer, len(b)/outer
	var out []float64
	for o := 0; o < outer; o++ {
		out = append(out, a[o*ca:(o+1)*ca]...)
		out = append(out, b[o*cb:(o+1)*cb]...)
	}
	return out
}

// TestReshapeIsFlattenGrad checks reshape(dy) against finite differences of
// flatten (the identity on the row-major elements).
func TestReshapeIsFlattenGrad(t *testing.T) {
	shape := []int{2, 3, 2, 5}
	b := newBuilder(t, 17)
	x := b.input("x", shape...)
	b.op(ir.OpFlatten, nil, x)
	dy := b.input("dy", 2, 30)
	out := b.runBoth(t, b.op(ir.OpReshape, ir.Attrs{"shape": shape}, dy))
	f := func(v [][]float64) []float64 { return append([]float64(nil), v[0]...) }
	checkGrad(t, "dx", out[0], shape, numGrad(f, b.vals(x), 0, f64(b.val(dy).Data)))
}

// TestMul2Grad checks mul2's gradients, mul2(dy, b) and mul2(dy, a), against
// finite differences of a·b.
func TestMul2Grad(t *testing.T) {
	b := newBuilder(t, 18)
	xa, xb := b.input("a", 3, 7), b.input("b", 3, 7)
	dy := b.input("dy", 3, 7)
	out := b.runBoth(t, b.op(ir.OpMul2, nil, dy, xb), b.op(ir.OpMul2, nil, dy, xa))
	f := func(v [][]float64) []float64 {
		y := make([]float64, len(v[0]))
		for i := range y {
			y[i] = v[0][i] * v[1][i]
		}
		return y
	}
	v, r := b.vals(xa, xb), f64(b.val(dy).Data)
	checkGrad(t, "da", out[0], []int{3, 7}, numGrad(f, v, 0, r))
	checkGrad(t, "db", out[1], []int{3, 7}, numGrad(f, v, 1, r))
}

// TestDropoutTrain checks dropout_train's mask (deterministic in the seed,
// different for another seed, keep fraction near 1−p, all ones for p = 0),
// y = x·mask/(1−p), and its backward mul(mul2(dy, mask), 1/(1−p)) against
// finite differences with the mask held fixed.
func TestDropoutTrain(t *testing.T) {
	shape := []int{4, 8, 9, 9}
	for _, p := range []float64{0, 0.2, 0.5} {
		t.Run(fmt.Sprintf("p=%v", p), func(t *testing.T) {
			b := newBuilder(t, 19)
			x := b.input("x", shape...)
			dy := b.input("dy", shape...)
			res := func(d, k int) int { return b.op(ir.OpResult, ir.Attrs{"index": k}, d) }
			d1 := b.op(ir.OpDropoutTrain, ir.Attrs{"p": p, "seed": 42}, x)
			d2 := b.op(ir.OpDropoutTrain, ir.Attrs{"p": p, "seed": 43}, x)
			y, mask, mask2 := res(d1, 0), res(d1, 1), res(d2, 1)
			dx := b.op(ir.OpMul, ir.Attrs{"c": 1 / (1 - p)}, b.op(ir.OpMul2, nil, dy, mask))
			out := b.runBoth(t, y, mask, mask2, dx)
			again := b.run(2, mask).Outputs[0]
			sameBits(t, "mask of a second run", again, out[1])
			kept, differ := 0, 0
			xv := b.val(x).Data
			scale := float32(1 / (1 - p))
			for i, m := range out[1].Data {
				if m != 0 && m != 1 {
					t.Fatalf("mask[%d] = %v, want 0 or 1", i, m)
				}
				if want := xv[i] * m * scale; out[0].Data[i] != want {
					t.Fatalf("y[%d] = %v, want x·mask·float32(1/(1-p)) = %v", i, out[0].Data[i], want)
				}
				if m == 1 {
					kept++
				}
				if out[2].Data[i] != m {
					differ++
				}
			}
			frac := float64(kept) / float64(len(xv))
			t.Logf("kept %.4f of %d elements, %d differ with another seed", frac, len(xv), differ)
			if p == 0 && kept != len(xv) {
				t.Fatalf("p = 0 kept %d of %d", kept, len(xv))
			}
			if math.Abs(frac-(1-p)) > 0.03 {
				t.Errorf("kept fraction %.4f, want about %.2f", frac, 1-p)
			}
			if p > 0 && differ == 0 {
				t.Errorf("seeds 42 and 43 give the same mask")
			}
			m := f64(out[1].Data)
			f := func(v [][]float64) []float64 {
				y := make([]float64, len(v[0]))
				for i, u := range v[0] {
					y[i] = u * m[i] / (1 - p)
				}
				return y
			}
			checkGrad(t, "dx", out[3], shape, numGrad(f, b.vals(x), 0, f64(b.val(dy).Data)))
		})
	}
}

// xent64 is label-smoothed softmax cross-entropy in float64, computed
// directly (log of the softmax's quotient, the maximum subtracted).
func xent64(x, target []float64, n, k int, eps float64) float64 {
	var loss float64
	for r := 0; r < n; r++ {
		xs := x[r*k : (r+1)*k]
		m := math.Inf(-1)
		for _, v := range xs {
			m = math.Max(m, v)
		}
		var z float64
		for _, v := range xs {
			z += math.Exp(v - m)
		}
		for j, v := range xs {
			t := (1-eps)*target[r*k+j] + eps/float64(k)
			loss -= t * math.Log(math.Exp(v-m)/z)
		}
	}
	return loss / float64(n)
}

// TestSoftmaxXent checks softmax_xent's value against xent64 (at 1e-6
// relative) and softmax_xent_grad against finite differences of xent64, with
// and without label smoothing, including logits around ±1000 where a naive
// softmax overflows.
func TestSoftmaxXent(t *testing.T) {
	const n, k = 5, 7
	for _, c := range []struct {
		name          string
		scale, offset float64
		smoothing     float64
	}{{"plain", 3, 0, 0}, {"smoothing", 3, 0, 0.1}, {"large logits", 5, 1000, 0.1}, {"negative logits", 5, -1000, 0.2}} {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, 20)
			x := b.input("logits", n, k)
			for i, v := range b.inputs["logits"].Data {
				b.inputs["logits"].Data[i] = float32(c.offset + c.scale*float64(v))
			}
			tg := b.input("target", n, k)
			one := b.inputs["target"].Data
			for i := range one {
				one[i] = 0
			}
			for r := 0; r < n; r++ {
				one[r*k+b.r.Intn(k)] = 1
			}
			attrs := ir.Attrs{"smoothing": c.smoothing}
			loss := b.op(ir.OpSoftmaxXent, attrs, x, tg)
			if got := b.typ(loss); got.Rank() != 0 || got.String() != "f32[]" {
				t.Fatalf("loss type %s, want f32[]", got)
			}
			out := b.runBoth(t, loss, b.op(ir.OpSoftmaxXentGrad, attrs, x, tg))
			v := b.vals(x, tg)
			want := xent64(v[0], v[1], n, k, c.smoothing)
			if len(out[0].Data) != 1 || math.Abs(float64(out[0].Data[0])-want) > 1e-6*math.Abs(want) {
				t.Fatalf("loss = %v, want %v", out[0].Data, want)
			}
			t.Logf("loss %v, float64 reference %v", out[0].Data[0], want)
			f := func(v [][]float64) []float64 { return []float64{xent64(v[0], v[1], n, k, c.smoothing)} }
			checkGrad(t, "dlogits", out[1], []int{n, k}, numGrad(f, v, 0, []float64{1}))
		})
	}
}

// TestOptimizers runs two steps of each optimizer as a graph (the second
// step fed with the first one's results, the params updated through
// Graph.Updates) and compares the parameter and state after each step with a
// float64 transcription of PyTorch's torch.optim code (TensorFlow's
// ApplyRMSProp kernel for rmsprop_tf_update), at 1e-6 relative.
func TestOptimizers(t *testing.T) {
	type hyper = map[string]float64
	cases := []struct {
		name  string
		op    string
		attrs hyper
		init  float64 // initial value of the state (square_avg for RMSProp)
		step  func(h hyper, p, g float64, s []float64, first bool) float64
	}{
		{"rmsprop/paper", ir.OpRMSPropUpdate, hyper{"lr": 0.045, "alpha": 0.9, "eps": 1.0, "momentum": 0.9}, 0, pytorchRMSProp},
		{"rmsprop/no-momentum/wd", ir.OpRMSPropUpdate, hyper{"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 1e-2}, 0, pytorchRMSProp},
		{"rmsprop_tf/paper", ir.OpRMSPropTFUpdate, hyper{"lr": 0.045, "alpha": 0.9, "eps": 1.0, "momentum": 0.9}, 1, tfRMSProp},
		{"rmsprop_tf/no-momentum", ir.OpRMSPropTFUpdate, hyper{"lr": 0.01, "alpha": 0.9, "eps": 1e-10, "weight_decay": 1e-2}, 1, tfRMSProp},
		{"sgd/momentum/wd", ir.OpSGDUpdate, hyper{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}, 0, pytorchSGD},
		{"sgd/plain", ir.OpSGDUpdate, hyper{"lr": 0.1}, 0, pytorchSGD},
	}
	shape := []int{4, 3, 3, 2}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, 21)
			p := b.param("w", -1, 1, shape...)
			g1, g2 := b.input("g1", shape...), b.input("g2", shape...)
			nstate := 2
			if c.op == ir.OpSGDUpdate {
				nstate = 1
			}
			state := []int{}
			for k := 0; k < nstate; k++ {
				init := 0.0
				if k == 0 {
					init = c.init
				}
				state = append(state, b.param(fmt.Sprintf("state%d", k), init, init, shape...))
			}
			attrs := ir.Attrs{}
			for k, v := range c.attrs {
				attrs[k] = v
			}
			step := func(p, g int, state []int) []int {
				u := b.op(c.op, attrs, append([]int{p, g}, state...)...)
				var res []int
				for k := 0; k <= len(state); k++ {
					res = append(res, b.op(ir.OpResult, ir.Attrs{"index": k}, u))
				}
				return res
			}
			s1 := step(p, g1, state)
			s2 := step(s1[0], g2, s1[1:])
			b.g.Updates = []ir.Update{{Param: p, Value: s2[0]}}
			for k, id := range state {
				b.g.Updates = append(b.g.Updates, ir.Update{Param: id, Value: s2[1+k]})
			}
			res := b.run(3, append(s1, s2...)...)

			pv := f64(b.val(p).Data)
			grads := [][]float64{f64(b.val(g1).Data), f64(b.val(g2).Data)}
			sv := make([][]float64, len(pv))
			for i := range sv {
				sv[i] = make([]float64, nstate)
				sv[i][0] = c.init
			}
			for k, g := range grads {
				for i := range pv {
					pv[i] = c.step(c.attrs, pv[i], g[i], sv[i], k == 0)
				}
				got := res.Outputs[k*(nstate+1):]
				checkClose(t, fmt.Sprintf("step %d param", k+1), got[0], &ref{shape: shape, data: pv}, 1e-6)
				for j := 0; j < nstate; j++ {
					want := newRef(shape...)
					for i := range sv {
						want.data[i] = sv[i][j]
					}
					checkClose(t, fmt.Sprintf("step %d state %d", k+1, j), got[1+j], want, 1e-6)
				}
			}
			sameBits(t, "updated param", res.Updates["w"], res.Outputs[nstate+1])
			if len(res.Updates) != nstate+1 {
				t.Errorf("Result.Updates has %d entries, want %d", len(res.Updates), nstate+1)
			}
		})
	}
}

// pytorchRMSProp transcribes torch.optim.RMSprop's single-tensor step
// (centered=False); s = [square_avg, momentum_buffer]. With momentum 0
// PyTorch keeps no buffer and the op's buffer result is g/(√v+ε).
func pytorchRMSProp(h map[string]float64, p, g float64, s []float64, _ bool) float64 {
	g += h["weight_decay"] * p
	s[0] = s[0]*h["alpha"] + (1-h["alpha"])*g*g
	avg := math.Sqrt(s[0]) + h["eps"]
	if h["momentum"] > 0 {
		s[1] = s[1]*h["momentum"] + g/avg
		return p - h["lr"]*s[1]
	}
	s[1] = g / avg // PyTorch keeps no buffer; the op's is μ·b + g/avg = g/avg
	return p - h["lr"]*g/avg
}

// tfRMSProp transcribes TensorFlow's ApplyRMSProp kernel
// (ms += (g² − ms)·(1−ρ); mom = mom·μ + lr·g/√(ms+ε); var −= mom), with
// the weight decay added to the gradient as the op does; s = [ms, mom].
func tfRMSProp(h map[string]float64, p, g float64, s []float64, _ bool) float64 {
	g += h["weight_decay"] * p
	s[0] += (g*g - s[0]) * (1 - h["alpha"])
	s[1] = s[1]*h["momentum"] + h["lr"]*g/math.Sqrt(s[0]+h["eps"])
	return p - s[1]
}

// pytorchSGD transcribes torch.optim.SGD's step (dampening 0, not Nesterov):
// buf = clone(g) on the first step, buf = μ·buf + g after; s = [buf]. (With
// μ = 0 PyTorch keeps no buffer; the op's buffer result is then g.)
func pytorchSGD(h map[string]float64, p, g float64, s []float64, first bool) float64 {
	g += h["weight_decay"] * p
	if h["momentum"] != 0 {
		if first {
			s[0] = g // PyTorch: buf = torch.clone(d_p) on the first step
		} else {
			s[0] = s[0]*h["momentum"] + g
		}
		g = s[0]
	} else {
		s[0] = g
	}
	return p - h["lr"]*g
}

// TestSupportsEveryOp requires an evaluator for every op in the op table.
func TestSupportsEveryOp(t *testing.T) {
	for _, op := range ir.Ops() {
		if !Supports(op) {
			t.Errorf("op %s has no interpreter evaluator", op)
		}
	}
}

// TestTrainingStep composes the gradient ops into the backward pass of a
// small network, conv 3×3 → batchnorm_train → relu → maxpool 3×3/2 pad 1 →
// global_avgpool → flatten → dense → softmax_xent (smoothing 0.1), runs the
// graph after a print/parse round trip, and compares the loss with the
// float64 forward and the gradients of the conv weight, BatchNorm weight and
// bias and dense weight and bias with finite differences of that forward.
// This checks that the ops' operand orders and attributes compose as an
// autodiff pass emits them.
func TestTrainingStep(t *testing.T) {
	const n, c, h, w, o, k, eps, smooth = 3, 2, 7, 6, 4, 5, 1e-3, 0.1
	b := newBuilder(t, 23)
	xs, ws := []int{n, c, h, w}, []int{o, c, 3, 3}
	conv := func() ir.Attrs { return ir.Attrs{"pad": []int{1, 1}} }
	pool := func() ir.Attrs { return ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}} }
	res := func(m, i int) int { return b.op(ir.OpResult, ir.Attrs{"index": i}, m) }
	x := b.input("x", xs...)
	tg := b.input("target", n, k)
	for i := range b.inputs["target"].Data {
		b.inputs["target"].Data[i] = 0
	}
	for r := 0; r < n; r++ {
		b.inputs["target"].Data[r*k+b.r.Intn(k)] = 1
	}
	cw := b.param("conv.weight", -1, 1, ws...)
	gamma, beta := b.param("bn.weight", 0.5, 1.5, o), b.param("bn.bias", -0.5, 0.5, o)
	fw, fb := b.param("fc.weight", -1, 1, k, o), b.param("fc.bias", -1, 1, k)
	cv := b.op(ir.OpConv2D, conv(), x, cw)
	bn := b.op(ir.OpBatchNormTrain, ir.Attrs{"eps": eps}, cv, gamma, beta)
	y, mean, vr := res(bn, 0), res(bn, 1), res(bn, 2)
	r := b.op(ir.OpReLU, nil, y)
	mp := b.op(ir.OpMaxPool, pool(), r)
	ph, pw := b.typ(mp).Shape[2], b.typ(mp).Shape[3]
	gp := b.op(ir.OpGlobalAvgPool, nil, mp)
	fl := b.op(ir.OpFlatten, nil, gp)
	fc := b.op(ir.OpDense, nil, fl, fw, fb)
	xent := ir.Attrs{"smoothing": smooth}
	loss := b.op(ir.OpSoftmaxXent, xent, fc, tg)
	dfc := b.op(ir.OpSoftmaxXentGrad, ir.Attrs{"smoothing": smooth}, fc, tg)
	dfw, dfb := b.op(ir.OpDenseGradWeight, nil, dfc, fl), b.op(ir.OpBiasGrad, nil, dfc)
	dfl := b.op(ir.OpDenseGradInput, nil, dfc, fw)
	dgp := b.op(ir.OpReshape, ir.Attrs{"shape": []int{n, o, 1, 1}}, dfl)
	dmp := b.op(ir.OpGlobalAvgPoolGrad, ir.Attrs{"input_hw": []int{ph, pw}}, dgp)
	pg := pool()
	dr := b.op(ir.OpMaxPoolGrad, pg, dmp, r)
	dy := b.op(ir.OpReLUGrad, nil, dr, r)
	dbn := b.op(ir.OpBatchNormTrainGrad, ir.Attrs{"eps": eps}, dy, cv, gamma, mean, vr)
	dcv, dgamma, dbeta := res(dbn, 0), res(dbn, 1), res(dbn, 2)
	dcw := b.op(ir.OpConv2DGradWeight, ir.Attrs{"pad": []int{1, 1}, "kernel": []int{3, 3}}, dcv, x)
	dx := b.op(ir.OpConv2DGradInput, ir.Attrs{"pad": []int{1, 1}, "input_hw": []int{h, w}}, dcv, cw)
	b.g.Outputs = []int{loss, dcw, dgamma, dbeta, dfw, dfb, dx}

	back, err := ir.Parse("step.ir", b.g.String())
	if err != nil {
		t.Fatal(err)
	}
	run, err := Run(back, b.params, b.inputs, Options{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	out := run.Outputs

	// v: x, conv.weight, bn.weight, bn.bias, fc.weight, fc.bias, target.
	fwd := func(v [][]float64) []float64 {
		a := bnTrain64(conv64(v[0], v[1], xs, ws, []int{1, 1}, []int{1, 1}, 1), v[2], v[3], []int{n, o, h, w}, eps)
		for i := range a {
			a[i] = math.Max(a[i], 0)
		}
		p := pool64(a, []int{n, o, h, w}, []int{3, 3}, []int{2, 2}, []int{1, 1}, true, false)
		feat := make([]float64, n*o)
		for i, u := range p {
			feat[i/(ph*pw)] += u / float64(ph*pw)
		}
		logits := make([]float64, n*k)
		for i := 0; i < n; i++ {
			for j := 0; j < k; j++ {
				s := v[5][j]
				for q := 0; q < o; q++ {
					s += feat[i*o+q] * v[4][j*o+q]
				}
				logits[i*k+j] = s
			}
		}
		return []float64{xent64(logits, v[6], n, k, smooth)}
	}
	v := b.vals(x, cw, gamma, beta, fw, fb, tg)
	want := fwd(v)[0]
	if d := math.Abs(float64(out[0].Data[0]) - want); d > 1e-6*math.Abs(want) {
		t.Errorf("loss %v, float64 forward %v", out[0].Data[0], want)
	}
	one := []float64{1}
	checkGrad(t, "conv.weight", out[1], ws, numGrad(fwd, v, 1, one))
	checkGrad(t, "bn.weight", out[2], []int{o}, numGrad(fwd, v, 2, one))
	checkGrad(t, "bn.bias", out[3], []int{o}, numGrad(fwd, v, 3, one))
	checkGrad(t, "fc.weight", out[4], []int{k, o}, numGrad(fwd, v, 4, one))
	checkGrad(t, "fc.bias", out[5], []int{k}, numGrad(fwd, v, 5, one))
	checkGrad(t, "x", out[6], xs, numGrad(fwd, v, 0, one))
}

// BenchmarkConvGrads times the conv gradients on a 3×3 layer of
// Inception-v4's stem (batch 2, 32→64 channels, 147×147, pad 1).
func BenchmarkConvGrads(bm *testing.B) {
	b := newBuilder(bm, 1)
	x := b.input("x", 2, 32, 147, 147)
	w := b.param("w", -1, 1, 64, 32, 3, 3)
	dy := b.input("dy", 2, 64, 147, 147)
	gi := b.op(ir.OpConv2DGradInput, ir.Attrs{"pad": []int{1, 1}, "input_hw": []int{147, 147}}, dy, w)
	gw := b.op(ir.OpConv2DGradWeight, ir.Attrs{"pad": []int{1, 1}, "kernel": []int{3, 3}}, dy, x)
	for _, c := range []struct {
		name string
		out  int
	}{{"input", gi}, {"weight", gw}} {
		bm.Run(c.name, func(bm *testing.B) {
			for i := 0; i < bm.N; i++ {
				b.run(0, c.out)
			}
			bm.ReportMetric(float64(b.g.MACs(c.out))*float64(bm.N)/bm.Elapsed().Seconds()/1e9, "GMAC/s")
		})
	}
}
