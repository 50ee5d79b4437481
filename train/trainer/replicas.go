package trainer

import (
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/dist"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
)

// DefaultBucketBytes is the size the gradient all-reduce buckets fill up
// to (PyTorch DDP's bucket_cap_mb is 25 MB, Horovod's fusion buffer 64 MB;
// a smaller bucket starts communicating earlier in backward, which matters
// more here than per-call overhead).
const DefaultBucketBytes = 4 << 20

// Replicas runs data-parallel training steps in the reference interpreter:
// each replica (rank of Comm) runs the gradient graph of a train.SplitStep
// on its own shard of the global batch, the gradients are summed across
// replicas in buckets and divided by the replica count, and every replica
// runs the same update graph on the same averaged gradients, so the
// parameters and the optimizer state stay identical on every replica.
//
// Buckets overlap communication with backward, as PyTorch's
// DistributedDataParallel (Li et al. 2020, "PyTorch Distributed",
// section 3.2.3) and Horovod's tensor fusion do: the learnable params are
// taken in the order their gradients are complete (train.SplitStep.Ready,
// the last layers first) and packed into buckets of about BucketBytes; the
// interpreter reports each value as it is computed (interp.Options.OnValue),
// and when a bucket's last gradient is copied in, its IallreduceSum starts
// while backward goes on. The trainer waits for all buckets only before the
// update graph, which needs them.
//
// The BatchNorm running statistics, the loss and a stop flag are averaged
// (summed) in one more small all-reduce after backward, so the replicas
// also agree on the buffers (the mean of the replicas' running-statistics
// updates), on the reported loss (the mean over the global batch) and on
// stopping (an interrupt seen by any replica stops all after the same step).
type Replicas struct {
	Comm dist.Comm
	// BucketBytes is the bucket size (0: DefaultBucketBytes).
	BucketBytes int
	// Threads is interp.Options.Threads.
	Threads int
	// Profile accumulates the time split of the steps run.
	Profile DistProfile
	// Compiled, when set, runs the gradient graph as native code
	// (replicas_compiled.go). The buckets overlap its backward too: each
	// gradient is copied in from the running step's arena as soon as the
	// kernels computing it are complete (rt.Model.RunProgress). The
	// update graph runs as native code too, in a second model that keeps
	// the params and optimizer state (replicas_update.go).
	Compiled *Compiled
	// InterpUpdate runs the update graph in the interpreter even with
	// Compiled set (for comparisons); by default Compiled runs it too
	// (replicas_update.go).
	InterpUpdate bool

	plan   *bucketPlan
	cgraph *train.StepGraph // Compiled's form of cfor.Grad
	cfor   *train.SplitStep
	ugraph *compiledUpdateGraph // Compiled's form of ufor.Update
	ufor   *train.SplitStep
	crun   compiledRun // the last compiled gradient step's timeline
}

// DistProfile is where a replica's step time went.
type DistProfile struct {
	Steps int
	// Compute is forward and backward (the gradient graph, including
	// starting the buckets' all-reduces); Wait the time blocked on the
	// all-reduces after backward (the communication backward did not hide);
	// Update the optimizer step.
	Compute, Wait, Update time.Duration
	// Bytes is the gradient payload all-reduced per step (float32), in
	// Buckets buckets.
	Bytes   int64
	Buckets int
	// EarlyBytes are the gradient bytes whose all-reduce started before
	// the last gradient was computed (every bucket but the last; with
	// Compiled, the buckets issued before its last kernel completed), and
	// Ahead the sum over buckets of how long before the end of backward
	// each all-reduce started: the time communication could hide behind
	// computation.
	EarlyBytes int64
	Ahead      time.Duration
}

// String is the profile's one-line summary, per step.
func (p DistProfile) String() string {
	if p.Steps == 0 {
		return "no data-parallel steps"
	}
	per := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(p.Steps) }
	return fmt.Sprintf("per step: compute %.1f ms, all-reduce wait %.1f ms, update %.1f ms; %.2f MB of gradients in %d buckets, %.2f MB started during backward, on average %.1f ms before its end",
		per(p.Compute), per(p.Wait), per(p.Update), float64(p.Bytes)/1e6, p.Buckets, float64(p.EarlyBytes)/1e6/float64(p.Steps), per(p.Ahead)/float64(max(1, p.Buckets)))
}

// bucketPlan assigns each learnable param's gradient to a bucket.
type bucketPlan struct {
	ss      *train.SplitStep
	byNode  map[int]slot // gradient node in ss.Grad -> where it goes
	buckets [][]float32
	count   []int // gradients per bucket
	slots   map[string]slot
	keep    []int // the gradient nodes (interp.Options.Keep: not outputs of ss.Grad)
}

type slot struct {
	bucket, off, n int
}

func planBuckets(ss *train.SplitStep, bucketBytes int) *bucketPlan {
	p := &bucketPlan{ss: ss, byNode: map[int]slot{}, slots: map[string]slot{}}
	limit := bucketBytes / 4
	var sizes []int
	for _, name := range ss.Ready {
		n := ss.Grad.Nodes[ss.Grads[name]].Type.Numel()
		if len(sizes) == 0 || sizes[len(sizes)-1] >= limit {
			sizes = append(sizes, 0)
			p.count = append(p.count, 0)
		}
		b := len(sizes) - 1
		s := slot{bucket: b, off: sizes[b], n: n}
		sizes[b] += n
		p.count[b]++
		p.byNode[ss.Grads[name]] = s
		p.keep = append(p.keep, ss.Grads[name])
		p.slots[name] = s
	}
	for _, n := range sizes {
		p.buckets = append(p.buckets, make([]float32, n))
	}
	return p
}

