package codegen

import (
	"fmt"
	"math"

	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/value"
)

// Standalone kernels for the ops that fusion normally absorbs: ReLU, add,
// multiplication by a constant (the residual scale) and inference BatchNorm
// (a per-channel affine map). The passes fold or fuse them into convolutions
// when they can (fold-bn, fold-residual-scale, fuse-epilogue); these kernels
// run what is left when a pass is disabled or a pattern does not match (a
// BatchNorm after a concat or in a pre-activation block, a marked value), so
// every op that reaches code generation has a kernel. They are memory bound:
// one pass over the data, vectorized over the target's lanes, with the
// padding lanes of a blocked layout mapped to zero (relu(0) = 0 + 0 = c*0 =
// 0, and BatchNorm's scale and shift are zero padded).

// EltOp is the operation of an elementwise kernel.
type EltOp int

// Elementwise operations.
const (
	// EltReLU is max(x, 0); NaN stays NaN.
	EltReLU EltOp = iota
	// EltAdd is x + y.
	EltAdd
	// EltScale is x * C.
	EltScale
	// EltSub is x - y.
	EltSub
	// EltSigmoid is 1/(1+e^-x) (vexp; see sigmoid in elementwise_ext.go).
	EltSigmoid
	// EltTanh is tanh(x).
	EltTanh
	// EltSiLU is x * sigmoid(x).
	EltSiLU
	// EltHardSwish is x * min(max(x+3, 0), 6) / 6.
	EltHardSwish
	// EltClip is min(max(x, C), Hi).
	EltClip
)

func (o EltOp) String() string {
	switch o {
	case EltReLU:
		return "relu"
	case EltAdd:
		return "add"
	case EltScale:
		return "scale"
	case EltSub:
		return "sub"
	case EltSigmoid:
		return "sigmoid"
	case EltTanh:
		return "tanh"
	case EltSiLU:
		return "silu"
	case EltHardSwish:
		return "hardswish"
	case EltClip:
		return "clip"
	}
	return fmt.Sprintf("EltOp(%d)", int(o))
}

// ElementwiseSpec is an elementwise kernel over Elems floats of the arena:
//
//	out[i] = relu?(op(in[i], in2[i]))
//
// with op one of EltReLU (in2 unused), EltAdd (in + in2) and EltScale
// (in * C). The element order does not matter, so the same kernel runs on any
// layout, blocked NCHW{B}c included (Elems is then the physical element
// count). The output may be an input exactly (in place) but must not overlap
// one partially.
type ElementwiseSpec struct {
	Op            EltOp
	Elems         int
	InOff, In2Off int
	OutOff        int
	C             float32
	Relu          bool
	// Hi is EltClip's upper bound (C is the lower).
	Hi float32
	// Channels and Pixels, set for a blocked NCHW{B}c value whose channel
	// count is not a multiple of B and an op with f(0) != 0 (sigmoid, a
	// clip excluding 0), make the kernel write zero to the padding lanes
	// (channel >= Channels of the last block; Pixels = H*W), so they stay
	// zero as every blocked value's do. Zero: no masking.
	Channels, Pixels int
}

// ChannelAffineSpec is inference BatchNorm as a per-channel affine map,
//
//	out[n][c][p] = relu?(in[n][c][p] * scale[c] + shift[c])
//
// with scale[c] = γ[c]/sqrt(σ²[c]+eps) and shift[c] = β[c] − μ[c]·scale[c]
// computed at build time. Blocked: in and out are NCHW{B}c with C channels
// and HW pixels per channel ([N][ceil(C/B)][HW][B]) and scale and shift hold
// ceil(C/B)*B floats, zero padded, so padding lanes stay zero. Plain: in and
// out are [N][C][HW] (any rank >= 2, HW the product of the dimensions after
// the channel axis), scale and shift C floats. The output may be the input
// exactly.
type ChannelAffineSpec struct {
	N, C, HW           int
	Blocked            bool
	InOff, OutOff      int
	ScaleOff, ShiftOff int
	Relu               bool
}

