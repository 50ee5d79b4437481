package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Register-blocked training convolutions (issue 9).
//
// The three training convolutions are matrix products over the im2col
// matrix col[K][P] of one image (K = C·KH·KW rows k = (c, kh, kw), P = OH·OW
// columns p = (oh, ow), col[k][p] = x[c][oh·SH−PH+kh][ow·SW−PW+kw], zero
// outside the image):
//
//	forward  y[n]  (O×P) = W (O×K) · col[n] (K×P)
//	dgrad    dx[n]       = col2im(Wᵀ (K×O) · dy[n] (O×P))
//	wgrad    dW    (O×K) = Σ_n dy[n] (O×P) · col[n]ᵀ (P×K)
//
// All three run on one micro-kernel (gemmTile) in the style of BLIS (Van
// Zee and van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS
// Functionality", ACM TOMS 41(3), 2015; Low et al., "Analytical Modeling Is
// Enough for High-Performance BLIS", ACM TOMS 43(2), 2016): an MR×(2·lanes)
// tile of the result is kept in 2·MR vector registers while the reduction
// index runs; each step loads two vectors of a packed, zero-padded B panel
// and broadcasts MR scalars of A, so that every loaded vector feeds MR
// FMAs. MR ≤ (registers − 3)/2: 14 on AVX-512 and NEON (28 accumulators),
// 6 on AVX2 (12 accumulators, BLIS's Haswell sgemm shape), balanced over
// the rows (balancedMR).
//
// Every product vectorizes over its contiguous dimension: the output
// pixels for forward and dgrad (B panels are 32 columns of col or dy), the
// weight's K dimension for wgrad (its B panel is colᵀ, 32 columns). The
// packing loops read x through index tables (colTab), not divisions. Panels
// are packed into stack buffers of the kernel's entry block (the dgrad
// panel ≤ 64 KiB, the others ≤ 32 KiB), so the arena plan is unchanged
// and threads never share scratch. Ragged edges
// (O, K, P not multiples of the tile) are handled by tiles of a smaller,
// generation-time height and by partial vectors (per-lane loads and
// stores) at the last column block; panels are zero-padded so the
// micro-kernel never reads outside them.
//
// Tiling for threads: forward tiles are (image, 32-pixel block); dgrad tiles
// are images (col2im adds overlapping windows into the image, so one thread
// owns an image); wgrad tiles are (32-column block of K, group of output
// channels), each reducing over the whole batch, so no two threads write the
// same dW element and no atomics are needed. Where a run of a few images
// fits L2 (ConvGeom.WgradSplit), the batch is split into runs and the tiles
// are (run, block, group), each writing a partial dW for its run into the
// step's scratch area, which a ChannelSumSpec then adds: the run's tiles
// reread its images from L2 instead of the whole batch from memory.

// gemmNB is the column block of the training GEMMs: 32 floats, two AVX-512
// vectors (four AVX2, eight NEON vectors: the micro-kernel then covers it in
// 2·lanes-wide sub-blocks). It is target independent because tile counts
// are shared by every target of a module.
const gemmNB = 32

// gemmKC bounds the reduction block of the forward and input-gradient
// panels (at most gemmKC×gemmNB floats, 36 KiB: L1-sized on the 48 KiB L1 of Zen 5 and of
// Intel's server cores). kBlocks splits a reduction into the fewest blocks
// of at most gemmKC rows, of balanced sizes: the common 3x3 over 32
// channels (K = 288) is then one block, where 256 left a 32-row block that
// paid a full pass of accumulator loads and stores for an eighth of the
// products (BenchmarkTrainConv, forward 3x3 32→48 and 3x3 s2 32→64 on an
// Intel Xeon VM: 10–15 % faster with one block).
const gemmKC = 288

// kcOf is the reduction block kBlocks uses for K rows.
func kcOf(K int) int { return ceilDiv(K, ceilDiv(K, gemmKC)) }

// kBlocks calls body for the reduction blocks [k0, k0+kn) of [0, K) of
// size kcOf(K) (the last one possibly shorter). The first block is peeled
// off (first true: its micro-kernel starts from the output's initial value,
// bias, addend or zero), the others start from the partial sums the one
// before stored, so no pass initialises the output first. The partial sums
// are stored and reloaded as float32, exactly what the registers held, so
// the sums are the same as in one block.
func (g *builder) kBlocks(K int, body func(k0 value.Value, kn int, first bool)) {
	kc := kcOf(K)
	body(ci(0), kc, true)
	g.blocks(K-kc, kc, func(k0 value.Value, kn int) { body(g.add(ci(kc), k0), kn, false) })
}

// wgradNB is the column block of the weight gradient (columns of K), the
// tile width: 32, two AVX-512 vectors (16 gives more tiles for a small K
// but halves the vectors per broadcast; not measurably better on a loaded
// 2-core machine).
const wgradNB = 32

// gemmPC is the pixel chunk of the wgrad panel (gemmPC×wgradNB floats).
const gemmPC = 128

// gemmMaxPanel bounds the dgrad panel (O×gemmNB floats) kept on the stack;
// larger convolutions use the loop kernels.
const gemmMaxPanel = 64 << 10 / 4

// gemmMR is the micro-kernel height for target t.
func gemmMR(t Target) int { return max(1, min((t.Registers-3)/2, 14)) }

// balancedMR is the row block for m rows: the fewest blocks of at most
// gemmMR(t) rows, of equal height but for the last (16 rows on AVX-512:
// 8+8, not 14+2, whose 2-row tile would load two vectors per two FMAs).
func balancedMR(t Target, m int) int {
	mr := gemmMR(t)
	return ceilDiv(m, ceilDiv(m, mr))
}

