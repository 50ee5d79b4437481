package codegen

import (
	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/value"
)

// The input gradient of a stride-2 convolution over phase planes (issue 9;
// see ConvGeom.phased for the forward). Write a = (kh−PH) mod 2 and
// dh = ⌊(kh−PH)/2⌋ (likewise b, dw for kw): the forward reads input pixel
// (2(oh+dh)+a, 2(ow+dw)+b) at tap (kh, kw), so the gradient at input pixel
// (2i+a, 2j+b) is
//
//	dx[c][2i+a][2j+b] = Σ_o Σ_{taps of phase (a, b)} w[o][c][kh][kw]·dy[o][i−dh][j−dw]
//
// a stride-1 correlation of dy with the phase's taps, shifted by −dh,
// −dw ∈ {0, 1} (the transposed-convolution identity of Dumoulin and Visin,
// "A guide to convolution arithmetic for deep learning", arXiv:1603.07285,
// §4.5, split by output phase as in sub-pixel convolution: Shi et al.,
// "Real-Time Single Image and Video Super-Resolution Using an Efficient
// Sub-Pixel Convolutional Neural Network", CVPR 2016). Each phase is a
// matrix product dxₐᵦ (C×P) = Aₐᵦ (C×Kₐᵦ) · B (Kₐᵦ×P), Kₐᵦ = O·taps, with
// B's rows the shifted, masked rows of dy packed by masked vector loads as
// in sameConv and A read from w in place through a table of row offsets
// (w[o][c][tap] for row k = (o, tap)). A tile is an image: the four phase
// planes go to a stack buffer and are then interleaved into dx with two
// shuffles per pair of vectors — no col2im scatter.

// phaseTaps returns, for phase (a, b), the taps t = kh·KW + kw whose rows
// and columns fall in it and their shifts −dh, −dw.
func (s ConvGeom) phaseTaps(a, b int) (taps, sh, sw []int) {
	for kh := 0; kh < s.KH; kh++ {
		for kw := 0; kw < s.KW; kw++ {
			ka, dh := phaseOf(kh - s.PH)
			kb, dw := phaseOf(kw - s.PW)
			if ka != a || kb != b {
				continue
			}
			taps = append(taps, kh*s.KW+kw)
			sh = append(sh, -dh)
			sw = append(sw, -dw)
		}
	}
	return taps, sh, sw
}

