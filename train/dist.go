package train

import (
	"fmt"
	"sort"

	"github.com/kiln-dev/kiln/ir"
)

// GradPrefix prefixes the names of the gradient inputs of a SplitStep's
// Update graph: "grad." + the param's name.
const GradPrefix = "grad."

// SplitStep is one training step cut where data-parallel training
// all-reduces the gradients: Grad computes each replica's gradients, the
// trainer averages them across replicas, and Update applies the same
// optimizer step on every replica. Running Grad, then Update with Grad's
// gradients, is the fused Step, op for op.
type SplitStep struct {
	// Grad computes, from the params and the inputs (images, Target), the
	// outputs [loss, logits] and the gradient of every learnable param
	// (Grads; before clipping), and updates the BatchNorm running
	// statistics (Graph.Updates).
	Grad *ir.Graph
	// Target is the name of Grad's one-hot target input.
	Target string
	// Grads maps each learnable param's name to its gradient node in Grad.
	Grads map[string]int
	// Ready lists the learnable params in the order their gradients are
	// complete when Grad runs in node order (ascending gradient node):
	// backward reaches the last layers first. A trainer fills its
	// all-reduce buckets in this order.
	Ready []string
	// Update takes the learnable params and the optimizer state as
	// params and each param's (averaged) gradient as the input
	// GradPrefix+name; it clips the gradients as the optimizer says and
	// updates every param and state tensor (Graph.Updates). Its outputs
	// are the gradients the update uses (after clipping), in the order of
	// Params.
	Update *ir.Graph
	// Params are the learnable params in network (checkpoint) order.
	Params []string
	// State lists the optimizer state params, as StepGraph.State.
	State []StateTensor
}

// Split builds the SplitStep of g with opts; see Step for the graphs'
// content, which Split divides at the gradients.
func Split(g *ir.Graph, opts StepOptions) (*SplitStep, error) {
	fw, loss, logits, learnable, grads, err := lossAndGradients(g, opts)
	if err != nil {
		return nil, err
	}
	ss := &SplitStep{Grad: fw, Target: TargetInput, Grads: map[string]int{}}
	for _, p := range learnable {
		ss.Grads[fw.Nodes[p].Name] = grads[p]
		ss.Params = append(ss.Params, fw.Nodes[p].Name)
	}
	ss.Ready = append([]string(nil), ss.Params...)
	sort.SliceStable(ss.Ready, func(a, b int) bool { return ss.Grads[ss.Ready[a]] < ss.Grads[ss.Ready[b]] })
	fw.Outputs = []int{loss, logits}
	if err := fw.Verify(); err != nil {
		return nil, fmt.Errorf("train: internal error: the gradient graph does not verify: %w", err)
	}

	opt := stepOptimizer(opts.Optimizer)
	ug := &ir.Graph{Name: g.Name + ".update"}
	sg := &StepGraph{Graph: ug, Target: TargetInput, Grads: map[string]int{}}
	var ps []int
	gs := map[int]int{}
	for _, p := range learnable {
		pn := fw.Nodes[p]
		typ := ir.Type{DType: pn.Type.DType, Shape: append([]int(nil), pn.Type.Shape...)}
		pi, err := ug.Add(&ir.Node{Op: ir.OpParam, Name: pn.Name, Type: typ, Pos: pn.Pos})
		if err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		typ.Shape = append([]int(nil), typ.Shape...)
		di, err := ug.Add(&ir.Node{Op: ir.OpInput, Name: GradPrefix + pn.Name, Type: typ, Pos: pn.Pos})
		if err != nil {
			return nil, fmt.Errorf("train: %w", err)
		}
		ps = append(ps, pi)
		gs[pi] = di
	}
	var pos ir.Pos
	if len(ps) > 0 {
		pos = ug.Nodes[ps[0]].Pos
	}
	if gs, err = clipGradients(ug, ps, gs, opt, pos); err != nil {
		return nil, err
	}
	for _, p := range ps {
		if err := sg.update(p, gs[p], opt); err != nil {
			return nil, err
		}
		ug.Outputs = append(ug.Outputs, gs[p])
	}
	if err := ug.Verify(); err != nil {
		return nil, fmt.Errorf("train: internal error: the update graph does not verify: %w", err)
	}
	ss.Update, ss.State = ug, sg.State
	return ss, nil
}

// stepOptimizer is Step's optimizer: an empty Kind means PaperRMSProp with
// o's clipping settings.
func stepOptimizer(o Optimizer) Optimizer {
	if o.Kind != "" {
		return o
	}
	p := PaperRMSProp
	p.ClipGradNorm, p.ClipGradValue = o.ClipGradNorm, o.ClipGradValue
	return p
}

// lossAndGradients is the first half of Step: the training forward of g,
// the loss against a one-hot target input and the (unclipped) gradient of
// every learnable param. It returns the graph, the loss and logits nodes,
// the learnable params and their gradient nodes.
func lossAndGradients(g *ir.Graph, opts StepOptions) (fw *ir.Graph, loss, logits int, learnable []int, grads map[int]int, err error) {
	fw, err = Forward(g, opts.Forward)
	if err != nil {
		return nil, 0, 0, nil, nil, err
	}
	if len(fw.Outputs) != 1 {
		return nil, 0, 0, nil, nil, fmt.Errorf("train: %s has %d outputs; training needs one (the logits)", g.Name, len(fw.Outputs))
	}
	logits = fw.Outputs[0]
	if n := fw.Nodes[logits]; n.Op == ir.OpSoftmax {
		logits = n.Args[0]
	}
	lt := fw.Nodes[logits].Type
	if lt.Rank() != 2 {
		return nil, 0, 0, nil, nil, ir.Errorf(fw.Nodes[logits].Pos, "train: the network output %s is not [N, classes] logits", lt)
	}
	pos := fw.Nodes[logits].Pos
	target, err := fw.Add(&ir.Node{Op: ir.OpInput, Name: TargetInput, Type: ir.Type{DType: lt.DType, Shape: append([]int(nil), lt.Shape...)}, Pos: pos})
	if err != nil {
		return nil, 0, 0, nil, nil, err
	}
	loss, err = fw.Add(&ir.Node{Op: ir.OpSoftmaxXent, Name: "loss", Args: []int{logits, target}, Attrs: ir.Attrs{"smoothing": opts.Smoothing}, Pos: pos})
	if err != nil {
		return nil, 0, 0, nil, nil, err
	}
	for i, n := range fw.Nodes {
		if n.Op == ir.OpParam && !n.Attrs.Bool("buffer") {
			learnable = append(learnable, i)
		}
	}
	if grads, err = Gradients(fw, loss, learnable); err != nil {
		return nil, 0, 0, nil, nil, err
	}
	for _, p := range learnable {
		if _, ok := grads[p]; !ok {
			return nil, 0, 0, nil, nil, ir.Errorf(fw.Nodes[p].Pos, "train: the loss does not depend on param %s", fw.Nodes[p].Name)
		}
	}
	return fw, loss, logits, learnable, grads, nil
}