// stackBuf allocates n floats, 64-byte aligned, in the entry block and
// returns a float pointer to them. Call it before the first loop.
func (g *builder) stackBuf(n int) value.Value {
	at := types.NewArray(uint64(n), f32)
	a := g.b.NewAlloca(at)
	a.Align = 64
	return g.b.NewGetElementPtr(at, a, ci(0), ci(0))
}

// vloadN loads a vector at base+off whose first w lanes are valid; the rest
// are zero and not read.
func (g *builder) vloadN(base, off value.Value, w int) value.Value {
	if w >= g.t.VectorLanes {
		return g.vload(base, off)
	}
	v := g.vzero()
	for l := 0; l < w; l++ {
		v = g.b.NewInsertElement(v, g.load(base, g.add(off, ci(l))), ci(l))
	}
	return v
}

// vstoreN stores the first w lanes of v at base+off.
func (g *builder) vstoreN(v, base, off value.Value, w int) {
	if w >= g.t.VectorLanes {
		g.vstore(v, base, off)
		return
	}
	for l := 0; l < w; l++ {
		g.store(g.b.NewExtractElement(v, ci(l)), base, g.add(off, ci(l)))
	}
}

func (g *builder) and(x, y value.Value) value.Value { return g.b.NewAnd(x, y) }

func (g *builder) sel(c, x, y value.Value) value.Value { return g.b.NewSelect(c, x, y) }

// gemmTile is the micro-kernel: acc[r][v] = init(r, v) + Σ_{k<kn}
// splat(a(r, k))·b(v, k) for r < mr, v < nv, returned as acc[r*nv+v]. The
// reduction loop is not unrolled by LLVM (see loopNoUnroll: unrolling lets
// it hoist broadcasts and spill the tile).
func (g *builder) gemmTile(mr, nv, kn int, init func(r, v int) value.Value,
	a func(r int, k value.Value) value.Value, b func(v int, k value.Value) value.Value) []value.Value {
	acc := make([]value.Value, mr*nv)
	for r := 0; r < mr; r++ {
		for v := 0; v < nv; v++ {
			acc[r*nv+v] = init(r, v)
		}
	}
	return g.loopNoUnroll(ci(0), ci(kn), acc, func(k value.Value, c []value.Value) []value.Value {
		bv := make([]value.Value, nv)
		for v := range bv {
			bv[v] = b(v, k)
		}
		out := make([]value.Value, len(c))
		for r := 0; r < mr; r++ {
			av := g.splat(a(r, k))
			for v := 0; v < nv; v++ {
				out[r*nv+v] = g.fma(av, bv[v], c[r*nv+v])
			}
		}
		return out
	})
}

// blocks calls body for the blocks [start, start+size) of [0, total) in
// steps of bs: a run-time loop over the full blocks (size bs) and one
// generation-time call for the remainder.
func (g *builder) blocks(total, bs int, body func(start value.Value, size int)) {
	full := total / bs
	if full == 1 {
		body(ci(0), bs)
	} else if full > 1 {
		g.loopN(full, nil, func(i value.Value, _ []value.Value) []value.Value {
			body(g.mul(i, ci(bs)), bs)
			return nil
		})
	}
	if r := total % bs; r > 0 {
		body(ci(full*bs), r)
	}
}

// lastOr emits body(last) when idx == count−1 and the remainder differs
// from the full size, body(full) otherwise (two generation-time variants of
// a tile whose last instance is ragged).
func (g *builder) lastOr(idx value.Value, count, full, last int, body func(size int)) {
	if last == full {
		body(full)
		return
	}
	if count == 1 {
		body(last)
		return
	}
	g.ifElse(g.icmp(enum.IPredEQ, idx, ci(count-1)), func() { body(last) }, func() { body(full) })
}

// pointwise reports a 1x1, stride-1, unpadded convolution: col is x itself.
func (s ConvGeom) pointwise() bool {
	return s.KH == 1 && s.KW == 1 && s.SH == 1 && s.SW == 1 && s.PH == 0 && s.PW == 0
}

// colIndex returns the index in image x[C][H][W] of col[k][p] of a
// pointwise convolution (k·P + p) and whether k < K and p < P (the panels
// are zero-padded); an invalid index is clamped to 0 so it can be loaded
// safely. Other convolutions use the tables (colTab).
func (s ConvGeom) colIndex(g *builder, k, p value.Value) (idx, valid value.Value) {
	K, P := s.C*s.KH*s.KW, s.OH*s.OW
	valid = g.and(g.icmp(enum.IPredULT, k, ci(K)), g.icmp(enum.IPredULT, p, ci(P)))
	return g.sel(valid, g.add(g.mul(k, ci(P)), p), ci(0)), valid
}

// colTab is a table of the im2col index parts of a range of rows k or
// columns p (stack arrays of i64): col[k][p] is x[koff[k] + poff[p]] when
// kh[k] + ph[p] is in [0, H) and kw[k] + pw[p] in [0, W), else zero, with
// koff = c·H·W + kh·W + kw, ph = oh·SH − PH, pw = ow·SW − PW, poff =
// ph·W + pw. Rows or columns past K or P get a position that is never
// valid. The tables take the divisions out of the packing loops, which
// are then adds, compares and a gather.
type colTab struct{ off, h, w value.Value }

// colFar marks a row or column outside the matrix.
const colFar = 1 << 30

func (g *builder) stackI32(n int) value.Value {
	at := types.NewArray(uint64(n), types.I32)
	a := g.b.NewAlloca(at)
	a.Align = 64
	return g.b.NewGetElementPtr(at, a, ci(0), ci(0))
}

func (g *builder) newColTab(n int) colTab {
	return colTab{g.stackI32(n), g.stackI32(n), g.stackI32(n)}
}

// ldI loads entry i of an i32 table.
func (g *builder) ldI(base, i value.Value) value.Value {
	l := g.b.NewLoad(types.I32, g.b.NewGetElementPtr(types.I32, base, i))
	l.Align = 4
	return l
}

