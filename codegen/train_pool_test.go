package codegen

import (
	"fmt"
	"math/rand"
	"testing"
)

// poolRef computes a pooling forward and its gradient for dy in float64 by
// the definition, as ir/interp does: each window's in-bounds pixels in
// row-major order; max takes the first in-bounds pixel, then a strictly
// greater value or the first NaN (nothing replaces a NaN), and its
// gradient goes to that pixel; avg divides by KH·KW or the in-bounds count.
func poolRef(s PoolGeom, x, dy []float32) (y, dx []float64) {
	y = make([]float64, s.Planes*s.OH*s.OW)
	dx = make([]float64, s.Planes*s.H*s.W)
	for p := 0; p < s.Planes; p++ {
		for oh := 0; oh < s.OH; oh++ {
			for ow := 0; ow < s.OW; ow++ {
				y0, x0 := max(oh*s.SH-s.PH, 0), max(ow*s.SW-s.PW, 0)
				y1, x1 := min(oh*s.SH-s.PH+s.KH, s.H), min(ow*s.SW-s.PW+s.KW, s.W)
				o := (p*s.OH+oh)*s.OW + ow
				if s.Max {
					at := p*s.H*s.W + y0*s.W + x0
					m := x[at]
					for yy := y0; yy < y1; yy++ {
						for xx := x0; xx < x1; xx++ {
							i := p*s.H*s.W + yy*s.W + xx
							if v := x[i]; (v > m || v != v) && m == m {
								m, at = v, i
							}
						}
					}
					y[o] = float64(m)
					dx[at] += float64(dy[o])
					continue
				}
				cnt := s.KH * s.KW
				if !s.IncludePad {
					cnt = (y1 - y0) * (x1 - x0)
				}
				var sum float32
				for yy := y0; yy < y1; yy++ {
					for xx := x0; xx < x1; xx++ {
						sum += x[p*s.H*s.W+yy*s.W+xx]
						dx[p*s.H*s.W+yy*s.W+xx] += float64(dy[o]) / float64(cnt)
					}
				}
				y[o] = float64(sum / float32(cnt))
			}
		}
	}
	return y, dx
}

