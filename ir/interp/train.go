package interp

// Training ops (ir/ops_train.go): gradients, training-mode forward ops, the
// loss and the optimizer updates.
//
// Numerics: every reduction of a gradient op (the sums over the batch,
// pixels, output channels and kernel taps of the conv and dense gradients,
// the per-channel sums of bias_grad and batchnorm_train_grad, the
// overlapping-window sums of the pool gradients, the loss) is accumulated in
// float64 from the float32 operands, and each result element is rounded to
// float32 once. Each element's summation order is fixed by the shapes alone,
// so results are bitwise identical for every Options.Threads. Elementwise
// ops (relu_grad, mul2, dropout_train, the optimizer updates) compute each
// element in float64 from its float32 operands and round once, except mul2,
// whose float32 product is already the correctly rounded one.

import (
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// trainEvaluators and trainMultiEvaluators are merged into evaluators and
// multiEvaluators (ops.go, multi.go).
var trainEvaluators = map[string]evalFunc{
	ir.OpReLUGrad:          evalReLUGrad,
	ir.OpConv2DGradInput:   evalConv2DGradInput,
	ir.OpConv2DGradWeight:  evalConv2DGradWeight,
	ir.OpBiasGrad:          evalBiasGrad,
	ir.OpMaxPoolGrad:       evalMaxPoolGrad,
	ir.OpAvgPoolGrad:       evalAvgPoolGrad,
	ir.OpGlobalAvgPoolGrad: evalGlobalAvgPoolGrad,
	ir.OpDenseGradInput:    evalDenseGradInput,
	ir.OpDenseGradWeight:   evalDenseGradWeight,
	ir.OpSlice:             evalSlice,
	ir.OpReshape:           evalView,
	ir.OpMul2:              evalMul2,
	ir.OpSoftmaxXent:       evalSoftmaxXent,
	ir.OpSoftmaxXentGrad:   evalSoftmaxXentGrad,
}

var trainMultiEvaluators = map[string]multiEvalFunc{
	ir.OpBatchNormTrainGrad: evalBatchNormTrainGrad,
	ir.OpDropoutTrain:       evalDropoutTrain,
	ir.OpRMSPropUpdate:      evalRMSProp,
	ir.OpRMSPropTFUpdate:    evalRMSPropTF,
	ir.OpSGDUpdate:          evalSGD,
}

// evalReLUGrad is PyTorch's threshold_backward(dy, y, 0) on ReLU's output:
// dx = dy where y > 0, else 0 (a NaN y gives 0, as y > 0 is false).
func evalReLUGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	dy, y := args[0].Data, args[1].Data
	return elementwise(e, n, func(dst []float32, lo, hi int) {
		ys := y[lo:hi]
		for i, v := range dy[lo:hi] {
			if ys[i] > 0 {
				dst[i] = v
			}
		}
	}), nil
}

// validOut returns the output positions [lo, hi) (within [0, out)) whose
// window tap k lands inside an input of size in: 0 <= o*s - p + k < in.
func validOut(out, in, k, s, p int) (int, int) {
	lo := 0
	if d := p - k; d > 0 {
		lo = (d + s - 1) / s
	}
	hi := 0
	if d := in - 1 + p - k; d >= 0 {
		hi = d/s + 1
	}
	return lo, max(lo, min(hi, out))
}

// convGeom holds the geometry of a convolution for its gradients.
type convGeom struct {
	batch, c, h, w  int // input
	o, ho, wo       int // output
	cg, og, kh, kw  int // per group; kernel
	sh, sw, ph, pw  int
	groups, khw, hw int
}

func convGeomOf(n *ir.Node, x, dy, w []int) convGeom {
	s, p, g := n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), n.Attrs.Int("groups")
	return convGeom{batch: x[0], c: x[1], h: x[2], w: x[3], o: dy[1], ho: dy[2], wo: dy[3],
		cg: w[1], og: w[0] / g, kh: w[2], kw: w[3], sh: s[0], sw: s[1], ph: p[0], pw: p[1],
		groups: g, khw: w[2] * w[3], hw: x[2] * x[3]}
}

