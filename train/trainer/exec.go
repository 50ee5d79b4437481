// Package trainer is kiln train's training loop: epochs of seeded, augmented
// batches through a training step graph (train.Step), evaluation of the
// inference graph on a test set, the paper's learning-rate schedule, an
// exponential moving average of the parameters, per-epoch metrics, and
// atomic checkpoints from which a run resumes bit for bit.
//
// The graphs run on an Executor: Interpreter (ir/interp, the reference
// interpreter) or Compiled (the step graph as native code through
// codegen/lower.LowerTraining), without touching the loop.
package trainer

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// Executor runs the two graphs of a training run.
type Executor interface {
	// Step runs one training step: sg's graph with params (network params,
	// BatchNorm buffers and optimizer state, by name) and inputs (the images
	// under the network's input name, the one-hot targets under sg.Target).
	// It returns the loss and the new value of every param the step updates
	// (sg.Graph.Updates), by name; params is not modified, except that an
	// executor may return tensors it updates in place at its next Step
	// (Compiled does: its model's state), so a caller that keeps a step's
	// values past the next Step copies them.
	Step(sg *train.StepGraph, params, inputs map[string]*tensor.Tensor) (loss float32, updates map[string]*tensor.Tensor, err error)
	// Infer runs the inference graph g and returns its first output.
	Infer(g *ir.Graph, params, inputs map[string]*tensor.Tensor) (*tensor.Tensor, error)
}

// Interpreter runs both graphs in the reference interpreter, whose results
// do not depend on Threads (ir/interp), so a run is reproducible on any
// machine.
type Interpreter struct {
	// Threads is interp.Options.Threads (0: GOMAXPROCS).
	Threads int
}

// Step implements Executor.
func (e Interpreter) Step(sg *train.StepGraph, params, inputs map[string]*tensor.Tensor) (float32, map[string]*tensor.Tensor, error) {
	res, err := interp.Run(sg.Graph, params, inputs, interp.Options{Threads: e.Threads})
	if err != nil {
		return 0, nil, err
	}
	if len(res.Outputs) == 0 || len(res.Outputs[0].Data) != 1 {
		return 0, nil, fmt.Errorf("trainer: the step graph's first output is not the scalar loss")
	}
	return res.Outputs[0].Data[0], res.Updates, nil
}

// Infer implements Executor.
func (e Interpreter) Infer(g *ir.Graph, params, inputs map[string]*tensor.Tensor) (*tensor.Tensor, error) {
	res, err := interp.Run(g, params, inputs, interp.Options{Threads: e.Threads})
	if err != nil {
		return nil, err
	}
	return res.Outputs[0], nil
}
