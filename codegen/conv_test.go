package codegen

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/kiln-dev/kiln/codegen/internal/ktest"
	kir "github.com/kiln-dev/kiln/ir"
)

// convCase is a convolution test: the spec's sizes and flags; offsets are
// assigned by layout.
type convCase struct {
	name    string
	s       ConvSpec
	inPlace bool // residual is the output buffer
	g, rw   int  // force the AVX-512 register blocking (0: cost model)
}

func cv(n, c, h, w, o, kh, kw, sh, sw, ph, pw int) ConvSpec {
	return ConvSpec{N: n, C: c, H: h, W: w, O: o, KH: kh, KW: kw, SH: sh, SW: sw, PH: ph, PW: pw,
		OH: kir.ConvOut(h, kh, sh, ph), OW: kir.ConvOut(w, kw, sw, pw), OutC: o}
}

func with(s ConvSpec, f func(*ConvSpec)) ConvSpec { f(&s); return s }

var (
	bias     = func(s *ConvSpec) { s.HasBias = true }
	biasRelu = func(s *ConvSpec) { s.HasBias, s.Relu = true, true }
	allEpi   = func(s *ConvSpec) { s.HasBias, s.Relu, s.HasResidual = true, true, true }
	plain    = func(s *ConvSpec) { s.InPlain = true }
	slice    = func(c, off int) func(*ConvSpec) {
		return func(s *ConvSpec) { s.OutC, s.OutCOffset, s.HasBias, s.Relu = c, off, true, true }
	}
)

var convCases = []convCase{
	{name: "1x1 flat", s: with(cv(1, 64, 7, 7, 32, 1, 1, 1, 1, 0, 0), biasRelu)},
	{name: "1x1 flat partial blocks", s: with(cv(1, 20, 5, 9, 24, 1, 1, 1, 1, 0, 0), allEpi)},
	{name: "1x1 flat chunked", s: with(cv(1, 32, 13, 11, 48, 1, 1, 1, 1, 0, 0), biasRelu)},
	{name: "1x1 flat chunked batch", s: with(cv(2, 16, 17, 17, 32, 1, 1, 1, 1, 0, 0), allEpi)},
	{name: "1x1 flat 8x8 even chunks", s: with(cv(1, 32, 8, 8, 32, 1, 1, 1, 1, 0, 0), allEpi)},
	{name: "1x1 stride 2", s: with(cv(1, 32, 9, 9, 32, 1, 1, 2, 2, 0, 0), bias)},
	{name: "1x1 in place residual", s: with(cv(1, 32, 6, 5, 32, 1, 1, 1, 1, 0, 0), allEpi), inPlace: true},
	{name: "3x3 p1 into slice", s: with(cv(1, 32, 10, 10, 48, 3, 3, 1, 1, 1, 1), slice(96, 32))},
	{name: "3x3 s2 plain C3 stem", s: with(cv(1, 3, 17, 17, 32, 3, 3, 2, 2, 0, 0), func(s *ConvSpec) { plain(s); biasRelu(s) })},
	{name: "3x3 p0 plain C3", s: with(cv(1, 3, 12, 12, 32, 3, 3, 1, 1, 0, 0), plain)},
	{name: "3x3 p1 plain C5 O20", s: with(cv(2, 5, 7, 6, 20, 3, 3, 1, 1, 1, 1), func(s *ConvSpec) { plain(s); allEpi(s) })},
	{name: "3x3 s2 p1 odd", s: with(cv(1, 20, 9, 11, 24, 3, 3, 2, 2, 1, 1), allEpi)},
	{name: "3x3 s2 p0 Inception reduction", s: with(cv(1, 32, 15, 15, 48, 3, 3, 2, 2, 0, 0), biasRelu)},
	{name: "3x3 p2 wide pad", s: with(cv(1, 16, 5, 5, 16, 3, 3, 1, 1, 2, 2), allEpi)},
	{name: "3x3 p1 tiny width", s: with(cv(1, 16, 3, 2, 16, 3, 3, 1, 1, 1, 1), biasRelu)},
	{name: "3x3 asymmetric pad", s: with(cv(1, 16, 8, 9, 32, 3, 3, 1, 1, 1, 0), biasRelu)},
	{name: "5x5 p2", s: with(cv(1, 16, 7, 6, 16, 5, 5, 1, 1, 2, 2), allEpi)},
	{name: "1x7 p0,3", s: with(cv(1, 16, 8, 17, 32, 1, 7, 1, 1, 0, 3), biasRelu)},
	{name: "7x1 p3,0", s: with(cv(1, 32, 17, 8, 16, 7, 1, 1, 1, 3, 0), biasRelu)},
	{name: "1x3 p0,1", s: with(cv(1, 48, 8, 8, 32, 1, 3, 1, 1, 0, 1), allEpi)},
	{name: "3x1 p1,0", s: with(cv(1, 48, 8, 8, 32, 3, 1, 1, 1, 1, 0), allEpi)},
	{name: "3x3 p1 wide row", s: with(cv(1, 16, 4, 40, 32, 3, 3, 1, 1, 1, 1), biasRelu)},
	{name: "3x3 p1 batch residual", s: with(cv(2, 16, 6, 6, 16, 3, 3, 1, 1, 1, 1), allEpi)},
	{name: "3x3 p1 O96", s: with(cv(1, 32, 6, 30, 96, 3, 3, 1, 1, 1, 1), biasRelu)},
	{name: "3x3 s2 p1 stride wide", s: with(cv(1, 16, 5, 37, 16, 3, 3, 2, 2, 1, 1), biasRelu)},
	{name: "forced g2 rw3", s: with(cv(1, 16, 6, 13, 64, 3, 3, 1, 1, 1, 1), allEpi), g: 2, rw: 3},
	{name: "forced g4 rw5", s: with(cv(1, 32, 5, 11, 64, 1, 3, 1, 1, 0, 1), biasRelu), g: 4, rw: 5},
	{name: "forced g1 rw2 flat", s: with(cv(1, 20, 9, 9, 40, 1, 1, 1, 1, 0, 0), allEpi), g: 1, rw: 2},
	{name: "forced g3 rw1 stride", s: with(cv(1, 16, 9, 8, 48, 3, 3, 2, 1, 1, 1), allEpi), g: 3, rw: 1},
}