// evalConv2DGradInput computes the input gradient of a grouped convolution
// (a transposed convolution, PyTorch's convolution_backward for the input):
//
//	dx[n,c,iy,ix] = Σ_{o in c's group} Σ_{ky,kx: iy = oy·sh−ph+ky, ix = ox·sw−pw+kx} dy[n,o,oy,ox]·w[o,c−g·Cg,ky,kx]
//
// One (image, input channel) plane per work item, accumulated in a float64
// plane in the order o, ky, kx, oy, ox.
func evalConv2DGradInput(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	dy, w := args[0], args[1]
	out := newOut(n)
	cg := convGeomOf(n, out.Shape, dy.Shape, w.Shape)
	opix := cg.ho * cg.wo
	parallel(e.threads, cg.batch*cg.c, func(_, p int) {
		b, c := p/cg.c, p%cg.c
		g, cl := c/cg.cg, c%cg.cg
		acc := make([]float64, cg.hw)
		for o := g * cg.og; o < (g+1)*cg.og; o++ {
			d := dy.Data[(b*cg.o+o)*opix : (b*cg.o+o+1)*opix]
			wk := w.Data[(o*cg.cg+cl)*cg.khw : (o*cg.cg+cl+1)*cg.khw]
			for ky := 0; ky < cg.kh; ky++ {
				oy0, oy1 := validOut(cg.ho, cg.h, ky, cg.sh, cg.ph)
				for kx := 0; kx < cg.kw; kx++ {
					wv := float64(wk[ky*cg.kw+kx])
					ox0, ox1 := validOut(cg.wo, cg.w, kx, cg.sw, cg.pw)
					for oy := oy0; oy < oy1; oy++ {
						row := acc[(oy*cg.sh-cg.ph+ky)*cg.w:]
						drow := d[oy*cg.wo : (oy+1)*cg.wo]
						ix := ox0*cg.sw - cg.pw + kx
						for ox := ox0; ox < ox1; ox++ {
							row[ix] += wv * float64(drow[ox])
							ix += cg.sw
						}
					}
				}
			}
		}
		dst := out.Data[p*cg.hw : (p+1)*cg.hw]
		for i, v := range acc {
			dst[i] = float32(v)
		}
	})
	return out, nil
}

// evalConv2DGradWeight computes the weight gradient of a grouped convolution
// (PyTorch's convolution_backward for the weight):
//
//	dw[o,cl,ky,kx] = Σ_n Σ_{oy,ox} dy[n,o,oy,ox]·x[n,g·Cg+cl, oy·sh−ph+ky, ox·sw−pw+kx]
//
// (terms with the input position in the padding are zero), one (o, cl) pair
// per work item, each element a float64 sum over n and oy of the row sums of
// dotStrided.
func evalConv2DGradWeight(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	dy, x := args[0], args[1]
	out := newOut(n)
	cg := convGeomOf(n, x.Shape, dy.Shape, out.Shape)
	opix := cg.ho * cg.wo
	parallel(e.threads, cg.o*cg.cg, func(_, p int) {
		o, cl := p/cg.cg, p%cg.cg
		c := o/cg.og*cg.cg + cl
		dst := out.Data[p*cg.khw : (p+1)*cg.khw]
		for ky := 0; ky < cg.kh; ky++ {
			oy0, oy1 := validOut(cg.ho, cg.h, ky, cg.sh, cg.ph)
			for kx := 0; kx < cg.kw; kx++ {
				ox0, ox1 := validOut(cg.wo, cg.w, kx, cg.sw, cg.pw)
				var s float64
				for b := 0; b < cg.batch && ox0 < ox1; b++ {
					d := dy.Data[(b*cg.o+o)*opix : (b*cg.o+o+1)*opix]
					xp := x.Data[(b*cg.c+c)*cg.hw : (b*cg.c+c+1)*cg.hw]
					for oy := oy0; oy < oy1; oy++ {
						xrow := xp[(oy*cg.sh-cg.ph+ky)*cg.w:]
						s += dotStrided(d[oy*cg.wo+ox0:oy*cg.wo+ox1], xrow[ox0*cg.sw-cg.pw+kx:], cg.sw)
					}
				}
				dst[ky*cg.kw+kx] = float32(s)
			}
		}
	})
	return out, nil
}

