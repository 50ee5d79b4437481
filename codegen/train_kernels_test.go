package codegen

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/kiln-dev/kiln/ir/interp"
)

// convRef computes conv2d and its two gradients in float64 with the
// definition (cross-correlation, zero padding).
func convRef(s ConvGeom, x, w, dy []float32) (y, dx, dw []float64) {
	y = make([]float64, s.N*s.O*s.OH*s.OW)
	dx = make([]float64, s.N*s.C*s.H*s.W)
	dw = make([]float64, s.O*s.C*s.KH*s.KW)
	for n := 0; n < s.N; n++ {
		for o := 0; o < s.O; o++ {
			for oh := 0; oh < s.OH; oh++ {
				for ow := 0; ow < s.OW; ow++ {
					yi := ((n*s.O+o)*s.OH+oh)*s.OW + ow
					for c := 0; c < s.C; c++ {
						for kh := 0; kh < s.KH; kh++ {
							for kw := 0; kw < s.KW; kw++ {
								ih, iw := oh*s.SH-s.PH+kh, ow*s.SW-s.PW+kw
								if ih < 0 || ih >= s.H || iw < 0 || iw >= s.W {
									continue
								}
								xi := ((n*s.C+c)*s.H+ih)*s.W + iw
								wi := ((o*s.C+c)*s.KH+kh)*s.KW + kw
								y[yi] += float64(x[xi]) * float64(w[wi])
								dx[xi] += float64(dy[yi]) * float64(w[wi])
								dw[wi] += float64(dy[yi]) * float64(x[xi])
							}
						}
					}
				}
			}
		}
	}
	return y, dx, dw
}

