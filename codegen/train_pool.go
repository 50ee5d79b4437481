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
//     (maxTapsStride2, the Inception stems' "valid" 3x3 pools). The
//     phased ones split each plane one plane ahead (splitAhead), and
//     their gradient adds dy tap by tap in registers (maxGradPhased).
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
		g.phaseSplit(phases, x, 1, s.H, s.W, phaseStride(s.OH*s.OW))
		s.maxTapsPhased(g, best, idx, phases, false)
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
		phases = g.stackBuf(8 * phaseStride(s.OH*s.OW))
	}
	return idx, phases
}

// splitAhead returns the phase planes of plane t of a tile loop at x(t),
// split (builder.phaseSplit) one plane ahead into the two halves of
// phases (maxScratch), alternately: plane t+1 is split before plane t is
// pooled. Split and read at once, the taps' shifted vector loads each
// overlapped several of the split's stores still in flight, which the
// CPU cannot forward, and waited for them to retire (Zen 5: the mini nets'
// 14x14 pool ran at 500 cycles a plane).
func (s PoolGeom) splitAhead(g *builder, t value.Value, x func(t value.Value) value.Value, phases value.Value) value.Value {
	PS := phaseStride(s.OH * s.OW)
	buf := func(t value.Value) value.Value { return g.gep(phases, g.mul(g.b.NewAnd(t, ci(1)), ci(4*PS))) }
	split := func(t value.Value) { g.phaseSplit(buf(t), x(t), 1, s.H, s.W, PS) }
	g.ifThen(g.icmp(enum.IPredEQ, t, g.begin), func() { split(t) })
	next := g.add(t, ci(1))
	g.ifThen(g.icmp(enum.IPredSLT, next, g.end), func() { split(next) })
	return buf(t)
}

