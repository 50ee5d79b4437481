package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Tap-major pooling kernels for training (issue 9).
//
// A pooling window is a convolution with one input and one output channel
// and no weights, so the pooling kernels walk it tap by tap, with the tap
// (kh, kw) resolved at generation time, instead of scanning each output's
// window with run-time bounds (about 8 cycles per window element before).
// A tile owns one plane (a group of planes for same-plane average pools,
// avgGroup), so no two threads write the same element.
//
//   - Average pooling whose output plane is its input plane (stride 1,
//     "same" padding: the Inception pooling branches) runs as explicit
//     vectors over the flattened plane (sameTaps): per vector of outputs,
//     the sum over taps of masked loads of the input shifted by the tap
//     (llvm.masked.load; lanes whose pixel is outside the image read
//     nothing). The forward adds the taps in row-major window order from 0,
//     the interpreter's order, then divides by the window's divisor
//     (divisorVec); the gradient first stores dy/divisor in a scratch plane,
//     then gathers dx[q] = Σ_taps scratch[q − δ(tap)] — no scatter of
//     overlapping windows, no atomics. The tap masks and divisors depend
//     only on the position, so a tile runs them once per vector for a group
//     of planes.
//   - Other average pools and all max pools loop over each tap's output
//     rectangle (ConvGeom.taps and rows). maxpool and maxpool_grad keep a
//     running maximum and its in-plane index per output, updated tap by tap
//     in the interpreter's row-major scan order with its rule (the first
//     in-bounds pixel, then a strictly greater value or the first NaN, and
//     nothing replaces a NaN), so the chosen pixel is the interpreter's; the
//     gradient then adds each dy to its pixel in output order. Two max
//     pool shapes take that rule in vectors instead: stride-2 windows over
//     phase planes (maxTapsPhased) and unpadded ones with column stride 2
//     (maxTapsStride2, the Inception stems' "valid" 3x3 pools).
//
// The scratch planes are stack buffers of OH·OW floats (and i32 indexes for
// max), so planes up to poolFastMax outputs use these kernels and larger
// ones the per-window loops of train_kernels.go.

// poolFastMax bounds the output plane (floats) of the tap-major kernels'
// stack scratch: 64 KiB.
const poolFastMax = 16 << 10

func (s PoolGeom) fast() bool { return s.OH*s.OW <= poolFastMax }

// conv is the pooling window as a one-channel convolution geometry.
func (s PoolGeom) conv() ConvGeom {
	return ConvGeom{N: 1, C: 1, H: s.H, W: s.W, O: 1, KH: s.KH, KW: s.KW,
		SH: s.SH, SW: s.SW, PH: s.PH, PW: s.PW, OH: s.OH, OW: s.OW}
}

// divisorAt is the average's divisor of output (oh, ow), a float.
func (s PoolGeom) divisorAt(g *builder, oh, ow value.Value) value.Value {
	if s.IncludePad {
		return cf(float64(s.KH * s.KW))
	}
	y0, y1, x0, x1 := s.window(g, oh, ow)
	return s.divisor(g, y0, y1, x0, x1)
}

// forOutputs calls f(i, oh, ow) for every output of a plane, i = oh·OW+ow.
func (s PoolGeom) forOutputs(g *builder, f func(i, oh, ow value.Value)) {
	g.loopN(s.OH, nil, func(oh value.Value, _ []value.Value) []value.Value {
		g.loopN(s.OW, nil, func(ow value.Value, _ []value.Value) []value.Value {
			f(g.add(g.mul(oh, ci(s.OW)), ow), oh, ow)
			return nil
		})
		return nil
	})
}

