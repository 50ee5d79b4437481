// Package lower turns an optimized graph and its memory plan into a compiled
// artifact: one kernel per run-time node (codegen specs with every arena and
// weight offset resolved), a weights blob holding the build-time values
// (folded, packed, transposed once), a small C driver that runs the kernels in
// schedule order across threads, and the runtime manifest.
package lower

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// Program is a lowered network, ready to compile: kernel specs with every
// offset resolved, the weights blob and the manifest (whose kernel list
// Compile fills in).
type Program struct {
	// Weights is the weights blob: each build-time value little-endian in
	// its dtype, 64-byte aligned.
	Weights []byte
	// Manifest describes the artifact to the runtime; Manifest.Kernels is
	// set by Compile.
	Manifest rt.Manifest
	// Targets are the ISA variants compiled.
	Targets []codegen.Target

	// OutputReady, for a training step (LowerTraining), holds for each
	// graph output k how many kernels (Manifest.Kernels order) are complete
	// when its value is final: no later kernel writes its buffer, so it may
	// be read while the step runs (rt.Model.RunProgress; progress.go).
	OutputReady []int

	specs    []kernelSpec
	graph    *ir.Graph
	progress bool // the driver publishes progress in single-threaded runs too (progress.go)
}

// kernelsPerModule bounds the size of one LLVM module.
const kernelsPerModule = 24

// blob lays out the weights blob, each tensor 64-byte aligned and stored in
// its dtype; the bytes are assembled once at the end (a 160 MB blob must not
// be regrown piecewise).
type blob struct {
	chunks []chunk
	n      int // bytes
}

type chunk struct {
	off int // bytes
	dt  ir.DType
	v   []float32
}

// add places v, to be stored as dtype dt, and returns its offset in
// elements of dt (the unit kernel specs use). Values are computed in
// float32 at build time and rounded to dt here (round to nearest even);
// i8 weights need a quantization scheme and are refused.
func (b *blob) add(v []float32, dt ir.DType) (int, error) {
	switch dt {
	case ir.F32, ir.BF16, ir.F16:
	default:
		return 0, fmt.Errorf("weights of dtype %s cannot be stored (no quantization scheme yet)", dt)
	}
	b.n = ceilTo(b.n, 64)
	off := b.n
	b.chunks = append(b.chunks, chunk{off, dt, v})
	b.n += len(v) * dt.Size()
	return off / dt.Size(), nil
}

// bytes returns the blob, each chunk little-endian in its dtype.
func (b *blob) bytes() []byte {
	out := make([]byte, b.n)
	for _, c := range b.chunks {
		dst := out[c.off:]
		switch c.dt {
		case ir.F32:
			putFloats(dst, c.v)
		case ir.BF16:
			for i, f := range c.v {
				binary.LittleEndian.PutUint16(dst[2*i:], tensor.F32ToBF16(f))
			}
		case ir.F16:
			for i, f := range c.v {
				binary.LittleEndian.PutUint16(dst[2*i:], tensor.F32ToF16(f))
			}
		}
	}
	return out
}