// stI stores the i64 v, truncated, as entry i of an i32 table.
func (g *builder) stI(v, base, i value.Value) {
	g.b.NewStore(g.b.NewTrunc(v, types.I32), g.b.NewGetElementPtr(types.I32, base, i)).Align = 4
}

func c32(v int) value.Value { return constant.NewInt(types.I32, int64(v)) }

// pixTab fills t for the columns p0+[0, n).
func (s ConvGeom) pixTab(g *builder, t colTab, p0 value.Value, n int) {
	g.loopN(n, nil, func(j value.Value, _ []value.Value) []value.Value {
		p := g.add(p0, j)
		in := g.icmp(enum.IPredULT, p, ci(s.OH*s.OW))
		ph := g.sub(g.mul(g.udiv(p, s.OW), ci(s.SH)), ci(s.PH))
		pw := g.sub(g.mul(g.urem(p, s.OW), ci(s.SW)), ci(s.PW))
		g.stI(g.add(g.mul(ph, ci(s.W)), pw), t.off, j)
		g.stI(g.sel(in, ph, ci(colFar)), t.h, j)
		g.stI(pw, t.w, j)
		return nil
	})
}

// kTab fills t for the rows k0+[0, n).
func (s ConvGeom) kTab(g *builder, t colTab, k0 value.Value, n int) {
	g.loopN(n, nil, func(kk value.Value, _ []value.Value) []value.Value {
		k := g.add(k0, kk)
		in := g.icmp(enum.IPredULT, k, ci(s.C*s.KH*s.KW))
		c, r := g.udiv(k, s.KH*s.KW), g.urem(k, s.KH*s.KW)
		kh, kw := g.udiv(r, s.KW), g.urem(r, s.KW)
		g.stI(g.add(g.mul(c, ci(s.H*s.W)), g.add(g.mul(kh, ci(s.W)), kw)), t.off, kk)
		g.stI(g.sel(in, kh, ci(colFar)), t.h, kk)
		g.stI(kw, t.w, kk)
		return nil
	})
}

// colGather returns a vector of consecutive entries of the im2col matrix
// of the image at arena offset x as one masked gather with 32-bit offsets
// from the image's base: along the entries vi.. of table vec, at entry oi
// of table one. With vec the pixel table from column j0 and one the row
// table at row kk it is col[k][p0+j0 : p0+j0+lanes] (the forward's panels);
// with vec the row table and one the pixel table, a row of colᵀ (the
// weight gradient's). Left to the loop vectorizer, the select that clamps
// invalid offsets was folded into a sign extension and the gathers took
// 64-bit indices, 8 lanes each; the explicit gather measured within noise
// of that on stem.c2's forward.
func (s ConvGeom) colGather(g *builder, x value.Value, vec colTab, vi value.Value, one colTab, oi value.Value) value.Value {
	ldv := func(tab value.Value) value.Value { return g.ldI32Vec(tab, vi) }
	ih := g.b.NewAdd(g.splatI32(g.ldI(one.h, oi)), ldv(vec.h))
	iw := g.b.NewAdd(g.splatI32(g.ldI(one.w, oi)), ldv(vec.w))
	ok := g.b.NewAnd(g.b.NewICmp(enum.IPredULT, ih, g.i32Vec(func(int) int { return s.H })),
		g.b.NewICmp(enum.IPredULT, iw, g.i32Vec(func(int) int { return s.W })))
	off := g.b.NewAdd(g.splatI32(g.ldI(one.off, oi)), ldv(vec.off))
	return g.maskedGather(g.gep(g.arena, x), off, ok)
}

// ldI32Vec loads the i32 vector at entry i of an i32 table.
func (g *builder) ldI32Vec(tab, i value.Value) value.Value {
	vt := types.NewVector(uint64(g.t.VectorLanes), types.I32)
	l := g.b.NewLoad(vt, g.b.NewBitCast(g.b.NewGetElementPtr(types.I32, tab, i), types.NewPointer(vt)))
	l.Align = 4
	return l
}

// maskedGather loads base[off[l]] for the lanes l where mask is true (the
// others read nothing and are zero); off is a <lanes x i32> vector.
func (g *builder) maskedGather(base, off, mask value.Value) value.Value {
	L := g.t.VectorLanes
	pv := types.NewVector(uint64(L), types.NewPointer(f32))
	f := g.m.declare(fmt.Sprintf("llvm.masked.gather.v%df32.v%dp0", L, L), g.vec,
		pv, types.I32, types.NewVector(uint64(L), types.I1), g.vec)
	ptrs := g.b.NewGetElementPtr(f32, base, off)
	return g.b.NewCall(f, ptrs, constant.NewInt(types.I32, 4), mask, g.vzero())
}

// maskedScatter stores the lanes l of v where mask is true at
// base[off[l]]; off is a <lanes x i32> vector.
func (g *builder) maskedScatter(v, base, off, mask value.Value) {
	L := g.t.VectorLanes
	pv := types.NewVector(uint64(L), types.NewPointer(f32))
	f := g.m.declare(fmt.Sprintf("llvm.masked.scatter.v%df32.v%dp0", L, L), types.Void,
		g.vec, pv, types.I32, types.NewVector(uint64(L), types.I1))
	g.b.NewCall(f, v, g.b.NewGetElementPtr(f32, base, off), constant.NewInt(types.I32, 4), mask)
}

// colLoad returns col[k][p] of the image at arena offset x (pointwise
// convolutions: x[k][p], zero past K or P).
func (s ConvGeom) colLoad(g *builder, x, k, p value.Value) value.Value {
	idx, ok := s.colIndex(g, k, p)
	return g.sel(ok, g.ld(g.add(x, idx)), cf(0))
}

