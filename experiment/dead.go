package experiment

import (
	"fmt"
	"sync"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/trainer"
)

// PrePool returns the node whose value feeds the network's last
// global_avgpool: "the last layer before average pooling" of the paper's
// section 3.3, whose units died in its unstable wide residual networks.
func PrePool(g *ir.Graph) (int, error) {
	pre := -1
	for _, n := range g.Nodes {
		if n.Op == ir.OpGlobalAvgPool {
			pre = n.Args[0]
		}
	}
	if pre < 0 {
		return 0, fmt.Errorf("%s: no global_avgpool, so no layer before pooling to watch", g.Name)
	}
	if t := g.Nodes[pre].Type; t.Rank() != 4 {
		return 0, fmt.Errorf("%s: the value before global_avgpool is %s, not NCHW", g.Name, t)
	}
	return pre, nil
}

// deadExec is an Executor that also measures, over each evaluation of the
// test set, the fraction of "dead" channels of PrePool: channels that are
// exactly zero at every position for every test image. It wraps the real
// Executor: with the interpreter it keeps the pre-pool value of the same
// run (interp.Options.Keep), with a KeepInferer it asks for it; other
// executors are asked for the logits only and the dead-unit fraction is
// not measured (NaN).
//
// The trainer evaluates the test set in order, in batches padded with
// zero images; only the first testLen items count. An evaluation ends at
// the next training step or at fractions().
type deadExec struct {
	inner   trainer.Executor
	net     *ir.Graph
	pre     int
	testLen int

	mu      sync.Mutex
	seen    int    // test items seen in the current evaluation
	alive   []bool // per channel: nonzero somewhere
	pending bool
	fracs   []float64
}

func newDeadExec(inner trainer.Executor, g *ir.Graph, testLen int) (*deadExec, error) {
	pre, err := PrePool(g)
	if err != nil {
		return nil, err
	}
	return &deadExec{inner: inner, net: g, pre: pre, testLen: testLen}, nil
}

// Step implements trainer.Executor.
func (d *deadExec) Step(sg *train.StepGraph, params, inputs map[string]*tensor.Tensor) (float32, map[string]*tensor.Tensor, error) {
	d.finish()
	return d.inner.Step(sg, params, inputs)
}

// KeepInferer is an Executor that can also return the values of chosen
// nodes of the inference graph (for the interpreter, interp.Options.Keep;
// a compiled executor can compile them as taps). deadExec measures dead
// units with any executor that implements it.
type KeepInferer interface {
	InferKeep(g *ir.Graph, params, inputs map[string]*tensor.Tensor, keep []int) (*tensor.Tensor, map[int]*tensor.Tensor, error)
}

// Infer implements trainer.Executor.
func (d *deadExec) Infer(g *ir.Graph, params, inputs map[string]*tensor.Tensor) (*tensor.Tensor, error) {
	if k, ok := d.inner.(KeepInferer); ok && g == d.net {
		y, vals, err := k.InferKeep(g, params, inputs, []int{d.pre})
		if err != nil {
			return nil, err
		}
		d.observe(vals[d.pre])
		return y, nil
	}
	in, ok := d.inner.(trainer.Interpreter)
	if !ok || g != d.net {
		d.mu.Lock()
		d.alive = nil
		d.pending = true
		d.mu.Unlock()
		return d.inner.Infer(g, params, inputs)
	}
	res, err := interp.Run(g, params, inputs, interp.Options{Threads: in.Threads, Keep: []int{d.pre}})
	if err != nil {
		return nil, err
	}
	d.observe(res.Values[d.pre])
	return res.Outputs[0], nil
}

// observe folds one batch of pre-pool values (N, C, H, W) into alive.
func (d *deadExec) observe(v *tensor.Tensor) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, c := v.Shape[0], v.Shape[1]
	hw := v.Shape[2] * v.Shape[3]
	if !d.pending || d.alive == nil {
		d.pending, d.seen = true, 0
		d.alive = make([]bool, c)
	}
	m := min(n, d.testLen-d.seen)
	for b := 0; b < m; b++ {
		for ch := 0; ch < c; ch++ {
			if d.alive[ch] {
				continue
			}
			for _, x := range v.Data[(b*c+ch)*hw : (b*c+ch+1)*hw] {
				if x != 0 {
					d.alive[ch] = true
					break
				}
			}
		}
	}
	d.seen += n
}

// finish closes the current evaluation, if any, as one epoch's fraction.
func (d *deadExec) finish() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.pending {
		return
	}
	d.pending = false
	if d.alive == nil {
		d.fracs = append(d.fracs, nan)
		return
	}
	dead := 0
	for _, a := range d.alive {
		if !a {
			dead++
		}
	}
	d.fracs = append(d.fracs, float64(dead)/float64(len(d.alive)))
	d.alive = nil
}

// fractions returns the dead-unit fraction of every evaluation so far.
func (d *deadExec) fractions() []float64 {
	d.finish()
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]float64(nil), d.fracs...)
}
