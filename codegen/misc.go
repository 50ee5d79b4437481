package codegen

import (
	"fmt"
	"math"

	kir "github.com/kiln-dev/kiln/ir"

	"github.com/llir/llvm/ir/enum"
	"github.com/llir/llvm/ir/value"
)

// Reorder adds a layout conversion between plain NCHW and NCHW{B}c (see
// ReorderSpec). A tile is one row (n, channel block, h), converted channel
// by channel (reorderRow, reorder.go); the last block of a channel count
// that is not a multiple of B has its own code path, which writes the
// padding lanes as zero when blocking.
func (m *Module) Reorder(name string, s ReorderSpec) (string, int, error) {
	b, err := m.validated(name, s)
	if err != nil {
		return "", 0, err
	}
	cb := ceilDiv(s.C, b)
	shape := []int{s.N, s.C, s.H, s.W}
	pst, bst := kir.Plain.ActivationStrides(shape, b), kir.NCHWc(b).ActivationStrides(shape, b)
	k := Kernel{Name: name, Kind: "reorder", Tiles: s.N * cb * s.H}
	return m.define(k, func(g *builder) error {
		g.tiles(func(t value.Value) {
			h := g.urem(t, s.H)
			t = g.udiv(t, s.H)
			blk := g.urem(t, cb)
			n := g.udiv(t, cb)
			// Plain offset of (n, blk*B, h, 0); blocked offset of (n, blk, h, 0, 0).
			at := func(st kir.ChannelBlockStrides) value.Value {
				return g.add(g.add(g.mul(n, ci(st.N)), g.mul(blk, ci(st.Block))), g.mul(h, ci(st.Row)))
			}
			plain, blocked := at(pst), at(bst)
			var pBase, bBase value.Value
			if s.ToBlocked {
				pBase = g.gep(g.arena, g.add(plain, ci(s.InOff)))
				bBase = g.gep(g.arena, g.add(blocked, ci(s.OutOff)))
			} else {
				bBase = g.gep(g.arena, g.add(blocked, ci(s.InOff)))
				pBase = g.gep(g.arena, g.add(plain, ci(s.OutOff)))
			}
			row := func(lanes int) { reorderRow(g, s, bst, pst, bBase, pBase, lanes) }
			rem := s.C % b
			switch {
			case rem == 0:
				row(b)
			case cb == 1:
				row(rem)
			default:
				g.ifElse(g.icmp(enum.IPredULT, blk, ci(cb-1)), func() { row(b) }, func() { row(rem) })
			}
		})
		return nil
	})
}

// Copy adds a plain copy kernel (see CopySpec). A tile is 4096 elements of
// one row.
func (m *Module) Copy(name string, s CopySpec) (string, int, error) {
	if m.err != nil {
		return "", 0, m.err
	}
	if err := s.Validate(); err != nil {
		return "", 0, fmt.Errorf("codegen: kernel %s: %w", name, err)
	}
	const chunk = 4096
	per := ceilDiv(s.Elems, chunk) // tiles per row
	k := Kernel{Name: name, Kind: "copy", Tiles: s.rows() * per}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		g.tiles(func(t value.Value) {
			row := value.Value(ci(0))
			if s.rows() > 1 {
				row = g.udiv(t, per)
				t = g.urem(t, per)
			}
			base := g.mul(t, ci(chunk))
			in := g.gep(g.arena, g.add(g.add(base, g.mul(row, ci(s.InStride))), ci(s.InOff)))
			out := g.gep(g.arena, g.add(g.add(base, g.mul(row, ci(s.OutStride))), ci(s.OutOff)))
			body := func(n int) {
				g.loopN(n/V, nil, func(i value.Value, _ []value.Value) []value.Value {
					o := g.mul(i, ci(V))
					g.vstore(g.vload(in, o), out, o)
					return nil
				})
				for i := n / V * V; i < n; i++ {
					g.store(g.load(in, ci(i)), out, ci(i))
				}
			}
			last := s.Elems - (per-1)*chunk
			if last == chunk {
				body(chunk)
				return
			}
			if per == 1 {
				body(last)
				return
			}
			g.ifElse(g.icmp(enum.IPredULT, t, ci(per-1)), func() { body(chunk) }, func() { body(last) })
		})
		return nil
	})
}