// maxTaps computes, for every output of the plane at arena offset x, the
// window maximum into best (base pointer, output index) and, when idx is
// not nil, its in-plane input index into idx (an i32 stack table). The
// tables start at "none" (idx −1, or a first-tap flag kept in idx).
func (s PoolGeom) maxTaps(g *builder, x, best, idx, phases value.Value) {
	if phases != nil {
		s.maxTapsPhased(g, x, best, idx, phases)
		return
	}
	if s.stride2Valid() {
		s.maxTapsStride2(g, x, best, idx)
		return
	}
	c := s.conv()
	g.loopN(s.OH*s.OW, nil, func(i value.Value, _ []value.Value) []value.Value {
		g.stI(ci(-1), idx, i)
		return nil
	})
	c.taps(func(kh, kw, oh0, oh1, ow0, ow1 int) {
		origin := (kh-s.PH)*s.W + kw - s.PW
		xt := g.add(x, ci(origin))
		c.rows(g, oh0, oh1, ow0, ow1, nil, func(i, j value.Value, _ []value.Value) []value.Value {
			v := g.ld(g.add(xt, j))
			b := g.load(best, i)
			id := g.ldI(idx, i)
			first := g.b.NewICmp(enum.IPredSLT, id, c32(0))
			better := g.b.NewAnd(g.b.NewOr(g.b.NewFCmp(enum.FPredOGT, v, b), g.isNaN(v)), g.b.NewXor(g.isNaN(b), constant.True))
			repl := g.b.NewOr(first, better)
			g.store(g.sel(repl, v, b), best, i)
			at := g.b.NewTrunc(g.add(j, ci(origin)), types.I32)
			g.b.NewStore(g.sel(repl, at, id), g.b.NewGetElementPtr(types.I32, idx, i)).Align = 4
			return nil
		})
	})
}

// maxScratch allocates a max pool's stack tables: the window maxima's
// input indexes (padded to whole vectors) and, for a stride-2 window over
// phase planes (ConvGeom.phased), the planes (else nil).
func (s PoolGeom) maxScratch(g *builder) (idx, phases value.Value) {
	L := g.t.VectorLanes
	idx = g.stackI32(ceilDiv(s.OH*s.OW, L) * L)
	if s.conv().phased() {
		phases = g.stackBuf(4 * phaseStride(s.OH*s.OW))
	}
	return idx, phases
}

// maxTapsPhased is maxTaps for a stride-2 window over the phase planes of
// the input (ConvGeom.phased: the 3x3 stride-2 max pool with padding 1):
// the plane is split once into phases, then every vector of outputs takes
// its taps in row-major window order as masked vector loads from the
// tap's phase, shifted by −1 or 0 rows and columns, with maxTaps's rule
// per lane (first in-bounds pixel, then a strictly greater value or the
// first NaN; nothing replaces a NaN). Lanes are valid only where the
// pixel exists (a phase plane of an odd-sized input has a zero row or
// column that is not a pixel).
func (s PoolGeom) maxTapsPhased(g *builder, x, best, idx, phases value.Value) {
	L := g.t.VectorLanes
	PS := phaseStride(s.OH * s.OW)
	g.phaseSplit(phases, x, 1, s.H, s.W, PS)
	vi := func(c int) value.Value { return g.i32Vec(func(int) int { return c }) }
	vt := types.NewVector(uint64(L), types.I1)
	g.planeVecs(s.OH, s.OW, func(pv planeVec) {
		p0, in, oh, ow := pv.p, pv.in, pv.oh, pv.ow
		var bv, iv, have value.Value = g.vzero(), vi(-1), constant.NewZeroInitializer(vt)
		for kh := 0; kh < s.KH; kh++ {
			for kw := 0; kw < s.KW; kw++ {
				a, dh := phaseOf(kh - s.PH)
				b, dw := phaseOf(kw - s.PW)
				// Input pixel (2·ih + a, 2·iw + b).
				r := g.b.NewAdd(g.b.NewMul(g.b.NewAdd(oh, vi(dh)), vi(2)), vi(a))
				c := g.b.NewAdd(g.b.NewMul(g.b.NewAdd(ow, vi(dw)), vi(2)), vi(b))
				ok := g.b.NewAnd(in, g.b.NewAnd(g.b.NewICmp(enum.IPredULT, r, vi(s.H)), g.b.NewICmp(enum.IPredULT, c, vi(s.W))))
				val := g.maskedLoad(phases, g.add(p0, ci((2*a+b)*PS+dh*s.OW+dw)), ok)
				better := g.b.NewAnd(g.b.NewOr(g.b.NewFCmp(enum.FPredOGT, val, bv), g.b.NewFCmp(enum.FPredUNO, val, val)),
					g.b.NewXor(g.b.NewFCmp(enum.FPredUNO, bv, bv), constant.NewVector(vt, trues(L)...)))
				repl := g.b.NewAnd(ok, g.b.NewOr(g.b.NewXor(have, constant.NewVector(vt, trues(L)...)), better))
				bv = g.b.NewSelect(repl, val, bv)
				iv = g.b.NewSelect(repl, g.b.NewAdd(g.b.NewMul(r, vi(s.W)), c), iv)
				have = g.b.NewOr(have, ok)
			}
		}
		g.maskedStore(bv, best, p0, in)
		pt := g.b.NewBitCast(g.b.NewGetElementPtr(types.I32, idx, p0), types.NewPointer(types.NewVector(uint64(L), types.I32)))
		g.b.NewStore(iv, pt).Align = 4
	})
}

