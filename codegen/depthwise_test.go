package codegen

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/kiln-dev/kiln/codegen/internal/ktest"
	kir "github.com/kiln-dev/kiln/ir"
)

// refConvGD is the float64 reference of a grouped, dilated convolution on
// plain tensors: x[N][C][H][W], w[O][C/G][KH][KW], bias[O],
// res[N][O][OH][OW] → out[N][O][OH][OW] (PyTorch's Conv2d).
func refConvGD(s ConvSpec, x, w, bias, res []float32) []float64 {
	g := s.groups()
	dh, dw := s.dil()
	cg, og := s.C/g, s.O/g
	out := make([]float64, s.N*s.O*s.OH*s.OW)
	for n := 0; n < s.N; n++ {
		for o := 0; o < s.O; o++ {
			for oh := 0; oh < s.OH; oh++ {
				for ow := 0; ow < s.OW; ow++ {
					sum := 0.0
					for c := 0; c < cg; c++ {
						ic := o/og*cg + c
						for kh := 0; kh < s.KH; kh++ {
							ih := oh*s.SH - s.PH + kh*dh
							for kw := 0; kw < s.KW; kw++ {
								iw := ow*s.SW - s.PW + kw*dw
								if ih < 0 || ih >= s.H || iw < 0 || iw >= s.W {
									continue
								}
								sum += float64(x[((n*s.C+ic)*s.H+ih)*s.W+iw]) * float64(w[((o*cg+c)*s.KH+kh)*s.KW+kw])
							}
						}
					}
					i := ((n*s.O+o)*s.OH+oh)*s.OW + ow
					if s.HasBias {
						sum += float64(bias[o])
					}
					if s.HasResidual {
						sum += float64(res[i])
					}
					if s.Relu && sum < 0 {
						sum = 0
					}
					out[i] = sum
				}
			}
		}
	}
	return out
}

// gd sets groups and dilation of a spec and recomputes its output size.
func gd(s ConvSpec, groups, dh, dw int) ConvSpec {
	s.Groups, s.DH, s.DW = groups, dh, dw
	s.OH = kir.ConvOut(s.H, kir.DilatedKernel(s.KH, dh), s.SH, s.PH)
	s.OW = kir.ConvOut(s.W, kir.DilatedKernel(s.KW, dw), s.SW, s.PW)
	return s
}

// TestConvGroupedDilated checks the dense kernel with dilation and with
// groups whose per-group channel counts are multiples of the block (B=16 and
// B=4), against refConvGD.
func TestConvGroupedDilated(t *testing.T) {
	for _, set := range targetSets(t) {
		b := set.b
		cases := []convCase{
			{name: "3x3 d2 p2", s: with(gd(cv(1, 2*b, 9, 10, 2*b, 3, 3, 1, 1, 2, 2), 1, 2, 2), allEpi)},
			{name: "3x3 d3,2 s2 p1", s: with(gd(cv(2, b+3, 13, 12, b, 3, 3, 2, 2, 1, 1), 1, 3, 2), biasRelu)},
			{name: "3x3 d2 plain", s: with(gd(cv(1, 3, 11, 11, b, 3, 3, 1, 1, 2, 2), 1, 2, 2), plain)},
			{name: "1x3 d4 p0,4", s: with(gd(cv(1, b, 5, 17, b, 1, 3, 1, 1, 0, 4), 1, 1, 4), bias)},
			{name: "3x3 g2 p1", s: with(gd(cv(1, 2*b, 7, 9, 4*b, 3, 3, 1, 1, 1, 1), 2, 1, 1), allEpi)},
			{name: "1x1 g4 flat", s: with(gd(cv(2, 4*b, 5, 6, 8*b, 1, 1, 1, 1, 0, 0), 4, 1, 1), biasRelu)},
			{name: "3x3 g2 s2 d2 slice", s: with(gd(cv(1, 2*b, 11, 9, 2*b, 3, 3, 2, 2, 2, 2), 2, 2, 2), slice(4*b, b))},
			{name: "forced g1 rw3 groups", s: with(gd(cv(1, 2*b, 6, 11, 4*b, 3, 3, 1, 1, 1, 1), 2, 1, 1), allEpi), g: 1, rw: 3},
		}
		t.Run(fmt.Sprintf("B%d", b), func(t *testing.T) { testConvGD(t, set, cases) })
	}
}