// subBlocks calls f for the 2·lanes-wide column sub-blocks of a gemmNB block
// of which the first w columns are valid: column offset j0, vectors nv,
// valid lanes of the last vector wl.
func (g *builder) subBlocks(w int, f func(j0, nv, wl int)) {
	L := g.t.VectorLanes
	for j0 := 0; j0 < w; j0 += 2 * L {
		cols := min(2*L, w-j0)
		nv := (cols + L - 1) / L
		f(j0, nv, cols-(nv-1)*L)
	}
}

// lanesOf is the valid lane count of vector v of nv when the last has wl.
func lanesOf(v, nv, wl, L int) int {
	if v == nv-1 {
		return wl
	}
	return L
}

func (s TrainConvSpec) gemmTiles() int { return s.N * ceilDiv(s.OH*s.OW, gemmNB) }

// genGemm is the forward convolution as W·col per image (see the file
// comment). Tile (n, pb) computes y[n][:, 32·pb:32·pb+32]: per reduction
// block (kBlocks) it packs col[k0:k0+kc][block] into a zero-padded panel
// and runs the micro-kernel over the output channels. The first block's
// accumulators start at the bias, the later ones' at y.
func (s TrainConvSpec) genGemm(g *builder) {
	K, P := s.C*s.KH*s.KW, s.OH*s.OW
	PB := ceilDiv(P, gemmNB)
	L := g.t.VectorLanes
	kc := kcOf(K)
	panel := g.stackBuf(kc * gemmNB)
	pw := s.pointwise()
	kt, pt := g.newColTab(kc), g.newColTab(gemmNB)
	bias := func(o value.Value) value.Value {
		if s.Bias < 0 {
			return g.vzero()
		}
		return g.splat(g.ld(g.add(ci(s.Bias), o)))
	}
	g.tiles(func(t value.Value) {
		n, pb := g.udiv(t, PB), g.urem(t, PB)
		p0 := g.mul(pb, ci(gemmNB))
		x := g.add(ci(s.X), g.mul(n, ci(s.C*s.H*s.W)))
		y := g.add(ci(s.Out), g.add(g.mul(n, ci(s.O*P)), p0))
		if !pw {
			s.pixTab(g, pt, p0, gemmNB)
		}
		g.lastOr(pb, PB, gemmNB, P-(PB-1)*gemmNB, func(w int) {
			g.kBlocks(K, func(k0 value.Value, kn int, first bool) {
				// Pack col[k0+kk][p0+j] (zero beyond the image and P).
				if !pw {
					s.kTab(g, kt, k0, kn)
				}
				g.loopN(kn, nil, func(kk value.Value, _ []value.Value) []value.Value {
					k := g.add(k0, kk)
					if !pw {
						for v := 0; v < gemmNB/L; v++ {
							g.vstore(s.colGather(g, x, pt, ci(v*L), kt, kk), panel, g.add(g.mul(kk, ci(gemmNB)), ci(v*L)))
						}
						return nil
					}
					g.loopN(gemmNB, nil, func(j value.Value, _ []value.Value) []value.Value {
						g.store(s.colLoad(g, x, k, g.add(p0, j)), panel, g.add(g.mul(kk, ci(gemmNB)), j))
						return nil
					})
					return nil
				})
				g.subBlocks(w, func(j0, nv, wl int) {
					g.blocks(s.O, balancedMR(g.t, s.O), func(o0 value.Value, mr int) {
						yo := g.add(y, g.mul(o0, ci(P)))
						cOff := func(r, v int) value.Value { return g.add(yo, ci(r*P+j0+v*L)) }
						acc := g.gemmTile(mr, nv, kn,
							func(r, v int) value.Value {
								if first {
									return bias(g.add(o0, ci(r)))
								}
								return g.vloadN(g.arena, cOff(r, v), lanesOf(v, nv, wl, L))
							},
							func(r int, kk value.Value) value.Value {
								return g.ld(g.add(ci(s.Wt), g.add(g.mul(g.add(o0, ci(r)), ci(K)), g.add(k0, kk))))
							},
							func(v int, kk value.Value) value.Value {
								return g.vload(panel, g.add(g.mul(kk, ci(gemmNB)), ci(j0+v*L)))
							})
						for r := 0; r < mr; r++ {
							for v := 0; v < nv; v++ {
								g.vstoreN(acc[r*nv+v], g.arena, cOff(r, v), lanesOf(v, nv, wl, L))
							}
						}
					})
				})
			})
			g.blockStats(s.Stats, y, s.O, P, w, s.N*PB, t, nil)
		})
	})
}

func (s TrainConvGradInputSpec) gemmOK() bool { return s.O*gemmNB <= gemmMaxPanel }

