package trainer

import (
	"fmt"

	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// updateInput is the name of the placeholder image input of the compiled
// update graph (compiledUpdate): lower.LowerTraining takes one input as
// the runtime's Manifest.Input, and the update graph has no images.
const updateInput = "kiln.update.x"

// compiledUpdateGraph is the update graph of a SplitStep in the form the
// compiled backend runs (lower.LowerTraining), with what Replicas needs
// to read its results.
type compiledUpdateGraph struct {
	sg *train.StepGraph
	// clipped: the gradients the update uses differ from its inputs (the
	// optimizer clips), and are read back as lower.OutputState(2+k).
	clipped bool
}

// compiledUpdate returns ss.Update in the form lower.LowerTraining
// accepts: an independent copy whose averaged gradients (inputs
// GradPrefix+name) are state the caller sets (Compiled.Step sets every
// input but the image input with Model.SetState), with a placeholder
// image input f32[1, 1] (updateInput) and a scale-by-1 of it as the
// loss and logits outputs LowerTraining requires; when the optimizer
// clips, the clipped gradients (ss.Update's outputs) follow as outputs
// 2, 3, …, read back as lower.OutputState(2+k). The params and optimizer
// state are the graph's updated params, so they stay in the loaded model
// between steps; the learning rate is lower.LRState, as in the fused
// compiled step. The optimizer ops (RMSProp, RMSProp-TF, SGD with
// momentum and weight decay) and clipping (clip by value, sum_squares
// and global_norm_scale for the global L2 norm, scale_by) are the
// compiled training kernels LowerTraining already has.
func compiledUpdate(ss *train.SplitStep) (*compiledUpdateGraph, error) {
	g, err := ir.Parse(ss.Update.Name, ss.Update.String()) // an independent copy
	if err != nil {
		return nil, fmt.Errorf("trainer: internal error: copying the update graph: %w", err)
	}
	clipped := false
	for _, o := range g.Outputs {
		if g.Nodes[o].Op != ir.OpInput {
			clipped = true
		}
	}
	var pos ir.Pos
	if len(g.Nodes) > 0 {
		pos = g.Nodes[0].Pos
	}
	x, err := g.Add(&ir.Node{Op: ir.OpInput, Name: updateInput, Type: ir.Type{DType: ir.F32, Shape: []int{1, 1}}, Pos: pos})
	if err != nil {
		return nil, fmt.Errorf("trainer: %w", err)
	}
	y, err := g.Add(&ir.Node{Op: ir.OpMul, Name: "kiln.update.y", Args: []int{x}, Attrs: ir.Attrs{"c": 1.0}, Pos: pos})
	if err != nil {
		return nil, fmt.Errorf("trainer: %w", err)
	}
	outs := []int{y, y}
	if clipped {
		outs = append(outs, g.Outputs...)
	}
	g.Outputs = outs
	if err := g.Verify(); err != nil {
		return nil, fmt.Errorf("trainer: internal error: the compiled update graph does not verify: %w", err)
	}
	return &compiledUpdateGraph{sg: &train.StepGraph{Graph: g, Target: updateInput + ".none"}, clipped: clipped}, nil
}

// compiledUpdateStep runs ss's update graph on the compiled backend, in a
// second model of d.Compiled (Compiled.update, built on the first call with
// the same threads and targets), on the averaged gradients uin (by input
// name, GradPrefix+param); params holds the learnable params and the
// optimizer state. It returns the updated params and state and the
// gradients the update used (after clipping), in ss.Params order.
//
// The new params and state are copied out of the model (the caller keeps
// them, and they must not change under it), and a caller that passes them
// back unchanged at the next step costs no copy in (Compiled.Step skips
// the tensors it returned); the gradients are copied in, as state.
func (d *Replicas) compiledUpdateStep(ss *train.SplitStep, params, uin map[string]*tensor.Tensor) (map[string]*tensor.Tensor, []*tensor.Tensor, error) {
	if d.ugraph == nil || d.ufor != ss {
		ug, err := compiledUpdate(ss)
		if err != nil {
			return nil, nil, err
		}
		d.ugraph, d.ufor = ug, ss
	}
	c := d.Compiled
	if c.update == nil {
		c.update = &Compiled{Threads: c.Threads, Targets: c.Targets, ISA: c.ISA}
	}
	e := c.update
	in := make(map[string]*tensor.Tensor, len(uin)+1)
	for k, v := range uin {
		in[k] = v
	}
	in[updateInput] = &tensor.Tensor{Shape: []int{1, 1}, Data: []float32{0}}
	_, ups, err := e.Step(d.ugraph.sg, params, in)
	if err != nil {
		return nil, nil, err
	}
	grads := make([]*tensor.Tensor, len(ss.Params))
	for k, name := range ss.Params {
		if !d.ugraph.clipped {
			grads[k] = uin[train.GradPrefix+name]
			continue
		}
		v, ok := e.m.State(lower.OutputState(2 + k))
		if !ok {
			return nil, nil, fmt.Errorf("trainer: the compiled update step has no output %d (the clipped gradient of %s)", 2+k, name)
		}
		grads[k] = &tensor.Tensor{Shape: append([]int(nil), uin[train.GradPrefix+name].Shape...), Data: v}
	}
	return ups, grads, nil
}