// StepResult is what one data-parallel step returns, identical on every
// replica.
type StepResult struct {
	// Loss is the mean of the replicas' losses: the loss of the global
	// batch.
	Loss float32
	// Updates are the new params, BatchNorm buffers and optimizer state.
	Updates map[string]*tensor.Tensor
	// Grads are the averaged gradients the update used (after clipping).
	Grads map[string]*tensor.Tensor
	// Stop reports that some replica asked to stop.
	Stop bool
}

// Step runs one data-parallel step of ss on this replica's inputs (images
// under the network's input name, one-hot targets under ss.Target); stop
// is this replica's request to stop after the step. Every replica must call
// Step with the same ss and the same params.
func (d *Replicas) Step(ss *train.SplitStep, params, inputs map[string]*tensor.Tensor, stop bool) (*StepResult, error) {
	size := d.Comm.Size()
	if d.plan == nil || d.plan.ss != ss {
		bb := d.BucketBytes
		if bb <= 0 {
			bb = DefaultBucketBytes
		}
		d.plan = planBuckets(ss, bb)
	}
	p := d.plan
	pending := append([]int(nil), p.count...)
	reqs := make([]dist.Request, len(p.buckets))
	issued := make([]time.Time, len(p.buckets))
	t0 := time.Now()
	onValue := func(i int, v *tensor.Tensor) error {
		s, ok := p.byNode[i]
		if !ok {
			return nil
		}
		copy(p.buckets[s.bucket][s.off:s.off+s.n], v.Data)
		pending[s.bucket]--
		if pending[s.bucket] == 0 {
			r, err := d.Comm.IallreduceSum(p.buckets[s.bucket])
			if err != nil {
				return fmt.Errorf("gradient all-reduce: %w", err)
			}
			reqs[s.bucket], issued[s.bucket] = r, time.Now()
		}
		return nil
	}
	var localLoss float32
	var bufUps map[string]*tensor.Tensor
	if d.Compiled != nil {
		loss, bufs, err := d.compiledGrads(ss, params, inputs, onValue)
		if err != nil {
			return nil, err
		}
		localLoss, bufUps = loss, bufs
	} else {
		res, err := interp.Run(ss.Grad, params, inputs, interp.Options{Threads: d.Threads, Reducer: d.Comm, OnValue: onValue, Keep: p.keep})
		if err != nil {
			return nil, err
		}
		if len(res.Outputs) == 0 || len(res.Outputs[0].Data) != 1 {
			return nil, fmt.Errorf("trainer: the gradient graph's first output is not the scalar loss")
		}
		localLoss, bufUps = res.Outputs[0].Data[0], res.Updates
	}
	t1 := time.Now()
	d.countEarly(issued, t1)
	// Loss, stop flag and buffers: one more (small) all-reduce.
	var bufNames []string
	small := []float32{localLoss, 0}
	if stop {
		small[1] = 1
	}
	for _, u := range ss.Grad.Updates {
		name := ss.Grad.Nodes[u.Param].Name
		bufNames = append(bufNames, name)
		small = append(small, bufUps[name].Data...)
	}
	for b, r := range reqs {
		if r == nil {
			return nil, fmt.Errorf("trainer: internal error: gradient bucket %d was never complete", b)
		}
		if err := r.Wait(); err != nil {
			return nil, fmt.Errorf("gradient all-reduce: %w", err)
		}
	}
	if err := d.Comm.AllreduceSum(small); err != nil {
		return nil, fmt.Errorf("loss and BatchNorm statistics all-reduce: %w", err)
	}
	t2 := time.Now()
	inv := 1 / float32(size)
	out := &StepResult{Loss: small[0] * inv, Stop: small[1] != 0, Updates: map[string]*tensor.Tensor{}, Grads: map[string]*tensor.Tensor{}}
	off := 2
	for _, name := range bufNames {
		old := bufUps[name]
		t := &tensor.Tensor{Shape: append([]int(nil), old.Shape...), Data: make([]float32, len(old.Data))}
		for i := range t.Data {
			t.Data[i] = small[off+i] * inv
		}
		off += len(t.Data)
		out.Updates[name] = t
	}
	uin := map[string]*tensor.Tensor{}
	for name, s := range p.slots {
		shape := ss.Grad.Nodes[ss.Grads[name]].Type.Shape
		g := &tensor.Tensor{Shape: append([]int(nil), shape...), Data: make([]float32, s.n)}
		for i, v := range p.buckets[s.bucket][s.off : s.off+s.n] {
			g.Data[i] = v * inv
		}
		uin[train.GradPrefix+name] = g
	}
	if d.Compiled != nil && !d.InterpUpdate {
		ups, grads, err := d.compiledUpdateStep(ss, params, uin)
		if err != nil {
			return nil, err
		}
		for name, v := range ups {
			out.Updates[name] = v
		}
		for k, name := range ss.Params {
			out.Grads[name] = grads[k]
		}
	} else {
		ures, err := interp.Run(ss.Update, params, uin, interp.Options{Threads: d.Threads})
		if err != nil {
			return nil, err
		}
		for name, v := range ures.Updates {
			out.Updates[name] = v
		}
		for k, name := range ss.Params {
			out.Grads[name] = ures.Outputs[k]
		}
	}
	d.Profile.Steps++
	d.Profile.Compute += t1.Sub(t0)
	d.Profile.Wait += t2.Sub(t1)
	d.Profile.Update += time.Since(t2)
	d.Profile.Buckets = len(p.buckets)
	d.Profile.Bytes = 0
	for _, b := range p.buckets {
		d.Profile.Bytes += 4 * int64(len(b))
	}
	return out, nil
}
