package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Stride-1 "same" training convolutions without im2col gathers (issue 9).
//
// For a stride-1 convolution whose output plane equals its input plane
// (OH = H, OW = W: KH = 2·PH+1, KW = 2·PW+1, as every stride-1 convolution
// of the Inception networks), column p = oh·W + ow of the im2col matrix row
// k = (c, kh, kw) is x[c·H·W + p + (kh−PH)·W + (kw−PW)] wherever the input
// pixel (oh+kh−PH, ow+kw−PW) is inside the image, else zero: a row of
// 32 columns is a contiguous run of x shifted by a per-row constant, with a
// mask. The packing of the B panel is then one masked vector load
// (llvm.masked.load: vmaskmovps/AVX-512 masking; lanes outside the mask
// are never read, so no access leaves the tensor) per vector instead of a
// gather per element, with the masks built from per-tile vectors of
// (oh, ow) and per-row offsets (dh, dw) held in constant tables; a 1x1
// convolution's full 32-column blocks are not packed at all (the
// micro-kernel reads x).
//
// Rows k = c·T + t repeat per channel: row k's shift is tap t's and its
// offset tap t's plus c·H·W. Where every reduction block starts at a
// channel (kcOf(K) a multiple of T), the packing is tap-major: a loop over
// the block's channels with the T taps unrolled, each row one masked load
// at the channel's offset plus a constant, under one of T·(vectors) masks
// built once per block of pixels. The row-by-row loop spent three table
// loads and a mask computation (19 instructions for two vectors on
// AVX-512) on every row. In three alternating rounds of
// BenchmarkTrainConv (Intel Xeon VM, one thread, % of the FMA peak) the
// 3x3 16→16 at 14x14 went from 51–53 to 56–59 (forward and input
// gradient), the 1x7 32→32 from 63–67 to 66–69, the 3x3 32→48 from 52–55
// to 54–61, the phased 3x3 stride-2 32→64 forward from 44–45 to 46–48.
//
// The input gradient of such a convolution is the same kind of convolution
// (the "full" correlation of dy with the flipped, transposed kernel, e.g.
// Dumoulin and Visin, "A guide to convolution arithmetic for deep
// learning", arXiv:1603.07285, §4.1; oneDNN's backward-by-data is the same
// identity): dx[c] = Σ_o Σ_t′ W′[c][o][t′]·dy[o] shifted by t′ with
// W′[c][o][t′] = W[o][c][T−1−t′] and the same padding, so it runs on the
// same kernel — the col2im scatter of the general path, which cost far
// more than the multiply for these layers, is gone. W′ is not built: the
// micro-kernel broadcasts one element of A per row and reduction step
// anyway, so it reads W′[c][k] in place at W + wflip[k] + c·T, wflip a
// constant table of each k = o·T + t′'s offset o·C·T + T−1−t′
// (sameConv.Flip); any size of weight takes this path.

// same reports a stride-1 convolution whose output plane is its input plane.
func (s ConvGeom) same() bool {
	return s.SH == 1 && s.SW == 1 && s.OH == s.H && s.OW == s.W
}

// sameConv is one stride-1 "same" convolution run by genSameConv: per image
// n, out[n] (O×P) = A (O×K) · col(in[n]) + bias, K = C·KH·KW, P = H·W.
type sameConv struct {
	N, C, H, W, O  int
	KH, KW, PH, PW int
	In, Out, Bias  int // arena offsets; Bias < 0: none
	// Wt is the arena offset of the weight matrix A (O×K, row-major; with
	// Flip, the forward weight it is read from).
	Wt int
	// Acc, when ≥ 0, is the arena offset of an addend shaped like Out:
	// out = Acc + A·col(in) + bias (an input gradient accumulated into the
	// sum of its value's other gradients; Acc may equal Out).
	Acc int
	// Phased, when set, makes this the stride-2 convolution of phased():
	// In is then the C×H0×W0 input, H×W the output plane, and each tile (an
	// image) first splits its input into phase planes (builder.phaseSplit).
	Phased bool
	H0, W0 int
	// Outs are further outputs of a sibling group (forward, 1x1): the
	// convolutions of the same input with their own weights (Wt, row-major
	// Ch×K in the arena) into their own values (At, Ch channels per
	// image), computed in the same tiles as the first, so that a tile's
	// block of x is read from memory once for all of them. Siblings have
	// no bias and no addend.
	Outs []samePart
	// Ins are further reduction segments (the input gradient of a sibling
	// group, 1x1, one K block, no Outs, with Flip): out = Acc + Σ over
	// the segments of A_j·in_j, segment j reading Ch channels per image at
	// At, its A the forward 1x1 weight at Wt read in place as with Flip
	// (A_j[o][k] at Wt + k·O + o).
	Ins []samePart
	// Flip makes A the flipped transpose of a forward weight W (C×O×T:
	// the input gradient's dy channels by its dx channels by taps) read in
	// place at Wt in the arena: A[o][k] = W[k/T][o][T−1−k%T], and the
	// Ins' A_j likewise.
	Flip bool
	// Packed says that A, the Outs' and the Ins' matrices were written
	// at their Wt by PackWeightSpec kernels (train_pack.go), in the
	// micro-kernel's order, rather than being read in place (row-major
	// or, with Flip, flipped).
	Packed bool
	// Stats, when On, makes each block write the partial statistics of
	// Out as stored (train_bnstats.go): a forward's for its BatchNorm (as
	// Outs' Stats), an input gradient's for a bias gradient's sum.
	Stats BNStats
	// Res (forward), Scale (input gradient, nonzero) and Mask (input
	// gradient) are epilogues applied to Out's values as they are stored:
	// relu(Res.X + Res.C·v), Scale·v and v where Mask.Y > 0
	// (TrainConvSpec.Residual, TrainConvGradInputSpec.Scale and .Mask).
	// They need one reduction block and no Outs (Ins are summed first).
	Res   ResidualEpilogue
	Scale float32
	Mask  ReLUMask
}

// samePart is one further output or reduction segment of a sameConv
// sibling group: Ch channels per image at arena offset At, weights at
// arena offset Wt, and for an output the BatchNorm statistics to write.
type samePart struct {
	Ch, At, Wt int
	Stats      BNStats
}

func (s sameConv) tiles() int {
	if s.flat() {
		return ceilDiv(s.N*s.H*s.W, gemmNB)
	}
	return s.N * ceilDiv(s.H*s.W, gemmNB)
}

// flat reports a sameConv whose blocks run over the batch's pixels as one
// sequence (flatBlocks), not image by image.
func (s sameConv) flat() bool { return !s.Phased && flatBlocks(s.H*s.W) }

// flatBlocks reports an output plane of P pixels whose gemmNB-pixel blocks
// run over the batch's N·P pixels as one sequence: block q holds pixels
// [q·gemmNB, q·gemmNB + gemmNB) of the batch, the end of one image and the
// start of the next when it straddles them (P ≥ gemmNB: never more than
// two). Blocked image by image, a plane whose last block leaves most of a
// vector empty (ConvGeom.dotFill: 7x7 is 49 pixels in four 16-float
// vectors) pays a whole micro-kernel sub-block, every FMA, for that
// vector; flat, only the batch's last block is partial. The blocks then
// always pack their panel (a straddling vector reads two images: two
// masked loads), and write their outputs and statistics (BNStats.Flat) the
// same way, in two masked parts.
func flatBlocks(P int) bool {
	return P >= gemmNB && !(ConvGeom{OH: 1, OW: P}).dotFill()
}

