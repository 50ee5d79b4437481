package codegen

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/kiln-dev/kiln/passes"
)

// TestTrainConvPacked checks the sameConv kernels that read weights packed
// by PackWeightSpec (TrainConvSpec.Packed, TrainConvGradInputSpec.Packed)
// against the same kernels reading the weights in place: the packed
// layout changes only where the micro-kernel loads A from, not the order of
// its arithmetic, so the outputs must be equal bit for bit, on every
// training target (each packs for its own row blocks). The cases cover
// several row blocks with a ragged last one (dx channels 37, 97), a
// reduction over more than one block (K = 45·9), 1x7 and 7x1 taps, the
// phased stride-2 forward, the im2col input gradient of unpadded and
// stride-2 convolutions, 1x1 sibling groups (forward outputs and
// input-gradient segments) and an input gradient added to an addend.
// Outside the outputs and the packed weights the arena must be unchanged.
func TestTrainConvPacked(t *testing.T) {
	cases := []struct {
		g  ConvGeom
		os []int // siblings' output channels (1x1 only)
	}{
		{g: ConvGeom{N: 2, C: 19, H: 13, W: 11, O: 37, KH: 1, KW: 1, SH: 1, SW: 1}},
		{g: ConvGeom{N: 2, C: 37, H: 6, W: 7, O: 19, KH: 1, KW: 1, SH: 1, SW: 1}},
		{g: ConvGeom{N: 1, C: 45, H: 4, W: 5, O: 41, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1}},
		{g: ConvGeom{N: 2, C: 2, H: 5, W: 5, O: 97, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1}},
		{g: ConvGeom{N: 2, C: 7, H: 12, W: 12, O: 29, KH: 1, KW: 7, SH: 1, SW: 1, PW: 3}},
		{g: ConvGeom{N: 2, C: 7, H: 12, W: 12, O: 29, KH: 7, KW: 1, SH: 1, SW: 1, PH: 3}},
		{g: ConvGeom{N: 2, C: 2, H: 40, W: 70, O: 3, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1}},
		// The im2col input gradient (genGemm, PackTransposed): unpadded
		// stride 2 over two row blocks of K = 40·9, an unpadded 3x3
		// stride 1, a 1x1 stride 2.
		{g: ConvGeom{N: 1, C: 40, H: 9, W: 9, O: 7, KH: 3, KW: 3, SH: 2, SW: 2}},
		{g: ConvGeom{N: 2, C: 5, H: 9, W: 8, O: 19, KH: 3, KW: 3, SH: 1, SW: 1}},
		{g: ConvGeom{N: 2, C: 33, H: 9, W: 7, O: 17, KH: 1, KW: 1, SH: 2, SW: 2}},
		// A padded one that is not "same" (5x5, pad 1): windows partly
		// outside the image, masked off in the scatter.
		{g: ConvGeom{N: 2, C: 3, H: 8, W: 9, O: 5, KH: 5, KW: 5, SH: 1, SW: 1, PH: 1, PW: 1}},
		{g: ConvGeom{N: 2, C: 8, H: 14, W: 14, O: 16, KH: 1, KW: 1, SH: 1, SW: 1}, os: []int{16, 16, 16}},
		{g: ConvGeom{N: 3, C: 11, H: 7, W: 7, O: 5, KH: 1, KW: 1, SH: 1, SW: 1}, os: []int{13, 3}},
	}
	for i := range cases {
		s := &cases[i].g
		s.OH, s.OW = (s.H+2*s.PH-s.KH)/s.SH+1, (s.W+2*s.PW-s.KW)/s.SW+1
	}
	for _, ts := range trainTargets(t) {
		for ci, c := range cases {
			s := c.g
			t.Run(fmt.Sprintf("%s/%d_%dx%d_s%d", ts.Name, ci, s.KH, s.KW, s.SH), func(t *testing.T) {
				r := rand.New(rand.NewSource(int64(ci)))
				const gap = 16
				at := 0
				take := func(n int) int {
					o := at
					at += n + gap
					return o
				}
				nx, T := s.N*s.C*s.H*s.W, s.KH*s.KW
				X, ACC := take(nx), take(nx)
				type part struct {
					o                    int
					W, WP, WF, Y, YP, DY int
					w, dy                []float32
				}
				parts := []part{{o: s.O}}
				for _, o := range c.os {
					parts = append(parts, part{o: o})
				}
				for j := range parts {
					p := &parts[j]
					nw, ny := p.o*s.C*T, s.N*p.o*s.OH*s.OW
					p.W, p.WP, p.WF = take(nw), take(nw), take(nw)
					p.Y, p.YP, p.DY = take(ny), take(ny), take(ny)
					p.w, p.dy = randn(r, nw), randn(r, ny)
				}
				DX, DXP, DXA, DXAP := take(nx), take(nx), take(nx), take(nx)
				arena := make([]float32, at)
				fill(arena, sentinel)
				copy(arena[X:], randn(r, nx))
				copy(arena[ACC:], randn(r, nx))
				for _, p := range parts {
					copy(arena[p.W:], p.w)
					copy(arena[p.DY:], p.dy)
				}
				fwd := TrainConvSpec{ConvGeom: s, X: X, Wt: parts[0].W, Bias: -1, Out: parts[0].Y}
				fwdP := fwd
				fwdP.Wt, fwdP.Out, fwdP.Packed = parts[0].WP, parts[0].YP, true
				dgrad := TrainConvGradInputSpec{ConvGeom: s, DY: parts[0].DY, Wt: parts[0].W, DX: DX, Acc: -1}
				dgradP := dgrad
				dgradP.Wt, dgradP.DX, dgradP.Packed = parts[0].WF, DXP, true
				for _, p := range parts[1:] {
					fwd.Siblings = append(fwd.Siblings, ConvSibling{O: p.o, Wt: p.W, Data: p.Y})
					fwdP.Siblings = append(fwdP.Siblings, ConvSibling{O: p.o, Wt: p.WP, Data: p.YP})
					dgrad.Siblings = append(dgrad.Siblings, ConvSibling{O: p.o, Wt: p.W, Data: p.DY})
					dgradP.Siblings = append(dgradP.Siblings, ConvSibling{O: p.o, Wt: p.WF, Data: p.DY})
				}
				if len(c.os) > 0 && !s.GradInputSiblingsOK(append([]int{s.O}, c.os...)) {
					t.Fatalf("case %d: its sibling input gradients do not run as one kernel", ci)
				}
				dgradA, dgradAP := dgrad, dgradP
				dgradA.DX, dgradA.Acc = DXA, ACC
				dgradAP.DX, dgradAP.Acc = DXAP, ACC
				withDgrad, withFwd := dgrad.PackOK(), fwd.PackOK()
				type named struct {
					n string
					s TrainKernel
				}
				var ks []named
				for j, p := range parts {
					if withFwd {
						ks = append(ks, named{fmt.Sprintf("pack%d", j), PackWeightSpec{O: p.o, C: s.C, KH: s.KH, KW: s.KW, W: p.W, Out: p.WP}})
					}
					if withDgrad {
						ks = append(ks, named{fmt.Sprintf("flip%d", j), PackWeightSpec{O: p.o, C: s.C, KH: s.KH, KW: s.KW, W: p.W, Out: p.WF, Layout: dgrad.PackLayout()}})
					}
				}
				if withFwd {
					ks = append(ks, named{"fwd", fwd}, named{"fwdp", fwdP})
				}
				if withDgrad {
					ks = append(ks, named{"dgrad", dgrad}, named{"dgradp", dgradP}, named{"dgrada", dgradA}, named{"dgradap", dgradAP})
				}
				lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
					for _, k := range ks {
						if _, _, err := m.Train(k.n, k.s); err != nil {
							return err
						}
					}
					return nil
				})
				a := arena
				for _, k := range ks {
					a = runChecked(t, kernel(t, lib, k.n, ts), a, nil, k.s.tileCount())
				}
				same := func(what string, got, want int, n int) {
					t.Helper()
					for i := 0; i < n; i++ {
						if math.Float32bits(a[got+i]) != math.Float32bits(a[want+i]) {
							t.Fatalf("%s: [%d] = %v packed, %v in place", what, i, a[got+i], a[want+i])
						}
					}
				}
				x := arena[X : X+nx]
				ry, rdx, _ := convRef(s, x, parts[0].w, parts[0].dy)
				if withFwd {
					for j, p := range parts {
						same(fmt.Sprintf("conv2d output %d", j), p.YP, p.Y, s.N*p.o*s.OH*s.OW)
					}
					compare(t, "conv2d, packed", a[parts[0].YP:parts[0].YP+len(ry)], ry)
				} else if !withDgrad {
					t.Fatalf("case %d: no kernel reads packed weights", ci)
				}
				if withDgrad {
					same("conv2d_grad_input", DXP, DX, nx)
					same("conv2d_grad_input + addend", DXAP, DXA, nx)
					if len(c.os) == 0 {
						compare(t, "conv2d_grad_input, packed", a[DXP:DXP+nx], rdx)
					}
				}
				checkUnchanged(t, "gaps", a, arena, func(i int) bool {
					in := func(o, n int) bool { return i >= o && i < o+n }
					for _, p := range parts {
						nw, ny := p.o*s.C*T, s.N*p.o*s.OH*s.OW
						if withFwd && (in(p.WP, nw) || in(p.Y, ny) || in(p.YP, ny)) || withDgrad && in(p.WF, nw) {
							return true
						}
					}
					return withDgrad && (in(DX, nx) || in(DXP, nx) || in(DXA, nx) || in(DXAP, nx))
				})
			})
		}
	}
}

