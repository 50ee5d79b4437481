package interp

import (
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// extEvaluators implements the ops of ir/ops_ext.go. The activations are
// computed in float64 from the float32 input and rounded once, so they are
// correctly rounded up to float64's own error and serve as the reference the
// compiled kernels' polynomial approximations are measured against. A NaN
// input gives NaN, as in PyTorch; SiLU is x/(1+e^-x) as PyTorch computes
// it, so SiLU(-Inf) is NaN there and here.
var extEvaluators = map[string]evalFunc{
	ir.OpSigmoid:       unaryF64(sigmoid64),
	ir.OpTanh:          unaryF64(math.Tanh),
	ir.OpSiLU:          unaryF64(func(x float64) float64 { return x / (1 + math.Exp(-x)) }),
	ir.OpHardSwish:     unaryF64(hardswish64),
	ir.OpClip:          evalClip,
	ir.OpSub:           evalSub,
	ir.OpChannelMul:    evalChannelMul,
	ir.OpGlobalMaxPool: evalGlobalMaxPool,
	ir.OpUpsample:      evalUpsample, // upsample.go
}

// sigmoid64 is 1/(1+e^-x), evaluated as e^x/(1+e^x) for negative x so that
// neither branch overflows.
func sigmoid64(x float64) float64 {
	if x >= 0 {
		return 1 / (1 + math.Exp(-x))
	}
	e := math.Exp(x)
	return e / (1 + e)
}

// hardswish64 is PyTorch's Hardswish: x * min(max(x+3, 0), 6) / 6. A NaN
// stays NaN (the comparisons are false and NaN * anything is NaN).
func hardswish64(x float64) float64 {
	r := x + 3
	if r < 0 {
		r = 0
	}
	if r > 6 {
		r = 6
	}
	return x * r / 6
}

// unaryF64 evaluates f elementwise in float64.
func unaryF64(f func(float64) float64) evalFunc {
	return func(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
		x := args[0].Data
		return elementwise(e, n, func(dst []float32, lo, hi int) {
			for i, v := range x[lo:hi] {
				dst[i] = float32(f(float64(v)))
			}
		}), nil
	}
}

// evalClip computes min(max(x, lo), hi) with lo and hi rounded to float32;
// NaN stays NaN (torch.clamp).
func evalClip(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0].Data
	lo, hi := float32(n.Attrs.Float("lo")), float32(n.Attrs.Float("hi"))
	return elementwise(e, n, func(dst []float32, a, b int) {
		for i, v := range x[a:b] {
			if v < lo {
				v = lo
			}
			if v > hi {
				v = hi
			}
			dst[i] = v
		}
	}), nil
}

// evalSub computes x - y for operands of equal shape.
func evalSub(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, y := args[0].Data, args[1].Data
	return elementwise(e, n, func(dst []float32, lo, hi int) {
		ys := y[lo:hi]
		for i, v := range x[lo:hi] {
			dst[i] = v - ys[i]
		}
	}), nil
}

// evalChannelMul computes out[n,c,h,w] = x[n,c,h,w] * s[n,c,0,0].
func evalChannelMul(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, s := args[0], args[1].Data
	hw := x.Shape[2] * x.Shape[3]
	out := newOut(n)
	parallelRange(e.threads, len(s), max(1, elementwiseGrain/hw), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			sc := s[p]
			dst, src := out.Data[p*hw:(p+1)*hw], x.Data[p*hw:(p+1)*hw]
			for i, v := range src {
				dst[i] = v * sc
			}
		}
	})
	return out, nil
}

// evalGlobalMaxPool computes the maximum of each H×W plane; a NaN in the
// plane gives NaN (as max pooling and PyTorch's adaptive_max_pool2d).
func evalGlobalMaxPool(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0]
	hw := x.Shape[2] * x.Shape[3]
	out := newOut(n)
	parallelRange(e.threads, len(out.Data), max(1, elementwiseGrain/hw), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			m := float32(math.Inf(-1))
			for _, v := range x.Data[p*hw : (p+1)*hw] {
				if v > m || v != v {
					m = v
				}
				if m != m {
					break
				}
			}
			out.Data[p] = m
		}
	})
	return out, nil
}