// genGemm is the input gradient as col2im(Wᵀ·dy) per image (see the file
// comment). Tile n: for each 32-pixel block, dy[n][:, block] is packed into
// a zero-padded O×32 panel; for each block of MR rows k of dcol the
// micro-kernel reduces over o with A = Wᵀ (broadcasts of w[o][k]); the tile
// of dcol is then added into dx[n] at the input positions it came from,
// a vector of columns at a time (masked gather, add, masked scatter; the
// lanes whose window is outside the image are masked off). A pointwise
// convolution's dcol is dx itself and is stored directly.
func (s TrainConvGradInputSpec) genGemm(g *builder) {
	K, P := s.C*s.KH*s.KW, s.OH*s.OW
	L, MR := g.t.VectorLanes, gemmMR(g.t)
	panel := g.stackBuf(s.O * gemmNB)
	pw := s.pointwise()
	kt, pt := g.newColTab(MR), g.newColTab(gemmNB)
	g.tiles(func(n value.Value) {
		dx := g.add(ci(s.DX), g.mul(n, ci(s.C*s.H*s.W)))
		dy := g.add(ci(s.DY), g.mul(n, ci(s.O*P)))
		if !pw {
			s.initDX(g, dx, s.C*s.H*s.W)
		}
		g.blocks(P, gemmNB, func(p0 value.Value, w int) {
			if !pw {
				s.pixTab(g, pt, p0, gemmNB)
			}
			g.loopN(s.O, nil, func(o value.Value, _ []value.Value) []value.Value {
				g.loopN(gemmNB, nil, func(j value.Value, _ []value.Value) []value.Value {
					i := g.add(g.mul(o, ci(P)), g.add(p0, j))
					var v value.Value
					if w == gemmNB {
						v = g.ld(g.add(dy, i))
					} else { // zero-pad the columns past P
						ok := g.icmp(enum.IPredULT, j, ci(w))
						v = g.sel(ok, g.ld(g.add(dy, g.sel(ok, i, ci(0)))), cf(0))
					}
					g.store(v, panel, g.add(g.mul(o, ci(gemmNB)), j))
					return nil
				})
				return nil
			})
			g.subBlocks(w, func(j0, nv, wl int) {
				g.blocks(K, balancedMR(g.t, K), func(k0 value.Value, mr int) {
					acc := g.gemmTile(mr, nv, s.O,
						func(r, v int) value.Value { return g.vzero() },
						func(r int, o value.Value) value.Value {
							if s.Packed {
								return g.ld(g.packedA(s.Wt, s.O, k0, r, mr, o))
							}
							return g.ld(g.add(ci(s.Wt), g.add(g.mul(o, ci(K)), g.add(k0, ci(r)))))
						},
						func(v int, o value.Value) value.Value {
							return g.vload(panel, g.add(g.mul(o, ci(gemmNB)), ci(j0+v*L)))
						})
					if pw {
						for r := 0; r < mr; r++ {
							for v := 0; v < nv; v++ {
								off := g.add(dx, g.add(g.mul(g.add(k0, ci(r)), ci(P)), g.add(p0, ci(j0+v*L))))
								a := acc[r*nv+v]
								if s.Acc >= 0 {
									a = g.fadd(a, g.vloadN(g.arena, g.add(off, ci(s.Acc-s.DX)), lanesOf(v, nv, wl, L)))
								}
								g.vstoreN(a, g.arena, off, lanesOf(v, nv, wl, L))
							}
						}
						return
					}
					// The scatter-add of the tile into dx, a vector of
					// columns at a time: for one row k of dcol its
					// columns are distinct pixels of the image, so a
					// masked gather of their dx, the add and a masked
					// scatter back never collide; the rows go in turn
					// (two taps may reach one pixel). Column by column
					// with scalar table loads this took 6× the
					// micro-kernel's instructions for a 32-channel dy.
					s.kTab(g, kt, k0, mr)
					base := g.gep(g.arena, dx)
					for r := 0; r < mr; r++ {
						kh, kw, koff := g.splatI32(g.ldI(kt.h, ci(r))), g.splatI32(g.ldI(kt.w, ci(r))), g.splatI32(g.ldI(kt.off, ci(r)))
						for v := 0; v < nv; v++ {
							jv := ci(j0 + v*L)
							ih := g.b.NewAdd(kh, g.ldI32Vec(pt.h, jv))
							iw := g.b.NewAdd(kw, g.ldI32Vec(pt.w, jv))
							ok := g.b.NewAnd(g.b.NewICmp(enum.IPredULT, ih, g.i32Vec(func(int) int { return s.H })),
								g.b.NewICmp(enum.IPredULT, iw, g.i32Vec(func(int) int { return s.W })))
							ok = g.b.NewAnd(ok, g.prefixMask(lanesOf(v, nv, wl, L)))
							off := g.b.NewAdd(koff, g.ldI32Vec(pt.off, jv))
							g.maskedScatter(g.fadd(g.maskedGather(base, off, ok), acc[r*nv+v]), base, off, ok)
						}
					}
				})
			})
		})
	})
}

// wgradGroups splits the output channels of a wgrad into groups so that
// there are at least 16 tiles where the channels allow (groups of ≥ 48
// channels: each group packs colᵀ again, so a group must reuse it enough).
func (s TrainConvGradWeightSpec) wgradGroups() (groups, size int) {
	kb := ceilDiv(s.C*s.KH*s.KW, wgradNB)
	groups = max(1, min(ceilDiv(16, kb), s.O/48))
	size = ceilDiv(s.O, groups)
	return ceilDiv(s.O, size), size
}

func (s TrainConvGradWeightSpec) gemmTiles() int {
	S, _, _ := s.wgSplit()
	return S * s.gemmBlocks()
}

// gemmBlocks is the packed kernel's tiles per run of images: blocks of
// K times groups of output channels.
func (s TrainConvGradWeightSpec) gemmBlocks() int {
	g, _ := s.wgradGroups()
	return ceilDiv(s.C*s.KH*s.KW, wgradNB) * g
}