// dotStrided returns Σ_i a[i]·b[i·stride] in float64, as four interleaved
// partial sums (i mod 4) added as (s0+s1)+(s2+s3): a fixed order that
// depends only on len(a), with four independent addition chains.
func dotStrided(a, b []float32, stride int) float64 {
	var s0, s1, s2, s3 float64
	i, j := 0, 0
	for ; i+4 <= len(a); i, j = i+4, j+4*stride {
		s0 += float64(a[i]) * float64(b[j])
		s1 += float64(a[i+1]) * float64(b[j+stride])
		s2 += float64(a[i+2]) * float64(b[j+2*stride])
		s3 += float64(a[i+3]) * float64(b[j+3*stride])
	}
	for k := 0; i < len(a); i, j, k = i+1, j+stride, k+1 {
		switch k {
		case 0:
			s0 += float64(a[i]) * float64(b[j])
		case 1:
			s1 += float64(a[i]) * float64(b[j])
		default:
			s2 += float64(a[i]) * float64(b[j])
		}
	}
	return (s0 + s1) + (s2 + s3)
}

// channelSums returns, per channel c of an [N,C,...] tensor, the float64 sum
// of f(i) over every element index i of channel c (order n, then inner).
func channelSums(e *evaluator, shape []int, f func(i int) float64) []float64 {
	outer, ch, inner := channelLayout(shape)
	sums := make([]float64, ch)
	parallelRange(e.threads, ch, 1, func(lo, hi int) {
		for c := lo; c < hi; c++ {
			var s float64
			for o := 0; o < outer; o++ {
				for i := (o*ch + c) * inner; i < (o*ch+c+1)*inner; i++ {
					s += f(i)
				}
			}
			sums[c] = s
		}
	})
	return sums
}

// evalBiasGrad sums dy over every axis but 1 (the gradient of a bias added
// per channel, PyTorch's grad_bias = dy.sum over (N, H, W)).
func evalBiasGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	dy := args[0].Data
	sums := channelSums(e, args[0].Shape, func(i int) float64 { return float64(dy[i]) })
	out := newOut(n)
	for c, s := range sums {
		out.Data[c] = float32(s)
	}
	return out, nil
}

// evalBatchNormTrainGrad is the backward of training BatchNorm (Ioffe and
// Szegedy 2015, section 3; PyTorch's batch_norm_backward with training=True).
// Per channel c, with M = N·H·W values, σ⁻¹ = 1/√(var_c + eps) and
// x̂ = (x − mean_c)·σ⁻¹, where mean and var are batchnorm_train's batch mean
// and biased variance:
//
//	dbias_c   = Σ dy
//	dweight_c = Σ dy·x̂
//	dx        = weight_c·σ⁻¹/M · (M·dy − dbias_c − x̂·dweight_c)
//
// The sums are float64; dx is computed in float64 per element.
func evalBatchNormTrainGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	if n.Attrs.Int("ghost") > 0 || n.Attrs.Bool("sync") {
		return evalBatchNormTrainGradDist(e, n, args) // dist.go
	}
	dy, x, wt, mean, vr := args[0].Data, args[1].Data, args[2].Data, args[3].Data, args[4].Data
	eps := n.Attrs.Float("eps")
	outer, ch, inner := channelLayout(args[1].Shape)
	m := float64(outer * inner)
	inv := make([]float64, ch)
	for c := range inv {
		inv[c] = 1 / math.Sqrt(float64(vr[c])+eps)
	}
	sumDy := channelSums(e, args[1].Shape, func(i int) float64 { return float64(dy[i]) })
	sumDyXhat := channelSums(e, args[1].Shape, func(i int) float64 {
		c := i / inner % ch
		return float64(dy[i]) * (float64(x[i]) - float64(mean[c])) * inv[c]
	})
	dx := tensor.New(args[1].Shape...)
	dw, db := tensor.New(ch), tensor.New(ch)
	for c := range ch {
		dw.Data[c], db.Data[c] = float32(sumDyXhat[c]), float32(sumDy[c])
	}
	parallelRange(e.threads, outer*ch, max(1, elementwiseGrain/inner), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			c := p % ch
			k := float64(wt[c]) * inv[c] / m
			mu, iv := float64(mean[c]), inv[c]
			for i := p * inner; i < (p+1)*inner; i++ {
				xhat := (float64(x[i]) - mu) * iv
				dx.Data[i] = float32(k * (m*float64(dy[i]) - sumDy[c] - xhat*sumDyXhat[c]))
			}
		}
	})
	return []*tensor.Tensor{dx, dw, db}, nil
}

