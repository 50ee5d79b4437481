package codegen

import (
	"fmt"
	"math"

	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// The activation kinds of ElementwiseSpec (sigmoid, tanh, SiLU, hard-swish,
// clip, subtraction) and two kernels for squeeze-and-excitation style
// networks: the per-channel broadcast multiply (ChannelMulSpec) and global
// max pooling (GlobalMaxPoolSpec).
//
// The transcendental functions use the builder's vectorized Cephes expf
// (builder.exp: range reduction x = n·ln2 + r, a degree-6 polynomial for
// e^r, 2^n from the exponent bits), so they stay vector code: llvm.exp
// would be scalarized into libm calls on x86. sigmoid(x) = 1/(1+e^-x);
// tanh is Cephes tanhf (an odd degree-11 polynomial for |x| < 0.625, else
// sign(x)·(1 − 2/(e^{2|x|}+1))); SiLU = x·sigmoid(x). A NaN input gives
// NaN explicitly (the exponent-bit construction would convert a NaN to an
// integer, which LLVM treats as poison). Measured against float64
// (TestActivationKernels: 65536 points, randn·4, a sweep of [-20, 20],
// ±100, ±88.5, ±1e-30, NaN, ±Inf; AVX-512, AVX2, 4-lane): max absolute
// error 6.0e-8 for sigmoid and tanh (one float32 ulp at 1), 1.9e-6 for
// SiLU and hard-swish (at |x| = 100, i.e. 1.9e-8 × max|ref|); clip and sub
// are exact. All are within 1e-5 × max|ref|.

// binary reports whether the op reads In2Off.
func (o EltOp) binary() bool { return o == EltAdd || o == EltSub }

// zeroPreserving reports whether op maps 0 to 0 (so padding lanes stay
// zero without masking).
func (s ElementwiseSpec) zeroPreserving() bool {
	switch s.Op {
	case EltSigmoid:
		return false
	case EltClip:
		return s.C <= 0 && 0 <= s.Hi
	}
	return true
}

// like returns constant c as a float or a vector of floats, as x.
func (g *builder) like(x value.Value, c float64) value.Value {
	if x.Type().Equal(g.vec) {
		return g.vconst(c)
	}
	return cf(c)
}

// fmin returns x < y ? x : y (a NaN in x propagates).
func (g *builder) fmin(x, y value.Value) value.Value {
	return g.b.NewSelect(g.b.NewFCmp(enum.FPredOGT, x, y), y, x)
}

// keepNaN returns x where x is NaN, else y.
func (g *builder) keepNaN(x, y value.Value) value.Value {
	return g.b.NewSelect(g.isNaN(x), x, y)
}

// sigmoid returns 1/(1+e^-x) for x >= 0 and e^x/(1+e^x) for x < 0, from
// t = e^-|x|: the numerator is 1 or t. For x < -87.3 t flushes to zero, so
// sigmoid(-Inf) is exactly 0 (as in the interpreter; 1/(1+e^88.4) would be
// 4e-39 and make -Inf·sigmoid(-Inf) -Inf instead of NaN). NaN stays NaN.
func (g *builder) sigmoid(x value.Value) value.Value {
	ax := g.b.NewCall(g.m.intrinsic("llvm.fabs", x.Type(), 1), x)
	t := g.exp(g.b.NewFNeg(ax))
	num := g.b.NewSelect(g.b.NewFCmp(enum.FPredOGE, x, g.like(x, 0)), g.like(x, 1), t)
	s := g.b.NewFDiv(num, g.fadd(g.like(x, 1), t))
	return g.keepNaN(x, s)
}

// tanh is Cephes tanhf (see the file comment); NaN stays NaN.
func (g *builder) tanh(x value.Value) value.Value {
	ax := g.b.NewCall(g.m.intrinsic("llvm.fabs", x.Type(), 1), x)
	// |x| >= 0.625: 1 - 2/(e^{2|x|} + 1), with the sign of x.
	big := g.fsub(g.like(x, 1), g.b.NewFDiv(g.like(x, 2), g.fadd(g.exp(g.fadd(ax, ax)), g.like(x, 1))))
	big = g.b.NewCall(g.m.intrinsic("llvm.copysign", x.Type(), 2), big, x)
	// |x| < 0.625: x + x^3 P(x^2).
	z := g.fmul(x, x)
	p := g.like(x, -5.70498872745e-3)
	for _, c := range []float64{2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1} {
		p = g.fma(p, z, g.like(x, c))
	}
	small := g.fma(g.fmul(p, z), x, x)
	r := g.b.NewSelect(g.b.NewFCmp(enum.FPredOLT, ax, g.like(x, 0.625)), small, big)
	return g.keepNaN(x, r)
}

// eltExt computes the activation and binary kinds added in this file.
func (g *builder) eltExt(s ElementwiseSpec, x, y value.Value) value.Value {
	switch s.Op {
	case EltSub:
		return g.fsub(x, y)
	case EltSigmoid:
		return g.sigmoid(x)
	case EltTanh:
		return g.tanh(x)
	case EltSiLU:
		// x·sigmoid(x); -Inf gives -Inf·0 = NaN, as PyTorch's x/(1+e^-x).
		return g.fmul(x, g.sigmoid(x))
	case EltHardSwish:
		r := g.fmin(g.fmax(g.fadd(x, g.like(x, 3)), g.like(x, 0)), g.like(x, 6))
		return g.fmul(g.fmul(x, r), g.like(x, 1.0/6))
	case EltClip:
		return g.fmin(g.fmax(x, g.like(x, float64(s.C))), g.like(x, float64(s.Hi)))
	}
	panic(fmt.Sprintf("codegen: eltExt of %s", s.Op))
}

// maskPadding returns v with the padding lanes of a blocked value set to
// zero (see ElementwiseSpec.Channels). e is the physical element index of
// v's first lane (a multiple of the vector width for a vector). Element e
// of [N][cb][Pixels][B] is in channel block (e / (Pixels·B)) mod cb and lane
// e mod B; a lane is padding when its block is the last and its lane index
// is at least Channels mod B.
func (g *builder) maskPadding(s ElementwiseSpec, v, e value.Value) value.Value {
	B := g.t.Block
	rem := s.Channels % B
	if s.Channels == 0 || rem == 0 || s.zeroPreserving() {
		return v
	}
	cb := ceilDiv(s.Channels, B)
	last := g.icmp(enum.IPredEQ, g.urem(g.udiv(e, s.Pixels*B), cb), ci(cb-1))
	lane := g.urem(e, B)
	var pad value.Value
	if vt, ok := v.Type().(*types.VectorType); ok {
		it := types.NewVector(vt.Len, i64)
		iota := make([]constant.Constant, vt.Len)
		bound := make([]constant.Constant, vt.Len)
		for i := range iota {
			iota[i] = constant.NewInt(i64, int64(i))
			bound[i] = constant.NewInt(i64, int64(rem))
		}
		ins := g.b.NewInsertElement(constant.NewUndef(it), lane, ci(0))
		sp := g.b.NewShuffleVector(ins, constant.NewUndef(it), constant.NewZeroInitializer(types.NewVector(vt.Len, types.I32)))
		idx := g.b.NewAdd(sp, constant.NewVector(it, iota...))
		pad = g.b.NewICmp(enum.IPredUGE, idx, constant.NewVector(it, bound...))
		masked := g.b.NewSelect(pad, g.vzero(), v)
		return g.b.NewSelect(last, masked, v)
	}
	pad = g.b.NewAnd(last, g.icmp(enum.IPredUGE, lane, ci(rem)))
	return g.b.NewSelect(pad, cf(0), v)
}

// ChannelMulSpec is the per-channel broadcast multiply of
// squeeze-and-excitation,
//
//	out[n][c][p] = in[n][c][p] * scale[n][c]
//
// with the scale a run-time value in the arena (shape [N,C,1,1]). Blocked:
// in and out are NCHW{B}c ([N][ceil(C/B)][HW][B]) and the scale
// [N][ceil(C/B)][B]; padding lanes stay zero when the input's are and the
// scale's are finite. Plain: in and out [N][C][HW], the scale [N][C]. The
// output may be the input exactly.
type ChannelMulSpec struct {
	N, C, HW                int
	Blocked                 bool
	InOff, ScaleOff, OutOff int
}

// Validate checks the spec against the block size b of a target.
func (s ChannelMulSpec) Validate(b int) error {
	const w = "channel_mul"
	if err := positive(w, "N", s.N, "C", s.C, "HW", s.HW); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "ScaleOff", s.ScaleOff, "OutOff", s.OutOff); err != nil {
		return err
	}
	act, vec := prod(s.N, s.C, s.HW), prod(s.N, s.C)
	if s.Blocked {
		act, vec = prod(s.N, ceilDiv(s.C, b), b, s.HW), prod(s.N, ceilDiv(s.C, b), b)
	}
	for _, e := range []struct {
		n       string
		off, sz int
	}{{"input", s.InOff, act}, {"output", s.OutOff, act}, {"scale", s.ScaleOff, vec}} {
		if err := checkExtent(w, e.n, e.off, e.sz); err != nil {
			return err
		}
	}
	if s.InOff != s.OutOff && Overlap(s.InOff, act, s.OutOff, act) {
		return fmt.Errorf("%s: input partially overlaps output", w)
	}
	if Overlap(s.ScaleOff, vec, s.OutOff, act) {
		return fmt.Errorf("%s: scale overlaps output", w)
	}
	return nil
}