// stride2Valid reports an unpadded max pool with column stride 2 that is
// not phased (ConvGeom.phased): the 3x3 stride-2 "valid" pools of
// Inception-v4 and Inception-ResNet (147x147 → 73x73 and smaller).
func (s PoolGeom) stride2Valid() bool { return s.SW == 2 && s.PH == 0 && s.PW == 0 }

// maxTapsStride2 is maxTaps for stride2Valid windows, in vectors of L
// outputs along a row: each tap's inputs (columns 2·ow + kw) are the even
// lanes of two vector loads from the tap's input row, masked to the
// elements an output reads (so nothing outside the row is read), joined by
// one shuffle. Every tap of an unpadded window is in bounds, so the first
// tap starts the maximum and each later one replaces it with maxTaps's
// rule (a strictly greater value or the first NaN; nothing replaces a
// NaN). Before, these pools ran maxTaps's scalar loop (Inception-v4's
// 147x147 pool: 121 ms per training step at batch 16 on Zen 3).
func (s PoolGeom) maxTapsStride2(g *builder, x, best, idx value.Value) {
	L := g.t.VectorLanes
	vt := types.NewVector(uint64(L), types.I1)
	vi := func(f func(l int) int) value.Value { return g.i32Vec(f) }
	even := make([]constant.Constant, L)
	for l := range even {
		even[l] = constant.NewInt(types.I32, int64(2*l))
	}
	evenIdx := constant.NewVector(types.NewVector(uint64(L), types.I32), even...)
	idxF := g.b.NewBitCast(idx, types.NewPointer(f32))
	// vec computes the L outputs (oh, ow0..ow0+n) of a row, n ≤ L valid.
	vec := func(oh, ow0 value.Value, n int) {
		// Element e of the 2L loaded from column 2·ow0 + kw is read
		// by output e/2 when e is even.
		need := func(half int) value.Value {
			el := make([]constant.Constant, L)
			for l := range el {
				e := half*L + l
				el[l] = constant.NewBool(e%2 == 0 && e/2 < n)
			}
			return constant.NewVector(vt, el...)
		}
		lo, hi := need(0), need(1)
		var bv, iv value.Value
		for kh := 0; kh < s.KH; kh++ {
			row := g.mul(g.add(g.mul(oh, ci(s.SH)), ci(kh)), ci(s.W))
			for kw := 0; kw < s.KW; kw++ {
				c0 := g.add(g.add(row, g.mul(ow0, ci(2))), ci(kw))
				a := g.maskedLoad(g.arena, g.add(x, c0), lo)
				b := g.maskedLoad(g.arena, g.add(x, g.add(c0, ci(L))), hi)
				val := g.b.NewShuffleVector(a, b, evenIdx)
				at := g.b.NewAdd(g.splatI32(g.b.NewTrunc(c0, types.I32)), vi(func(l int) int { return 2 * l }))
				if bv == nil {
					bv, iv = val, at
					continue
				}
				better := g.b.NewAnd(g.b.NewOr(g.b.NewFCmp(enum.FPredOGT, val, bv), g.b.NewFCmp(enum.FPredUNO, val, val)),
					g.b.NewFCmp(enum.FPredORD, bv, bv))
				bv = g.b.NewSelect(better, val, bv)
				iv = g.b.NewSelect(better, at, iv)
			}
		}
		o := g.add(g.mul(oh, ci(s.OW)), ow0)
		ivf := g.b.NewBitCast(iv, g.vec)
		if n == L {
			g.vstore(bv, best, o)
			g.vstore(ivf, idxF, o)
			return
		}
		g.maskedStore(bv, best, o, g.prefixMask(n))
		g.maskedStore(ivf, idxF, o, g.prefixMask(n))
	}
	g.loopN(s.OH, nil, func(oh value.Value, _ []value.Value) []value.Value {
		g.loopN(s.OW/L, nil, func(v value.Value, _ []value.Value) []value.Value {
			vec(oh, g.mul(v, ci(L)), L)
			return nil
		})
		if r := s.OW % L; r > 0 {
			vec(oh, ci(s.OW/L*L), r)
		}
		return nil
	})
}

