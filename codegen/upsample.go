package codegen

import (
	"fmt"

	"github.com/llir/llvm/ir/types"
	"github.com/llir/llvm/ir/value"
)

// UpsampleSpec is upsampling by the integer factor Scale (ir.OpUpsample,
// PyTorch's nn.Upsample): NCHW{B}c [N][C][H][W] at arena+InOff to NCHW{B}c
// [N][C][H·Scale][W·Scale] at arena+OutOff. Bilinear selects PyTorch's
// bilinear interpolation (AlignCorners: its align_corners=True source
// coordinates), else nearest.
type UpsampleSpec struct {
	N, C, H, W, Scale      int
	Bilinear, AlignCorners bool
	InOff, OutOff          int
}

// Validate checks the spec against the block size b of a target.
func (s UpsampleSpec) Validate(b int) error {
	const w = "upsample"
	if err := positive(w, "N", s.N, "C", s.C, "H", s.H, "W", s.W, "Scale", s.Scale); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "OutOff", s.OutOff); err != nil {
		return err
	}
	if s.AlignCorners && !s.Bilinear {
		return fmt.Errorf("%s: AlignCorners applies to bilinear only", w)
	}
	cb := ceilDiv(s.C, b)
	in, out := prod(s.N, cb, b, s.H, s.W), prod(s.N, cb, b, s.H*s.Scale, s.W*s.Scale)
	if err := checkExtent(w, "input", s.InOff, in); err != nil {
		return err
	}
	if err := checkExtent(w, "output", s.OutOff, out); err != nil {
		return err
	}
	if Overlap(s.InOff, in, s.OutOff, out) {
		return fmt.Errorf("%s: input overlaps output", w)
	}
	return nil
}

// Upsample adds an upsampling kernel (see UpsampleSpec). A tile is one
// output row (n, channel block, oh); every pixel is B channels, B/V
// vectors, so the kernel never leaves whole vectors and the padding lanes
// of a partial last block stay zero (they are zero in the input).
//
// Nearest: the tile reads input row oh/s and stores each input pixel's
// vectors s times. Bilinear: the source row pair and weights come from
// ir.UpsampleSource's exact fraction num/den (num an affine function of oh,
// den a constant), evaluated with integer arithmetic in the kernel, so the
// indices equal the interpreter's exactly and λ1 = num/den is one
// correctly rounded float32 division; per output pixel the column pair and
// weights likewise, then out = λ0h·(λ0w·x00 + λ1w·x01) + λ1h·(λ0w·x10 +
// λ1w·x11), PyTorch's order of operations, so a NaN or Inf tap propagates
// as in the interpreter.
func (m *Module) Upsample(name string, s UpsampleSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	cb := ceilDiv(s.C, b)
	oh, ow := s.H*s.Scale, s.W*s.Scale
	flops := int64(0)
	if s.Bilinear {
		flops = 6 * int64(s.N*s.C) * int64(oh*ow)
	}
	k := Kernel{Name: name, Kind: "upsample", Tiles: s.N * cb * oh, Flops: flops}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		vpb := b / V
		g.tiles(func(t value.Value) {
			y := g.urem(t, oh)
			plane := g.udiv(t, oh)
			in := g.gep(g.arena, g.add(g.mul(plane, ci(s.H*s.W*b)), ci(s.InOff)))
			out := g.gep(g.arena, g.add(g.add(g.mul(plane, ci(oh*ow*b)), g.mul(y, ci(ow*b))), ci(s.OutOff)))
			if !s.Bilinear {
				row := g.gep(in, g.mul(g.udiv(y, s.Scale), ci(s.W*b)))
				g.loopN(s.W, nil, func(x value.Value, _ []value.Value) []value.Value {
					src := g.gep(row, g.mul(x, ci(b)))
					dst := g.gep(out, g.mul(x, ci(s.Scale*b)))
					for j := 0; j < vpb; j++ {
						v := g.vload(src, ci(j*V))
						for r := 0; r < s.Scale; r++ {
							g.vstore(v, dst, ci(r*b+j*V))
						}
					}
					return nil
				})
				return
			}
			i0h, i1h, l0h, l1h := g.upsampleSource(y, s.H, s.Scale, s.AlignCorners)
			r0, r1 := g.gep(in, g.mul(i0h, ci(s.W*b))), g.gep(in, g.mul(i1h, ci(s.W*b)))
			v0h, v1h := g.splat(l0h), g.splat(l1h)
			g.loopN(ow, nil, func(x value.Value, _ []value.Value) []value.Value {
				i0w, i1w, l0w, l1w := g.upsampleSource(x, s.W, s.Scale, s.AlignCorners)
				v0w, v1w := g.splat(l0w), g.splat(l1w)
				o0, o1 := g.mul(i0w, ci(b)), g.mul(i1w, ci(b))
				dst := g.gep(out, g.mul(x, ci(b)))
				for j := 0; j < vpb; j++ {
					lerp := func(row value.Value) value.Value {
						a := g.fmul(v0w, g.vload(g.gep(row, o0), ci(j*V)))
						return g.fadd(a, g.fmul(v1w, g.vload(g.gep(row, o1), ci(j*V))))
					}
					top, bot := lerp(r0), lerp(r1)
					g.vstore(g.fadd(g.fmul(v0h, top), g.fmul(v1h, bot)), dst, ci(j*V))
				}
				return nil
			})
		})
		return nil
	})
}

// upsampleSource emits ir.UpsampleSource for bilinear mode at run-time
// output index o (i64) of an axis of size in upsampled by s: the source
// indices i0, i1 (i64) and the float weights λ0 = 1-λ1, λ1 = num/den.
func (g *builder) upsampleSource(o value.Value, in, s int, alignCorners bool) (i0, i1, l0, l1 value.Value) {
	out := in * s
	var num value.Value
	var den int
	switch {
	case alignCorners && out == 1:
		num, den = ci(0), 1
	case alignCorners:
		num, den = g.mul(o, ci(in-1)), out-1
	default:
		num, den = g.smax(ci(0), g.add(g.mul(o, ci(2)), ci(1-s))), 2*s
	}
	i0 = g.udiv(num, den)
	i1 = g.smin(g.add(i0, ci(1)), ci(in-1))
	frac := g.sub(num, g.mul(i0, ci(den)))
	l1 = g.b.NewFDiv(g.b.NewSIToFP(frac, types.Float), cf(float64(den)))
	l0 = g.fsub(cf(1), l1)
	return i0, i1, l0, l1
}