// poolGrad runs f on every (image, channel) plane in parallel with the dy
// plane, the x plane (nil when x is nil) and a zeroed float64 accumulator of
// the input plane's size, and rounds the accumulator into the result.
func poolGrad(e *evaluator, n *ir.Node, dy, x *tensor.Tensor, f func(dy, x []float32, acc []float64)) *tensor.Tensor {
	out := newOut(n)
	hw := out.Shape[2] * out.Shape[3]
	opix := dy.Shape[2] * dy.Shape[3]
	parallel(e.threads, out.Shape[0]*out.Shape[1], func(_, p int) {
		acc := make([]float64, hw)
		var xp []float32
		if x != nil {
			xp = x.Data[p*hw : (p+1)*hw]
		}
		f(dy.Data[p*opix:(p+1)*opix], xp, acc)
		dst := out.Data[p*hw : (p+1)*hw]
		for i, v := range acc {
			dst[i] = float32(v)
		}
	})
	return out
}

// evalMaxPoolGrad adds each dy to the input position of its window's
// maximum, found exactly as evalMaxPool finds the value: in-bounds pixels in
// row-major order, a strictly greater value or a NaN replaces the current
// one, so the first maximum wins ties and the first NaN wins outright; the
// position starts at the window's first in-bounds pixel, so padding never
// receives a gradient (PyTorch's CPU max_pool2d_with_indices and its
// backward). Overlapping windows add their contributions in float64.
func evalMaxPoolGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	w := windowOf(n)
	h, wd := args[1].Shape[2], args[1].Shape[3]
	ho, wo := args[0].Shape[2], args[0].Shape[3]
	return poolGrad(e, n, args[0], args[1], func(dy, src []float32, acc []float64) {
		for oy := 0; oy < ho; oy++ {
			y0, y1 := w.rows(oy, h)
			for ox := 0; ox < wo; ox++ {
				x0, x1 := w.cols(ox, wd)
				at := y0*wd + x0
				m := src[at]
			scan:
				for y := y0; y < y1; y++ {
					for x := x0; x < x1; x++ {
						if v := src[y*wd+x]; v > m || v != v {
							m, at = v, y*wd+x
							if v != v {
								break scan
							}
						}
					}
				}
				acc[at] += float64(dy[oy*wo+ox])
			}
		}
	}), nil
}