// genGemm is the weight gradient Σ_n dy[n]·col[n]ᵀ (see the file comment),
// vectorized over K. Tile (kb, og) owns dW[og's channels][32·kb:32·kb+32]:
// it zeroes them, then for every image and chunk of gemmPC pixels packs
// colᵀ[p][k] into a zero-padded panel and runs the micro-kernel (A = dy,
// broadcast; reduction over the chunk's pixels) for each block of MR
// channels, accumulating into dW.
func (s TrainConvGradWeightSpec) genGemm(g *builder) {
	K, P := s.C*s.KH*s.KW, s.OH*s.OW
	KB := ceilDiv(K, wgradNB)
	G, GS := s.wgradGroups()
	L := g.t.VectorLanes
	panel := g.stackBuf(ceilDiv(min(P, gemmPC), L) * L * wgradNB)
	pw := s.pointwise()
	tp := s.transPack()
	var kt, pt colTab
	var tpack *transPacker
	if tp {
		tpack = s.newTransPacker(g)
	} else {
		kt, pt = g.newColTab(wgradNB), g.newColTab(min(P, gemmPC))
	}
	// The pixel table depends on neither the tile nor the image: one for
	// all P pixels per call where it fits the stack (P ≤ wgMaxP, the bound
	// of the dot-product kernel's tables too), else one per chunk.
	whole := !pw && !tp && P <= wgMaxP
	if whole {
		pt = g.newColTab(P)
		s.pixTab(g, pt, ci(0), P)
	}
	// With siblings (one channel group per part: SiblingsOK) a tile
	// is a block of K for every part: the panel, packed once per chunk of
	// pixels, serves each part's channels in turn.
	parts := s.parts()
	// run is one tile over nImg images from image nb, accumulating into
	// dwAt (DW, or its run's partial dW when the batch is split) and into
	// the siblings' at sibAt(j).
	run := func(t, nb value.Value, nImg int, dwAt value.Value, sibAt func(j int) value.Value) {
		kb, og := g.udiv(t, G), g.urem(t, G)
		k0 := g.mul(kb, ci(wgradNB))
		switch {
		case tp:
			tpack.tile(g, k0)
		case !pw:
			s.kTab(g, kt, k0, wgradNB)
		}
		oLo := g.mul(og, ci(GS))
		g.lastOr(kb, KB, wgradNB, K-(KB-1)*wgradNB, func(w int) {
			g.lastOr(og, G, GS, s.O-(G-1)*GS, func(osz int) {
				// Per part: its channels, dy and dW block.
				oszs, dws := []int{osz}, []value.Value{g.add(dwAt, g.add(g.mul(oLo, ci(K)), k0))}
				for j, p := range parts[1:] {
					oszs, dws = append(oszs, p.O), append(dws, g.add(sibAt(j), k0))
				}
				for j, dw := range dws {
					g.loopN(oszs[j], nil, func(o value.Value, _ []value.Value) []value.Value {
						g.fillN(cf(0), g.add(dw, g.mul(o, ci(K))), w)
						return nil
					})
				}
				T := s.KH * s.KW
				chans := min(s.C, (w-1)/T+2) // channels rows [k0, k0+w) can touch
				g.loopN(nImg, nil, func(ni value.Value, _ []value.Value) []value.Value {
					n := g.add(nb, ni)
					x := g.add(ci(s.X), g.mul(n, ci(s.C*s.H*s.W)))
					dys := []value.Value{g.add(ci(s.DY), g.add(g.mul(n, ci(s.O*P)), g.mul(oLo, ci(P))))}
					for _, p := range parts[1:] {
						dys = append(dys, g.add(ci(p.DY), g.mul(n, ci(p.O*P))))
					}
					if tp {
						tpack.image(g, x)
					}
					// Prefetch the next image's planes of the tile's channels
					// (a few planes one image apart: see groupVecs).
					// Measured on the mini nets' stride-2 gradients: 7-10%
					// faster. Its dy rows are not prefetched: each is read
					// once per tile, as it streams, and prefetching all of
					// them into L1 up front (up to O·P floats) evicted the
					// panel; in alternating runs of
					// BenchmarkTrainConvGradWeight on an Intel Xeon VM,
					// dropping that prefetch took the packed gradients from
					// 48–57 to 52–65 % of the FMA peak on one thread
					// (Inception-v4's 3x3 192→224 from 50 to 64 %).
					c0 := g.udiv(k0, T)
					g.loopN(chans, nil, func(j value.Value, _ []value.Value) []value.Value {
						plane := g.add(x, g.add(ci(s.C*s.H*s.W), g.mul(g.add(c0, j), ci(s.H*s.W))))
						g.loopN(ceilDiv(s.H*s.W, 16), nil, func(l value.Value, _ []value.Value) []value.Value {
							g.prefetch(g.add(plane, g.mul(l, ci(16))))
							return nil
						})
						return nil
					})
					g.blocks(P, gemmPC, func(p0 value.Value, pc int) {
						switch {
						case tp:
							tpack.pack(g, panel, p0, pc, w)
						case !pw:
							if !whole {
								s.pixTab(g, pt, p0, pc)
							}
							g.loopN(pc, nil, func(j value.Value, _ []value.Value) []value.Value {
								// A row of colᵀ: gathers along k.
								pj := j
								if whole {
									pj = g.add(p0, j)
								}
								for v := 0; v < wgradNB/L; v++ {
									g.vstore(s.colGather(g, x, kt, ci(v*L), pt, pj), panel, g.add(g.mul(j, ci(wgradNB)), ci(v*L)))
								}
								return nil
							})
						default:
							g.loopN(pc, nil, func(j value.Value, _ []value.Value) []value.Value {
								g.loopN(wgradNB, nil, func(kk value.Value, _ []value.Value) []value.Value {
									g.store(s.colLoad(g, x, g.add(k0, kk), g.add(p0, j)), panel, g.add(g.mul(j, ci(wgradNB)), kk))
									return nil
								})
								return nil
							})
						}
						for pj, dw := range dws {
							dy, osz := dys[pj], oszs[pj]
							g.subBlocks(w, func(j0, nv, wl int) {
								g.blocks(osz, balancedMR(g.t, osz), func(o0 value.Value, mr int) {
									cOff := func(r, v int) value.Value {
										return g.add(dw, g.add(g.mul(g.add(o0, ci(r)), ci(K)), ci(j0+v*L)))
									}
									acc := g.gemmTile(mr, nv, pc,
										func(r, v int) value.Value {
											return g.vloadN(g.arena, cOff(r, v), lanesOf(v, nv, wl, L))
										},
										func(r int, j value.Value) value.Value {
											return g.ld(g.add(dy, g.add(g.mul(g.add(o0, ci(r)), ci(P)), g.add(p0, j))))
										},
										func(v int, j value.Value) value.Value {
											return g.vload(panel, g.add(g.mul(j, ci(wgradNB)), ci(j0+v*L)))
										})
									for r := 0; r < mr; r++ {
										for v := 0; v < nv; v++ {
											g.vstoreN(acc[r*nv+v], g.arena, cOff(r, v), lanesOf(v, nv, wl, L))
										}
									}
								})
							})
						}
					})
					return nil
				})
			})
		})
	}
	s.wgRuns(g, KB*G, func(u, nb value.Value, nImg int, sp value.Value) {
		run(u, nb, nImg, s.dwAt(g, sp), func(j int) value.Value { return parts[j+1].dwAt(g, sp) })
	})
}

