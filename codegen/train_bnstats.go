package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/value"
)

// BatchNorm statistics from the producing convolution (issue 9).
//
// A training BatchNorm reads its input twice: once for the batch mean and
// variance, once to normalize. When the input is a forward convolution's
// output, the convolution can compute the statistics as it writes it: each
// of its blocks of gemmNB pixels of one image (the tiles of the forward
// kernels, or a phased tile's blocks) reloads the values it just stored,
// still in L1, and writes per channel the block's first value k and the
// float32 sums Σ(v−k) and Σ(v−k)² over its pixels. The BatchNorm kernel then
// combines the blocks' partial sums in float64 instead of reading its input
// a first time. Measured on mini_inception's training step (Intel Xeon VM,
// 2 threads) that pass was about 40 % of the forward BatchNorm's time.
//
// Determinism: the partials are per block of the output, whatever thread
// ran it, and the BatchNorm adds them in block order, so the result does
// not depend on the thread count or the tile schedule. Numerics: each
// block's sums are shifted by its own first value (no cancellation within a
// block, Chan, Golub and LeVeque, "Algorithms for computing the sample
// variance", The American Statistician 37(3), 1983); the combination shifts
// them exactly, in float64, to the channel's first value K (x[0][c][0], the
// shift the one-pass kernel uses): Σ(v−K) = S1 + n·δ and Σ(v−K)² = S2 +
// 2δ·S1 + n·δ² with δ = k − K.

// BNStats is where a forward convolution writes the partial statistics of
// one of its outputs and where the BatchNorm of that output reads them
// (On; At the arena offset of StatsFloats floats): for channel o and block
// q = n·⌈P/gemmNB⌉ + pb (pixels [pb·gemmNB, pb·gemmNB + w) of image n, w =
// gemmNB but for a plane's last block), at At + (o·Q + q)·3 with Q = N·
// ⌈P/gemmNB⌉ blocks: the block's first value k, Σ(v−k) and Σ(v−k)². With
// Flat the blocks are the convolution's flat ones (flatBlocks): block q
// is pixels [q·gemmNB, q·gemmNB + gemmNB) of the batch's N·P, Q =
// ⌈N·P/gemmNB⌉, and only the last block is shorter. The lowering sets
// Flat from the convolution (TrainConvSpec.FlatStats) for both kernels.
type BNStats struct {
	On   bool
	At   int
	Flat bool
}

// blocks is the number of blocks Q of the statistics of an output of N
// images of P pixels.
func (st BNStats) blocks(N, P int) int {
	if st.Flat {
		return ceilDiv(N*P, gemmNB)
	}
	return N * ceilDiv(P, gemmNB)
}

// StatsFloats is the size in floats of the partial statistics (BNStats) of
// an output of O channels, N images and P pixels per plane (blocked image
// by image; flat ones take at most as many).
func StatsFloats(O, N, P int) int { return O * N * ceilDiv(P, gemmNB) * 3 }

// validate checks st's extent for an output of O channels, N images, P
// pixels.
func (st BNStats) validate(what string, O, N, P int) error {
	if !st.On {
		return nil
	}
	if st.At < 0 {
		return fmt.Errorf("%s: statistics at a negative offset %d", what, st.At)
	}
	return extents(what+" statistics", st.At, O*st.blocks(N, P)*3)
}

// hsum2 returns the sums of the lanes of a and of b: a and b's halves are
// added into one vector (a's partial sums in the low half, b's in the high
// half), then lanes l and l^h are added for h = L/4, …, 1, so that lane 0
// holds Σa and lane L/2 holds Σb (a fixed order: deterministic).
func (g *builder) hsum2(a, b value.Value) (value.Value, value.Value) {
	L := g.t.VectorLanes
	h := L / 2
	lo := g.b.NewShuffleVector(a, b, g.i32Vec(func(l int) int {
		if l < h {
			return l
		}
		return L + l - h
	}))
	hi := g.b.NewShuffleVector(a, b, g.i32Vec(func(l int) int {
		if l < h {
			return h + l
		}
		return L + l
	}))
	e := g.fadd(lo, hi)
	for s := h / 2; s >= 1; s /= 2 {
		e = g.fadd(e, g.b.NewShuffleVector(e, e, g.i32Vec(func(l int) int { return l ^ s })))
	}
	return g.b.NewExtractElement(e, ci(0)), g.b.NewExtractElement(e, ci(h))
}