// evalAvgPoolGrad adds dy/count to every in-bounds pixel of each window, with
// count computed as evalAvgPool divides: kh·kw when count_include_pad is set,
// else the number of in-bounds pixels (PyTorch's avg_pool2d_backward,
// ceil_mode=False, no divisor_override).
func evalAvgPoolGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	w := windowOf(n)
	includePad := n.Attrs.Bool("count_include_pad")
	h, wd := n.Type.Shape[2], n.Type.Shape[3]
	ho, wo := args[0].Shape[2], args[0].Shape[3]
	return poolGrad(e, n, args[0], nil, func(dy, _ []float32, acc []float64) {
		for oy := 0; oy < ho; oy++ {
			y0, y1 := w.rows(oy, h)
			for ox := 0; ox < wo; ox++ {
				x0, x1 := w.cols(ox, wd)
				count := w.kh * w.kw
				if !includePad {
					count = (y1 - y0) * (x1 - x0)
				}
				g := float64(dy[oy*wo+ox]) / float64(count)
				for y := y0; y < y1; y++ {
					for x := x0; x < x1; x++ {
						acc[y*wd+x] += g
					}
				}
			}
		}
	}), nil
}

// evalGlobalAvgPoolGrad broadcasts dy[n,c]/(H·W) (computed in float64, rounded
// once) over each H×W plane.
func evalGlobalAvgPoolGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	dy := args[0].Data
	out := newOut(n)
	hw := out.Shape[2] * out.Shape[3]
	parallelRange(e.threads, len(dy), max(1, elementwiseGrain/hw), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			v := float32(float64(dy[p]) / float64(hw))
			plane := out.Data[p*hw : (p+1)*hw]
			for i := range plane {
				plane[i] = v
			}
		}
	})
	return out, nil
}

// evalDenseGradInput computes dx[N,I] = dy[N,O]·W[O,I], one row of dx per
// work item, accumulated in float64 in the order o.
func evalDenseGradInput(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	dy, w := args[0], args[1]
	o, in := w.Shape[0], w.Shape[1]
	out := newOut(n)
	parallel(e.threads, dy.Shape[0], func(_, b int) {
		acc := make([]float64, in)
		for j, d := range dy.Data[b*o : (b+1)*o] {
			axpy64(acc, float64(d), w.Data[j*in:(j+1)*in])
		}
		round32(out.Data[b*in:(b+1)*in], acc)
	})
	return out, nil
}

// evalDenseGradWeight computes dW[O,I] = dy[N,O]ᵀ·x[N,I], one row of dW per
// work item, accumulated in float64 in the order n.
func evalDenseGradWeight(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	dy, x := args[0], args[1]
	batch, in := x.Shape[0], x.Shape[1]
	o := dy.Shape[1]
	out := newOut(n)
	parallel(e.threads, o, func(_, j int) {
		acc := make([]float64, in)
		for b := 0; b < batch; b++ {
			axpy64(acc, float64(dy.Data[b*o+j]), x.Data[b*in:(b+1)*in])
		}
		round32(out.Data[j*in:(j+1)*in], acc)
	})
	return out, nil
}

// axpy64 adds a·x to acc in float64.
func axpy64(acc []float64, a float64, x []float32) {
	x = x[:len(acc)]
	for i, v := range x {
		acc[i] += a * float64(v)
	}
}

// round32 rounds src into dst.
func round32(dst []float32, src []float64) {
	src = src[:len(dst)]
	for i, v := range src {
		dst[i] = float32(v)
	}
}

// evalSlice copies elements [offset, offset+size) along axis: for every
// index of the axes before it, one contiguous chunk.
func evalSlice(_ *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0]
	ax, off, size := n.Attrs.Int("axis"), n.Attrs.Int("offset"), n.Attrs.Int("size")
	outer, inner := 1, 1
	for _, d := range x.Shape[:ax] {
		outer *= d
	}
	for _, d := range x.Shape[ax+1:] {
		inner *= d
	}
	out := newOut(n)
	full, part := x.Shape[ax]*inner, size*inner
	for o := 0; o < outer; o++ {
		copy(out.Data[o*part:(o+1)*part], x.Data[o*full+off*inner:o*full+off*inner+part])
	}
	return out, nil
}

// evalMul2 computes a*b elementwise in float32.
func evalMul2(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	a, b := args[0].Data, args[1].Data
	return elementwise(e, n, func(dst []float32, lo, hi int) {
		bs := b[lo:hi]
		for i, v := range a[lo:hi] {
			dst[i] = v * bs[i]
		}
	}), nil
}