// flatLanes returns, for the vector at column off of a flat block
// (flatBlocks) whose first column is pixel p0 of its image, the lanes
// still in that image (p0 + off + l < P; the others are pixels of the
// next) and each lane's pixel in its own image.
func (g *builder) flatLanes(p0 value.Value, off, P int) (first, pix value.Value) {
	c := g.b.NewAdd(g.splatI32(g.b.NewTrunc(p0, types.I32)), g.i32Vec(func(l int) int { return off + l }))
	pv := g.i32Vec(func(int) int { return P })
	first = g.b.NewICmp(enum.IPredULT, c, pv)
	return first, g.b.NewSelect(first, c, g.b.NewSub(c, pv))
}

// flatLoad loads the lanes of mask of a vector of a flat block: lanes of
// first at base+off, the others (the next image's) at base+off+next
// floats; lanes outside mask are zero and not read.
func (g *builder) flatLoad(base, off, mask, first value.Value, next int) value.Value {
	a := g.maskedLoad(base, off, g.and(mask, first))
	b := g.maskedLoad(base, g.add(off, ci(next)), g.and(mask, g.b.NewXor(first, g.allTrue())))
	return g.sel(first, a, b)
}

// flatStore stores the lanes of mask of v like flatLoad reads them.
func (g *builder) flatStore(v, base, off, mask, first value.Value, next int) {
	g.maskedStore(v, base, off, g.and(mask, first))
	g.maskedStore(v, base, g.add(off, ci(next)), g.and(mask, g.b.NewXor(first, g.allTrue())))
}

// allTrue is the <lanes x i1> mask with every lane set.
func (g *builder) allTrue() value.Value { return g.prefixMask(g.t.VectorLanes) }

// i32Vec returns the constant <lanes x i32> vector with lane l = f(l).
func (g *builder) i32Vec(f func(l int) int) value.Value {
	L := g.t.VectorLanes
	el := make([]constant.Constant, L)
	for l := range el {
		el[l] = constant.NewInt(types.I32, int64(f(l)))
	}
	return constant.NewVector(types.NewVector(uint64(L), types.I32), el...)
}

// splatI32 broadcasts the i32 scalar x.
func (g *builder) splatI32(x value.Value) value.Value { return g.broadcast(x) }

// maskedLoad loads the vector at base+off floats, lanes where mask (a
// <lanes x i1>) is false read nothing and are zero.
func (g *builder) maskedLoad(base, off, mask value.Value) value.Value {
	L := g.t.VectorLanes
	f := g.m.declare(fmt.Sprintf("llvm.masked.load.v%df32.p0", L), g.vec,
		types.NewPointer(g.vec), types.I32, types.NewVector(uint64(L), types.I1), g.vec)
	p := g.b.NewBitCast(g.gep(base, off), types.NewPointer(g.vec))
	return g.b.NewCall(f, p, constant.NewInt(types.I32, 4), mask, g.vzero())
}

// i32Table defines a private constant [n x i32] table named after the
// kernel function and returns a pointer to its first entry.
func (g *builder) i32Table(suffix string, vals []int) value.Value {
	el := make([]constant.Constant, len(vals))
	for i, v := range vals {
		el[i] = constant.NewInt(types.I32, int64(v))
	}
	at := types.NewArray(uint64(len(vals)), types.I32)
	gl := g.m.mod.NewGlobalDef(g.f.Name()+"."+suffix, constant.NewArray(at, el...))
	gl.Immutable = true
	gl.Linkage = enum.LinkagePrivate
	gl.Align = 64
	return g.b.NewGetElementPtr(at, gl, ci(0), ci(0))
}