func testConvGD(t *testing.T, set targetSet, cases []convCase) {
	b, primary := set.b, set.targets[0]
	force := func(c convCase) {
		convTuning = nil
		if c.g > 0 {
			convTuning = func(t Target, _ ConvSpec) (int, int) {
				if t.Name == primary.Name {
					return c.g, c.rw
				}
				return 0, 0
			}
		}
	}
	defer func() { convTuning = nil }()
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, c := range cases {
			s, _, _ := convLayout(c, b)
			force(c)
			if _, _, err := m.Conv(convKernelName(i), s); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(3))
	for i, c := range cases {
		s, arenaLen, wLen := convLayout(c, b)
		force(c)
		tiles := planConv(s, b, primary).tiles
		convTuning = nil
		cg := s.C / s.groups()
		x := randn(r, s.N*s.C*s.H*s.W)
		w := randn(r, s.O*cg*s.KH*s.KW)
		bs := randn(r, s.O)
		res := randn(r, s.N*s.O*s.OH*s.OW)
		ref := refConvGD(s, x, w, bs, res)
		arena := make([]float32, arenaLen)
		fill(arena, sentinel)
		if s.InPlain {
			copy(arena[s.InOff:], x)
		} else {
			ktest.PackBlocked(arena[s.InOff:], x, s.N, s.C, s.H, s.W, b)
		}
		if s.HasResidual {
			ktest.PackBlocked(arena[s.ResidualOff:], res, s.N, s.O, s.OH, s.OW, b)
		}
		weights := make([]float32, wLen)
		fill(weights, sentinel)
		ktest.PackWeights(weights[s.WeightOff:], w, s.O, cg, s.KH, s.KW, b)
		ob := ceilDiv(s.O, b)
		copy(weights[s.BiasOff:s.BiasOff+ob*b], make([]float32, ob*b))
		copy(weights[s.BiasOff:], bs)
		outCB := ceilDiv(s.OutC, b)
		written := func(i int) bool {
			j := i - s.OutOff
			if j < 0 || j >= s.N*outCB*b*s.OH*s.OW {
				return false
			}
			blk := j / (b * s.OH * s.OW) % outCB
			return blk >= s.OutCOffset/b && blk < s.OutCOffset/b+ob
		}
		for _, tgt := range set.run {
			t.Run(fmt.Sprintf("%s/%s", c.name, tgt.Name), func(t *testing.T) {
				k := kernel(t, lib, convKernelName(i), tgt)
				got := runChecked(t, k, arena, weights, tiles)
				checkUnchanged(t, "conv", got, arena, written)
				checkBlockedOut(t, "conv", got[s.OutOff:], ref, s.N, s.O, s.OH, s.OW, s.OutC, s.OutCOffset, b)
			})
		}
	}
}

// dwCase is a depthwise test case; offsets are assigned by dwLayout.
type dwCase struct {
	name    string
	s       DepthwiseSpec
	inPlace bool
}

func dws(n, c, h, w, k, st, p, d int) DepthwiseSpec {
	return DepthwiseSpec{N: n, C: c, H: h, W: w, KH: k, KW: k, SH: st, SW: st, PH: p, PW: p, DH: d, DW: d,
		OH: kir.ConvOut(h, kir.DilatedKernel(k, d), st, p), OW: kir.ConvOut(w, kir.DilatedKernel(k, d), st, p), OutC: c}
}

func dwLayout(c dwCase, b int) (DepthwiseSpec, int, int) {
	s := c.s
	cb := ceilDiv(s.C, b)
	in := s.N * cb * b * s.H * s.W
	res := s.N * cb * b * s.OH * s.OW
	out := s.N * ceilDiv(s.OutC, b) * b * s.OH * s.OW
	s.InOff = 16
	s.ResidualOff = s.InOff + in + 40
	s.OutOff = s.ResidualOff + res + 24
	if c.inPlace {
		s.OutOff = s.ResidualOff
	}
	s.WeightOff = 5
	s.BiasOff = s.WeightOff + cb*s.KH*s.KW*b + 3
	return s, s.OutOff + out + 32, s.BiasOff + cb*b + 9
}

// TestDepthwise checks the depthwise kernel against refConvGD (groups = C
// = O) for MobileNet's shapes (3×3, stride 1 and 2), partial blocks,
// dilation, epilogues, in-place residuals and concat slices.
func TestDepthwise(t *testing.T) {
	for _, set := range targetSets(t) {
		b := set.b
		epi := func(s DepthwiseSpec, bias, relu, res bool) DepthwiseSpec {
			s.HasBias, s.Relu, s.HasResidual = bias, relu, res
			return s
		}
		sl := dws(1, 2*b, 9, 9, 3, 1, 1, 1)
		sl.OutC, sl.OutCOffset, sl.HasBias = 4*b, b, true
		cases := []dwCase{
			{name: "3x3 s1 p1", s: epi(dws(1, 2*b, 14, 14, 3, 1, 1, 1), true, true, false)},
			{name: "3x3 s2 p1", s: epi(dws(2, 2*b, 15, 16, 3, 2, 2-1, 1), true, false, true)},
			{name: "3x3 s1 p1 partial block", s: epi(dws(1, b+5, 7, 37, 3, 1, 1, 1), true, true, true)},
			{name: "5x5 p2 wide row", s: epi(dws(1, b, 5, 41, 5, 1, 2, 1), false, true, false)},
			{name: "3x3 d2 p2", s: epi(dws(1, b, 10, 11, 3, 1, 2, 2), true, false, false)},
			{name: "3x3 p0 tiny", s: epi(dws(1, 3, 3, 4, 3, 1, 0, 1), true, true, true)},
			{name: "3x3 p3 pad wider than kernel", s: epi(dws(1, b, 4, 5, 3, 2, 3, 1), true, false, false)},
			{name: "in place residual", s: epi(dws(1, b, 6, 7, 3, 1, 1, 1), true, true, true), inPlace: true},
			{name: "into slice", s: sl},
		}
		t.Run(fmt.Sprintf("B%d", b), func(t *testing.T) { testDepthwise(t, set, cases) })
	}
}

