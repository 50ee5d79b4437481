package codegen

import (
	"fmt"

	kir "github.com/kiln-dev/kiln/ir"

	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Grouped convolutions whose per-group channel counts are not multiples of
// the block B run on the dense kernel over a block-diagonal weight: the
// groups are united into block-aligned super-groups (ConvSpec.Groups, the
// lowering's choice) and each super-group's weight holds its groups' weights
// on the diagonal and zeros elsewhere. The zeros alone would compute every
// finite result exactly, but 0·NaN and 0·Inf are NaN: a non-finite input of
// one group would leak into the other groups of its super-group. So each
// row segment first checks its input (guardMasked, nonFinite): all finite,
// the dense kernel's FMAs run unchanged; otherwise the FMAs are masked
// (ConvSpec.MaskIn, MaskOut): output lane o adds input channel i only
// where both belong to the same group, o/MaskOut == i/MaskIn (maskedFMA: a
// masked vfmadd on AVX-512, an AND of the broadcast input elsewhere), so a
// NaN or Inf stays in its group, as in the interpreter and PyTorch. Each
// output lane's group is computed once per output-channel sub-group, each
// input channel's once per channel.
//
// Cost (BENCHMARKS.md, one 3x3 conv at 28x28): a finite input runs at the
// dense kernel's speed over the super-groups (two groups of 24 channels:
// 144 us against 143 us for the dense 48->48 conv on AVX-512), i.e. at
// the block-aligned grouped kernel's rate divided by the groups per
// super-group. Masking every FMA cost 1.1x on AVX-512 and 2x on AVX2,
// hence the finiteness check (guardMasked).

// validateMask checks MaskIn and MaskOut against the super-groups.
func (s ConvSpec) validateMask() error {
	if s.MaskIn == 0 && s.MaskOut == 0 {
		return nil
	}
	g := s.groups()
	if s.MaskIn <= 0 || s.MaskOut <= 0 || s.C%g != 0 || s.O%g != 0 || (s.C/g)%s.MaskIn != 0 || (s.O/g)%s.MaskOut != 0 ||
		(s.C/g)/s.MaskIn != (s.O/g)/s.MaskOut {
		return fmt.Errorf("conv: lane masks of %d input and %d output channels per group do not divide the %d groups of %d input and %d output channels",
			s.MaskIn, s.MaskOut, g, s.C/max(g, 1), s.O/max(g, 1))
	}
	return nil
}

// i32Vec is <VectorLanes x i32>.
func (c *convGen) i32Vec() types.Type {
	return types.NewVector(uint64(c.t.VectorLanes), types.I32)
}

// laneGroups returns, for each of the ocv output vectors of the current
// output-channel sub-group (block ocb0 + v/vpb, lanes (v%vpb)·V ...), the
// group of each lane within its super-group: (local channel)/MaskOut as
// <V x i32>. nil when the spec has no masks.
func (c *convGen) laneGroups(ocv int) []value.Value {
	s := c.p.s
	if s.MaskOut == 0 {
		return nil
	}
	V := c.t.VectorLanes
	vt := c.i32Vec()
	iota := make([]constant.Constant, V)
	div := make([]constant.Constant, V)
	for l := range iota {
		iota[l] = constant.NewInt(types.I32, int64(l))
		div[l] = constant.NewInt(types.I32, int64(s.MaskOut))
	}
	out := make([]value.Value, ocv)
	for v := range out {
		g, j := v/c.vpb, v%c.vpb
		// Local output channel of the vector's first lane.
		first := c.add(c.mul(c.urem(c.add(c.ocb0, ci(g)), c.p.ocbg), ci(c.p.b)), ci(j*V))
		f32 := c.b.NewTrunc(first, types.I32)
		ins := c.b.NewInsertElement(constant.NewUndef(vt), f32, constant.NewInt(types.I32, 0))
		sp := c.b.NewShuffleVector(ins, constant.NewUndef(vt), constant.NewZeroInitializer(vt))
		lanes := c.b.NewAdd(sp, constant.NewVector(vt.(*types.VectorType), iota...))
		out[v] = c.b.NewUDiv(lanes, constant.NewVector(vt.(*types.VectorType), div...))
	}
	return out
}

// groupMasks returns, for input channel ic of local input block icb, the
// lane masks (<V x i1>) of the output vectors whose lanes are in the
// channel's group; nil without masks.
func (c *convGen) groupMasks(laneGroups []value.Value, icb, ic value.Value) []value.Value {
	if laneGroups == nil {
		return nil
	}
	vt := c.i32Vec()
	gi := c.b.NewTrunc(c.udiv(c.add(c.mul(icb, ci(c.p.b)), ic), c.p.s.MaskIn), types.I32)
	ins := c.b.NewInsertElement(constant.NewUndef(vt), gi, constant.NewInt(types.I32, 0))
	sp := c.b.NewShuffleVector(ins, constant.NewUndef(vt), constant.NewZeroInitializer(vt))
	out := make([]value.Value, len(laneGroups))
	for v, lg := range laneGroups {
		out[v] = c.b.NewICmp(enum.IPredEQ, lg, sp)
	}
	return out
}

// maskedFMA returns x·w + acc in the lanes of masks[v] and acc elsewhere
// when masks is set. With AVX-512 mask registers the FMA's result is
// selected (a masked vfmadd); elsewhere x is zeroed outside the mask (an
// AND; w is zero there too, so the lane adds 0·0 whatever x is), which
// measured 1.3x faster on AVX2 than a blend of the FMA's result and 1.3x
// slower on AVX-512.
func (c *convGen) maskedFMA(masks []value.Value, v int, x, w, acc value.Value) value.Value {
	switch {
	case masks == nil:
		return c.fma(x, w, acc)
	case c.t.VectorLanes == 16:
		return c.b.NewSelect(masks[v], c.fma(x, w, acc), acc)
	}
	return c.fma(c.b.NewSelect(masks[v], x, c.vzero()), w, acc)
}

// guardMasked emits body for the output pixels [start, start+l) of the
// current row: for a masked grouped convolution twice, the lane-masked FMAs
// where the segment's input holds a NaN or Inf (nonFinite), the dense
// kernel's unmasked FMAs where it is all finite (the common case: the
// off-diagonal zeros then add exact zeros); once, unmasked, otherwise.
// (A plain input is always masked: the check reads NCHW{B}c rows.)
func (c *convGen) guardMasked(start value.Value, l int, body func()) {
	s := c.p.s
	switch {
	case s.MaskOut == 0:
		c.masked = false
		body()
	case s.InPlain:
		c.masked = true
		body()
	default:
		_, isConst := constOf(start)
		c.ifElse(c.nonFinite(start, l, isConst),
			func() { c.masked = true; body() },
			func() { c.masked = false; body() })
		c.masked = false
	}
}

// nonFinite returns an i1 that is true when an input element the output
// pixels [pos, pos+w) of the current row read in the tile's super-group is
// NaN or ±Inf: over every input block of the super-group and every valid
// kernel row, the contiguous NCHW{B}c run of pixels from the first tap to
// the last (clamped to the row when prune, i.e. pos is a constant), as the
// OR of the bit patterns of x·0, whose exponent bits are set exactly when
// some x is not finite. It reads each input element about once per kernel
// row, against KW·OCV FMAs per element and output-channel sub-group.
func (c *convGen) nonFinite(pos value.Value, w int, prune bool) value.Value {
	p, s, b := c.p, c.p.s, c.p.b
	V := c.t.VectorLanes
	_, dw := s.dil()
	dh, _ := s.dil()
	ist := kir.NCHWc(b).ActivationStrides([]int{s.N, s.C, p.rh, p.rw}, b)
	lo := c.sub(c.mul(pos, ci(s.SW)), ci(s.PW))
	n := (w-1)*s.SW + (s.KW-1)*dw + 1
	if prune {
		cp, _ := constOf(pos)
		l := int(cp)*s.SW - s.PW
		hi := min(l+n, p.rw)
		l = max(l, 0)
		lo, n = ci(l), max(hi-l, 0)
	}
	if n == 0 {
		return constant.False
	}
	// x·0 is ±0 for a finite x and NaN otherwise; OR-ing the bit patterns
	// (a one-cycle dependency chain, the multiplies independent) leaves
	// exponent bits set exactly when some x was not finite.
	vt := c.i32Vec()
	acc := []value.Value{constant.NewZeroInitializer(vt)}
	acc = c.loopN(p.icb, acc, func(icb value.Value, acc []value.Value) []value.Value {
		return c.loop(c.khLo, c.khHi, acc, func(kh value.Value, acc []value.Value) []value.Value {
			ih := c.add(c.sub(c.mul(c.oh, ci(s.SH)), ci(s.PH)), c.mul(kh, ci(dh)))
			row := c.add(c.add(c.mul(c.n, ci(ist.N)), c.mul(c.add(c.icbBase, icb), ci(ist.Block))),
				c.add(c.mul(ih, ci(ist.Row)), c.mul(lo, ci(ist.Pixel))))
			in := c.gep(c.arena, c.add(row, ci(s.InOff)))
			return c.loop(ci(0), ci(n*b/V), acc, func(i value.Value, acc []value.Value) []value.Value {
				z := c.b.NewBitCast(c.fmul(c.vload(in, c.mul(i, ci(V))), c.vzero()), vt)
				return []value.Value{c.b.NewOr(acc[0], z)}
			})
		})
	})
	exp := make([]constant.Constant, V)
	for l := range exp {
		exp[l] = constant.NewInt(types.I32, 0x7f800000)
	}
	bits := c.b.NewAnd(acc[0], constant.NewVector(vt.(*types.VectorType), exp...))
	any := c.b.NewICmp(enum.IPredNE, bits, constant.NewZeroInitializer(vt))
	return c.b.NewICmp(enum.IPredNE, c.b.NewBitCast(any, types.NewInt(uint64(V))), constant.NewInt(types.NewInt(uint64(V)), 0))
}