// gen emits s with the weight matrix A at s.Wt. Tile (n, pb) computes
// out[n][:, 32·pb : 32·pb+32]: per reduction block (kBlocks) it packs the
// shifted, masked rows of x into the zero-padded panel (not for a 1x1
// convolution's full blocks) and runs the micro-kernel (gemmTile) over the
// output channels; the first block's accumulators start at the bias plus
// the addend, the later ones' at out.
func (s sameConv) gen(g *builder) {
	T := s.KH * s.KW
	K, P := s.C*T, s.H*s.W
	for _, sg := range s.Ins {
		K += sg.Ch * T
	}
	PB := ceilDiv(P, gemmNB)
	L := g.t.VectorLanes
	nvB := gemmNB / L
	kc := kcOf(K)
	pw := T == 1 && !s.Phased
	panel := g.stackBuf(kc * gemmNB)
	var phases value.Value
	PS := phaseStride(P)
	if s.Phased {
		phases = g.stackBuf(4 * s.C * PS)
	}
	var koffT, dhT, dwT value.Value
	var tapDH, tapDW, tapOff []int
	// tapMajor packs the panel channel by channel with the taps unrolled
	// (see the packing below): every reduction block must start at a
	// channel, so kc must be a multiple of the taps.
	tapMajor := !pw && len(s.Ins) == 0 && kc%T == 0
	cs := P // tapMajor: the floats from one input channel to the next
	if s.Phased {
		cs = 4 * PS
	}
	if !pw {
		koff, dh, dw := make([]int, K), make([]int, K), make([]int, K)
		for k := range koff {
			c, t := k/T, k%T
			kh, kw := t/s.KW, t%s.KW
			dh[k], dw[k] = kh-s.PH, kw-s.PW
			koff[k] = c*P + dh[k]*s.W + dw[k]
			if s.Phased {
				var a, b int
				a, dh[k] = phaseOf(dh[k])
				b, dw[k] = phaseOf(dw[k])
				koff[k] = (4*c+2*a+b)*PS + dh[k]*s.W + dw[k]
			}
		}
		if tapMajor {
			// Channel 0's rows hold every tap's shift and offset; channel
			// c's are cs·c further.
			for k := T; k < K; k++ {
				if dh[k] != dh[k%T] || dw[k] != dw[k%T] || koff[k] != koff[k%T]+k/T*cs {
					panic("codegen: tap-major packing needs rows that repeat per channel")
				}
			}
			tapDH, tapDW, tapOff = dh[:T], dw[:T], koff[:T]
		} else {
			koffT, dhT, dwT = g.i32Table("koff", koff), g.i32Table("dh", dh), g.i32Table("dw", dw)
		}
	}
	// initial is the value before the products of output channel o at
	// offset at (w lanes) of a part with the given bias and addend (Acc,
	// shaped like the part's output at out): the bias plus the addend.
	initial := func(o, at value.Value, load func(off value.Value) value.Value, bias, acc, out int) value.Value {
		b := g.vzero()
		if bias >= 0 {
			b = g.splat(g.ld(g.add(ci(bias), o)))
		}
		if acc < 0 {
			return b
		}
		a := load(g.add(at, ci(acc-out)))
		if bias < 0 {
			return a
		}
		return g.fadd(a, b)
	}
	src := g.arena
	if s.Phased {
		src = phases
	}
	// The outputs: s's own and its siblings'.
	type outPart struct {
		O, Out, Bias, Acc int
		// a is A[o0+r][k] for row r of the row block of mr rows from o0.
		a     func(o0 value.Value, r, mr int, k value.Value) value.Value
		stats BNStats
	}
	// rowMajor (or packed) reads a part's A at wt.
	rowMajor := func(wt int) func(o0 value.Value, r, mr int, k value.Value) value.Value {
		if s.Packed {
			return func(o0 value.Value, r, mr int, k value.Value) value.Value {
				return g.load(g.arena, g.packedA(wt, K, o0, r, mr, k))
			}
		}
		return func(o0 value.Value, r, mr int, k value.Value) value.Value {
			return g.load(g.arena, g.add(ci(wt), g.add(g.mul(g.add(o0, ci(r)), ci(K)), k)))
		}
	}
	a0 := rowMajor(s.Wt)
	if s.Flip && !s.Packed {
		wflip := make([]int, s.C*T)
		for k := range wflip {
			wflip[k] = k/T*s.O*T + T - 1 - k%T
		}
		wflipT := g.i32Table("wflip", wflip)
		a0 = func(o0 value.Value, r, _ int, k value.Value) value.Value {
			return g.load(g.arena, g.add(ci(s.Wt), g.add(g.b.NewSExt(g.ldI(wflipT, k), i64), g.mul(g.add(o0, ci(r)), ci(T)))))
		}
	}
	parts := []outPart{{s.O, s.Out, s.Bias, s.Acc, a0, s.Stats}}
	for _, pt := range s.Outs {
		parts = append(parts, outPart{pt.Ch, pt.At, -1, -1, rowMajor(pt.Wt), pt.Stats})
	}
	// The reduction segments: s's input and, with Ins, its siblings';
	// kstart[j] is segment j's first row of K.
	segs := append([]samePart{{Ch: s.C, At: s.In, Wt: s.Wt}}, s.Ins...)
	kstart := make([]int, len(segs))
	for j := 1; j < len(segs); j++ {
		kstart[j] = kstart[j-1] + segs[j-1].Ch*T
	}
	multi := len(segs) > 1
	flat := s.flat()
	if (s.Res.On || s.Scale != 0 || s.Mask.On) && (kc != K || len(s.Outs) > 0) {
		panic("codegen: a sameConv epilogue needs one reduction block and no sibling outputs")
	}
	// block computes the gemmNB pixels from pixel p0 of image n (flat:
	// the w pixels from there on, into the next image) as block q of the
	// statistics; widths calls its body with the block's width.
	block := func(n, p0, q value.Value, widths func(body func(w int))) {
		xs := make([]value.Value, len(segs)) // segment j's image n
		for j, sg := range segs {
			xs[j] = g.add(ci(sg.At), g.mul(n, ci(sg.Ch*P)))
		}
		x := xs[0]
		if s.Phased {
			x = ci(0)
		}
		ys := make([]value.Value, len(parts))
		for j, pt := range parts {
			ys[j] = g.add(ci(pt.Out), g.add(g.mul(n, ci(pt.O*P)), p0))
		}
		// (oh, ow) of the block's columns; columns past P get oh = colFar,
		// outside every row range.
		ohv, owv := make([]value.Value, nvB), make([]value.Value, nvB)
		fst := make([]value.Value, nvB) // flat: the lanes in image n
		for v := 0; v < nvB; v++ {
			if !flat {
				_, ohv[v], owv[v] = g.pixelVec(p0, v*L, P, s.W)
				continue
			}
			var pv value.Value
			fst[v], pv = g.flatLanes(p0, v*L, P)
			wv := g.i32Vec(func(int) int { return s.W })
			ohv[v], owv[v] = g.b.NewUDiv(pv, wv), g.b.NewURem(pv, wv)
		}
		hv, wv := g.i32Vec(func(int) int { return s.H }), g.i32Vec(func(int) int { return s.W })
		var tapMask [][]value.Value
		if tapMajor {
			tapMask = g.tapMasks(ohv, owv, tapDH, tapDW, hv, wv)
		}
		widths(func(w int) {
			direct := pw && w == gemmNB && !flat
			// inW is the lanes of vector v inside the block's w columns
			// (flat: the batch's last block may be short; otherwise the
			// columns past P read as pixels outside the image).
			inW := func(v int) value.Value { return g.prefixMask(w - v*L) }
			// load reads the panel rows' vector v at off (segment of ch
			// channels) where mask.
			load := func(off, mask value.Value, v, ch int) value.Value {
				if !flat {
					return g.maskedLoad(src, off, mask)
				}
				return g.flatLoad(src, off, g.and(mask, inW(v)), fst[v], (ch-1)*P)
			}
			g.kBlocks(K, func(k0 value.Value, kn int, first bool) {
				if !direct && multi {
					for j, sg := range segs {
						g.loopN(sg.Ch, nil, func(kk value.Value, _ []value.Value) []value.Value {
							for v := 0; v < nvB; v++ {
								off := g.add(xs[j], g.add(g.mul(kk, ci(P)), g.add(p0, ci(v*L))))
								mask := g.b.NewICmp(enum.IPredULT, ohv[v], hv)
								g.vstore(load(off, mask, v, sg.Ch), panel, g.add(g.mul(g.add(kk, ci(kstart[j])), ci(gemmNB)), ci(v*L)))
							}
							return nil
						})
					}
				} else if tapMajor {
					g.packTapMajor(panel, g.add(x, p0), k0, kn, cs, tapOff, tapMask, func(off, mask value.Value, v int) value.Value {
						return load(off, mask, v, s.C)
					})
				} else if !direct {
					g.loopN(kn, nil, func(kk value.Value, _ []value.Value) []value.Value {
						k := g.add(k0, kk)
						for v := 0; v < nvB; v++ {
							var off, mask value.Value
							if pw {
								off = g.add(x, g.add(g.mul(k, ci(P)), g.add(p0, ci(v*L))))
								mask = g.b.NewICmp(enum.IPredULT, ohv[v], hv)
							} else {
								off = g.add(x, g.add(g.b.NewSExt(g.ldI(koffT, k), i64), g.add(p0, ci(v*L))))
								ih := g.b.NewAdd(ohv[v], g.splatI32(g.ldI(dhT, k)))
								iw := g.b.NewAdd(owv[v], g.splatI32(g.ldI(dwT, k)))
								mask = g.b.NewAnd(g.b.NewICmp(enum.IPredULT, ih, hv), g.b.NewICmp(enum.IPredULT, iw, wv))
							}
							g.vstore(load(off, mask, v, s.C), panel, g.add(g.mul(kk, ci(gemmNB)), ci(v*L)))
						}
						return nil
					})
				}
				g.subBlocks(w, func(j0, nv, wl int) {
					for pj, pt := range parts {
						g.blocks(pt.O, balancedMR(g.t, pt.O), func(o0 value.Value, mr int) {
							yo := g.add(ys[pj], g.mul(o0, ci(P)))
							cOff := func(r, v int) value.Value { return g.add(yo, ci(r*P+j0+v*L)) }
							// cLoad and cStore read and write the output's
							// (or addend's) vector v of row r at off.
							cLoad := func(off value.Value, v int) value.Value {
								lanes := lanesOf(v, nv, wl, L)
								if !flat {
									return g.vloadN(g.arena, off, lanes)
								}
								return g.flatLoad(g.arena, off, g.prefixMask(lanes), fst[j0/L+v], (pt.O-1)*P)
							}
							cStore := func(x, off value.Value, v int) {
								lanes := lanesOf(v, nv, wl, L)
								if !flat {
									g.vstoreN(x, g.arena, off, lanes)
									return
								}
								g.flatStore(x, g.arena, off, g.prefixMask(lanes), fst[j0/L+v], (pt.O-1)*P)
							}
							// One micro-kernel run per segment, the
							// accumulators carried from one to the next.
							var acc []value.Value
							for j, sg := range segs {
								kn, row0, prev := kn, 0, acc
								if multi {
									kn, row0 = sg.Ch, kstart[j]
								}
								acc = g.gemmTile(mr, nv, kn,
									func(r, v int) value.Value {
										switch {
										case prev != nil:
											return prev[r*nv+v]
										case first:
											return initial(g.add(o0, ci(r)), cOff(r, v), func(off value.Value) value.Value { return cLoad(off, v) }, pt.Bias, pt.Acc, pt.Out)
										}
										return cLoad(cOff(r, v), v)
									},
									func(r int, kk value.Value) value.Value {
										switch {
										case multi && s.Packed:
											return g.load(g.arena, g.packedA(sg.Wt, sg.Ch*T, o0, r, mr, kk))
										case multi:
											return g.load(g.arena, g.add(ci(sg.Wt), g.add(g.mul(kk, ci(s.O)), g.add(o0, ci(r)))))
										}
										return pt.a(o0, r, mr, g.add(k0, kk))
									},
									func(v int, kk value.Value) value.Value {
										switch {
										case direct && multi:
											return g.vload(g.arena, g.add(xs[j], g.add(g.mul(kk, ci(P)), g.add(p0, ci(j0+v*L)))))
										case direct:
											return g.vload(g.arena, g.add(x, g.add(g.mul(g.add(k0, kk), ci(P)), g.add(p0, ci(j0+v*L)))))
										}
										return g.vload(panel, g.add(g.mul(g.add(kk, ci(row0)), ci(gemmNB)), ci(j0+v*L)))
									})
							}
							for r := 0; r < mr; r++ {
								for v := 0; v < nv; v++ {
									y := acc[r*nv+v]
									if pj == 0 && s.Scale != 0 {
										y = g.fmul(y, g.vconst(float64(s.Scale)))
									}
									if pj == 0 && s.Res.On {
										// Rounded as the unfused mul, add
										// and relu (no FMA).
										x := cLoad(g.add(cOff(r, v), ci(s.Res.X-s.Out)), v)
										y = g.relu(g.fadd(x, g.fmul(y, g.vconst(float64(s.Res.C)))))
									}
									if pj == 0 && s.Mask.On {
										m := cLoad(g.add(cOff(r, v), ci(s.Mask.Y-s.Out)), v)
										y = g.sel(g.b.NewFCmp(enum.FPredOGT, m, g.vzero()), y, g.vzero())
									}
									cStore(y, cOff(r, v), v)
								}
							}
						})
					}
				})
			})
			for pj, pt := range parts {
				var first []value.Value
				if flat {
					first = fst
				}
				g.blockStats(pt.stats, ys[pj], pt.O, P, w, pt.stats.blocks(s.N, P), q, first)
			}
		})
	}
	perImage := func(n, pb value.Value) {
		block(n, g.mul(pb, ci(gemmNB)), g.add(g.mul(n, ci(PB)), pb), func(body func(w int)) {
			g.lastOr(pb, PB, gemmNB, P-(PB-1)*gemmNB, body)
		})
	}
	g.tiles(func(t value.Value) {
		if flat {
			NT := s.tiles()
			j := g.mul(t, ci(gemmNB))
			block(g.udiv(j, P), g.urem(j, P), t, func(body func(w int)) {
				g.lastOr(t, NT, gemmNB, s.N*P-(NT-1)*gemmNB, body)
			})
			return
		}
		if !s.Phased {
			perImage(g.udiv(t, PB), g.urem(t, PB))
			return
		}
		g.phaseSplit(phases, g.add(ci(s.In), g.mul(t, ci(s.C*s.H0*s.W0))), s.C, s.H0, s.W0, PS)
		g.loopN(PB, nil, func(pb value.Value, _ []value.Value) []value.Value {
			perImage(t, pb)
			return nil
		})
	})
}