// Lower lowers the final pipeline state s (it must have a plan) for targets,
// which must share a triple and a channel block equal to the graph's NCHWc
// block. params are the network's weights, keyed by parameter name.
//
// The per-node work (legality, kernel specs) is lowerNodes, shared with
// Check: Lower is Check plus the weights blob and the manifest.
func Lower(s *passes.State, params map[string]*tensor.Tensor, targets []codegen.Target) (*Program, error) {
	// Legality first, so that an illegal graph is reported as Check reports
	// it, before the weights are evaluated.
	if err := Check(s, targets); err != nil {
		return nil, err
	}
	g, plan := s.Graph, s.Plan
	build := passes.BuildTime(g)
	values, err := evalBuildTime(g, build, params)
	if err != nil {
		return nil, err
	}
	var wb blob
	// weight places the build-time values vs (their data combined by f;
	// nil: the one value as is) in the blob in vs[0]'s dtype and returns
	// its offset in elements.
	weight := func(n *ir.Node, what string, f func([][]float32) []float32, vs ...int) (int, error) {
		var data [][]float32
		for _, v := range vs {
			t, ok := values[v]
			if !ok {
				return 0, ir.Errorf(n.Pos, "codegen: %s %s must be a build-time value", n.Op, what)
			}
			data = append(data, t.Data)
		}
		d := data[0]
		if f != nil {
			d = f(data)
		}
		off, err := wb.add(d, g.Nodes[vs[0]].Type.DType)
		if err != nil {
			return 0, ir.Errorf(n.Pos, "codegen: %s %s: %v", n.Op, what, err)
		}
		return off, nil
	}
	specs, err := lowerNodes(g, plan, build, targets[0].Block, weight)
	if err != nil {
		return nil, err
	}
	p := &Program{Targets: targets, specs: specs, graph: g}
	in := g.Inputs()
	inID := indexOf(g, in[0])
	out := g.Outputs[0]
	var isas []string
	for _, t := range targets {
		isas = append(isas, t.Name)
	}
	info := func(id int) rt.TensorInfo {
		n := g.Nodes[id]
		return rt.TensorInfo{Name: n.Name, Shape: append([]int(nil), n.Type.Shape...),
			DType: n.Type.DType.String(), Offset: offsetOf(plan, id, n.Type.DType)}
	}
	p.Manifest = rt.Manifest{
		Version: rt.ManifestVersion, Network: g.Name, Batch: in[0].Type.Shape[0], Arch: archOf(targets[0]), ISAs: isas,
		Features:   codegen.ISAFeatures(targets),
		ArenaBytes: plan.Arena, // WeightsBytes: below, once the blob is complete
		Input:      info(inID), Output: info(out),
	}
	for _, o := range g.Outputs[1:] {
		p.Manifest.Taps = append(p.Manifest.Taps, info(o))
	}
	// Mutable params: the initial value goes into the weights blob; the
	// runtime copies the current value in before a run and the update out
	// after it.
	for _, u := range g.Updates {
		pn := g.Nodes[u.Param]
		t, ok := params[pn.Name]
		if !ok {
			return nil, ir.Errorf(pn.Pos, "codegen: no initial value for mutable param %s", pn.Name)
		}
		if !ir.ShapeEqual(t.Shape, pn.Type.Shape) {
			return nil, ir.Errorf(pn.Pos, "codegen: mutable param %s: value of shape %s, want %s", pn.Name, ir.ShapeString(t.Shape), ir.ShapeString(pn.Type.Shape))
		}
		init, err := wb.add(t.Data, ir.F32)
		if err != nil {
			return nil, err
		}
		p.Manifest.State = append(p.Manifest.State, rt.StateInfo{Name: pn.Name, Shape: append([]int(nil), pn.Type.Shape...),
			Init: int64(init), Offset: offsetOf(plan, u.Param, ir.F32), Update: offsetOf(plan, u.Value, ir.F32)})
	}
	p.Weights = wb.bytes()
	p.Manifest.WeightsBytes = int64(len(p.Weights))
	return p, nil
}

// NameTaps names the taps of the manifest: the graph's outputs after the
// first, in order (the caller that added marks as extra outputs knows their
// names; the pipeline keeps the order of outputs).
func (p *Program) NameTaps(names []string) error {
	if len(names) != len(p.Manifest.Taps) {
		return fmt.Errorf("lower: %d tap names for %d extra outputs", len(names), len(p.Manifest.Taps))
	}
	for i, n := range names {
		p.Manifest.Taps[i].Name = n
	}
	return p.Manifest.Validate()
}

