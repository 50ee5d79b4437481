package passes

import (
	"fmt"
	"sort"

	"github.com/kiln-dev/kiln/ir"
)

// Alignment of every buffer in the activation arena, in bytes (one cache line,
// one AVX-512 vector).
const Alignment = 64

// Buffer is one arena allocation shared by a class of aliasing values.
type Buffer struct {
	// Values are the node indices stored in this buffer, in graph order.
	Values []int
	// Size in bytes, rounded up to Alignment.
	Size int64
	// Start and End are the first and last schedule steps (node indices) at
	// which the buffer is live, inclusive.
	Start, End int
	// Offset in the arena.
	Offset int64
}

// Plan assigns every run-time value an arena offset.
type Plan struct {
	Buffers []Buffer
	// BufferOf maps a node index to its buffer index, -1 for build-time
	// values (weights), which live outside the arena.
	BufferOf []int
	// Arena is the arena size achieved.
	Arena int64
	// LowerBound is the live-bytes lower bound of this schedule: the largest
	// total size of buffers live at one step. No assignment of these buffers
	// can be smaller.
	LowerBound int64
	// Naive is the one-buffer-per-tensor size: every run-time value in its own
	// buffer, no reuse.
	Naive int64
	// Strategy names the placement order that won.
	Strategy string
}

// valueBytes is the arena size of a value of type t: its physical element
// count (padding lanes included) times its dtype's element size, rounded up
// to Alignment bytes. A verified graph's layouts always apply; otherwise the
// logical count is used.
func valueBytes(t ir.Type) int64 {
	return ValueBytes(t)
}

// ValueBytes is valueBytes, for reports outside the package.
func ValueBytes(t ir.Type) int64 {
	b, err := ir.PhysicalBytes(t)
	if err != nil {
		b = int64(t.Numel()) * int64(max(t.DType.Size(), 1))
	}
	return (b + Alignment - 1) / Alignment * Alignment
}

// aliasClasses groups run-time values that share storage, for a schedule given
// by the node order:
//   - a write with an "into" operand updates its destination in place;
//   - dropout and plain-layout flatten and reshape are views of their operand;
//   - a fused_conv's result reuses its residual operand's buffer when this
//     conv is the residual's last user, the residual is not a network input,
//     and both have the same physical size (each output element reads only the
//     residual element it overwrites);
//   - in a training step, the sum add(o, d) of two gradient contributions
//     reuses the buffer of d, an input gradient of a convolution (accAdd), so
//     that the compiled step can write the sum at d's step (the kernel adds o
//     in its stores; codegen/lower fuseTrainAcc) with no add kernel.
//
// It returns the class representative of every node (-1 for build-time values
// and for multi-result nodes, whose results live in their result nodes'
// buffers).
func aliasClasses(g *ir.Graph, build []bool) []int {
	users := g.Users()
	rep := make([]int, len(g.Nodes))
	var find func(i int) int
	find = func(i int) int {
		for rep[i] != i {
			rep[i] = rep[rep[i]]
			i = rep[i]
		}
		return i
	}
	for i := range rep {
		rep[i] = i
		if build[i] {
			rep[i] = -1
		}
	}
	lastUser := func(v int) int {
		l := -1
		for _, u := range users[v] {
			l = max(l, u)
		}
		return l
	}
	outputs := map[int]bool{}
	for _, o := range g.Outputs {
		outputs[o] = true
	}
	for i, n := range g.Nodes {
		if build[i] {
			continue
		}
		if n.IsMulti() {
			// A tuple has no storage of its own: its kernel writes each
			// result into the result node's buffer (see MakePlan).
			rep[i] = -1
			continue
		}
		if k := ir.IntoOperand(n); k >= 0 {
			rep[i] = find(n.Args[k])
			continue
		}
		switch {
		case n.Op == ir.OpDropout || ((n.Op == ir.OpFlatten || n.Op == ir.OpReshape) && g.Nodes[n.Args[0]].Type.Layout.IsPlain()):
			rep[i] = find(n.Args[0])
		case n.Op == ir.OpAdd:
			if d := accAdd(g, users, outputs, i); d >= 0 {
				rep[i] = find(d)
			}
		case n.Op == ir.OpFusedConv && n.Attrs.Bool("residual"):
			_, r, _ := ir.FusedConvOperands(n)
			res := n.Args[r]
			if lastUser(res) == i && g.Nodes[res].Op != ir.OpInput && !outputs[res] &&
				valueBytes(g.Nodes[res].Type) == valueBytes(n.Type) && res != n.Args[0] && find(res) != find(n.Args[0]) {
				rep[i] = find(res)
			}
		}
	}
	for i := range rep {
		if rep[i] >= 0 {
			rep[i] = find(i)
		}
	}
	return rep
}