// phased reports a stride-2 convolution that runs as a stride-1 one over
// the four phase planes of its input (x_ab[i][j] = x[2i+a][2j+b]): every
// tap (kh, kw) reads phase ((kh−PH) mod 2, (kw−PW) mod 2) shifted by
// ⌊(kh−PH)/2⌋ ∈ {−1, 0} rows (and likewise columns), and every phase plane
// fits the output plane (OH = ⌈H/2⌉, OW = ⌈W/2⌉): the 3x3 stride-2 "same"
// convolutions of the mini networks and any 1x1 stride-2 one. The split
// costs one pass over the image; the convolution then packs its panels by
// masked vector loads instead of gathers. The phase planes of one image
// (4·C planes, phaseStride floats apart) live in a stack buffer, bounded
// by phaseMax.
func (s ConvGeom) phased() bool {
	return s.SH == 2 && s.SW == 2 && s.OH == ceilDiv(s.H, 2) && s.OW == ceilDiv(s.W, 2) &&
		s.PH <= 2 && s.KH-1-s.PH <= 1 && s.PW <= 2 && s.KW-1-s.PW <= 1 &&
		4*s.C*phaseStride(s.OH*s.OW) <= phaseMax
}

// phaseStride is the floats from one phase plane of P pixels to the next
// in a split (builder.phaseSplit): P rounded up to a cache line's floats,
// plus one line of padding for the split's whole-vector stores.
func phaseStride(P int) int { return (ceilDiv(P, lineFloats) + 1) * lineFloats }

// phaseMax bounds the phase planes kept on the stack (128 KiB).
const phaseMax = 32 << 10

// phaseOf returns the phase a = d mod 2 and the shift ⌊d/2⌋ of a window
// offset d = k − pad (−2 ≤ d): input row 2·o + d of output row o is row
// o + shift of phase a.
func phaseOf(d int) (a, shift int) {
	a = (d + 2) % 2
	return a, (d - a) / 2
}

// phaseSplit stores the phase planes (H×W each, H = ⌈H0/2⌉, W = ⌈W0/2⌉,
// ps ≥ H·W + lanes floats apart) of the C planes H0×W0 at arena offset x
// into buf: buf[(c·4 + a·2 + b)·ps + i·W + j] = x[c][2i+a][2j+b], zero
// where 2i+a ≥ H0 or 2j+b ≥ W0. Per input row it loads the row's pairs of
// columns as vectors (masked loads with constant masks: nothing past the
// row is read) and separates even and odd columns with two shuffles. The
// stores are whole vectors: a row's last one runs past the row into the
// next row, written after it, or into the plane's padding (ps − H·W ≥
// lanes), which nothing reads. With masked stores (and a per-row mask) the
// split cost more: in alternating runs of BenchmarkTrainConv (fw, Zen 5,
// one thread) the mini nets' 3x3 stride-2 32→64 at 28x28 went from
// 132–135 to 138–141 GFLOP/s with whole-vector stores, 48→48 at 14x14 from
// 106–110 to 113–118.
func (g *builder) phaseSplit(buf, x value.Value, C, H0, W0, ps int) {
	L := g.t.VectorLanes
	H, W := ceilDiv(H0, 2), ceilDiv(W0, 2)
	if ps < H*W+L {
		panic("codegen: phase planes without padding")
	}
	g.loopN(C, nil, func(c value.Value, _ []value.Value) []value.Value {
		g.loopN(H0, nil, func(r value.Value, _ []value.Value) []value.Value {
			i, a := g.udiv(r, 2), g.urem(r, 2)
			plane := g.add(g.mul(c, ci(4)), g.mul(a, ci(2)))
			dst0 := g.add(g.mul(plane, ci(ps)), g.mul(i, ci(W)))
			src := g.add(x, g.add(g.mul(c, ci(H0*W0)), g.mul(r, ci(W0))))
			for j0 := 0; j0 < W; j0 += L {
				// Output columns j0..j0+L read input columns 2·j0 .. 2·j0+2L.
				lo := g.maskedLoad(g.arena, g.add(src, ci(2*j0)), g.prefixMask(W0-2*j0))
				hi := g.vzero()
				if W0 > 2*j0+L {
					hi = g.maskedLoad(g.arena, g.add(src, ci(2*j0+L)), g.prefixMask(W0-2*j0-L))
				}
				ev := g.b.NewShuffleVector(lo, hi, g.i32Vec(func(l int) int { return 2 * l }))
				od := g.b.NewShuffleVector(lo, hi, g.i32Vec(func(l int) int { return 2*l + 1 }))
				g.vstore(ev, buf, g.add(dst0, ci(j0)))
				g.vstore(od, buf, g.add(dst0, ci(ps+j0)))
			}
			return nil
		})
		if H0%2 == 1 {
			// Row H−1 of the odd-row planes is past the image: zero,
			// after row H−2 ran into it.
			for b := 0; b < 2; b++ {
				row := g.add(g.mul(g.add(g.mul(c, ci(4)), ci(2+b)), ci(ps)), ci((H-1)*W))
				for j0 := 0; j0 < W; j0 += L {
					g.vstore(g.vzero(), buf, g.add(row, ci(j0)))
				}
			}
		}
		return nil
	})
}

