package passes

import (
	"slices"

	"github.com/kiln-dev/kiln/ir"
)

// Sibling convolutions in a training step.
//
// An Inception block reads its input with several 1x1 convolutions (the
// A blocks of the mini networks: four 64 → 16 ones, the pooling branch's
// included, once its convolution is moved before the pool). Run one after
// the other, each reads the whole input from memory: at batch 128 that is
// 6.4 MB, far beyond L2, for 16 output channels. The compiled step runs
// such siblings as one kernel (codegen TrainConvSpec.Siblings) whose tiles
// compute a block of pixels for all of them while the block of the input
// is in L1: the input is read once, as if the convolutions were one with
// the output channels of all (as oneDNN and TVM users do by hand when they
// merge the 1x1 branches of an Inception block into one convolution and
// split its output; here the weights and outputs stay separate values, so
// checkpoints, BatchNorms and the interpreter see the network as written).
//
// group-siblings makes every group adjacent in the schedule, at the place
// of its last member (the others, and whatever depends on them, wait for
// it); ConvSiblings then finds the groups as runs of adjacent nodes, for
// the planner (a group's operands stay live to its end and its results
// from its start: the kernel reads and writes them all at once) and for
// the lowering, from this one definition.

// siblingKey identifies the convolutions that may share a kernel: 1x1,
// stride 1, no padding, no bias, ungrouped, undilated, float32 in the
// plain layout, reading the same input.
func siblingKey(g *ir.Graph, n *ir.Node) (x int, ok bool) {
	if n.Op != ir.OpConv2D || len(n.Args) != 2 || n.Type.DType != ir.F32 || !n.Type.Layout.IsPlain() {
		return 0, false
	}
	if !pointwise(n, g.Nodes[n.Args[1]].Type.Shape) {
		return 0, false
	}
	return n.Args[0], true
}

// pointwise reports a convolution node (or one of its gradients) with a
// weight of shape w that is 1x1, stride 1, unpadded, ungrouped and
// undilated.
func pointwise(n *ir.Node, w []int) bool {
	if len(w) != 4 || w[2] != 1 || w[3] != 1 || n.Attrs.Int("groups") > 1 {
		return false
	}
	for _, a := range []string{"stride", "dilation"} {
		if v := n.Attrs.Ints(a); v != nil && (v[0] != 1 || v[1] != 1) {
			return false
		}
	}
	p := n.Attrs.Ints("pad")
	return p == nil || p[0] == 0 && p[1] == 0
}

// wgradKey is siblingKey for the weight gradients of such convolutions
// (conv2d_grad_weight(dy, x) of a 1x1 weight): the group shares x.
func wgradKey(g *ir.Graph, n *ir.Node) (x int, ok bool) {
	if n.Op != ir.OpConv2DGradWeight || len(n.Args) != 2 || n.Type.DType != ir.F32 {
		return 0, false
	}
	if !g.Nodes[n.Args[0]].Type.Layout.IsPlain() || !g.Nodes[n.Args[1]].Type.Layout.IsPlain() {
		return 0, false
	}
	if !pointwise(n, n.Type.Shape) {
		return 0, false
	}
	return n.Args[1], true
}

// groupKey is the sibling group a node may join: the forward convolutions
// (kind 0) or the weight gradients (kind 1) of 1x1 convolutions of input
// x.
func groupKey(g *ir.Graph, n *ir.Node) (key [2]int, ok bool) {
	if x, ok := siblingKey(g, n); ok {
		return [2]int{0, x}, true
	}
	if x, ok := wgradKey(g, n); ok {
		return [2]int{1, x}, true
	}
	return key, false
}

// ConvSiblings returns the sibling groups of g's schedule: maximal runs of
// at least two adjacent nodes that are convolutions of one input
// (siblingKey), each as its node indices in order.
func ConvSiblings(g *ir.Graph) [][]int { return runsOf(g, siblingKey) }

// WgradSiblings returns the weight-gradient groups of g's schedule: maximal
// runs of at least two adjacent weight gradients of 1x1 convolutions of
// one input (wgradKey). The compiled step runs each as one kernel
// (codegen TrainConvGradWeightSpec.Siblings) that reads x once for all:
// at batch 128 the mini networks' Inception-A input is 6.4 MB, read four
// times by four separate kernels of 16 channels each.
func WgradSiblings(g *ir.Graph) [][]int { return runsOf(g, wgradKey) }