// accAdd returns the operand d of add node i that the training step's
// kernel for d can accumulate into (d + the other operand o, written at d's
// step): d is a conv2d_grad_input or maxpool_grad of i's type whose only
// user is i and which is not an output, and o is computed before d (so
// that it exists when d's kernel runs) and is not d. Of two such operands the later one is
// taken. It returns -1 when there is none.
func accAdd(g *ir.Graph, users [][]int, outputs map[int]bool, i int) int {
	n := g.Nodes[i]
	if n.Op != ir.OpAdd || len(n.Args) != 2 || n.Args[0] == n.Args[1] {
		return -1
	}
	best := -1
	for k, d := range n.Args {
		o := n.Args[1-k]
		dn := g.Nodes[d]
		if (dn.Op == ir.OpConv2DGradInput || dn.Op == ir.OpMaxPoolGrad) && len(users[d]) == 1 && !outputs[d] && o < d &&
			ir.ShapeEqual(dn.Type.Shape, n.Type.Shape) && dn.Type.DType == n.Type.DType {
			best = max(best, d)
		}
	}
	return best
}

// AccAdds maps each add node of g that a training step accumulates into
// one of its operands (see aliasClasses) to that operand.
func AccAdds(g *ir.Graph) map[int]int {
	outputs := map[int]bool{}
	for _, o := range g.Outputs {
		outputs[o] = true
	}
	users := g.Users()
	out := map[int]int{}
	for i := range g.Nodes {
		if d := accAdd(g, users, outputs, i); d >= 0 {
			out[i] = d
		}
	}
	return out
}

// fusedReadEnd returns, for the values read by a relu_grad node whose only
// user is the batchnorm_train_grad that takes it as its gradient, that
// node: the compiled step reads them there (codegen/lower fuseTrainReLU),
// so they stay live up to it. Likewise for a value whose channel slice a
// BatchNorm gradient reads in place (SliceViews).
func fusedReadEnd(g *ir.Graph, users [][]int) map[int]int {
	end := map[int]int{}
	for j, n := range g.Nodes {
		if n.Op != ir.OpReLUGrad || len(users[j]) != 1 {
			continue
		}
		k := users[j][0]
		if bn := g.Nodes[k]; bn.Op != ir.OpBatchNormTrainGrad || bn.Args[0] != j {
			continue
		}
		for _, a := range n.Args {
			end[a] = max(end[a], k)
		}
	}
	for sl, k := range SliceViews(g, users) {
		a := g.Nodes[sl].Args[0]
		end[a] = max(end[a], k)
	}
	for du, dr := range ScaledGrads(g, users) {
		for _, u := range users[du] {
			end[dr] = max(end[dr], u)
		}
	}
	return end
}

