package codegen

import (
	"math"

	kir "github.com/kiln-dev/kiln/ir"

	"github.com/llir/llvm/ir/constant"
	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// Pool adds a max or average pooling kernel (see PoolSpec). A tile is one
// output row of one channel block of one image; each output pixel reduces
// its in-bounds window (bounds computed per pixel), B channels at a time in
// vectors.
func (m *Module) Pool(name string, s PoolSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	cb := ceilDiv(s.C, b)
	kind := "avgpool"
	if s.Max {
		kind = "maxpool"
	}
	k := Kernel{Name: name, Kind: kind, Tiles: s.N * cb * s.OH, Flops: int64(s.N*s.C*s.OH*s.OW) * int64(s.KH*s.KW)}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		vpb := b / V
		// Input (C channels) and output (OutC channels) strides, NCHW{b}c.
		ist := kir.NCHWc(b).ActivationStrides([]int{s.N, s.C, s.H, s.W}, b)
		ost := kir.NCHWc(b).ActivationStrides([]int{s.N, s.OutC, s.OH, s.OW}, b)
		g.tiles(func(t value.Value) {
			oh := g.urem(t, s.OH)
			t = g.udiv(t, s.OH)
			blk := g.urem(t, cb)
			n := g.udiv(t, cb)
			ih0 := g.sub(g.mul(oh, ci(s.SH)), ci(s.PH))
			khLo := g.smax(g.sub(ci(0), ih0), ci(0))
			khHi := g.smin(g.sub(ci(s.H), ih0), ci(s.KH))
			// Input offset of (n, blk, ih = 0, iw = 0).
			inBase := g.gep(g.arena, g.add(g.add(g.mul(n, ci(ist.N)), g.mul(blk, ci(ist.Block))), ci(s.InOff)))
			ob := g.add(blk, ci(s.OutCOffset/b))
			outRow := g.gep(g.arena, g.add(g.add(g.add(g.mul(n, ci(ost.N)), g.mul(ob, ci(ost.Block))), g.mul(oh, ci(ost.Row))), ci(s.OutOff)))
			g.loopN(s.OW, nil, func(ow value.Value, _ []value.Value) []value.Value {
				iw0 := g.sub(g.mul(ow, ci(s.SW)), ci(s.PW))
				kwLo := g.smax(g.sub(ci(0), iw0), ci(0))
				kwHi := g.smin(g.sub(ci(s.W), iw0), ci(s.KW))
				init := g.vzero()
				if s.Max {
					init = g.vconst(math.Inf(-1))
				}
				// Max pooling carries, after the vpb maxima, vpb NaN masks:
				// acc = fmaxKeep(acc, x) keeps a NaN accumulator but drops a
				// NaN x, so the lanes that saw a NaN are or-ed into a mask
				// off the accumulator's dependency chain and set to NaN after
				// the window. The result is NaN when the window holds a NaN,
				// as in the interpreter and PyTorch (see fmaxNaN); a single
				// select on the chain was 2-3x slower (BenchmarkPool).
				nacc := vpb
				if s.Max {
					nacc = 2 * vpb
				}
				acc := make([]value.Value, nacc)
				for j := range acc {
					if j < vpb {
						acc[j] = init
					} else {
						acc[j] = constant.NewZeroInitializer(types.NewVector(uint64(V), types.I1))
					}
				}
				acc = g.loop(khLo, khHi, acc, func(kh value.Value, acc []value.Value) []value.Value {
					row := g.gep(inBase, g.add(g.mul(g.add(ih0, kh), ci(ist.Row)), g.mul(iw0, ci(ist.Pixel))))
					return g.loop(kwLo, kwHi, acc, func(kw value.Value, acc []value.Value) []value.Value {
						px := g.gep(row, g.mul(kw, ci(ist.Pixel)))
						out := make([]value.Value, len(acc))
						for j := 0; j < vpb; j++ {
							x := g.vload(px, ci(j*V))
							if s.Max {
								out[j] = g.fmaxKeep(acc[j], x)
								out[vpb+j] = g.b.NewOr(acc[vpb+j], g.isNaN(x))
							} else {
								out[j] = g.fadd(acc[j], x)
							}
						}
						return out
					})
				})
				if s.Max {
					for j := 0; j < vpb; j++ {
						acc[j] = g.b.NewSelect(acc[vpb+j], g.vconst(math.NaN()), acc[j])
					}
					acc = acc[:vpb]
				}
				if !s.Max {
					var scale value.Value
					if s.CountIncludePad {
						scale = g.vconst(1 / float64(s.KH*s.KW))
					} else {
						cnt := g.mul(g.sub(khHi, khLo), g.sub(kwHi, kwLo))
						inv := g.b.NewFDiv(cf(1), g.b.NewSIToFP(cnt, f32))
						scale = g.splat(inv)
					}
					for j := range acc {
						acc[j] = g.fmul(acc[j], scale)
					}
				}
				px := g.gep(outRow, g.mul(ow, ci(ost.Pixel)))
				for j := range acc {
					g.vstore(acc[j], px, ci(j*V))
				}
				return nil
			})
		})
		return nil
	})
}

// GlobalAvgPool adds a global average pooling kernel (see GlobalAvgPoolSpec).
// A tile is one channel block of one image.
func (m *Module) GlobalAvgPool(name string, s GlobalAvgPoolSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	cb := ceilDiv(s.C, b)
	k := Kernel{Name: name, Kind: "global_avgpool", Tiles: s.N * cb, Flops: int64(s.N*s.C) * int64(s.H*s.W)}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		vpb := b / V
		hw := s.H * s.W
		// A tile t = n*cb + blk is one channel block: its input starts at
		// t*Block (Block*cb = N stride); the output is NCHW{b}c of [N,C,1,1].
		ist := kir.NCHWc(b).ActivationStrides([]int{s.N, s.C, s.H, s.W}, b)
		ost := kir.NCHWc(b).ActivationStrides([]int{s.N, s.C, 1, 1}, b)
		g.tiles(func(t value.Value) {
			in := g.gep(g.arena, g.add(g.mul(t, ci(ist.Block)), ci(s.InOff)))
			// Two interleaved accumulator sets hide the add latency.
			const u = 2
			acc := make([]value.Value, u*vpb)
			for i := range acc {
				acc[i] = g.vzero()
			}
			acc = g.loopN(hw/u, acc, func(i value.Value, acc []value.Value) []value.Value {
				px := g.gep(in, g.mul(i, ci(u*ist.Pixel)))
				out := make([]value.Value, len(acc))
				for k := range acc {
					out[k] = g.fadd(acc[k], g.vload(px, ci(k*V)))
				}
				return out
			})
			sum := make([]value.Value, vpb)
			for j := range sum {
				sum[j] = g.fadd(acc[j], acc[vpb+j])
				if hw%u != 0 {
					sum[j] = g.fadd(sum[j], g.vload(in, ci((hw-1)*ist.Pixel+j*V)))
				}
			}
			out := g.gep(g.arena, g.add(g.mul(t, ci(ost.Block)), ci(s.OutOff)))
			for j := range sum {
				g.vstore(g.fmul(sum[j], g.vconst(1/float64(hw))), out, ci(j*V))
			}
		})
		return nil
	})
}