// interleave returns the shuffle masks that interleave two vectors a and
// b lane by lane: lo gives a0 b0 a1 b1 … of their first halves, hi of
// their second halves (merging phase planes' even and odd columns).
func (g *builder) interleave() (lo, hi value.Value) {
	L := g.t.VectorLanes
	lo = g.i32Vec(func(l int) int { return l/2 + l%2*L })
	hi = g.i32Vec(func(l int) int { return (L+l)/2 + l%2*L })
	return lo, hi
}

// prefixMask is the constant lane mask whose first w lanes are set.
func (g *builder) prefixMask(w int) value.Value {
	el := make([]constant.Constant, g.t.VectorLanes)
	for l := range el {
		el[l] = constant.NewBool(l < w)
	}
	return constant.NewVector(types.NewVector(uint64(len(el)), types.I1), el...)
}

// phasedFwd is the forward convolution of s (phased()) as a sameConv over
// its phase planes.
func (s TrainConvSpec) phasedFwd() sameConv {
	return sameConv{N: s.N, C: s.C, H: s.OH, W: s.OW, O: s.O, KH: s.KH, KW: s.KW, PH: s.PH, PW: s.PW,
		In: s.X, Out: s.Out, Bias: s.Bias, Acc: -1, Wt: s.Wt, Phased: true, H0: s.H, W0: s.W, Stats: s.Stats, Packed: s.Packed}
}

// sameFwd is the forward convolution of s as a sameConv.
func (s TrainConvSpec) sameFwd() sameConv {
	return sameConv{N: s.N, C: s.C, H: s.H, W: s.W, O: s.O, KH: s.KH, KW: s.KW, PH: s.PH, PW: s.PW,
		In: s.X, Out: s.Out, Bias: s.Bias, Acc: -1, Wt: s.Wt, Stats: s.Stats, Res: s.Residual, Packed: s.Packed}
}

// sameOK reports whether the input gradient runs as a sameConv.
func (s TrainConvGradInputSpec) sameOK() bool { return s.same() }

// sameDgrad is the input gradient of s as a sameConv: input dy (O
// channels), output dx (C channels), weight W′ (C×O·T) read in place from
// W (Flip) or packed beforehand (Packed), the siblings' gradients as
// further reduction segments.
func (s TrainConvGradInputSpec) sameDgrad() sameConv {
	sc := sameConv{N: s.N, C: s.O, H: s.H, W: s.W, O: s.C, KH: s.KH, KW: s.KW, PH: s.PH, PW: s.PW,
		In: s.DY, Out: s.DX, Bias: -1, Acc: s.Acc, Wt: s.Wt, Flip: true, Packed: s.Packed, Scale: s.Scale, Mask: s.Mask, Stats: s.Stats}
	for _, sb := range s.Siblings {
		sc.Ins = append(sc.Ins, samePart{Ch: sb.O, At: sb.Data, Wt: sb.Wt})
	}
	return sc
}

// genSame runs sameDgrad.
func (s TrainConvGradInputSpec) genSame(g *builder) { s.sameDgrad().gen(g) }

// The weight gradient of a stride-1 "same" convolution, dW[o][k] =
// Σ_n Σ_p dy[n][o][p]·col[n][k][p], runs in dot-product form where the
// packed matrix-product form (transPack, train_gemm.go) does not: both operands
// are read along p, where they are contiguous (dy rows as they are; col
// rows as the shifted, masked rows of x, so nothing is packed or
// transposed). The register tile is wgMR output channels × wgNR rows of K,
// each accumulator a vector of partial sums over p; per vector of p the
// kernel loads wgMR dy vectors (folded into the FMAs) and wgNR masked x
// vectors for wgMR·wgNR FMAs. A tile owns wgMR channels × a group of
// wgNR-row blocks of K and reduces over the whole batch (or its run of
// images when the batch is split: WgradSplit) in chunks of
// images (wgChunk): within a chunk each register block's accumulators stay
// in registers across the chunk's images, and the chunk's dy rows (sized to
// fit L1 with one block's x rows) stay in L1 across the group's blocks; the
// group's partial sums live in a stack buffer between chunks (none with one
// chunk), so dy is streamed once per group rather than once per block. At
// the end each accumulator is summed across its lanes into dW (one writer
// per element, no zeroing).
// A row's mask (which of its columns read a pixel inside the image) comes
// from a per-call stack table of one mask row per tap (wgMaskMax), so the
// inner loop spends one load on it, not two loads and five vector
// operations; planes up to wgMaxP pixels (larger ones use the im2col
// kernel, except 1x1 convolutions, which need no table). Rows longer than
// wgSegment are swept segment by segment (each chunk is then one image,
// and the next-image prefetch is off: the next image is a whole plane of
// segments away). On AVX2 the register tile is 4 channels × 3 rows: 12
// accumulators, 3 x vectors and one dy vector fill the 16 registers, and a
// vector step's 12 FMAs take 4 dy loads, 3 masked x loads, 3 mask loads
// and 3.5 prefetches (one per cache line), where the earlier 4 × 2 tile's
// 8 FMAs took 4 dy loads, 2 masked x loads, 2 (oh, ow) table loads, a
// spilled register and 6 prefetches: Zen 2 issues two loads per cycle
// and two FMAs, so that loop was bound by loads (TestTrainWgradAssembly
// checks the tile stays in registers).

const wgMaxP = 4096

// wgMaskMax bounds the weight gradient's mask table (taps × pixels, i32
// entries on the stack: 64 KiB); larger convolutions compute each row's
// mask from per-pixel (oh, ow) tables in the inner loop instead.
const wgMaskMax = 16 << 10

// lineFloats is the floats of a cache line (64 bytes on every target).
const lineFloats = 16

// wgNC is the most images per chunk of the weight gradient: a register
// tile's accumulators stay in registers over a chunk's images and go
// through the stack buffer only between chunks.
const wgNC = 16

// wgL1 is the L1 budget of a weight-gradient chunk (bytes): the dy rows of
// a tile's channels and the x rows of one register block for the chunk's
// images, so that dy stays in L1 while the tile's blocks of K take turns.
const wgL1 = 32 << 10

// wgChunk returns the images per chunk: as many as fit wgL1, 1 to wgNC.
func (s TrainConvGradWeightSpec) wgChunk() int {
	per := (wgTO + 3) * s.OH * s.OW * 4
	return max(1, min(wgNC, wgL1/per))
}

// wgSegment returns the floats of a row segment of the weight gradient (a
// multiple of a cache line's floats, at least the plane's vectors when the
// plane is short enough): a tile sweeps its register blocks over one
// segment of its dy and x rows, across the chunk's images, before the next
// one, with the partial sums in the stack buffer between segments. The
// segment is twice the pixels whose tile of dy rows and register block of x
// rows fill wgL1 (832 floats): a register block's rows stay in L1 and the
// tile's in L2. In alternating runs of BenchmarkTrainConvGradWeight
// (2 threads, Zen 3) Inception-v4's 3x3 192→224 and 1x1 384→96 at 35x35
// (1,225 pixels, formerly one pass over the whole plane) went from 66–75
// to 89–107 and from 59–62 to 71–88 GFLOP/s; on its 73x73 planes segments
// of 416 floats ran at 45–77 GFLOP/s, of 832 at 74–92 (BENCHMARKS.md).
func (s TrainConvGradWeightSpec) wgSegment(lanes int) int {
	line := max(lanes, lineFloats)
	seg := max(line, 2*wgL1/((wgTO+3)*4)/line*line)
	return min(seg, ceilDiv(s.OH*s.OW, lanes)*lanes)
}

