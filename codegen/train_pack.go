package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/value"
)

// Packed weights for the stride-1 "same" training convolutions (issue 9).
//
// The sameConv micro-kernel (gemmTile) broadcasts A[o0+r][k] for the mr
// rows of its row block at each reduction step k. Read in place, those mr
// floats are K floats apart in the forward weight (rows of C·T floats) and,
// in the input gradient, which reads the flipped transpose W′[c][o·T + t′]
// = W[o][c][T−1−t′] in place (sameConv.Flip), consecutive steps of a 1x1
// are C floats apart. Either stride is 4 KiB for 1024 channels: the lines
// of every step, or of every row, fall into one L1 set, and the rows' lines
// are reread from L2. In BenchmarkTrainConv (Intel Xeon VM, one thread, %
// of the FMA peak, 2026-12-03) the 1x1 1024→384 input gradient at 17x17 ran
// at 34 % reading W′ in place and 46–49 % reading a row-major copy, but the
// 1x1 128→1024 one (dx rows of 1024 floats in the copy) fell from 38–41 %
// to 34–36 %: any stride that is a multiple of 4 KiB hurts.
//
// PackWeightSpec therefore writes A once per step into scratch memory in
// the order the micro-kernel reads it: the row blocks of balancedMR rows
// (the kernel's own blocking, for the target the code is built for), each
// block k-major, so that a reduction step reads its mr floats as one
// contiguous run and a block's steps follow one another. A block of h rows
// starting at row o0 holds A[o0+r][k] at o0·K + k·h + r: the layout has no
// padding and the same size (M·K floats) on every target.

// PackLayout is the matrix A that a PackWeightSpec takes from a
// convolution weight W (O×C×T, T = KH·KW).
type PackLayout int

const (
	// PackForward is A = W (M = O rows, K = C·T): the forward sameConv's.
	PackForward PackLayout = iota
	// PackFlipped is A = W′[c][o·T + t′] = W[o][c][T−1−t′] (M = C, K =
	// O·T): the sameConv input gradient's.
	PackFlipped
	// PackTransposed is A = Wᵀ[c·T + t][o] = W[o][c][t] (M = C·T, K = O):
	// the im2col input gradient's (genGemm: dcol = Wᵀ·dy).
	PackTransposed
)

// PackWeightSpec writes the matrix A (M×K, Layout) of a convolution
// kernel, taken from the convolution weight W (O×C×KH×KW floats at arena
// offset W), at arena offset Out in the micro-kernel's order (see above).
// A tile is a run of packK reduction steps for all rows.
type PackWeightSpec struct {
	O, C, KH, KW int
	W, Out       int
	Layout       PackLayout
}

// packK is the reduction steps per PackWeightSpec tile.
const packK = 16

// mk returns the shape of s's matrix A.
func (s PackWeightSpec) mk() (M, K int) {
	T := s.KH * s.KW
	switch s.Layout {
	case PackFlipped:
		return s.C, s.O * T
	case PackTransposed:
		return s.C * T, s.O
	}
	return s.O, s.C * T
}

