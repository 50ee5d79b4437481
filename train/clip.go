package train

import (
	"fmt"
	"math"

	"github.com/kiln-dev/kiln/ir"
)

// CheckClip reports a clipping threshold of o that cannot clip: each must
// be 0 (off) or positive and finite.
func (o Optimizer) CheckClip() error {
	for _, c := range []struct {
		flag string
		v    float64
	}{{"clip-grad-norm", o.ClipGradNorm}, {"clip-grad-value", o.ClipGradValue}} {
		if !(c.v >= 0) || math.IsInf(c.v, 1) {
			return fmt.Errorf("train: --%s %v: must be positive and finite (0: off)", c.flag, c.v)
		}
	}
	return nil
}

// clipGradients adds o's gradient clipping to g after the gradients grads
// (by param node) of the params learnable, and returns the gradients the
// optimizer must use, by param node. Clipping happens before weight decay,
// which the update ops add, as in PyTorch, where clip_grad_norm_ and
// clip_grad_value_ act on p.grad between backward() and optimizer.step().
//
//   - ClipGradValue c > 0: every gradient element is clamped to [−c, c]
//     (torch.nn.utils.clip_grad_value_), a clip node per gradient.
//   - ClipGradNorm m > 0: every gradient is multiplied by
//     min(1, m/(‖g‖ + 1e-6)), ‖g‖ the L2 norm of all gradients together
//     (torch.nn.utils.clip_grad_norm_ with norm_type 2): a sum_squares node
//     per gradient, one global_norm_scale over all of them in learnable's
//     order, and a scale_by node per gradient (ir/ops_clip.go).
//
// With both, the values are clamped first and the norm is that of the
// clamped gradients. With neither, grads is returned unchanged and g gets
// no node.
func clipGradients(g *ir.Graph, learnable []int, grads map[int]int, o Optimizer, pos ir.Pos) (map[int]int, error) {
	if err := o.CheckClip(); err != nil {
		return nil, err
	}
	if o.ClipGradNorm == 0 && o.ClipGradValue == 0 {
		return grads, nil
	}
	out := make(map[int]int, len(grads))
	for p, d := range grads {
		out[p] = d
	}
	if c := o.ClipGradValue; c > 0 {
		for _, p := range learnable {
			d, err := g.Add(&ir.Node{Op: ir.OpClip, Args: []int{out[p]}, Attrs: ir.Attrs{"lo": -c, "hi": c}, Pos: g.Nodes[p].Pos})
			if err != nil {
				return nil, err
			}
			out[p] = d
		}
	}
	if m := o.ClipGradNorm; m > 0 {
		sums := make([]int, 0, len(learnable))
		for _, p := range learnable {
			s, err := g.Add(&ir.Node{Op: ir.OpSumSquares, Args: []int{out[p]}, Pos: g.Nodes[p].Pos})
			if err != nil {
				return nil, err
			}
			sums = append(sums, s)
		}
		scale, err := g.Add(&ir.Node{Op: ir.OpGlobalNormScale, Name: "clip_grad_norm", Args: sums, Attrs: ir.Attrs{"max_norm": m}, Pos: pos})
		if err != nil {
			return nil, err
		}
		for _, p := range learnable {
			d, err := g.Add(&ir.Node{Op: ir.OpScaleBy, Args: []int{out[p], scale}, Pos: g.Nodes[p].Pos})
			if err != nil {
				return nil, err
			}
			out[p] = d
		}
	}
	return out, nil
}