// trues returns n true i1 constants.
func trues(n int) []constant.Constant {
	t := make([]constant.Constant, n)
	for i := range t {
		t[i] = constant.True
	}
	return t
}

// samePlane reports a stride-1 window whose output plane is its input
// plane (3x3, padding 1: the Inception pooling branches). Such planes run
// as explicit vectors over the flattened plane (sameTaps).
func (s PoolGeom) samePlane() bool {
	return s.SH == 1 && s.SW == 1 && s.OH == s.H && s.OW == s.W
}

// planeVec holds the flattened plane positions of one vector: p (i64, the
// first lane's), oh and ow per lane (i32 vectors; lanes past the plane get
// oh = colFar) and the lanes' validity mask.
type planeVec struct {
	p      value.Value
	oh, ow value.Value
	in     value.Value
	hv, wv value.Value
}

// planeVecs calls f for every vector of an H×W plane.
func (g *builder) planeVecs(H, W int, f func(pv planeVec)) {
	L := g.t.VectorLanes
	vi := func(c int) value.Value { return g.i32Vec(func(int) int { return c }) }
	g.loopN(ceilDiv(H*W, L), nil, func(v value.Value, _ []value.Value) []value.Value {
		p0 := g.mul(v, ci(L))
		in, oh, ow := g.pixelVec(p0, 0, H*W, W)
		f(planeVec{p: p0, oh: oh, ow: ow, in: in, hv: vi(H), wv: vi(W)})
		return nil
	})
}

// pixelVec returns the in-plane mask and the (oh, ow) of the lanes of the
// vector of flattened pixels p0+off+[0, lanes) of a plane of P pixels W
// wide, as i32 vectors; lanes past P get oh = colFar, outside every row
// range.
func (g *builder) pixelVec(p0 value.Value, off, P, W int) (in, oh, ow value.Value) {
	vi := func(c int) value.Value { return g.i32Vec(func(int) int { return c }) }
	p := g.b.NewAdd(g.splatI32(g.b.NewTrunc(p0, types.I32)), g.i32Vec(func(l int) int { return off + l }))
	in = g.b.NewICmp(enum.IPredULT, p, vi(P))
	return in, g.b.NewSelect(in, g.b.NewUDiv(p, vi(W)), vi(colFar)), g.b.NewURem(p, vi(W))
}

// sameTaps returns Σ over the window's taps, in row-major order from 0, of
// base[off + p + sign·δ] for the lanes of pv, δ = (kh−PH)·W + kw−PW, zero
// where the pixel (oh + sign·(kh−PH), ow + sign·(kw−PW)) is outside the
// plane (masked loads with the masks of tapMasks: nothing outside is
// read).
func (s PoolGeom) sameTaps(g *builder, pv planeVec, masks []value.Value, base, off value.Value, sign int) value.Value {
	acc := g.vzero()
	for kh := 0; kh < s.KH; kh++ {
		for kw := 0; kw < s.KW; kw++ {
			dh, dw := sign*(kh-s.PH), sign*(kw-s.PW)
			acc = g.fadd(acc, g.maskedLoad(base, g.add(off, g.add(pv.p, ci(dh*s.W+dw))), masks[kh*s.KW+kw]))
		}
	}
	return acc
}