func (s PackWeightSpec) Kind() string { return "weight_pack" }
func (s PackWeightSpec) Validate() error {
	if err := positive("weight_pack", "O", s.O, "C", s.C, "KH", s.KH, "KW", s.KW); err != nil {
		return err
	}
	if s.Layout < PackForward || s.Layout > PackTransposed {
		return fmt.Errorf("weight_pack: layout %d unknown", int(s.Layout))
	}
	n := s.O * s.C * s.KH * s.KW
	if err := extents("weight_pack", s.W, n, s.Out, n); err != nil {
		return err
	}
	if Overlap(s.W, n, s.Out, n) {
		return fmt.Errorf("weight_pack: output [%d, %d) overlaps the weight [%d, %d)", s.Out, s.Out+n, s.W, s.W+n)
	}
	return nil
}
func (s PackWeightSpec) tileCount() int {
	_, K := s.mk()
	return ceilDiv(K, packK)
}
func (s PackWeightSpec) flops() int64 { return 0 }
func (s PackWeightSpec) gen(g *builder) {
	M, K := s.mk()
	T := s.KH * s.KW
	nt := s.tileCount()
	// src is the arena index of A[o][k] in W.
	src := func(o, k value.Value) value.Value {
		switch s.Layout {
		case PackFlipped:
			of, tp := g.udiv(k, T), g.urem(k, T)
			return g.add(ci(s.W), g.add(g.mul(g.add(g.mul(of, ci(s.C)), o), ci(T)), g.sub(ci(T-1), tp)))
		case PackTransposed:
			return g.add(ci(s.W), g.add(g.mul(k, ci(M)), o))
		}
		return g.add(ci(s.W), g.add(g.mul(o, ci(K)), k))
	}
	g.tiles(func(t value.Value) {
		k0 := g.mul(t, ci(packK))
		g.lastOr(t, nt, packK, K-(nt-1)*packK, func(kn int) {
			g.blocks(M, balancedMR(g.t, M), func(o0 value.Value, h int) {
				dst := g.add(ci(s.Out), g.mul(o0, ci(K)))
				g.loopN(kn, nil, func(kk value.Value, _ []value.Value) []value.Value {
					k := g.add(k0, kk)
					for r := 0; r < h; r++ {
						g.st(g.ld(src(g.add(o0, ci(r)), k)), g.add(dst, g.add(g.mul(k, ci(h)), ci(r))))
					}
					return nil
				})
			})
		})
	})
}

// packedA returns the arena index of A[o0+r][k] of a matrix of K columns
// packed by PackWeightSpec at arena offset at, for a row block of mr rows
// from row o0.
func (g *builder) packedA(at int, K int, o0 value.Value, r, mr int, k value.Value) value.Value {
	return g.add(ci(at), g.add(g.mul(o0, ci(K)), g.add(g.mul(k, ci(mr)), ci(r))))
}

// packMin is the fewest weight floats (a kernel's own and its siblings')
// for which the lowering packs a sameConv's weights: in BenchmarkTrainConv
// the mini networks' weights (2–17 K floats: 1x1 64→48, 3x3 16→16, 1x7
// 32→32) ran as fast read in place as packed, so for them a pack kernel
// would be overhead only, while Inception-v4's (37 K floats and more:
// 1x1 384→96, 3x3 192→224, 1x1 1024→384) gained 5–46 %.
const packMin = 16 << 10

// PackPays reports whether the lowering should pack s's weights (Packed):
// a stride-1 "same" forward kernel with at least packMin weight floats. The
// phased stride-2 kernel measured 2–4 points of the peak slower packed
// (3x3 stride 2 32→64 at 28x28), so it reads its weight in place.
func (s TrainConvSpec) PackPays() bool {
	n := s.O
	for _, sb := range s.Siblings {
		n += sb.O
	}
	return s.same() && n*s.C*s.KH*s.KW >= packMin
}

// PackPays reports whether the lowering should pack s's weights (Packed):
// an input gradient whose kernel reads packed weights (PackOK) with at
// least packMin weight floats.
func (s TrainConvGradInputSpec) PackPays() bool {
	n := s.O
	for _, sb := range s.Siblings {
		n += sb.O
	}
	return s.PackOK() && n*s.C*s.KH*s.KW >= packMin
}

// PackOK reports whether s's kernel can read packed weights (Packed): the
// sameConv input gradient (siblings included) and the im2col one
// (genGemm); the phased and the loop-nest kernels read W in place.
func (s TrainConvGradInputSpec) PackOK() bool {
	return s.sameOK() || len(s.Siblings) > 0 || !s.phased() && s.gemmOK()
}

// PackLayout is the layout of the packed weights s's kernel reads (see
// PackOK): the flipped transpose for the sameConv kernel, the transpose
// for the im2col one.
func (s TrainConvGradInputSpec) PackLayout() PackLayout {
	if s.sameOK() || len(s.Siblings) > 0 {
		return PackFlipped
	}
	return PackTransposed
}