// Check runs the legality checks of Lower on the final pipeline state s for
// targets, without weights and without LLVM: the state has a plan, every
// run-time node has a kernel for its op, layout, dtype and grouping, every
// kernel spec validates against the targets' block, and the network has one
// plain input and output. It is the same code as Lower's (lowerNodes), with
// placeholder weight offsets, so a state that checks also lowers, or Check
// says why not. Errors carry the node's source position.
func Check(s *passes.State, targets []codegen.Target) error {
	if err := checkState(s, targets); err != nil {
		return err
	}
	build := passes.BuildTime(s.Graph)
	weight := func(n *ir.Node, what string, _ func([][]float32) []float32, vs ...int) (int, error) {
		for _, v := range vs {
			if !build[v] {
				return 0, ir.Errorf(n.Pos, "codegen: %s %s must be a build-time value", n.Op, what)
			}
		}
		return 0, nil
	}
	specs, err := lowerNodes(s.Graph, s.Plan, build, targets[0].Block, weight)
	if err != nil {
		return err
	}
	for _, k := range specs {
		if err := k.validate(targets[0].Block); err != nil {
			n := s.Graph.Nodes[k.node]
			return ir.Errorf(n.Pos, "codegen %s: %v", n.Name, err)
		}
	}
	return nil
}

// checkState checks what Lower needs before looking at nodes: a plan,
// targets that agree on the channel block, a verified graph with one input
// and one output in the plain layout.
func checkState(s *passes.State, targets []codegen.Target) error {
	if s == nil || s.Graph == nil {
		return fmt.Errorf("lower: no graph")
	}
	if s.Plan == nil {
		return fmt.Errorf("lower: the graph has no memory plan (run the pipeline through plan-buffers)")
	}
	if len(targets) == 0 {
		return fmt.Errorf("lower: no targets")
	}
	for _, t := range targets[1:] {
		if t.Block != targets[0].Block || t.Triple != targets[0].Triple {
			return fmt.Errorf("lower: targets %s and %s differ in triple or channel block", targets[0].Name, t.Name)
		}
	}
	g := s.Graph
	if err := g.Verify(); err != nil {
		return err
	}
	in := g.Inputs()
	if len(in) != 1 || len(g.Outputs) < 1 {
		return fmt.Errorf("codegen: networks with one input and at least one output only (have %d, %d)", len(in), len(g.Outputs))
	}
	for _, id := range append([]int{indexOf(g, in[0])}, g.Outputs...) {
		if n := g.Nodes[id]; !n.Type.Layout.IsPlain() {
			return ir.Errorf(n.Pos, "codegen: network input and output must be in the plain layout; %s %q is %s", n.Op, n.Name, n.Type)
		}
	}
	return nil
}

// offsetOf is node id's arena offset in elements of dt.
func offsetOf(plan *passes.Plan, id int, dt ir.DType) int64 {
	return plan.Buffers[plan.BufferOf[id]].Offset / int64(dt.Size())
}

// weightFunc places the build-time values vs, operands of n named what,
// combined by f into one vector (nil: the single value as is), and returns
// its offset in the weights blob in floats.
type weightFunc func(n *ir.Node, what string, f func(vals [][]float32) []float32, vs ...int) (int, error)

// one adapts a transform of one value to weightFunc's f.
func one(f func([]float32) []float32) func([][]float32) []float32 {
	return func(v [][]float32) []float32 { return f(v[0]) }
}