// genPhased emits the phased input gradient (see above).
func (s TrainConvGradInputSpec) genPhased(g *builder) {
	T := s.KH * s.KW
	OH, OW := s.OH, s.OW
	P := OH * OW
	PB := ceilDiv(P, gemmNB)
	L := g.t.VectorLanes
	nvB := gemmNB / L
	planes := g.stackBuf(4 * s.C * P)
	type phase struct {
		K                  int
		koff, sh, sw, wofs value.Value
		// The phase's taps' shifts and offsets in channel 0 (rows repeat
		// per dy channel, P floats apart), for tap-major packing when
		// every reduction block starts at a channel.
		tsh, tsw, toff []int
	}
	var ph [4]phase
	kcmax := 1 // the largest reduction block of the phases (kBlocks)
	for ab := 0; ab < 4; ab++ {
		taps, sh, sw := s.phaseTaps(ab/2, ab%2)
		K := s.O * len(taps)
		ph[ab].K = K
		if K == 0 {
			continue
		}
		kcmax = max(kcmax, kcOf(K))
		koff, shk, swk, wofs := make([]int, K), make([]int, K), make([]int, K), make([]int, K)
		for k := range koff {
			o, t := k/len(taps), k%len(taps)
			koff[k] = o*P + sh[t]*OW + sw[t]
			shk[k], swk[k] = sh[t], sw[t]
			wofs[k] = o*s.C*T + taps[t]
		}
		ph[ab].tsh, ph[ab].tsw, ph[ab].toff = sh, sw, koff[:len(taps)]
		sfx := string(rune('a' + ab))
		ph[ab].koff = g.i32Table("koff"+sfx, koff)
		ph[ab].sh = g.i32Table("sh"+sfx, shk)
		ph[ab].sw = g.i32Table("sw"+sfx, swk)
		ph[ab].wofs = g.i32Table("wofs"+sfx, wofs)
	}
	panel := g.stackBuf(kcmax * gemmNB)
	hv, wv := g.i32Vec(func(int) int { return OH }), g.i32Vec(func(int) int { return OW })
	g.tiles(func(n value.Value) {
		dy := g.add(ci(s.DY), g.mul(n, ci(s.O*P)))
		for ab := 0; ab < 4; ab++ {
			q := ph[ab]
			base := ab * s.C * P
			if q.K == 0 {
				g.fillBuf(g.gep(planes, ci(base)), s.C*P)
				continue
			}
			g.loopN(PB, nil, func(pb value.Value, _ []value.Value) []value.Value {
				p0 := g.mul(pb, ci(gemmNB))
				ohv, owv := make([]value.Value, nvB), make([]value.Value, nvB)
				for v := 0; v < nvB; v++ {
					_, ohv[v], owv[v] = g.pixelVec(p0, v*L, P, OW)
				}
				out := g.add(ci(base), p0)
				nt := len(q.toff)
				tapMajor := kcOf(q.K)%nt == 0
				var tapMask [][]value.Value
				if tapMajor {
					tapMask = g.tapMasks(ohv, owv, q.tsh, q.tsw, hv, wv)
				}
				g.lastOr(pb, PB, gemmNB, P-(PB-1)*gemmNB, func(w int) {
					g.kBlocks(q.K, func(k0 value.Value, kn int, first bool) {
						if tapMajor {
							g.packTapMajor(panel, g.add(dy, p0), k0, kn, P, q.toff, tapMask, func(off, mask value.Value, _ int) value.Value {
								return g.maskedLoad(g.arena, off, mask)
							})
						} else {
							s.packPhaseRows(g, q.koff, q.sh, q.sw, dy, p0, k0, kn, ohv, owv, hv, wv, panel)
						}
						g.subBlocks(w, func(j0, nv, wl int) {
							g.blocks(s.C, balancedMR(g.t, s.C), func(c0 value.Value, mr int) {
								cOff := func(r, v int) value.Value {
									return g.add(out, g.add(g.mul(g.add(c0, ci(r)), ci(P)), ci(j0+v*L)))
								}
								acc := g.gemmTile(mr, nv, kn,
									func(r, v int) value.Value {
										if first {
											return g.vzero()
										}
										return g.vloadN(planes, cOff(r, v), lanesOf(v, nv, wl, L))
									},
									func(r int, kk value.Value) value.Value {
										wo := g.b.NewSExt(g.ldI(q.wofs, g.add(k0, kk)), i64)
										return g.ld(g.add(ci(s.Wt), g.add(wo, g.mul(g.add(c0, ci(r)), ci(T)))))
									},
									func(v int, kk value.Value) value.Value {
										return g.vload(panel, g.add(g.mul(kk, ci(gemmNB)), ci(j0+v*L)))
									})
								for r := 0; r < mr; r++ {
									for v := 0; v < nv; v++ {
										g.vstoreN(acc[r*nv+v], planes, cOff(r, v), lanesOf(v, nv, wl, L))
									}
								}
							})
						})
					})
				})
				return nil
			})
		}
		s.phaseMerge(g, planes, g.add(ci(s.DX), g.mul(n, ci(s.C*s.H*s.W))))
	})
}