func (s TrainConvGradWeightSpec) sameOK() bool {
	return s.contiguous() && (s.OH*s.OW <= wgMaxP || s.KH*s.KW == 1)
}

// contiguous reports a stride-1 convolution whose output rows are as wide
// as its input rows: column p of an im2col row is then x at the row's
// offset + p (masked), for every padding.
func (s ConvGeom) contiguous() bool { return s.SH == 1 && s.SW == 1 && s.OW == s.W }

// wgShape returns the register tile (channels, rows of K) for target t.
func wgShape(t Target) (mr, nr int) {
	if t.Registers >= 32 {
		return 8, 3
	}
	return 4, 3
}

// wgTO is the channels of a weight-gradient tile (a multiple of every
// target's wgShape channels, so that tiles are target independent). 16
// rather than 8 reads x half as often for the same L1-sized chunks: in
// alternating rounds of BenchmarkTrainConvGradWeight (2 threads) the 1x1
// gradients of the mini nets went from 127–135 to 143–153 GFLOP/s (64 → 16
// channels) and from 179–214 to 213–250 (176 → 32); 32 and 64 were slower
// than 16 (the chunk's dy rows no longer fit L1).
const wgTO = 16

// wgGroup returns the rows of K per tile and the number of such groups:
// up to 24 rows (a multiple of every wgShape row count), fewer when that
// leaves fewer than 8 tiles. A K of at most 24 rows is one group: every
// group streams all of its channels' dy, and with so few rows per pixel
// that traffic dominates (the mini nets' first 3x3 over one channel, 32
// channels at 28x28, batch 128, BenchmarkTrainConvGradWeight on 2 threads
// of an Intel Xeon VM: 102–106 GFLOP/s in 4 tiles, 119–123 in 2).
func (s TrainConvGradWeightSpec) wgGroup() (rows, groups int) {
	K := s.C * s.KH * s.KW
	want := ceilDiv(8, ceilDiv(s.O, wgTO)) // groups for 8 tiles
	rows = min(24, max(6, ceilDiv(ceilDiv(K, want), 6)*6))
	if K <= 24 {
		rows = ceilDiv(K, 6) * 6
	}
	return rows, ceilDiv(K, rows)
}

func (s TrainConvGradWeightSpec) sameTiles() int {
	S, _, _ := s.wgSplit()
	return S * s.sameRunTiles()
}

// sameRunTiles is the dot-product kernel's tiles per run of images: each
// part's blocks of channels times its groups of K.
func (s TrainConvGradWeightSpec) sameRunTiles() int {
	n := 0
	for _, p := range s.parts() {
		_, groups := p.wgGroup()
		n += ceilDiv(p.O, wgTO) * groups
	}
	return n
}

// wgSplitBytes bounds the x and dy bytes of one run of images of a split
// weight gradient (WgradSplit): a quarter of a 2 MiB L2.
const wgSplitBytes = 512 << 10

// WgradSplit returns the runs of images into which the lowering splits
// the batch of s's dot-product weight gradient (1: none). Each tile of
// the unsplit kernel reduces over the whole batch for its block of
// output channels and group of rows of K, so every tile streams its dy
// rows and x rows from memory: dy is read once per group of K, x once per
// block of channels (six and four times for mini_inception's 1x1 64→16
// and 64→64). Split, a tile reduces over one run of images whose x and dy
// fit L2, the run's tiles are adjacent (a thread's share holds most of a
// run), so the batch is read from memory about once; each run writes a
// partial dW and a ChannelSumSpec adds the runs. Runs hold at least two
// images; larger planes are not split.
func (s ConvGeom) WgradSplit() int {
	per := wgSplitBytes / ((s.C*s.H*s.W + s.O*s.OH*s.OW) * 4)
	if per < 2 {
		return 1
	}
	return max(1, ceilDiv(s.N, per))
}

// wgSplit returns the runs of images of s's dot-product kernel, the
// images per run and the last run's (S = 1: the whole batch, written to
// DW).
func (s TrainConvGradWeightSpec) wgSplit() (S, per, last int) {
	if s.Split <= 1 {
		return 1, s.N, s.N
	}
	per = ceilDiv(s.N, s.Split)
	S = ceilDiv(s.N, per)
	return S, per, s.N - (S-1)*per
}

// SplitRuns returns the runs s's kernel writes partial sums for (1: it
// writes DW itself); the caller adds them with a ChannelSumSpec of Outer
// SplitRuns(), C O·C·KH·KW, Inner 1, from Partial into DW.
func (s TrainConvGradWeightSpec) SplitRuns() int {
	S, _, _ := s.wgSplit()
	return S
}