// runsOf returns the maximal runs of at least two adjacent nodes of g with
// one key.
func runsOf(g *ir.Graph, key func(*ir.Graph, *ir.Node) (int, bool)) [][]int {
	var groups [][]int
	for i := 0; i < len(g.Nodes); {
		x, ok := key(g, g.Nodes[i])
		j := i + 1
		for ok && j < len(g.Nodes) {
			y, ok2 := key(g, g.Nodes[j])
			if !ok2 || y != x {
				break
			}
			j++
		}
		if ok && j-i >= 2 {
			groups = append(groups, seq(i, j))
		}
		i = j
	}
	return groups
}

func seq(lo, hi int) []int {
	s := make([]int, 0, hi-lo)
	for i := lo; i < hi; i++ {
		s = append(s, i)
	}
	return s
}

// gradInputKey reports a 1x1, stride-1, unpadded, ungrouped float32 input
// gradient in the plain layout (the backward of a siblingKey convolution).
func gradInputKey(g *ir.Graph, n *ir.Node) bool {
	if n.Op != ir.OpConv2DGradInput || len(n.Args) != 2 || n.Type.DType != ir.F32 || !n.Type.Layout.IsPlain() {
		return false
	}
	w := g.Nodes[n.Args[1]].Type.Shape
	if len(w) != 4 || w[2] != 1 || w[3] != 1 || n.Attrs.Int("groups") != 1 {
		return false
	}
	st, p := n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
	return (st == nil || st[0] == 1 && st[1] == 1) && (p == nil || p[0] == 0 && p[1] == 0)
}

// GradInputGroup is the sum of the input gradients of sibling
// convolutions, as the autodiff builds it: a tree of adds (Root and the
// adds below it, each used once and not visible to the caller) whose
// leaves are at least two 1x1 input gradients of the root's shape
// (gradInputKey, each used once: Grads, in schedule order) and at most one
// other contribution (Other, -1 when none), such as a residual's identity
// gradient. The compiled step computes Root = [Other +] Σ W_jᵀ·dy_j in one
// kernel at the root's place (codegen TrainConvGradInputSpec.Siblings), so
// the gradients' dy are read there and the partial sums never stored.
type GradInputGroup struct {
	Root  int
	Grads []int
	Other int
	// Members are every node of the tree (Grads, the adds, Root), in
	// schedule order.
	Members []int
}

// GradInputChannels bounds the summed dy channels (the weights' output
// channels) of an input-gradient group: the compiled kernel reduces over
// them in one block of its micro-kernel (codegen's gemmKC rows, which
// codegen's TestGradInputChannels checks this equals).
const GradInputChannels = 288

// GradInputSiblings returns g's input-gradient groups (GradInputGroup).
// No add in a group may be one that a gradient outside the group
// accumulates into (AccAdds), so that every node of the tree is computed
// by the group's kernel or before it. The leaves are taken in the tree's
// order while their channels fit GradInputChannels; the first that does
// not becomes the group's Other (computed by its own kernel, before the
// root), and a second one leaves the tree ungrouped. Inception-v4's
// Inception-A block has four 1x1 convolutions of its input (96 + 64 + 64 +
// 96 channels, its pool branch's 1x1 moved before the pool): three form
// the group, the fourth is its addend.
func GradInputSiblings(g *ir.Graph) []GradInputGroup {
	users := g.Users()
	acc := AccAdds(g)
	visible := Visible(g)
	single := func(v int) bool { return len(users[v]) == 1 && !visible[v] }
	inTree := map[int]bool{} // adds already inside a larger tree
	var groups []GradInputGroup
	for root := len(g.Nodes) - 1; root >= 0; root-- {
		n := g.Nodes[root]
		if n.Op != ir.OpAdd || inTree[root] || len(n.Args) != 2 {
			continue
		}
		grp := GradInputGroup{Root: root, Other: -1}
		ok := true
		chans := 0
		var walk func(v int, top bool)
		walk = func(v int, top bool) {
			vn := g.Nodes[v]
			switch {
			case vn.Op == ir.OpAdd && len(vn.Args) == 2 && (top || single(v)):
				grp.Members = append(grp.Members, v)
				walk(vn.Args[0], false)
				walk(vn.Args[1], false)
			case gradInputKey(g, vn) && single(v) && ir.ShapeEqual(vn.Type.Shape, n.Type.Shape) &&
				chans+g.Nodes[vn.Args[1]].Type.Shape[0] <= GradInputChannels:
				chans += g.Nodes[vn.Args[1]].Type.Shape[0]
				grp.Grads = append(grp.Grads, v)
				grp.Members = append(grp.Members, v)
			case grp.Other < 0:
				grp.Other = v
			default:
				ok = false
			}
		}
		walk(root, true)
		// An add that a gradient accumulates into must have it among
		// the group's own (the group's kernel computes the add).
		for _, m := range grp.Members {
			if d, fused := acc[m]; fused && g.Nodes[m].Op == ir.OpAdd && !slices.Contains(grp.Grads, d) {
				ok = false
			}
		}
		if !ok || len(grp.Grads) < 2 {
			continue
		}
		for _, m := range grp.Members {
			inTree[m] = true
		}
		slices.Sort(grp.Grads)
		slices.Sort(grp.Members)
		groups = append(groups, grp)
	}
	slices.Reverse(groups)
	return groups
}