// Validate checks the spec.
func (s ElementwiseSpec) Validate() error {
	w := s.Op.String()
	if s.Op < EltReLU || s.Op > EltClip {
		return fmt.Errorf("elementwise: unknown op %d", int(s.Op))
	}
	if err := positive(w, "Elems", s.Elems); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "In2Off", s.In2Off, "OutOff", s.OutOff); err != nil {
		return err
	}
	ins := []int{s.InOff}
	if s.Op.binary() {
		ins = append(ins, s.In2Off)
	}
	if s.Op == EltClip && !(s.C <= s.Hi) {
		return fmt.Errorf("%s: lo %g must not exceed hi %g", w, s.C, s.Hi)
	}
	if err := nonNeg(w, "Channels", s.Channels, "Pixels", s.Pixels); err != nil {
		return err
	}
	if (s.Channels > 0) != (s.Pixels > 0) {
		return fmt.Errorf("%s: Channels and Pixels must be set together", w)
	}
	if err := checkExtent(w, "output", s.OutOff, s.Elems); err != nil {
		return err
	}
	for _, in := range ins {
		if err := checkExtent(w, "input", in, s.Elems); err != nil {
			return err
		}
		if in != s.OutOff && Overlap(in, s.Elems, s.OutOff, s.Elems) {
			return fmt.Errorf("%s: input [%d, %d) partially overlaps output [%d, %d)", w, in, in+s.Elems, s.OutOff, s.OutOff+s.Elems)
		}
	}
	return nil
}

// extent is the number of floats of in and out, and of scale and shift.
func (s ChannelAffineSpec) extent(b int) (act, vec int) {
	if s.Blocked {
		cb := ceilDiv(s.C, b)
		return prod(s.N, cb, b, s.HW), cb * b
	}
	return prod(s.N, s.C, s.HW), s.C
}

// Validate checks the spec against the block size b of a target.
func (s ChannelAffineSpec) Validate(b int) error {
	const w = "batchnorm"
	if err := positive(w, "N", s.N, "C", s.C, "HW", s.HW); err != nil {
		return err
	}
	if err := nonNeg(w, "InOff", s.InOff, "OutOff", s.OutOff, "ScaleOff", s.ScaleOff, "ShiftOff", s.ShiftOff); err != nil {
		return err
	}
	act, vec := s.extent(b)
	for _, e := range []struct {
		n       string
		off, sz int
	}{{"input", s.InOff, act}, {"output", s.OutOff, act}, {"scale", s.ScaleOff, vec}, {"shift", s.ShiftOff, vec}} {
		if err := checkExtent(w, e.n, e.off, e.sz); err != nil {
			return err
		}
	}
	if s.InOff != s.OutOff && Overlap(s.InOff, act, s.OutOff, act) {
		return fmt.Errorf("%s: input partially overlaps output", w)
	}
	return nil
}

// eltChunk is the number of floats an elementwise tile covers.
const eltChunk = 4096

// Elementwise adds an elementwise kernel (see ElementwiseSpec). A tile is
// eltChunk elements: a vector loop and a scalar tail.
func (m *Module) Elementwise(name string, s ElementwiseSpec) (string, int, error) {
	if m.err != nil {
		return "", 0, m.err
	}
	if err := s.Validate(); err != nil {
		return "", 0, fmt.Errorf("codegen: kernel %s: %w", name, err)
	}
	k := Kernel{Name: name, Kind: s.Op.String(), Tiles: ceilDiv(s.Elems, eltChunk), Flops: int64(s.Elems)}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		g.tiles(func(t value.Value) {
			base := g.mul(t, ci(eltChunk))
			in := g.gep(g.arena, g.add(base, ci(s.InOff)))
			in2 := g.gep(g.arena, g.add(base, ci(s.In2Off)))
			out := g.gep(g.arena, g.add(base, ci(s.OutOff)))
			// f computes one vector or scalar; c is the constant C in
			// its shape.
			f := func(x, y, c value.Value) value.Value {
				switch s.Op {
				case EltAdd:
					x = g.fadd(x, y)
				case EltScale:
					x = g.fmul(x, c)
				case EltReLU:
					x = g.relu(x)
				default:
					x = g.eltExt(s, x, y)
				}
				if s.Relu && s.Op != EltReLU {
					x = g.relu(x)
				}
				return x
			}
			body := func(n int) {
				vc := g.vconst(float64(s.C))
				g.loopN(n/V, nil, func(i value.Value, _ []value.Value) []value.Value {
					o := g.mul(i, ci(V))
					var y value.Value
					if s.Op.binary() {
						y = g.vload(in2, o)
					}
					g.vstore(g.maskPadding(s, f(g.vload(in, o), y, vc), g.add(base, o)), out, o)
					return nil
				})
				for i := n / V * V; i < n; i++ {
					var y value.Value
					if s.Op.binary() {
						y = g.load(in2, ci(i))
					}
					g.store(g.maskPadding(s, f(g.load(in, ci(i)), y, cf(float64(s.C))), g.add(base, ci(i))), out, ci(i))
				}
			}
			last := s.Elems - (k.Tiles-1)*eltChunk
			if last == eltChunk {
				body(eltChunk)
				return
			}
			if k.Tiles == 1 {
				body(last)
				return
			}
			g.ifElse(g.icmp(enum.IPredULT, t, ci(k.Tiles-1)), func() { body(eltChunk) }, func() { body(last) })
		})
		return nil
	})
}