// DropoutKeep reports whether dropout_train with seed and probability p keeps
// element i (the row-major index into x): u ≥ p, where u = (z >> 11)·2⁻⁵³ is
// uniform in [0, 1) and z the SplitMix64 output (Steele, Lea and Flood,
// "Fast splittable pseudorandom number generators", OOPSLA 2014; Vigna's
// splitmix64.c) for the state seed + (i+1)·0x9E3779B97F4A7C15. The mask is a
// pure function of (seed, i, p), so it does not depend on threads or on how
// the graph is scheduled, and p = 0 keeps everything.
func DropoutKeep(seed uint64, i int, p float64) bool {
	z := seed + uint64(i+1)*0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	return float64(z>>11)*(1.0/(1<<53)) >= p
}

// evalDropoutTrain computes dropout_train: mask_i = 1 if DropoutKeep(seed, i,
// p), else 0; y_i = x_i·float32(1/(1−p)) for kept elements (PyTorch scales
// the Bernoulli mask by 1/(1−p) and multiplies in float32), else 0.
func evalDropoutTrain(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	x := args[0]
	p, seed := n.Attrs.Float("p"), uint64(n.Attrs.Int("seed"))
	scale := float32(1 / (1 - p))
	y, mask := tensor.New(x.Shape...), tensor.New(x.Shape...)
	parallelRange(e.threads, len(x.Data), elementwiseGrain, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			if DropoutKeep(seed, i, p) {
				mask.Data[i] = 1
				y.Data[i] = x.Data[i] * scale
			}
		}
	})
	return []*tensor.Tensor{y, mask}, nil
}

// xentRows calls f(row, logp, t) for every row of logits [N,K] with the
// row's log-softmax and smoothed target in float64: logp_k = x_k − max −
// log Σ_j exp(x_j − max) (max subtraction keeps exp from overflowing) and
// t_k = (1−ε)·target_k + ε/K (PyTorch's label smoothing).
func xentRows(e *evaluator, n *ir.Node, args []*tensor.Tensor, f func(row int, logp, t []float64)) {
	x, tgt := args[0], args[1]
	rows, k := x.Shape[0], x.Shape[1]
	eps := n.Attrs.Float("smoothing")
	parallelRange(e.threads, rows, max(1, elementwiseGrain/k), func(lo, hi int) {
		logp, t := make([]float64, k), make([]float64, k)
		for r := lo; r < hi; r++ {
			xs, ts := x.Data[r*k:(r+1)*k], tgt.Data[r*k:(r+1)*k]
			m := math.Inf(-1)
			for _, v := range xs {
				if v := float64(v); v > m || v != v {
					m = v
				}
			}
			var s float64
			for _, v := range xs {
				s += math.Exp(float64(v) - m)
			}
			lse := m + math.Log(s)
			for j, v := range xs {
				logp[j] = float64(v) - lse
				t[j] = (1-eps)*float64(ts[j]) + eps/float64(k)
			}
			f(r, logp, t)
		}
	})
}

// evalSoftmaxXent computes the label-smoothed cross-entropy
// (1/N)·Σ_n −Σ_k t_nk·log softmax(x_n)_k in float64 (see xentRows), a rank-0
// result: PyTorch's CrossEntropyLoss(label_smoothing=ε, reduction='mean')
// with class-probability targets. Per-row losses are summed in row order.
func evalSoftmaxXent(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	rows := args[0].Shape[0]
	loss := make([]float64, rows)
	xentRows(e, n, args, func(r int, logp, t []float64) {
		var s float64
		for j, lp := range logp {
			s -= t[j] * lp
		}
		loss[r] = s
	})
	var s float64
	for _, v := range loss {
		s += v
	}
	out := newOut(n)
	out.Data[0] = float32(s / float64(rows))
	return out, nil
}