// lowerNodes is the per-node lowering shared by Lower and Check: for every
// run-time node in schedule order it checks that a kernel exists for the
// node's op, dtype, layout (the block B) and attributes, and builds its
// kernel specs with arena offsets from the plan and weight offsets from
// weight. Ops the rewriting passes normally remove have standalone kernels
// (conv2d as a fused_conv without epilogue, batchnorm as a per-channel
// scale and shift, relu, add, scale mul, concat as strided copies), so a
// graph lowers whichever of those passes ran.
func lowerNodes(g *ir.Graph, plan *passes.Plan, build []bool, B int, weight weightFunc) ([]kernelSpec, error) {
	off := func(i int) int { return int(offsetOf(plan, i, g.Nodes[i].Type.DType)) }
	var specs []kernelSpec
	for i, n := range g.Nodes {
		if build[i] {
			continue
		}
		if err := checkNode(n, B); err != nil {
			return nil, err
		}
		if plan.BufferOf[i] < 0 {
			return nil, ir.Errorf(n.Pos, "codegen: %%%d %s has no arena buffer in the plan", i, n.Op)
		}
		name := fmt.Sprintf("k%d", i)
		switch n.Op {
		case ir.OpParam:
			// Only mutable params (Graph.Updates) are run-time values: the
			// runtime writes them into the arena before each run
			// (Manifest.State), as it writes the input.
			if n.Type.DType != ir.F32 || !n.Type.Layout.IsPlain() {
				return nil, ir.Errorf(n.Pos, "codegen: mutable param %s must be plain f32, is %s", n.Name, n.Type)
			}
		case ir.OpInput, ir.OpEmpty:
			// The runtime writes the input; empty is storage only.
		case ir.OpFusedConv, ir.OpConv2D:
			// A conv2d is a fused_conv without epilogue (fuse-epilogue
			// disabled): operands x, weight, bias?.
			x, w := g.Nodes[n.Args[0]], g.Nodes[n.Args[1]]
			if n.Attrs.Int("groups") != 1 {
				spec, err := groupedConv(g, n, i, B, off, weight) // grouped.go
				if err != nil {
					return nil, err
				}
				specs = append(specs, kernelSpec{name: name, node: i, spec: spec, macs: g.MACs(i)})
				continue
			}
			if w.Type.Layout != ir.OIhwIiOo(B) {
				return nil, ir.Errorf(n.Pos, "codegen: conv weight %s must be packed %s, is %s", w.Name, ir.OIhwIiOo(B), w.Type)
			}
			wOff, err := weight(n, "weight", nil, n.Args[1])
			if err != nil {
				return nil, err
			}
			bi, ri, _ := ir.FusedConvOperands(n)
			if n.Op == ir.OpConv2D && len(n.Args) == 3 {
				bi = 2
			}
			st, pd, dl := n.Attrs.Ints("stride"), n.Attrs.Ints("pad"), n.Attrs.Ints("dilation")
			ws := w.Type.Shape
			spec := codegen.ConvSpec{
				N: x.Type.Shape[0], C: x.Type.Shape[1], H: x.Type.Shape[2], W: x.Type.Shape[3],
				O: ws[0], KH: ws[2], KW: ws[3], SH: st[0], SW: st[1], PH: pd[0], PW: pd[1], DH: dl[0], DW: dl[1],
				OH: n.Type.Shape[2], OW: n.Type.Shape[3],
				InOff: off(n.Args[0]), InPlain: x.Type.Layout.IsPlain(),
				WeightOff: wOff,
				Relu:      n.Attrs.Bool("relu"),
				OutOff:    off(i), OutC: n.Type.Shape[1], OutCOffset: n.Attrs.Int("offset"),
			}
			spec.Clip, spec.Lo, spec.Hi = fusedClip(n) // clip.go
			if bi >= 0 {
				bOff, err := weight(n, "bias", one(func(v []float32) []float32 { return padTo(v, ceilTo(ws[0], B)) }), n.Args[bi])
				if err != nil {
					return nil, err
				}
				spec.HasBias, spec.BiasOff = true, bOff
			}
			if ri >= 0 {
				spec.HasResidual, spec.ResidualOff = true, off(n.Args[ri])
			}
			specs = append(specs, kernelSpec{name: name, node: i, spec: spec, macs: g.MACs(i)})
		case ir.OpMaxPool, ir.OpAvgPool:
			x := g.Nodes[n.Args[0]]
			k, st, pd := n.Attrs.Ints("kernel"), n.Attrs.Ints("stride"), n.Attrs.Ints("pad")
			specs = append(specs, kernelSpec{name: name, node: i, spec: codegen.PoolSpec{
				Max: n.Op == ir.OpMaxPool, CountIncludePad: n.Attrs.Bool("count_include_pad"),
				N: x.Type.Shape[0], C: x.Type.Shape[1], H: x.Type.Shape[2], W: x.Type.Shape[3],
				KH: k[0], KW: k[1], SH: st[0], SW: st[1], PH: pd[0], PW: pd[1],
				OH: ir.ConvOut(x.Type.Shape[2], k[0], st[0], pd[0]), OW: ir.ConvOut(x.Type.Shape[3], k[1], st[1], pd[1]),
				InOff: off(n.Args[0]), OutOff: off(i), OutC: n.Type.Shape[1], OutCOffset: n.Attrs.Int("offset"),
			}})
		case ir.OpGlobalAvgPool:
			x := g.Nodes[n.Args[0]].Type.Shape
			specs = append(specs, kernelSpec{name: name, node: i, spec: codegen.GlobalAvgPoolSpec{
				N: x[0], C: x[1], H: x[2], W: x[3], InOff: off(n.Args[0]), OutOff: off(i)}})
		case ir.OpReorder:
			x := g.Nodes[n.Args[0]].Type
			if x.Rank() != 4 {
				return nil, ir.Errorf(n.Pos, "codegen: reorder of a rank-%d value", x.Rank())
			}
			if x.Layout.IsPlain() == n.Type.Layout.IsPlain() {
				return nil, ir.Errorf(n.Pos, "codegen: reorder from %s to %s: only plain <-> NCHW%dc is supported", x, n.Type, B)
			}
			specs = append(specs, kernelSpec{name: name, node: i, spec: codegen.ReorderSpec{
				N: x.Shape[0], C: x.Shape[1], H: x.Shape[2], W: x.Shape[3],
				InOff: off(n.Args[0]), OutOff: off(i), ToBlocked: !n.Type.Layout.IsPlain()}})
		case ir.OpFlatten, ir.OpDropout, ir.OpReshape:
			if plan.BufferOf[i] != plan.BufferOf[n.Args[0]] {
				if !g.Nodes[n.Args[0]].Type.Layout.IsPlain() {
					return nil, ir.Errorf(n.Pos, "codegen: %s copies a blocked value; only plain copies are supported", n.Op)
				}
				specs = append(specs, kernelSpec{name: name, node: i, spec: codegen.CopySpec{
					Elems: n.Type.Numel(), InOff: off(n.Args[0]), OutOff: off(i)}})
			}
		case ir.OpConcat:
			spec, err := concatCopies(g, n, i, B, off)
			if err != nil {
				return nil, err
			}
			for j, c := range spec {
				specs = append(specs, kernelSpec{name: fmt.Sprintf("%s_%d", name, j), node: i, spec: c})
			}
		case ir.OpBatchNorm:
			// Standalone inference BatchNorm (fold-bn disabled, or its
			// input is not a single-use conv): a per-channel scale and
			// shift computed at build time.
			sh := n.Type.Shape
			blocked := !n.Type.Layout.IsPlain()
			if blocked && n.Type.Rank() != 4 {
				return nil, ir.Errorf(n.Pos, "codegen: blocked batchnorm of a rank-%d value", n.Type.Rank())
			}
			hw := 1
			for _, d := range sh[2:] {
				hw *= d
			}
			vl := sh[1]
			if blocked {
				vl = ceilTo(sh[1], B)
			}
			eps := n.Attrs.Float("eps")
			scaleShift := func(k int) func([][]float32) []float32 {
				return func(v [][]float32) []float32 {
					sc, st := codegen.BatchNormScaleShift(v[0], v[1], v[2], v[3], eps, vl)
					return [][]float32{sc, st}[k]
				}
			}
			sOff, err := weight(n, "scale", scaleShift(0), n.Args[1:]...)
			if err != nil {
				return nil, err
			}
			tOff, err := weight(n, "shift", scaleShift(1), n.Args[1:]...)
			if err != nil {
				return nil, err
			}
			specs = append(specs, kernelSpec{name: name, node: i, spec: codegen.ChannelAffineSpec{
				N: sh[0], C: sh[1], HW: hw, Blocked: blocked,
				InOff: off(n.Args[0]), OutOff: off(i), ScaleOff: sOff, ShiftOff: tOff,
				Relu: n.Attrs.Bool("relu")}})
		case ir.OpReLU, ir.OpAdd, ir.OpMul:
			// Standalone elementwise ops (not fused into a conv): one
			// pass over the physical elements, padding lanes included.
			elems, err := ir.PhysicalNumel(n.Type)
			if err != nil {
				return nil, ir.Errorf(n.Pos, "codegen: %s: %v", n.Op, err)
			}
			spec := codegen.ElementwiseSpec{Elems: elems, InOff: off(n.Args[0]), OutOff: off(i)}
			switch n.Op {
			case ir.OpReLU:
				spec.Op = codegen.EltReLU
			case ir.OpAdd:
				spec.Op, spec.In2Off = codegen.EltAdd, off(n.Args[1])
			case ir.OpMul:
				spec.Op, spec.C = codegen.EltScale, float32(n.Attrs.Float("c"))
			}
			specs = append(specs, kernelSpec{name: name, node: i, spec: spec})
		case ir.OpUpsample:
			ks, err := lowerUpsample(g, n, i, name, off) // upsample.go
			if err != nil {
				return nil, err
			}
			specs = append(specs, ks)
		case ir.OpSub, ir.OpSigmoid, ir.OpTanh, ir.OpSiLU, ir.OpHardSwish, ir.OpClip, ir.OpChannelMul, ir.OpGlobalMaxPool:
			// The activations and SE ops of ir/ops_ext.go (ext.go).
			ks, err := lowerExt(g, n, i, B, name, off)
			if err != nil {
				return nil, err
			}
			specs = append(specs, ks)
		case ir.OpDense:
			x, w := g.Nodes[n.Args[0]].Type.Shape, g.Nodes[n.Args[1]].Type.Shape
			wOff, err := weight(n, "weight", one(func(v []float32) []float32 { return transpose(v, w[0], w[1]) }), n.Args[1])
			if err != nil {
				return nil, err
			}
			spec := codegen.DenseSpec{N: x[0], I: x[1], O: w[0], InOff: off(n.Args[0]), OutOff: off(i), WeightOff: wOff}
			if len(n.Args) == 3 {
				bOff, err := weight(n, "bias", nil, n.Args[2])
				if err != nil {
					return nil, err
				}
				spec.HasBias, spec.BiasOff = true, bOff
			}
			specs = append(specs, kernelSpec{name: name, node: i, spec: spec, macs: g.MACs(i)})
		case ir.OpSoftmax:
			if n.Type.Rank() != 2 || n.Attrs.Int("axis") != 1 {
				return nil, ir.Errorf(n.Pos, "codegen: softmax supported on [N, K] along axis 1 only")
			}
			specs = append(specs, kernelSpec{name: name, node: i, spec: codegen.SoftmaxSpec{
				N: n.Type.Shape[0], K: n.Type.Shape[1], InOff: off(n.Args[0]), OutOff: off(i)}})
		default:
			return nil, ir.Errorf(n.Pos, "codegen: op %s has no compiled kernel (the interpreter runs it: kiln run --backend interp)", n.Op)
		}
	}
	return specs, nil
}

