package train

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// Optimizer names an update rule and its hyperparameters.
type Optimizer struct {
	// Kind is "rmsprop" (PyTorch's form, the default), "rmsprop-tf"
	// (TensorFlow's: ε inside the square root, square_avg starting at one)
	// or "sgd" (with momentum).
	Kind string
	// LR is the learning rate.
	LR float64
	// Alpha is RMSProp's decay of the squared-gradient average.
	Alpha float64
	// Eps is RMSProp's ε.
	Eps float64
	// Momentum is the momentum μ (RMSProp and SGD).
	Momentum float64
	// WeightDecay adds WeightDecay·p to each gradient (L2, PyTorch's
	// weight_decay).
	WeightDecay float64
	// ClipGradNorm, when positive, scales all gradients together so that
	// their global L2 norm is at most ClipGradNorm before the update
	// (PyTorch's torch.nn.utils.clip_grad_norm_; see clipGradients).
	ClipGradNorm float64 `json:",omitempty"`
	// ClipGradValue, when positive, clamps every gradient element to
	// [−ClipGradValue, ClipGradValue] before the update (and before
	// ClipGradNorm; torch.nn.utils.clip_grad_value_).
	ClipGradValue float64 `json:",omitempty"`
}

// PaperRMSProp is the paper's optimizer in PyTorch's form, the training
// fixtures' hyperparameters: RMSProp with decay 0.9, ε = 1.0, momentum 0.9,
// learning rate 0.045 (Szegedy et al. 2016, section 4).
var PaperRMSProp = Optimizer{Kind: "rmsprop", LR: 0.045, Alpha: 0.9, Eps: 1.0, Momentum: 0.9}

// StepOptions controls Step.
type StepOptions struct {
	Forward Options
	// Smoothing is the label smoothing ε of the cross-entropy loss.
	Smoothing float64
	// Optimizer is the update rule; an empty Kind means PaperRMSProp
	// (with Optimizer's clipping settings).
	Optimizer Optimizer
}

// StateTensor is an optimizer state tensor Step added as a mutable param,
// with the value it must start from.
type StateTensor struct {
	Name  string
	Shape []int
	// Init is the initial value of every element (0, or 1 for TensorFlow's
	// RMSProp square average).
	Init float32
}

// Initial returns a new tensor of the state's shape holding its initial
// value, what a run starts from before its first step.
func (s StateTensor) Initial() *tensor.Tensor {
	v := tensor.New(s.Shape...)
	for i := range v.Data {
		v.Data[i] = s.Init
	}
	return v
}

// StepGraph is one training step as a graph.
type StepGraph struct {
	// Graph computes, from the params (including optimizer state) and the
	// inputs (the images and Target), the outputs [loss, logits] and, as
	// Graph.Updates, every param, running statistic and optimizer state
	// tensor after the step.
	Graph *ir.Graph
	// Target is the name of the input holding the one-hot targets,
	// f32[N, K].
	Target string
	// Grads maps each learnable param's name to its gradient node: the
	// gradient the update uses, after clipping when the optimizer clips
	// (as PyTorch's p.grad after clip_grad_norm_).
	Grads map[string]int
	// State lists the optimizer state params, in graph order.
	State []StateTensor
}

// SetRun changes, in place, the two values of a step graph that a
// training loop changes from step to step: the learning rate of every
// optimizer update (the schedule's rate) and the base seed of the dropout
// masks (a fresh seed per step). Forward numbers a graph's dropout seeds
// base, base+1, … in graph order; SetRun keeps those offsets and moves the
// base to seed. The result is the graph Step would build with these
// options, so the loop builds the graph once and calls SetRun before each
// step instead of rebuilding it (an executor that compiled the graph may
// rely on this: SetRun changes nothing else).
func (sg *StepGraph) SetRun(lr float64, seed int) {
	g := sg.Graph
	base, _ := g.DropoutSeed()
	// New attribute maps: a node's map may be shared with another graph
	// (or node), which must not change.
	for _, n := range g.Nodes {
		switch n.Op {
		case ir.OpRMSPropUpdate, ir.OpRMSPropTFUpdate, ir.OpSGDUpdate:
			n.Attrs = withAttr(n.Attrs, "lr", lr)
		case ir.OpDropoutTrain:
			n.Attrs = withAttr(n.Attrs, "seed", seed+n.Attrs.Int("seed")-base)
		}
	}
}

// withAttr returns a copy of a with key set to v.
func withAttr(a ir.Attrs, key string, v any) ir.Attrs {
	b := make(ir.Attrs, len(a)+1)
	for k, x := range a {
		b[k] = x
	}
	b[key] = v
	return b
}

// TargetInput is the name of the one-hot target input Step adds.
const TargetInput = "target"

