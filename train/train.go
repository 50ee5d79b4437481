// Package train turns inference graphs into training graphs (issue 9).
//
// Forward, the first stage, rewrites a network as elaborated (inference
// BatchNorm with running statistics) into its training-mode forward pass:
// batch statistics, and running statistics updated as mutable state through
// ir.Graph.Updates, exactly as PyTorch's nn.BatchNorm2d does in train(),
// and dropout with p > 0 as training-mode (inverted) dropout.
// The loss, the backward pass and the optimizer attach to the graph Forward
// returns (see Forward).
package train

import (
	"fmt"

	"github.com/kiln-dev/kiln/ir"
)

// DefaultMomentum is PyTorch's BatchNorm momentum (nn.BatchNorm2d's
// momentum=0.1): running = (1−0.1)·running + 0.1·batch statistic.
const DefaultMomentum = 0.1

// Options controls Forward.
type Options struct {
	// Momentum is the BatchNorm running-statistics momentum m in
	// running' = (1−m)·running + m·batch, in (0, 1]; 0 means
	// DefaultMomentum. (Momentum 0, frozen statistics, is not training-mode
	// BatchNorm's update: keep the inference graph's batchnorm for that.)
	Momentum float64
	// Seed is the dropout seed: the k-th dropout with p > 0 (k = 0, 1, …
	// in graph order) becomes dropout_train with seed Seed+k, so that layers
	// draw different masks. The mask is a function of the seed, so a training
	// loop that rebuilds the graph per step should vary Seed per step.
	Seed int
	// GhostBatch K > 0 normalizes each group of K consecutive images of the
	// batch with its own statistics (batchnorm_train's ghost attribute):
	// the single-process equal of data-parallel replicas with batch K and
	// per-replica BatchNorm. The running statistics move by the groups'
	// average statistics, with Bessel's correction for K·H·W values. K must
	// divide the batch; K equal to the batch is plain BatchNorm.
	GhostBatch int `json:",omitempty"`
	// SyncBN all-reduces the batch statistics across Replicas
	// data-parallel replicas (batchnorm_train's sync attribute; the
	// interpreter's Options.Reducer), so that Replicas replicas of batch B
	// normalize as one batch of Replicas·B; the running variance's Bessel
	// correction counts the values of every replica. With one replica it is
	// plain BatchNorm.
	SyncBN   bool `json:",omitempty"`
	Replicas int  `json:",omitempty"`
	// KeepPoolConv keeps every average pool before the 1x1 convolution it
	// feeds; by default Forward swaps such pairs (see poolConvSwaps).
	KeepPoolConv bool `json:",omitempty"`
}