// ResidualConvs maps the relu j of each scaled residual connection
// relu(x + c·u) of a training step (Inception-ResNet, Szegedy et al. 2016,
// §3.3) whose u is a convolution (the up projection) to that convolution:
// conv u, mul m = c·u, add a = x + m and relu j consecutive in the
// schedule, u used only by m, m only by a, a only by j, none of them a
// value the caller reads (Visible). The compiled step may then have the
// convolution write relu(x + c·u) straight into j's buffer
// (codegen.TrainConvSpec.Residual), so j's buffer is live from u on
// (fusedWriteStart); the lowering decides from this map and the kernel's
// ResidualOK.
func ResidualConvs(g *ir.Graph, users [][]int) map[int]int {
	visible := Visible(g)
	out := map[int]int{}
	for j, n := range g.Nodes {
		if n.Op != ir.OpReLU || len(n.Args) != 1 || n.Type.Rank() != 4 {
			continue
		}
		a := n.Args[0]
		an := g.Nodes[a]
		if a != j-1 || an.Op != ir.OpAdd || len(an.Args) != 2 || len(users[a]) != 1 || visible[a] {
			continue
		}
		for k, m := range an.Args {
			mn := g.Nodes[m]
			if m != a-1 || an.Args[1-k] == m || mn.Op != ir.OpMul || len(mn.Args) != 1 || len(users[m]) != 1 || visible[m] {
				continue
			}
			u := mn.Args[0]
			if un := g.Nodes[u]; u == m-1 && un.Op == ir.OpConv2D && len(users[u]) == 1 && !visible[u] &&
				ir.ShapeEqual(un.Type.Shape, n.Type.Shape) && ir.ShapeEqual(g.Nodes[an.Args[1-k]].Type.Shape, n.Type.Shape) {
				out[j] = u
			}
		}
	}
	return out
}

// MaskedGrads maps each relu_grad r = relu_grad(dy, y) whose gradient dy
// is the root of an input-gradient group (GradInputSiblings) read by r
// alone, and not Visible, to that root: the compiled step may have the
// group's kernel apply the relu's mask as it stores the sum
// (codegen.TrainConvGradInputSpec.Mask) straight into r's buffer, so r's
// buffer is live from the root on (fusedWriteStart); the lowering decides
// from this map and the kernel's MaskOK.
func MaskedGrads(g *ir.Graph, users [][]int) map[int]int {
	visible := Visible(g)
	roots := map[int]bool{}
	for _, grp := range GradInputSiblings(g) {
		roots[grp.Root] = true
	}
	out := map[int]int{}
	for r, n := range g.Nodes {
		if n.Op != ir.OpReLUGrad || len(n.Args) != 2 || n.Type.Rank() != 4 {
			continue
		}
		dy := n.Args[0]
		if roots[dy] && dy < r && n.Args[1] != dy && len(users[dy]) == 1 && !visible[dy] &&
			ir.ShapeEqual(g.Nodes[n.Args[1]].Type.Shape, n.Type.Shape) {
			out[r] = dy
		}
	}
	return out
}

// ScaledGrads maps each scaled gradient du = c·dr of a training step (the
// backward of a residual scale, c ≠ 0, rank 4, not Visible) whose users
// are all the backward of one convolution reading it as their gradient
// (conv2d_grad_input, conv2d_grad_weight, bias_grad), to dr: the compiled
// step may skip du and have those kernels read dr and scale what they
// write (codegen.TrainConvGradInputSpec.Scale, and c·dW, c·db), so dr stays
// live up to them (fusedReadEnd). The lowering also checks that no value
// sharing dr's buffer is written in between.
func ScaledGrads(g *ir.Graph, users [][]int) map[int]int {
	visible := Visible(g)
	out := map[int]int{}
	for du, n := range g.Nodes {
		if n.Op != ir.OpMul || len(n.Args) != 1 || n.Type.Rank() != 4 || n.Attrs.Float("c") == 0 || visible[du] || len(users[du]) == 0 {
			continue
		}
		ok := true
		for _, u := range users[du] {
			un := g.Nodes[u]
			switch un.Op {
			case ir.OpConv2DGradInput, ir.OpConv2DGradWeight, ir.OpBiasGrad:
			default:
				ok = false
			}
			// As the gradient operand only.
			ok = ok && un.Args[0] == du && u > du
			for _, a := range un.Args[1:] {
				ok = ok && a != du
			}
		}
		if ok {
			out[du] = n.Args[0]
		}
	}
	return out
}

