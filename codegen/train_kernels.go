package codegen

import (
	"fmt"
	"math"
	"slices"

	"github.com/llir/llvm/ir"
	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Training kernels (issue 9): the ops of a training step graph (train.Step)
// on plain NCHW values that all live in the arena — activations, gradients,
// and the parameters and optimizer state, which are run-time state there
// (Manifest.State). Every operand and result is an arena offset in floats.
//
// The kernels are written as simple loop nests with constant bounds and a
// contiguous innermost loop, so that clang -O3's loop vectorizer vectorizes
// them; reductions carry the reassoc fast-math flag (the order of a sum is
// the only freedom taken, so results differ from the interpreter's float64
// sums by float32 rounding only). Window bounds (convolution taps, pooling
// windows) are resolved at generation time where they are constants: for a
// tap (kh, kw) the output rows whose input row is in bounds form one
// interval, so no bounds test remains inside the loops.

// TrainKernel is the spec of one training kernel; the types of this file
// implement it.
type TrainKernel interface {
	// Kind is the IR op the kernel computes, for the manifest.
	Kind() string
	// Validate checks sizes and offsets.
	Validate() error
	tileCount() int
	flops() int64
	gen(g *builder)
}

// Train emits kernel s as name.
func (m *Module) Train(name string, s TrainKernel) (string, int, error) {
	if m.err != nil {
		return "", 0, m.err
	}
	if err := s.Validate(); err != nil {
		return "", 0, fmt.Errorf("codegen: kernel %s: %w", name, err)
	}
	k := Kernel{Name: name, Kind: s.Kind(), Tiles: max(s.tileCount(), 1), Flops: s.flops()}
	return m.define(k, func(g *builder) error {
		s.gen(g)
		return nil
	})
}

var f64 = types.Double

func cd(v float64) *constant.Float { return constant.NewFloat(f64, v) }

func (g *builder) ld(off value.Value) value.Value  { return g.load(g.arena, off) }
func (g *builder) st(v, off value.Value)           { g.store(v, g.arena, off) }
func (g *builder) ext(x value.Value) value.Value   { return g.b.NewFPExt(x, f64) }
func (g *builder) trunc(x value.Value) value.Value { return g.b.NewFPTrunc(x, f32) }

// radd is fadd with the reassoc flag: a reduction the vectorizer may
// reorder.
func (g *builder) radd(x, y value.Value) value.Value {
	i := g.b.NewFAdd(x, y)
	i.FastMathFlags = []enum.FastMathFlag{enum.FastMathFlagReassoc, enum.FastMathFlagContract}
	return i
}

func (g *builder) sqrt(x value.Value) value.Value {
	return g.b.NewCall(g.m.intrinsicT("llvm.sqrt", x.Type(), 1), x)
}

func (g *builder) fdiv(x, y value.Value) value.Value { return g.b.NewFDiv(x, y) }

// fillN stores v at off+[0, n).
func (g *builder) fillN(v, off value.Value, n int) {
	g.loopN(n, nil, func(i value.Value, _ []value.Value) []value.Value {
		g.st(v, g.add(off, i))
		return nil
	})
}

// copyN copies n floats from arena offset src to dst (disjoint or equal).
func (g *builder) copyN(src, dst value.Value, n int) {
	g.loopN(n, nil, func(i value.Value, _ []value.Value) []value.Value {
		g.st(g.ld(g.add(src, i)), g.add(dst, i))
		return nil
	})
}

// intrinsicT is intrinsic for float and double scalars too.
func (m *Module) intrinsicT(base string, t types.Type, n int) *ir.Func {
	if t.Equal(f64) {
		name := base + ".f64"
		if f, ok := m.intr[name]; ok {
			return f
		}
		params := make([]*ir.Param, n)
		for i := range params {
			params[i] = ir.NewParam("", t)
		}
		f := m.mod.NewFunc(name, t, params...)
		f.FuncAttrs = append(f.FuncAttrs, enum.FuncAttrNoUnwind, enum.FuncAttrReadNone)
		m.intr[name] = f
		return f
	}
	return m.intrinsic(base, t, n)
}

// validRange returns the output positions [lo, hi) of a window (stride s,
// pad p) whose tap k reads an input position inside [0, in): o·s − p + k in
// [0, in), intersected with [0, out).
func validRange(out, in, k, s, p int) (int, int) {
	lo := 0
	if d := p - k; d > 0 {
		lo = (d + s - 1) / s
	}
	hiNum := in - 1 + p - k
	if hiNum < 0 {
		return 0, 0
	}
	hi := min(out, hiNum/s+1)
	return lo, max(hi, lo)
}

// ConvGeom is the geometry of a plain NCHW convolution (groups 1, no
// dilation) and its gradients: input [N][C][H][W], weight [O][C][KH][KW],
// output [N][O][OH][OW].
type ConvGeom struct {
	N, C, H, W     int
	O, KH, KW      int
	SH, SW, PH, PW int
	OH, OW         int
}

func (s ConvGeom) validate(what string) error {
	if err := positive(what, "N", s.N, "C", s.C, "H", s.H, "W", s.W, "O", s.O, "KH", s.KH, "KW", s.KW,
		"SH", s.SH, "SW", s.SW, "OH", s.OH, "OW", s.OW); err != nil {
		return err
	}
	if err := nonNeg(what, "PH", s.PH, "PW", s.PW); err != nil {
		return err
	}
	if s.KH > maxKernel || s.KW > maxKernel {
		return fmt.Errorf("%s: kernel %dx%d larger than %d", what, s.KH, s.KW, maxKernel)
	}
	if oh, ow := (s.H+2*s.PH-s.KH)/s.SH+1, (s.W+2*s.PW-s.KW)/s.SW+1; oh != s.OH || ow != s.OW {
		return fmt.Errorf("%s: output %dx%d, the window gives %dx%d", what, s.OH, s.OW, oh, ow)
	}
	return nil
}

// extents checks that every (offset, size) pair is representable.
func extents(what string, kv ...int) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] < 0 {
			continue // absent
		}
		if err := checkExtent(what, fmt.Sprint("operand ", i/2), kv[i], kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// taps calls f for every tap (kh, kw) that reads at least one in-bounds
// input element, with the valid output row and column ranges.
func (s ConvGeom) taps(f func(kh, kw, oh0, oh1, ow0, ow1 int)) {
	for kh := 0; kh < s.KH; kh++ {
		oh0, oh1 := validRange(s.OH, s.H, kh, s.SH, s.PH)
		if oh0 >= oh1 {
			continue
		}
		for kw := 0; kw < s.KW; kw++ {
			ow0, ow1 := validRange(s.OW, s.W, kw, s.SW, s.PW)
			if ow0 >= ow1 {
				continue
			}
			f(kh, kw, oh0, oh1, ow0, ow1)
		}
	}
}

// rows calls body(i, j) for the output rows [oh0, oh1) and columns
// [ow0, ow1) of a tap, with i the output index relative to the plane and j
// the input index relative to the tap's first in-plane element
// (kh−PH)·W + kw−PW: j = oh·SH·W + ow·SW. With stride 1, input width equal
// to the output width and the whole row range (1x1 and KWx1 convolutions
// without horizontal padding), i and j advance together across rows, so
// the rows collapse into one contiguous loop the vectorizer handles well.
func (s ConvGeom) rows(g *builder, oh0, oh1, ow0, ow1 int, carried []value.Value, body func(i, j value.Value, c []value.Value) []value.Value) []value.Value {
	if s.SH == 1 && s.SW == 1 && s.W == s.OW && ow0 == 0 && ow1 == s.OW {
		return g.loop(ci(oh0*s.OW), ci(oh1*s.OW), carried, func(i value.Value, c []value.Value) []value.Value {
			return body(i, i, c)
		})
	}
	return g.loop(ci(oh0), ci(oh1), carried, func(oh value.Value, c []value.Value) []value.Value {
		orow, irow := g.mul(oh, ci(s.OW)), g.mul(oh, ci(s.SH*s.W))
		return g.loop(ci(ow0), ci(ow1), c, func(ow value.Value, c []value.Value) []value.Value {
			return body(g.add(orow, ow), g.add(irow, g.mul(ow, ci(s.SW))), c)
		})
	})
}

// TrainConvSpec is conv2d (plain NCHW, groups 1) with the weight in the
// arena: out[n][o] = bias[o] + Σ_c Σ_kh,kw w[o][c][kh][kw]·x[n][c][shifted].
// gen emits the register-blocked GEMM kernel (tile = image and 32-pixel
// block): with masked shifted loads for stride-1 "same" convolutions
// (train_conv_same.go), over im2col gathers otherwise (train_gemm.go).
type TrainConvSpec struct {
	ConvGeom
	X, Wt, Bias, Out int // Bias < 0: none
	// Stats, when On, makes the kernel write the partial BatchNorm
	// statistics of Out (train_bnstats.go).
	Stats BNStats
	// Siblings are further 1x1 convolutions of the same input X in the
	// same kernel (passes.ConvSiblings): each tile computes its block of
	// pixels for every one of them, so that the block of x is read from
	// memory once (train_conv_same.go, sameConv.Outs). They have no bias.
	Siblings []ConvSibling
	// Residual, when On, makes the kernel write relu(X + C·(conv + bias))
	// into Out instead of the convolution itself: the scaled residual
	// connection of Inception-ResNet (Szegedy et al. 2016, §3.3) as the
	// epilogue of its up projection (see ResidualOK).
	Residual ResidualEpilogue
	// Packed says that Wt, and each sibling's Wt, holds the weight packed
	// for the micro-kernel (PackWeightSpec, layout PackForward; train_pack.go).
	// Only the sameConv paths (PackOK) read packed weights.
	Packed bool
}

// PackOK reports whether s's kernel can read packed weights (Packed):
// the stride-1 "same" and the phased stride-2 convolutions.
func (s TrainConvSpec) PackOK() bool { return s.same() || s.phased() }

// ResidualEpilogue is the residual connection relu(x + c·v) applied to a
// convolution's result v as it is stored: x (shaped like the output) at
// arena offset X, scale C. It rounds as the unfused mul, add and relu do
// (no FMA), so the fused step computes what they did bit for bit.
type ResidualEpilogue struct {
	On bool
	X  int
	C  float32
}

// ResidualOK reports whether s's kernel can apply a ResidualEpilogue: a
// stride-1 "same" convolution (sameConv) without siblings or statistics
// whose reduction is one block (the epilogue runs at the only store).
func (s TrainConvSpec) ResidualOK() bool {
	return s.same() && len(s.Siblings) == 0 && !s.Stats.On && s.C*s.KH*s.KW <= gemmKC
}

// ConvSibling is one more convolution of a sibling group: O output
// channels, its weight (O×C×1×1) at arena offset Wt, its output (or, for
// an input gradient, its dy) at Data, and (forward only) where to write
// its output's BatchNorm statistics.
type ConvSibling struct {
	O, Wt, Data int
	Stats       BNStats
}

// SiblingsOK reports whether convolutions of geometry s (O taken from each
// sibling) run as one kernel: pointwise, "same" (stride 1, no padding).
func (s ConvGeom) SiblingsOK() bool { return s.pointwise() && s.same() }

func (s TrainConvSpec) Kind() string { return "conv2d" }
func (s TrainConvSpec) Validate() error {
	if s.Packed && !s.PackOK() {
		return fmt.Errorf("conv2d: packed weights need the stride-1 \"same\" or the phased stride-2 kernel, got %dx%d stride %dx%d", s.KH, s.KW, s.SH, s.SW)
	}
	if err := s.validate("conv2d"); err != nil {
		return err
	}
	if err := extents("conv2d", s.X, s.N*s.C*s.H*s.W, s.Wt, s.O*s.C*s.KH*s.KW, s.Bias, s.O, s.Out, s.N*s.O*s.OH*s.OW); err != nil {
		return err
	}
	if len(s.Siblings) > 0 && !s.SiblingsOK() {
		return fmt.Errorf("conv2d: sibling convolutions need a 1x1 stride-1 unpadded geometry, got %dx%d stride %dx%d pad %dx%d", s.KH, s.KW, s.SH, s.SW, s.PH, s.PW)
	}
	for _, sb := range s.Siblings {
		if err := positive("conv2d sibling", "O", sb.O); err != nil {
			return err
		}
		if err := extents("conv2d sibling", sb.Wt, sb.O*s.C, sb.Data, s.N*sb.O*s.OH*s.OW); err != nil {
			return err
		}
		if err := sb.Stats.validate("conv2d sibling", sb.O, s.N, s.OH*s.OW); err != nil {
			return err
		}
		if sb.Stats.On && sb.Stats.Flat != s.FlatStats() {
			return fmt.Errorf("conv2d sibling: statistics Flat %v, the kernel's blocks want %v", sb.Stats.Flat, s.FlatStats())
		}
	}
	if s.Stats.On && s.Stats.Flat != s.FlatStats() {
		return fmt.Errorf("conv2d: statistics Flat %v, the kernel's blocks want %v", s.Stats.Flat, s.FlatStats())
	}
	if r := s.Residual; r.On {
		if !s.ResidualOK() {
			return fmt.Errorf("conv2d: a residual epilogue needs a stride-1 \"same\" convolution without siblings or statistics over at most %d reduction rows", gemmKC)
		}
		n := s.N * s.O * s.OH * s.OW
		if err := extents("conv2d residual", r.X, n); err != nil {
			return err
		}
		if r.X != s.Out && Overlap(r.X, n, s.Out, n) {
			return fmt.Errorf("conv2d: residual input [%d, %d) partially overlaps the output [%d, %d)", r.X, r.X+n, s.Out, s.Out+n)
		}
	}
	return s.Stats.validate("conv2d", s.O, s.N, s.OH*s.OW)
}

// FlatStats reports whether the kernel of s blocks its output over the
// batch's pixels as one sequence (flatBlocks), so that the BNStats of its
// outputs must be Flat.
func (s TrainConvSpec) FlatStats() bool { return s.same() && s.sameFwd().flat() }

func (s TrainConvSpec) tileCount() int {
	switch {
	case s.same():
		return s.sameFwd().tiles()
	case s.phased():
		return s.N
	}
	return s.gemmTiles()
}
func (s TrainConvSpec) flops() int64 {
	o := s.O
	for _, sb := range s.Siblings {
		o += sb.O
	}
	return 2 * int64(s.N*o*s.OH*s.OW) * int64(s.C*s.KH*s.KW)
}
func (s TrainConvSpec) gen(g *builder) {
	if s.same() {
		sc := s.sameFwd()
		for _, sb := range s.Siblings {
			sc.Outs = append(sc.Outs, samePart{Ch: sb.O, At: sb.Data, Wt: sb.Wt, Stats: sb.Stats})
		}
		sc.gen(g)
		return
	}
	if s.phased() {
		s.phasedFwd().gen(g)
		return
	}
	s.genGemm(g)
}

// TrainConvGradInputSpec is conv2d_grad_input: dx[n][c] = Σ_o Σ_kh,kw
// w[o][c][kh][kw]·dy[n][o][rows mapping onto dx]. For a stride-1 "same"
// convolution gen emits the forward kernel on dy with the flipped,
// transposed weight (train_conv_same.go, no col2im); otherwise col2im(Wᵀ·dy)
// (train_gemm.go, tile = image) when the O×32 dy panel fits its stack
// budget, else genLoops: a tile per dx plane (n, c), zeroed, then each
// output channel and tap scatters w·dy row by row.
//
// Acc, when ≥ 0, is the arena offset of an addend shaped like dx: the
// kernel then writes dx = Acc + (the input gradient), folding the sum of a
// value's gradient contributions (an add node) into the convolution's
// stores; Acc may equal DX (accumulate in place).
type TrainConvGradInputSpec struct {
	ConvGeom
	DY, Wt, DX int
	Acc        int
	// Siblings are further 1x1 convolutions of the same input whose
	// input gradients are summed into dx by the same kernel
	// (passes.GradInputSiblings): dx = Acc + Wᵀ·dy + Σ W_jᵀ·dy_j, each
	// sibling's dy (O_j channels) at Data. See GradInputSiblingsOK.
	Siblings []ConvSibling
	// Scale, when nonzero, multiplies the gradient as it is stored: dx =
	// Scale·(Wᵀ·dy), the input gradient of a convolution whose output was
	// scaled by Scale (Inception-ResNet's residual scale), read from the
	// unscaled dy (see ScaleOK).
	Scale float32
	// Mask, when On, applies a relu's gradient mask as the kernel stores:
	// dx where Mask.Y > 0, else 0 (relu_grad of the sum, see MaskOK).
	Mask ReLUMask
	// Packed says that Wt, and each sibling's Wt, holds the weight packed
	// for the micro-kernel in the layout PackLayout names (a
	// PackWeightSpec kernel wrote it; train_pack.go) rather than the
	// weight itself. Only some kernels read packed weights (PackOK).
	Packed bool
	// Stats, when On, makes the kernel write the partial sums (BNStats'
	// layout) of dx as it stores it, epilogue applied, for the
	// ChannelSumSpec of a bias gradient of dx (ChannelSumSpec.Stats),
	// which then reads no dx. Only the stride-1 "same" kernel writes them
	// (StatsOK); Flat as FlatStats.
	Stats BNStats
}

// StatsOK reports whether s's kernel can write Stats.
func (s TrainConvGradInputSpec) StatsOK() bool { return s.sameOK() }

// FlatStats reports whether s's Stats are over flat blocks (BNStats.Flat).
func (s TrainConvGradInputSpec) FlatStats() bool { return s.sameOK() && s.sameDgrad().flat() }

// ReLUMask is relu_grad's mask as an epilogue: a stored gradient g
// becomes g where y > 0, else 0, with y (shaped like the output) at arena
// offset Y.
type ReLUMask struct {
	On bool
	Y  int
}

// MaskOK reports whether s's kernel can apply a Mask: the sameConv input
// gradient (siblings included) whose reduction is one block.
func (s TrainConvGradInputSpec) MaskOK() bool {
	k := s.O
	for _, sb := range s.Siblings {
		k += sb.O
	}
	return (s.sameOK() || len(s.Siblings) > 0) && k*s.KH*s.KW <= gemmKC
}

// ScaleOK reports whether s's kernel can apply a Scale: the sameConv
// input gradient without addend or siblings whose reduction (O·KH·KW
// rows) is one block.
func (s TrainConvGradInputSpec) ScaleOK() bool {
	return s.sameOK() && s.Acc < 0 && len(s.Siblings) == 0 && s.O*s.KH*s.KW <= gemmKC
}

// GradInputSiblingsOK reports whether the input gradients of convolutions
// of geometry s with the output channels os (s.O's first) run as one
// kernel: SiblingsOK, and the summed channels fit one reduction block of
// the micro-kernel (gemmKC rows); larger groups run as one kernel per
// convolution.
func (s ConvGeom) GradInputSiblingsOK(os []int) bool {
	k := 0
	for _, o := range os {
		k += o
	}
	return s.SiblingsOK() && k <= gemmKC
}

func (s TrainConvGradInputSpec) Kind() string { return "conv2d_grad_input" }
func (s TrainConvGradInputSpec) Validate() error {
	if err := s.validate("conv2d_grad_input"); err != nil {
		return err
	}
	if err := extents("conv2d_grad_input", s.DY, s.N*s.O*s.OH*s.OW, s.Wt, s.O*s.C*s.KH*s.KW, s.DX, s.N*s.C*s.H*s.W); err != nil {
		return err
	}
	if s.Acc >= 0 {
		if err := extents("conv2d_grad_input", s.Acc, s.N*s.C*s.H*s.W); err != nil {
			return err
		}
	}
	if s.Packed && !s.PackOK() {
		return fmt.Errorf("conv2d_grad_input: packed weights need the stride-1 \"same\" or the im2col kernel, got %dx%d stride %dx%d", s.KH, s.KW, s.SH, s.SW)
	}
	if s.Scale != 0 && !s.ScaleOK() {
		return fmt.Errorf("conv2d_grad_input: a scale needs the stride-1 \"same\" kernel without addend or siblings over at most %d reduction rows", gemmKC)
	}
	if s.Stats.On {
		if !s.StatsOK() {
			return fmt.Errorf("conv2d_grad_input: partial sums need the stride-1 \"same\" kernel, got %dx%d stride %dx%d", s.KH, s.KW, s.SH, s.SW)
		}
		if s.Stats.Flat != s.FlatStats() {
			return fmt.Errorf("conv2d_grad_input: partial sums' Flat is %v, the kernel's blocks say %v", s.Stats.Flat, s.FlatStats())
		}
		if err := s.Stats.validate("conv2d_grad_input", s.C, s.N, s.H*s.W); err != nil {
			return err
		}
	}
	if s.Mask.On {
		if !s.MaskOK() {
			return fmt.Errorf("conv2d_grad_input: a relu mask needs the stride-1 \"same\" kernel over at most %d reduction rows", gemmKC)
		}
		n := s.N * s.C * s.H * s.W
		if err := extents("conv2d_grad_input mask", s.Mask.Y, n); err != nil {
			return err
		}
		if s.Mask.Y != s.DX && Overlap(s.Mask.Y, n, s.DX, n) {
			return fmt.Errorf("conv2d_grad_input: mask [%d, %d) partially overlaps dx [%d, %d)", s.Mask.Y, s.Mask.Y+n, s.DX, s.DX+n)
		}
	}
	if len(s.Siblings) == 0 {
		return nil
	}
	os := []int{s.O}
	for _, sb := range s.Siblings {
		if err := positive("conv2d_grad_input sibling", "O", sb.O); err != nil {
			return err
		}
		if err := extents("conv2d_grad_input sibling", sb.Wt, sb.O*s.C, sb.Data, s.N*sb.O*s.OH*s.OW); err != nil {
			return err
		}
		os = append(os, sb.O)
	}
	if !s.GradInputSiblingsOK(os) {
		return fmt.Errorf("conv2d_grad_input: sibling gradients need a 1x1 stride-1 unpadded geometry and at most %d summed channels, got %dx%d stride %dx%d pad %dx%d, channels %v",
			gemmKC, s.KH, s.KW, s.SH, s.SW, s.PH, s.PW, os)
	}
	return nil
}

// initDX sets the n floats of dx at arena offset dx to the addend (Acc at
// the same position) or to zero.
func (s TrainConvGradInputSpec) initDX(g *builder, dx value.Value, n int) {
	switch {
	case s.Acc < 0:
		g.fillN(cf(0), dx, n)
	case s.Acc != s.DX:
		g.copyN(g.add(dx, ci(s.Acc-s.DX)), dx, n)
	}
}
func (s TrainConvGradInputSpec) tileCount() int {
	if s.sameOK() || len(s.Siblings) > 0 {
		return s.sameDgrad().tiles()
	}
	if s.phased() || s.gemmOK() {
		return s.N
	}
	return s.N * s.C
}
func (s TrainConvGradInputSpec) flops() int64 {
	o := s.O
	for _, sb := range s.Siblings {
		o += sb.O
	}
	return 2 * int64(s.N*o*s.OH*s.OW) * int64(s.C*s.KH*s.KW)
}
func (s TrainConvGradInputSpec) gen(g *builder) {
	if s.sameOK() || len(s.Siblings) > 0 {
		s.genSame(g)
		return
	}
	if s.phased() {
		s.genPhased(g)
		return
	}
	if s.gemmOK() {
		s.genGemm(g)
		return
	}
	s.genLoops(g)
}

// genLoops is the loop-nest kernel (tile = dx plane (n, c)), used when the
// dgrad panel (O×32 floats) would not fit the stack budget.
func (s TrainConvGradInputSpec) genLoops(g *builder) {
	g.tiles(func(t value.Value) {
		n, c := g.udiv(t, s.C), g.urem(t, s.C)
		dx := g.add(ci(s.DX), g.mul(t, ci(s.H*s.W)))
		s.initDX(g, dx, s.H*s.W)
		g.loopN(s.O, nil, func(o value.Value, _ []value.Value) []value.Value {
			dy := g.add(ci(s.DY), g.mul(g.add(g.mul(n, ci(s.O)), o), ci(s.OH*s.OW)))
			w := g.add(ci(s.Wt), g.mul(g.add(g.mul(o, ci(s.C)), c), ci(s.KH*s.KW)))
			s.taps(func(kh, kw, oh0, oh1, ow0, ow1 int) {
				wv := g.ld(g.add(w, ci(kh*s.KW+kw)))
				xt := g.add(dx, ci((kh-s.PH)*s.W+kw-s.PW))
				s.rows(g, oh0, oh1, ow0, ow1, nil, func(i, j value.Value, _ []value.Value) []value.Value {
					d := g.add(xt, j)
					g.st(g.fma(wv, g.ld(g.add(dy, i)), g.ld(d)), d)
					return nil
				})
			})
			return nil
		})
	})
}

// TrainConvGradWeightSpec is conv2d_grad_weight: dw[o][c][kh][kw] =
// Σ_n Σ_oh,ow dy[n][o][oh][ow]·x[n][c][oh·SH−PH+kh][ow·SW−PW+kw]. gen emits
// the dot-product kernel over p for stride-1 convolutions with rows as wide
// as the input's (train_conv_same.go), else Σ_n dy·colᵀ (train_gemm.go,
// tile = 32 columns of K × a channel group).
type TrainConvGradWeightSpec struct {
	ConvGeom
	DY, X, DW int
	// Split > 1 splits the batch of the dot-product kernel into runs of
	// images (ConvGeom.WgradSplit, TrainConvGradWeightSpec.SplitRuns):
	// run r writes its partial dW at Partial + r·O·C·KH·KW, and DW is
	// left for a ChannelSumSpec to write. Ignored by the other kernels.
	Split, Partial int
	// Siblings are the weight gradients of further 1x1 convolutions of
	// the same input (passes.WgradSiblings), computed by the same kernel
	// (SiblingsOK), so that x is read from memory once for all: in the
	// packed kernel each tile's panel serves every part's channels; in
	// the dot-product kernel the parts' tiles follow one another within
	// each run of images, the run's x in L2.
	Siblings []WgradSibling
}

// WgradSibling is one more weight gradient of a sibling group: O output
// channels, its dy at DY, its dW at DW and, when the batch is split, its
// runs' partial sums at Partial (as TrainConvGradWeightSpec's).
type WgradSibling struct {
	O, DY, DW, Partial int
}

// parts returns s's weight gradients as specs of their own: s without its
// siblings, then each sibling with s's input, geometry and split.
func (s TrainConvGradWeightSpec) parts() []TrainConvGradWeightSpec {
	main := s
	main.Siblings = nil
	ps := []TrainConvGradWeightSpec{main}
	for _, sb := range s.Siblings {
		p := main
		p.O, p.DY, p.DW, p.Partial = sb.O, sb.DY, sb.DW, sb.Partial
		ps = append(ps, p)
	}
	return ps
}

// SiblingsOK reports whether s's weight gradient and its Siblings run as
// one kernel: 1x1 stride-1 unpadded convolutions, and where the group
// takes the packed kernel (transPack, decided for the group's channels)
// one channel group per member (wgradGroups), as each tile's panel then
// serves every member's channels. The dot-product kernel takes any group.
func (s TrainConvGradWeightSpec) SiblingsOK() bool {
	if !s.pointwise() {
		return false
	}
	if s.wgSame() {
		return true
	}
	for _, p := range s.parts() {
		if g, _ := p.wgradGroups(); g != 1 {
			return false
		}
	}
	return true
}

// wgSame reports whether s's weight gradient takes the dot-product kernel
// (genSame) rather than the packed one (genGemm).
func (s TrainConvGradWeightSpec) wgSame() bool { return s.sameOK() && !s.transPack() }

func (s TrainConvGradWeightSpec) Kind() string { return "conv2d_grad_weight" }
func (s TrainConvGradWeightSpec) Validate() error {
	if err := s.validate("conv2d_grad_weight"); err != nil {
		return err
	}
	if len(s.Siblings) > 0 {
		for _, sb := range s.Siblings {
			if err := positive("conv2d_grad_weight sibling", "O", sb.O); err != nil {
				return err
			}
		}
		if !s.SiblingsOK() {
			return fmt.Errorf("conv2d_grad_weight: sibling weight gradients need 1x1 stride-1 unpadded convolutions that take one kernel (the dot-product one, or the packed one with one group of channels each), got %dx%d stride %dx%d pad %dx%d over %dx%d", s.KH, s.KW, s.SH, s.SW, s.PH, s.PW, s.OH, s.OW)
		}
	}
	for j, p := range s.parts() {
		what := "conv2d_grad_weight"
		if j > 0 {
			what += " sibling"
		}
		if err := p.outExtents(what); err != nil {
			return err
		}
	}
	return extents("conv2d_grad_weight", s.X, s.N*s.C*s.H*s.W)
}

// outExtents checks the dy, dW and partial-sum areas of weight gradient s
// (without its siblings).
func (s TrainConvGradWeightSpec) outExtents(what string) error {
	dw := s.O * s.C * s.KH * s.KW
	part := -1
	if s.SplitRuns() > 1 {
		part = s.Partial
		if part < 0 {
			return fmt.Errorf("%s: a batch split into %d runs needs a Partial area", what, s.SplitRuns())
		}
	} else if s.DW < 0 {
		return fmt.Errorf("%s: no DW", what)
	}
	return extents(what, s.DY, s.N*s.O*s.OH*s.OW, s.DW, dw, part, s.SplitRuns()*dw)
}
func (s TrainConvGradWeightSpec) tileCount() int {
	if s.wgSame() {
		return s.sameTiles()
	}
	return s.gemmTiles()
}
func (s TrainConvGradWeightSpec) flops() int64 {
	return 2 * int64(s.N*s.outChannels()*s.OH*s.OW) * int64(s.C*s.KH*s.KW)
}
func (s TrainConvGradWeightSpec) gen(g *builder) {
	if s.wgSame() {
		s.genSame(g)
		return
	}
	s.genGemm(g)
}

// ChannelSumSpec is bias_grad: out[c] = Σ_n Σ_i dy[n][c][i] over an
// [Outer][C][Inner] value, accumulated in float64. A tile is one channel,
// or with Inner = 1 (a dense layer's bias gradient, the runs of a split
// weight gradient) a block of sumBlock channels summed in vectors.
//
// With Stats, the sums come from the partial sums (BNStats) that the
// kernel writing dy stored as it wrote it (TrainConvGradInputSpec.Stats):
// per channel Σ over its blocks of (S1 + n·k), combined in float64 in
// block order (combineStats), so dy is not read again. On the mini
// Inception-ResNet's step these bias gradients read 4.4 MB each at
// 12 GB/s (one channel's short runs per tile).
type ChannelSumSpec struct {
	Outer, C, Inner int
	DY, Out         int
	Stats           BNStats
}

func (s ChannelSumSpec) Kind() string { return "bias_grad" }
func (s ChannelSumSpec) Validate() error {
	if err := positive("bias_grad", "Outer", s.Outer, "C", s.C, "Inner", s.Inner); err != nil {
		return err
	}
	if err := s.Stats.validate("bias_grad", s.C, s.Outer, s.Inner); err != nil {
		return err
	}
	return extents("bias_grad", s.DY, s.Outer*s.C*s.Inner, s.Out, s.C)
}
func (s ChannelSumSpec) tileCount() int {
	if s.Inner == 1 && !s.Stats.On {
		return ceilDiv(s.C, sumBlock)
	}
	return s.C
}
func (s ChannelSumSpec) flops() int64 { return int64(s.Outer * s.C * s.Inner) }

// sumBlock is the channels of a tile of ChannelSumSpec with Inner = 1.
const sumBlock = 256

func (s ChannelSumSpec) gen(g *builder) {
	if s.Stats.On {
		g.tiles(func(c value.Value) {
			k, s1, _ := g.combineStats(s.Stats, s.Outer, s.Inner, c)
			sum := g.fadd(s1, g.fmul(cd(float64(s.Outer*s.Inner)), k))
			g.st(g.trunc(sum), g.add(ci(s.Out), c))
		})
		return
	}
	if s.Inner == 1 {
		s.genRows(g)
		return
	}
	g.tiles(func(c value.Value) {
		sum := g.channelSum(s.Outer, s.C, s.Inner, c, func(i value.Value) value.Value { return g.ext(g.ld(g.add(ci(s.DY), i))) })
		g.st(g.trunc(sum), g.add(ci(s.Out), c))
	})
}

// genRows sums the Outer rows of C floats lane by lane, each lane's sum
// in float64 in row order.
func (s ChannelSumSpec) genRows(g *builder) {
	L := g.t.VectorLanes
	NB := ceilDiv(s.C, sumBlock)
	g.tiles(func(t value.Value) {
		c0 := g.mul(t, ci(sumBlock))
		g.lastOr(t, NB, sumBlock, s.C-(NB-1)*sumBlock, func(n int) {
			one := func(c, m value.Value) {
				sum := g.loopN(s.Outer, []value.Value{g.vzero64()}, func(o value.Value, a []value.Value) []value.Value {
					v := g.vld(g.add(ci(s.DY), g.add(g.mul(o, ci(s.C)), c)), m)
					return []value.Value{g.b.NewFAdd(a[0], g.vext(v))}
				})
				g.vst(g.b.NewFPTrunc(sum[0], types.NewVector(uint64(L), f32)), g.add(ci(s.Out), c), m)
			}
			if full := n / L; full > 0 {
				g.loopN(full, nil, func(v value.Value, _ []value.Value) []value.Value {
					one(g.add(c0, g.mul(v, ci(L))), nil)
					return nil
				})
			}
			if tail := n % L; tail > 0 {
				one(g.add(c0, ci(n-tail)), g.prefixMask(tail))
			}
		})
	})
}

// channelSum returns the float64 sum of f(i) over the element indexes i of
// channel c of an [outer][ch][inner] value.
func (g *builder) channelSum(outer, ch, inner int, c value.Value, f func(i value.Value) value.Value) value.Value {
	r := g.loopN(outer, []value.Value{cd(0)}, func(n value.Value, a []value.Value) []value.Value {
		base := g.mul(g.add(g.mul(n, ci(ch)), c), ci(inner))
		return g.loopN(inner, a, func(i value.Value, a []value.Value) []value.Value {
			return []value.Value{g.radd(a[0], f(g.add(base, i)))}
		})
	})
	return r[0]
}

// chanArr is an [outer][ch][inner] array at arena offset Off whose outer
// rows are Stride floats apart (0: ch·inner, dense). A larger stride makes
// it a channel slice of a wider value, read in place: the gradient of one
// branch of a concat inside the concat's gradient.
type chanArr struct {
	Off, Stride int
	// Out marks an array the kernel writes: groupVecs prefetches it
	// for writing (see there).
	Out bool
}

// dense returns a at the dense layout's offset.
func dense(off int) chanArr { return chanArr{Off: off} }

// stride returns a's outer stride for ch channels of inner values.
func (a chanArr) stride(ch, inner int) int {
	if a.Stride > 0 {
		return a.Stride
	}
	return ch * inner
}

// extent returns the floats from a's offset to past its last element.
func (a chanArr) extent(outer, ch, inner int) int {
	return (outer-1)*a.stride(ch, inner) + ch*inner
}

// groupVecs runs f over the G channels c0, c0+1, …, c0+G−1 of
// [outer][ch][inner] arrays in vectors: for each outer row, over channel
// c0+j's row for j = 0..G−1 in turn, so the kernel sweeps G·inner
// contiguous floats per row. at(a) is the arena index of the vector's
// first lane in array a and m the lane mask (nil for a full vector; the
// last vector of each row of inner values is masked when inner is not a
// multiple of the lanes). f gets j and all the carried values (each
// channel's are its own slice of them, by the caller's convention) and
// returns the new ones.
//
// The rows of one channel are inner floats every ch·inner (or the array's
// stride): short runs (784 bytes for 14x14 planes, 196 for 7x7) that the
// hardware prefetchers pick up too late, so each full vector also
// prefetches the same place pfAhead(inner) rows on in each of the arrays
// pf.
func (g *builder) groupVecs(outer, ch, inner int, c0 value.Value, G int, pf []chanArr, carried []value.Value, f func(j int, at func(chanArr) value.Value, m value.Value, a []value.Value) []value.Value) []value.Value {
	L := g.t.VectorLanes
	full, tail := inner/L, inner%L
	return g.loopN(outer, carried, func(n value.Value, a []value.Value) []value.Value {
		for jj := 0; jj < G; jj++ {
			j := jj
			c := g.add(c0, ci(j))
			row := func(arr chanArr, v value.Value) value.Value {
				return g.add(ci(arr.Off), g.add(g.mul(n, ci(arr.stride(ch, inner))), g.add(g.mul(c, ci(inner)), v)))
			}
			if full > 0 {
				a = g.loopN(full, a, func(v value.Value, a []value.Value) []value.Value {
					i := g.mul(v, ci(L))
					for _, arr := range pf {
						at := g.add(row(arr, i), ci(pfAhead(inner)*arr.stride(ch, inner)))
						if arr.Out {
							g.prefetchW(at)
						} else {
							g.prefetch(at)
						}
					}
					return f(j, func(arr chanArr) value.Value { return row(arr, i) }, nil, a)
				})
			}
			if tail > 0 {
				i := ci(full * L)
				a = f(j, func(arr chanArr) value.Value { return row(arr, i) }, g.prefixMask(tail), a)
			}
		}
		return a
	})
}

// bnRun is the floats of one outer row that a per-channel kernel
// (BatchNorm forward and gradient) sweeps at least: channels of rows
// shorter than bnShort go together in groups of up to bnGroupMax
// (groupVecs). Rows of 7x7 planes are 49 floats, 196 bytes, a short run
// that shares its first and last cache lines with the neighbouring
// channels' rows, which other tiles read. In the mini_inception step
// profile (Intel Xeon VM, 2 threads, batch 128) grouping four 7x7
// channels took the 7x7 BatchNorms from 6.1 to 2.4–2.7 ms per step
// (forward) and from 9.4 to 4.1–4.5 ms (gradient); grouping two 14x14
// channels changed nothing measurable, so rows of bnShort floats or more
// stay one channel per tile.
const (
	bnRun      = 256
	bnShort    = 128
	bnGroupMax = 4 // each channel carries two float64 vector sums through the gradient's first pass: four AVX-512 registers
)

// bnGroup returns the channels per tile of the per-channel kernels over
// rows of inner floats.
func bnGroup(inner int) int {
	if inner >= bnShort {
		return 1
	}
	return max(1, min(bnGroupMax, ceilDiv(bnRun, inner)))
}

// bnTiles runs body for each tile's group of channels: c0 its first
// channel and gs their count (a generation-time constant: the last group
// may be smaller).
func (g *builder) bnTiles(C, inner int, body func(c0 value.Value, gs int)) {
	G := bnGroup(inner)
	NG := ceilDiv(C, G)
	g.tiles(func(t value.Value) {
		c0 := g.mul(t, ci(G))
		g.lastOr(t, NG, G, C-(NG-1)*G, func(gs int) { body(c0, gs) })
	})
}

// pfRows is the fewest rows ahead groupVecs prefetches (2 and 4
// measured alike on 14x14 rows; see the comment there).
const pfRows = 2

// pfDistance is how many floats ahead groupVecs prefetches at least:
// on short rows (7x7, 49 floats) two rows ahead is too close to hide the
// memory latency. 512 floats (2 KiB) measured best of 256, 512 and 1024
// on the mini_inception step (BatchNorm forward 10.6 -> 9.7 ms).
const pfDistance = 512

// pfAhead is how many rows of inner floats groupVecs prefetches ahead.
func pfAhead(inner int) int { return max(pfRows, ceilDiv(pfDistance, inner)) }

// prefetch hints that the arena float at index i will be read soon
// (llvm.prefetch: read, high locality, data cache; it never faults, so
// an index past the arena is harmless).
func (g *builder) prefetch(i value.Value) { g.prefetchRW(i, 0) }

// prefetchW hints that the arena float at index i will be written soon
// (llvm.prefetch for writing: prefetchw where the target has it).
func (g *builder) prefetchW(i value.Value) { g.prefetchRW(i, 1) }

func (g *builder) prefetchRW(i value.Value, rw int64) {
	f := g.m.declare("llvm.prefetch.p0", types.Void, types.NewPointer(f32), types.I32, types.I32, types.I32)
	i32 := func(v int64) value.Value { return constant.NewInt(types.I32, v) }
	g.b.NewCall(f, g.gep(g.arena, i), i32(rw), i32(3), i32(1))
}

// vld loads the vector at arena index i, masked by m when m is not nil
// (masked-off lanes are zero and not read).
func (g *builder) vld(i, m value.Value) value.Value {
	if m == nil {
		return g.vload(g.arena, i)
	}
	return g.maskedLoad(g.arena, i, m)
}

// vst stores v at arena index i, only the lanes of m when m is not nil.
func (g *builder) vst(v, i, m value.Value) {
	if m == nil {
		g.vstore(v, g.arena, i)
		return
	}
	g.maskedStore(v, g.arena, i, m)
}

// vext widens a float vector to doubles; vzero64 is the zero double vector.
func (g *builder) vext(v value.Value) value.Value {
	return g.b.NewFPExt(v, types.NewVector(uint64(g.t.VectorLanes), f64))
}

func (g *builder) vzero64() value.Value {
	return constant.NewZeroInitializer(types.NewVector(uint64(g.t.VectorLanes), f64))
}

// bnScaleShift returns a BatchNorm channel's float32 scale s = w/√(var+eps)
// and shift t = b − mean·s, computed in float64 from the float32 weight w,
// bias b, mean and variance. The forward kernel and the gradient kernel that
// recomputes the forward's ReLU mask both call it, so that they get the same
// s and t bit for bit and x·s + t > 0 exactly where the forward's ReLU
// output is positive.
func (g *builder) bnScaleShift(w, b, mean, variance value.Value, eps float64) (sc, sh value.Value) {
	scd := g.fdiv(g.ext(w), g.sqrt(g.fadd(g.ext(variance), cd(eps))))
	shd := g.fsub(g.ext(b), g.fmul(g.ext(mean), scd))
	return g.trunc(scd), g.trunc(shd)
}

// BatchNormTrainSpec is batchnorm_train on an [Outer][C][Inner] value, as
// the interpreter computes it (ir/interp evalBatchNormTrain): per channel
// the batch mean and biased variance (float64 sums; one shifted pass, see
// gen), then
// y = x·s + t with s = w/√(var+eps), t = b − mean·s (bnScaleShift, from the
// float32 mean and variance). A tile is a group of channels (bnGroup).
// Results whose offset is negative are not written. With ReLU the kernel
// writes relu(y) at Y instead (the lowering fuses a relu that is y's only
// user: one pass over the activations fewer).
type BatchNormTrainSpec struct {
	Outer, C, Inner int
	Eps             float64
	X, Wt, B        int
	Y, Mean, Var    int
	ReLU            bool
	// YStride is the distance between Y's outer rows (0: C·Inner, dense).
	// The lowering sets it to write a concat's branch in place, into its
	// channel slice of the concat.
	YStride int
	// Stats, when On, holds the partial statistics of X written by the
	// convolution that produced it (train_bnstats.go): the kernel then
	// combines them instead of reading X for the mean and variance.
	Stats BNStats
}

func (s BatchNormTrainSpec) Kind() string { return "batchnorm_train" }
func (s BatchNormTrainSpec) Validate() error {
	if err := positive("batchnorm_train", "Outer", s.Outer, "C", s.C, "Inner", s.Inner); err != nil {
		return err
	}
	n := s.Outer * s.C * s.Inner
	if s.YStride != 0 && s.YStride < s.C*s.Inner {
		return fmt.Errorf("batchnorm_train: Y stride %d < %d channels × %d", s.YStride, s.C, s.Inner)
	}
	yN := chanArr{Off: s.Y, Stride: s.YStride}.extent(s.Outer, s.C, s.Inner)
	if err := s.Stats.validate("batchnorm_train", s.C, s.Outer, s.Inner); err != nil {
		return err
	}
	return extents("batchnorm_train", s.X, n, s.Wt, s.C, s.B, s.C, s.Y, yN, s.Mean, s.C, s.Var, s.C)
}
func (s BatchNormTrainSpec) tileCount() int { return ceilDiv(s.C, bnGroup(s.Inner)) }
func (s BatchNormTrainSpec) flops() int64   { return 5 * int64(s.Outer*s.C*s.Inner) }

// gen: a tile is a group of channels (bnGroup), swept together.
func (s BatchNormTrainSpec) gen(g *builder) {
	count := float64(s.Outer * s.Inner)
	g.bnTiles(s.C, s.Inner, func(c0 value.Value, gs int) {
		chans := make([]value.Value, gs)
		for j := range chans {
			chans[j] = g.add(c0, ci(j))
		}
		// One pass of float64 sums of d = x − K and d² with the shift K the
		// channel's first value (so that the variance does not cancel:
		// Chan, Golub and LeVeque, "Algorithms for computing the sample
		// variance", The American Statistician 37(3), 1983), in vectors.
		// With Stats, the same sums from the producer's partials.
		x := []chanArr{dense(s.X)}
		k, sd, sd2 := make([]value.Value, gs), make([]value.Value, gs), make([]value.Value, gs)
		if s.Stats.On {
			for j, c := range chans {
				k[j], sd[j], sd2[j] = g.combineStats(s.Stats, s.Outer, s.Inner, c)
			}
		} else {
			kv := make([]value.Value, gs)
			init := make([]value.Value, 0, 2*gs)
			for j, c := range chans {
				k[j] = g.ext(g.ld(g.add(ci(s.X), g.mul(c, ci(s.Inner)))))
				kv[j] = g.broadcast(k[j])
				init = append(init, g.vzero64(), g.vzero64())
			}
			sums := g.groupVecs(s.Outer, s.C, s.Inner, c0, gs, x, init, func(j int, at func(chanArr) value.Value, m value.Value, a []value.Value) []value.Value {
				d := g.fsub(g.vext(g.vld(at(x[0]), m)), kv[j])
				if m != nil {
					d = g.sel(m, d, g.vzero64())
				}
				a = slices.Clone(a)
				a[2*j], a[2*j+1] = g.radd(a[2*j], d), g.radd(a[2*j+1], g.fmul(d, d))
				return a
			})
			for j := range chans {
				sd[j], sd2[j] = g.hreduce(sums[2*j], g.radd), g.hreduce(sums[2*j+1], g.radd)
			}
		}
		scv, shv := make([]value.Value, gs), make([]value.Value, gs)
		for j, c := range chans {
			s1 := g.fdiv(sd[j], cd(count))
			mu := g.fadd(k[j], s1)
			v := g.fsub(g.fdiv(sd2[j], cd(count)), g.fmul(s1, s1))
			v = g.sel(g.b.NewFCmp(enum.FPredOLT, v, cd(0)), cd(0), v)
			mu32, v32 := g.trunc(mu), g.trunc(v)
			if s.Mean >= 0 {
				g.st(mu32, g.add(ci(s.Mean), c))
			}
			if s.Var >= 0 {
				g.st(v32, g.add(ci(s.Var), c))
			}
			sc, sh := g.bnScaleShift(g.ld(g.add(ci(s.Wt), c)), g.ld(g.add(ci(s.B), c)), mu32, v32, s.Eps)
			scv[j], shv[j] = g.splat(sc), g.splat(sh)
		}
		if s.Y >= 0 {
			pf := append(x, chanArr{Off: s.Y, Stride: s.YStride, Out: true})
			g.groupVecs(s.Outer, s.C, s.Inner, c0, gs, pf, nil, func(j int, at func(chanArr) value.Value, m value.Value, _ []value.Value) []value.Value {
				y := g.fma(g.vld(at(x[0]), m), scv[j], shv[j])
				if s.ReLU {
					y = g.relu(y)
				}
				g.vst(y, at(chanArr{Off: s.Y, Stride: s.YStride}), m)
				return nil
			})
		}
	})
}

// BatchNormTrainGradSpec is batchnorm_train_grad (ir/interp
// evalBatchNormTrainGrad): per channel, with M values, σ⁻¹ = 1/√(var+eps)
// and x̂ = (x − mean)·σ⁻¹: db = Σ dy, dw = Σ dy·x̂ (float64 sums) and
// dx = w·σ⁻¹/M·(M·dy − db − x̂·dw). A tile is a group of channels (bnGroup); results with a
// negative offset are not written. With ReLU the gradient arriving at the
// BatchNorm is relu_grad's, dy where R > 0 else 0 (R the relu's output),
// computed on the fly: the lowering fuses a relu_grad whose only user this
// is (one pass over the activations fewer). When R is the ReLU of this
// BatchNorm's own forward output, the lowering sets R < 0 and B to the
// forward's bias instead: R > 0 exactly where x·s + t > 0, with s and t the
// forward's float32 scale and shift (bnScaleShift gives both kernels the
// same ones and both compute x·s + t with one fma), so the kernel reads
// three arrays per pass (dy, x, and dx written) rather than four.
type BatchNormTrainGradSpec struct {
	Outer, C, Inner      int
	Eps                  float64
	DY, X, Wt, Mean, Var int
	DX, DW, DB           int
	ReLU                 bool
	R                    int
	B                    int // the forward's bias, read when ReLU and R < 0
	// DYStride is the distance between DY's outer rows (0: C·Inner,
	// dense). The lowering sets it to read the gradient of one branch of
	// a concat in place, a channel slice of the concat's gradient.
	DYStride int
}

// maskFromX reports that the ReLU mask is recomputed from X (see the type).
func (s BatchNormTrainGradSpec) maskFromX() bool { return s.ReLU && s.R < 0 }

func (s BatchNormTrainGradSpec) Kind() string { return "batchnorm_train_grad" }
func (s BatchNormTrainGradSpec) Validate() error {
	if err := positive("batchnorm_train_grad", "Outer", s.Outer, "C", s.C, "Inner", s.Inner); err != nil {
		return err
	}
	n := s.Outer * s.C * s.Inner
	r, b := -1, -1
	if s.maskFromX() {
		if s.B < 0 {
			return fmt.Errorf("batchnorm_train_grad: a ReLU mask without R needs the forward's bias B")
		}
		b = s.B
	} else if s.ReLU {
		r = s.R
	}
	if s.DYStride != 0 && s.DYStride < s.C*s.Inner {
		return fmt.Errorf("batchnorm_train_grad: DY stride %d < %d channels × %d", s.DYStride, s.C, s.Inner)
	}
	dyN := chanArr{Off: s.DY, Stride: s.DYStride}.extent(s.Outer, s.C, s.Inner)
	return extents("batchnorm_train_grad", s.DY, dyN, s.X, n, s.Wt, s.C, s.Mean, s.C, s.Var, s.C, s.DX, n, s.DW, s.C, s.DB, s.C, r, n, b, s.C)
}
func (s BatchNormTrainGradSpec) tileCount() int { return ceilDiv(s.C, bnGroup(s.Inner)) }
func (s BatchNormTrainGradSpec) flops() int64   { return 8 * int64(s.Outer*s.C*s.Inner) }

// gen: a tile is a group of channels (bnGroup), swept together.
func (s BatchNormTrainGradSpec) gen(g *builder) {
	m := float64(s.Outer * s.Inner)
	g.bnTiles(s.C, s.Inner, func(c0 value.Value, gs int) {
		type chanConst struct {
			c, inv, mu32, inv32, muv, scv, shv value.Value
		}
		cs := make([]chanConst, gs)
		init := make([]value.Value, 0, 2*gs)
		for j := range cs {
			c := g.add(c0, ci(j))
			mean32, var32 := g.ld(g.add(ci(s.Mean), c)), g.ld(g.add(ci(s.Var), c))
			inv := g.fdiv(cd(1), g.sqrt(g.fadd(g.ext(var32), cd(s.Eps))))
			// x̂ in float32 from float32 mean and σ⁻¹.
			cs[j] = chanConst{c: c, inv: inv, mu32: g.splat(mean32), inv32: g.splat(g.trunc(inv)), muv: g.broadcast(g.ext(mean32))}
			if s.maskFromX() {
				sc, sh := g.bnScaleShift(g.ld(g.add(ci(s.Wt), c)), g.ld(g.add(ci(s.B), c)), mean32, var32, s.Eps)
				cs[j].scv, cs[j].shv = g.splat(sc), g.splat(sh)
			}
			init = append(init, g.vzero64(), g.vzero64())
		}
		// dy returns the gradient at the BatchNorm's output for the x
		// vector xv of group channel j: relu_grad's (EltReLUGrad) when
		// fused.
		dyA, xA, rA := chanArr{Off: s.DY, Stride: s.DYStride}, dense(s.X), dense(s.R)
		dy := func(j int, at func(chanArr) value.Value, m, xv value.Value) value.Value {
			v := g.vld(at(dyA), m)
			switch {
			case s.maskFromX():
				v = g.sel(g.b.NewFCmp(enum.FPredOGT, g.fma(xv, cs[j].scv, cs[j].shv), g.vzero()), v, g.vzero())
			case s.ReLU:
				v = g.sel(g.b.NewFCmp(enum.FPredOGT, g.vld(at(rA), m), g.vzero()), v, g.vzero())
			}
			return v
		}
		// One pass of float64 sums Σ dy and Σ dy·(x − mean) in vectors
		// (masked-off lanes load 0 for dy, so they add nothing).
		pf := []chanArr{dyA, xA}
		if s.ReLU && !s.maskFromX() {
			pf = append(pf, rA)
		}
		sums := g.groupVecs(s.Outer, s.C, s.Inner, c0, gs, pf, init, func(j int, at func(chanArr) value.Value, m value.Value, a []value.Value) []value.Value {
			xv := g.vld(at(xA), m)
			d := g.vext(dy(j, at, m, xv))
			xc := g.fsub(g.vext(xv), cs[j].muv)
			a = slices.Clone(a)
			a[2*j], a[2*j+1] = g.radd(a[2*j], d), g.radd(a[2*j+1], g.fmul(d, xc))
			return a
		})
		ka, kb, kd := make([]value.Value, gs), make([]value.Value, gs), make([]value.Value, gs)
		for j, cc := range cs {
			sdy := g.hreduce(sums[2*j], g.radd)
			sdx := g.fmul(g.hreduce(sums[2*j+1], g.radd), cc.inv)
			if s.DW >= 0 {
				g.st(g.trunc(sdx), g.add(ci(s.DW), cc.c))
			}
			if s.DB >= 0 {
				g.st(g.trunc(sdy), g.add(ci(s.DB), cc.c))
			}
			if s.DX >= 0 {
				k := g.fdiv(g.fmul(g.ext(g.ld(g.add(ci(s.Wt), cc.c))), cc.inv), cd(m))
				// dx = k·M·dy − k·db − x̂·(k·dw)
				ka[j] = g.splat(g.trunc(g.fmul(k, cd(m))))
				kb[j] = g.splat(g.trunc(g.fmul(k, sdy)))
				kd[j] = g.splat(g.trunc(g.fmul(k, sdx)))
			}
		}
		if s.DX >= 0 {
			pfw := append(pf[:len(pf):len(pf)], chanArr{Off: s.DX, Out: true})
			g.groupVecs(s.Outer, s.C, s.Inner, c0, gs, pfw, nil, func(j int, at func(chanArr) value.Value, m value.Value, _ []value.Value) []value.Value {
				xv := g.vld(at(xA), m)
				xhat := g.fmul(g.fsub(xv, cs[j].mu32), cs[j].inv32)
				v := g.fsub(g.fsub(g.fmul(ka[j], dy(j, at, m, xv)), kb[j]), g.fmul(xhat, kd[j]))
				g.vst(v, at(dense(s.DX)), m)
				return nil
			})
		}
	})
}

// EltTrainOp is an elementwise operation of the training step.
type EltTrainOp int

const (
	// EltReLUGrad is relu_grad: dy where y > 0, else 0.
	EltReLUGrad EltTrainOp = iota
	// EltMul2 is mul2: a·b.
	EltMul2
	// EltScaleBy is scale_by: a·b[0] (b one float).
	EltScaleBy
	// EltResidual is the forward of a scaled residual connection,
	// relu(a + C·b): the mul, add and relu of Inception-ResNet's
	// relu(x + scale·up) (Szegedy et al. 2016, §3.3) as one pass.
	EltResidual
)

// EltTrainSpec is a binary elementwise kernel over Elems floats, in chunks
// of 4096 per tile.
type EltTrainSpec struct {
	Op        EltTrainOp
	Elems     int
	A, B, Out int
	// C is EltResidual's scale.
	C float32
}

func (s EltTrainSpec) Kind() string {
	return [...]string{"relu_grad", "mul2", "scale_by", "residual"}[s.Op]
}
func (s EltTrainSpec) Validate() error {
	if s.Op < EltReLUGrad || s.Op > EltResidual {
		return fmt.Errorf("elementwise training op %d unknown", int(s.Op))
	}
	if err := positive(s.Kind(), "Elems", s.Elems); err != nil {
		return err
	}
	nb := s.Elems
	if s.Op == EltScaleBy {
		nb = 1
	}
	if err := extents(s.Kind(), s.A, s.Elems, s.B, nb, s.Out, s.Elems); err != nil {
		return err
	}
	// Element i is read and written by the same iteration, so the output
	// may be an input exactly but must not overlap one partially.
	o := s.Out
	for _, in := range []int{s.A, s.B} {
		if in == s.B && s.Op == EltScaleBy {
			if Overlap(in, 1, o, s.Elems) {
				return fmt.Errorf("%s: the scalar operand lies in the output", s.Kind())
			}
			continue
		}
		if in != o && Overlap(in, s.Elems, o, s.Elems) {
			return fmt.Errorf("%s: input [%d, %d) partially overlaps output [%d, %d)", s.Kind(), in, in+s.Elems, o, o+s.Elems)
		}
	}
	return nil
}
func (s EltTrainSpec) tileCount() int { return ceilDiv(s.Elems, eltChunk) }
func (s EltTrainSpec) flops() int64   { return int64(s.Elems) }
func (s EltTrainSpec) gen(g *builder) {
	if s.Op != EltResidual {
		s.genLoop(g)
		return
	}
	// The residual forward: an explicit vector loop and a scalar tail.
	V := g.t.VectorLanes
	g.tiles(func(t value.Value) {
		base := g.mul(t, ci(eltChunk))
		at := func(off int) value.Value { return g.gep(g.arena, g.add(base, ci(off))) }
		a, b, out := at(s.A), at(s.B), at(s.Out)
		// Rounded as the unfused mul and add were (no FMA), so that the
		// fused step computes bit for bit what they did.
		f := func(av, bv, c value.Value) value.Value { return g.relu(g.fadd(av, g.fmul(bv, c))) }
		body := func(n int) {
			vc := g.vconst(float64(s.C))
			g.loopN(n/V, nil, func(i value.Value, _ []value.Value) []value.Value {
				o := g.mul(i, ci(V))
				g.vstore(f(g.vload(a, o), g.vload(b, o), vc), out, o)
				return nil
			})
			for i := n / V * V; i < n; i++ {
				g.store(f(g.load(a, ci(i)), g.load(b, ci(i)), cf(float64(s.C))), out, ci(i))
			}
		}
		tiles := s.tileCount()
		last := s.Elems - (tiles-1)*eltChunk
		switch {
		case last == eltChunk:
			body(eltChunk)
		case tiles == 1:
			body(last)
		default:
			g.ifElse(g.icmp(enum.IPredULT, t, ci(tiles-1)), func() { body(eltChunk) }, func() { body(last) })
		}
	})
}

// genLoop emits the kernel as a scalar loop over the tile, which LLVM's
// loop vectorizer vectorizes (with run-time alias checks). The residual
// forward has an explicit vector loop instead (gen): in alternating
// profile runs of mini_inception_resnet (2026-12-02) its six kernels took
// 1.2–1.5 ms per step against 2.0–2.1 as this loop.
func (s EltTrainSpec) genLoop(g *builder) {
	g.tiles(func(t value.Value) {
		lo := g.mul(t, ci(eltChunk))
		hi := g.smin(g.add(lo, ci(eltChunk)), ci(s.Elems))
		var sb value.Value
		if s.Op == EltScaleBy {
			sb = g.ld(ci(s.B))
		}
		g.loop(lo, hi, nil, func(i value.Value, _ []value.Value) []value.Value {
			a := g.ld(g.add(ci(s.A), i))
			var v value.Value
			switch s.Op {
			case EltReLUGrad:
				v = g.b.NewSelect(g.b.NewFCmp(enum.FPredOGT, g.ld(g.add(ci(s.B), i)), cf(0)), a, cf(0))
			case EltMul2:
				v = g.fmul(a, g.ld(g.add(ci(s.B), i)))
			default:
				v = g.fmul(a, sb)
			}
			g.st(v, g.add(ci(s.Out), i))
			return nil
		})
	})
}

// PoolGeom is a pooling window over planes of H×W (PyTorch semantics,
// ceil_mode=False): output OH×OW, window KH×KW, stride, padding.
type PoolGeom struct {
	Planes, H, W   int
	KH, KW         int
	SH, SW, PH, PW int
	OH, OW         int
	Max            bool
	IncludePad     bool
}

func (s PoolGeom) check(what string) error {
	if err := positive(what, "Planes", s.Planes, "H", s.H, "W", s.W, "KH", s.KH, "KW", s.KW, "SH", s.SH, "SW", s.SW, "OH", s.OH, "OW", s.OW); err != nil {
		return err
	}
	return nonNeg(what, "PH", s.PH, "PW", s.PW)
}

// window returns the in-bounds input rows [y0, y1) and columns [x0, x1) of
// output (oh, ow).
func (s PoolGeom) window(g *builder, oh, ow value.Value) (y0, y1, x0, x1 value.Value) {
	y := g.sub(g.mul(oh, ci(s.SH)), ci(s.PH))
	x := g.sub(g.mul(ow, ci(s.SW)), ci(s.PW))
	return g.smax(y, ci(0)), g.smin(g.add(y, ci(s.KH)), ci(s.H)), g.smax(x, ci(0)), g.smin(g.add(x, ci(s.KW)), ci(s.W))
}

// divisor returns the average's divisor of a window as a float.
func (s PoolGeom) divisor(g *builder, y0, y1, x0, x1 value.Value) value.Value {
	if s.IncludePad {
		return cf(float64(s.KH * s.KW))
	}
	return g.b.NewSIToFP(g.mul(g.sub(y1, y0), g.sub(x1, x0)), f32)
}

// argmax returns the flat in-plane index of the window's first maximum, as
// evalMaxPool and evalMaxPoolGrad find it: row-major scan, a strictly
// greater value or the first NaN replaces the current one, and nothing
// replaces a NaN.
func (s PoolGeom) argmax(g *builder, plane, y0, y1, x0, x1 value.Value) (value.Value, value.Value) {
	at0 := g.add(g.mul(y0, ci(s.W)), x0)
	r := g.loop(y0, y1, []value.Value{g.ld(g.add(plane, at0)), at0}, func(y value.Value, a []value.Value) []value.Value {
		return g.loop(x0, x1, a, func(x value.Value, a []value.Value) []value.Value {
			at := g.add(g.mul(y, ci(s.W)), x)
			v := g.ld(g.add(plane, at))
			repl := g.b.NewAnd(g.b.NewOr(g.b.NewFCmp(enum.FPredOGT, v, a[0]), g.isNaN(v)), g.b.NewXor(g.isNaN(a[0]), constant.True))
			return []value.Value{g.b.NewSelect(repl, v, a[0]), g.b.NewSelect(repl, at, a[1])}
		})
	})
	return r[0], r[1]
}

// TrainPoolSpec is maxpool or avgpool on plain planes; a tile is one plane.
type TrainPoolSpec struct {
	PoolGeom
	X, Out int
}

func (s TrainPoolSpec) Kind() string {
	if s.Max {
		return "maxpool"
	}
	return "avgpool"
}
func (s TrainPoolSpec) Validate() error {
	if err := s.check(s.Kind()); err != nil {
		return err
	}
	return extents(s.Kind(), s.X, s.Planes*s.H*s.W, s.Out, s.Planes*s.OH*s.OW)
}
func (s TrainPoolSpec) tileCount() int { return ceilDiv(s.Planes, s.avgGroup()) }
func (s TrainPoolSpec) flops() int64   { return int64(s.Planes * s.OH * s.OW * s.KH * s.KW) }
func (s TrainPoolSpec) gen(g *builder) {
	if s.fast() {
		s.genFast(g)
		return
	}
	g.tiles(func(p value.Value) {
		x := g.add(ci(s.X), g.mul(p, ci(s.H*s.W)))
		out := g.add(ci(s.Out), g.mul(p, ci(s.OH*s.OW)))
		g.loopN(s.OH, nil, func(oh value.Value, _ []value.Value) []value.Value {
			g.loopN(s.OW, nil, func(ow value.Value, _ []value.Value) []value.Value {
				y0, y1, x0, x1 := s.window(g, oh, ow)
				var v value.Value
				if s.Max {
					v, _ = s.argmax(g, x, y0, y1, x0, x1)
				} else {
					r := g.loop(y0, y1, []value.Value{cf(0)}, func(y value.Value, a []value.Value) []value.Value {
						return g.loop(x0, x1, a, func(xx value.Value, a []value.Value) []value.Value {
							return []value.Value{g.fadd(a[0], g.ld(g.add(x, g.add(g.mul(y, ci(s.W)), xx))))}
						})
					})
					v = g.fdiv(r[0], s.divisor(g, y0, y1, x0, x1))
				}
				g.st(v, g.add(out, g.add(g.mul(oh, ci(s.OW)), ow)))
				return nil
			})
			return nil
		})
	})
}

// TrainPoolGradSpec is maxpool_grad (X the forward input) or avgpool_grad
// (X unused, -1): each dy goes to its window's first maximum, or dy/divisor
// to every in-bounds pixel; a tile is one dx plane.
type TrainPoolGradSpec struct {
	PoolGeom
	DY, X, DX int
	// Acc, when ≥ 0 (max pooling only), is the arena offset of an addend
	// shaped like dx: the kernel writes dx = Acc + the gradient, folding
	// the sum of a value's gradient contributions (an add node, as
	// TrainConvGradInputSpec.Acc) into the plane it starts from; Acc may
	// equal DX. −1: none.
	Acc int
}

func (s TrainPoolGradSpec) Kind() string { return TrainPoolSpec{PoolGeom: s.PoolGeom}.Kind() + "_grad" }
func (s TrainPoolGradSpec) Validate() error {
	if err := s.check(s.Kind()); err != nil {
		return err
	}
	if s.Max && s.X < 0 {
		return fmt.Errorf("maxpool_grad needs the forward input")
	}
	n := s.Planes * s.H * s.W
	if s.Acc >= 0 {
		if !s.Max {
			return fmt.Errorf("%s: an addend needs max pooling", s.Kind())
		}
		if err := extents(s.Kind(), s.Acc, n); err != nil {
			return err
		}
		if s.Acc != s.DX && Overlap(s.Acc, n, s.DX, n) {
			return fmt.Errorf("%s: addend [%d, %d) partially overlaps dx [%d, %d)", s.Kind(), s.Acc, s.Acc+n, s.DX, s.DX+n)
		}
	}
	return extents(s.Kind(), s.DY, s.Planes*s.OH*s.OW, s.X, n, s.DX, n)
}

// initPlane writes dx plane p's starting value at dx: zero, or the
// addend's plane (Acc).
func (s TrainPoolGradSpec) initPlane(g *builder, dx, p value.Value) {
	switch {
	case s.Acc < 0:
		g.fillN(cf(0), dx, s.H*s.W)
	case s.Acc != s.DX:
		g.copyN(g.add(ci(s.Acc), g.mul(p, ci(s.H*s.W))), dx, s.H*s.W)
	}
}
func (s TrainPoolGradSpec) tileCount() int { return ceilDiv(s.Planes, s.avgGroup()) }
func (s TrainPoolGradSpec) flops() int64   { return int64(s.Planes * s.OH * s.OW * s.KH * s.KW) }
func (s TrainPoolGradSpec) gen(g *builder) {
	if s.fast() {
		s.genFast(g)
		return
	}
	g.tiles(func(p value.Value) {
		dx := g.add(ci(s.DX), g.mul(p, ci(s.H*s.W)))
		dy := g.add(ci(s.DY), g.mul(p, ci(s.OH*s.OW)))
		s.initPlane(g, dx, p)
		g.loopN(s.OH, nil, func(oh value.Value, _ []value.Value) []value.Value {
			g.loopN(s.OW, nil, func(ow value.Value, _ []value.Value) []value.Value {
				y0, y1, x0, x1 := s.window(g, oh, ow)
				d := g.ld(g.add(dy, g.add(g.mul(oh, ci(s.OW)), ow)))
				if s.Max {
					x := g.add(ci(s.X), g.mul(p, ci(s.H*s.W)))
					_, at := s.argmax(g, x, y0, y1, x0, x1)
					o := g.add(dx, at)
					g.st(g.fadd(g.ld(o), d), o)
				} else {
					v := g.fdiv(d, s.divisor(g, y0, y1, x0, x1))
					g.loop(y0, y1, nil, func(y value.Value, _ []value.Value) []value.Value {
						g.loop(x0, x1, nil, func(xx value.Value, _ []value.Value) []value.Value {
							o := g.add(dx, g.add(g.mul(y, ci(s.W)), xx))
							g.st(g.fadd(g.ld(o), v), o)
							return nil
						})
						return nil
					})
				}
				return nil
			})
			return nil
		})
	})
}

// GlobalAvgTrainSpec is global_avgpool (Grad false: out[p] = mean of plane
// p, float64 sum) or global_avgpool_grad (Grad true: plane p of the result
// filled with dy[p]/HW); a tile is one plane.
type GlobalAvgTrainSpec struct {
	Planes, HW int
	Grad       bool
	In, Out    int
}

func (s GlobalAvgTrainSpec) Kind() string {
	if s.Grad {
		return "global_avgpool_grad"
	}
	return "global_avgpool"
}
func (s GlobalAvgTrainSpec) Validate() error {
	if err := positive(s.Kind(), "Planes", s.Planes, "HW", s.HW); err != nil {
		return err
	}
	in, out := s.Planes*s.HW, s.Planes
	if s.Grad {
		in, out = out, in
	}
	return extents(s.Kind(), s.In, in, s.Out, out)
}
func (s GlobalAvgTrainSpec) tileCount() int { return s.Planes }
func (s GlobalAvgTrainSpec) flops() int64   { return int64(s.Planes * s.HW) }
func (s GlobalAvgTrainSpec) gen(g *builder) {
	g.tiles(func(p value.Value) {
		if s.Grad {
			v := g.trunc(g.fdiv(g.ext(g.ld(g.add(ci(s.In), p))), cd(float64(s.HW))))
			g.fillN(v, g.add(ci(s.Out), g.mul(p, ci(s.HW))), s.HW)
			return
		}
		sum := g.channelSum(1, 1, s.HW, ci(0), func(i value.Value) value.Value {
			return g.ext(g.ld(g.add(g.add(ci(s.In), g.mul(p, ci(s.HW))), i)))
		})
		g.st(g.trunc(g.fdiv(sum, cd(float64(s.HW)))), g.add(ci(s.Out), p))
	})
}

// DenseTrainOp selects the dense kernel.
type DenseTrainOp int

const (
	// DenseFwd is dense: out[n][o] = bias[o] + Σ_i x[n][i]·w[o][i].
	DenseFwd DenseTrainOp = iota
	// DenseGradInput is dense_grad_input: dx[n][i] = Σ_o dy[n][o]·w[o][i].
	DenseGradInput
	// DenseGradWeight is dense_grad_weight: dw[o][i] = Σ_n dy[n][o]·x[n][i].
	DenseGradWeight
)

// DenseTrainSpec is a dense layer or one of its gradients with PyTorch's
// [O][I] weight in the arena. A is x (forward, weight gradient) or dy
// (input gradient); B is w, or x for the weight gradient... see gen.
type DenseTrainSpec struct {
	Op      DenseTrainOp
	N, I, O int
	// Forward: X, Wt, Bias (-1: none), Out. GradInput: DY, Wt, Out (dx).
	// GradWeight: DY, X, Out (dw).
	X, DY, Wt, Bias, Out int
}

func (s DenseTrainSpec) Kind() string {
	return [...]string{"dense", "dense_grad_input", "dense_grad_weight"}[s.Op]
}
func (s DenseTrainSpec) Validate() error {
	if err := positive(s.Kind(), "N", s.N, "I", s.I, "O", s.O); err != nil {
		return err
	}
	return extents(s.Kind(), s.X, s.N*s.I, s.DY, s.N*s.O, s.Wt, s.O*s.I, s.Bias, s.O, s.Out, max(s.N*s.I, s.N*s.O, s.O*s.I))
}
func (s DenseTrainSpec) tileCount() int {
	if s.Op == DenseGradWeight {
		return s.O
	}
	return s.N
}
func (s DenseTrainSpec) flops() int64 { return 2 * int64(s.N*s.I*s.O) }
func (s DenseTrainSpec) gen(g *builder) {
	g.tiles(func(t value.Value) {
		switch s.Op {
		case DenseFwd:
			x := g.add(ci(s.X), g.mul(t, ci(s.I)))
			g.loopN(s.O, nil, func(o value.Value, _ []value.Value) []value.Value {
				w := g.add(ci(s.Wt), g.mul(o, ci(s.I)))
				r := g.loopN(s.I, []value.Value{cf(0)}, func(i value.Value, a []value.Value) []value.Value {
					return []value.Value{g.radd(a[0], g.fmul(g.ld(g.add(x, i)), g.ld(g.add(w, i))))}
				})
				v := r[0]
				if s.Bias >= 0 {
					v = g.fadd(v, g.ld(g.add(ci(s.Bias), o)))
				}
				g.st(v, g.add(ci(s.Out), g.add(g.mul(t, ci(s.O)), o)))
				return nil
			})
		case DenseGradInput:
			dx := g.add(ci(s.Out), g.mul(t, ci(s.I)))
			g.fillN(cf(0), dx, s.I)
			g.loopN(s.O, nil, func(o value.Value, _ []value.Value) []value.Value {
				d := g.ld(g.add(ci(s.DY), g.add(g.mul(t, ci(s.O)), o)))
				g.axpy(d, g.add(ci(s.Wt), g.mul(o, ci(s.I))), dx, s.I)
				return nil
			})
		case DenseGradWeight:
			dw := g.add(ci(s.Out), g.mul(t, ci(s.I)))
			g.fillN(cf(0), dw, s.I)
			g.loopN(s.N, nil, func(n value.Value, _ []value.Value) []value.Value {
				d := g.ld(g.add(ci(s.DY), g.add(g.mul(n, ci(s.O)), t)))
				g.axpy(d, g.add(ci(s.X), g.mul(n, ci(s.I))), dw, s.I)
				return nil
			})
		}
	})
}

// XentSpec is softmax_xent (Grad false: the mean over rows of
// −Σ_k t_k·log softmax(x)_k with t = (1−ε)·target + ε/K, one tile) or
// softmax_xent_grad (Grad true: (softmax(x) − t)/N, a tile per row), on
// [N][K] logits. exp is the builder's Cephes expf; log is computed in
// float64 from the exponent bits and the atanh series
// log f = 2·Σ z^(2j+1)/(2j+1), z = (f−1)/(f+1), f in [√½, √2).
type XentSpec struct {
	N, K      int
	Smoothing float64
	Grad      bool
	X, T, Out int
}

func (s XentSpec) Kind() string {
	if s.Grad {
		return "softmax_xent_grad"
	}
	return "softmax_xent"
}
func (s XentSpec) Validate() error {
	if err := positive(s.Kind(), "N", s.N, "K", s.K); err != nil {
		return err
	}
	out := 1
	if s.Grad {
		out = s.N * s.K
	}
	return extents(s.Kind(), s.X, s.N*s.K, s.T, s.N*s.K, s.Out, out)
}
func (s XentSpec) tileCount() int {
	if s.Grad {
		return s.N
	}
	return 1
}
func (s XentSpec) flops() int64 { return 4 * int64(s.N*s.K) }

// log64 returns log x for a positive finite float32 x, in float64.
func (g *builder) log64(x value.Value) value.Value {
	bits := g.b.NewBitCast(x, types.I32)
	var e value.Value = g.b.NewSub(g.b.NewLShr(bits, constant.NewInt(types.I32, 23)), constant.NewInt(types.I32, 127))
	mant := g.b.NewOr(g.b.NewAnd(bits, constant.NewInt(types.I32, 0x7fffff)), constant.NewInt(types.I32, 0x3f800000))
	var f value.Value = g.ext(g.b.NewBitCast(mant, f32))
	big := g.b.NewFCmp(enum.FPredOGT, f, cd(1.4142135623730951))
	f = g.b.NewSelect(big, g.fmul(f, cd(0.5)), f)
	e = g.b.NewSelect(big, g.b.NewAdd(e, constant.NewInt(types.I32, 1)), e)
	z := g.fdiv(g.fsub(f, cd(1)), g.fadd(f, cd(1)))
	z2 := g.fmul(z, z)
	p := value.Value(cd(1.0 / 19))
	for k := 17; k >= 1; k -= 2 {
		p = g.fadd(g.fmul(p, z2), cd(1/float64(k)))
	}
	lf := g.fmul(cd(2), g.fmul(z, p))
	return g.fadd(g.fmul(g.b.NewSIToFP(e, f64), cd(0.6931471805599453)), lf)
}

// xentRow computes row r's max m (NaN-propagating), s = Σ exp(x−m) in
// float32, and returns m, s.
func (s XentSpec) xentRow(g *builder, r value.Value) (value.Value, value.Value, value.Value) {
	x := g.add(ci(s.X), g.mul(r, ci(s.K)))
	m := g.loopN(s.K, []value.Value{g.ld(x)}, func(k value.Value, a []value.Value) []value.Value {
		return []value.Value{g.fmaxNaN(a[0], g.ld(g.add(x, k)))}
	})[0]
	sum := g.loopN(s.K, []value.Value{cf(0)}, func(k value.Value, a []value.Value) []value.Value {
		return []value.Value{g.fadd(a[0], g.exp(g.fsub(g.ld(g.add(x, k)), m)))}
	})[0]
	return x, m, sum
}

func (s XentSpec) gen(g *builder) {
	eps, kf := s.Smoothing, float64(s.K)
	g.tiles(func(t value.Value) {
		if s.Grad {
			x, m, sum := s.xentRow(g, t)
			inv := g.fdiv(cf(1), sum)
			g.loopN(s.K, nil, func(k value.Value, _ []value.Value) []value.Value {
				at := g.add(g.mul(t, ci(s.K)), k)
				p := g.ext(g.fmul(g.exp(g.fsub(g.ld(g.add(x, k)), m)), inv))
				tt := g.fadd(g.fmul(cd(1-eps), g.ext(g.ld(g.add(ci(s.T), at)))), cd(eps/kf))
				g.st(g.trunc(g.fdiv(g.fsub(p, tt), cd(float64(s.N)))), g.add(ci(s.Out), at))
				return nil
			})
			return
		}
		r := g.loopN(s.N, []value.Value{cd(0), constant.False}, func(row value.Value, a []value.Value) []value.Value {
			x, m, sum := s.xentRow(g, row)
			lse := g.fadd(g.ext(m), g.log64(sum))
			l := g.loopN(s.K, []value.Value{cd(0)}, func(k value.Value, b []value.Value) []value.Value {
				tt := g.fadd(g.fmul(cd(1-eps), g.ext(g.ld(g.add(ci(s.T), g.add(g.mul(row, ci(s.K)), k))))), cd(eps/kf))
				lp := g.fsub(g.ext(g.ld(g.add(x, k))), lse)
				return []value.Value{g.fsub(b[0], g.fmul(tt, lp))}
			})
			return []value.Value{g.fadd(a[0], l[0]), g.b.NewOr(a[1], g.isNaN(m))}
		})
		loss := g.trunc(g.fdiv(r[0], cd(float64(s.N))))
		loss = g.b.NewSelect(r[1], cf(math.NaN()), loss)
		g.st(loss, ci(s.Out))
	})
}

// OptimizerKind names an optimizer update rule (ir/ops_train.go).
type OptimizerKind int

const (
	// RMSProp is PyTorch's: v ← αv + (1−α)g²; b ← μb + g/(√v + ε); p ← p − lr·b.
	RMSProp OptimizerKind = iota
	// RMSPropTF is TensorFlow's: v as above; b ← μb + lr·g/√(v + ε); p ← p − b.
	RMSPropTF
	// SGD is PyTorch's SGD with momentum: b ← μb + g; p ← p − lr·b.
	SGD
)

// OptimizerSpec updates Elems parameters, g = grad + wd·p, in float64 per
// element (as ir/interp's optimizerStep) with the learning rate read from
// the arena at LR (a run-time value, so a schedule needs no rebuild).
// Results: NewP, and NewV (RMSProp only) and NewB.
type OptimizerSpec struct {
	Kind_                OptimizerKind
	Elems                int
	Alpha, Eps, Momentum float64
	WeightDecay          float64
	LR                   int
	P, G, V, B           int // V: -1 for SGD
	NewP, NewV, NewB     int
}

func (s OptimizerSpec) Kind() string {
	return [...]string{"rmsprop_update", "rmsprop_tf_update", "sgd_update"}[s.Kind_]
}
func (s OptimizerSpec) Validate() error {
	if err := positive(s.Kind(), "Elems", s.Elems); err != nil {
		return err
	}
	if s.Kind_ != SGD && (s.V < 0 || s.NewV < 0) {
		return fmt.Errorf("%s needs the square average", s.Kind())
	}
	n := s.Elems
	return extents(s.Kind(), s.LR, 1, s.P, n, s.G, n, s.V, n, s.B, n, s.NewP, n, s.NewV, n, s.NewB, n)
}
func (s OptimizerSpec) tileCount() int { return ceilDiv(s.Elems, eltChunk) }
func (s OptimizerSpec) flops() int64   { return 8 * int64(s.Elems) }
func (s OptimizerSpec) gen(g *builder) {
	g.tiles(func(t value.Value) {
		lr := g.ext(g.ld(ci(s.LR)))
		lo := g.mul(t, ci(eltChunk))
		hi := g.smin(g.add(lo, ci(eltChunk)), ci(s.Elems))
		g.loop(lo, hi, nil, func(i value.Value, _ []value.Value) []value.Value {
			get := func(off int) value.Value { return g.ext(g.ld(g.add(ci(off), i))) }
			put := func(v value.Value, off int) {
				if off >= 0 {
					g.st(g.trunc(v), g.add(ci(off), i))
				}
			}
			p := get(s.P)
			gr := get(s.G)
			if s.WeightDecay != 0 {
				gr = g.fadd(gr, g.fmul(cd(s.WeightDecay), p))
			}
			b := get(s.B)
			switch s.Kind_ {
			case RMSProp, RMSPropTF:
				v := get(s.V)
				v = g.fadd(g.fmul(cd(s.Alpha), v), g.fmul(g.fmul(cd(1-s.Alpha), gr), gr))
				if s.Kind_ == RMSProp {
					b = g.fadd(g.fmul(cd(s.Momentum), b), g.fdiv(gr, g.fadd(g.sqrt(v), cd(s.Eps))))
					p = g.fsub(p, g.fmul(lr, b))
				} else {
					b = g.fadd(g.fmul(cd(s.Momentum), b), g.fdiv(g.fmul(lr, gr), g.sqrt(g.fadd(v, cd(s.Eps)))))
					p = g.fsub(p, b)
				}
				put(v, s.NewV)
			case SGD:
				b = g.fadd(g.fmul(cd(s.Momentum), b), gr)
				p = g.fsub(p, g.fmul(lr, b))
			}
			put(p, s.NewP)
			put(b, s.NewB)
			return nil
		})
	})
}

// DropoutTrainSpec is dropout_train with p in [0, 1): element i is kept when
// ir/interp.DropoutKeep(seed, i, p) holds — the SplitMix64 output z for the
// state seed + (i+1)·0x9E3779B97F4A7C15 (Steele, Lea and Flood 2014),
// (z >> 11)·2⁻⁵³ ≥ p — ported bit for bit (wrapping 64-bit arithmetic).
// Results: y = x·float32(1/(1−p)) where kept, else 0, and the 0/1 mask. The
// seed is a run-time value: the 64-bit integer at arena offset Seed (two
// floats holding its low and high 32 bits) plus the constant SeedDelta, so
// that a new seed per step needs no rebuild.
type DropoutTrainSpec struct {
	Elems      int
	P          float64
	Seed       int
	SeedDelta  int64
	X, Y, Mask int
}

func (s DropoutTrainSpec) Kind() string { return "dropout_train" }
func (s DropoutTrainSpec) Validate() error {
	if err := positive("dropout_train", "Elems", s.Elems); err != nil {
		return err
	}
	if !(s.P >= 0 && s.P < 1) {
		return fmt.Errorf("dropout_train: p %v outside [0, 1)", s.P)
	}
	return extents("dropout_train", s.Seed, 2, s.X, s.Elems, s.Y, s.Elems, s.Mask, s.Elems)
}
func (s DropoutTrainSpec) tileCount() int { return ceilDiv(s.Elems, eltChunk) }
func (s DropoutTrainSpec) flops() int64   { return int64(s.Elems) }
func (s DropoutTrainSpec) gen(g *builder) {
	c64 := func(v uint64) value.Value { return constant.NewInt(types.I64, int64(v)) }
	word := func(k int) value.Value {
		return g.b.NewZExt(g.b.NewBitCast(g.ld(ci(s.Seed+k)), types.I32), types.I64)
	}
	g.tiles(func(t value.Value) {
		seed := g.b.NewAdd(g.b.NewOr(word(0), g.b.NewShl(word(1), c64(32))), c64(uint64(s.SeedDelta)))
		scale := cf(float64(float32(1 / (1 - s.P))))
		lo := g.mul(t, ci(eltChunk))
		hi := g.smin(g.add(lo, ci(eltChunk)), ci(s.Elems))
		g.loop(lo, hi, nil, func(i value.Value, _ []value.Value) []value.Value {
			var z value.Value = g.b.NewAdd(seed, g.b.NewMul(g.b.NewAdd(i, c64(1)), c64(0x9E3779B97F4A7C15)))
			z = g.b.NewMul(g.b.NewXor(z, g.b.NewLShr(z, c64(30))), c64(0xBF58476D1CE4E5B9))
			z = g.b.NewMul(g.b.NewXor(z, g.b.NewLShr(z, c64(27))), c64(0x94D049BB133111EB))
			z = g.b.NewXor(z, g.b.NewLShr(z, c64(31)))
			u := g.fmul(g.b.NewUIToFP(g.b.NewLShr(z, c64(11)), f64), cd(1.0/(1<<53)))
			keep := g.b.NewFCmp(enum.FPredOGE, u, cd(s.P))
			x := g.ld(g.add(ci(s.X), i))
			if s.Y >= 0 {
				g.st(g.b.NewSelect(keep, g.fmul(x, scale), cf(0)), g.add(ci(s.Y), i))
			}
			if s.Mask >= 0 {
				g.st(g.b.NewSelect(keep, cf(1), cf(0)), g.add(ci(s.Mask), i))
			}
			return nil
		})
	})
}

// SumSquaresSpec is sum_squares: Σ x² over Elems floats, in float64, a
// one-float result (one tile).
type SumSquaresSpec struct {
	Elems  int
	X, Out int
}

func (s SumSquaresSpec) Kind() string { return "sum_squares" }
func (s SumSquaresSpec) Validate() error {
	if err := positive("sum_squares", "Elems", s.Elems); err != nil {
		return err
	}
	return extents("sum_squares", s.X, s.Elems, s.Out, 1)
}
func (s SumSquaresSpec) tileCount() int { return 1 }
func (s SumSquaresSpec) flops() int64   { return 2 * int64(s.Elems) }
func (s SumSquaresSpec) gen(g *builder) {
	g.tiles(func(_ value.Value) {
		sum := g.channelSum(1, 1, s.Elems, ci(0), func(i value.Value) value.Value {
			x := g.ext(g.ld(g.add(ci(s.X), i)))
			return g.fmul(x, x)
		})
		g.st(g.trunc(sum), ci(s.Out))
	})
}

// GlobalNormScaleSpec is global_norm_scale: min(1, MaxNorm/(√(Σ sᵢ) + Eps))
// of the one-float sums at In, in float64 (PyTorch's clip_grad_norm_
// coefficient; a NaN total gives NaN), one tile.
type GlobalNormScaleSpec struct {
	In           []int
	MaxNorm, Eps float64
	Out          int
}

func (s GlobalNormScaleSpec) Kind() string { return "global_norm_scale" }
func (s GlobalNormScaleSpec) Validate() error {
	if len(s.In) == 0 {
		return fmt.Errorf("global_norm_scale: no operands")
	}
	for _, o := range s.In {
		if err := extents("global_norm_scale", o, 1); err != nil {
			return err
		}
	}
	return extents("global_norm_scale", s.Out, 1)
}
func (s GlobalNormScaleSpec) tileCount() int { return 1 }
func (s GlobalNormScaleSpec) flops() int64   { return int64(len(s.In)) }
func (s GlobalNormScaleSpec) gen(g *builder) {
	g.tiles(func(_ value.Value) {
		var total value.Value = cd(0)
		for _, o := range s.In {
			total = g.fadd(total, g.ext(g.ld(ci(o))))
		}
		coef := g.fdiv(cd(s.MaxNorm), g.fadd(g.sqrt(total), cd(s.Eps)))
		coef = g.b.NewSelect(g.b.NewFCmp(enum.FPredOGT, coef, cd(1)), cd(1), coef)
		g.st(g.trunc(coef), ci(s.Out))
	})
}

// axpy emits y[i] += a·x[i] for i < n over arena offsets x and y (a loop
// with a contiguous body, vectorized by clang -O3).
func (g *builder) axpy(a, x, y value.Value, n int) {
	g.loopN(n, nil, func(i value.Value, _ []value.Value) []value.Value {
		at := g.add(y, i)
		g.st(g.fma(a, g.ld(g.add(x, i)), g.ld(at)), at)
		return nil
	})
}