// tapMasks returns, per tap in row-major order, the lanes of pv whose
// pixel (oh + sign·(kh−PH), ow + sign·(kw−PW)) is inside the plane.
func (s PoolGeom) tapMasks(g *builder, pv planeVec, sign int) []value.Value {
	var masks []value.Value
	for kh := 0; kh < s.KH; kh++ {
		for kw := 0; kw < s.KW; kw++ {
			dh, dw := sign*(kh-s.PH), sign*(kw-s.PW)
			ih := g.b.NewAdd(pv.oh, g.i32Vec(func(int) int { return dh }))
			iw := g.b.NewAdd(pv.ow, g.i32Vec(func(int) int { return dw }))
			masks = append(masks, g.b.NewAnd(g.b.NewICmp(enum.IPredULT, ih, pv.hv), g.b.NewICmp(enum.IPredULT, iw, pv.wv)))
		}
	}
	return masks
}

// avgGroup is the planes per tile of a same-plane average pool and its
// gradient: their tap masks and divisors depend only on the position in
// the plane, so a tile computes them once per vector for up to 8 planes
// (the gradient's scratch holds the group's planes, within poolFastMax).
// Other pools have one plane per tile.
func (s PoolGeom) avgGroup() int {
	if s.Max || !s.samePlane() || !s.fast() {
		return 1
	}
	return max(1, min(8, poolFastMax/(s.OH*s.OW)))
}

// groupPlanes runs f(q, p) for the planes p = t·G + q of tile t (G =
// avgGroup; the last tile may have fewer).
func (s PoolGeom) groupPlanes(g *builder, t value.Value, f func(q, p value.Value)) {
	G := s.avgGroup()
	q0 := g.mul(t, ci(G))
	g.loop(ci(0), g.smin(ci(G), g.sub(ci(s.Planes), q0)), nil, func(q value.Value, _ []value.Value) []value.Value {
		f(q, g.add(q0, q))
		return nil
	})
}

// divisorVec is the average's divisor of the outputs of pv, a float vector.
func (s PoolGeom) divisorVec(g *builder, pv planeVec) value.Value {
	if s.IncludePad {
		return g.vconst(float64(s.KH * s.KW))
	}
	vi := func(c int) value.Value { return g.i32Vec(func(int) int { return c }) }
	span := func(o value.Value, pad, k, n int) value.Value {
		var lo, hi value.Value = g.b.NewSub(o, vi(pad)), nil
		hi = g.b.NewAdd(lo, vi(k))
		lo = g.b.NewSelect(g.b.NewICmp(enum.IPredSLT, lo, vi(0)), vi(0), lo)
		hi = g.b.NewSelect(g.b.NewICmp(enum.IPredSGT, hi, vi(n)), vi(n), hi)
		return g.b.NewSub(hi, lo)
	}
	oh := g.b.NewSelect(pv.in, pv.oh, vi(0))
	return g.b.NewSIToFP(g.b.NewMul(span(oh, s.PH, s.KH, s.H), span(pv.ow, s.PW, s.KW, s.W)), g.vec)
}

// maskedStore stores the lanes of v where mask is true at base+off floats.
func (g *builder) maskedStore(v, base, off, mask value.Value) {
	L := g.t.VectorLanes
	f := g.m.declare(fmt.Sprintf("llvm.masked.store.v%df32.p0", L), types.Void,
		g.vec, types.NewPointer(g.vec), types.I32, types.NewVector(uint64(L), types.I1))
	p := g.b.NewBitCast(g.gep(base, off), types.NewPointer(g.vec))
	g.b.NewCall(f, v, p, constant.NewInt(types.I32, 4), mask)
}