// phaseMerge interleaves the phase planes (layout (a·2+b, c, i, j), each
// OH×OW) into the C×H×W image at arena offset dx: dx[c][2i+a][2j+b] =
// planes[((a·2+b)·C + c)·P + i·OW + j] for every pixel of the image.
// Rows are stored as whole vectors where the spill past a row stays in
// the image and lands on rows merged later (masked stores cost more on
// AMD's cores): in alternating runs of BenchmarkTrainConv (dgrad, Zen 5)
// the 3x3 stride-2 48→48 at 14x14 went from 91–100 to 106–111 GFLOP/s on
// one thread and from 156–173 to 179–192 on two (32→64 at 28x28, whose
// 28-wide rows need fewer masked stores: 88–101 and 95–109).
func (s TrainConvGradInputSpec) phaseMerge(g *builder, planes, dx value.Value) {
	L := g.t.VectorLanes
	P := s.OH * s.OW
	lo, hi := g.interleave()
	// row merges input row r of channel c; full stores whole vectors,
	// running past the row into the next one (merged after it).
	row := func(c, r value.Value, full bool) {
		i, a := g.udiv(r, 2), g.urem(r, 2)
		ev0 := g.add(g.mul(g.add(g.mul(g.mul(a, ci(2)), ci(s.C)), c), ci(P)), g.mul(i, ci(s.OW)))
		od0 := g.add(ev0, ci(s.C*P))
		row := g.add(dx, g.add(g.mul(c, ci(s.H*s.W)), g.mul(r, ci(s.W))))
		for j0 := 0; j0 < s.OW; j0 += L {
			w := min(L, s.OW-j0)
			ev := g.vloadN(planes, g.add(ev0, ci(j0)), w)
			od := g.vloadN(planes, g.add(od0, ci(j0)), w)
			// Columns 2·j0 .. 2·j0+2L of the row, as far as they exist.
			x0 := g.b.NewShuffleVector(ev, od, lo)
			x1 := g.b.NewShuffleVector(ev, od, hi)
			store := func(x value.Value, col, n int) {
				if full {
					n = L
				}
				at := g.add(row, ci(col))
				if s.Acc >= 0 {
					x = g.fadd(x, g.vloadN(g.arena, g.add(at, ci(s.Acc-s.DX)), n))
				}
				g.vstoreN(x, g.arena, at, n)
			}
			if n := min(L, s.W-2*j0); n > 0 {
				store(x0, 2*j0, n)
			}
			if n := min(L, s.W-2*j0-L); n > 0 {
				store(x1, 2*j0+L, n)
			}
		}
	}
	// A row's spill (under lanes floats) reaches the next ⌈(lanes−1)/W⌉
	// rows; every row whose spill stays in the image stores whole
	// vectors, unless dx is its own addend (the spill would clobber the
	// next rows' addend before it is read); the image's last t rows store
	// masked, as the next image is another tile's.
	rows, t := s.C*s.H, min(s.C*s.H, 1+ceilDiv(L-1, s.W))
	full := s.Acc != s.DX
	g.loopN(rows-t, nil, func(k value.Value, _ []value.Value) []value.Value {
		row(g.udiv(k, s.H), g.urem(k, s.H), full)
		return nil
	})
	g.loopN(t, nil, func(k value.Value, _ []value.Value) []value.Value {
		k = g.add(k, ci(rows-t))
		row(g.udiv(k, s.H), g.urem(k, s.H), false)
		return nil
	})
}

// packPhaseRows packs rows [k0, k0+kn) of a phase's reduction into the
// panel row by row, each row's offset and shifts read from the phase's
// tables (koff, sh, sw) and its mask built from them: the general case,
// where a reduction block may start inside a dy channel's taps.
func (s TrainConvGradInputSpec) packPhaseRows(g *builder, koffT, shT, swT, dy, p0, k0 value.Value, kn int, ohv, owv []value.Value, hv, wv, panel value.Value) {
	L := g.t.VectorLanes
	g.loopN(kn, nil, func(kk value.Value, _ []value.Value) []value.Value {
		k := g.add(k0, kk)
		off := g.add(dy, g.add(g.b.NewSExt(g.ldI(koffT, k), i64), p0))
		shv, swv := g.splatI32(g.ldI(shT, k)), g.splatI32(g.ldI(swT, k))
		for v := range ohv {
			ih := g.b.NewAdd(ohv[v], shv)
			iw := g.b.NewAdd(owv[v], swv)
			mask := g.b.NewAnd(g.b.NewICmp(enum.IPredULT, ih, hv), g.b.NewICmp(enum.IPredULT, iw, wv))
			g.vstore(g.maskedLoad(g.arena, g.add(off, ci(v*L)), mask), panel, g.add(g.mul(kk, ci(gemmNB)), ci(v*L)))
		}
		return nil
	})
}