// Step builds one training step of g (a network as elaborated, returning
// logits or a softmax of them): the training forward (Forward), the
// label-smoothed softmax cross-entropy on the logits against a one-hot
// target input (PyTorch's CrossEntropyLoss(label_smoothing=ε), mean over
// the batch), the gradients of every learnable param (not buffers;
// Gradients) and the optimizer update of every learnable param and its
// state. Everything the step changes is a Graph.Update, so running the graph
// and then replacing each updated param by its new value is one step of
// training; doing it K times is K steps.
func Step(g *ir.Graph, opts StepOptions) (*StepGraph, error) {
	fw, err := Forward(g, opts.Forward)
	if err != nil {
		return nil, err
	}
	if len(fw.Outputs) != 1 {
		return nil, fmt.Errorf("train: %s has %d outputs; training needs one (the logits)", g.Name, len(fw.Outputs))
	}
	logits := fw.Outputs[0]
	if n := fw.Nodes[logits]; n.Op == ir.OpSoftmax {
		logits = n.Args[0] // train on the logits; softmax is folded into the loss
	}
	lt := fw.Nodes[logits].Type
	if lt.Rank() != 2 {
		return nil, ir.Errorf(fw.Nodes[logits].Pos, "train: the network output %s is not [N, classes] logits", lt)
	}
	pos := fw.Nodes[logits].Pos
	target, err := fw.Add(&ir.Node{Op: ir.OpInput, Name: TargetInput, Type: ir.Type{DType: lt.DType, Shape: append([]int(nil), lt.Shape...)}, Pos: pos})
	if err != nil {
		return nil, err
	}
	loss, err := fw.Add(&ir.Node{Op: ir.OpSoftmaxXent, Name: "loss", Args: []int{logits, target}, Attrs: ir.Attrs{"smoothing": opts.Smoothing}, Pos: pos})
	if err != nil {
		return nil, err
	}
	var learnable []int
	for i, n := range fw.Nodes {
		if n.Op == ir.OpParam && !n.Attrs.Bool("buffer") {
			learnable = append(learnable, i)
		}
	}
	grads, err := Gradients(fw, loss, learnable)
	if err != nil {
		return nil, err
	}
	opt := opts.Optimizer
	if opt.Kind == "" {
		clip := opt // the clipping settings apply to the default rule too
		opt = PaperRMSProp
		opt.ClipGradNorm, opt.ClipGradValue = clip.ClipGradNorm, clip.ClipGradValue
	}
	for _, p := range learnable {
		if _, ok := grads[p]; !ok {
			return nil, ir.Errorf(fw.Nodes[p].Pos, "train: the loss does not depend on param %s", fw.Nodes[p].Name)
		}
	}
	if grads, err = clipGradients(fw, learnable, grads, opt, pos); err != nil {
		return nil, err
	}
	sg := &StepGraph{Graph: fw, Target: TargetInput, Grads: map[string]int{}}
	for _, p := range learnable {
		pn := fw.Nodes[p]
		d := grads[p]
		sg.Grads[pn.Name] = d
		if err := sg.update(p, d, opt); err != nil {
			return nil, err
		}
	}
	fw.Outputs = []int{loss, logits}
	if err := fw.Verify(); err != nil {
		return nil, fmt.Errorf("train: internal error: the step graph does not verify: %w", err)
	}
	return sg, nil
}

// update adds the optimizer step of param p with gradient d: its state
// params (PyTorch's optimizer state names, prefixed "optim."), the update
// op and the Updates of the param and its state.
func (sg *StepGraph) update(p, d int, o Optimizer) error {
	g := sg.Graph
	pn := g.Nodes[p]
	state := func(suffix string, init float32) (int, error) {
		name := "optim." + pn.Name + "." + suffix
		sg.State = append(sg.State, StateTensor{Name: name, Shape: append([]int(nil), pn.Type.Shape...), Init: init})
		return g.Add(&ir.Node{Op: ir.OpParam, Name: name, Attrs: ir.Attrs{"buffer": true},
			Type: ir.Type{DType: pn.Type.DType, Shape: append([]int(nil), pn.Type.Shape...)}, Pos: pn.Pos})
	}
	var op string
	var attrs ir.Attrs
	var args []int
	switch o.Kind {
	case "rmsprop", "rmsprop-tf":
		init := float32(0)
		op = ir.OpRMSPropUpdate
		if o.Kind == "rmsprop-tf" {
			init, op = 1, ir.OpRMSPropTFUpdate
		}
		v, err := state("square_avg", init)
		if err != nil {
			return err
		}
		b, err := state("momentum_buffer", 0)
		if err != nil {
			return err
		}
		args = []int{p, d, v, b}
		attrs = ir.Attrs{"lr": o.LR, "alpha": o.Alpha, "eps": o.Eps, "momentum": o.Momentum, "weight_decay": o.WeightDecay}
	case "sgd":
		b, err := state("momentum_buffer", 0)
		if err != nil {
			return err
		}
		op, args = ir.OpSGDUpdate, []int{p, d, b}
		attrs = ir.Attrs{"lr": o.LR, "momentum": o.Momentum, "weight_decay": o.WeightDecay}
	default:
		return fmt.Errorf("train: unknown optimizer %q (rmsprop, rmsprop-tf, sgd)", o.Kind)
	}
	u, err := g.Add(&ir.Node{Op: op, Name: pn.Name, Args: args, Attrs: attrs, Pos: pn.Pos})
	if err != nil {
		return err
	}
	for k, target := range append([]int{p}, args[2:]...) {
		r, err := g.Add(&ir.Node{Op: ir.OpResult, Args: []int{u}, Attrs: ir.Attrs{"index": k}, Pos: pn.Pos})
		if err != nil {
			return err
		}
		g.Updates = append(g.Updates, ir.Update{Param: target, Value: r})
	}
	return nil
}