// generate emits the kernels into LLVM modules (kernelsPerModule each) and
// returns the kernel list for the manifest and the driver.
func (p *Program) generate() ([]*codegen.Module, []rt.KernelInfo, error) {
	var mods []*codegen.Module
	var infos []rt.KernelInfo
	g := p.graph
	for k := 0; k < len(p.specs); k += kernelsPerModule {
		m := codegen.NewModule(p.Targets...)
		for _, ks := range p.specs[k:min(k+kernelsPerModule, len(p.specs))] {
			tiles, kind, err := ks.add(m)
			if err != nil {
				return nil, nil, ir.Errorf(g.Nodes[ks.node].Pos, "codegen %s: %v", g.Nodes[ks.node].Name, err)
			}
			infos = append(infos, rt.KernelInfo{Name: ks.name, Label: g.Nodes[ks.node].Name, Op: kind, Tiles: int64(tiles), MACs: ks.macs})
		}
		if err := m.Err(); err != nil {
			return nil, nil, err
		}
		mods = append(mods, m)
	}
	return mods, infos, nil
}

// kernelSpec is one kernel to emit.
type kernelSpec struct {
	name string
	node int
	spec any
	macs int64
	// also are further nodes whose values the kernel computes (the other
	// members of a sibling group).
	also []int
}