// evalSoftmaxXentGrad computes softmax_xent's gradient with respect to the
// logits, (softmax(x) − t)/N = (exp(logp) − t)/N, in float64.
func evalSoftmaxXentGrad(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	rows, k := args[0].Shape[0], args[0].Shape[1]
	out := newOut(n)
	xentRows(e, n, args, func(r int, logp, t []float64) {
		dst := out.Data[r*k : (r+1)*k]
		for j, lp := range logp {
			dst[j] = float32((math.Exp(lp) - t[j]) / float64(rows))
		}
	})
	return out, nil
}

// optimizerStep applies step to every element: it gets the float64 param,
// gradient (weight decay already added) and state, and returns the new
// param and state, each rounded to float32 once.
func optimizerStep(e *evaluator, n *ir.Node, args []*tensor.Tensor, step func(p, g float64, s []float64) float64) []*tensor.Tensor {
	wd := n.Attrs.Float("weight_decay")
	outs := make([]*tensor.Tensor, len(args)-1)
	for i := range outs {
		outs[i] = tensor.New(args[0].Shape...)
	}
	ns := len(args) - 2
	parallelRange(e.threads, len(args[0].Data), elementwiseGrain, func(lo, hi int) {
		s := make([]float64, ns)
		for i := lo; i < hi; i++ {
			p := float64(args[0].Data[i])
			g := float64(args[1].Data[i]) + wd*p
			for k := range s {
				s[k] = float64(args[2+k].Data[i])
			}
			outs[0].Data[i] = float32(step(p, g, s))
			for k, v := range s {
				outs[1+k].Data[i] = float32(v)
			}
		}
	})
	return outs
}

// evalRMSProp is PyTorch's torch.optim.RMSprop step (centered=False), per
// element with g = grad + weight_decay·p:
//
//	v ← α·v + (1−α)·g²;  b ← μ·b + g/(√v + ε);  p ← p − lr·b
//
// (μ = 0: p − lr·g/(√v+ε), as PyTorch). Results p, v, b. See ir/ops_train.go
// for the difference from TensorFlow's form.
func evalRMSProp(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	lr, alpha, eps, mu := n.Attrs.Float("lr"), n.Attrs.Float("alpha"), n.Attrs.Float("eps"), n.Attrs.Float("momentum")
	return optimizerStep(e, n, args, func(p, g float64, s []float64) float64 {
		s[0] = alpha*s[0] + (1-alpha)*g*g
		s[1] = mu*s[1] + g/(math.Sqrt(s[0])+eps)
		return p - lr*s[1]
	}), nil
}

// evalRMSPropTF is TensorFlow's ApplyRMSProp step, per element with
// g = grad + weight_decay·p:
//
//	v ← α·v + (1−α)·g²;  b ← μ·b + lr·g/√(v + ε);  p ← p − b
//
// Results p, v, b.
func evalRMSPropTF(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	lr, alpha, eps, mu := n.Attrs.Float("lr"), n.Attrs.Float("alpha"), n.Attrs.Float("eps"), n.Attrs.Float("momentum")
	return optimizerStep(e, n, args, func(p, g float64, s []float64) float64 {
		s[0] = alpha*s[0] + (1-alpha)*g*g
		s[1] = mu*s[1] + lr*g/math.Sqrt(s[0]+eps)
		return p - s[1]
	}), nil
}

// evalSGD is PyTorch's torch.optim.SGD step (dampening 0, not Nesterov), per
// element with g = grad + weight_decay·p:
//
//	b ← μ·b + g;  p ← p − lr·b
//
// With b starting at zero the first step gives b = g, PyTorch's first step.
// Results p, b.
func evalSGD(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	lr, mu := n.Attrs.Float("lr"), n.Attrs.Float("momentum")
	return optimizerStep(e, n, args, func(p, g float64, s []float64) float64 {
		s[0] = mu*s[0] + g
		return p - lr*s[0]
	}), nil
}