// TestPackWeightLayout checks PackWeightSpec's layout itself on one target
// against the formula the kernels read it by (packedA): A[o0+r][k] at
// o0·K + k·h + r for the row block of h rows from o0, blocks of
// balancedMR rows, for the forward weight and its flipped transpose.
func TestPackWeightLayout(t *testing.T) {
	ts := trainTargets(t)[0]
	const O, C, KH, KW = 23, 5, 1, 3
	T := KH * KW
	n := O * C * T
	r := rand.New(rand.NewSource(3))
	w := randn(r, n)
	arena := make([]float32, 4*n)
	copy(arena, w)
	packs := []PackWeightSpec{
		{O: O, C: C, KH: KH, KW: KW, W: 0, Out: n},
		{O: O, C: C, KH: KH, KW: KW, W: 0, Out: 2 * n, Layout: PackFlipped},
		{O: O, C: C, KH: KH, KW: KW, W: 0, Out: 3 * n, Layout: PackTransposed},
	}
	lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
		for j, p := range packs {
			if _, _, err := m.Train(fmt.Sprintf("pack%d", j), p); err != nil {
				return err
			}
		}
		return nil
	})
	a := arena
	for j, p := range packs {
		a = runChecked(t, kernel(t, lib, fmt.Sprintf("pack%d", j), ts), a, nil, p.tileCount())
	}
	for _, tc := range []struct {
		what string
		out  int
		M, K int
		at   func(m, k int) float32
	}{
		{"forward", n, O, C * T, func(o, k int) float32 { return w[o*C*T+k] }},
		{"flipped", 2 * n, C, O * T, func(c, k int) float32 { return w[(k/T*C+c)*T+T-1-k%T] }},
		{"transposed", 3 * n, C * T, O, func(m, o int) float32 { return w[o*C*T+m] }},
	} {
		mr := balancedMR(ts, tc.M)
		for m := 0; m < tc.M; m++ {
			o0 := m / mr * mr
			h := min(mr, tc.M-o0)
			for k := 0; k < tc.K; k++ {
				if got, want := a[tc.out+o0*tc.K+k*h+m-o0], tc.at(m, k); got != want {
					t.Fatalf("%s: A[%d][%d] = %v, want %v", tc.what, m, k, got, want)
				}
			}
		}
	}
	if err := (PackWeightSpec{O: O, C: C, KH: KH, KW: KW, W: 0, Out: n - 1}).Validate(); err == nil {
		t.Error("a pack over its own weight validates")
	}
}

// TestGradInputChannels checks that the passes' bound on an input-gradient
// group's channels (passes.GradInputChannels) is this package's reduction
// block, which the group's kernel needs its channels to fit
// (GradInputSiblingsOK).
func TestGradInputChannels(t *testing.T) {
	if passes.GradInputChannels != gemmKC {
		t.Fatalf("passes.GradInputChannels = %d, gemmKC = %d", passes.GradInputChannels, gemmKC)
	}
}