// TestTrainConvKernels checks the training convolution kernels (forward
// with bias, input gradient, weight gradient) against convRef for the
// shapes of the mini networks' factorized convolutions (1x7, 7x1), strided
// 3x3 with and without padding, 1x1 and 5x5, on AVX-512 and AVX2, with
// sentinels around every output to catch out-of-range writes.
func TestTrainConvKernels(t *testing.T) {
	geoms := []ConvGeom{
		{N: 2, C: 3, H: 9, W: 9, O: 5, KH: 1, KW: 7, SH: 1, SW: 1, PH: 0, PW: 3},
		{N: 2, C: 3, H: 9, W: 9, O: 5, KH: 7, KW: 1, SH: 1, SW: 1, PH: 3, PW: 0},
		{N: 2, C: 4, H: 11, W: 11, O: 3, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
		{N: 1, C: 2, H: 12, W: 10, O: 6, KH: 3, KW: 3, SH: 2, SW: 2},
		{N: 3, C: 5, H: 7, W: 7, O: 4, KH: 1, KW: 1, SH: 1, SW: 1},
		{N: 1, C: 2, H: 6, W: 6, O: 3, KH: 5, KW: 5, SH: 1, SW: 1, PH: 2, PW: 2},
		{N: 1, C: 1, H: 28, W: 28, O: 32, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
		// The mini nets' first convolution: a dot-product weight gradient
		// whose K = 9 rows are one group (wgGroup).
		{N: 2, C: 1, H: 28, W: 28, O: 32, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		// Register-blocked GEMM edges (train_gemm.go): O, K = C·KH·KW and
		// P = OH·OW not multiples of the micro-tile (14 or 6 rows, 32
		// columns), several pixel blocks with a ragged last one, K past the
		// 288-row reduction block (kBlocks: two blocks of 158 and 157 rows),
		// P past the 128-pixel wgrad chunk, and enough channels for several
		// wgrad channel groups.
		{N: 2, C: 19, H: 13, W: 11, O: 37, KH: 1, KW: 1, SH: 1, SW: 1},
		{N: 2, C: 33, H: 9, W: 7, O: 17, KH: 1, KW: 1, SH: 2, SW: 2},
		{N: 2, C: 7, H: 12, W: 12, O: 29, KH: 1, KW: 7, SH: 1, SW: 1, PH: 0, PW: 3},
		{N: 2, C: 7, H: 12, W: 12, O: 29, KH: 7, KW: 1, SH: 1, SW: 1, PH: 3, PW: 0},
		{N: 1, C: 35, H: 9, W: 9, O: 15, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
		// The im2col forward (genGemm: unpadded stride 2, not phased) over
		// two reduction blocks (K = 360), and a phased input gradient
		// whose 2x2-tap phase reduces over two blocks (K = 80·4 = 320).
		{N: 1, C: 40, H: 9, W: 9, O: 7, KH: 3, KW: 3, SH: 2, SW: 2},
		{N: 1, C: 3, H: 11, W: 11, O: 80, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
		// Stride 2 over phase planes (ConvGeom.phased): rows of several
		// vectors, odd and even input sizes, a 1x1 and a 2x2 kernel.
		{N: 2, C: 2, H: 40, W: 70, O: 3, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
		{N: 1, C: 3, H: 17, W: 69, O: 4, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
		{N: 2, C: 3, H: 10, W: 34, O: 5, KH: 2, KW: 2, SH: 2, SW: 2},
		// More images than a weight-gradient chunk (wgChunk: 16 images of
		// 5x5, 3 of 14x14 with a ragged last chunk, 1 of 28x28).
		{N: 17, C: 3, H: 9, W: 9, O: 9, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
		{N: 7, C: 3, H: 14, W: 14, O: 9, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 3, C: 2, H: 28, W: 28, O: 9, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 2, C: 3, H: 5, W: 5, O: 40, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 1, C: 2, H: 3, W: 2, O: 3, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 2, C: 2, H: 5, W: 5, O: 97, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		// Stride-1 "same" kernels (train_conv_same.go): K past the
		// reduction block; a dgrad weight past the 64 KiB that its
		// transpose once had on the stack (now read in place, Flip); a 1x1
		// with full 32-column blocks read directly and a ragged one packed.
		{N: 1, C: 40, H: 6, W: 6, O: 5, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 1, C: 45, H: 4, W: 5, O: 41, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 2, C: 300, H: 8, W: 9, O: 3, KH: 1, KW: 1, SH: 1, SW: 1},
		// A weight-gradient mask table over its stack budget (25 taps ×
		// 784 pixels > wgMaskMax): masks computed in the inner loop.
		{N: 2, C: 2, H: 28, W: 28, O: 3, KH: 5, KW: 5, SH: 1, SW: 1, PH: 2, PW: 2},
		// Rows longer than a weight-gradient segment (wgSegment: 832
		// floats): a 1x1 over more pixels than wgMaxP (the dot-product
		// kernel, no tables; six segments, a ragged tail), and two planes
		// of two segments, with the tap mask table and with the masks
		// computed in the inner loop.
		{N: 2, C: 3, H: 65, W: 65, O: 5, KH: 1, KW: 1, SH: 1, SW: 1},
		{N: 2, C: 2, H: 30, W: 30, O: 5, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 2, C: 2, H: 30, W: 30, O: 3, KH: 5, KW: 5, SH: 1, SW: 1, PH: 2, PW: 2},
		// Stride 1, rows as wide as the input's but fewer of them: the
		// dot-product weight gradient without the "same" forward.
		{N: 2, C: 3, H: 6, W: 5, O: 4, KH: 3, KW: 1, SH: 1, SW: 1},
		// The weight gradient packed by transposes (transPack) with x
		// read in place: the same kind of rows over 6 tiles, and a "same"
		// 3x3 over two pixel chunks (143 = 128 + 15 pixels).
		{N: 2, C: 60, H: 9, W: 7, O: 5, KH: 3, KW: 1, SH: 1, SW: 1},
		{N: 2, C: 20, H: 13, W: 11, O: 7, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		// Tap-major packing (sameConv, genPhased) needs reduction blocks
		// that start at a channel; these take the row-by-row packing in
		// some blocks: the forward's K = 45·9 = 405 in blocks of 203
		// (above), the phased input gradient's 4-tap phase K = 73·4 =
		// 292 in blocks of 146.
		{N: 1, C: 3, H: 9, W: 9, O: 73, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1},
	}
	for gi := range geoms {
		s := &geoms[gi]
		s.OH, s.OW = (s.H+2*s.PH-s.KH)/s.SH+1, (s.W+2*s.PW-s.KW)/s.SW+1
	}
	targets := trainTargets(t)
	for _, ts := range targets {
		for gi, s := range geoms {
			t.Run(fmt.Sprintf("%s/%dx%d_s%d_p%dx%d", ts.Name, s.KH, s.KW, s.SH, s.PH, s.PW), func(t *testing.T) {
				r := rand.New(rand.NewSource(int64(gi)))
				nx, nw, ny := s.N*s.C*s.H*s.W, s.O*s.C*s.KH*s.KW, s.N*s.O*s.OH*s.OW
				// Arena: x | w | bias | dy | addend | gap | y | gap | dx |
				// gap | dw | gap | dx + addend | gap | addend, then dx +
				// addend in place | gap
				const gap = 16
				X, W, B, DY := 0, nx, nx+nw, nx+nw+s.O
				ACC := DY + ny
				Y := ACC + nx + gap
				DX := Y + ny + gap
				DW := DX + nx + gap
				DXA := DW + nw + gap
				DXI := DXA + nx + gap
				// The weight gradient with its batch split in two runs
				// (the second ragged for N = 3; the packed kernel where
				// the runs give it enough tiles, else the dot-product
				// one): partial sums | gap | their sum | gap.
				// (A single run writes the sum itself.)
				wsplit := TrainConvGradWeightSpec{ConvGeom: s, DY: DY, X: X, Split: 2}
				runs := wsplit.SplitRuns()
				PART := DXI + nx + gap
				wsplit.Partial = PART
				DWS := PART + runs*nw + gap
				wsplit.DW = DWS
				size := DWS + nw + gap
				arena := make([]float32, size)
				fill(arena, sentinel)
				x, w, bias, dy, addend := randn(r, nx), randn(r, nw), randn(r, s.O), randn(r, ny), randn(r, nx)
				copy(arena[X:], x)
				copy(arena[W:], w)
				copy(arena[B:], bias)
				copy(arena[DY:], dy)
				copy(arena[ACC:], addend)
				copy(arena[DXI:], addend)
				fwd := TrainConvSpec{ConvGeom: s, X: X, Wt: W, Bias: B, Out: Y}
				dgrad := TrainConvGradInputSpec{ConvGeom: s, DY: DY, Wt: W, DX: DX, Acc: -1}
				// The input gradient added to another value's, into a
				// third buffer and in place.
				dgradAcc := TrainConvGradInputSpec{ConvGeom: s, DY: DY, Wt: W, DX: DXA, Acc: ACC}
				dgradIn := TrainConvGradInputSpec{ConvGeom: s, DY: DY, Wt: W, DX: DXI, Acc: DXI}
				wgrad := TrainConvGradWeightSpec{ConvGeom: s, DY: DY, X: X, DW: DW}
				lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
					for _, k := range []struct {
						n string
						s TrainKernel
					}{{"fwd", fwd}, {"dgrad", dgrad}, {"wgrad", wgrad}, {"dgradacc", dgradAcc}, {"dgradin", dgradIn},
						{"wsplit", wsplit}, {"wsum", ChannelSumSpec{Outer: runs, C: nw, Inner: 1, DY: PART, Out: DWS}}} {
						if _, _, err := m.Train(k.n, k.s); err != nil {
							return err
						}
					}
					return nil
				})
				a := runChecked(t, kernel(t, lib, "fwd", ts), arena, nil, fwd.tileCount())
				a = runChecked(t, kernel(t, lib, "dgrad", ts), a, nil, dgrad.tileCount())
				a = runChecked(t, kernel(t, lib, "wgrad", ts), a, nil, wgrad.tileCount())
				a = runChecked(t, kernel(t, lib, "dgradacc", ts), a, nil, dgradAcc.tileCount())
				a = runChecked(t, kernel(t, lib, "dgradin", ts), a, nil, dgradIn.tileCount())
				a = runChecked(t, kernel(t, lib, "wsplit", ts), a, nil, wsplit.tileCount())
				if runs > 1 {
					a = runChecked(t, kernel(t, lib, "wsum", ts), a, nil, ChannelSumSpec{Outer: runs, C: nw, Inner: 1}.tileCount())
				}
				ry, rdx, rdw := convRef(s, x, w, dy)
				for i := range ry {
					ry[i] += float64(bias[i/(s.OH*s.OW)%s.O])
				}
				compare(t, "conv2d", a[Y:Y+ny], ry)
				compare(t, "conv2d_grad_input", a[DX:DX+nx], rdx)
				compare(t, "conv2d_grad_weight", a[DW:DW+nw], rdw)
				compare(t, fmt.Sprintf("conv2d_grad_weight, batch split in %d runs", runs), a[DWS:DWS+nw], rdw)
				rdxa := make([]float64, nx)
				for i := range rdxa {
					rdxa[i] = rdx[i] + float64(addend[i])
				}
				compare(t, "conv2d_grad_input + addend", a[DXA:DXA+nx], rdxa)
				compare(t, "conv2d_grad_input + addend in place", a[DXI:DXI+nx], rdxa)
				checkUnchanged(t, "gaps", a, arena, func(i int) bool {
					in := func(o, n int) bool { return i >= o && i < o+n }
					return in(Y, ny) || in(DX, nx) || in(DW, nw) || in(DXA, nx) || in(DXI, nx) || in(PART, runs*nw) || in(DWS, nw)
				})
			})
		}
	}
}

// TestDropoutTrainKernel checks the compiled dropout mask against
// ir/interp.DropoutKeep for several seeds (including one over 32 bits, and
// a seed delta) and probabilities, on AVX-512 and AVX2.
func TestDropoutTrainKernel(t *testing.T) {
	const n = 5000
	for _, ts := range x86Targets(t) {
		for _, c := range []struct {
			seed  uint64
			delta int64
			p     float64
		}{{0, 0, 0.3}, {1, 2, 0.5}, {0x1234567890, 1, 0.1}, {7, 0, 0}} {
			t.Run(fmt.Sprintf("%s/seed%d+%d/p%v", ts.Name, c.seed, c.delta, c.p), func(t *testing.T) {
				r := rand.New(rand.NewSource(1))
				x := randn(r, n)
				const S, X, Y, M = 0, 8, 8 + n, 8 + 2*n
				arena := make([]float32, 8+3*n)
				arena[S] = math.Float32frombits(uint32(c.seed))
				arena[S+1] = math.Float32frombits(uint32(c.seed >> 32))
				copy(arena[X:], x)
				s := DropoutTrainSpec{Elems: n, P: c.p, Seed: S, SeedDelta: c.delta, X: X, Y: Y, Mask: M}
				lib := buildLibFor(t, []Target{ts}, func(m *Module) error { _, _, err := m.Train("drop", s); return err })
				a := runChecked(t, kernel(t, lib, "drop", ts), arena, nil, s.tileCount())
				scale := float32(1 / (1 - c.p))
				for i := 0; i < n; i++ {
					keep := interp.DropoutKeep(c.seed+uint64(c.delta), i, c.p)
					wantM, wantY := float32(0), float32(0)
					if keep {
						wantM, wantY = 1, x[i]*scale
					}
					if a[M+i] != wantM || a[Y+i] != wantY {
						t.Fatalf("element %d: y %v mask %v, want %v %v", i, a[Y+i], a[M+i], wantY, wantM)
					}
				}
			})
		}
	}
}

// TestPhased checks which stride-2 convolutions run over phase planes.
func TestPhased(t *testing.T) {
	for _, tc := range []struct {
		g    ConvGeom
		want bool
	}{
		{ConvGeom{C: 32, H: 28, W: 28, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1}, true},
		{ConvGeom{C: 3, H: 17, W: 69, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1}, true},
		{ConvGeom{C: 3, H: 10, W: 34, KH: 2, KW: 2, SH: 2, SW: 2}, true},
		{ConvGeom{C: 33, H: 9, W: 7, KH: 1, KW: 1, SH: 2, SW: 2}, true},
		{ConvGeom{C: 2, H: 12, W: 10, KH: 3, KW: 3, SH: 2, SW: 2}, false},                  // unpadded: OH < ⌈H/2⌉
		{ConvGeom{C: 2, H: 12, W: 10, KH: 5, KW: 5, SH: 2, SW: 2, PH: 2, PW: 2}, false},    // shift +1 row
		{ConvGeom{C: 3, H: 10, W: 33, KH: 2, KW: 2, SH: 2, SW: 2}, false},                  // OW = 16 < 17
		{ConvGeom{C: 1024, H: 28, W: 28, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1}, false}, // over phaseMax
		{ConvGeom{C: 2, H: 12, W: 12, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1}, false},    // stride 1
	} {
		g := tc.g
		g.OH, g.OW = (g.H+2*g.PH-g.KH)/g.SH+1, (g.W+2*g.PW-g.KW)/g.SW+1
		if got := g.phased(); got != tc.want {
			t.Errorf("%+v: phased() = %v, want %v", g, got, tc.want)
		}
	}
}

// TestBatchNormFusedForms checks that the BatchNorm gradient that
// recomputes its ReLU mask from x (BatchNormTrainGradSpec with R < 0) gives
// bit for bit the results of the one that reads the forward kernel's ReLU
// output, on inputs where a third of the x·s + t land next to zero (x at
// the channel mean, zero bias), on AVX-512 and AVX2, with a ragged channel
// length; that reading dy in place as a channel slice of a wider value
// (DYStride) gives the same bits; and that the forward writing its output
// into such a slice (YStride) writes the same bits there and nothing
// around them.
func TestBatchNormFusedForms(t *testing.T) {
	const outer, C, inner = 3, 5, 37
	const n = outer * C * inner
	const X, DY, Wt, B = 0, n, 2 * n, 2*n + C
	Mean, Var, R := B+C, B+2*C, B+3*C
	DX, DW, DB := R+n, R+2*n, R+2*n+C
	// DYW holds dy as channels 2..C+1 of a [outer][C+3][inner] value, as
	// a concat's gradient holds a branch's.
	const wide = C + 3
	DYW := DB + C
	YW := DYW + outer*wide*inner
	size := YW + outer*wide*inner
	for _, ts := range x86Targets(t) {
		t.Run(ts.Name, func(t *testing.T) {
			r := rand.New(rand.NewSource(3))
			arena := make([]float32, size)
			// Channel c holds m−¼, m and m+¼ (exact in float32), 37 of
			// each, so its batch mean is exactly m and, with zero bias,
			// x·s + t at x = m is a rounding residue of m·s whose sign
			// only an fma computed as the forward's reproduces.
			for o := 0; o < outer; o++ {
				for c := 0; c < C; c++ {
					m := float32(0.7) + float32(c)*0.0123
					for i := 0; i < inner; i++ {
						k := (o*C+c)*inner + i
						arena[X+k] = m + float32((o*inner+i)%3-1)*0.25
						arena[DY+k] = float32(r.NormFloat64())
					}
				}
			}
			for c := 0; c < C; c++ {
				arena[Wt+c] = float32(0.5 + r.Float64())
			}
			for o := 0; o < outer; o++ {
				copy(arena[DYW+(o*wide+2)*inner:], arena[DY+o*C*inner:DY+(o+1)*C*inner])
			}
			fwd := BatchNormTrainSpec{Outer: outer, C: C, Inner: inner, Eps: 1e-3, X: X, Wt: Wt, B: B, Y: R, Mean: Mean, Var: Var, ReLU: true}
			withR := BatchNormTrainGradSpec{Outer: outer, C: C, Inner: inner, Eps: 1e-3, DY: DY, X: X, Wt: Wt, Mean: Mean, Var: Var,
				DX: DX, DW: DW, DB: DB, ReLU: true, R: R, B: -1}
			fromX := withR
			fromX.R, fromX.B = -1, B
			view := fromX
			view.DY, view.DYStride = DYW+2*inner, wide*inner
			fwdView := fwd
			fwdView.Y, fwdView.YStride = YW+2*inner, wide*inner
			for i := YW; i < size; i++ {
				arena[i] = sentinel
			}
			lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
				for name, s := range map[string]TrainKernel{"fwd": fwd, "fwdView": fwdView, "withR": withR, "fromX": fromX, "view": view} {
					if _, _, err := m.Train(name, s); err != nil {
						return err
					}
				}
				return nil
			})
			a := runChecked(t, kernel(t, lib, "fwd", ts), arena, nil, fwd.tileCount())
			zeros := 0
			for i := 0; i < n; i++ {
				if a[R+i] == 0 {
					zeros++
				}
			}
			if zeros == 0 || zeros == n {
				t.Fatalf("%d of %d ReLU outputs are zero: the test needs both", zeros, n)
			}
			want := runChecked(t, kernel(t, lib, "withR", ts), a, nil, withR.tileCount())
			got := runChecked(t, kernel(t, lib, "fromX", ts), a, nil, fromX.tileCount())
			aw := runChecked(t, kernel(t, lib, "fwdView", ts), arena, nil, fwdView.tileCount())
			for o := 0; o < outer; o++ {
				for c := 0; c < wide; c++ {
					for i := 0; i < inner; i++ {
						got, want := aw[YW+(o*wide+c)*inner+i], sentinel
						if c >= 2 && c < 2+C {
							want = a[R+(o*C+c-2)*inner+i]
						}
						if math.Float32bits(got) != math.Float32bits(want) {
							t.Fatalf("forward into channel %d of a wider value, row %d, element %d: %v, want %v", c, o, i, got, want)
						}
					}
				}
			}
			viewed := runChecked(t, kernel(t, lib, "view", ts), a, nil, view.tileCount())
			for i := DX; i < DYW; i++ {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("arena[%d] (dx from %d, dw from %d, db from %d): mask from x gives %v, from R %v", i, DX, DW, DB, got[i], want[i])
				}
				if math.Float32bits(viewed[i]) != math.Float32bits(want[i]) {
					t.Fatalf("arena[%d] (dx from %d, dw from %d, db from %d): dy read in place from a wider value gives %v, dense %v", i, DX, DW, DB, viewed[i], want[i])
				}
			}
		})
	}
}

// TestTrainConvSiblings checks sibling groups (passes.ConvSiblings and
// GradInputSiblings) against each convolution computed alone by the
// reference: the forward kernel with further outputs
// (TrainConvSpec.Siblings), with a bias on the first, and the summed input
// gradient (TrainConvGradInputSpec.Siblings) alone and added to another
// gradient, for full 32-column pixel blocks read directly, a ragged block
// packed, output channel counts that are not multiples of the micro-tile,
// and (forward only) K or the summed channels past the reduction block.
func TestTrainConvSiblings(t *testing.T) {
	cases := []struct {
		g  ConvGeom
		os []int // output channels of the group's convolutions
	}{
		{ConvGeom{N: 2, C: 8, H: 14, W: 14}, []int{16, 16, 16, 16}},
		{ConvGeom{N: 3, C: 11, H: 7, W: 7}, []int{5, 13, 3}},
		{ConvGeom{N: 1, C: 300, H: 8, W: 9}, []int{3, 7}},
		// More summed channels than a reduction block: the forward only.
		{ConvGeom{N: 1, C: 4, H: 5, W: 5}, []int{200, 100}},
	}
	targets := trainTargets(t)
	for _, ts := range targets {
		for ci, c := range cases {
			s := c.g
			s.KH, s.KW, s.SH, s.SW, s.OH, s.OW = 1, 1, 1, 1, s.H, s.W
			t.Run(fmt.Sprintf("%s/%d", ts.Name, ci), func(t *testing.T) {
				r := rand.New(rand.NewSource(int64(ci)))
				const gap = 16
				nx, P := s.N*s.C*s.H*s.W, s.H*s.W
				x := randn(r, nx)
				bias := randn(r, c.os[0])
				at := nx + gap
				B := at
				at += c.os[0] + gap
				type conv struct {
					geo      ConvGeom
					w, dy    []float32
					W, Y, DY int
				}
				var convs []conv
				for _, o := range c.os {
					g := s
					g.O = o
					cv := conv{geo: g, w: randn(r, o*s.C), dy: randn(r, s.N*o*P)}
					cv.W, at = at, at+o*s.C+gap
					cv.Y, at = at, at+s.N*o*P+gap
					cv.DY, at = at, at+s.N*o*P+gap
					convs = append(convs, cv)
				}
				DX, DXA := at, at+nx+gap
				addend := randn(r, nx)
				ACC := DXA + nx + gap
				at = ACC + nx + gap
				arena := make([]float32, at)
				fill(arena, sentinel)
				copy(arena, x)
				copy(arena[ACC:], addend)
				copy(arena[B:], bias)
				for _, cv := range convs {
					copy(arena[cv.W:], cv.w)
					copy(arena[cv.DY:], cv.dy)
				}
				first := convs[0]
				fwd := TrainConvSpec{ConvGeom: first.geo, X: 0, Wt: first.W, Bias: B, Out: first.Y}
				for _, cv := range convs[1:] {
					fwd.Siblings = append(fwd.Siblings, ConvSibling{O: cv.geo.O, Wt: cv.W, Data: cv.Y})
				}
				dgrad := TrainConvGradInputSpec{ConvGeom: first.geo, DY: first.DY, Wt: first.W, DX: DX, Acc: -1}
				var os []int
				for _, cv := range convs {
					os = append(os, cv.geo.O)
				}
				for _, cv := range convs[1:] {
					dgrad.Siblings = append(dgrad.Siblings, ConvSibling{O: cv.geo.O, Wt: cv.W, Data: cv.DY})
				}
				dgradAcc := dgrad
				dgradAcc.DX, dgradAcc.Acc = DXA, ACC
				grads := s.GradInputSiblingsOK(os)
				lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
					if _, _, err := m.Train("fwd", fwd); err != nil {
						return err
					}
					if !grads {
						return nil
					}
					if _, _, err := m.Train("dgrad", dgrad); err != nil {
						return err
					}
					_, _, err := m.Train("dgradacc", dgradAcc)
					return err
				})
				a := runChecked(t, kernel(t, lib, "fwd", ts), arena, nil, fwd.tileCount())
				rdx := make([]float64, nx)
				for _, cv := range convs {
					_, d, _ := convRef(cv.geo, x, cv.w, cv.dy)
					for i := range rdx {
						rdx[i] += d[i]
					}
				}
				if grads {
					a = runChecked(t, kernel(t, lib, "dgrad", ts), a, nil, dgrad.tileCount())
					a = runChecked(t, kernel(t, lib, "dgradacc", ts), a, nil, dgradAcc.tileCount())
					compare(t, "conv2d_grad_input siblings", a[DX:DX+nx], rdx)
					for i := range rdx {
						rdx[i] += float64(addend[i])
					}
					compare(t, "conv2d_grad_input siblings + addend", a[DXA:DXA+nx], rdx)
				} else if err := dgrad.Validate(); err == nil {
					t.Errorf("input-gradient siblings of %v channels (over a reduction block) validate", os)
				}
				for j, cv := range convs {
					ry, _, _ := convRef(cv.geo, x, cv.w, cv.dy)
					if j == 0 {
						for i := range ry {
							ry[i] += float64(bias[i/P%cv.geo.O])
						}
					}
					compare(t, fmt.Sprintf("conv2d sibling %d", j), a[cv.Y:cv.Y+len(ry)], ry)
				}
				checkUnchanged(t, "gaps", a, arena, func(i int) bool {
					if grads && (i >= DX && i < DX+nx || i >= DXA && i < DXA+nx) {
						return true
					}
					for _, cv := range convs {
						if i >= cv.Y && i < cv.Y+s.N*cv.geo.O*P {
							return true
						}
					}
					return false
				})
			})
		}
	}
}

// TestTrainConvGradWeightSiblings checks the weight gradients of sibling
// 1x1 convolutions computed by one kernel (TrainConvGradWeightSpec.Siblings,
// passes.WgradSiblings) against each convolution's reference, whole and
// with the batch split in runs (the last one ragged), each part's runs then
// added by its own ChannelSumSpec as the lowering does: with the
// dot-product kernel, four 16-channel parts over a plane of full vectors
// and parts of 5, 21 and 3 channels (partial blocks of channels) over a
// plane with a vector tail; with the packed kernel, parts of 48, 32 and
// 20 channels, and three of 16 where the split gives it enough tiles (two
// of 16 stay with the dot-product kernel: fewer than 48 channels). Outside
// the dWs and partial sums the arena must be unchanged.
func TestTrainConvGradWeightSiblings(t *testing.T) {
	cases := []struct {
		g      ConvGeom
		os     []int
		packed [2]bool // the group takes the packed kernel (transPack), whole and split
	}{
		{ConvGeom{N: 5, C: 20, H: 8, W: 8}, []int{16, 16, 16, 16}, [2]bool{false, false}},
		{ConvGeom{N: 3, C: 9, H: 6, W: 6}, []int{5, 21, 3}, [2]bool{false, false}},
		// The packed kernel: each tile's panel serves the three parts.
		{ConvGeom{N: 3, C: 176, H: 7, W: 7}, []int{48, 32, 20}, [2]bool{true, true}},
		// Split in two, 8 tiles: packed for 48 output channels in all
		// (the group's), not for 32.
		{ConvGeom{N: 8, C: 100, H: 4, W: 4}, []int{16, 16, 16}, [2]bool{false, true}},
		{ConvGeom{N: 8, C: 100, H: 4, W: 4}, []int{16, 16}, [2]bool{false, false}},
	}
	for _, ts := range trainTargets(t) {
		for ci, c := range cases {
			s := c.g
			s.KH, s.KW, s.SH, s.SW, s.OH, s.OW = 1, 1, 1, 1, s.H, s.W
			for _, split := range []int{0, 2} {
				t.Run(fmt.Sprintf("%s/%d/split%d", ts.Name, ci, split), func(t *testing.T) {
					r := rand.New(rand.NewSource(int64(ci)))
					const gap = 16
					nx, P := s.N*s.C*s.H*s.W, s.H*s.W
					x := randn(r, nx)
					at := nx + gap
					spec := TrainConvGradWeightSpec{Split: split}
					runs := 1
					type part struct {
						geo               ConvGeom
						dy, w             []float32
						DY, DW, PART, Sum int
					}
					var ps []part
					for j, o := range c.os {
						g := s
						g.O = o
						pt := part{geo: g, dy: randn(r, s.N*o*P), w: randn(r, o*s.C)}
						if j == 0 {
							spec.ConvGeom = g
							runs = spec.SplitRuns()
						}
						nw := o * s.C
						pt.DY, at = at, at+s.N*o*P+gap
						pt.DW, at = at, at+nw+gap
						pt.PART, at = at, at+runs*nw+gap
						pt.Sum = pt.DW
						ps = append(ps, pt)
					}
					arena := make([]float32, at)
					fill(arena, sentinel)
					copy(arena, x)
					for _, pt := range ps {
						copy(arena[pt.DY:], pt.dy)
					}
					spec.X, spec.DY, spec.DW, spec.Partial = 0, ps[0].DY, ps[0].DW, ps[0].PART
					for _, pt := range ps[1:] {
						spec.Siblings = append(spec.Siblings, WgradSibling{O: pt.geo.O, DY: pt.DY, DW: pt.DW, Partial: pt.PART})
					}
					if !spec.SiblingsOK() {
						t.Fatalf("siblings %v of %+v do not take one kernel", c.os, s)
					}
					if want := c.packed[min(split, 1)]; spec.wgSame() == want {
						t.Fatalf("siblings %v of %+v, split %d: packed kernel %v, want %v", c.os, s, split, !spec.wgSame(), want)
					}
					lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
						if _, _, err := m.Train("wg", spec); err != nil {
							return err
						}
						for j, pt := range ps {
							nw := pt.geo.O * s.C
							if _, _, err := m.Train(fmt.Sprintf("sum%d", j), ChannelSumSpec{Outer: runs, C: nw, Inner: 1, DY: pt.PART, Out: pt.DW}); err != nil {
								return err
							}
						}
						return nil
					})
					a := runChecked(t, kernel(t, lib, "wg", ts), arena, nil, spec.tileCount())
					if runs > 1 {
						for j, pt := range ps {
							a = runChecked(t, kernel(t, lib, fmt.Sprintf("sum%d", j), ts), a, nil, ChannelSumSpec{Outer: runs, C: pt.geo.O * s.C, Inner: 1}.tileCount())
						}
					}
					for j, pt := range ps {
						_, _, rdw := convRef(pt.geo, x, pt.w, pt.dy)
						compare(t, fmt.Sprintf("conv2d_grad_weight sibling %d (%d runs)", j, runs), a[pt.DW:pt.DW+len(rdw)], rdw)
					}
					checkUnchanged(t, "gaps", a, arena, func(i int) bool {
						for _, pt := range ps {
							nw := pt.geo.O * s.C
							if i >= pt.DW && i < pt.DW+nw || runs > 1 && i >= pt.PART && i < pt.PART+runs*nw {
								return true
							}
						}
						return false
					})
				})
			}
		}
	}
	// Siblings the packed kernel would split in groups of channels are
	// refused.
	g := ConvGeom{N: 4, C: 176, H: 7, W: 7, O: 32, KH: 1, KW: 1, SH: 1, SW: 1, OH: 7, OW: 7}
	bad := TrainConvGradWeightSpec{ConvGeom: g, DY: 0, X: 1 << 20, DW: 2 << 20, Siblings: []WgradSibling{{O: 96, DY: 3 << 20, DW: 4 << 20}}}
	if err := bad.Validate(); err == nil {
		t.Errorf("sibling weight gradients of %+v and 96 channels (two groups of the packed kernel) validate", g)
	}
}

// TestEltTrainKernels checks the elementwise training kernels bit for bit
// against float32 arithmetic in the interpreter's order (relu_grad, mul2,
// scale_by and the fused residual forward relu(a + c·b)), over a length
// that leaves a partial tile and a vector tail, with an output in place of
// an input, on every x86 target of the host.
func TestEltTrainKernels(t *testing.T) {
	const n = 4096 + 37
	const A, B, O = 0, n, 2 * n
	cases := []struct {
		name string
		s    EltTrainSpec
		want func(a, b []float32, i int) float32
	}{
		{"relu_grad", EltTrainSpec{Op: EltReLUGrad, Elems: n, A: A, B: B, Out: O}, func(a, b []float32, i int) float32 {
			if b[i] > 0 {
				return a[i]
			}
			return 0
		}},
		{"mul2", EltTrainSpec{Op: EltMul2, Elems: n, A: A, B: B, Out: O}, func(a, b []float32, i int) float32 { return a[i] * b[i] }},
		{"scale_by", EltTrainSpec{Op: EltScaleBy, Elems: n, A: A, B: B, Out: O}, func(a, b []float32, i int) float32 { return a[i] * b[0] }},
		{"residual", EltTrainSpec{Op: EltResidual, Elems: n, A: A, B: B, Out: O, C: 0.1}, func(a, b []float32, i int) float32 {
			return max(a[i]+b[i]*float32(0.1), 0)
		}},
		{"residual_in_place", EltTrainSpec{Op: EltResidual, Elems: n, A: A, B: B, Out: B, C: 0.25}, func(a, b []float32, i int) float32 {
			return max(a[i]+b[i]*float32(0.25), 0)
		}},
	}
	for _, ts := range x86Targets(t) {
		for _, c := range cases {
			t.Run(ts.Name+"/"+c.name, func(t *testing.T) {
				r := rand.New(rand.NewSource(2))
				a, b := randn(r, n), randn(r, n)
				arena := make([]float32, 3*n)
				copy(arena[A:], a)
				copy(arena[B:], b)
				lib := buildLibFor(t, []Target{ts}, func(m *Module) error { _, _, err := m.Train("elt", c.s); return err })
				got := runChecked(t, kernel(t, lib, "elt", ts), arena, nil, c.s.tileCount())
				for i := 0; i < n; i++ {
					out := c.want(a, b, i)
					if got[c.s.Out+i] != out {
						t.Fatalf("element %d: out %v, want %v", i, got[c.s.Out+i], out)
					}
				}
			})
		}
	}
	// Overlaps that the element-by-element pass cannot honour are refused.
	for _, s := range []EltTrainSpec{
		{Op: EltResidual, Elems: n, A: A, B: B, Out: B + 5, C: 1},
		{Op: EltReLUGrad, Elems: n, A: A, B: B, Out: A + 3},
		{Op: EltScaleBy, Elems: n, A: A, B: O + 7, Out: O},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v: no error", s)
		}
	}
}