// convLayout assigns arena and weight offsets: input, residual and output
// regions with gaps between them (so stray writes hit sentinels), weights
// and bias at unaligned offsets.
func convLayout(c convCase, b int) (ConvSpec, int, int) {
	s := c.s
	cb, ob := ceilDiv(s.C, b), ceilDiv(s.O, b)
	in := s.N * cb * b * s.H * s.W
	if s.InPlain {
		in = s.N * s.C * s.H * s.W
	}
	res := s.N * ob * b * s.OH * s.OW
	out := s.N * ceilDiv(s.OutC, b) * b * s.OH * s.OW
	s.InOff = 32
	s.ResidualOff = s.InOff + in + 48
	s.OutOff = s.ResidualOff + res + 64
	if c.inPlace {
		s.OutOff = s.ResidualOff
	}
	arena := s.OutOff + out + 32
	s.WeightOff = 3
	s.BiasOff = s.WeightOff + ob*cb*b*b*s.KH*s.KW + 5
	return s, arena, s.BiasOff + ob*b + 7
}

// refConv is the float64 reference on plain tensors: x[N][C][H][W],
// w[O][C][KH][KW], bias[O], res[N][O][OH][OW] → out[N][O][OH][OW].
func refConv(s ConvSpec, x, w, bias, res []float32) []float64 {
	out := make([]float64, s.N*s.O*s.OH*s.OW)
	for n := 0; n < s.N; n++ {
		for o := 0; o < s.O; o++ {
			for oh := 0; oh < s.OH; oh++ {
				for ow := 0; ow < s.OW; ow++ {
					sum := 0.0
					for c := 0; c < s.C; c++ {
						for kh := 0; kh < s.KH; kh++ {
							ih := oh*s.SH - s.PH + kh
							if ih < 0 || ih >= s.H {
								continue
							}
							for kw := 0; kw < s.KW; kw++ {
								iw := ow*s.SW - s.PW + kw
								if iw < 0 || iw >= s.W {
									continue
								}
								sum += float64(x[((n*s.C+c)*s.H+ih)*s.W+iw]) * float64(w[((o*s.C+c)*s.KH+kh)*s.KW+kw])
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

func convKernelName(i int) string { return fmt.Sprintf("conv%d", i) }

func TestConv(t *testing.T) {
	for _, set := range targetSets(t) {
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testConv(t, set, convCases) })
	}
}

// TestConvRandom checks random small convolutions: odd sizes, strides up to
// 3, any padding (also larger than the kernel), random epilogues, slices
// and register blockings.
func TestConvRandom(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for _, set := range targetSets(t) {
		var cases []convCase
		for len(cases) < 24 {
			kh, kw := 1+r.Intn(5), 1+r.Intn(5)
			s := cv(1+r.Intn(2), 1+r.Intn(40), 1+r.Intn(12), 1+r.Intn(12), 1+r.Intn(40), kh, kw,
				1+r.Intn(3), 1+r.Intn(3), r.Intn(kh+1), r.Intn(kw+1))
			if s.OH <= 0 || s.OW <= 0 {
				continue
			}
			s.HasBias, s.Relu, s.HasResidual, s.InPlain = r.Intn(2) == 0, r.Intn(2) == 0, r.Intn(2) == 0, r.Intn(4) == 0
			ob := ceilDiv(s.O, set.b)
			s.OutCOffset = r.Intn(3) * set.b
			s.OutC = s.OutCOffset + ob*set.b + r.Intn(2)*set.b
			c := convCase{name: fmt.Sprintf("random%d", len(cases)), s: s}
			if r.Intn(3) == 0 {
				c.g = 1 + r.Intn(ob)
				c.rw = 1 + r.Intn(14)
			}
			cases = append(cases, c)
		}
		t.Run(fmt.Sprintf("B%d", set.b), func(t *testing.T) { testConv(t, set, cases) })
	}
}

func testConv(t *testing.T, set targetSet, convCases []convCase) {
	b, primary := set.b, set.targets[0]
	// force sets convTuning for case c (the primary target gets c.g, c.rw).
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
	gen := func(lo, hi int) func(m *Module) error {
		return func(m *Module) error {
			for i := lo; i < hi; i++ {
				c := convCases[i]
				s, _, _ := convLayout(c, b)
				force(c)
				if _, _, err := m.Conv(convKernelName(i), s); err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
			}
			return nil
		}
	}
	half := len(convCases) / 2
	lib := buildLibFor(t, set.targets, gen(0, half), gen(half, len(convCases)))
	r := rand.New(rand.NewSource(1))
	for i, c := range convCases {
		s, arenaLen, wLen := convLayout(c, b)
		force(c)
		tiles := planConv(s, b, primary).tiles
		convTuning = nil
		x := randn(r, s.N*s.C*s.H*s.W)
		w := randn(r, s.O*s.C*s.KH*s.KW)
		bs := randn(r, s.O)
		res := randn(r, s.N*s.O*s.OH*s.OW)
		ref := refConv(s, x, w, bs, res)
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
		ktest.PackWeights(weights[s.WeightOff:], w, s.O, s.C, s.KH, s.KW, b)
		ob := ceilDiv(s.O, b)
		copy(weights[s.BiasOff:s.BiasOff+ob*b], make([]float32, ob*b))
		copy(weights[s.BiasOff:], bs)
		outCB := ceilDiv(s.OutC, b)
		// Written: channels [OutCOffset, OutCOffset+ob*b) of the output.
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

// TestConvPlan checks the cost model's choices for typical Inception layers
// and that every target divides the primary target's tile group.
func TestConvPlan(t *testing.T) {
	for _, s := range []ConvSpec{
		cv(1, 64, 73, 73, 96, 3, 3, 1, 1, 0, 0),
		cv(1, 1024, 17, 17, 384, 1, 1, 1, 1, 0, 0),
		cv(1, 3, 299, 299, 32, 3, 3, 2, 2, 0, 0),
		cv(1, 1536, 8, 8, 256, 1, 3, 1, 1, 0, 1),
		cv(1, 192, 35, 35, 224, 1, 7, 1, 1, 0, 3),
		cv(1, 48, 35, 35, 64, 3, 3, 1, 1, 1, 1),
	} {
		p := planConv(s, 16, AVX512)
		for _, tg := range []Target{AVX512, AVX2} {
			tp := tg.planFor(s, p.gt, p.chunk)
			regs := tp.rw*tp.ocv + tp.ocv
			if !tg.embeddedBroadcast() {
				regs++
			}
			if tp.g == 0 || p.gt%tp.g != 0 || regs > tg.Registers {
				t.Errorf("%+v on %s: bad plan %+v (tile group %d)", s, tg.Name, tp, p.gt)
			}
			t.Logf("%dx%d %d->%d at %dx%d on %s: tile group %d blocks, tiles %d, G=%d OCV=%d RW=%d (%d accumulators)",
				s.KH, s.KW, s.C, s.O, s.OH, s.OW, tg.Name, p.gt, p.tiles, tp.g, tp.ocv, tp.rw, tp.rw*tp.ocv)
		}
	}
}