// validate checks the spec against the channel block b, as the kernel
// builders do before emitting code: every spec has Validate(b) (layouts
// blocked by b) or Validate() (plain layouts only).
func (k kernelSpec) validate(b int) error {
	switch s := k.spec.(type) {
	case interface{ Validate(int) error }:
		return s.Validate(b)
	case interface{ Validate() error }:
		return s.Validate()
	}
	return fmt.Errorf("spec %T has no Validate method", k.spec)
}

func (k kernelSpec) add(m *codegen.Module) (tiles int, kind string, err error) {
	switch s := k.spec.(type) {
	case codegen.ConvSpec:
		_, tiles, err = m.Conv(k.name, s)
		kind = "conv"
	case codegen.DepthwiseSpec:
		_, tiles, err = m.Depthwise(k.name, s)
		kind = "depthwise"
	case codegen.PoolSpec:
		_, tiles, err = m.Pool(k.name, s)
		kind = "avgpool"
		if s.Max {
			kind = "maxpool"
		}
	case codegen.GlobalAvgPoolSpec:
		_, tiles, err = m.GlobalAvgPool(k.name, s)
		kind = "global_avgpool"
	case codegen.ReorderSpec:
		_, tiles, err = m.Reorder(k.name, s)
		kind = "reorder"
	case codegen.DenseSpec:
		_, tiles, err = m.Dense(k.name, s)
		kind = "dense"
	case codegen.SoftmaxSpec:
		_, tiles, err = m.Softmax(k.name, s)
		kind = "softmax"
	case codegen.CopySpec:
		_, tiles, err = m.Copy(k.name, s)
		kind = "copy"
	case codegen.ElementwiseSpec:
		_, tiles, err = m.Elementwise(k.name, s)
		kind = s.Op.String()
	case codegen.ChannelAffineSpec:
		_, tiles, err = m.ChannelAffine(k.name, s)
		kind = "batchnorm"
	case codegen.ChannelMulSpec:
		_, tiles, err = m.ChannelMul(k.name, s)
		kind = "channel_mul"
	case codegen.GlobalMaxPoolSpec:
		_, tiles, err = m.GlobalMaxPool(k.name, s)
		kind = "global_maxpool"
	case codegen.TrainKernel: // training step kernels (train.go)
		_, tiles, err = m.Train(k.name, s)
		kind = s.Kind()
	case codegen.UpsampleSpec:
		_, tiles, err = m.Upsample(k.name, s)
		kind = "upsample"
	default:
		err = fmt.Errorf("unknown spec %T", k.spec)
	}
	return
}

