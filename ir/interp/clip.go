package interp

// Gradient clipping ops (ir/ops_clip.go): sum_squares, global_norm_scale and
// scale_by, the global-norm clipping of PyTorch's
// torch.nn.utils.clip_grad_norm_.
//
// Numerics: sum_squares accumulates the squares in float64 in element order
// (one fixed order, so the result does not depend on Options.Threads) and
// rounds once; global_norm_scale computes √(Σ sᵢ), the quotient and the
// minimum in float64 from its float32 operands and rounds once, so a
// coefficient of exactly 1 (norm within max_norm) stays exactly 1; scale_by
// is the float32 product x·s, the correctly rounded one, which is x itself
// when s is 1. A NaN or infinite gradient makes the coefficient NaN or 0, as
// in PyTorch with error_if_nonfinite=False (its default in 1.13).

import (
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// clipEvaluators is merged into evaluators (ops.go).
var clipEvaluators = map[string]evalFunc{
	ir.OpSumSquares:      evalSumSquares,
	ir.OpGlobalNormScale: evalGlobalNormScale,
	ir.OpScaleBy:         evalScaleBy,
}

// evalSumSquares computes Σ x² over every element of x.
func evalSumSquares(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	var s float64
	for _, v := range args[0].Data {
		s += float64(v) * float64(v)
	}
	out := newOut(n)
	out.Data[0] = float32(s)
	return out, nil
}

// evalGlobalNormScale computes min(1, max_norm/(√(Σ sᵢ) + eps)).
func evalGlobalNormScale(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	out := newOut(n)
	out.Data[0] = float32(globalNormScale(n.Attrs.Float("max_norm"), n.Attrs.Float("eps"), args))
	return out, nil
}

// globalNormScale is global_norm_scale's value in float64: the coefficient
// min(1, maxNorm/(√(Σ sᵢ) + eps)) of PyTorch's clip_grad_norm_, where sᵢ is
// the one element of sums[i]. A NaN total gives NaN (as torch.clamp does).
func globalNormScale(maxNorm, eps float64, sums []*tensor.Tensor) float64 {
	var total float64
	for _, s := range sums {
		total += float64(s.Data[0])
	}
	coef := maxNorm / (math.Sqrt(total) + eps)
	if coef > 1 {
		coef = 1
	}
	return coef
}

// evalScaleBy computes x·s for the one element s of its second operand.
func evalScaleBy(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x, s := args[0].Data, args[1].Data[0]
	return elementwise(e, n, func(dst []float32, lo, hi int) {
		for i, v := range x[lo:hi] {
			dst[i] = v * s
		}
	}), nil
}
