package interp

import (
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// This file holds the ops of ir/ops_fused.go: fused_conv, destination writes
// ("into" operands of fused_conv, maxpool and avgpool), empty and the
// build-time weight transforms. reorder and pack_weight are the identity on
// logical values (evalView); Run's layout conversion does their work.

// destination returns the tensor that node n's result is written to and the
// channel offset at which the op writes its value. Without an into operand it
// is a new zeroed tensor of n's type and offset 0. With one, the result is the
// destination with channels [offset, offset+C) replaced (value semantics): the
// destination operand itself when e.reuse allows writing it in place, else a
// copy of it. The two give identical results.
func (e *evaluator) destination(n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, int) {
	k := ir.IntoOperand(n)
	if k < 0 {
		return newOut(n), 0
	}
	d := args[k]
	if k >= len(e.reuse) || !e.reuse[k] {
		d = &tensor.Tensor{Shape: append([]int(nil), d.Shape...), Data: append([]float32(nil), d.Data...)}
	}
	return d, n.Attrs.Int("offset")
}

// evalFusedConv computes clip?(relu?(conv(x, weight) + bias? + residual?)) and writes
// it to its destination (into? at channel offset, else a new tensor). The
// float32 operations are those of conv2d (the GEMM sum, then + bias) followed
// by + residual, ReLU and clip, so the result is bitwise identical to the
// unfused conv2d → add → relu → clip (→ concat) chain.
func evalFusedConv(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	bi, ri, _ := ir.FusedConvOperands(n)
	ep := epilogue{relu: n.Attrs.Bool("relu"), clip: n.Attrs.Bool("clip"),
		lo: float32(n.Attrs.Float("clip_lo")), hi: float32(n.Attrs.Float("clip_hi"))}
	if bi >= 0 {
		ep.bias = args[bi].Data
	}
	if ri >= 0 {
		ep.residual = args[ri].Data
	}
	dst, off := e.destination(n, args)
	conv(e, n, args[0], args[1], dst, off, ep)
	return dst, nil
}

// bnScale returns s = gamma/sqrt(running_var+eps) for channel c in float64
// from the float32 parameters, exactly as evalBatchNorm computes it.
func bnScale(gamma, rvar []float32, c int, eps float64) float64 {
	return float64(gamma[c]) / math.Sqrt(float64(rvar[c])+eps)
}

// evalFoldBNWeight computes w[o, ...] * s[o] with s = gamma/sqrt(var+eps):
// s as in batchnorm (float64), the product in float64 from the float32 weight
// and rounded to float32 once. A convolution with the folded weight therefore
// differs from conv → batchnorm only by float32 rounding.
func evalFoldBNWeight(_ *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	w, gamma, rvar := args[0], args[1].Data, args[2].Data
	eps := n.Attrs.Float("eps")
	out := newOut(n)
	o := w.Shape[0]
	inner := len(w.Data) / o
	for c := 0; c < o; c++ {
		s := bnScale(gamma, rvar, c, eps)
		src, dst := w.Data[c*inner:(c+1)*inner], out.Data[c*inner:(c+1)*inner]
		for i, v := range src {
			dst[i] = float32(float64(v) * s)
		}
	}
	return out, nil
}

// evalFoldBNBias computes (bias - mean)*s + beta per channel, with s as in
// batchnorm, evaluated in float64 from the float32 parameters and rounded to
// float32 once; bias is 0 when absent, and the result then equals batchnorm's
// shift (beta - mean*s) bitwise.
func evalFoldBNBias(_ *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	gamma, beta, mean, rvar := args[0].Data, args[1].Data, args[2].Data, args[3].Data
	eps := n.Attrs.Float("eps")
	out := newOut(n)
	for c := range out.Data {
		var b float64
		if len(args) == 5 {
			b = float64(args[4].Data[c])
		}
		out.Data[c] = float32((b-float64(mean[c]))*bnScale(gamma, rvar, c, eps) + float64(beta[c]))
	}
	return out, nil
}

// evalEmpty returns a zeroed tensor of the node's type, so that channels no
// write covers (and padding lanes) are deterministic.
func evalEmpty(_ *evaluator, n *ir.Node, _ []*tensor.Tensor) (*tensor.Tensor, error) {
	return newOut(n), nil
}