// genSame emits the dot-product weight gradient (see above).
func (s TrainConvGradWeightSpec) genSame(g *builder) {
	T := s.KH * s.KW
	K, Pin, P := s.C*T, s.H*s.W, s.OH*s.OW
	L := g.t.VectorLanes
	MR, NR := wgShape(g.t)
	PV, tail := P/L, P%L
	NC := s.wgChunk()
	U := max(1, lineFloats/L) // vectors per cache line: one prefetch each
	GU := PV / U              // whole cache-line groups of vectors per row
	segU := max(1, s.wgSegment(L)/(U*L))
	nseg := max(1, ceilDiv(GU, segU))
	pw := T == 1
	parts := s.parts()
	maxKG := 0
	for _, p := range parts {
		kg, _ := p.wgGroup()
		maxKG = max(maxKG, kg)
	}
	accBuf := g.stackBuf(maxKG * wgTO * L)
	// Pp is a row's length in the mask table, P rounded up to vectors.
	Pp := ceilDiv(P, L) * L
	tab := !pw && T*Pp <= wgMaskMax
	var koffT, mrowT, maskT, dhT, dwT, ohT, owT value.Value
	if !pw {
		koff, mrow, dh, dw := make([]int, K), make([]int, K), make([]int, K), make([]int, K)
		for k := range koff {
			c, t := k/T, k%T
			dh[k], dw[k] = t/s.KW-s.PH, t%s.KW-s.PW
			koff[k] = c*Pin + dh[k]*s.W + dw[k]
			mrow[k] = t * Pp
		}
		koffT = g.i32Table("koff", koff)
		if tab {
			// One mask row per tap (rows k < T are taps 0..T−1).
			tdh, tdw := dh[:T], dw[:T]
			mrowT, maskT = g.i32Table("mrow", mrow), g.tapMaskTable(tdh, tdw, s.H, s.W, s.OW, P, Pp)
		} else {
			// Per column p: its row (colFar past P) and column; the
			// inner loop compares them, shifted by the row's tap, with
			// the image.
			dhT, dwT = g.i32Table("dh", dh), g.i32Table("dw", dw)
			ohT, owT = g.stackI32(Pp), g.stackI32(Pp)
			g.loopN(Pp, nil, func(p value.Value, _ []value.Value) []value.Value {
				in := g.icmp(enum.IPredULT, p, ci(P))
				g.stI(g.sel(in, g.udiv(p, s.OW), ci(colFar)), ohT, p)
				g.stI(g.urem(p, s.OW), owT, p)
				return nil
			})
		}
	}
	hv, wv := g.i32Vec(func(int) int { return s.H }), g.i32Vec(func(int) int { return s.W })
	tailMask := func() value.Value { return g.prefixMask(tail) }
	// mkRun returns, for part s (one weight gradient of the kernel), its
	// tiles per run of images and run: one of its tiles over nImg images
	// from image nb, writing its sums at dwAt (its DW, or its run's partial
	// dW when the batch is split).
	mkRun := func(s TrainConvGradWeightSpec) (int, func(t, nb value.Value, nImg int, dwAt value.Value)) {
		KG, G := s.wgGroup()
		OB := ceilDiv(s.O, wgTO)
		return OB * G, func(t, nb value.Value, nImg int, dwAt value.Value) {
			buffered := ceilDiv(nImg, NC) > 1 || nseg > 1
			ob, kg := g.udiv(t, G), g.urem(t, G)
			o0, kg0 := g.mul(ob, ci(wgTO)), g.mul(kg, ci(KG))
			g.lastOr(ob, OB, wgTO, s.O-(OB-1)*wgTO, func(osz int) {
				g.lastOr(kg, G, KG, K-(G-1)*KG, func(kn int) {
					if buffered {
						g.fillBuf(accBuf, KG*wgTO*L)
					}
					g.blocks(nImg, NC, func(n0 value.Value, nc int) {
						// seg runs the chunk over the cache-line groups
						// [gFrom, gTo) of every row, and the rest of the row
						// (its last vectors and tail) when final.
						seg := func(gFrom, gTo value.Value, final bool) {
							g.blocks(osz, MR, func(oo value.Value, mr int) {
								g.blocks(kn, NR, func(kb value.Value, nr int) {
									k0 := g.add(kg0, kb)
									// Per row of the block: its x offset within an
									// image and its row of the mask table (or its
									// tap's shifts).
									koff, mrow := make([]value.Value, nr), make([]value.Value, nr)
									dhv, dwv := make([]value.Value, nr), make([]value.Value, nr)
									for c := 0; c < nr; c++ {
										k := g.add(k0, ci(c))
										switch {
										case pw:
											koff[c] = g.mul(k, ci(Pin))
											continue
										case tab:
											mrow[c] = g.b.NewSExt(g.ldI(mrowT, k), i64)
										default:
											dhv[c], dwv[c] = g.splatI32(g.ldI(dhT, k)), g.splatI32(g.ldI(dwT, k))
										}
										koff[c] = g.b.NewSExt(g.ldI(koffT, k), i64)
									}
									accAt := func(r, c int) value.Value {
										return g.mul(g.add(g.mul(g.add(kb, ci(c)), ci(wgTO)), g.add(oo, ci(r))), ci(L))
									}
									acc := make([]value.Value, mr*nr)
									for r := 0; r < mr; r++ {
										for c := 0; c < nr; c++ {
											if buffered {
												acc[r*nr+c] = g.vload(accBuf, accAt(r, c))
											} else {
												acc[r*nr+c] = g.vzero()
											}
										}
									}
									acc = g.loopN(nc, acc, func(ni value.Value, acc []value.Value) []value.Value {
										n := g.add(nb, g.add(n0, ni))
										x := g.add(ci(s.X), g.mul(n, ci(s.C*Pin)))
										dy := g.add(ci(s.DY), g.add(g.mul(n, ci(s.O*P)), g.mul(g.add(o0, oo), ci(P))))
										xoff := make([]value.Value, nr)
										for c := range xoff {
											xoff[c] = g.add(x, koff[c])
										}
										step := func(p value.Value, last, pf bool, a []value.Value) []value.Value {
											// Prefetch the same x and dy rows of the
											// next image: a row is a short run, one
											// image (C·H·W or O·OH·OW floats) from the
											// next, which the hardware prefetchers
											// find too late (see groupVecs). Once
											// per cache line: on AVX2 and NEON a
											// prefetch per vector would take as many
											// load slots as the operands.
											pf = pf && nseg == 1
											for c := 0; pf && c < nr; c++ {
												g.prefetch(g.add(g.add(xoff[c], p), ci(s.C*Pin)))
											}
											for r := 0; pf && r < mr; r++ {
												g.prefetch(g.add(dy, g.add(ci(r*P+s.O*P), p)))
											}
											colv := make([]value.Value, nr)
											for c := 0; c < nr; c++ {
												switch {
												case pw && !last:
													colv[c] = g.vload(g.arena, g.add(xoff[c], p))
												case pw:
													colv[c] = g.maskedLoad(g.arena, g.add(xoff[c], p), tailMask())
												case tab:
													colv[c] = g.maskedLoad(g.arena, g.add(xoff[c], p), g.tableMask(maskT, g.add(mrow[c], p)))
												default:
													ih := g.b.NewAdd(g.ldI32Vec(ohT, p), dhv[c])
													iw := g.b.NewAdd(g.ldI32Vec(owT, p), dwv[c])
													m := g.b.NewAnd(g.b.NewICmp(enum.IPredULT, ih, hv), g.b.NewICmp(enum.IPredULT, iw, wv))
													colv[c] = g.maskedLoad(g.arena, g.add(xoff[c], p), m)
												}
											}
											out := make([]value.Value, len(a))
											for r := 0; r < mr; r++ {
												var d value.Value
												if last {
													d = g.maskedLoad(g.arena, g.add(dy, g.add(ci(r*P), p)), tailMask())
												} else {
													d = g.vload(g.arena, g.add(dy, g.add(ci(r*P), p)))
												}
												for c := 0; c < nr; c++ {
													out[r*nr+c] = g.fma(d, colv[c], a[r*nr+c])
												}
											}
											return out
										}
										// U vectors per iteration span one cache
										// line; the first of them prefetches.
										if GU > 0 {
											acc = g.loopNoUnroll(gFrom, gTo, acc, func(v value.Value, a []value.Value) []value.Value {
												for u := 0; u < U; u++ {
													a = step(g.mul(g.add(g.mul(v, ci(U)), ci(u)), ci(L)), false, u == 0, a)
												}
												return a
											})
										}
										if !final {
											return acc
										}
										for v := GU * U; v < PV; v++ {
											acc = step(ci(v*L), false, v == GU*U, acc)
										}
										if tail > 0 {
											acc = step(ci(PV*L), true, PV%U == 0, acc)
										}
										return acc
									})
									for r := 0; r < mr; r++ {
										for c := 0; c < nr; c++ {
											if buffered {
												g.vstore(acc[r*nr+c], accBuf, accAt(r, c))
												continue
											}
											sum := g.hreduce(acc[r*nr+c], g.radd)
											g.st(sum, g.add(dwAt, g.add(g.mul(g.add(o0, g.add(oo, ci(r))), ci(K)), g.add(k0, ci(c)))))
										}
									}
								})
							})
						}
						if nseg == 1 {
							seg(ci(0), ci(GU), true)
							return
						}
						g.loopN(nseg-1, nil, func(sv value.Value, _ []value.Value) []value.Value {
							from := g.mul(sv, ci(segU))
							seg(from, g.add(from, ci(segU)), false)
							return nil
						})
						seg(ci((nseg-1)*segU), ci(GU), true)
					})
					if !buffered {
						return
					}
					// dW[o0+r][kg0+kk] = Σ lanes of the partial sums.
					g.loopN(kn, nil, func(kk value.Value, _ []value.Value) []value.Value {
						for r := 0; r < osz; r++ {
							v := g.vload(accBuf, g.mul(g.add(g.mul(kk, ci(wgTO)), ci(r)), ci(L)))
							sum := g.hreduce(v, g.radd)
							g.st(sum, g.add(dwAt, g.add(g.mul(g.add(o0, ci(r)), ci(K)), g.add(kg0, kk))))
						}
						return nil
					})
				})
			})
		}
	}
	pers := make([]int, len(parts))
	runs := make([]func(t, nb value.Value, nImg int, dwAt value.Value), len(parts))
	for j, p := range parts {
		pers[j], runs[j] = mkRun(p)
	}
	s.wgTilesParts(g, parts, pers, runs)
}

