package interp

import (
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// evalUpsample implements upsample (ir/ops_upsample.go): nearest copies
// x[oh/s][ow/s]; bilinear computes PyTorch's
// λ0h·(λ0w·x00 + λ1w·x01) + λ1h·(λ0w·x10 + λ1w·x11) in float64 with the
// source indices and weights of ir.UpsampleSource, rounded once. A NaN or
// Inf among the four taps propagates as in PyTorch (a zero weight times
// NaN or Inf is NaN).
func evalUpsample(e *evaluator, n *ir.Node, args []*tensor.Tensor) (*tensor.Tensor, error) {
	x := args[0]
	h, w := x.Shape[2], x.Shape[3]
	s, mode, ac := n.Attrs.Int("scale"), n.Attrs.String("mode"), n.Attrs.Bool("align_corners")
	oh, ow := h*s, w*s
	type tap struct {
		i0, i1 int
		l0, l1 float64
	}
	taps := func(out, in int) []tap {
		t := make([]tap, out)
		for o := range t {
			i0, i1, num, den := ir.UpsampleSource(o, in, s, mode, ac)
			l1 := float64(num) / float64(den)
			t[o] = tap{i0, i1, 1 - l1, l1}
		}
		return t
	}
	th, tw := taps(oh, h), taps(ow, w)
	out := newOut(n)
	planes := x.Shape[0] * x.Shape[1]
	parallelRange(e.threads, planes, max(1, elementwiseGrain/(oh*ow)), func(lo, hi int) {
		for p := lo; p < hi; p++ {
			src, dst := x.Data[p*h*w:(p+1)*h*w], out.Data[p*oh*ow:(p+1)*oh*ow]
			for y, ty := range th {
				r0, r1 := src[ty.i0*w:(ty.i0+1)*w], src[ty.i1*w:(ty.i1+1)*w]
				row := dst[y*ow : (y+1)*ow]
				for xo, tx := range tw {
					if mode != ir.UpsampleBilinear {
						row[xo] = r0[tx.i0]
						continue
					}
					top := tx.l0*float64(r0[tx.i0]) + tx.l1*float64(r0[tx.i1])
					bot := tx.l0*float64(r1[tx.i0]) + tx.l1*float64(r1[tx.i1])
					row[xo] = float32(ty.l0*top + ty.l1*bot)
				}
			}
		}
	})
	return out, nil
}