// Forward returns the training-mode forward graph of g, a graph as
// elaborated (before fold-bn and the other passes); g is not modified.
//
// Every batchnorm (x, weight, bias, running_mean, running_var) {eps} becomes
//
//	%t    = batchnorm_train (x, weight, bias) {eps}
//	%y    = result (%t) {index=0}   normalised with the batch mean and the
//	%mean = result (%t) {index=1}   biased batch variance
//	%var  = result (%t) {index=2}
//
// and %y replaces the batchnorm's value everywhere (operands, outputs,
// marks). The running statistics become mutable state (ir.Graph.Updates),
// updated as PyTorch does in training mode (torch.nn.functional.batch_norm,
// training=True; Ioffe and Szegedy 2015, Algorithm 2 for the unbiased
// population variance):
//
//	running_mean' = (1−m)·running_mean + m·mean
//	running_var'  = (1−m)·running_var  + m·var·n/(n−1)
//
// where var is the biased batch variance and n = N·H·W is the number of
// values per channel (Bessel's correction gives the unbiased variance). The
// updates are built from existing ops: mul by a constant, then add. The
// running statistics are not operands of batchnorm_train, so the forward
// output does not depend on them; only the updates read them.
//
// Every other node is copied with its name, position and attributes; params
// and inputs keep their order (checkpoint order), marks and outputs follow
// their values. One reordering is made unless Options.KeepPoolConv: an
// average pool that only feeds a 1x1 convolution with fewer outputs than
// inputs moves after it (poolConvSwaps), so that it pools fewer channels. A dropout with p = 0 (the training fixtures' head) is the
// identity in both modes and is copied as is; one with p > 0 becomes
//
//	%d = dropout_train (x) {p, seed}   results y = x·mask/(1−p) and the mask
//	%y = result (%d) {index=0}
//
// (PyTorch's nn.Dropout in train(), inverted dropout), with seed
// Options.Seed+k for the k-th such dropout.
//
// Where the rest of training attaches: the loss (cross-entropy on the
// returned logits, issue 9) is appended after the output; the backward pass
// differentiates the loss through the forward nodes, including
// batchnorm_train's y, mean and variance results, to every non-buffer param;
// the running-statistics updates are state, not differentiated (PyTorch's
// buffers have no gradient); the optimizer adds its own Updates (parameters
// and optimizer state) next to the ones made here.
//
// Errors, at the offending node's position: an op that already folded
// BatchNorm (fold_bn_weight, fold_bn_bias: Forward needs the graph as
// elaborated), a batchnorm whose running statistics are not params or are
// shared with another batchnorm or already updated, a BatchNorm with one value
// per channel (n = 1: no unbiased variance; PyTorch refuses it too), a
// momentum outside (0, 1].
func Forward(g *ir.Graph, opt Options) (*ir.Graph, error) {
	if g == nil {
		return nil, fmt.Errorf("train: nil graph")
	}
	m := opt.Momentum
	if m == 0 {
		m = DefaultMomentum
	}
	if !(m > 0 && m <= 1) {
		return nil, fmt.Errorf("train: BatchNorm momentum %v outside (0, 1]", opt.Momentum)
	}
	if err := g.Verify(); err != nil {
		return nil, fmt.Errorf("train: input graph: %w", err)
	}
	out := &ir.Graph{Name: g.Name}
	// mapped[i] is node i's value in out.
	mapped := make([]int, len(g.Nodes))
	updated := map[int]bool{} // params of g that out updates
	for _, u := range g.Updates {
		updated[u.Param] = true
	}
	var updates []ir.Update // in new indices
	dropouts := 0           // dropouts with p > 0 so far
	var swaps map[int]int   // avgpool → the 1x1 conv it feeds, emitted after it
	if !opt.KeepPoolConv {
		swaps = poolConvSwaps(g)
	}
	swapped := map[int]bool{} // convs whose pool is in swaps
	for _, c := range swaps {
		swapped[c] = true
	}
	add := func(n *ir.Node) (int, error) {
		id, err := out.Add(n)
		if err != nil {
			return -1, fmt.Errorf("train: %w", err)
		}
		return id, nil
	}
	for i, old := range g.Nodes {
		if _, ok := swaps[i]; ok {
			continue // emitted after its convolution
		}
		if swapped[i] {
			pool := old.Args[0]
			c := cloneNode(old)
			c.Args[0] = mapped[g.Nodes[pool].Args[0]]
			for k := 1; k < len(c.Args); k++ {
				c.Args[k] = mapped[c.Args[k]]
			}
			c.Type, c.Results = ir.Type{Layout: c.Type.Layout}, nil
			conv, err := add(c)
			if err != nil {
				return nil, err
			}
			p := cloneNode(g.Nodes[pool])
			p.Args = []int{conv}
			p.Type, p.Results = ir.Type{Layout: p.Type.Layout}, nil
			if mapped[i], err = add(p); err != nil {
				return nil, err
			}
			continue
		}
		switch old.Op {
		case ir.OpFoldBNWeight, ir.OpFoldBNBias:
			return nil, ir.Errorf(old.Pos, "train: %%%d %s: BatchNorm is already folded; build the training graph from the graph as elaborated", i, old.Op)
		case ir.OpDropout:
			if p := old.Attrs.Float("p"); p != 0 {
				d, err := add(&ir.Node{Op: ir.OpDropoutTrain, Name: old.Name, Args: []int{mapped[old.Args[0]]},
					Attrs: ir.Attrs{"p": p, "seed": opt.Seed + dropouts}, Pos: old.Pos})
				if err != nil {
					return nil, err
				}
				dropouts++
				if mapped[i], err = add(&ir.Node{Op: ir.OpResult, Name: old.Name, Args: []int{d}, Attrs: ir.Attrs{"index": 0}, Pos: old.Pos}); err != nil {
					return nil, err
				}
				continue
			}
		case ir.OpBatchNorm:
			y, ups, err := batchNorm(g, i, mapped, out, add, updated, m, opt)
			if err != nil {
				return nil, err
			}
			mapped[i] = y
			updates = append(updates, ups...)
			continue
		}
		n := cloneNode(old)
		for k, a := range n.Args {
			n.Args[k] = mapped[a]
		}
		if !ir.HasDeclaredType(n.Op) {
			n.Type, n.Results = ir.Type{Layout: n.Type.Layout}, nil
		}
		id, err := add(n)
		if err != nil {
			return nil, err
		}
		mapped[i] = id
	}
	for _, o := range g.Outputs {
		out.Outputs = append(out.Outputs, mapped[o])
	}
	for _, mk := range g.Marks {
		out.Marks = append(out.Marks, ir.Mark{Name: mk.Name, Node: mapped[mk.Node]})
	}
	for _, u := range g.Updates {
		out.Updates = append(out.Updates, ir.Update{Param: mapped[u.Param], Value: mapped[u.Value]})
	}
	out.Updates = append(out.Updates, updates...)
	if err := out.Verify(); err != nil {
		return nil, fmt.Errorf("train: internal error: the training graph does not verify: %w", err)
	}
	return out, nil
}