// genFast is the tap-major pooling forward (see the file comment).
func (s TrainPoolSpec) genFast(g *builder) {
	c := s.conv()
	var idx, phases value.Value
	if s.Max {
		idx, phases = s.maxScratch(g)
	}
	if !s.Max && s.samePlane() {
		g.tiles(func(t value.Value) {
			g.planeVecs(s.H, s.W, func(pv planeVec) {
				masks, div := s.tapMasks(g, pv, 1), s.divisorVec(g, pv)
				s.groupPlanes(g, t, func(_, p value.Value) {
					x := g.add(ci(s.X), g.mul(p, ci(s.H*s.W)))
					out := g.add(ci(s.Out), g.mul(p, ci(s.OH*s.OW)))
					g.maskedStore(g.fdiv(s.sameTaps(g, pv, masks, g.arena, x, 1), div), g.arena, g.add(out, pv.p), pv.in)
				})
			})
		})
		return
	}
	g.tiles(func(p value.Value) {
		x := g.add(ci(s.X), g.mul(p, ci(s.H*s.W)))
		out := g.add(ci(s.Out), g.mul(p, ci(s.OH*s.OW)))
		if s.Max {
			s.maxTaps(g, x, g.gep(g.arena, out), idx, phases)
			return
		}
		g.fillN(cf(0), out, s.OH*s.OW)
		c.taps(func(kh, kw, oh0, oh1, ow0, ow1 int) {
			xt := g.add(x, ci((kh-s.PH)*s.W+kw-s.PW))
			c.rows(g, oh0, oh1, ow0, ow1, nil, func(i, j value.Value, _ []value.Value) []value.Value {
				o := g.add(out, i)
				g.st(g.fadd(g.ld(o), g.ld(g.add(xt, j))), o)
				return nil
			})
		})
		s.forOutputs(g, func(i, oh, ow value.Value) {
			o := g.add(out, i)
			g.st(g.fdiv(g.ld(o), s.divisorAt(g, oh, ow)), o)
		})
	})
}

// genFast is the tap-major pooling gradient (see the file comment).
func (s TrainPoolGradSpec) genFast(g *builder) {
	c := s.conv()
	P := s.OH * s.OW
	scratch := g.stackBuf(s.avgGroup() * P)
	if !s.Max && s.samePlane() {
		// Per plane q of the tile: scratch[q] = dy/divisor, then dx[i] =
		// Σ_taps scratch[q][i − δ].
		g.tiles(func(t value.Value) {
			g.planeVecs(s.H, s.W, func(pv planeVec) {
				div := s.divisorVec(g, pv)
				s.groupPlanes(g, t, func(q, p value.Value) {
					d := g.maskedLoad(g.arena, g.add(ci(s.DY), g.add(g.mul(p, ci(P)), pv.p)), pv.in)
					g.maskedStore(g.fdiv(d, div), scratch, g.add(g.mul(q, ci(P)), pv.p), pv.in)
				})
			})
			g.planeVecs(s.H, s.W, func(pv planeVec) {
				masks := s.tapMasks(g, pv, -1)
				s.groupPlanes(g, t, func(q, p value.Value) {
					dx := g.add(ci(s.DX), g.mul(p, ci(s.H*s.W)))
					g.maskedStore(s.sameTaps(g, pv, masks, scratch, g.mul(q, ci(P)), -1), g.arena, g.add(dx, pv.p), pv.in)
				})
			})
		})
		return
	}
	var idx, phases value.Value
	if s.Max {
		idx, phases = s.maxScratch(g)
	}
	g.tiles(func(p value.Value) {
		dx := g.add(ci(s.DX), g.mul(p, ci(s.H*s.W)))
		dy := g.add(ci(s.DY), g.mul(p, ci(s.OH*s.OW)))
		s.initPlane(g, dx, p)
		if s.Max {
			s.maxTaps(g, g.add(ci(s.X), g.mul(p, ci(s.H*s.W))), scratch, idx, phases)
			// Outputs without an in-bounds pixel (none for PyTorch's
			// padding ≤ kernel/2) keep index −1 and add nothing.
			g.loopN(s.OH*s.OW, nil, func(i value.Value, _ []value.Value) []value.Value {
				id := g.ldI(idx, i)
				none := g.b.NewICmp(enum.IPredSLT, id, c32(0))
				o := g.add(dx, g.sel(none, ci(0), g.b.NewSExt(id, i64)))
				g.st(g.fadd(g.ld(o), g.sel(none, cf(0), g.ld(g.add(dy, i)))), o)
				return nil
			})
			return
		}
		s.forOutputs(g, func(i, oh, ow value.Value) {
			g.store(g.fdiv(g.ld(g.add(dy, i)), s.divisorAt(g, oh, ow)), scratch, i)
		})
		c.taps(func(kh, kw, oh0, oh1, ow0, ow1 int) {
			xt := g.add(dx, ci((kh-s.PH)*s.W+kw-s.PW))
			c.rows(g, oh0, oh1, ow0, ow1, nil, func(i, j value.Value, _ []value.Value) []value.Value {
				o := g.add(xt, j)
				g.st(g.fadd(g.ld(o), g.load(scratch, i)), o)
				return nil
			})
		})
	})
}
