package ir

import (
	"fmt"
	"math"
)

// Gradient clipping ops (issue 9): the three ops a training step graph
// (train.Step) needs to clip its gradients by their global L2 norm, as
// PyTorch's torch.nn.utils.clip_grad_norm_ (PyTorch 1.13,
// torch/nn/utils/clip_grad.py) does:
//
//	total = ‖(‖g₁‖₂, …, ‖gₙ‖₂)‖₂ = √(Σᵢ Σ gᵢ²)
//	coef  = min(1, max_norm / (total + 1e-6))
//	gᵢ   ← gᵢ · coef
//
// as sum_squares per gradient (Σ gᵢ², a rank-0 value), one
// global_norm_scale over all of them (coef, rank 0) and scale_by per
// gradient (gᵢ · coef). Clipping by value (torch.nn.utils.clip_grad_value_,
// gᵢ ← clamp(gᵢ, −c, c)) needs no new op: it is clip (ops_ext.go) with
// lo = −c, hi = c. All three work on plain layouts and float dtypes, like
// the other training ops; the coefficient is exactly 1 when the norm is
// within max_norm, so scale_by then returns its operand bit for bit.
const (
	// OpSumSquares is Σ x², over every element, as a rank-0 value.
	OpSumSquares = "sum_squares"
	// OpGlobalNormScale is min(1, max_norm/(√(Σ sᵢ) + eps)) of rank-0 sums
	// of squares sᵢ.
	OpGlobalNormScale = "global_norm_scale"
	// OpScaleBy is x times a one-element tensor s.
	OpScaleBy = "scale_by"
)

// positiveFiniteFloat checks a float attribute that must be in (0, +Inf).
func positiveFiniteFloat(v any) error {
	if f := v.(float64); !(f > 0) || math.IsInf(f, 1) {
		return fmt.Errorf("must be positive and finite, got %v", f)
	}
	return nil
}

func init() {
	register(&OpDef{Name: OpSumSquares, Operands: []string{"x"}, MinArgs: 1, MaxArgs: 1,
		Doc:     "the sum of the squares of every element of x, a rank-0 result (the squared L2 norm)",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			return Type{DType: a[0].DType, Shape: []int{}}, nil
		}})
	register(&OpDef{Name: OpGlobalNormScale, Operands: []string{"sum_squares"}, MinArgs: 1, MaxArgs: -1,
		Doc: "min(1, max_norm / (sqrt(s1 + s2 + ...) + eps)) of rank-0 sums of squares: the coefficient of " +
			"PyTorch's clip_grad_norm_ (eps 1e-6); a rank-0 result",
		Layouts: allPlain, DTypes: floatDTypes,
		Attrs: []AttrDef{
			{Name: "max_norm", Kind: AttrFloat, Check: positiveFiniteFloat},
			{Name: "eps", Kind: AttrFloat, Default: 1e-6, Check: nonNegativeFloat},
		},
		Infer: func(n *Node, a []Type) (Type, error) {
			for i, t := range a {
				if t.Numel() != 1 {
					return Type{}, fmt.Errorf("operand %d is %s, want one element (a sum_squares)", i, t)
				}
			}
			return Type{DType: a[0].DType, Shape: []int{}}, nil
		}})
	register(&OpDef{Name: OpScaleBy, Operands: []string{"x", "s"}, MinArgs: 2, MaxArgs: 2,
		Doc:     "x times the one element of s (a rank-0 or one-element tensor computed at run time)",
		Layouts: allPlain, DTypes: floatDTypes,
		Infer: func(n *Node, a []Type) (Type, error) {
			if a[1].Numel() != 1 {
				return Type{}, fmt.Errorf("scale s is %s, want one element", a[1])
			}
			return same(a[0]), nil
		}})
}
