package cuda

import (
	"math"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/llir/llvm/ir/value"
)

// elemThreads is the block size of the one-thread-per-element kernels.
const elemThreads = 256

// split decomposes the flat index i into digits of the given extents,
// innermost first (i = ((d[n-1]*e[n-2] + ...)*e[0] + d[0]).
func (k *kb) split(i value.Value, extents ...int) []value.Value {
	out := make([]value.Value, len(extents))
	for j, e := range extents {
		if j == len(extents)-1 {
			out[j] = i
			break
		}
		out[j] = k.rem(i, e)
		i = k.div(i, e)
	}
	return out
}

// elementwise starts a one-thread-per-output-element kernel over total
// elements and calls body with the flat index inside the bounds check.
func (g *gen) elementwise(name string, total int, params []string, body func(k *kb, ps []value.Value, i value.Value)) {
	k, ps := g.kernel(name, params...)
	i := k.globalIndex(elemThreads)
	k.ifThen(k.lt(i, ci(total)), func() { body(k, ps, i) })
	k.ret()
}

// pool emits max or average pooling on NCHW32c (PyTorch semantics: padding
// never wins for max; average divides by KH·KW with count_include_pad, else
// by the in-bounds taps), one thread per output element, into channel
// block OutCOffset/32 of the destination. Parameters: in, out.
func (g *gen) pool(name string, s codegen.PoolSpec) {
	CB, OCB := ceilDiv(s.C, blk), ceilDiv(s.OutC, blk)
	g.elementwise(name, s.N*CB*s.OH*s.OW*blk, []string{"in", "out"}, func(k *kb, ps []value.Value, i value.Value) {
		d := k.split(i, blk, s.OW, s.OH, CB, s.N)
		lane, ow, oh, cb, n := d[0], d[1], d[2], d[3], d[4]
		plane := k.mul(k.add(k.mul(n, CB), cb), s.H*s.W)
		var acc value.Value = cf(0)
		var cnt value.Value = cf(0)
		if s.Max {
			acc = cf(math.Inf(-1))
		}
		for kh := 0; kh < s.KH; kh++ {
			for kw := 0; kw < s.KW; kw++ {
				ih := k.add(k.sub(k.mul(oh, s.SH), ci(s.PH)), ci(kh))
				iw := k.add(k.sub(k.mul(ow, s.SW), ci(s.PW)), ci(kw))
				ok := k.and(k.inRange(ih, s.H), k.inRange(iw, s.W))
				v := k.loadIf(ok, ps[0], k.add(k.mul(k.add(plane, k.add(k.mul(ih, s.W), iw)), blk), lane))
				if s.Max {
					acc = k.b.NewSelect(ok, k.fmax(acc, v), acc)
				} else {
					acc = k.b.NewFAdd(acc, v)
					cnt = k.b.NewFAdd(cnt, k.b.NewSelect(ok, cf(1), cf(0)))
				}
			}
		}
		if !s.Max {
			if s.CountIncludePad {
				cnt = cf(float64(s.KH * s.KW))
			}
			acc = k.b.NewFDiv(acc, cnt)
		}
		oi := k.add(k.mul(k.add(k.mul(k.add(k.add(k.mul(n, OCB), ci(s.OutCOffset/blk)), cb), s.OH*s.OW), k.add(k.mul(oh, s.OW), ow)), blk), lane)
		k.store(acc, k.gep(ps[1], oi))
	})
}

// globalAvgPool emits the mean over H·W of NCHW32c, one thread per
// (image, channel). Parameters: in, out.
func (g *gen) globalAvgPool(name string, s codegen.GlobalAvgPoolSpec) {
	CB := ceilDiv(s.C, blk)
	HW := s.H * s.W
	g.elementwise(name, s.N*CB*blk, []string{"in", "out"}, func(k *kb, ps []value.Value, i value.Value) {
		lane := k.rem(i, blk)
		plane := k.mul(k.div(i, blk), HW*blk)
		sum := k.loop(HW, []value.Value{cf(0)}, func(p value.Value, c []value.Value) []value.Value {
			v := k.load(k.gep(ps[0], k.add(k.add(plane, k.mul(p, blk)), lane)))
			return []value.Value{k.b.NewFAdd(c[0], v)}
		})[0]
		k.store(k.b.NewFDiv(sum, cf(float64(HW))), k.gep(ps[1], i))
	})
}

