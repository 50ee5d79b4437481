package codegen

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

// TestBatchNormStatsFromConv checks the BatchNorm statistics written by the
// forward convolution kernels (train_bnstats.go): on every kind of forward
// kernel (the im2col GEMM, the stride-1 "same" kernel, the phased stride-2
// one, a sibling group whose two outputs each get statistics, the "same"
// kernel's flat blocks over 7x7 planes), with ragged pixel blocks, the BatchNorm that combines the partials gives the float64
// batch mean and variance of the convolution's output to 1e-6 of the
// variance, and outputs within 1e-5 of the one-pass kernel's, which reads
// the output itself. The bias (300 + a channel's index) puts the mean far
// from the spread, so an unshifted sum of squares would lose the variance.
func TestBatchNormStatsFromConv(t *testing.T) {
	geoms := []struct {
		g   ConvGeom
		sib int // output channels of a sibling convolution (0: none)
	}{
		{ConvGeom{N: 3, C: 4, H: 9, W: 9, O: 5, KH: 3, KW: 3, SH: 2, SW: 2}, 0},                 // genGemm
		{ConvGeom{N: 2, C: 3, H: 11, W: 9, O: 17, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1}, 0}, // same, 99 pixels
		{ConvGeom{N: 2, C: 3, H: 7, W: 7, O: 6, KH: 1, KW: 7, SH: 1, SW: 1, PW: 3}, 0},          // same, flat blocks
		{ConvGeom{N: 3, C: 5, H: 7, W: 7, O: 6, KH: 7, KW: 1, SH: 1, SW: 1, PH: 3}, 0},          // flat, short last block
		{ConvGeom{N: 3, C: 8, H: 7, W: 7, O: 7, KH: 1, KW: 1, SH: 1, SW: 1}, 5},                 // flat siblings
		{ConvGeom{N: 2, C: 2, H: 28, W: 28, O: 9, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1}, 0}, // phased
		{ConvGeom{N: 2, C: 8, H: 10, W: 10, O: 7, KH: 1, KW: 1, SH: 1, SW: 1}, 5},               // siblings
	}
	targets := trainTargets(t)
	for _, ts := range targets {
		for gi, c := range geoms {
			s := c.g
			s.OH, s.OW = (s.H+2*s.PH-s.KH)/s.SH+1, (s.W+2*s.PW-s.KW)/s.SW+1
			t.Run(fmt.Sprintf("%s/%d", ts.Name, gi), func(t *testing.T) {
				r := rand.New(rand.NewSource(int64(gi)))
				P := s.OH * s.OW
				outs := []int{s.O}
				if c.sib > 0 {
					outs = append(outs, c.sib)
				}
				const gap = 16
				at := 0
				next := func(n int) int { a := at; at += n + gap; return a }
				nx := s.N * s.C * s.H * s.W
				X, B := next(nx), next(s.O)
				type out struct {
					O, W, Y, St, BW, BB, Z1, Z2, M1, V1, M2, V2 int
				}
				var os []out
				for _, o := range outs {
					os = append(os, out{O: o, W: next(o * s.C * s.KH * s.KW), Y: next(s.N * o * P), St: next(StatsFloats(o, s.N, P)),
						BW: next(o), BB: next(o), Z1: next(s.N * o * P), Z2: next(s.N * o * P), M1: next(o), V1: next(o), M2: next(o), V2: next(o)})
				}
				arena := make([]float32, at)
				fill(arena, sentinel)
				copy(arena[X:], randn(r, nx))
				for o := 0; o < s.O; o++ {
					arena[B+o] = 300 + float32(o)
				}
				for _, o := range os {
					copy(arena[o.W:], randn(r, o.O*s.C*s.KH*s.KW))
					copy(arena[o.BW:], randn(r, o.O))
					copy(arena[o.BB:], randn(r, o.O))
				}
				fwd := TrainConvSpec{ConvGeom: s, X: X, Wt: os[0].W, Bias: B, Out: os[0].Y}
				flat := fwd.FlatStats()
				fwd.Stats = BNStats{On: true, At: os[0].St, Flat: flat}
				for _, o := range os[1:] {
					fwd.Siblings = append(fwd.Siblings, ConvSibling{O: o.O, Wt: o.W, Data: o.Y, Stats: BNStats{On: true, At: o.St, Flat: flat}})
				}
				lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
					if _, _, err := m.Train("fwd", fwd); err != nil {
						return err
					}
					for j, o := range os {
						bn := BatchNormTrainSpec{Outer: s.N, C: o.O, Inner: P, Eps: 1e-3, X: o.Y, Wt: o.BW, B: o.BB, Y: o.Z1, Mean: o.M1, Var: o.V1, ReLU: true}
						if _, _, err := m.Train(fmt.Sprintf("bn%d", j), bn); err != nil {
							return err
						}
						bn.Y, bn.Mean, bn.Var, bn.Stats = o.Z2, o.M2, o.V2, BNStats{On: true, At: o.St, Flat: flat}
						if _, _, err := m.Train(fmt.Sprintf("bnst%d", j), bn); err != nil {
							return err
						}
					}
					return nil
				})
				a := runChecked(t, kernel(t, lib, "fwd", ts), arena, nil, fwd.tileCount())
				for j, o := range os {
					a = runChecked(t, kernel(t, lib, fmt.Sprintf("bn%d", j), ts), a, nil, o.O)
					a = runChecked(t, kernel(t, lib, fmt.Sprintf("bnst%d", j), ts), a, nil, o.O)
					for ch := 0; ch < o.O; ch++ {
						var sum, sq float64
						for n := 0; n < s.N; n++ {
							for _, v := range a[o.Y+(n*o.O+ch)*P : o.Y+(n*o.O+ch+1)*P] {
								sum += float64(v)
							}
						}
						mean := sum / float64(s.N*P)
						for n := 0; n < s.N; n++ {
							for _, v := range a[o.Y+(n*o.O+ch)*P : o.Y+(n*o.O+ch+1)*P] {
								sq += (float64(v) - mean) * (float64(v) - mean)
							}
						}
						v := sq / float64(s.N*P)
						if got := float64(a[o.M2+ch]); math.Abs(got-mean) > 1e-6*math.Abs(mean)+1e-6*math.Sqrt(v) {
							t.Errorf("output %d channel %d: mean %v, want %v", j, ch, got, mean)
						}
						if got := float64(a[o.V2+ch]); math.Abs(got-v) > 1e-6*v {
							t.Errorf("output %d channel %d: variance %v, want %v (one pass over x: %v)", j, ch, got, v, a[o.V1+ch])
						}
					}
					ref := make([]float64, s.N*o.O*P)
					for i := range ref {
						ref[i] = float64(a[o.Z1+i])
					}
					compare(t, fmt.Sprintf("output %d normalized from the partials", j), a[o.Z2:o.Z2+len(ref)], ref)
				}
				checkUnchanged(t, "gaps", a, arena, func(i int) bool {
					for _, o := range os {
						for _, rg := range [][2]int{{o.Y, s.N * o.O * P}, {o.St, StatsFloats(o.O, s.N, P)}, {o.Z1, s.N * o.O * P}, {o.Z2, s.N * o.O * P},
							{o.M1, o.O}, {o.V1, o.O}, {o.M2, o.O}, {o.V2, o.O}} {
							if i >= rg[0] && i < rg[0]+rg[1] {
								return true
							}
						}
					}
					return false
				})
			})
		}
	}
}