// poolConvSwaps returns the average pools of g that Forward moves after
// the 1x1 convolution they feed, mapped to that convolution: conv(avgpool(x))
// = avgpool(conv(x)) for a 1x1, stride-1, unpadded, ungrouped convolution,
// which is linear per pixel, and any average pool, which is linear per
// channel with divisors that depend only on the position (a bias commutes
// only when the divisor counts real pixels, count_include_pad false). Where
// the convolution has fewer output than input channels the pool then runs
// on fewer channels, forward and backward, and the pooled input need not be
// kept for the weight gradient (the Inception pooling branches: 64 → 16
// and 176 → 32 channels in the mini nets, 384 → 96 up to 1536 → 256 in
// Inception-v4). A pool is moved only when the convolution is its one user
// and it is neither an output, nor marked, nor an update's value. The
// result equals the original up to float rounding.
func poolConvSwaps(g *ir.Graph) map[int]int {
	users := make([]int, len(g.Nodes))
	for _, n := range g.Nodes {
		for _, a := range n.Args {
			users[a]++
		}
	}
	for _, o := range g.Outputs {
		users[o] += 2
	}
	for _, mk := range g.Marks {
		users[mk.Node] += 2
	}
	for _, u := range g.Updates {
		users[u.Value] += 2
	}
	all := func(v []int, want int) bool { // absent: the default, all 1 or all 0
		for _, x := range v {
			if x != want {
				return false
			}
		}
		return true
	}
	out := map[int]int{}
	for i, n := range g.Nodes {
		if n.Op != ir.OpConv2D || len(n.Args) < 2 {
			continue
		}
		p, w := g.Nodes[n.Args[0]], g.Nodes[n.Args[1]].Type
		if p.Op != ir.OpAvgPool || users[n.Args[0]] != 1 || p.Type.Rank() != 4 || w.Rank() != 4 {
			continue
		}
		if w.Shape[2] != 1 || w.Shape[3] != 1 || w.Shape[0] >= w.Shape[1] || n.Attrs.Int("groups") > 1 ||
			!all(n.Attrs.Ints("stride"), 1) || !all(n.Attrs.Ints("dilation"), 1) || !all(n.Attrs.Ints("pad"), 0) {
			continue
		}
		include, set := p.Attrs["count_include_pad"].(bool)
		if len(n.Args) > 2 && (include || !set) { // the default counts the padding
			continue
		}
		out[n.Args[0]] = i
	}
	return out
}

