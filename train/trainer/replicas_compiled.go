package trainer

import (
	"fmt"

	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// compiledGrad is the gradient graph of a SplitStep in the form the
// compiled backend runs (lower.LowerTraining): a copy of ss.Grad whose
// outputs are [loss, logits, the gradients in ss.Params order] (the
// gradients are read back as lower.OutputState(2+k)), and in which every
// learnable param is also "updated" to a copy of itself (mul by 1), since
// the compiled step keeps only updated params in the arena as run-time
// state (a param nothing updates would be a build-time constant).
func compiledGrad(ss *train.SplitStep) (*train.StepGraph, error) {
	g, err := ir.Parse(ss.Grad.Name+".grad", ss.Grad.String()) // an independent copy
	if err != nil {
		return nil, fmt.Errorf("trainer: internal error: copying the gradient graph: %w", err)
	}
	idx := map[string]int{}
	for i, n := range g.Nodes {
		if n.Op == ir.OpParam {
			idx[n.Name] = i
		}
	}
	outs := g.Outputs[:2:2]
	for _, name := range ss.Params {
		p := idx[name]
		c, err := g.Add(&ir.Node{Op: ir.OpMul, Name: name, Args: []int{p}, Attrs: ir.Attrs{"c": 1.0}, Pos: g.Nodes[p].Pos})
		if err != nil {
			return nil, fmt.Errorf("trainer: %w", err)
		}
		g.Updates = append(g.Updates, ir.Update{Param: p, Value: c})
		outs = append(outs, ss.Grads[name])
	}
	g.Outputs = outs
	if err := g.Verify(); err != nil {
		return nil, fmt.Errorf("trainer: internal error: the compiled gradient graph does not verify: %w", err)
	}
	return &train.StepGraph{Graph: g, Target: ss.Target}, nil
}

// compiledGrads runs the gradient graph on the compiled backend and
// returns the loss, the BatchNorm buffers' new values and the gradients in
// ss.Params order.
func (d *Replicas) compiledGrads(ss *train.SplitStep, params, inputs map[string]*tensor.Tensor) (float32, map[string]*tensor.Tensor, [][]float32, error) {
	if d.cgraph == nil || d.cfor != ss {
		sg, err := compiledGrad(ss)
		if err != nil {
			return 0, nil, nil, err
		}
		d.cgraph, d.cfor = sg, ss
	}
	loss, ups, err := d.Compiled.Step(d.cgraph, params, inputs)
	if err != nil {
		return 0, nil, nil, err
	}
	bufs := map[string]*tensor.Tensor{}
	for _, u := range ss.Grad.Updates {
		name := ss.Grad.Nodes[u.Param].Name
		bufs[name] = ups[name]
	}
	grads := make([][]float32, len(ss.Params))
	for k := range ss.Params {
		v, ok := d.Compiled.m.State(lower.OutputState(2 + k))
		if !ok {
			return 0, nil, nil, fmt.Errorf("trainer: the compiled gradient step has no output %d", 2+k)
		}
		grads[k] = v
	}
	return loss, bufs, grads, nil
}