// SliceViews maps each channel slice that a BatchNorm gradient may read in
// place to that gradient node: an ir.OpSlice on axis 1 of a rank-4 value
// (the autodiff's split of a concat's gradient) whose only user is a
// batchnorm_train_grad taking it as its gradient, directly or through a
// relu_grad used only by it. The compiled step can then skip the slice's
// copy and read the sliced value with its channel stride (codegen
// BatchNormTrainGradSpec.DYStride), so the planner keeps the sliced value
// live up to the gradient node (fusedReadEnd) and the lowering decides
// from this same map.
func SliceViews(g *ir.Graph, users [][]int) map[int]int {
	out := map[int]int{}
	for s, n := range g.Nodes {
		if n.Op != ir.OpSlice || n.Attrs.Int("axis") != 1 || n.Type.Rank() != 4 || len(n.Args) != 1 || len(users[s]) != 1 {
			continue
		}
		u := users[s][0]
		switch un := g.Nodes[u]; {
		case un.Op == ir.OpBatchNormTrainGrad && un.Args[0] == s:
			out[s] = u
		case un.Op == ir.OpReLUGrad && un.Args[0] == s && un.Args[1] != s && len(users[u]) == 1:
			if k := users[u][0]; g.Nodes[k].Op == ir.OpBatchNormTrainGrad && g.Nodes[k].Args[0] == u {
				out[s] = k
			}
		}
	}
	return out
}

// fusedWriteStart returns, for a relu node whose operand is the normalized
// output of a batchnorm_train (result 0, used only by it), that
// batchnorm_train: the compiled step writes the relu's output there
// (codegen/lower fuseTrainReLU), so its buffer is live from there.
func fusedWriteStart(g *ir.Graph, users [][]int) map[int]int {
	start := map[int]int{}
	for j, n := range g.Nodes {
		if n.Op != ir.OpReLU || len(n.Args) != 1 {
			continue
		}
		y := g.Nodes[n.Args[0]]
		if y.Op != ir.OpResult || y.Attrs.Int("index") != 0 || len(users[n.Args[0]]) != 1 {
			continue
		}
		if bn := y.Args[0]; g.Nodes[bn].Op == ir.OpBatchNormTrain && bn < j {
			start[j] = bn
		}
	}
	for j, c := range ConcatWrites(g, users) {
		if bn, ok := start[j]; ok {
			if s, ok := start[c]; !ok || bn < s {
				start[c] = bn
			}
		}
	}
	for j, u := range ResidualConvs(g, users) {
		if s, ok := start[j]; !ok || u < s {
			start[j] = u
		}
	}
	for r, root := range MaskedGrads(g, users) {
		if s, ok := start[r]; !ok || root < s {
			start[r] = root
		}
	}
	return start
}

// VirtualReLUs returns the relus of ConcatWrites that no kernel of the
// compiled step reads or writes, and that therefore get no buffer: the
// relu is not a value the caller reads (an output or a param's new
// value), and each relu_grad taking it as its mask is used only by the
// gradient of the relu's own BatchNorm (OwnReLU), which recomputes the mask
// from its input. The BatchNorm kernel writes the relu's output into the
// concat (codegen/lower concatWrites), which must then happen: the
// lowering reports an error rather than fall back to the relu's buffer.
func VirtualReLUs(g *ir.Graph, users [][]int) map[int]bool {
	visible := Visible(g)
	out := map[int]bool{}
	for j := range ConcatWrites(g, users) {
		y := g.Nodes[j].Args[0]
		if visible[j] || visible[y] || len(users[y]) != 1 || g.Nodes[y].Op != ir.OpResult {
			continue
		}
		ok := g.Nodes[g.Nodes[y].Args[0]].Op == ir.OpBatchNormTrain
		for _, u := range users[j] {
			if g.Nodes[u].Op != ir.OpReLUGrad {
				continue
			}
			if len(users[u]) != 1 || visible[u] {
				ok = false
				break
			}
			k := users[u][0]
			if g.Nodes[k].Op != ir.OpBatchNormTrainGrad || g.Nodes[k].Args[0] != u || k < u {
				ok = false
				break
			}
			if _, own := OwnReLU(g, g.Nodes[k], j); !own {
				ok = false
			}
		}
		if ok {
			out[j] = true
		}
	}
	return out
}

