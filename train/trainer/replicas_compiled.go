package trainer

import (
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
	"github.com/kiln-dev/kiln/train"
)

// compiledGrad is the gradient graph of a SplitStep in the form the
// compiled backend runs (lower.LowerTraining): a copy of ss.Grad whose
// outputs are [loss, logits, the gradients in ss.Params order] (the
// gradients are read back as lower.OutputState(2+k)), and in which every
// learnable param is also "updated" to itself (ir.Update{Param: p, Value:
// p}), since the compiled step keeps only updated params in the arena as
// run-time state (a param nothing updates would be a build-time constant).
// The update costs no kernel and no copy: the state's update offset is its
// own offset, so it is a settable input, and compiledGrads does not read
// it back (Compiled.skipRead).
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
		g.Updates = append(g.Updates, ir.Update{Param: p, Value: p})
		outs = append(outs, ss.Grads[name])
	}
	g.Outputs = outs
	if err := g.Verify(); err != nil {
		return nil, fmt.Errorf("trainer: internal error: the compiled gradient graph does not verify: %w", err)
	}
	return &train.StepGraph{Graph: g, Target: ss.Target}, nil
}

// compiledRun is the timeline of the last compiled gradient step.
type compiledRun struct {
	// allDone is when the step's last kernel was seen complete (the
	// gradients handed over from then on did not overlap backward);
	// returned when the native call had returned.
	allDone, returned time.Time
	// during counts the gradients handed over while kernels still ran.
	during int
}

// compiledGrads runs the gradient graph on the compiled backend and
// returns the loss and the BatchNorm buffers' new values; it hands each
// gradient to onValue (its node in ss.Grad, its value) as soon as it is
// final, while backward still runs, as the interpreter's
// interp.Options.OnValue does, and in the same order. The step runs with
// a progress callback (rt.Model.RunProgress, polled by a goroutine of the
// runtime while the native call runs): when the count of complete kernels
// reaches lower.Program.OutputReady of gradient output 2+k, gradient k is
// read from the arena (its output state's offset) and passed on, so a
// bucket whose gradients are all final starts its all-reduce then.
// onValue is called from that goroutine while this one waits in the
// native call, one call at a time, so the Comm still sees its collectives
// issued one at a time; gradients not yet handed over when the kernels
// return (none, unless the shared object predates the progress signal)
// are handed over after.
func (d *Replicas) compiledGrads(ss *train.SplitStep, params, inputs map[string]*tensor.Tensor, onValue func(int, *tensor.Tensor) error) (float32, map[string]*tensor.Tensor, error) {
	if d.cgraph == nil || d.cfor != ss {
		sg, err := compiledGrad(ss)
		if err != nil {
			return 0, nil, err
		}
		d.cgraph, d.cfor = sg, ss
	}
	e := d.Compiled
	d.crun = compiledRun{}
	sent := make([]bool, len(ss.Params))
	// Gradients go to onValue in ss.Ready order, the order the buckets
	// are packed in, each once all before it have gone: every rank then
	// issues its buckets' all-reduces in the same order (collectives must
	// be; PyTorch DDP also launches its buckets in order), whatever the
	// timing of the polls.
	pos := map[string]int{}
	for i, name := range ss.Params {
		pos[name] = i
	}
	order := make([]int, len(ss.Ready))
	for i, name := range ss.Ready {
		order[i] = pos[name]
	}
	next := 0
	var offs []int64 // arena offsets (floats) of the gradients, set on the first call
	var cbErr error
	e.progress = func(done int, arena []float32) {
		if cbErr != nil {
			return
		}
		nk := len(e.m.Manifest().Kernels)
		if done >= nk && d.crun.allDone.IsZero() {
			d.crun.allDone = time.Now()
		}
		if offs == nil {
			if len(e.ready) != 2+len(ss.Params) {
				cbErr = fmt.Errorf("trainer: internal error: the compiled gradient step has %d outputs, want %d", len(e.ready), 2+len(ss.Params))
				return
			}
			offs = make([]int64, len(ss.Params))
			for k := range ss.Params {
				st, ok := stateInfo(e.m.Manifest(), lower.OutputState(2+k))
				if !ok {
					cbErr = fmt.Errorf("trainer: the compiled gradient step has no output %d", 2+k)
					return
				}
				offs[k] = st.Update
			}
		}
		for ; next < len(order) && e.ready[2+order[next]] <= done; next++ {
			k := order[next]
			name := ss.Params[k]
			sent[k] = true
			if done < nk {
				d.crun.during++
			}
			node := ss.Grad.Nodes[ss.Grads[name]]
			n := int64(node.Type.Numel())
			// onValue copies the value into its bucket before returning.
			if err := onValue(ss.Grads[name], &tensor.Tensor{Shape: node.Type.Shape, Data: arena[offs[k] : offs[k]+n]}); err != nil {
				cbErr = err
				return
			}
		}
	}
	e.skipRead = map[string]bool{}
	for _, name := range ss.Params {
		e.skipRead[name] = true
	}
	loss, ups, err := e.Step(d.cgraph, params, inputs)
	e.progress, e.skipRead = nil, nil
	d.crun.returned = time.Now()
	if err != nil {
		return 0, nil, err
	}
	if cbErr != nil {
		return 0, nil, cbErr
	}
	for k := range sent {
		if !sent[k] {
			return 0, nil, fmt.Errorf("trainer: internal error: the compiled gradient step never produced gradient %s", ss.Params[k])
		}
	}
	bufs := map[string]*tensor.Tensor{}
	for _, u := range ss.Grad.Updates {
		name := ss.Grad.Nodes[u.Param].Name
		bufs[name] = ups[name]
	}
	return loss, bufs, nil
}

// stateInfo finds the state entry name in man.
func stateInfo(man *rt.Manifest, name string) (rt.StateInfo, bool) {
	for _, st := range man.State {
		if st.Name == name {
			return st, true
		}
	}
	return rt.StateInfo{}, false
}

// countEarly adds one step's overlap to d.Profile: Ahead, how long before
// end (the end of backward) each bucket's all-reduce was issued, and
// EarlyBytes, the bytes whose all-reduce started while backward still
// ran. In the interpreter that is every bucket but the last (the last
// starts with the last gradient); in the compiled step, the buckets
// issued before its last kernel was seen complete.
func (d *Replicas) countEarly(issued []time.Time, end time.Time) {
	for b, at := range issued {
		if at.IsZero() {
			continue
		}
		d.Profile.Ahead += end.Sub(at)
		early := b < len(d.plan.buckets)-1
		if d.Compiled != nil {
			early = d.crun.allDone.IsZero() || at.Before(d.crun.allDone)
		}
		if early {
			d.Profile.EarlyBytes += 4 * int64(len(d.plan.buckets[b]))
		}
	}
}