// maxTapsPhased is maxTaps for a stride-2 window over the phase planes of
// the input (ConvGeom.phased: the 3x3 stride-2 max pool with padding 1):
// the plane is split once into phases, then every vector of outputs takes
// its taps in row-major window order as masked vector loads from the
// tap's phase, shifted by −1 or 0 rows and columns, with maxTaps's rule
// per lane (first in-bounds pixel, then a strictly greater value or the
// first NaN; nothing replaces a NaN). Lanes are valid only where the
// pixel exists (a phase plane of an odd-sized input has a zero row or
// column that is not a pixel). With ids, idx gets the winning tap's index
// kh·KW + kw instead of the pixel's (−1: none), for maxGradPhased. The
// caller splits the plane into phases (phaseSplit, splitAhead).
func (s PoolGeom) maxTapsPhased(g *builder, best, idx, phases value.Value, ids bool) {
	L := g.t.VectorLanes
	PS := phaseStride(s.OH * s.OW)
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
				if ids {
					iv = g.b.NewSelect(repl, vi(kh*s.KW+kw), iv)
				} else {
					iv = g.b.NewSelect(repl, g.b.NewAdd(g.b.NewMul(r, vi(s.W)), c), iv)
				}
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

// planeVecs calls f for every vector of an H×W plane. Planes of at most
// planeUnroll vectors are unrolled: each vector's positions are then
// constants, and so are the masks and indexes derived from them (the
// mini nets' 7x7 max pool: 4 vectors of 9 taps per plane, 8192 planes).
func (g *builder) planeVecs(H, W int, f func(pv planeVec)) {
	L := g.t.VectorLanes
	vi := func(c int) value.Value { return g.i32Vec(func(int) int { return c }) }
	one := func(p0 value.Value) {
		in, oh, ow := g.pixelVec(p0, 0, H*W, W)
		f(planeVec{p: p0, oh: oh, ow: ow, in: in, hv: vi(H), wv: vi(W)})
	}
	if nv := ceilDiv(H*W, L); nv <= planeUnroll {
		for v := 0; v < nv; v++ {
			one(ci(v * L))
		}
		return
	}
	g.loopN(ceilDiv(H*W, L), nil, func(v value.Value, _ []value.Value) []value.Value {
		one(g.mul(v, ci(L)))
		return nil
	})
}

// planeUnroll is the most vectors of a plane that planeVecs unrolls.
const planeUnroll = 4

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
		if phases != nil {
			s.maxTapsPhased(g, g.gep(g.arena, out), idx, s.splitAhead(g, p, func(t value.Value) value.Value {
				return g.add(ci(s.X), g.mul(t, ci(s.H*s.W)))
			}, phases), false)
			return
		}
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
	if phases != nil && ceilDiv(s.OH*s.OW, g.t.VectorLanes) <= maxGradVecs {
		s.maxGradPhased(g, scratch, idx, phases)
		return
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

// maxGradPhased is the max pooling gradient over phase planes
// (ConvGeom.phased: the 3x3 stride-2 pool with padding 1) in vectors held
// in registers: per plane, maxTapsPhased finds each output's winning tap;
// then each vector of each phase plane of dx (the addend split into
// phases, or zeros) takes, tap by tap, the dy of the outputs whose window
// reaches it through that tap and which that tap won: the tap's shift
// (⌊(k−pad)/2⌋ ∈ {−1, 0} rows and columns) makes them the lanes of dy and
// of the winners a constant number of lanes further on, one two-vector
// shuffle each. The phases are then merged back into dx, interleaved
// from the registers.
// Taps run in descending order: the windows that share a pixel reach it
// by taps that fall as the output index rises, so every pixel takes its
// contributions in output order (a select, not an add of zero, where a
// tap did not win), as the scalar loop over outputs did, and the sums are
// its bits. Before, that loop ran per output (Zen 5, the mini nets'
// 8192-plane 14x14 pool at batch 128, one thread: 1.5–1.7 ms).
// maxGradVecs is the most vectors of an output plane that maxGradPhased,
// fully unrolled, takes; larger planes add dy output by output.
const maxGradVecs = 16

func (s TrainPoolGradSpec) maxGradPhased(g *builder, best, idx, phases value.Value) {
	L := g.t.VectorLanes
	P := s.OH * s.OW
	PS := phaseStride(P)
	NV := ceilDiv(P, L)
	var acc value.Value // the addend's phase planes
	if s.Acc >= 0 {
		acc = g.stackBuf(4 * PS)
	}
	vi := func(c int) value.Value { return g.i32Vec(func(int) int { return c }) }
	vt := types.NewVector(uint64(L), types.I32)
	g.tiles(func(p value.Value) {
		plane := g.mul(p, ci(s.H*s.W))
		dy := g.add(ci(s.DY), g.mul(p, ci(P)))
		s.maxTapsPhased(g, best, idx, s.splitAhead(g, p, func(t value.Value) value.Value {
			return g.add(ci(s.X), g.mul(t, ci(s.H*s.W)))
		}, phases), true)
		if s.Acc >= 0 {
			g.phaseSplit(acc, g.add(ci(s.Acc), plane), 1, s.H, s.W, PS)
		}
		// The plane's dy and winners, then pad vectors (no dy, no
		// winner) as far as the largest shift reaches.
		pad := ceilDiv(s.OW+1, L) + 1
		ds, ws := make([]value.Value, NV+pad), make([]value.Value, NV+pad)
		for v := 0; v < NV; v++ {
			in := g.prefixMask(P - v*L)
			ds[v] = g.maskedLoad(g.arena, g.add(dy, ci(v*L)), in)
			w := g.b.NewLoad(vt, g.b.NewBitCast(g.b.NewGetElementPtr(types.I32, idx, ci(v*L)), types.NewPointer(vt)))
			w.Align = 4
			ws[v] = g.b.NewSelect(in, w, vi(-1))
		}
		for v := NV; v < NV+pad; v++ {
			ds[v], ws[v] = g.vzero(), vi(-1)
		}
		// at returns lanes o..o+L of xs.
		at := func(xs []value.Value, o int) value.Value {
			v, r := o/L, o%L
			if r == 0 {
				return xs[v]
			}
			return g.b.NewShuffleVector(xs[v], xs[v+1], g.i32Vec(func(l int) int { return r + l }))
		}
		var res [4][]value.Value
		for ph := 0; ph < 4; ph++ {
			res[ph] = make([]value.Value, NV+1)
			res[ph][NV] = g.vzero()
			for v := 0; v < NV; v++ {
				off := ci(ph*PS + v*L)
				var a value.Value = g.vzero()
				if s.Acc >= 0 {
					a = g.vload(acc, off)
				}
				for t := s.KH*s.KW - 1; t >= 0; t-- {
					pa, dh := phaseOf(t/s.KW - s.PH)
					pb, dw := phaseOf(t%s.KW - s.PW)
					if 2*pa+pb != ph {
						continue
					}
					// Phase pixel q = output p + dh·OW + dw: p = q + sh.
					sh := -(dh*s.OW + dw)
					won := g.b.NewICmp(enum.IPredEQ, at(ws, v*L+sh), vi(t))
					a = g.sel(won, g.fadd(a, at(ds, v*L+sh)), a)
				}
				res[ph][v] = a
			}
		}
		// Merged into dx from the registers: input row r is row r/2 of
		// phases (r mod 2, 0) and (r mod 2, 1), interleaved (a pass
		// through the stack would load across the stores of several
		// vectors, which the CPU cannot forward).
		lo, hi := g.interleave()
		dx := g.add(ci(s.DX), plane)
		for r := 0; r < s.H; r++ {
			for j0 := 0; j0 < s.OW; j0 += L {
				ev, od := at(res[r%2*2], r/2*s.OW+j0), at(res[r%2*2+1], r/2*s.OW+j0)
				out := g.add(dx, ci(r*s.W+2*j0))
				g.maskedStore(g.b.NewShuffleVector(ev, od, lo), g.arena, out, g.prefixMask(s.W-2*j0))
				if s.W > 2*j0+L {
					g.maskedStore(g.b.NewShuffleVector(ev, od, hi), g.arena, g.add(out, ci(L)), g.prefixMask(s.W-2*j0-L))
				}
			}
		}
	})
}