func testDepthwise(t *testing.T, set targetSet, cases []dwCase) {
	b := set.b
	lib := buildLibFor(t, set.targets, func(m *Module) error {
		for i, c := range cases {
			s, _, _ := dwLayout(c, b)
			if _, _, err := m.Depthwise(fmt.Sprintf("dw%d", i), s); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(5))
	for i, c := range cases {
		s, arenaLen, wLen := dwLayout(c, b)
		cs := ConvSpec{N: s.N, C: s.C, H: s.H, W: s.W, O: s.C, KH: s.KH, KW: s.KW, SH: s.SH, SW: s.SW, PH: s.PH, PW: s.PW,
			DH: s.DH, DW: s.DW, Groups: s.C, OH: s.OH, OW: s.OW, HasBias: s.HasBias, HasResidual: s.HasResidual, Relu: s.Relu}
		x := randn(r, s.N*s.C*s.H*s.W)
		w := randn(r, s.C*s.KH*s.KW)
		bs := randn(r, s.C)
		res := randn(r, s.N*s.C*s.OH*s.OW)
		ref := refConvGD(cs, x, w, bs, res)
		arena := make([]float32, arenaLen)
		fill(arena, sentinel)
		ktest.PackBlocked(arena[s.InOff:], x, s.N, s.C, s.H, s.W, b)
		if s.HasResidual {
			ktest.PackBlocked(arena[s.ResidualOff:], res, s.N, s.C, s.OH, s.OW, b)
		}
		weights := make([]float32, wLen)
		fill(weights, sentinel)
		copy(weights[s.WeightOff:], PackDepthwise(w, s.C, s.KH, s.KW, b))
		cb := ceilDiv(s.C, b)
		copy(weights[s.BiasOff:], dwPad(bs, cb*b))
		outCB := ceilDiv(s.OutC, b)
		written := func(i int) bool {
			j := i - s.OutOff
			if j < 0 || j >= s.N*outCB*b*s.OH*s.OW {
				return false
			}
			blk := j / (b * s.OH * s.OW) % outCB
			return blk >= s.OutCOffset/b && blk < s.OutCOffset/b+cb
		}
		tiles := s.N * cb * s.OH
		for _, tgt := range set.run {
			t.Run(fmt.Sprintf("%s/%s", c.name, tgt.Name), func(t *testing.T) {
				k := kernel(t, lib, fmt.Sprintf("dw%d", i), tgt)
				got := runChecked(t, k, arena, weights, tiles)
				checkUnchanged(t, "depthwise", got, arena, written)
				checkBlockedOut(t, "depthwise", got[s.OutOff:], ref, s.N, s.C, s.OH, s.OW, s.OutC, s.OutCOffset, b)
			})
		}
	}
}

func dwPad(v []float32, n int) []float32 {
	out := make([]float32, n)
	copy(out, v)
	return out
}

// BenchmarkDepthwise reports the single-threaded GFLOP/s of the depthwise
// kernel on MobileNet-v2 layers next to the measured FMA peak.
func BenchmarkDepthwise(b *testing.B) {
	layers := []struct {
		name string
		s    DepthwiseSpec
	}{
		{"dw3x3_144_56x56", dws(1, 144, 56, 56, 3, 1, 1, 1)},
		{"dw3x3s2_144_56x56", dws(1, 144, 56, 56, 3, 2, 1, 1)},
		{"dw3x3_384_14x14", dws(1, 384, 14, 14, 3, 1, 1, 1)},
	}
	lib := buildLib(b, func(m *Module) error {
		if _, _, err := m.Peak("peak", benchPeak); err != nil {
			return err
		}
		for i, l := range layers {
			s := l.s
			s.HasBias, s.Relu = true, true
			s.InOff, s.OutOff, s.WeightOff, s.BiasOff = 0, 2<<20, 0, 1<<16
			if _, _, err := m.Depthwise(fmt.Sprintf("dwb%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(1))
	arena, weights := randomAligned(r, 4<<20, 0.01), randomAligned(r, 1<<17, 0.01)
	for _, tgt := range x86Targets(b) {
		peak := measure(kernel(b, lib, "peak", tgt), arena, weights, 1, benchPeak.TileFlops(tgt))
		for i, l := range layers {
			s := l.s
			k := kernel(b, lib, fmt.Sprintf("dwb%d", i), tgt)
			tiles := s.N * ceilDiv(s.C, 16) * s.OH
			flops := 2 * int64(s.C*s.OH*s.OW*s.KH*s.KW)
			b.Run(fmt.Sprintf("%s/%s", l.name, tgt.Name), func(b *testing.B) {
				gf := measure(k, arena, weights, tiles, flops)
				for j := 0; j < b.N; j++ {
					k.Run(arena, weights, 0, tiles)
				}
				b.ReportMetric(gf, "GFLOP/s")
				b.ReportMetric(100*gf/peak, "%peak")
			})
		}
	}
}