// Dense adds a fully connected kernel (see DenseSpec). A tile is a block of
// up to 4 output vectors (4*VectorLanes outputs) for all N rows; rows are
// processed a few at a time so that each weight vector loaded feeds several
// FMAs (rows × vectors accumulators in registers). Outputs past the last
// whole vector are computed with scalar FMAs.
func (m *Module) Dense(name string, s DenseSpec) (string, int, error) {
	if m.err != nil {
		return "", 0, m.err
	}
	if err := s.Validate(); err != nil {
		return "", 0, fmt.Errorf("codegen: kernel %s: %w", name, err)
	}
	// The tile width must not depend on the target: 64 outputs.
	const tw = 64
	k := Kernel{Name: name, Kind: "dense", Tiles: ceilDiv(s.O, tw), Flops: 2 * int64(s.N) * int64(s.I) * int64(s.O)}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		u := tw / V // vectors per full tile
		rows := max(1, min(s.N, (g.t.Registers-u-2)/u))
		// tile computes outputs [o0, o0+width) with nv vectors + scalar tail.
		tile := func(o0 value.Value, width int) {
			nv, ns := width/V, width%V
			group := func(n0 value.Value, nr int) {
				acc := make([]value.Value, nr*nv+nr*ns)
				for i := range acc {
					if i < nr*nv {
						acc[i] = g.vzero()
					} else {
						acc[i] = cf(0)
					}
				}
				xRow := g.gep(g.arena, g.add(g.mul(n0, ci(s.I)), ci(s.InOff)))
				wCol := g.gep(g.weights, g.add(o0, ci(s.WeightOff)))
				acc = g.loopN(s.I, acc, func(i value.Value, acc []value.Value) []value.Value {
					out := append([]value.Value(nil), acc...)
					wp := g.gep(wCol, g.mul(i, ci(s.O)))
					xp := g.gep(xRow, i)
					wv := make([]value.Value, nv)
					for v := range wv {
						wv[v] = g.vload(wp, ci(v*V))
					}
					ws := make([]value.Value, ns)
					for e := range ws {
						ws[e] = g.load(wp, ci(nv*V+e))
					}
					for r := 0; r < nr; r++ {
						xs := g.load(xp, ci(r*s.I))
						if nv > 0 {
							x := g.splat(xs)
							for v := 0; v < nv; v++ {
								out[r*nv+v] = g.fma(x, wv[v], out[r*nv+v])
							}
						}
						for e := 0; e < ns; e++ {
							k := nr*nv + r*ns + e
							out[k] = g.fma(xs, ws[e], out[k])
						}
					}
					return out
				})
				bp := g.gep(g.weights, g.add(o0, ci(s.BiasOff)))
				op := g.gep(g.arena, g.add(g.add(g.mul(n0, ci(s.O)), o0), ci(s.OutOff)))
				for r := 0; r < nr; r++ {
					for v := 0; v < nv; v++ {
						x := acc[r*nv+v]
						if s.HasBias {
							x = g.fadd(x, g.vload(bp, ci(v*V)))
						}
						g.vstore(x, op, ci(r*s.O+v*V))
					}
					for e := 0; e < ns; e++ {
						x := acc[nr*nv+r*ns+e]
						if s.HasBias {
							x = g.fadd(x, g.load(bp, ci(nv*V+e)))
						}
						g.store(x, op, ci(r*s.O+nv*V+e))
					}
				}
			}
			if full := s.N / rows; full > 0 {
				g.loopN(full, nil, func(i value.Value, _ []value.Value) []value.Value {
					group(g.mul(i, ci(rows)), rows)
					return nil
				})
			}
			if rem := s.N % rows; rem > 0 {
				group(ci(s.N-rem), rem)
			}
		}
		g.tiles(func(t value.Value) {
			o0 := g.mul(t, ci(tw))
			last := s.O - (k.Tiles-1)*tw
			if last == tw {
				tile(o0, tw)
				return
			}
			if k.Tiles == 1 {
				tile(ci(0), last)
				return
			}
			g.ifElse(g.icmp(enum.IPredULT, t, ci(k.Tiles-1)),
				func() { tile(o0, tw) },
				func() { tile(ci((k.Tiles-1)*tw), last) })
		})
		return nil
	})
}