// Visible returns the values the caller reads after a run: the graph's
// outputs and the new values of its params (Graph.Updates). No fusion may
// leave them uncomputed or unstored.
func Visible(g *ir.Graph) map[int]bool {
	visible := map[int]bool{}
	for _, o := range g.Outputs {
		visible[o] = true
	}
	for _, u := range g.Updates {
		visible[u.Value] = true
	}
	return visible
}

// OwnReLU reports whether r, the relu output whose mask the BatchNorm
// gradient bn applies, is relu(y) of the batchnorm_train f that bn
// differentiates: same input, weight and eps, and bn's mean and variance
// are f's results 1 and 2. The gradient kernel can then recompute the mask
// from its input x (codegen BatchNormTrainGradSpec, R < 0). It returns f.
func OwnReLU(g *ir.Graph, bn *ir.Node, r int) (int, bool) {
	result := func(v int) (m, k int, ok bool) {
		n := g.Nodes[v]
		if n.Op != ir.OpResult || len(n.Args) != 1 {
			return 0, 0, false
		}
		return n.Args[0], n.Attrs.Int("index"), true
	}
	rn := g.Nodes[r]
	if rn.Op != ir.OpReLU || len(rn.Args) != 1 || len(bn.Args) != 5 {
		return 0, false
	}
	f, k, ok := result(rn.Args[0])
	if !ok || k != 0 {
		return 0, false
	}
	fn := g.Nodes[f]
	if fn.Op != ir.OpBatchNormTrain || len(fn.Args) != 3 || fn.Args[0] != bn.Args[1] || fn.Args[1] != bn.Args[2] ||
		fn.Attrs.Float("eps") != bn.Attrs.Float("eps") {
		return 0, false
	}
	for idx, a := range map[int]int{1: bn.Args[3], 2: bn.Args[4]} {
		if m, k, ok := result(a); !ok || m != f || k != idx {
			return 0, false
		}
	}
	return f, true
}

// ConcatWrites maps each relu node whose output the compiled step may
// write straight into its channel slice of a concat to that concat: a relu
// of a batchnorm_train's normalized output (fusedWriteStart) whose users
// are one axis-1 concat of rank 4, taking it once, and relu_grads that
// take it as their mask (which the BatchNorm gradient can recompute from
// its input instead of reading it). The planner keeps the concat live from
// the BatchNorm on (fusedWriteStart); the lowering decides from this map.
func ConcatWrites(g *ir.Graph, users [][]int) map[int]int {
	out := map[int]int{}
	for j, n := range g.Nodes {
		if n.Op != ir.OpReLU || len(n.Args) != 1 {
			continue
		}
		concat, ok := -1, true
		for _, u := range users[j] {
			un := g.Nodes[u]
			switch {
			case un.Op == ir.OpReLUGrad && un.Args[1] == j && un.Args[0] != j:
			case un.Op == ir.OpConcat && un.Attrs.Int("axis") == 1 && un.Type.Rank() == 4 && concat < 0:
				k := 0
				for _, a := range un.Args {
					if a == j {
						k++
					}
				}
				ok = ok && k == 1
				concat = u
			default:
				ok = false
			}
		}
		if ok && concat >= 0 {
			out[j] = concat
		}
	}
	return out
}