// ChannelMul adds a per-channel multiply kernel (see ChannelMulSpec).
// Blocked: a tile is one channel block of one image, its B scales loaded
// once into B/V vectors, one multiply per vector. Plain: a tile is one
// image; per channel the scale is splat over a vector loop and a scalar
// tail.
func (m *Module) ChannelMul(name string, s ChannelMulSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	tiles := s.N
	if s.Blocked {
		tiles = s.N * ceilDiv(s.C, b)
	}
	k := Kernel{Name: name, Kind: "channel_mul", Tiles: tiles, Flops: int64(s.N) * int64(s.C) * int64(s.HW)}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		g.tiles(func(t value.Value) {
			if s.Blocked {
				base := g.mul(t, ci(s.HW*b))
				in := g.gep(g.arena, g.add(base, ci(s.InOff)))
				out := g.gep(g.arena, g.add(base, ci(s.OutOff)))
				sp := g.gep(g.arena, g.add(g.mul(t, ci(b)), ci(s.ScaleOff)))
				sc := make([]value.Value, b/V)
				for j := range sc {
					sc[j] = g.vload(sp, ci(j*V))
				}
				g.loopN(s.HW, nil, func(p value.Value, _ []value.Value) []value.Value {
					o := g.mul(p, ci(b))
					pi, po := g.gep(in, o), g.gep(out, o)
					for j := range sc {
						g.vstore(g.fmul(g.vload(pi, ci(j*V)), sc[j]), po, ci(j*V))
					}
					return nil
				})
				return
			}
			base := g.mul(t, ci(s.C*s.HW))
			g.loopN(s.C, nil, func(c value.Value, _ []value.Value) []value.Value {
				row := g.add(base, g.mul(c, ci(s.HW)))
				in := g.gep(g.arena, g.add(row, ci(s.InOff)))
				out := g.gep(g.arena, g.add(row, ci(s.OutOff)))
				sc := g.load(g.arena, g.add(g.add(g.mul(t, ci(s.C)), c), ci(s.ScaleOff)))
				if nv := s.HW / V; nv > 0 {
					vsc := g.splat(sc)
					g.loopN(nv, nil, func(i value.Value, _ []value.Value) []value.Value {
						o := g.mul(i, ci(V))
						g.vstore(g.fmul(g.vload(in, o), vsc), out, o)
						return nil
					})
				}
				for i := s.HW / V * V; i < s.HW; i++ {
					g.store(g.fmul(g.load(in, ci(i)), sc), out, ci(i))
				}
				return nil
			})
		})
		return nil
	})
}