// checkNode checks that run-time node n has a dtype and a layout the
// kernels implement: f32 (other dtypes plan, print and parse, but their
// kernels come later) and plain or NCHW{b}c.
func checkNode(n *ir.Node, b int) error {
	if n.Type.DType != ir.F32 {
		return ir.Errorf(n.Pos, "codegen: %s kernels not implemented yet (%s %q is %s)", n.Type.DType, n.Op, n.Name, n.Type)
	}
	if l := n.Type.Layout; l.IsPlain() || l == ir.NCHWc(b) {
		return nil
	}
	return ir.Errorf(n.Pos, "codegen: %s has layout %s, but the target's kernels use NCHW%dc (run the pipeline for this target)", n.Op, n.Type.Layout, b)
}

func indexOf(g *ir.Graph, n *ir.Node) int {
	for i, m := range g.Nodes {
		if m == n {
			return i
		}
	}
	return -1
}

func archOf(t codegen.Target) string {
	if strings.HasPrefix(t.Triple, "aarch64") {
		return "arm64"
	}
	return "amd64"
}

func ceilTo(x, c int) int { return (x + c - 1) / c * c }

func padTo(v []float32, n int) []float32 {
	out := make([]float32, n)
	copy(out, v)
	return out
}

// transpose turns a row-major [r][c] matrix into [c][r].
func transpose(v []float32, r, c int) []float32 {
	out := make([]float32, len(v))
	for i := 0; i < r; i++ {
		for j := 0; j < c; j++ {
			out[j*r+i] = v[i*c+j]
		}
	}
	return out
}

