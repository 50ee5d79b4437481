package lower

import (
	"fmt"
	"math"
	"slices"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// LRState is the name of the run-time learning rate in a compiled training
// step's Manifest.State: one float the optimizer kernels read, so that a
// learning-rate schedule changes a value, not the code.
const LRState = "kiln.lr"

// SeedState is the name of the run-time dropout seed in a compiled
// training step's Manifest.State: DropoutSeed(g) as two floats holding its
// low and high 32 bits (SeedValue). Each dropout_train kernel adds its own
// node's offset from it, so a new seed per step changes a value, not the
// code.
const SeedState = "kiln.seed"

// seedSlot is SeedState's offset from LRState's, in floats.
const seedSlot = 2

// wgradSplit lets the lowering split weight gradients by runs of images
// (codegen.ConvGeom.WgradSplit); TestWgradSplit turns it off to compare.
var wgradSplit = true

// lrSlots is the floats from LRState's offset to the step's scratch area
// (scratch), which ends the arena.
const lrSlots = 16

// scratch hands out regions of the training step's scratch area, after the
// learning rate and seed slots, to data that lives from one kernel to a
// later one outside the plan's values (the BatchNorm statistics a
// convolution writes for its BatchNorm, codegen.BNStats): a region is
// allocated when its first kernel is lowered and freed after its last, so
// that regions of kernels that never run at the same time share floats;
// first fit, 16-float aligned. top is the area's high-water mark.
type scratch struct {
	base, top int
	used      [][2]int // [start, end), sorted by start
}

func (s *scratch) alloc(n int) int {
	n = ceilTo(n, 16)
	at := s.base
	k := 0
	for ; k < len(s.used) && at+n > s.used[k][0]; k++ {
		at = max(at, s.used[k][1])
	}
	s.used = slices.Insert(s.used, k, [2]int{at, at + n})
	s.top = max(s.top, at+n)
	return at
}

func (s *scratch) free(at int) {
	s.used = slices.DeleteFunc(s.used, func(u [2]int) bool { return u[0] == at })
}

// DropoutSeed is g's base dropout seed (ir.Graph.DropoutSeed) as SeedValue
// takes it, and false when g has no dropout_train node.
func DropoutSeed(g *ir.Graph) (uint64, bool) {
	s, found := g.DropoutSeed()
	return uint64(s), found
}

// SeedValue is seed as SeedState holds it.
func SeedValue(seed uint64) []float32 {
	return []float32{math.Float32frombits(uint32(seed)), math.Float32frombits(uint32(seed >> 32))}
}

// LossState is the name of the loss in a compiled training step's
// Manifest.State (Model.State after a run): Manifest.Output is the logits,
// since the runtime's output is a batch of rows.
const LossState = "kiln.loss"

// OutputState names the state holding graph output k (k >= 2: an output
// after the loss and the logits; the pipeline keeps the outputs' order)
// after a run.
func OutputState(k int) string { return fmt.Sprintf("kiln.out.%d", k) }

// TrainOptions names the inputs of a training step.
type TrainOptions struct {
	// Input is the graph input that becomes Manifest.Input (the images).
	Input string
	// LR is the initial learning rate (LRState).
	LR float32
}

// LowerTraining lowers a planned training step graph (train.Step, through
// passes.RunTraining: plain layouts) for targets. Every value lives in the
// arena: params, BatchNorm buffers and optimizer state are mutable params
// (Graph.Updates, Manifest.State, initial values from params); inputs
// other than opts.Input (the one-hot targets) are state entries whose
// update offset is their own offset, so the caller sets them with
// Model.SetState before a run; the learning rate is the state LRState,
// placed after the plan's arena. The graph's outputs must be the loss and
// the logits (train.Step's): the logits are Manifest.Output, the loss the
// state LossState; further outputs are the states OutputState(id). Each node becomes a kernel of codegen/train_kernels.go
// or an existing plain kernel (relu, add, scale mul, copies for concat,
// slice, reshape, flatten), at the node's position on error.
func LowerTraining(s *passes.State, params map[string]*tensor.Tensor, targets []codegen.Target, opts TrainOptions) (*Program, error) {
	if s == nil || s.Graph == nil || s.Plan == nil {
		return nil, fmt.Errorf("lower: a training step needs a planned graph (passes.RunTraining)")
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("lower: no targets")
	}
	g, plan := s.Graph, s.Plan
	if err := g.Verify(); err != nil {
		return nil, err
	}
	if len(g.Outputs) < 1 {
		return nil, fmt.Errorf("lower: the training step has no output")
	}
	lrOff := int(ceilTo(int(plan.Arena), 64) / 4)
	specs, scratchFloats, err := lowerTrainNodes(g, plan, targets[0].Block, lrOff)
	if err != nil {
		return nil, err
	}
	var wb blob
	p := &Program{Targets: targets, specs: specs, graph: g, progress: true, OutputReady: outputReady(g, plan, specs)}
	info := func(id int) rt.TensorInfo {
		n := g.Nodes[id]
		return rt.TensorInfo{Name: n.Name, Shape: append([]int(nil), n.Type.Shape...),
			DType: n.Type.DType.String(), Offset: offsetOf(plan, id, n.Type.DType)}
	}
	var isas []string
	for _, t := range targets {
		isas = append(isas, t.Name)
	}
	inID := -1
	for i, n := range g.Nodes {
		if n.Op == ir.OpInput && n.Name == opts.Input {
			inID = i
		}
	}
	if inID < 0 {
		return nil, fmt.Errorf("lower: the training step has no input %q", opts.Input)
	}
	if len(g.Outputs) < 2 || g.Nodes[g.Outputs[0]].Type.Numel() != 1 {
		return nil, fmt.Errorf("lower: a training step's outputs must be the scalar loss and the logits")
	}
	loss, logits := g.Outputs[0], g.Outputs[1]
	outInfo := info(logits)
	p.Manifest = rt.Manifest{
		Version: rt.ManifestVersion, Network: g.Name + ".train", Batch: g.Nodes[inID].Type.Shape[0], Arch: archOf(targets[0]), ISAs: isas,
		Features:   codegen.ISAFeatures(targets),
		ArenaBytes: int64(lrOff+lrSlots+scratchFloats) * 4,
		Input:      info(inID), Output: outInfo,
	}
	addState := func(name string, shape []int, init []float32, off, upd int64) error {
		at, err := wb.add(init, ir.F32)
		if err != nil {
			return err
		}
		p.Manifest.State = append(p.Manifest.State, rt.StateInfo{Name: name, Shape: append([]int(nil), shape...), Init: int64(at), Offset: off, Update: upd})
		return nil
	}
	// The runtime writes every state entry into the arena before a run, in
	// order. The loss and further outputs are results only, and their
	// buffers may share space with values the run starts from (a param
	// dead before the loss is computed), so they come first: the params
	// and inputs written after them win.
	lo := offsetOf(plan, loss, ir.F32)
	if err := addState(LossState, []int{1}, []float32{0}, lo, lo); err != nil {
		return nil, err
	}
	// Further outputs (tests, debugging) are read like the loss.
	for k, o := range g.Outputs[2:] {
		n, at := g.Nodes[o], offsetOf(plan, o, ir.F32)
		if err := addState(OutputState(k+2), n.Type.Shape, make([]float32, n.Type.Numel()), at, at); err != nil {
			return nil, err
		}
	}
	for _, u := range g.Updates {
		pn := g.Nodes[u.Param]
		t, ok := params[pn.Name]
		if !ok {
			return nil, ir.Errorf(pn.Pos, "codegen: no initial value for mutable param %s", pn.Name)
		}
		if !ir.ShapeEqual(t.Shape, pn.Type.Shape) {
			return nil, ir.Errorf(pn.Pos, "codegen: mutable param %s: value of shape %s, want %s", pn.Name, ir.ShapeString(t.Shape), ir.ShapeString(pn.Type.Shape))
		}
		if err := addState(pn.Name, pn.Type.Shape, t.Data, offsetOf(plan, u.Param, ir.F32), offsetOf(plan, u.Value, ir.F32)); err != nil {
			return nil, err
		}
	}
	for i, n := range g.Nodes {
		if n.Op != ir.OpInput || i == inID || plan.BufferOf[i] < 0 {
			continue
		}
		o := offsetOf(plan, i, ir.F32)
		if err := addState(n.Name, n.Type.Shape, make([]float32, n.Type.Numel()), o, o); err != nil {
			return nil, err
		}
	}
	if err := addState(LRState, []int{1}, []float32{opts.LR}, int64(lrOff), int64(lrOff)); err != nil {
		return nil, err
	}
	if seed, ok := DropoutSeed(g); ok {
		at := int64(lrOff + seedSlot)
		if err := addState(SeedState, []int{2}, SeedValue(seed), at, at); err != nil {
			return nil, err
		}
	}
	p.Weights = wb.bytes()
	p.Manifest.WeightsBytes = int64(len(p.Weights))
	if err := p.Manifest.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// trainResults returns results[m][k]: the nodes of result k of multi-result
// node m with a buffer (a graph may take one result several times).
func trainResults(g *ir.Graph, plan *passes.Plan) map[int]map[int][]int {
	results := map[int]map[int][]int{}
	for i, n := range g.Nodes {
		if n.Op == ir.OpResult && plan.BufferOf[i] >= 0 {
			if results[n.Args[0]] == nil {
				results[n.Args[0]] = map[int][]int{}
			}
			k := n.Attrs.Int("index")
			results[n.Args[0]][k] = append(results[n.Args[0]][k], i)
		}
	}
	return results
}

// lowerTrainNodes builds the kernel specs of a training step graph: every
// run-time node in schedule order, all operands in the arena (a step graph
// has no build-time values: its params are all updated). It also returns
// the floats of the scratch area the kernels use after the LR slots.
func lowerTrainNodes(g *ir.Graph, plan *passes.Plan, B, lrOff int) ([]kernelSpec, int, error) {
	build := passes.BuildTime(g)
	users := g.Users()
	results := trainResults(g, plan)
	off := func(i int) int { return int(offsetOf(plan, i, g.Nodes[i].Type.DType)) }
	// res is where multi-result node m's kernel writes result k: its
	// first result node's buffer (-1: unused).
	res := func(m, k int) int {
		if rs := results[m][k]; len(rs) > 0 {
			return off(rs[0])
		}
		return -1
	}
	virtual := passes.VirtualReLUs(g, users) // the relus the plan left without a buffer
	fwdReLU, bwdReLU := fuseTrainReLU(g, plan, users, results, virtual)
	accOf, accSum := fuseTrainAcc(g, plan)
	dyView := sliceViews(g, plan, users, results, bwdReLU)
	yInto, err := concatWrites(g, plan, users, results, fwdReLU, bwdReLU, virtual)
	if err != nil {
		return nil, 0, err
	}
	inPlace := map[int]bool{} // relu outputs written into their concat
	for _, w := range yInto {
		inPlace[w.relu] = true
	}
	// Sibling convolutions (passes.ConvSiblings) run as their first
	// member's kernel.
	siblings := map[int][]int{}
	fused := map[int]bool{}
	for _, grp := range passes.ConvSiblings(g) {
		n := g.Nodes[grp[0]]
		geo, err := convGeom(n, g.Nodes[n.Args[0]].Type.Shape, g.Nodes[n.Args[1]].Type.Shape, n.Type.Shape)
		if err != nil || !geo.SiblingsOK() {
			continue
		}
		siblings[grp[0]] = grp[1:]
		for _, m := range grp[1:] {
			fused[m] = true
		}
	}
	// wgradSpec is the weight-gradient kernel of node i and the sibling
	// members ms, offsets aside: its geometry, the siblings' channels and
	// the batch split, sized for the whole group's dy.
	wgradSpec := func(i int, ms []int) (codegen.TrainConvGradWeightSpec, error) {
		n := g.Nodes[i]
		geo, err := convGeom(n, g.Nodes[n.Args[1]].Type.Shape, n.Type.Shape, g.Nodes[n.Args[0]].Type.Shape)
		if err != nil {
			return codegen.TrainConvGradWeightSpec{}, err
		}
		s, split := codegen.TrainConvGradWeightSpec{ConvGeom: geo}, geo
		for _, m := range ms {
			o := g.Nodes[m].Type.Shape[0]
			s.Siblings = append(s.Siblings, codegen.WgradSibling{O: o})
			split.O += o
		}
		if wgradSplit {
			s.Split = split.WgradSplit()
		}
		return s, nil
	}
	// The weight gradients of sibling convolutions (passes.WgradSiblings)
	// run as their first member's kernel.
	wgSiblings := map[int][]int{}
	for _, grp := range passes.WgradSiblings(g) {
		if ws, err := wgradSpec(grp[0], grp[1:]); err != nil || !ws.SiblingsOK() {
			continue
		}
		wgSiblings[grp[0]] = grp[1:]
		for _, m := range grp[1:] {
			fused[m] = true
		}
	}
	for _, sl := range dyView {
		fused[sl] = true
	}
	for _, a := range accOf {
		fused[a] = true
	}
	for _, j := range fwdReLU {
		fused[j] = true
	}
	for _, j := range bwdReLU {
		fused[j] = true
	}
	// The summed input gradients of sibling convolutions
	// (passes.GradInputSiblings) run as one kernel at their root add.
	gradGroups := map[int]passes.GradInputGroup{}
	for _, grp := range passes.GradInputSiblings(g) {
		d := g.Nodes[grp.Grads[0]]
		geo, err := convGeom(d, d.Type.Shape, g.Nodes[d.Args[1]].Type.Shape, g.Nodes[d.Args[0]].Type.Shape)
		if err != nil {
			continue
		}
		var os []int
		for _, m := range grp.Grads {
			os = append(os, g.Nodes[g.Nodes[m].Args[1]].Type.Shape[0])
		}
		if !geo.GradInputSiblingsOK(os) {
			continue
		}
		gradGroups[grp.Root] = grp
		for _, m := range grp.Members {
			fused[m] = m != grp.Root
		}
	}
	resFwd := fuseResidual(g, plan, users, fused, virtual, off)
	for _, r := range resFwd {
		fused[r.mul], fused[r.add] = true, true
	}
	// The residual connections whose up projection writes them
	// (passes.ResidualConvs, codegen.TrainConvSpec.Residual): resConv[u]
	// is the relu the convolution u writes, whose own kernel is skipped.
	resConv := map[int]int{}
	for j, u := range passes.ResidualConvs(g, users) {
		r, ok := resFwd[j]
		un := g.Nodes[u]
		if !ok || g.Nodes[r.mul].Args[0] != u || len(siblings[u]) > 0 || fused[u] {
			continue
		}
		geo, err := convGeom(un, g.Nodes[un.Args[0]].Type.Shape, g.Nodes[un.Args[1]].Type.Shape, un.Type.Shape)
		if err != nil || !(codegen.TrainConvSpec{ConvGeom: geo}).ResidualOK() {
			continue
		}
		// The convolution reads its input while it writes j.
		if codegen.Overlap(off(un.Args[0]), g.Nodes[un.Args[0]].Type.Numel(), off(j), un.Type.Numel()) {
			continue
		}
		resConv[u] = j
		fused[j] = true
	}
	// The scaled gradients that their convolution's backward reads
	// unscaled (passes.ScaledGrads): scaledBy[du] is dr, and the kernels
	// scale what they write.
	scaledBy := map[int]int{}
	for du, dr := range passes.ScaledGrads(g, users) {
		ok := !fused[du] && plan.BufferOf[dr] >= 0
		last := du
		for _, u := range users[du] {
			last = max(last, u)
		}
		// Nothing that shares dr's buffer (an in-place accumulation) may
		// be written before the last reader.
		for k := du + 1; k <= last; k++ {
			ok = ok && plan.BufferOf[k] != plan.BufferOf[dr]
		}
		for _, u := range users[du] {
			un := g.Nodes[u]
			_, acc := accOf[u]
			ok = ok && !fused[u] && !acc && !codegen.Overlap(off(dr), g.Nodes[dr].Type.Numel(), off(u), un.Type.Numel())
			if un.Op == ir.OpConv2DGradInput {
				geo, err := convGeom(un, un.Type.Shape, g.Nodes[un.Args[1]].Type.Shape, g.Nodes[du].Type.Shape)
				ok = ok && err == nil && (codegen.TrainConvGradInputSpec{ConvGeom: geo, Acc: -1}).ScaleOK()
			}
		}
		if ok {
			scaledBy[du] = dr
			fused[du] = true
		}
	}
	// The relu_grads applied by their input-gradient group's kernel as it
	// stores (passes.MaskedGrads): maskOf[root] is the relu_grad.
	maskOf := map[int]int{}
	for r, root := range passes.MaskedGrads(g, users) {
		if _, ok := gradGroups[root]; !ok || fused[r] || plan.BufferOf[r] < 0 {
			continue
		}
		maskOf[root] = r
		fused[r] = true
	}
	// gradOf is where a backward kernel reads its gradient operand v and
	// the scale it applies to what it writes (0: none).
	gradOf := func(v int) (int, float32) {
		if dr, ok := scaledBy[v]; ok {
			return off(dr), float32(g.Nodes[v].Attrs.Float("c"))
		}
		return off(v), 0
	}
	// scaleOut scales node v's n floats in place (c ≠ 0).
	scaleOut := func(specs []kernelSpec, name string, v, n int, c float32) []kernelSpec {
		return append(specs, kernelSpec{name: name + "_scale", node: v,
			spec: codegen.ElementwiseSpec{Op: codegen.EltScale, Elems: n, InOff: off(v), OutOff: off(v), C: c}})
	}
	// A convolution whose output is a BatchNorm's input writes the
	// BatchNorm's statistics (codegen.BNStats) into a scratch region that
	// the BatchNorm frees: statsBN[conv] is the BatchNorm (the first, if
	// several read the output), statsAt[BatchNorm] its region.
	sc := &scratch{base: lrOff + lrSlots}
	sc.top = sc.base
	statsBN, statsAt := map[int]int{}, map[int]codegen.BNStats{}
	for i, n := range g.Nodes {
		if n.Op != ir.OpBatchNormTrain || n.Attrs.Int("ghost") > 0 || n.Attrs.Bool("sync") {
			continue
		}
		if x := g.Nodes[n.Args[0]]; x.Op == ir.OpConv2D && len(x.Type.Shape) == 4 {
			if _, ok := statsBN[n.Args[0]]; !ok {
				statsBN[n.Args[0]] = i
			}
		}
	}
	statsOf := func(conv int, flat bool) codegen.BNStats {
		b, ok := statsBN[conv]
		if !ok {
			return codegen.BNStats{}
		}
		sh := g.Nodes[conv].Type.Shape
		st := codegen.BNStats{On: true, At: sc.alloc(codegen.StatsFloats(sh[1], sh[0], sh[2]*sh[3])), Flat: flat}
		statsAt[b] = st
		return st
	}
	// A bias gradient of a value that an input-gradient group's kernel
	// writes whole (the up projection's gradient in an Inception-ResNet
	// block) reads the partial sums that kernel stores with it
	// (codegen.TrainConvGradInputSpec.Stats) instead of the value:
	// biasOfGrad[v] is the bias_grad reading node v's value, biasSums[b]
	// bias_grad b's region, allocated by the writer and freed by b.
	biasOfGrad, biasSums := map[int]int{}, map[int]codegen.BNStats{}
	for i, n := range g.Nodes {
		if n.Op != ir.OpBiasGrad || len(g.Nodes[n.Args[0]].Type.Shape) != 4 {
			continue
		}
		v := n.Args[0]
		if dr, ok := scaledBy[v]; ok {
			v = dr
		}
		if _, ok := biasOfGrad[v]; !ok {
			biasOfGrad[v] = i
		}
	}
	var specs []kernelSpec
	for i, n := range g.Nodes {
		if fused[i] {
			continue // computed by its BatchNorm's kernel
		}
		if build[i] {
			if n.Op == ir.OpParam && len(users[i]) > 0 {
				return nil, 0, ir.Errorf(n.Pos, "codegen: param %s is not updated by the training step; the compiled step needs every param in the arena", n.Name)
			}
			continue
		}
		if n.Type.DType != ir.F32 && !n.IsMulti() {
			return nil, 0, ir.Errorf(n.Pos, "codegen: %s kernels not implemented yet (%s %q is %s)", n.Type.DType, n.Op, n.Name, n.Type)
		}
		if !n.IsMulti() && n.Op != ir.OpResult && plan.BufferOf[i] < 0 {
			return nil, 0, ir.Errorf(n.Pos, "codegen: %%%d %s has no arena buffer in the plan", i, n.Op)
		}
		for _, a := range n.Args {
			if build[a] {
				return nil, 0, ir.Errorf(n.Pos, "codegen: %s reads build-time value %%%d; the compiled training step reads every operand from the arena", n.Op, a)
			}
		}
		name := fmt.Sprintf("k%d", i)
		// packWeights emits, for a convolution kernel of geometry geo
		// that reads packed weights, one codegen.PackWeightSpec kernel
		// per weight (its own at *wt, then each sibling's) writing it in
		// layout into the scratch area, points the kernel at the copies,
		// and returns them; freeAll frees them once that kernel is
		// lowered.
		packWeights := func(geo codegen.ConvGeom, wt *int, sibs []codegen.ConvSibling, layout codegen.PackLayout) []int {
			pack := func(j, o int, w *int) int {
				at := sc.alloc(o * geo.C * geo.KH * geo.KW)
				specs = append(specs, kernelSpec{name: fmt.Sprintf("%s_pack%d", name, j), node: i,
					spec: codegen.PackWeightSpec{O: o, C: geo.C, KH: geo.KH, KW: geo.KW, W: *w, Out: at, Layout: layout}})
				*w = at
				return at
			}
			ats := []int{pack(0, geo.O, wt)}
			for j := range sibs {
				ats = append(ats, pack(j+1, sibs[j].O, &sibs[j].Wt))
			}
			return ats
		}
		freeAll := func(ats []int) {
			for _, at := range ats {
				sc.free(at)
			}
		}
		// packGrad packs the weights of input gradient s when it pays.
		packGrad := func(s *codegen.TrainConvGradInputSpec) []int {
			if !s.PackPays() {
				return nil
			}
			s.Packed = true
			return packWeights(s.ConvGeom, &s.Wt, s.Siblings, s.PackLayout())
		}
		add := func(s any) {
			if debugTrain {
				fmt.Printf("%%%d %s %+v\n", i, n.Op, s)
			}
			specs = append(specs, kernelSpec{name: name, node: i, spec: s, macs: g.MACs(i)})
		}
		sh := n.Type.Shape
		arg := func(k int) *ir.Node { return g.Nodes[n.Args[k]] }
		switch n.Op {
		case ir.OpParam, ir.OpInput, ir.OpResult:
			// Written by the runtime (state, input) or by the
			// multi-result producer.
		case ir.OpConv2D:
			geo, err := convGeom(n, arg(0).Type.Shape, arg(1).Type.Shape, sh)
			if err != nil {
				return nil, 0, err
			}
			s := codegen.TrainConvSpec{ConvGeom: geo, X: off(n.Args[0]), Wt: off(n.Args[1]), Bias: -1, Out: off(i)}
			s.Stats = statsOf(i, s.FlatStats())
			if j, ok := resConv[i]; ok {
				r := resFwd[j]
				s.Out = off(j)
				s.Residual = codegen.ResidualEpilogue{On: true, X: off(r.x), C: float32(g.Nodes[r.mul].Attrs.Float("c"))}
			}
			if len(n.Args) == 3 {
				s.Bias = off(n.Args[2])
			}
			for _, m := range siblings[i] {
				mn := g.Nodes[m]
				s.Siblings = append(s.Siblings, codegen.ConvSibling{O: mn.Type.Shape[1], Wt: off(mn.Args[1]), Data: off(m), Stats: statsOf(m, s.FlatStats())})
			}
			var packs []int
			if s.PackPays() {
				s.Packed = true
				packs = packWeights(geo, &s.Wt, s.Siblings, codegen.PackForward)
			}
			add(s)
			freeAll(packs)
			for _, m := range siblings[i] {
				specs[len(specs)-1].macs += g.MACs(m)
				specs[len(specs)-1].also = append(specs[len(specs)-1].also, m)
			}
		case ir.OpConv2DGradInput:
			geo, err := convGeom(n, sh, arg(1).Type.Shape, arg(0).Type.Shape)
			if err != nil {
				return nil, 0, err
			}
			s := codegen.TrainConvGradInputSpec{ConvGeom: geo, Wt: off(n.Args[1]), DX: off(i), Acc: -1}
			s.DY, s.Scale = gradOf(n.Args[0])
			if a, ok := accOf[i]; ok {
				s.DX, s.Acc = off(a), off(accSum[a])
			}
			packs := packGrad(&s)
			add(s)
			freeAll(packs)
		case ir.OpConv2DGradWeight:
			s, err := wgradSpec(i, wgSiblings[i])
			if err != nil {
				return nil, 0, err
			}
			geo := s.ConvGeom
			dy, c := gradOf(n.Args[0])
			s.X, s.DY, s.DW = off(n.Args[1]), dy, off(i)
			// The group's members (this node first) and the scale each
			// one's dW takes.
			members, scales := []int{i}, []float32{c}
			for j, m := range wgSiblings[i] {
				mdy, mc := gradOf(g.Nodes[m].Args[0])
				s.Siblings[j].DY, s.Siblings[j].DW, s.Siblings[j].Partial = mdy, off(m), -1
				members, scales = append(members, m), append(scales, mc)
			}
			runs := s.SplitRuns()
			if runs > 1 {
				// Partial sums per run of images in the scratch area,
				// added into each DW by a second kernel.
				s.Partial = sc.alloc(runs * geo.O * geo.C * geo.KH * geo.KW)
				for j := range s.Siblings {
					s.Siblings[j].Partial = sc.alloc(runs * s.Siblings[j].O * geo.C * geo.KH * geo.KW)
				}
			}
			add(s)
			for _, m := range wgSiblings[i] {
				specs[len(specs)-1].macs += g.MACs(m)
				specs[len(specs)-1].also = append(specs[len(specs)-1].also, m)
			}
			for j, m := range members {
				mname := fmt.Sprintf("k%d", m)
				if runs > 1 {
					part, o := s.Partial, geo.O
					if j > 0 {
						part, o = s.Siblings[j-1].Partial, s.Siblings[j-1].O
					}
					nw := o * geo.C * geo.KH * geo.KW
					mname += "_sum"
					specs = append(specs, kernelSpec{name: mname, node: m, spec: codegen.ChannelSumSpec{Outer: runs, C: nw, Inner: 1, DY: part, Out: off(m)}})
					sc.free(part)
				}
				if scales[j] != 0 {
					specs = scaleOut(specs, mname, m, g.Nodes[m].Type.Numel(), scales[j])
				}
			}
		case ir.OpBiasGrad:
			o, ch, in := channelLayout(arg(0).Type.Shape)
			dy, c := gradOf(n.Args[0])
			st, ok := biasSums[i]
			if ok {
				sc.free(st.At)
			}
			add(codegen.ChannelSumSpec{Outer: o, C: ch, Inner: in, DY: dy, Out: off(i), Stats: st})
			if c != 0 {
				specs = scaleOut(specs, name, i, n.Type.Numel(), c)
			}
		case ir.OpBatchNormTrain:
			if n.Attrs.Int("ghost") > 0 || n.Attrs.Bool("sync") {
				return nil, 0, ir.Errorf(n.Pos, "codegen: %%%d batchnorm_train: ghost batches and synchronized BatchNorm run in the interpreter only (--backend interp)", i)
			}
			o, c, in := channelLayout(arg(0).Type.Shape)
			s := codegen.BatchNormTrainSpec{Outer: o, C: c, Inner: in, Eps: n.Attrs.Float("eps"),
				X: off(n.Args[0]), Wt: off(n.Args[1]), B: off(n.Args[2]), Y: res(i, 0), Mean: res(i, 1), Var: res(i, 2)}
			if st, ok := statsAt[i]; ok {
				s.Stats = st
				sc.free(st.At)
			}
			if j, ok := fwdReLU[i]; ok {
				s.ReLU = true
				if w, ok := yInto[i]; ok {
					s.Y, s.YStride = w.at, w.stride
				} else {
					s.Y = off(j)
				}
			}
			add(s)
		case ir.OpBatchNormTrainGrad:
			o, c, in := channelLayout(arg(1).Type.Shape)
			s := codegen.BatchNormTrainGradSpec{Outer: o, C: c, Inner: in, Eps: n.Attrs.Float("eps"),
				DY: off(n.Args[0]), X: off(n.Args[1]), Wt: off(n.Args[2]), Mean: off(n.Args[3]), Var: off(n.Args[4]),
				DX: res(i, 0), DW: res(i, 1), DB: res(i, 2)}
			if j, ok := bwdReLU[i]; ok {
				rg := g.Nodes[j]
				s.DY, s.ReLU = off(rg.Args[0]), true
				if f, ok := passes.OwnReLU(g, n, rg.Args[1]); ok {
					s.R, s.B = -1, off(g.Nodes[f].Args[2])
				} else {
					s.R = off(rg.Args[1])
				}
			}
			if sl, ok := dyView[i]; ok {
				s.DY, s.DYStride = sliceIn(g, sl, off)
			}
			add(s)
		case ir.OpReLUGrad, ir.OpMul2, ir.OpScaleBy:
			op := map[string]codegen.EltTrainOp{ir.OpReLUGrad: codegen.EltReLUGrad, ir.OpMul2: codegen.EltMul2, ir.OpScaleBy: codegen.EltScaleBy}[n.Op]
			add(codegen.EltTrainSpec{Op: op, Elems: n.Type.Numel(), A: off(n.Args[0]), B: off(n.Args[1]), Out: off(i)})
		case ir.OpMaxPool, ir.OpAvgPool:
			if len(n.Args) != 1 || n.Attrs.Int("offset") != 0 {
				return nil, 0, ir.Errorf(n.Pos, "codegen: a training %s writes a whole value (no into operand)", n.Op)
			}
			x := arg(0).Type.Shape
			add(codegen.TrainPoolSpec{PoolGeom: poolGeom(n, x, sh), X: off(n.Args[0]), Out: off(i)})
		case ir.OpMaxPoolGrad:
			s := codegen.TrainPoolGradSpec{PoolGeom: poolGeom(n, sh, arg(0).Type.Shape), DY: off(n.Args[0]), X: off(n.Args[1]), DX: off(i), Acc: -1}
			if a, ok := accOf[i]; ok {
				s.DX, s.Acc = off(a), off(accSum[a])
			}
			add(s)
		case ir.OpAvgPoolGrad:
			add(codegen.TrainPoolGradSpec{PoolGeom: poolGeom(n, sh, arg(0).Type.Shape), DY: off(n.Args[0]), X: -1, DX: off(i), Acc: -1})
		case ir.OpGlobalAvgPool:
			x := arg(0).Type.Shape
			add(codegen.GlobalAvgTrainSpec{Planes: x[0] * x[1], HW: x[2] * x[3], In: off(n.Args[0]), Out: off(i)})
		case ir.OpGlobalAvgPoolGrad:
			add(codegen.GlobalAvgTrainSpec{Planes: sh[0] * sh[1], HW: sh[2] * sh[3], Grad: true, In: off(n.Args[0]), Out: off(i)})
		case ir.OpDense:
			w := arg(1).Type.Shape
			s := codegen.DenseTrainSpec{Op: codegen.DenseFwd, N: sh[0], I: w[1], O: w[0], X: off(n.Args[0]), DY: -1, Wt: off(n.Args[1]), Bias: -1, Out: off(i)}
			if len(n.Args) == 3 {
				s.Bias = off(n.Args[2])
			}
			add(s)
		case ir.OpDenseGradInput:
			w := arg(1).Type.Shape
			add(codegen.DenseTrainSpec{Op: codegen.DenseGradInput, N: sh[0], I: w[1], O: w[0], X: -1, DY: off(n.Args[0]), Wt: off(n.Args[1]), Bias: -1, Out: off(i)})
		case ir.OpDenseGradWeight:
			add(codegen.DenseTrainSpec{Op: codegen.DenseGradWeight, N: arg(0).Type.Shape[0], I: sh[1], O: sh[0], X: off(n.Args[1]), DY: off(n.Args[0]), Wt: -1, Bias: -1, Out: off(i)})
		case ir.OpSoftmaxXent, ir.OpSoftmaxXentGrad:
			x := arg(0).Type.Shape
			add(codegen.XentSpec{N: x[0], K: x[1], Smoothing: n.Attrs.Float("smoothing"), Grad: n.Op == ir.OpSoftmaxXentGrad,
				X: off(n.Args[0]), T: off(n.Args[1]), Out: off(i)})
		case ir.OpRMSPropUpdate, ir.OpRMSPropTFUpdate, ir.OpSGDUpdate:
			s := codegen.OptimizerSpec{Elems: arg(0).Type.Numel(), Momentum: n.Attrs.Float("momentum"), WeightDecay: n.Attrs.Float("weight_decay"),
				LR: lrOff, P: off(n.Args[0]), G: off(n.Args[1]), NewP: res(i, 0), V: -1, NewV: -1}
			switch n.Op {
			case ir.OpSGDUpdate:
				s.Kind_, s.B, s.NewB = codegen.SGD, off(n.Args[2]), res(i, 1)
			default:
				s.Kind_ = codegen.RMSProp
				if n.Op == ir.OpRMSPropTFUpdate {
					s.Kind_ = codegen.RMSPropTF
				}
				s.Alpha, s.Eps = n.Attrs.Float("alpha"), n.Attrs.Float("eps")
				s.V, s.B, s.NewV, s.NewB = off(n.Args[2]), off(n.Args[3]), res(i, 1), res(i, 2)
			}
			add(s)
		case ir.OpDropoutTrain:
			base, _ := DropoutSeed(g)
			add(codegen.DropoutTrainSpec{Elems: arg(0).Type.Numel(), P: n.Attrs.Float("p"), Seed: lrOff + seedSlot,
				SeedDelta: int64(n.Attrs.Int("seed")) - int64(base), X: off(n.Args[0]), Y: res(i, 0), Mask: res(i, 1)})
		case ir.OpSumSquares:
			add(codegen.SumSquaresSpec{Elems: arg(0).Type.Numel(), X: off(n.Args[0]), Out: off(i)})
		case ir.OpGlobalNormScale:
			s := codegen.GlobalNormScaleSpec{MaxNorm: n.Attrs.Float("max_norm"), Eps: n.Attrs.Float("eps"), Out: off(i)}
			for _, a := range n.Args {
				s.In = append(s.In, off(a))
			}
			add(s)
		case ir.OpClip:
			// Gradient clipping by value: the plain elementwise clip (ext.go).
			ks, err := lowerExt(g, n, i, B, name, off)
			if err != nil {
				return nil, 0, err
			}
			specs = append(specs, ks)
		case ir.OpSlice:
			x := arg(0).Type.Shape
			ax, o, size := n.Attrs.Int("axis"), n.Attrs.Int("offset"), n.Attrs.Int("size")
			outer, inner := 1, 1
			for _, d := range x[:ax] {
				outer *= d
			}
			for _, d := range x[ax+1:] {
				inner *= d
			}
			add(codegen.CopySpec{Elems: size * inner, Rows: outer, InOff: off(n.Args[0]) + o*inner, InStride: x[ax] * inner,
				OutOff: off(i), OutStride: size * inner})
		case ir.OpReshape, ir.OpFlatten, ir.OpDropout:
			if plan.BufferOf[i] != plan.BufferOf[n.Args[0]] {
				add(codegen.CopySpec{Elems: n.Type.Numel(), InOff: off(n.Args[0]), OutOff: off(i)})
			}
		case ir.OpConcat:
			// Operands written in place by their BatchNorm may have no
			// buffer; their copies are dropped below.
			cs, err := concatCopies(g, n, i, B, func(v int) int {
				if inPlace[v] {
					return -1
				}
				return off(v)
			})
			if err != nil {
				return nil, 0, err
			}
			for j, c := range cs {
				if inPlace[n.Args[j]] {
					continue // its BatchNorm wrote it there
				}
				specs = append(specs, kernelSpec{name: fmt.Sprintf("%s_%d", name, j), node: i, spec: c})
			}
		case ir.OpAdd:
			if grp, ok := gradGroups[i]; ok {
				d := g.Nodes[grp.Grads[0]]
				geo, err := convGeom(d, d.Type.Shape, g.Nodes[d.Args[1]].Type.Shape, g.Nodes[d.Args[0]].Type.Shape)
				if err != nil {
					return nil, 0, err
				}
				s := codegen.TrainConvGradInputSpec{ConvGeom: geo, DY: off(d.Args[0]), Wt: off(d.Args[1]), DX: off(i), Acc: -1}
				if grp.Other >= 0 {
					s.Acc = off(grp.Other)
				}
				for _, m := range grp.Grads[1:] {
					mn := g.Nodes[m]
					s.Siblings = append(s.Siblings, codegen.ConvSibling{O: g.Nodes[mn.Args[1]].Type.Shape[0], Wt: off(mn.Args[1]), Data: off(mn.Args[0])})
				}
				if r, ok := maskOf[i]; ok {
					if !s.MaskOK() {
						return nil, 0, ir.Errorf(g.Nodes[r].Pos, "codegen: %%%d relu_grad: its input-gradient group cannot apply the mask", r)
					}
					s.DX, s.Mask = off(r), codegen.ReLUMask{On: true, Y: off(g.Nodes[r].Args[1])}
				}
				w := i
				if r, ok := maskOf[i]; ok {
					w = r
				}
				if b, ok := biasOfGrad[w]; ok && s.StatsOK() && s.DX == off(w) {
					s.Stats = codegen.BNStats{On: true, At: sc.alloc(codegen.StatsFloats(geo.C, geo.N, geo.H*geo.W)), Flat: s.FlatStats()}
					biasSums[b] = s.Stats
				}
				packs := packGrad(&s)
				add(s)
				freeAll(packs)
				specs[len(specs)-1].macs = 0
				for _, m := range grp.Grads {
					specs[len(specs)-1].macs += g.MACs(m)
				}
				break
			}
			fallthrough
		case ir.OpReLU, ir.OpMul:
			if r, ok := resFwd[i]; ok {
				mul := g.Nodes[r.mul]
				add(codegen.EltTrainSpec{Op: codegen.EltResidual, Elems: n.Type.Numel(), A: off(r.x), B: off(mul.Args[0]),
					C: float32(mul.Attrs.Float("c")), Out: off(i)})
				break
			}
			s := codegen.ElementwiseSpec{Elems: n.Type.Numel(), InOff: off(n.Args[0]), OutOff: off(i)}
			switch n.Op {
			case ir.OpReLU:
				s.Op = codegen.EltReLU
			case ir.OpAdd:
				s.Op, s.In2Off = codegen.EltAdd, off(n.Args[1])
			case ir.OpMul:
				s.Op, s.C = codegen.EltScale, float32(n.Attrs.Float("c"))
			}
			add(s)
		default:
			return nil, 0, ir.Errorf(n.Pos, "codegen: op %s has no compiled training kernel (kiln train --backend interp runs it)", n.Op)
		}
		// Further result nodes of one result are copies of the first,
		// made right after the kernel (all are live from the producer).
		for k, rs := range results[i] {
			for j, r := range rs[1:] {
				specs = append(specs, kernelSpec{name: fmt.Sprintf("%s_r%d_%d", name, k, j), node: i,
					spec: codegen.CopySpec{Elems: g.Nodes[r].Type.Numel(), InOff: off(rs[0]), OutOff: off(r)}})
			}
		}
	}
	return specs, sc.top - sc.base, nil
}

var debugTrain = false

// convGeom is the geometry of conv node n (or its gradient) from the input
// x, weight w and output y shapes; groups 1 and no dilation only.
func convGeom(n *ir.Node, x, w, y []int) (codegen.ConvGeom, error) {
	if n.Attrs.Int("groups") != 1 {
		return codegen.ConvGeom{}, ir.Errorf(n.Pos, "codegen: compiled training supports groups=1 convolutions only")
	}
	if d := n.Attrs.Ints("dilation"); d != nil && (d[0] != 1 || d[1] != 1) {
		return codegen.ConvGeom{}, ir.Errorf(n.Pos, "codegen: compiled training does not support dilated convolutions")
	}
	st, pd := n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
	return codegen.ConvGeom{N: x[0], C: x[1], H: x[2], W: x[3], O: w[0], KH: w[2], KW: w[3],
		SH: st[0], SW: st[1], PH: pd[0], PW: pd[1], OH: y[2], OW: y[3]}, nil
}

// poolGeom is the window of pool node n (or its gradient) over input x
// with output y.
func poolGeom(n *ir.Node, x, y []int) codegen.PoolGeom {
	k, st, pd := n.Attrs.Ints("kernel"), n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
	return codegen.PoolGeom{Planes: x[0] * x[1], H: x[2], W: x[3], KH: k[0], KW: k[1], SH: st[0], SW: st[1], PH: pd[0], PW: pd[1],
		OH: y[2], OW: y[3], Max: n.Op == ir.OpMaxPool || n.Op == ir.OpMaxPoolGrad, IncludePad: n.Attrs.Bool("count_include_pad")}
}

// channelLayout splits a shape [N, C, ...] into outer N, channels C and
// the inner extent.
func channelLayout(shape []int) (int, int, int) {
	inner := 1
	for _, d := range shape[2:] {
		inner *= d
	}
	return shape[0], shape[1], inner
}

// residual is a scaled residual connection relu(x + c·u) fused into one
// kernel at the relu: the mul (c·u) and the add it skips, and x.
type residual struct{ mul, add, x int }

// fuseResidual finds the forward scaled residual connections of
// Inception-ResNet (Szegedy et al. 2016, §3.3: out = relu(x + c·up)) that
// run as one elementwise pass: mul m = c·u, add a = x + m, relu j =
// relu(a), consecutive in the schedule with m used only by a and a only by
// j and neither a graph output, run as codegen.EltResidual at j (fwd[j]).
// Nothing runs between m and j, so u's and x's buffers still hold them
// there. The fusion is skipped
// where j's buffer partially overlaps x's or u's (an elementwise pass reads
// and writes element i in the same iteration, so only exact aliasing is
// safe). The three unfused kernels read and wrote the tensor seven times,
// the fused one three; where u is a convolution that can apply it
// (passes.ResidualConvs), the convolution does instead (resConv). The
// backward's mul (c·dy) is folded into its readers where it can be
// (passes.ScaledGrads); a relu_grad and mul written as one kernel with two
// outputs had run slower (3.7 against 1.5 + 1.5 ms per step for
// mini_inception_resnet's six, 2026-12-02).
func fuseResidual(g *ir.Graph, plan *passes.Plan, users [][]int, fused, virtual map[int]bool, off func(int) int) map[int]residual {
	fwd := map[int]residual{}
	numel := func(i int) int { return g.Nodes[i].Type.Numel() }
	safe := func(out int, ins ...int) bool {
		n := numel(out)
		for _, in := range ins {
			o, a := off(out), off(in)
			if o != a && o < a+n && a < o+n {
				return false
			}
		}
		return true
	}
	out := map[int]bool{} // graph outputs: read after the step, so not skipped
	for _, o := range g.Outputs {
		out[o] = true
	}
	for j, n := range g.Nodes {
		if n.Op != ir.OpReLU || fused[j] || virtual[j] || plan.BufferOf[j] < 0 || n.Type.DType != ir.F32 {
			continue
		}
		a := n.Args[0]
		an := g.Nodes[a]
		if a != j-1 || an.Op != ir.OpAdd || len(an.Args) != 2 || len(users[a]) != 1 || fused[a] || out[a] {
			continue
		}
		for k, m := range an.Args {
			mn := g.Nodes[m]
			x := an.Args[1-k]
			if m != a-1 || mn.Op != ir.OpMul || len(mn.Args) != 1 || len(users[m]) != 1 || fused[m] || out[m] || x == m {
				continue
			}
			if numel(x) != numel(j) || numel(mn.Args[0]) != numel(j) || !safe(j, x, mn.Args[0]) {
				continue
			}
			fwd[j] = residual{mul: m, add: a, x: x}
			break
		}
	}
	return fwd
}

// fuseTrainAcc finds the adds of gradient contributions that an input
// gradient's kernel computes (codegen.TrainConvGradInputSpec.Acc): acc[d] =
// a when add a = d + o shares d's buffer (the plan aliases them, see
// passes.AccAdds), so that d's kernel, writing o + its gradient at d's step,
// leaves nothing for the add; other[a] = o. The plan keeps a's buffer live
// from d on, so nothing else occupies it in between; o must be another
// buffer (it is live at a, so it is).
func fuseTrainAcc(g *ir.Graph, plan *passes.Plan) (acc, other map[int]int) {
	acc, other = map[int]int{}, map[int]int{}
	for a, d := range passes.AccAdds(g) {
		if plan.BufferOf[a] < 0 || plan.BufferOf[a] != plan.BufferOf[d] {
			continue
		}
		n := g.Nodes[a]
		o := n.Args[0]
		if o == d {
			o = n.Args[1]
		}
		if plan.BufferOf[o] < 0 || plan.BufferOf[o] == plan.BufferOf[a] {
			continue
		}
		acc[d], other[a] = a, o
	}
	return acc, other
}

// sliceViews returns, for each BatchNorm gradient node that reads its
// gradient in place from a concat's gradient, the slice node whose copy it
// replaces (passes.SliceViews, which also keeps the sliced value live up
// to the gradient node). The slice must not be a value the caller reads,
// a relu_grad in between must be fused into the gradient (bwd), and no
// node after the slice up to the gradient's own results may write into the
// sliced value's buffer.
func sliceViews(g *ir.Graph, plan *passes.Plan, users [][]int, results map[int]map[int][]int, bwd map[int]int) map[int]int {
	visible := passes.Visible(g)
	out := map[int]int{}
	for sl, k := range passes.SliceViews(g, users) {
		if visible[sl] {
			continue
		}
		if u := users[sl][0]; u != k && bwd[k] != u {
			continue // the relu_grad in between runs as its own kernel
		}
		r, ok := bufferSpan(plan, g.Nodes[sl].Args[0])
		if ok && !writtenIn(plan, results, sl+1, k+1, r, sl) {
			out[k] = sl
		}
	}
	return out
}

// concatWrite is where a BatchNorm kernel writes its fused ReLU's output
// in place: the relu node, the arena offset of its channel slice of the
// concat and the distance between images there.
type concatWrite struct{ relu, at, stride int }

// concatWrites returns, for each batchnorm_train whose fused ReLU output
// goes straight into its slice of a concat, where it goes: exactly the
// relus the plan left without a buffer (virtual, passes.VirtualReLUs; the
// plan keeps the concat live from the BatchNorm on). Every relu_grad taking
// such a relu as its mask must then be fused into its BatchNorm gradient
// (which recomputes the mask from x), and nothing from the BatchNorm to the
// concat may write into the concat's buffer; otherwise it reports an
// internal error, since the relu has nowhere else to go.
func concatWrites(g *ir.Graph, plan *passes.Plan, users [][]int, results map[int]map[int][]int, fwd, bwd map[int]int, virtual map[int]bool) (map[int]concatWrite, error) {
	bnOf := map[int]int{}
	for bn, j := range fwd {
		bnOf[j] = bn
	}
	out := map[int]concatWrite{}
	for j, c := range passes.ConcatWrites(g, users) {
		if !virtual[j] {
			continue // computed into its own buffer and copied
		}
		fail := func(why string) error {
			return ir.Errorf(g.Nodes[j].Pos, "codegen: internal error: %%%d relu has no buffer but %s", j, why)
		}
		bn, ok := bnOf[j]
		if !ok {
			return nil, fail("its BatchNorm does not compute it")
		}
		for _, u := range users[j] {
			if g.Nodes[u].Op == ir.OpReLUGrad && bwd[users[u][0]] != u {
				return nil, fail("its relu_grad is not fused into the BatchNorm gradient")
			}
		}
		r, ok := bufferSpan(plan, c)
		if !ok || !g.Nodes[c].Type.Layout.IsPlain() || writtenIn(plan, results, bn, c, r, -1) {
			return nil, fail(fmt.Sprintf("cannot be written into its concat %%%d", c))
		}
		cn := g.Nodes[c]
		inner := cn.Type.Shape[2] * cn.Type.Shape[3]
		c0 := 0
		for _, a := range cn.Args {
			if a == j {
				break
			}
			c0 += g.Nodes[a].Type.Shape[1]
		}
		out[bn] = concatWrite{relu: j, at: int(offsetOf(plan, c, ir.F32)) + c0*inner, stride: cn.Type.Shape[1] * inner}
	}
	return out, nil
}

// span is a byte range [lo, hi) of the arena.
type span struct{ lo, hi int64 }

func (s span) overlaps(r span) bool { return s.lo < r.hi && r.lo < s.hi }

// bufferSpan returns the bytes of v's buffer (false: none).
func bufferSpan(plan *passes.Plan, v int) (span, bool) {
	if v < 0 || v >= len(plan.BufferOf) || plan.BufferOf[v] < 0 {
		return span{}, false
	}
	b := plan.Buffers[plan.BufferOf[v]]
	return span{b.Offset, b.Offset + b.Size}, true
}

// writtenIn reports whether a node of steps [from, to) other than skip, or
// one of its results, has a buffer overlapping r.
func writtenIn(plan *passes.Plan, results map[int]map[int][]int, from, to int, r span, skip int) bool {
	for m := from; m < to; m++ {
		outs := []int{m}
		for _, rs := range results[m] {
			outs = append(outs, rs...)
		}
		for _, o := range outs {
			if s, ok := bufferSpan(plan, o); ok && o != skip && s.overlaps(r) {
				return true
			}
		}
	}
	return false
}

// sliceIn returns where the channel slice sl lies in the value it slices:
// the arena offset of its first element and the distance between images.
func sliceIn(g *ir.Graph, sl int, off func(int) int) (at, stride int) {
	n := g.Nodes[sl]
	x := g.Nodes[n.Args[0]].Type.Shape
	inner := x[2] * x[3]
	return off(n.Args[0]) + n.Attrs.Int("offset")*inner, x[1] * inner
}

// fuseTrainReLU finds the ReLUs that the BatchNorm kernels compute (see
// codegen.BatchNormTrainSpec.ReLU and BatchNormTrainGradSpec.ReLU):
// fwd[i] = j when relu j is the only user of batchnorm_train i's output y,
// and bwd[k] = j when relu_grad j's only user is batchnorm_train_grad k, as
// its gradient operand. A fused kernel writes the relu's output at the
// BatchNorm's step instead of the relu's, and reads relu_grad's operands
// at the BatchNorm gradient's step instead of the relu_grad's, so each
// fusion is taken only when the plan makes that move harmless: no value
// between the two steps occupies (is written or read in) the bytes
// written early, nothing between them overwrites the bytes read late, and
// the BatchNorm's own operands and results overlap neither (but for an
// elementwise in-place result, which covers exactly the same bytes). A
// relu without a buffer (passes.VirtualReLUs) is fused unconditionally:
// its BatchNorm writes into the concat, which the plan keeps live.
func fuseTrainReLU(g *ir.Graph, plan *passes.Plan, users [][]int, results map[int]map[int][]int, virtual map[int]bool) (fwd, bwd map[int]int) {
	fwd, bwd = map[int]int{}, map[int]int{}
	// Values the caller reads (outputs, updates) must be computed.
	visible := passes.Visible(g)
	at := func(v int) (span, bool) { return bufferSpan(plan, v) }
	overlaps := func(v int, r span) bool {
		s, ok := at(v)
		return ok && s.overlaps(r)
	}
	same := func(v int, r span) bool {
		s, ok := at(v)
		return ok && s == r
	}
	for i, n := range g.Nodes {
		switch n.Op {
		case ir.OpBatchNormTrain:
			ys := results[i][0]
			if len(ys) != 1 || len(users[ys[0]]) != 1 {
				continue
			}
			y, j := ys[0], users[ys[0]][0]
			if r := g.Nodes[j]; r.Op != ir.OpReLU || len(r.Args) != 1 || j < i || visible[y] {
				continue
			}
			if virtual[j] {
				fwd[i] = j
				continue
			}
			out, ok := at(j)
			if !ok {
				continue
			}
			safe := true
			for _, a := range n.Args {
				safe = safe && !overlaps(a, out)
			}
			for m := i + 1; m < j && safe; m++ {
				if m != y && overlaps(m, out) {
					safe = false
				}
				for _, a := range g.Nodes[m].Args {
					if a != y && a != i && overlaps(a, out) {
						safe = false
					}
				}
			}
			for k, rs := range results[i] {
				for _, r := range rs {
					if k != 0 && overlaps(r, out) {
						safe = false
					}
				}
			}
			if safe {
				fwd[i] = j
			}
		case ir.OpReLUGrad:
			if len(users[i]) != 1 || visible[i] {
				continue
			}
			k := users[i][0]
			bn := g.Nodes[k]
			if bn.Op != ir.OpBatchNormTrainGrad || bn.Args[0] != i || k < i {
				continue
			}
			dy, okd := at(n.Args[0])
			r, okr := at(n.Args[1])
			if virtual[n.Args[1]] {
				r, okr = span{}, true // never read: the mask comes from x
			}
			if !okd || !okr {
				continue
			}
			safe := true
			for _, a := range bn.Args[1:] {
				safe = safe && a != i
			}
			for m := i + 1; m < k && safe; m++ {
				if overlaps(m, dy) || overlaps(m, r) {
					safe = false
				}
			}
			for idx, rs := range results[k] {
				for _, o := range rs {
					for _, s := range []span{dy, r} {
						if overlaps(o, s) && !(idx == 0 && same(o, s)) {
							safe = false
						}
					}
				}
			}
			if safe {
				bwd[k] = i
			}
		}
	}
	return fwd, bwd
}