// reorder converts plain NCHW to NCHW32c (zero padding lanes) or back, one
// thread per destination element. Parameters: in, out.
func (g *gen) reorder(name string, s codegen.ReorderSpec) {
	CB, HW := ceilDiv(s.C, blk), s.H*s.W
	if s.ToBlocked {
		g.elementwise(name, s.N*CB*HW*blk, []string{"in", "out"}, func(k *kb, ps []value.Value, i value.Value) {
			d := k.split(i, blk, HW, CB, s.N)
			c := k.add(k.mul(d[2], blk), d[0])
			v := k.loadIf(k.lt(c, ci(s.C)), ps[0], k.add(k.mul(k.add(k.mul(d[3], s.C), c), HW), d[1]))
			k.store(v, k.gep(ps[1], i))
		})
		return
	}
	g.elementwise(name, s.N*s.C*HW, []string{"in", "out"}, func(k *kb, ps []value.Value, i value.Value) {
		d := k.split(i, HW, s.C, s.N)
		c := d[1]
		src := k.add(k.mul(k.add(k.mul(k.add(k.mul(d[2], CB), k.div(c, blk)), HW), d[0]), blk), k.rem(c, blk))
		k.store(k.load(k.gep(ps[0], src)), k.gep(ps[1], i))
	})
}

// copyRows copies Rows runs of Elems floats between strided rows (a concat
// operand's slice). Parameters: in, out.
func (g *gen) copyRows(name string, s codegen.CopySpec) {
	rows := max(s.Rows, 1)
	g.elementwise(name, rows*s.Elems, []string{"in", "out"}, func(k *kb, ps []value.Value, i value.Value) {
		e, r := k.rem(i, s.Elems), k.div(i, s.Elems)
		v := k.load(k.gep(ps[0], k.add(k.mul(r, s.InStride), e)))
		k.store(v, k.gep(ps[1], k.add(k.mul(r, s.OutStride), e)))
	})
}

// dense emits out[n][o] = sum_i x[n][i]·w[i][o] + bias[o] in exact fp32,
// one thread per output (consecutive threads read consecutive o of the
// transposed weight: coalesced). Parameters: in, w, bias, out.
func (g *gen) dense(name string, s codegen.DenseSpec) {
	g.elementwise(name, s.N*s.O, []string{"in", "w", "bias", "out"}, func(k *kb, ps []value.Value, i value.Value) {
		o, n := k.rem(i, s.O), k.div(i, s.O)
		xrow := k.mul(n, s.I)
		acc := k.loop(s.I, []value.Value{cf(0)}, func(j value.Value, c []value.Value) []value.Value {
			x := k.load(k.gep(ps[0], k.add(xrow, j)))
			w := k.load(k.gep(ps[1], k.add(k.mul(j, s.O), o)))
			return []value.Value{k.fma(x, w, c[0])}
		})[0]
		if s.HasBias {
			acc = k.b.NewFAdd(acc, k.load(k.gep(ps[2], o)))
		}
		k.store(acc, k.gep(ps[3], i))
	})
}

// softmax emits a numerically stable softmax of each row of a plain [N][K]
// tensor, one thread per row: max, then exp(x-max) = ex2.approx((x-max)·
// log2 e) summed, then scaled. Parameters: in, out (may be equal).
func (g *gen) softmax(name string, s codegen.SoftmaxSpec) {
	g.elementwise(name, s.N, []string{"in", "out"}, func(k *kb, ps []value.Value, n value.Value) {
		row := k.mul(n, s.K)
		at := func(p value.Value, j value.Value) value.Value { return k.gep(p, k.add(row, j)) }
		mx := k.loop(s.K, []value.Value{cf(math.Inf(-1))}, func(j value.Value, c []value.Value) []value.Value {
			return []value.Value{k.fmax(c[0], k.load(at(ps[0], j)))}
		})[0]
		ex2 := k.g.intrinsic("llvm.nvvm.ex2.approx.f", f32, f32)
		sum := k.loop(s.K, []value.Value{cf(0)}, func(j value.Value, c []value.Value) []value.Value {
			d := k.b.NewFSub(k.load(at(ps[0], j)), mx)
			e := k.b.NewCall(ex2, k.b.NewFMul(d, cf(math.Log2E)))
			k.store(e, at(ps[1], j))
			return []value.Value{k.b.NewFAdd(c[0], e)}
		})[0]
		inv := k.b.NewFDiv(cf(1), sum)
		k.loop(s.K, nil, func(j value.Value, _ []value.Value) []value.Value {
			k.store(k.b.NewFMul(k.load(at(ps[1], j)), inv), at(ps[1], j))
			return nil
		})
	})
}