// transPack reports a weight gradient whose colᵀ panels are packed
// without gathers (transPacker): a stride-1 convolution whose rows are as
// wide as its input's (ConvGeom.contiguous) with at least 6 tiles (over
// all runs of a split batch), other than a 1x1 over fewer than 128
// channels whose plane fills its vectors (dotFill) into fewer than 48
// output channels (with its siblings': a panel serves them all), or a
// stride-2 one over phase planes (ConvGeom.phased) whose tile's channels'
// planes fit phaseMax; in both cases with a tap mask table (one row per
// tap and a zero row) within wgMaskMax. The others run the dot-product
// kernel (genSame) or gather their panels.
//
// BenchmarkTrainConvGradWeight on an Intel Xeon VM (2026-12-03, batches
// split as the lowering splits them), % of the one-thread peak,
// dot-product → packed: AVX-512 1x1 64→48 at 14x14 33 → 50, 64→64 34 →
// 54, the 64→16×4 siblings 32 → 53, 3x3 16→16 at 14x14 35–39 → 48, 1x1
// 160→64 at 73x73 32–36 → 48, but 1x1 64→16 even (34 / 33); AVX2 64→48
// 57–59 → 63–65, the siblings 62 → 66–68, 3x3 16→16 60 → 53, 1x1 64→16
// 62 → 42–44. Hence a 1x1's output channels decide, and the 3x3 over few
// K blocks follows AVX-512 (the kernels of a module share their tiles,
// so one choice serves every target).
func (s TrainConvGradWeightSpec) transPack() bool {
	P, T := s.OH*s.OW, s.KH*s.KW
	if (T+1)*ceilDiv(P, lineFloats)*lineFloats > wgMaskMax {
		return false
	}
	switch {
	case s.contiguous():
		return (T > 1 || s.C >= 128 || !s.dotFill() || s.outChannels() >= 48) && s.gemmTiles() >= 6
	case s.phased():
		return s.packChans()*4*phaseStride(P) <= phaseMax
	}
	return false
}

// outChannels is the output channels of the weight gradient and its
// siblings'.
func (s TrainConvGradWeightSpec) outChannels() int {
	o := s.O
	for _, sb := range s.Siblings {
		o += sb.O
	}
	return o
}

// dotFill reports a plane whose pixels fill at least 90 % of the
// 16-float vectors the dot-product kernel (genSame) sweeps it in: that
// kernel pays a whole vector step, every FMA of its register tile, for a
// plane's last partial vector, once per image, where the packed kernel
// reduces over the batch's pixels without gaps. A 7x7 plane (49 pixels in
// 4 vectors, 77 %) takes the packed kernel even for a 1x1 over fewer than
// 128 channels: BenchmarkTrainConvGradWeight, mini_inception_resnet's up
// projection 1x1 96→176 at 7x7, batch 128, alternating builds on an Intel
// Xeon VM, % of the one-thread peak: AVX-512 37 → 55, AVX2 56–60 → 68.
// Lanes are 16 on every target (the choice fixes the tiles, which all
// targets of a module share). At 14x14 (94 %) the two kernels are even.
func (s ConvGeom) dotFill() bool {
	P := s.OH * s.OW
	return 10*P >= 9*ceilDiv(P, lineFloats)*lineFloats
}

// packChans is the most input channels that a weight-gradient tile's
// wgradNB rows of K touch.
func (s TrainConvGradWeightSpec) packChans() int {
	return min(s.C, (wgradNB-1)/(s.KH*s.KW)+2)
}

// transPacker packs the colᵀ panels of a weight gradient (transPack) by
// transposes instead of gathers. Row k = (c, kh, kw) of col is, along the
// pixels, a shifted run of one input plane masked by the tap's row of a
// mask table (tapMaskTable), as in the stride-1 kernels: for a stride-1
// convolution (ConvGeom.contiguous, direct) the run of x itself at c·H·W +
// (kh−PH)·W + kw−PW; for a stride-2 one, per image a tile first splits
// the input planes of the packChans channels its rows touch into phase
// planes on the stack (builder.phaseSplit), and row k is then the row of
// phase ((kh−PH) mod 2, (kw−PW) mod 2) of channel c shifted by
// (⌊(kh−PH)/2⌋, ⌊(kw−PW)/2⌋). Either way one masked vector load reads
// lanes entries of a row; lanes such rows (lanes × lanes entries of col)
// are transposed in registers (builder.transpose) into lanes rows of colᵀ
// and stored into the panel. The gathers this replaces took about a third
// of the strided kernels' time on Zen 5 (BENCHMARKS.md, twelfth session);
// in alternating runs of BenchmarkTrainConvGradWeight the packed form beat
// the dot-product kernel (genSame) on most stride-1 shapes as well.
type transPacker struct {
	s      TrainConvGradWeightSpec
	chans  int
	ps, pp int         // phase plane stride; a mask row's entries
	planes value.Value // phase planes of the tile's channels (stack)
	maskT  value.Value // the tap mask table: T rows and a zero row
	koffT  value.Value // per row of K (wgradNB·KB entries): its row's offset in the image or the planes of channel 0 up
	mrowT  value.Value // per row of K: its mask row's offset (the zero row past K)
	koff   value.Value // the tile's rows' offsets (stack, i32)
	mrow   value.Value // the tile's rows' mask rows (stack, i32)
	c0     value.Value // the tile's first split channel (phase planes)
	direct bool        // rows read from x in place (stride 1), not from phase planes
	x      value.Value // the current image's offset into planes: its arena offset when direct, else 0
}