// TestTrainPoolKernels checks maxpool, avgpool (both divisors) and their
// gradients against poolRef on AVX-512 and AVX2: the mini networks' 3x3
// stride-1 "same" and stride-2 windows, unpadded, asymmetric and 1-wide
// windows, a plane too large for the tap-major kernels' scratch (the
// per-window fallback), inputs with ties (small integers: the first maximum
// must win) and with NaN and ±Inf, and sentinels around every output.
func TestTrainPoolKernels(t *testing.T) {
	type geom struct {
		planes, h, w, kh, kw, sh, sw, ph, pw int
		specials                             bool
	}
	geoms := []geom{
		{planes: 3, h: 14, w: 14, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1},
		// Same-plane average pools in groups of planes (avgGroup): 8 per
		// tile with a ragged last tile, and 4 per tile for larger planes.
		{planes: 19, h: 14, w: 14, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1},
		{planes: 9, h: 60, w: 60, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1},
		{planes: 3, h: 14, w: 14, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1},
		{planes: 2, h: 7, w: 9, kh: 3, kw: 3, sh: 2, sw: 2},
		{planes: 2, h: 8, w: 5, kh: 2, kw: 3, sh: 1, sw: 2, ph: 1, pw: 0},
		{planes: 2, h: 6, w: 6, kh: 1, kw: 1, sh: 1, sw: 1},
		{planes: 2, h: 1, w: 9, kh: 1, kw: 3, sh: 1, sw: 1, ph: 0, pw: 1},
		{planes: 4, h: 9, w: 9, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1, specials: true},
		// Stride 2 over phase planes (maxTapsPhased): odd sizes (phase
		// planes with a row and a column that are not pixels), NaN and
		// ±Inf, rows of several vectors.
		{planes: 3, h: 13, w: 11, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1, specials: true},
		{planes: 2, h: 15, w: 40, kh: 3, kw: 3, sh: 2, sw: 2, ph: 1, pw: 1},
		// Unpadded column stride 2, not phased (maxTapsStride2): the
		// Inception stems' 3x3 pools at odd sizes with rows of several
		// vectors and ragged tails, NaN and ±Inf, a 2x2 window and a row
		// stride of 1.
		{planes: 3, h: 19, w: 37, kh: 3, kw: 3, sh: 2, sw: 2, specials: true},
		{planes: 2, h: 35, w: 35, kh: 3, kw: 3, sh: 2, sw: 2},
		{planes: 2, h: 9, w: 21, kh: 2, kw: 2, sh: 2, sw: 2},
		{planes: 2, h: 6, w: 23, kh: 2, kw: 3, sh: 1, sw: 2},
		{planes: 1, h: 129, w: 129, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1},
	}
	type pcase struct {
		name string
		gi   int
		s    PoolGeom
	}
	var cases []pcase
	for gi, gm := range geoms {
		for _, mode := range []string{"max", "avg", "avg_incl"} {
			s := PoolGeom{Planes: gm.planes, H: gm.h, W: gm.w, KH: gm.kh, KW: gm.kw, SH: gm.sh, SW: gm.sw, PH: gm.ph, PW: gm.pw,
				Max: mode == "max", IncludePad: mode == "avg_incl"}
			s.OH, s.OW = (s.H+2*s.PH-s.KH)/s.SH+1, (s.W+2*s.PW-s.KW)/s.SW+1
			name := fmt.Sprintf("%s/%dx%d_%dx%d_s%dx%d_p%dx%d", mode, s.H, s.W, s.KH, s.KW, s.SH, s.SW, s.PH, s.PW)
			if gm.specials {
				name += "_specials"
			}
			if gi == len(geoms)-1 && s.fast() {
				t.Fatalf("%s: meant to exceed the tap-major scratch", name)
			}
			cases = append(cases, pcase{name, gi, s})
		}
	}
	// Arena of case c: x | dy | gap | y | gap | dx | gap | addend | gap |
	// addend + dx | gap (the last two: max pooling's gradient added to
	// another value's, TrainPoolGradSpec.Acc)
	const gap = 16
	layout := func(s PoolGeom) (X, DY, Y, DX, ACC, DXA, size int) {
		nx, ny := s.Planes*s.H*s.W, s.Planes*s.OH*s.OW
		X, DY = 0, nx
		Y = DY + ny + gap
		DX = Y + ny + gap
		ACC = DX + nx + gap
		DXA = ACC + nx + gap
		return X, DY, Y, DX, ACC, DXA, DXA + nx + gap
	}
	specs := func(s PoolGeom) (TrainPoolSpec, TrainPoolGradSpec) {
		X, DY, Y, DX, _, _, _ := layout(s)
		xg := -1
		if s.Max {
			xg = X
		}
		return TrainPoolSpec{PoolGeom: s, X: X, Out: Y}, TrainPoolGradSpec{PoolGeom: s, DY: DY, X: xg, DX: DX, Acc: -1}
	}
	targets := trainTargets(t)
	for _, ts := range targets {
		// One library per target holds every case's two kernels.
		lib := buildLibFor(t, []Target{ts}, func(m *Module) error {
			for ci, c := range cases {
				fwd, grad := specs(c.s)
				if _, _, err := m.Train(fmt.Sprint("fwd", ci), fwd); err != nil {
					return err
				}
				if _, _, err := m.Train(fmt.Sprint("grad", ci), grad); err != nil {
					return err
				}
				if c.s.Max {
					_, _, _, _, ACC, DXA, _ := layout(c.s)
					grad.DX, grad.Acc = DXA, ACC
					if _, _, err := m.Train(fmt.Sprint("gacc", ci), grad); err != nil {
						return err
					}
				}
			}
			return nil
		})
		for ci, c := range cases {
			s, gm := c.s, geoms[c.gi]
			t.Run(ts.Name+"/"+c.name, func(t *testing.T) {
				r := rand.New(rand.NewSource(int64(c.gi)))
				nx, ny := s.Planes*s.H*s.W, s.Planes*s.OH*s.OW
				x := make([]float32, nx)
				for i := range x {
					x[i] = float32(r.Intn(5)) - 2 // ties
				}
				if gm.specials {
					x = withSpecials(r, x)
				}
				dy := randn(r, ny)
				X, DY, Y, DX, ACC, DXA, size := layout(s)
				arena := make([]float32, size)
				fill(arena, sentinel)
				copy(arena[X:], x)
				copy(arena[DY:], dy)
				addend := randn(r, nx)
				copy(arena[ACC:], addend)
				fwd, grad := specs(s)
				a := runChecked(t, kernel(t, lib, fmt.Sprint("fwd", ci), ts), arena, nil, fwd.tileCount())
				a = runChecked(t, kernel(t, lib, fmt.Sprint("grad", ci), ts), a, nil, grad.tileCount())
				ry, rdx := poolRef(s, x, dy)
				compare(t, fwd.Kind(), a[Y:Y+ny], ry)
				if s.Max && !gm.specials {
					for i := range ry {
						if float64(a[Y+i]) != ry[i] {
							t.Fatalf("maxpool: element %d: %v, want %v exactly", i, a[Y+i], ry[i])
						}
					}
				}
				compare(t, grad.Kind(), a[DX:DX+nx], rdx)
				if s.Max {
					a = runChecked(t, kernel(t, lib, fmt.Sprint("gacc", ci), ts), a, nil, grad.tileCount())
					want := make([]float64, nx)
					for i := range want {
						want[i] = rdx[i] + float64(addend[i])
					}
					compare(t, grad.Kind()+" + addend", a[DXA:DXA+nx], want)
				}
				checkUnchanged(t, "gaps", a, arena, func(i int) bool {
					return (i >= Y && i < Y+ny) || (i >= DX && i < DX+nx) || (s.Max && i >= DXA && i < DXA+nx)
				})
			})
		}
	}
}
