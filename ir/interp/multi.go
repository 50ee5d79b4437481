package interp

import (
	"math"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// multiEvalFunc computes every result of a multi-result node n (see
// ir/multi.go) from plain operands, in the order of n.Results.
type multiEvalFunc func(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error)

// multiEvaluators maps each multi-result op to its implementation.
var multiEvaluators = map[string]multiEvalFunc{
	ir.OpBatchNormTrain: evalBatchNormTrain,
}

// evalBatchNormTrain is BatchNorm's training forward (Ioffe and Szegedy 2015,
// Algorithm 1; PyTorch's batch_norm with training=True): per channel c over
// the N·H·W values, mean μ_c and biased variance σ²_c = mean((x-μ_c)²), both
// accumulated in float64 in two passes for accuracy, then
// y = (x-μ_c)/sqrt(σ²_c+eps)·γ_c + β_c. Results: y, μ, σ².
func evalBatchNormTrain(e *evaluator, n *ir.Node, args []*tensor.Tensor) ([]*tensor.Tensor, error) {
	if n.Attrs.Int("ghost") > 0 || n.Attrs.Bool("sync") {
		return evalBatchNormTrainDist(e, n, args) // dist.go
	}
	x, wt, bs := args[0], args[1].Data, args[2].Data
	eps := n.Attrs.Float("eps")
	outer, ch, inner := channelLayout(x.Shape)
	count := float64(outer * inner)
	mean := tensor.New(ch)
	vr := tensor.New(ch)
	scale := make([]float32, ch)
	shift := make([]float32, ch)
	parallelRange(e.threads, ch, 1, func(lo, hi int) {
		for c := lo; c < hi; c++ {
			var sum float64
			for o := range outer {
				for _, v := range x.Data[(o*ch+c)*inner : (o*ch+c+1)*inner] {
					sum += float64(v)
				}
			}
			mu := sum / count
			var ss float64
			for o := range outer {
				for _, v := range x.Data[(o*ch+c)*inner : (o*ch+c+1)*inner] {
					d := float64(v) - mu
					ss += d * d
				}
			}
			v := ss / count
			mean.Data[c], vr.Data[c] = float32(mu), float32(v)
			s := float64(wt[c]) / math.Sqrt(v+eps)
			scale[c], shift[c] = float32(s), float32(float64(bs[c])-mu*s)
		}
	})
	y := &tensor.Tensor{Shape: append([]int(nil), x.Shape...), Data: make([]float32, len(x.Data))}
	parallelRange(e.threads, outer*ch, max(1, elementwiseGrain/inner), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			s, t := scale[p%ch], shift[p%ch]
			src := x.Data[p*inner : (p+1)*inner]
			dst := y.Data[p*inner : (p+1)*inner]
			for i, v := range src {
				dst[i] = v*s + t
			}
		}
	})
	return []*tensor.Tensor{y, mean, vr}, nil
}