// ChannelAffine adds an inference BatchNorm kernel (see ChannelAffineSpec).
// Blocked: a tile is one channel block of one image; the block's scale and
// shift are loaded once into B/V vectors and each pixel is B/V FMAs. Plain:
// a tile is one image; per channel the scale and shift are splat and the HW
// elements are one vector loop with a scalar tail.
func (m *Module) ChannelAffine(name string, s ChannelAffineSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	tiles := s.N
	if s.Blocked {
		tiles = s.N * ceilDiv(s.C, b)
	}
	k := Kernel{Name: name, Kind: "batchnorm", Tiles: tiles, Flops: 2 * int64(s.N) * int64(s.C) * int64(s.HW)}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		affine := func(x, sc, sh value.Value) value.Value {
			y := g.fma(x, sc, sh)
			if s.Relu {
				y = g.relu(y)
			}
			return y
		}
		g.tiles(func(t value.Value) {
			if s.Blocked {
				// Tile t is (n, blk) in order, so its data starts at t*HW*B
				// and its channels at (t mod cb)*B.
				blk := g.urem(t, ceilDiv(s.C, b))
				base := g.mul(t, ci(s.HW*b))
				in := g.gep(g.arena, g.add(base, ci(s.InOff)))
				out := g.gep(g.arena, g.add(base, ci(s.OutOff)))
				sp := g.gep(g.weights, g.add(g.mul(blk, ci(b)), ci(s.ScaleOff)))
				tp := g.gep(g.weights, g.add(g.mul(blk, ci(b)), ci(s.ShiftOff)))
				sc, sh := make([]value.Value, b/V), make([]value.Value, b/V)
				for j := range sc {
					sc[j], sh[j] = g.vload(sp, ci(j*V)), g.vload(tp, ci(j*V))
				}
				g.loopN(s.HW, nil, func(p value.Value, _ []value.Value) []value.Value {
					o := g.mul(p, ci(b))
					pi, po := g.gep(in, o), g.gep(out, o)
					for j := range sc {
						g.vstore(affine(g.vload(pi, ci(j*V)), sc[j], sh[j]), po, ci(j*V))
					}
					return nil
				})
				return
			}
			base := g.mul(t, ci(s.C*s.HW))
			g.loopN(s.C, nil, func(c value.Value, _ []value.Value) []value.Value {
				row := g.add(base, g.mul(c, ci(s.HW)))
				in := g.gep(g.arena, g.add(row, ci(s.InOff)))
				out := g.gep(g.arena, g.add(row, ci(s.OutOff)))
				sc := g.load(g.weights, g.add(c, ci(s.ScaleOff)))
				sh := g.load(g.weights, g.add(c, ci(s.ShiftOff)))
				if nv := s.HW / V; nv > 0 {
					vsc, vsh := g.splat(sc), g.splat(sh)
					g.loopN(nv, nil, func(i value.Value, _ []value.Value) []value.Value {
						o := g.mul(i, ci(V))
						g.vstore(affine(g.vload(in, o), vsc, vsh), out, o)
						return nil
					})
				}
				for i := s.HW / V * V; i < s.HW; i++ {
					g.store(affine(g.load(in, ci(i)), sc, sh), out, ci(i))
				}
				return nil
			})
		})
		return nil
	})
}

// BatchNormScaleShift computes ChannelAffineSpec's scale and shift from
// BatchNorm's parameters as the interpreter does (in float64, rounded to
// float32 once), each zero padded to n >= C floats.
func BatchNormScaleShift(gamma, beta, mean, rvar []float32, eps float64, n int) (scale, shift []float32) {
	scale, shift = make([]float32, n), make([]float32, n)
	for c := range gamma {
		s := float64(gamma[c]) / math.Sqrt(float64(rvar[c])+eps)
		scale[c] = float32(s)
		shift[c] = float32(float64(beta[c]) - float64(mean[c])*s)
	}
	return
}