func (s TrainConvGradWeightSpec) newTransPacker(g *builder) *transPacker {
	T, P, L := s.KH*s.KW, s.OH*s.OW, g.t.VectorLanes
	tp := &transPacker{s: s, chans: s.packChans(), ps: phaseStride(P), pp: ceilDiv(P, L) * L, direct: s.contiguous()}
	// Per tap: its shift (dh, dw) within the plane it reads (x's, or its
	// phase's) and that plane's offset within a channel's.
	dh, dw, plane := make([]int, T+1), make([]int, T+1), make([]int, T)
	H, W := s.H, s.W
	for t := 0; t < T; t++ {
		dh[t], dw[t] = t/s.KW-s.PH, t%s.KW-s.PW
		if !tp.direct {
			var a, b int
			a, dh[t] = phaseOf(dh[t])
			b, dw[t] = phaseOf(dw[t])
			plane[t] = (2*a + b) * tp.ps
			H, W = s.OH, s.OW
		}
	}
	dh[T] = colFar // the zero row: no pixel is inside
	chanOff := s.H * s.W
	if !tp.direct {
		chanOff = 4 * tp.ps
	}
	K, KB := s.C*T, ceilDiv(s.C*T, wgradNB)
	koff, mrow := make([]int, KB*wgradNB), make([]int, KB*wgradNB)
	for k := range koff {
		if k >= K {
			mrow[k] = T * tp.pp
			continue
		}
		c, t := k/T, k%T
		koff[k] = c*chanOff + plane[t] + dh[t]*W + dw[t]
		mrow[k] = t * tp.pp
	}
	tp.koffT, tp.mrowT = g.i32Table("tkoff", koff), g.i32Table("tmrow", mrow)
	tp.maskT = g.tapMaskTable(dh, dw, H, W, s.OW, P, tp.pp)
	tp.planes = g.arena
	if !tp.direct {
		tp.planes = g.stackBuf(tp.chans * 4 * tp.ps)
	}
	tp.koff, tp.mrow = g.stackI32(wgradNB), g.stackI32(wgradNB)
	return tp
}

// tile prepares the tile whose rows of K start at k0: its rows' offsets
// and mask rows, relative, over phase planes, to its first split channel
// c0 (the channels [c0, c0+chans) hold its rows and stay inside the
// image).
func (tp *transPacker) tile(g *builder, k0 value.Value) {
	s := tp.s
	sub := value.Value(ci(0))
	if !tp.direct {
		c := g.udiv(k0, s.KH*s.KW)
		tp.c0 = g.sel(g.icmp(enum.IPredULT, c, ci(s.C-tp.chans)), c, ci(s.C-tp.chans))
		sub = g.mul(tp.c0, ci(4*tp.ps))
	}
	g.loopN(wgradNB, nil, func(kk value.Value, _ []value.Value) []value.Value {
		k := g.add(k0, kk)
		g.stI(g.sub(g.b.NewSExt(g.ldI(tp.koffT, k), i64), sub), tp.koff, kk)
		g.stI(g.b.NewSExt(g.ldI(tp.mrowT, k), i64), tp.mrow, kk)
		return nil
	})
}

// image splits the tile's channels of the image at arena offset x.
func (tp *transPacker) image(g *builder, x value.Value) {
	s := tp.s
	if tp.direct {
		tp.x = x
		return
	}
	tp.x = ci(0)
	g.phaseSplit(tp.planes, g.add(x, g.mul(tp.c0, ci(s.H*s.W))), tp.chans, s.H, s.W, tp.ps)
}

// pack fills panel rows [0, pc) (rounded up to whole vectors) with colᵀ
// of pixels p0.. and the tile's first w rows of K.
func (tp *transPacker) pack(g *builder, panel, p0 value.Value, pc, w int) {
	L := g.t.VectorLanes
	g.loopN(ceilDiv(pc, L), nil, func(pg value.Value, _ []value.Value) []value.Value {
		j := g.mul(pg, ci(L))
		p := g.add(p0, j)
		for v := 0; v*L < w; v++ {
			rows := make([]value.Value, L)
			for r := range rows {
				kk := ci(v*L + r)
				off := g.add(tp.x, g.add(g.b.NewSExt(g.ldI(tp.koff, kk), i64), p))
				m := g.tableMask(tp.maskT, g.add(g.b.NewSExt(g.ldI(tp.mrow, kk), i64), p))
				rows[r] = g.maskedLoad(tp.planes, off, m)
			}
			for r, col := range g.transpose(rows) {
				g.vstore(col, panel, g.add(g.mul(g.add(j, ci(r)), ci(wgradNB)), ci(v*L)))
			}
		}
		return nil
	})
}

// transpose returns the columns of the lanes × lanes matrix whose rows are
// rows (lanes a power of two), in log2(lanes) rounds of the perfect
// shuffle: row 2i of a round interleaves the low halves of rows i and
// i + lanes/2, row 2i+1 their high halves. A round rotates the bits of an
// entry's row index left, taking in the top bit of its column index, and
// the bits of the column index likewise, so after log2(lanes) rounds row
// and column have swapped (the transpose by perfect shuffles of Stone,
// "Parallel Processing with the Perfect Shuffle", IEEE Trans. Computers
// C-20(2), 1971).
func (g *builder) transpose(rows []value.Value) []value.Value {
	L := len(rows)
	lo, hi := g.interleave()
	for n := L; n > 1; n /= 2 {
		next := make([]value.Value, L)
		for i := 0; i < L/2; i++ {
			next[2*i] = g.b.NewShuffleVector(rows[i], rows[i+L/2], lo)
			next[2*i+1] = g.b.NewShuffleVector(rows[i], rows[i+L/2], hi)
		}
		rows = next
	}
	return rows
}
