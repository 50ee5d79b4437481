package codegen

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

// TestTrainConvEpilogues checks the residual epilogue of the forward
// convolution (TrainConvSpec.Residual: relu(x + c·(conv + bias))), the
// scale of the input gradient (TrainConvGradInputSpec.Scale) and its relu
// mask (TrainConvGradInputSpec.Mask: dx where y > 0) against the
// same kernels without them followed by the unfused operations in float32:
// bit for bit, since the epilogues round as the unfused kernels do. The
// geometries are a 1x1 blocked image by image with a ragged last block, a
// 1x1 over 7x7 planes in flat blocks (flatBlocks, a short last block), a
// 3x3 and a 1x7 "same" convolution; the residual input is a separate
// buffer and, for the 1x1, the output itself (written in place). The
// masked input gradient also writes its partial sums (Stats) once, which
// must leave dx bit for bit as it was, and the bias gradient of dx summed
// from them (ChannelSumSpec.Stats) must match the float64 sum of dx within
// 1e-6 of the sum of magnitudes, as the one reading dx does.
func TestTrainConvEpilogues(t *testing.T) {
	geoms := []ConvGeom{
		{N: 2, C: 24, H: 14, W: 14, O: 20, KH: 1, KW: 1, SH: 1, SW: 1},
		{N: 3, C: 40, H: 7, W: 7, O: 33, KH: 1, KW: 1, SH: 1, SW: 1},
		{N: 2, C: 5, H: 9, W: 10, O: 7, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1},
		{N: 3, C: 6, H: 7, W: 7, O: 9, KH: 1, KW: 7, SH: 1, SW: 1, PW: 3},
	}
	const c = float32(0.2)
	for _, ts := range trainTargets(t) {
		for gi, s := range geoms {
			s.OH, s.OW = s.H, s.W
			for _, inPlace := range []bool{false, true} {
				if inPlace && s.KH*s.KW > 1 {
					continue
				}
				t.Run(fmt.Sprintf("%s/%dx%d_%dx%d/inplace=%v", ts.Name, s.KH, s.KW, s.H, s.W, inPlace), func(t *testing.T) {
					r := rand.New(rand.NewSource(int64(gi)))
					nx, nw, ny := s.N*s.C*s.H*s.W, s.O*s.C*s.KH*s.KW, s.N*s.O*s.OH*s.OW
					const gap = 16
					at := 0
					next := func(n int) int { a := at; at += n + gap; return a }
					X, W, B, SK, Y, YR, DY, DX, DXS := next(nx), next(nw), next(s.O), next(ny), next(ny), next(ny), next(ny), next(nx), next(nx)
					MY, DXM, DXT := next(nx), next(nx), next(nx)
					SUMS, BD, BS := next(StatsFloats(s.C, s.N, s.H*s.W)), next(s.C), next(s.C)
					arena := make([]float32, at)
					fill(arena, sentinel)
					skip := randn(r, ny)
					copy(arena[X:], randn(r, nx))
					copy(arena[W:], randn(r, nw))
					copy(arena[B:], randn(r, s.O))
					copy(arena[SK:], skip)
					copy(arena[DY:], randn(r, ny))
					mask := randn(r, nx)
					copy(arena[MY:], mask)
					res := ResidualEpilogue{On: true, X: SK, C: c}
					if inPlace {
						copy(arena[YR:], skip)
						res.X = YR
					}
					fwd := TrainConvSpec{ConvGeom: s, X: X, Wt: W, Bias: B, Out: Y}
					fres := fwd
					fres.Out, fres.Residual = YR, res
					dgrad := TrainConvGradInputSpec{ConvGeom: s, DY: DY, Wt: W, DX: DX, Acc: -1}
					dscale := dgrad
					dscale.DX, dscale.Scale = DXS, c
					dmask := dgrad
					dmask.DX, dmask.Mask = DXM, ReLUMask{On: true, Y: MY}
					dsums := dmask
					dsums.DX, dsums.Stats = DXT, BNStats{On: true, At: SUMS, Flat: dmask.FlatStats()}
					bdirect := ChannelSumSpec{Outer: s.N, C: s.C, Inner: s.H * s.W, DY: DXM, Out: BD}
					bsums := ChannelSumSpec{Outer: s.N, C: s.C, Inner: s.H * s.W, DY: DXT, Out: BS, Stats: dsums.Stats}
					if !fres.ResidualOK() || !dscale.ScaleOK() || !dmask.MaskOK() || !dsums.StatsOK() {
						t.Fatalf("geometry %+v: no epilogue", s)
					}
					lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
						for _, k := range []struct {
							n string
							s TrainKernel
						}{{"fwd", fwd}, {"fres", fres}, {"dgrad", dgrad}, {"dscale", dscale}, {"dmask", dmask},
							{"dsums", dsums}, {"bdirect", bdirect}, {"bsums", bsums}} {
							if _, _, err := m.Train(k.n, k.s); err != nil {
								return err
							}
						}
						return nil
					})
					a := runChecked(t, kernel(t, lib, "fwd", ts), arena, nil, fwd.tileCount())
					a = runChecked(t, kernel(t, lib, "fres", ts), a, nil, fres.tileCount())
					a = runChecked(t, kernel(t, lib, "dgrad", ts), a, nil, dgrad.tileCount())
					a = runChecked(t, kernel(t, lib, "dscale", ts), a, nil, dscale.tileCount())
					a = runChecked(t, kernel(t, lib, "dmask", ts), a, nil, dmask.tileCount())
					a = runChecked(t, kernel(t, lib, "dsums", ts), a, nil, dsums.tileCount())
					a = runChecked(t, kernel(t, lib, "bdirect", ts), a, nil, bdirect.tileCount())
					a = runChecked(t, kernel(t, lib, "bsums", ts), a, nil, bsums.tileCount())
					P := s.H * s.W
					for ch := 0; ch < s.C; ch++ {
						var sum, mag float64
						for n := 0; n < s.N; n++ {
							for _, v := range a[DXM+(n*s.C+ch)*P:][:P] {
								sum, mag = sum+float64(v), mag+math.Abs(float64(v))
							}
						}
						for _, b := range []struct {
							name string
							at   int
						}{{"from dx", BD}, {"from partial sums", BS}} {
							if got := float64(a[b.at+ch]); math.Abs(got-sum) > 1e-6*mag+1e-30 {
								t.Fatalf("bias gradient %s, channel %d: %v, want %v (Σ|v| = %v)", b.name, ch, got, sum, mag)
							}
						}
					}
					for i := 0; i < ny; i++ {
						m := float32(c * a[Y+i])
						want := max(float32(skip[i]+m), 0)
						if got := a[YR+i]; got != want {
							t.Fatalf("residual epilogue: element %d is %v, want relu(%v + %v·%v) = %v", i, got, skip[i], c, a[Y+i], want)
						}
					}
					for i := 0; i < nx; i++ {
						if got, want := a[DXS+i], float32(c*a[DX+i]); got != want {
							t.Fatalf("scaled input gradient: element %d is %v, want %v·%v = %v", i, got, c, a[DX+i], want)
						}
						want := a[DX+i]
						if !(mask[i] > 0) {
							want = 0
						}
						if got := a[DXM+i]; got != want {
							t.Fatalf("masked input gradient: element %d is %v, want %v (mask %v)", i, got, want, mask[i])
						}
						if got := a[DXT+i]; got != want {
							t.Fatalf("masked input gradient with partial sums: element %d is %v, want %v", i, got, want)
						}
					}
					checkUnchanged(t, "gaps", a, arena, func(i int) bool {
						for _, rg := range [][2]int{{Y, ny}, {YR, ny}, {DX, nx}, {DXS, nx}, {DXM, nx}, {DXT, nx},
							{SUMS, dsums.Stats.blocks(s.N, s.H*s.W) * s.C * 3}, {BD, s.C}, {BS, s.C}} {
							if i >= rg[0] && i < rg[0]+rg[1] {
								return true
							}
						}
						return false
					})
				})
			}
		}
	}
}