// blockStats writes the partial statistics (BNStats) of block q of an
// output of O channels of P pixels: its w pixels of channel o are at arena
// offset y + o·P, just stored by the calling tile. For a flat block
// (flatBlocks) first holds, per vector, the lanes still in the block's
// first image; the others are in the next, O·P − P floats further.
func (g *builder) blockStats(st BNStats, y value.Value, O, P, w, Q int, q value.Value, first []value.Value) {
	if !st.On {
		return
	}
	L := g.t.VectorLanes
	g.loopN(O, nil, func(o value.Value, _ []value.Value) []value.Value {
		row := g.add(y, g.mul(o, ci(P)))
		k := g.ld(row)
		kv := g.splat(k)
		s1, s2 := g.vzero(), g.vzero()
		for v := 0; v*L < w; v++ {
			lanes := min(L, w-v*L)
			var x value.Value
			if first != nil {
				x = g.flatLoad(g.arena, g.add(row, ci(v*L)), g.prefixMask(lanes), first[v], (O-1)*P)
			} else {
				x = g.vloadN(g.arena, g.add(row, ci(v*L)), lanes)
			}
			d := g.fsub(x, kv)
			if lanes < L {
				d = g.sel(g.prefixMask(lanes), d, g.vzero())
			}
			s1, s2 = g.fadd(s1, d), g.fma(d, d, s2)
		}
		t1, t2 := g.hsum2(s1, s2)
		at := g.add(ci(st.At), g.mul(g.add(g.mul(o, ci(Q)), q), ci(3)))
		g.st(k, at)
		g.st(t1, g.add(at, ci(1)))
		g.st(t2, g.add(at, ci(2)))
		return nil
	})
}

// combineStats returns, for channel c of an [outer][C][inner] output whose
// partial statistics are at st, the shift K (float64, the channel's first
// value) and the float64 sums Σ(v−K) and Σ(v−K)² over all its values.
func (g *builder) combineStats(st BNStats, outer, inner int, c value.Value) (k, s1, s2 value.Value) {
	PB := ceilDiv(inner, gemmNB)
	Q := st.blocks(outer, inner)
	wl := inner - (PB-1)*gemmNB
	if st.Flat {
		// Only the batch's last block is short.
		PB, wl = Q, outer*inner-(Q-1)*gemmNB
	}
	base := g.add(ci(st.At), g.mul(c, ci(3*Q)))
	k = g.ext(g.ld(base))
	sums := g.loopN(Q, []value.Value{cd(0), cd(0)}, func(q value.Value, a []value.Value) []value.Value {
		at := g.add(base, g.mul(q, ci(3)))
		kq, t1, t2 := g.ext(g.ld(at)), g.ext(g.ld(g.add(at, ci(1)))), g.ext(g.ld(g.add(at, ci(2))))
		n := value.Value(cd(gemmNB))
		if wl != gemmNB {
			n = g.sel(g.icmp(enum.IPredEQ, g.urem(q, PB), ci(PB-1)), cd(float64(wl)), cd(gemmNB))
		}
		dl := g.fsub(kq, k)
		nd := g.fmul(n, dl)
		a0 := g.fadd(a[0], g.fadd(t1, nd))
		a1 := g.fadd(a[1], g.fadd(t2, g.fmul(dl, g.fadd(g.fmul(cd(2), t1), nd))))
		return []value.Value{a0, a1}
	})
	return k, sums[0], sums[1]
}