// evalBuildTime evaluates every build-time value that a run-time node uses,
// with the reference interpreter, on the subgraph of build-time nodes. Packed
// values come back in their physical layout.
func evalBuildTime(g *ir.Graph, build []bool, params map[string]*tensor.Tensor) (map[int]*tensor.Tensor, error) {
	need := map[int]bool{}
	for i, n := range g.Nodes {
		if build[i] {
			continue
		}
		for _, a := range n.Args {
			if build[a] {
				need[a] = true
			}
		}
	}
	sub := &ir.Graph{Name: g.Name + ".weights"}
	m := map[int]int{}
	for i, n := range g.Nodes {
		if !build[i] {
			continue
		}
		c := *n
		c.Args = make([]int, len(n.Args))
		for k, a := range n.Args {
			c.Args[k] = m[a]
		}
		if !ir.HasDeclaredType(c.Op) {
			c.Type = ir.Type{Layout: n.Type.Layout}
		}
		id, err := sub.Add(&c)
		if err != nil {
			return nil, err
		}
		m[i] = id
	}
	var ids []int
	for i := range need {
		ids = append(ids, i)
	}
	sort.Ints(ids)
	if len(ids) == 0 {
		return map[int]*tensor.Tensor{}, nil
	}
	for _, i := range ids {
		sub.Outputs = append(sub.Outputs, m[i])
	}
	res, err := interp.Run(sub, params, nil, interp.Options{})
	if err != nil {
		return nil, fmt.Errorf("evaluating weights at build time: %w", err)
	}
	out := map[int]*tensor.Tensor{}
	for k, i := range ids {
		out[i] = res.Outputs[k]
	}
	return out, nil
}

// concatCopies lowers concat node i (not made in place by concat-in-place)
// to one strided copy per operand, each writing the operand's slice of
// every outer index. Plain layout, any axis: with outer = prod(shape[:axis])
// and inner = prod(shape[axis+1:]), operand j (c_j along the axis, at
// offset o_j) is outer runs of c_j*inner floats, from stride c_j*inner to
// stride C*inner at o_j*inner. Blocked NCHW{B}c (channel axis, offsets
// multiples of B, as the layout pass guarantees): the same with channel
// blocks, operand j being ceil(c_j/B) blocks of H*W*B floats per image, so
// its zero padding lanes land in the destination's (only the last operand
// may have them).
func concatCopies(g *ir.Graph, n *ir.Node, i, B int, off func(int) int) ([]codegen.CopySpec, error) {
	sh := n.Type.Shape
	ax := n.Attrs.Int("axis")
	outer, inner := 1, 1
	for _, d := range sh[:ax] {
		outer *= d
	}
	for _, d := range sh[ax+1:] {
		inner *= d
	}
	total := sh[ax]
	unit := func(c int) int { return c } // extent along the axis, physical
	if !n.Type.Layout.IsPlain() {
		if n.Type.Rank() != 4 || ax != 1 {
			return nil, ir.Errorf(n.Pos, "codegen: blocked concat must be along the channels of a rank-4 value")
		}
		unit = func(c int) int { return ceilDiv(c, B) * B }
		total = unit(sh[1])
	}
	var out []codegen.CopySpec
	c0 := 0
	for _, a := range n.Args {
		cj := g.Nodes[a].Type.Shape[ax]
		if !n.Type.Layout.IsPlain() && c0%B != 0 {
			return nil, ir.Errorf(n.Pos, "codegen: blocked concat operand %%%d starts at channel %d, not a multiple of the block %d", a, c0, B)
		}
		out = append(out, codegen.CopySpec{Elems: unit(cj) * inner, Rows: outer,
			InOff: off(a), InStride: unit(cj) * inner, OutOff: off(i) + c0*inner, OutStride: total * inner})
		c0 += cj
	}
	return out, nil
}

func ceilDiv(x, c int) int { return (x + c - 1) / c }