// groupLifetimes extends, for each sibling group [s, e] (ConvSiblings),
// the read end of every value a member reads to e and the write start of
// every value a member writes to s, and for each input-gradient group the
// read end of every value its nodes read to its root, into end and start
// (as fusedReadEnd and fusedWriteStart).
func groupLifetimes(g *ir.Graph, end, start map[int]int) {
	for _, grp := range append(ConvSiblings(g), WgradSiblings(g)...) {
		s, e := grp[0], grp[len(grp)-1]
		for _, i := range grp {
			for _, a := range g.Nodes[i].Args {
				end[a] = max(end[a], e)
			}
			if w, ok := start[i]; !ok || s < w {
				start[i] = s
			}
		}
	}
	for _, grp := range GradInputSiblings(g) {
		for _, i := range grp.Members {
			for _, a := range g.Nodes[i].Args {
				end[a] = max(end[a], grp.Root)
			}
		}
	}
}

// groupSiblingsPass sinks every sibling group to its last member.
var groupSiblingsPass = &Pass{
	Name:  "group-siblings",
	Doc:   "make 1x1 convolutions of one input adjacent, and their weight gradients, so that the compiled training step runs each group as one kernel",
	After: []string{"schedule"},
	Run: func(s *State) error {
		if order, ok := siblingOrder(s.Graph); ok {
			s.Graph = reorder(s.Graph, order)
		}
		return nil
	},
}

// siblingOrder returns g's order with each group of convolutions of one
// input (siblingKey), and of their weight gradients (wgradKey), moved to
// its last member: a node waits while it is a
// group member before the last or reads a waiting node, and the waiting
// nodes follow, in their old order, as soon as they no longer wait. It
// reports false when there is no group.
func siblingOrder(g *ir.Graph) ([]int, bool) {
	members := map[[2]int][]int{} // group key → its members, in order
	for i, n := range g.Nodes {
		if k, ok := groupKey(g, n); ok {
			members[k] = append(members[k], i)
		}
	}
	last := map[int]int{} // member → its group's last member
	for _, ms := range members {
		if len(ms) < 2 {
			continue
		}
		for _, m := range ms {
			last[m] = ms[len(ms)-1]
		}
	}
	if len(last) == 0 {
		return nil, false
	}
	done := make([]bool, len(g.Nodes))
	order := make([]int, 0, len(g.Nodes))
	var waiting []int
	ready := func(i int) bool {
		for _, a := range g.Nodes[i].Args {
			if !done[a] {
				return false
			}
		}
		return true
	}
	var emit func(i int)
	emit = func(i int) {
		if l, ok := last[i]; ok {
			if i != l {
				waiting = append(waiting, i)
				return
			}
			// The group's last member: the whole group, in order.
			x, _ := groupKey(g, g.Nodes[i])
			for _, m := range members[x] {
				if !ready(m) {
					waiting = append(waiting, i)
					return
				}
			}
			for _, m := range members[x] {
				order = append(order, m)
				done[m] = true
				delete(last, m)
			}
			kept := waiting[:0]
			for _, w := range waiting {
				if !done[w] {
					kept = append(kept, w)
				}
			}
			waiting = kept
		} else {
			if !ready(i) {
				waiting = append(waiting, i)
				return
			}
			order = append(order, i)
			done[i] = true
		}
		// Release the waiting nodes that can go now, in old order.
		for progress := true; progress; {
			progress = false
			for k, w := range waiting {
				if _, member := last[w]; !member && ready(w) {
					waiting = append(waiting[:k], waiting[k+1:]...)
					order = append(order, w)
					done[w] = true
					progress = true
					break
				}
			}
		}
	}
	for i := range g.Nodes {
		emit(i)
	}
	if len(order) != len(g.Nodes) {
		return nil, false // a group waited on itself: keep the old order
	}
	return order, true
}