// MakePlan computes liveness intervals over the graph's node order and places
// buffers in one arena.
//
// Placement is greedy, as in TFLite's "greedy by size" memory planner (Pisarchyk
// & Lee, "Efficient Memory Management for Deep Neural Net Inference", 2020):
// buffers are taken in a fixed order and each goes into the lowest-offset gap,
// among the already placed buffers whose lifetimes overlap it, that is large
// enough (best fit by position). Several orders are tried (size descending;
// size × lifetime descending; start time) and the smallest arena wins.
func MakePlan(g *ir.Graph) *Plan {
	build := BuildTime(g)
	rep := aliasClasses(g, build)
	users := g.Users()
	p := &Plan{BufferOf: make([]int, len(g.Nodes))}
	idx := map[int]int{}
	end := len(g.Nodes) - 1
	outputs := map[int]bool{}
	for _, o := range g.Outputs {
		outputs[o] = true
	}
	// A param's new value (Graph.Updates) is read after the run, like an
	// output, so it stays live to the end.
	for _, u := range g.Updates {
		outputs[u.Value] = true
	}
	readEnd, writeStart := fusedReadEnd(g, users), fusedWriteStart(g, users)
	groupLifetimes(g, readEnd, writeStart)
	virtual := VirtualReLUs(g, users)
	for i := range g.Nodes {
		p.BufferOf[i] = -1
		if rep[i] < 0 || virtual[i] {
			continue
		}
		size := valueBytes(g.Nodes[i].Type)
		p.Naive += size
		b, ok := idx[rep[i]]
		if !ok {
			b = len(p.Buffers)
			idx[rep[i]] = b
			p.Buffers = append(p.Buffers, Buffer{Start: i, End: i})
		}
		buf := &p.Buffers[b]
		p.BufferOf[i] = b
		buf.Values = append(buf.Values, i)
		buf.Size = max(buf.Size, size)
		buf.Start = min(buf.Start, i)
		if w, ok := writeStart[i]; ok {
			buf.Start = min(buf.Start, w)
		}
		if op := g.Nodes[i].Op; op == ir.OpInput || op == ir.OpParam {
			// Written by the runtime before the run (inputs, and params
			// that are mutable state): live from the first step.
			buf.Start = 0
		}
		if g.Nodes[i].Op == ir.OpResult {
			// Written by the multi-result producer, so live from there.
			buf.Start = min(buf.Start, g.Nodes[i].Args[0])
		}
		buf.End = max(buf.End, i, readEnd[i])
		for _, u := range users[i] {
			buf.End = max(buf.End, u)
		}
		if outputs[i] {
			buf.End = end
		}
	}
	// Live-bytes lower bound: sweep the schedule.
	delta := make([]int64, len(g.Nodes)+1)
	for _, b := range p.Buffers {
		delta[b.Start] += b.Size
		delta[b.End+1] -= b.Size
	}
	var live int64
	for _, d := range delta {
		live += d
		p.LowerBound = max(p.LowerBound, live)
	}
	orders := []struct {
		name string
		less func(a, b Buffer) bool
	}{
		{"greedy-by-size", func(a, b Buffer) bool { return a.Size > b.Size }},
		{"greedy-by-size-x-lifetime", func(a, b Buffer) bool {
			return a.Size*int64(a.End-a.Start+1) > b.Size*int64(b.End-b.Start+1)
		}},
		{"greedy-by-start", func(a, b Buffer) bool { return a.Start < b.Start }},
	}
	best := int64(-1)
	var bestOffsets []int64
	for _, o := range orders {
		offs, arena := place(p.Buffers, o.less)
		if best < 0 || arena < best {
			best, bestOffsets, p.Strategy = arena, offs, o.name
		}
	}
	for i := range p.Buffers {
		p.Buffers[i].Offset = bestOffsets[i]
	}
	p.Arena = max(best, 0)
	return p
}