// batchNorm emits the training form of batchnorm node i of g into out (see
// Forward) and returns the new index of its output y and the two updates of
// its running statistics.
func batchNorm(g *ir.Graph, i int, mapped []int, out *ir.Graph, add func(*ir.Node) (int, error), updated map[int]bool, m float64, opt Options) (int, []ir.Update, error) {
	bn := g.Nodes[i]
	x := g.Nodes[bn.Args[0]].Type
	for _, s := range bn.Args[3:] {
		p := g.Nodes[s]
		switch {
		case p.Op != ir.OpParam:
			return -1, nil, ir.Errorf(bn.Pos, "train: %%%d batchnorm: running statistic %%%d is a %s, not a param", i, s, p.Op)
		case updated[s]:
			return -1, nil, ir.Errorf(bn.Pos, "train: %%%d batchnorm: running statistic %q is already updated (shared with another batchnorm, or a training graph already)", i, p.Name)
		}
		updated[s] = true
	}
	c := x.Shape[1]
	n := x.Numel() / c // N·H·W values per channel
	bnAttrs := ir.Attrs{"eps": bn.Attrs.Float("eps")}
	switch k := opt.GhostBatch; {
	case k < 0 || (k > 0 && x.Shape[0]%k != 0):
		return -1, nil, ir.Errorf(bn.Pos, "train: %%%d batchnorm: ghost batch %d does not divide the batch %d", i, k, x.Shape[0])
	case k > 0 && opt.SyncBN:
		return -1, nil, ir.Errorf(bn.Pos, "train: %%%d batchnorm: ghost batches and synchronized BatchNorm do not combine", i)
	case k > 0 && k < x.Shape[0]:
		bnAttrs["ghost"] = k
		n = n / x.Shape[0] * k
	case opt.SyncBN && opt.Replicas > 1: // one replica: plain BatchNorm
		bnAttrs["sync"] = true
		n *= opt.Replicas
	}
	if n < 2 {
		return -1, nil, ir.Errorf(bn.Pos, "train: %%%d batchnorm: %d value per channel (input %s): training needs more than one for the batch variance", i, n, x)
	}
	node := func(op string, args []int, attrs ir.Attrs) (int, error) {
		return add(&ir.Node{Op: op, Name: bn.Name, Args: args, Attrs: attrs, Pos: bn.Pos})
	}
	t, err := node(ir.OpBatchNormTrain, []int{mapped[bn.Args[0]], mapped[bn.Args[1]], mapped[bn.Args[2]]}, bnAttrs)
	if err != nil {
		return -1, nil, err
	}
	var res [3]int
	for k := range res {
		if res[k], err = node(ir.OpResult, []int{t}, ir.Attrs{"index": k}); err != nil {
			return -1, nil, err
		}
	}
	// ema returns (1−m)·running + c·batch.
	ema := func(running, batch int, c float64) (int, error) {
		a, err := node(ir.OpMul, []int{running}, ir.Attrs{"c": 1 - m})
		if err != nil {
			return -1, err
		}
		b, err := node(ir.OpMul, []int{batch}, ir.Attrs{"c": c})
		if err != nil {
			return -1, err
		}
		return node(ir.OpAdd, []int{a, b}, nil)
	}
	rm, rv := mapped[bn.Args[3]], mapped[bn.Args[4]]
	newMean, err := ema(rm, res[1], m)
	if err != nil {
		return -1, nil, err
	}
	newVar, err := ema(rv, res[2], m*float64(n)/float64(n-1))
	if err != nil {
		return -1, nil, err
	}
	return res[0], []ir.Update{{Param: rm, Value: newMean}, {Param: rv, Value: newVar}}, nil
}

// cloneNode deep-copies n (operands, attributes, types) so that the new graph
// shares no mutable state with the old one.
func cloneNode(n *ir.Node) *ir.Node {
	c := *n
	c.Args = append([]int(nil), n.Args...)
	if n.Attrs != nil {
		c.Attrs = ir.Attrs{}
		for k, v := range n.Attrs {
			if l, ok := v.([]int); ok {
				v = append([]int(nil), l...)
			}
			c.Attrs[k] = v
		}
	}
	c.Type.Shape = append([]int(nil), n.Type.Shape...)
	c.Results = nil
	return &c
}