// Softmax adds a softmax kernel (see SoftmaxSpec). A tile is one row: a
// vector max pass, a pass writing exp(x - max) and summing it, and a pass
// scaling by 1/sum. exp is the Cephes single-precision polynomial (about
// 1 ulp; inputs are <= 0 after the max subtraction), computed inline on
// vectors, so the kernels need no libm.
func (m *Module) Softmax(name string, s SoftmaxSpec) (string, int, error) {
	if m.err != nil {
		return "", 0, m.err
	}
	if err := s.Validate(); err != nil {
		return "", 0, fmt.Errorf("codegen: kernel %s: %w", name, err)
	}
	k := Kernel{Name: name, Kind: "softmax", Tiles: s.N}
	return m.define(k, func(g *builder) error {
		V := g.t.VectorLanes
		nv, tail := s.K/V, s.K%V
		g.tiles(func(t value.Value) {
			in := g.gep(g.arena, g.add(g.mul(t, ci(s.K)), ci(s.InOff)))
			out := g.gep(g.arena, g.add(g.mul(t, ci(s.K)), ci(s.OutOff)))
			// Pass 1: max.
			mx := value.Value(cf(math.Inf(-1)))
			if nv > 0 {
				vm := g.loopN(nv, []value.Value{g.vconst(math.Inf(-1))}, func(i value.Value, c []value.Value) []value.Value {
					return []value.Value{g.fmaxNaN(c[0], g.vload(in, g.mul(i, ci(V))))}
				})[0]
				mx = g.hreduce(vm, g.fmaxNaN)
			}
			for e := nv * V; e < s.K; e++ {
				mx = g.fmaxNaN(mx, g.load(in, ci(e)))
			}
			// Pass 2: out = exp(x - max), sum.
			sum := value.Value(cf(0))
			if nv > 0 {
				vmx := g.splat(mx)
				vs := g.loopN(nv, []value.Value{g.vzero()}, func(i value.Value, c []value.Value) []value.Value {
					o := g.mul(i, ci(V))
					e := g.exp(g.fsub(g.vload(in, o), vmx))
					g.vstore(e, out, o)
					return []value.Value{g.fadd(c[0], e)}
				})[0]
				sum = g.hreduce(vs, g.fadd)
			}
			for i := 0; i < tail; i++ {
				e := g.exp(g.fsub(g.load(in, ci(nv*V+i)), mx))
				g.store(e, out, ci(nv*V+i))
				sum = g.fadd(sum, e)
			}
			// Pass 3: scale.
			inv := g.b.NewFDiv(cf(1), sum)
			if nv > 0 {
				vinv := g.splat(inv)
				g.loopN(nv, nil, func(i value.Value, _ []value.Value) []value.Value {
					o := g.mul(i, ci(V))
					g.vstore(g.fmul(g.vload(out, o), vinv), out, o)
					return nil
				})
			}
			for i := 0; i < tail; i++ {
				g.store(g.fmul(g.load(out, ci(nv*V+i)), inv), out, ci(nv*V+i))
			}
		})
		return nil
	})
}

// exp returns e^x for a float or float vector x with the Cephes expf
// algorithm (as in sse_mathfun): x = n*ln2 + r with n = floor(x*log2e + 1/2),
// e^r by a degree-6 polynomial, 2^n by building the exponent bits. Inputs are
// clamped to [-88.376, 88.376]; results below 2^-126 flush to zero.
func (g *builder) exp(x value.Value) value.Value {
	k := func(c float64) value.Value {
		if x.Type().Equal(g.vec) {
			return g.vconst(c)
		}
		return cf(c)
	}
	const hi, lo = 88.3762626647949, -88.3762626647949
	x = g.b.NewSelect(g.b.NewFCmp(enum.FPredOGT, x, k(hi)), k(hi), x)
	x = g.b.NewSelect(g.b.NewFCmp(enum.FPredOLT, x, k(lo)), k(lo), x)
	fx := g.floor(g.fma(x, k(1.44269504088896341), k(0.5)))
	x = g.fsub(x, g.fmul(fx, k(0.693359375)))
	x = g.fsub(x, g.fmul(fx, k(-2.12194440e-4)))
	z := g.fmul(x, x)
	y := k(1.9875691500e-4)
	for _, c := range []float64{1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1} {
		y = g.fma(y, x, k(c))
	}
	y = g.fma(y, z, g.fadd(x, k(1)))
	// 2^fx: (int(fx) + 127) << 23, as float bits. fx >= -127 after the clamp.
	it := g.i32Type(x)
	n := g.b.NewFPToSI(fx, it)
	n2 := g.b.NewAdd(n, g.i32Const(x, 127))
	bits := g.b.NewShl(n2, g.i32Const(x, 23))
	return g.fmul(y, g.b.NewBitCast(bits, x.Type()))
}