// place assigns offsets taking buffers in the order given by less (ties by
// index) and returns them with the arena size.
func place(bufs []Buffer, less func(a, b Buffer) bool) ([]int64, int64) {
	order := make([]int, len(bufs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return less(bufs[order[i]], bufs[order[j]]) })
	offs := make([]int64, len(bufs))
	var placed []int
	var arena int64
	for _, b := range order {
		cur := bufs[b]
		var conflicts []int
		for _, q := range placed {
			if bufs[q].Start <= cur.End && cur.Start <= bufs[q].End {
				conflicts = append(conflicts, q)
			}
		}
		sort.Slice(conflicts, func(i, j int) bool { return offs[conflicts[i]] < offs[conflicts[j]] })
		// Lowest gap that fits.
		var off int64
		for _, q := range conflicts {
			if offs[q]-off >= cur.Size {
				break
			}
			off = max(off, offs[q]+bufs[q].Size)
		}
		offs[b] = off
		arena = max(arena, off+cur.Size)
		placed = append(placed, b)
	}
	return offs, arena
}

// Check verifies the graph (ir.Verify) and the plan: every run-time value has a buffer at least as large
// as its physical size (multi-result nodes have none; each result node's
// buffer is live from its producer on), buffers lie inside the arena, and no
// two buffers whose lifetimes overlap share a byte.
func (p *Plan) Check(g *ir.Graph) error {
	// A plan is only as good as the graph it places: one that reads a value
	// in another layout or dtype than it is stored in is wrong whatever the
	// offsets (ir/rules.go).
	if err := g.Verify(); err != nil {
		return fmt.Errorf("plan of an invalid graph: %w", err)
	}
	build := BuildTime(g)
	virtual := VirtualReLUs(g, g.Users())
	for i, n := range g.Nodes {
		b := p.BufferOf[i]
		if build[i] {
			if b >= 0 {
				return fmt.Errorf("build-time value %%%d has an arena buffer", i)
			}
			continue
		}
		if virtual[i] {
			if b >= 0 {
				return fmt.Errorf("relu %%%d written into its concat by its BatchNorm has a buffer of its own", i)
			}
			continue
		}
		if n.IsMulti() {
			if b >= 0 {
				return fmt.Errorf("multi-result node %%%d has a buffer of its own", i)
			}
			continue
		}
		if b < 0 {
			return fmt.Errorf("run-time value %%%d has no buffer", i)
		}
		if n.Op == ir.OpResult && p.Buffers[b].Start > n.Args[0] {
			return fmt.Errorf("result %%%d is written by %%%d but its buffer is live only from step %d", i, n.Args[0], p.Buffers[b].Start)
		}
		if valueBytes(n.Type) > p.Buffers[b].Size {
			return fmt.Errorf("value %%%d (%d bytes) does not fit buffer %d (%d bytes)", i, valueBytes(n.Type), b, p.Buffers[b].Size)
		}
	}
	for i, a := range p.Buffers {
		if a.Offset < 0 || a.Offset+a.Size > p.Arena || a.Offset%Alignment != 0 {
			return fmt.Errorf("buffer %d [%d, %d) outside arena %d or misaligned", i, a.Offset, a.Offset+a.Size, p.Arena)
		}
		for j := i + 1; j < len(p.Buffers); j++ {
			b := p.Buffers[j]
			if a.Start <= b.End && b.Start <= a.End && a.Offset < b.Offset+b.Size && b.Offset < a.Offset+a.Size {
				return fmt.Errorf("buffers %d (steps %d-%d, bytes [%d, %d)) and %d (steps %d-%d, bytes [%d, %d)) are live together and overlap",
					i, a.Start, a.End, a.Offset, a.Offset+a.Size, j, b.Start, b.End, b.Offset, b.Offset+b.Size)
			}
		}
	}
	return nil
}

// planBuffers is the final pass: it plans the arena for the current schedule
// and checks the plan.
var planBuffers = &Pass{
	Name:  "plan-buffers",
	Doc:   "liveness intervals -> offsets in one activation arena",
	After: []string{"schedule", "dce", "layout", "concat-in-place"},
	Run: func(s *State) error {
		s.Plan = MakePlan(s.Graph)
		return s.Plan.Check(s.Graph)
	},
}