// wgTilesParts emits the dot-product weight gradient's tiles (wgRuns),
// for each of its parts (TrainConvGradWeightSpec.parts), part j having
// pers[j] tiles per run: runs[j](t, nb, nImg, dwAt) runs tile t of part j
// for the run's first image nb and its images nImg, its sums going to
// dwAt (TrainConvGradWeightSpec.dwAt). Within a run the parts' tiles
// follow one another, so that the run's x, read from memory once, serves
// every part from L2.
func (s TrainConvGradWeightSpec) wgTilesParts(g *builder, parts []TrainConvGradWeightSpec, pers []int, runs []func(t, nb value.Value, nImg int, dwAt value.Value)) {
	tot := 0
	for _, n := range pers {
		tot += n
	}
	// part dispatches tile u of the run (u < tot) to the part it belongs
	// to, from part j on (whose tiles start at base).
	var part func(j, base int, u, nb value.Value, nImg int, sp value.Value)
	part = func(j, base int, u, nb value.Value, nImg int, sp value.Value) {
		call := func() { runs[j](g.sub(u, ci(base)), nb, nImg, parts[j].dwAt(g, sp)) }
		if j == len(parts)-1 {
			call()
			return
		}
		g.ifElse(g.icmp(enum.IPredULT, u, ci(base+pers[j])), call, func() { part(j+1, base+pers[j], u, nb, nImg, sp) })
	}
	s.wgRuns(g, tot, func(u, nb value.Value, nImg int, sp value.Value) { part(0, 0, u, nb, nImg, sp) })
}

// wgRuns emits a weight gradient's tiles, per tiles for each run of
// images (one run, the whole batch, unless split: wgSplit), calling
// body(u, nb, nImg, sp) for tile u of run sp (nil when not split), the
// run's first image nb and its images nImg. Runs are the outer index, so
// that a thread's consecutive tiles share their run's images (in L2).
func (s TrainConvGradWeightSpec) wgRuns(g *builder, per int, body func(u, nb value.Value, nImg int, sp value.Value)) {
	S, NS, last := s.wgSplit()
	g.tiles(func(t value.Value) {
		if S <= 1 {
			body(t, ci(0), s.N, nil)
			return
		}
		sp := g.udiv(t, per)
		g.lastOr(sp, S, NS, last, func(nImg int) {
			body(g.urem(t, per), g.mul(sp, ci(NS)), nImg, sp)
		})
	})
}

// dwAt is where weight gradient s (one part, without its siblings) writes
// the sums of run sp: its DW, or with a split batch (sp not nil) its run's
// partial sums.
func (s TrainConvGradWeightSpec) dwAt(g *builder, sp value.Value) value.Value {
	if sp == nil {
		return ci(s.DW)
	}
	return g.add(ci(s.Partial), g.mul(sp, ci(s.O*s.C*s.KH*s.KW)))
}

// tapMaskTable builds, in a stack buffer of T·Pp i32 (T = len(dh)), the
// masks of a stride-1 convolution read as shifted rows: entry t·Pp + p is
// −1 where column p < P (pixel (p/OW, p%OW)) shifted by tap t's (dh[t],
// dw[t]) lies inside the H×W plane, else 0 (columns P..Pp−1 are 0). Built
// once per kernel call, it turns a row's mask into one vector load; the
// weight gradient bounds T·Pp by wgMaskMax.
func (g *builder) tapMaskTable(dh, dw []int, H, W, OW, P, Pp int) value.Value {
	T := len(dh)
	dhT, dwT := g.i32Table("tdh", dh), g.i32Table("tdw", dw)
	tab := g.stackI32(T * Pp)
	g.loopN(T, nil, func(t value.Value, _ []value.Value) []value.Value {
		dh, dw := g.b.NewSExt(g.ldI(dhT, t), i64), g.b.NewSExt(g.ldI(dwT, t), i64)
		g.loopN(Pp, nil, func(p value.Value, _ []value.Value) []value.Value {
			ih, iw := g.add(g.udiv(p, OW), dh), g.add(g.urem(p, OW), dw)
			in := g.b.NewAnd(g.icmp(enum.IPredULT, p, ci(P)),
				g.b.NewAnd(g.icmp(enum.IPredULT, ih, ci(H)), g.icmp(enum.IPredULT, iw, ci(W))))
			g.stI(g.b.NewSExt(in, i64), tab, g.add(g.mul(t, ci(Pp)), p))
			return nil
		})
		return nil
	})
	return tab
}

// tableMask is the <lanes x i1> mask of the table entries at tab+i.
func (g *builder) tableMask(tab, i value.Value) value.Value {
	return g.b.NewICmp(enum.IPredSLT, g.ldI32Vec(tab, i), g.i32Vec(func(int) int { return 0 }))
}

// fillBuf zeroes n floats of a stack buffer.
func (g *builder) fillBuf(buf value.Value, n int) {
	g.loopN(n, nil, func(i value.Value, _ []value.Value) []value.Value {
		g.store(cf(0), buf, i)
		return nil
	})
}

// tapMasks returns, for the taps' shifts (dh[t], dw[t]) and the vectors
// of a block of pixels at (ohv[v], owv[v]), the lanes of vector v whose
// pixel shifted by tap t is inside the hv×wv plane: the masks of
// tap-major packing (packTapMajor), the same for every channel.
func (g *builder) tapMasks(ohv, owv []value.Value, dh, dw []int, hv, wv value.Value) [][]value.Value {
	m := make([][]value.Value, len(dh))
	for t := range m {
		m[t] = make([]value.Value, len(ohv))
		for v := range m[t] {
			ih := g.b.NewAdd(ohv[v], g.i32Vec(func(int) int { return dh[t] }))
			iw := g.b.NewAdd(owv[v], g.i32Vec(func(int) int { return dw[t] }))
			m[t][v] = g.b.NewAnd(g.b.NewICmp(enum.IPredULT, ih, hv), g.b.NewICmp(enum.IPredULT, iw, wv))
		}
	}
	return m
}

// packTapMajor packs panel rows [0, kn) of the reduction block starting at
// row k0, where row k = c·T + t (T = len(off)) reads, for vector v of the
// block's pixels, load(base + c·cs + off[t] + v·lanes, masks[t][v]): a
// loop over the block's channels with the taps unrolled, each row's offset
// the channel's plus a constant and its mask one of the block's tapMasks.
// The row-by-row packing loads three table entries and builds the mask for
// every row instead. k0 and kn must be multiples of T (the block starts at
// a channel).
func (g *builder) packTapMajor(panel, base, k0 value.Value, kn, cs int, off []int, masks [][]value.Value, load func(off, mask value.Value, v int) value.Value) {
	T, L := len(off), g.t.VectorLanes
	c0 := g.udiv(k0, T)
	g.loopN(kn/T, nil, func(cc value.Value, _ []value.Value) []value.Value {
		bc := g.add(base, g.mul(g.add(c0, cc), ci(cs)))
		for t := 0; t < T; t++ {
			row := g.add(g.mul(cc, ci(T)), ci(t))
			for v := range masks[t] {
				g.vstore(load(g.add(bc, ci(off[t]+v*L)), masks[t][v], v), panel, g.add(g.mul(row, ci(gemmNB)), ci(v*L)))
			}
		}
		return nil
	})
}