// GlobalMaxPoolSpec is the maximum over H and W: NCHW{B}c at arena+InOff
// to [N][ceil(C/B)][1][1][B] at arena+OutOff. A NaN anywhere in a plane
// gives NaN.
type GlobalMaxPoolSpec struct {
	N, C, H, W    int
	InOff, OutOff int
}

// Validate checks the spec against the block size b of a target.
func (s GlobalMaxPoolSpec) Validate(b int) error {
	const w = "global_maxpool"
	if err := positive(w, "N", s.N, "C", s.C, "H", s.H, "W", s.W); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "OutOff", s.OutOff); err != nil {
		return err
	}
	cb := ceilDiv(s.C, b)
	in, out := prod(s.N, cb, b, s.H, s.W), prod(s.N, cb, b)
	if err := checkExtent(w, "input", s.InOff, in); err != nil {
		return err
	}
	if err := checkExtent(w, "output", s.OutOff, out); err != nil {
		return err
	}
	if Overlap(s.InOff, in, s.OutOff, out) {
		return fmt.Errorf("%s: input overlaps output", w)
	}
	return nil
}

// GlobalMaxPool adds a global max pooling kernel (see GlobalMaxPoolSpec).
// A tile is one channel block of one image: B/V accumulators start at the
// first pixel and take fmaxKeep of each further pixel, with a NaN flag
// or-accumulated beside them (as Pool does: one vmaxps per vector on the
// dependency chain); lanes that saw a NaN are NaN at the end.
func (m *Module) GlobalMaxPool(name string, s GlobalMaxPoolSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	cb := ceilDiv(s.C, b)
	k := Kernel{Name: name, Kind: "global_maxpool", Tiles: s.N * cb, Flops: int64(s.N*s.C) * int64(s.H*s.W)}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		vpb := b / V
		hw := s.H * s.W
		g.tiles(func(t value.Value) {
			in := g.gep(g.arena, g.add(g.mul(t, ci(hw*b)), ci(s.InOff)))
			acc := make([]value.Value, 2*vpb)
			for j := 0; j < vpb; j++ {
				x := g.vload(in, ci(j*V))
				acc[j], acc[vpb+j] = x, g.isNaN(x)
			}
			if hw > 1 {
				acc = g.loopN(hw-1, acc, func(i value.Value, acc []value.Value) []value.Value {
					px := g.gep(in, g.mul(g.add(i, ci(1)), ci(b)))
					out := make([]value.Value, len(acc))
					for j := 0; j < vpb; j++ {
						x := g.vload(px, ci(j*V))
						out[j] = g.fmaxKeep(acc[j], x)
						out[vpb+j] = g.b.NewOr(acc[vpb+j], g.isNaN(x))
					}
					return out
				})
			}
			out := g.gep(g.arena, g.add(g.mul(t, ci(b)), ci(s.OutOff)))
			for j := 0; j < vpb; j++ {
				g.vstore(g.b.NewSelect(acc[vpb+j], g.vconst(math.NaN()), acc[j]), out, ci(j*V))
			}
		})
		return nil
	})
}
