package interp

import (
	"fmt"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// opAt adds an op node whose result has the given physical layout.
func (b *builder) opAt(layout, op string, attrs ir.Attrs, args ...int) int {
	return b.g.MustAdd(&ir.Node{Op: op, Args: args, Attrs: attrs, Type: ir.Type{Layout: ir.MustParseLayout(layout)}})
}

// typ returns node id's type.
func (b *builder) typ(id int) ir.Type { return b.g.Nodes[id].Type }

// sameBits fails unless got and want hold bitwise identical values of the
// same shape.
func sameBits(t testing.TB, what string, got, want *tensor.Tensor) {
	t.Helper()
	if !ir.ShapeEqual(got.Shape, want.Shape) {
		t.Fatalf("%s: shape %s, want %s", what, ir.ShapeString(got.Shape), ir.ShapeString(want.Shape))
	}
	for i := range want.Data {
		if math.Float32bits(got.Data[i]) != math.Float32bits(want.Data[i]) {
			t.Fatalf("%s: element %d (index %v) = %v, want %v", what, i, unravel(i, want.Shape), got.Data[i], want.Data[i])
		}
	}
}

// closeTo fails unless max|got-want| <= rel*max|want|.
func closeTo(t testing.TB, what string, got, want *tensor.Tensor, rel float64) {
	t.Helper()
	checkClose(t, what, got, &ref{shape: want.Shape, data: f64(want.Data)}, rel)
}

// TestFusedConv compares fused_conv, for every combination of its optional
// parts, with the same computation built from conv2d, add, relu and concat.
// The interpreter promises bitwise equality; the brief's bound is 1e-6
// relative, checked too so that a failure reports the size of the error.
func TestFusedConv(t *testing.T) {
	type shape struct {
		name        string
		n, c, h, w  int
		o, kh, kw   int
		stride, pad []int
		groups      int
	}
	shapes := []shape{
		{"3x3/pad1", 1, 3, 7, 5, 5, 3, 3, []int{1, 1}, []int{1, 1}, 1},
		{"3x3/stride2/pad1/batch2", 2, 6, 9, 8, 7, 3, 3, []int{2, 2}, []int{1, 1}, 1},
		{"1x1/direct/groups2", 1, 8, 6, 5, 6, 1, 1, []int{1, 1}, []int{0, 0}, 2},
		{"1x7/pad0,3/batch3", 3, 5, 11, 9, 4, 1, 7, []int{1, 1}, []int{0, 3}, 1},
		{"5x5/stride2,1/pad2,0", 1, 4, 10, 13, 9, 5, 5, []int{2, 1}, []int{2, 0}, 1},
		{"1x1/stride2", 2, 5, 9, 6, 3, 1, 1, []int{2, 2}, []int{0, 0}, 1},
		{"3x3/big", 1, 64, 12, 11, 37, 3, 3, []int{1, 1}, []int{1, 1}, 1}, // K = 576: several K blocks
	}
	for si, s := range shapes {
		for combo := 0; combo < 16; combo++ {
			bias, residual, relu, into := combo&1 != 0, combo&2 != 0, combo&4 != 0, combo&8 != 0
			name := fmt.Sprintf("%s/bias=%v/residual=%v/relu=%v/into=%v", s.name, bias, residual, relu, into)
			t.Run(name, func(t *testing.T) {
				b := newBuilder(t, int64(si*16+combo))
				ho := ir.ConvOut(s.h, s.kh, s.stride[0], s.pad[0])
				wo := ir.ConvOut(s.w, s.kw, s.stride[1], s.pad[1])
				x := b.input("x", s.n, s.c, s.h, s.w)
				w := b.param("w", -1, 1, s.o, s.c/s.groups, s.kh, s.kw)
				conv := ir.Attrs{"stride": s.stride, "pad": s.pad, "groups": s.groups}
				fargs := []int{x, w}
				fattrs := ir.Attrs{"stride": s.stride, "pad": s.pad, "groups": s.groups,
					"bias": bias, "residual": residual, "relu": relu, "into": into}
				cargs := []int{x, w}
				if bias {
					bi := b.param("b", -1, 1, s.o)
					fargs = append(fargs, bi)
					cargs = append(cargs, bi)
				}
				// Unfused: conv2d → add → relu (→ concat).
				y := b.op(ir.OpConv2D, conv, cargs...)
				var r int
				if residual {
					r = b.input("r", s.n, s.o, ho, wo)
					fargs = append(fargs, r)
					y = b.op(ir.OpAdd, nil, y, r)
				}
				if relu {
					y = b.op(ir.OpReLU, nil, y)
				}
				if into {
					// The destination is concat(pre, old, post) and the write
					// replaces old. Vary where: at the start, the end and
					// inside.
					pre, post := []int{0, 2, 3}[si%3], []int{4, 0, 1}[si%3]
					var parts, dparts []int
					if pre > 0 {
						p := b.input("pre", s.n, pre, ho, wo)
						parts, dparts = append(parts, p), append(dparts, p)
					}
					parts = append(parts, y)
					dparts = append(dparts, b.input("old", s.n, s.o, ho, wo))
					if post > 0 {
						p := b.input("post", s.n, post, ho, wo)
						parts, dparts = append(parts, p), append(dparts, p)
					}
					y = b.op(ir.OpConcat, nil, parts...)
					d := b.op(ir.OpConcat, nil, dparts...)
					fargs = append(fargs, d)
					fattrs["offset"] = pre
				}
				f := b.op(ir.OpFusedConv, fattrs, fargs...)
				for _, threads := range []int{1, 2} {
					res := b.run(threads, f, y)
					what := fmt.Sprintf("threads=%d", threads)
					closeTo(t, what, res.Outputs[0], res.Outputs[1], 1e-6)
					sameBits(t, what, res.Outputs[0], res.Outputs[1])
				}
				if !into && !residual {
					want := refConv(b.val(x), b.val(w), nil, s.stride, s.pad, s.groups)
					if bias {
						want = refConv(b.val(x), b.val(w), b.val(fargs[2]), s.stride, s.pad, s.groups)
					}
					if relu {
						for i, v := range want.data {
							want.data[i] = math.Max(v, 0)
						}
					}
					checkClose(t, "vs float64 reference", b.run(2, f).Outputs[0], want, tol)
				}
			})
		}
	}
}

// TestPoolInto compares maxpool and avgpool writing into a destination with
// concat, for writes at the start, the end and inside the destination.
func TestPoolInto(t *testing.T) {
	for _, kind := range []string{ir.OpMaxPool, ir.OpAvgPool} {
		for _, pp := range [][2]int{{0, 3}, {2, 0}, {1, 2}} {
			pre, post := pp[0], pp[1]
			t.Run(fmt.Sprintf("%s/pre=%d/post=%d", kind, pre, post), func(t *testing.T) {
				b := newBuilder(t, int64(pre*10+post))
				attrs := func(off int) ir.Attrs {
					a := ir.Attrs{"kernel": []int{3, 2}, "stride": []int{2, 1}, "pad": []int{1, 1}}
					if off >= 0 {
						a["offset"] = off
					}
					if kind == ir.OpAvgPool {
						a["count_include_pad"] = pre == 1
					}
					return a
				}
				x := b.input("x", 3, 4, 9, 7)
				y := b.op(kind, attrs(-1), x)
				sh := b.typ(y).Shape
				var parts, dparts []int
				if pre > 0 {
					p := b.input("pre", 3, pre, sh[2], sh[3])
					parts, dparts = append(parts, p), append(dparts, p)
				}
				parts = append(parts, y)
				dparts = append(dparts, b.input("old", sh...))
				if post > 0 {
					p := b.input("post", 3, post, sh[2], sh[3])
					parts, dparts = append(parts, p), append(dparts, p)
				}
				want := b.op(ir.OpConcat, nil, parts...)
				got := b.op(kind, attrs(pre), x, b.op(ir.OpConcat, nil, dparts...))
				for _, threads := range []int{1, 2} {
					res := b.run(threads, got, want)
					sameBits(t, fmt.Sprintf("threads=%d", threads), res.Outputs[0], res.Outputs[1])
				}
			})
		}
	}
}

// TestIntoChain builds a concatenation from writes of fused_conv, maxpool and
// avgpool into an empty tensor, at offsets in no particular order, and checks
// it against concat; the writes must happen in place.
func TestIntoChain(t *testing.T) {
	b := newBuilder(t, 11)
	x := b.input("x", 2, 5, 9, 8)
	w := b.param("w", -1, 1, 6, 5, 3, 3)
	bias := b.param("b", -1, 1, 6)
	// Add fills in defaults, so every node gets its own attribute map.
	win := func() ir.Attrs { return ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}} }
	conv := ir.Attrs{"stride": []int{2, 2}, "pad": []int{1, 1}}

	// Plain: concat(conv, avgpool, maxpool) = channels [0,6), [6,11), [11,16).
	c := b.op(ir.OpConv2D, conv, x, w, bias)
	ap := b.op(ir.OpAvgPool, win(), x)
	mp := b.op(ir.OpMaxPool, win(), x)
	want := b.op(ir.OpConcat, nil, c, ap, mp)

	e := b.g.MustAdd(&ir.Node{Op: ir.OpEmpty, Type: ir.Type{DType: ir.F32, Shape: []int{2, 16, 5, 4}}})
	w1 := b.op(ir.OpMaxPool, ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}, "offset": 11}, x, e)
	w2 := b.op(ir.OpFusedConv, ir.Attrs{"stride": []int{2, 2}, "pad": []int{1, 1}, "bias": true, "into": true, "offset": 0}, x, w, bias, w1)
	w3 := b.op(ir.OpAvgPool, ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}, "offset": 6}, x, w2)

	var inPlace []int
	inPlaceHook = func(i int) { inPlace = append(inPlace, i) }
	defer func() { inPlaceHook = nil }()
	for _, threads := range []int{1, 2} {
		inPlace = nil
		res := b.run(threads, w3, want)
		sameBits(t, fmt.Sprintf("threads=%d", threads), res.Outputs[0], res.Outputs[1])
		if diff := cmp.Diff([]int{w1, w2, w3}, inPlace); diff != "" {
			t.Errorf("in-place writes (-want +got):\n%s", diff)
		}
	}
}

// TestIntoValueSemantics checks that a destination that is still referenced
// (used again, kept, an input, or sharing storage with a live value) is
// copied, not overwritten.
func TestIntoValueSemantics(t *testing.T) {
	win := func(off int) ir.Attrs {
		return ir.Attrs{"kernel": []int{2, 2}, "stride": []int{2, 2}, "offset": off}
	}
	t.Run("two writes into one destination", func(t *testing.T) {
		b := newBuilder(t, 1)
		x := b.input("x", 1, 2, 4, 4)
		y := b.input("y", 1, 2, 4, 4)
		e := b.g.MustAdd(&ir.Node{Op: ir.OpEmpty, Type: ir.Type{DType: ir.F32, Shape: []int{1, 5, 2, 2}}})
		w1 := b.op(ir.OpMaxPool, win(0), x, e)
		w2 := b.op(ir.OpAvgPool, win(3), y, e)
		zero := b.op(ir.OpMaxPool, ir.Attrs{"kernel": []int{2, 2}, "stride": []int{2, 2}}, b.input("z", 1, 1, 4, 4))
		b.inputs["z"] = tensor.New(1, 1, 4, 4)
		want1 := b.op(ir.OpConcat, nil, b.op(ir.OpMaxPool, win(0), x), zero, zero, zero)
		want2 := b.op(ir.OpConcat, nil, zero, zero, zero, b.op(ir.OpAvgPool, win(0), y))
		res := b.run(1, w1, w2, want1, want2)
		sameBits(t, "first write", res.Outputs[0], res.Outputs[2])
		sameBits(t, "second write", res.Outputs[1], res.Outputs[3])
	})
	t.Run("kept destination", func(t *testing.T) {
		b := newBuilder(t, 2)
		x := b.input("x", 1, 2, 4, 4)
		e := b.g.MustAdd(&ir.Node{Op: ir.OpEmpty, Type: ir.Type{DType: ir.F32, Shape: []int{1, 3, 2, 2}}})
		w1 := b.op(ir.OpMaxPool, win(1), x, e)
		b.g.Outputs = []int{w1}
		res, err := Run(b.g, b.params, b.inputs, Options{Keep: []int{e}})
		if err != nil {
			t.Fatal(err)
		}
		sameBits(t, "kept empty", res.Values[e], tensor.New(1, 3, 2, 2))
	})
	t.Run("input destination", func(t *testing.T) {
		b := newBuilder(t, 3)
		x := b.input("x", 1, 2, 4, 4)
		d := b.input("d", 1, 3, 2, 2)
		orig := &tensor.Tensor{Shape: []int{1, 3, 2, 2}, Data: append([]float32(nil), b.val(d).Data...)}
		w1 := b.op(ir.OpMaxPool, win(0), x, d)
		res := b.run(1, w1)
		sameBits(t, "input", b.val(d), orig)
		if got := res.Outputs[0].Data[2*2*2:]; !cmp.Equal(got, orig.Data[2*2*2:]) {
			t.Errorf("channel 2 = %v, want the destination's %v", got, orig.Data[2*2*2:])
		}
	})
	t.Run("destination shares storage with a live value", func(t *testing.T) {
		b := newBuilder(t, 4)
		x := b.input("x", 1, 2, 4, 4)
		e := b.g.MustAdd(&ir.Node{Op: ir.OpEmpty, Type: ir.Type{DType: ir.F32, Shape: []int{1, 3, 2, 2}}})
		v := b.op(ir.OpDropout, nil, e) // a view of e
		w1 := b.op(ir.OpMaxPool, win(0), x, v)
		later := b.op(ir.OpReLU, nil, e) // e is still live when w1 runs
		res := b.run(2, w1, later)
		sameBits(t, "relu(empty)", res.Outputs[1], tensor.New(1, 3, 2, 2))
	})
	t.Run("destination is also the convolution input", func(t *testing.T) {
		b := newBuilder(t, 5)
		x := b.input("x", 1, 3, 4, 4)
		r := b.op(ir.OpReLU, nil, x) // fresh storage, used twice by f only
		w := b.param("w", -1, 1, 2, 3, 3, 3)
		// 3×3, so that an aliased write would feed later GEMM tiles.
		f := b.op(ir.OpFusedConv, ir.Attrs{"pad": []int{1, 1}, "into": true, "offset": 1}, r, w, r)
		got := b.run(1, f).Outputs[0]
		rv := tensor.New(1, 3, 4, 4)
		for i, v := range b.val(x).Data {
			rv.Data[i] = max(v, 0)
		}
		// Channel 0 is r's channel 0; channels 1, 2 the convolution of r.
		sameBits(t, "channel 0", &tensor.Tensor{Shape: []int{16}, Data: got.Data[:16]}, &tensor.Tensor{Shape: []int{16}, Data: rv.Data[:16]})
		cw := refConv(rv, b.val(w), nil, []int{1, 1}, []int{1, 1}, 1)
		checkClose(t, "channels 1-2", &tensor.Tensor{Shape: cw.shape, Data: got.Data[16:]}, cw, tol)
	})
}

// TestFold compares the build-time folds with the unfolded graph.
func TestFold(t *testing.T) {
	for _, convBias := range []bool{false, true} {
		for _, eps := range []float64{1e-3, 1e-5} {
			t.Run(fmt.Sprintf("bias=%v/eps=%g", convBias, eps), func(t *testing.T) {
				b := newBuilder(t, int64(len(t.Name())))
				x := b.input("x", 2, 7, 9, 8)
				w := b.param("w", -0.5, 0.5, 11, 7, 3, 3)
				gamma := b.param("gamma", -1.5, 1.5, 11)
				beta := b.param("beta", -0.5, 0.5, 11)
				mean := b.param("mean", -0.5, 0.5, 11)
				vr := b.param("var", 0.001, 2, 11)
				pad := ir.Attrs{"pad": []int{1, 1}}
				cargs := []int{x, w}
				bargs := []int{gamma, beta, mean, vr}
				if convBias {
					cb := b.param("cb", -0.5, 0.5, 11)
					cargs = append(cargs, cb)
					bargs = append(bargs, cb)
				}
				bnAttrs := ir.Attrs{"eps": eps}
				unfolded := b.op(ir.OpReLU, nil, b.op(ir.OpBatchNorm, bnAttrs, append([]int{b.op(ir.OpConv2D, pad, cargs...)}, gamma, beta, mean, vr)...))
				// Own maps: creating the batchnorm fills its defaults
				// (relu) into bnAttrs, which the fold ops do not have.
				fw := b.op(ir.OpFoldBNWeight, ir.Attrs{"eps": eps}, w, gamma, vr)
				fb := b.op(ir.OpFoldBNBias, ir.Attrs{"eps": eps}, bargs...)
				folded := b.op(ir.OpFusedConv, ir.Attrs{"pad": []int{1, 1}, "bias": true, "relu": true}, x, fw, fb)

				// fold_scale: mul(conv(x, w) + b, c) = conv(x, c*w) + c*b.
				sb := b.param("sb", -0.5, 0.5, 11)
				scale := ir.Attrs{"c": 0.17}
				unscaled := b.op(ir.OpMul, scale, b.op(ir.OpConv2D, pad, x, w, sb))
				scaled := b.op(ir.OpConv2D, pad, x, b.op(ir.OpFoldScale, scale, w), b.op(ir.OpFoldScale, scale, sb))

				// batchnorm of zeros is its shift: without a conv bias
				// fold_bn_bias must equal it bitwise.
				z := b.input("zeros", 1, 11)
				b.inputs["zeros"] = tensor.New(1, 11)
				shift := b.op(ir.OpBatchNorm, bnAttrs, z, gamma, beta, mean, vr)

				res := b.run(2, unfolded, folded, unscaled, scaled, fw, fb, shift)
				closeTo(t, "fold_bn", res.Outputs[1], res.Outputs[0], tol)
				closeTo(t, "fold_scale", res.Outputs[3], res.Outputs[2], tol)
				if !convBias {
					sameBits(t, "fold_bn_bias vs batchnorm shift", res.Outputs[5], &tensor.Tensor{Shape: []int{11}, Data: res.Outputs[6].Data})
				}
				// The folds themselves, against float64 formulas.
				wantW, wantB := newRef(11, 7, 3, 3), newRef(11)
				for o := 0; o < 11; o++ {
					s := float64(b.val(gamma).Data[o]) / math.Sqrt(float64(b.val(vr).Data[o])+eps)
					for i := 0; i < 63; i++ {
						wantW.data[o*63+i] = float64(b.val(w).Data[o*63+i]) * s
					}
					cb := 0.0
					if convBias {
						cb = float64(b.val(bargs[4]).Data[o])
					}
					wantB.data[o] = (cb-float64(b.val(mean).Data[o]))*s + float64(b.val(beta).Data[o])
				}
				checkClose(t, "fold_bn_weight", res.Outputs[4], wantW, 1e-7)
				checkClose(t, "fold_bn_bias", res.Outputs[5], wantB, 1e-7)
			})
		}
	}
}

// TestReorderRoundTrip converts NCHW → NCHW16c → NCHW8c → NCHW and checks
// the blocked values element by element against the layout's definition.
func TestReorderRoundTrip(t *testing.T) {
	for _, c := range []int{3, 16, 20, 35} {
		t.Run(fmt.Sprintf("C=%d", c), func(t *testing.T) {
			b := newBuilder(t, int64(c))
			x := b.input("x", 2, c, 5, 3)
			r16 := b.op(ir.OpReorder, ir.Attrs{"layout": "NCHW16c"}, x)
			r8 := b.op(ir.OpReorder, ir.Attrs{"layout": "NCHW8c"}, r16)
			back := b.op(ir.OpReorder, ir.Attrs{"layout": ""}, r8)
			back16 := b.op(ir.OpReorder, nil, r16)
			res := b.run(2, back, r16, r8, back16)
			xv := b.val(x)
			sameBits(t, "round trip via NCHW8c", res.Outputs[0], xv)
			sameBits(t, "round trip", res.Outputs[3], xv)
			for i, blk := range []int{16, 8} {
				got := res.Outputs[1+i]
				cb := (c + blk - 1) / blk
				if want := []int{2, cb, 5, 3, blk}; !ir.ShapeEqual(got.Shape, want) {
					t.Fatalf("NCHW%dc: shape %v, want %v", blk, got.Shape, want)
				}
				for j, v := range got.Data {
					idx := unravel(j, got.Shape) // n, cb, h, w, ci
					ch := idx[1]*blk + idx[4]
					want := float32(0)
					if ch < c {
						want = xv.Data[ravel([]int{idx[0], ch, idx[2], idx[3]}, xv.Shape)]
					}
					if math.Float32bits(v) != math.Float32bits(want) {
						t.Fatalf("NCHW%dc%v = %v, want %v", blk, idx, v, want)
					}
				}
				l, err := ToLogical(got, b.typ(r16+i))
				if err != nil {
					t.Fatal(err)
				}
				sameBits(t, "ToLogical", l, xv)
				p, err := ToPhysical(xv, b.typ(r16+i))
				if err != nil {
					t.Fatal(err)
				}
				sameBits(t, "ToPhysical", p, got)
			}
		})
	}
}

// TestPackWeight checks pack_weight element by element against the
// definition of OIhw{c}i{c}o.
func TestPackWeight(t *testing.T) {
	for _, s := range [][]int{{3, 5, 3, 3}, {16, 16, 1, 1}, {20, 35, 1, 7}, {9, 17, 2, 3}} {
		for _, blk := range []int{8, 16} {
			t.Run(fmt.Sprintf("%s/%d", ir.ShapeString(s), blk), func(t *testing.T) {
				b := newBuilder(t, int64(blk))
				w := b.param("w", -1, 1, s...)
				layout := fmt.Sprintf("OIhw%di%do", blk, blk)
				p := b.op(ir.OpPackWeight, ir.Attrs{"layout": layout}, w)
				got := b.run(1, p).Outputs[0]
				ob, ib := (s[0]+blk-1)/blk, (s[1]+blk-1)/blk
				if want := []int{ob, ib, s[2], s[3], blk, blk}; !ir.ShapeEqual(got.Shape, want) {
					t.Fatalf("shape %v, want %v", got.Shape, want)
				}
				wv := b.val(w)
				for j, v := range got.Data {
					idx := unravel(j, got.Shape) // O/c, I/c, y, x, i, o
					o, i := idx[0]*blk+idx[5], idx[1]*blk+idx[4]
					want := float32(0)
					if o < s[0] && i < s[1] {
						want = wv.Data[ravel([]int{o, i, idx[2], idx[3]}, s)]
					}
					if math.Float32bits(v) != math.Float32bits(want) {
						t.Fatalf("%s%v = %v, want %v", layout, idx, v, want)
					}
				}
				l, err := ToLogical(got, b.typ(p))
				if err != nil {
					t.Fatal(err)
				}
				sameBits(t, "ToLogical", l, wv)
			})
		}
	}
}

// blockedNet builds the same network twice, plain and at layout NCHW8c with
// packed weights: conv (fused bias+relu) → maxpool, a 1×1 fused conv with a
// residual, and a concatenation built by writes into an empty destination
// (fused_conv and avgpool at out-of-order offsets) vs concat. It returns the
// plain and blocked outputs and kept intermediate pairs.
func blockedNet(t testing.TB) (b *builder, plain, blocked []int) {
	b = newBuilder(t, 77)
	x := b.input("x", 2, 5, 13, 11)
	w1 := b.param("w1", -0.5, 0.5, 13, 5, 3, 3)
	b1 := b.param("b1", -0.5, 0.5, 13)
	w2 := b.param("w2", -0.5, 0.5, 13, 13, 1, 1)
	w3 := b.param("w3", -0.5, 0.5, 6, 13, 3, 3)
	pool := func() ir.Attrs { return ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}} }
	avg := ir.Attrs{"kernel": []int{3, 3}, "pad": []int{1, 1}, "count_include_pad": false}

	// Plain.
	c1 := b.op(ir.OpFusedConv, ir.Attrs{"pad": []int{1, 1}, "bias": true, "relu": true}, x, w1, b1)
	m1 := b.op(ir.OpMaxPool, pool(), c1)
	c2 := b.op(ir.OpFusedConv, ir.Attrs{"residual": true, "relu": true}, m1, w2, m1)
	c3 := b.op(ir.OpConv2D, ir.Attrs{"pad": []int{1, 1}}, c2, w3)
	a3 := b.op(ir.OpAvgPool, avg, c2)
	cat := b.op(ir.OpConcat, nil, a3, c3)
	out := b.op(ir.OpSoftmax, nil, b.op(ir.OpFlatten, nil, b.op(ir.OpGlobalAvgPool, nil, cat)))
	plain = []int{c1, m1, c2, cat, out}

	// Blocked.
	const l = "NCHW8c"
	xb := b.op(ir.OpReorder, ir.Attrs{"layout": l}, x)
	pw1 := b.op(ir.OpPackWeight, ir.Attrs{"layout": "OIhw8i8o"}, w1)
	pw2 := b.op(ir.OpPackWeight, ir.Attrs{"layout": "OIhw8i8o"}, w2)
	pw3 := b.op(ir.OpPackWeight, ir.Attrs{"layout": "OIhw8i8o"}, w3)
	bc1 := b.opAt(l, ir.OpFusedConv, ir.Attrs{"pad": []int{1, 1}, "bias": true, "relu": true}, xb, pw1, b1)
	bm1 := b.opAt(l, ir.OpMaxPool, pool(), bc1)
	bc2 := b.opAt(l, ir.OpFusedConv, ir.Attrs{"residual": true, "relu": true}, bm1, pw2, bm1)
	e := b.g.MustAdd(&ir.Node{Op: ir.OpEmpty, Type: ir.Type{DType: ir.F32, Shape: b.typ(cat).Shape, Layout: ir.MustParseLayout(l)}})
	wc3 := b.opAt(l, ir.OpFusedConv, ir.Attrs{"pad": []int{1, 1}, "into": true, "offset": 13}, bc2, pw3, e)
	wa3 := b.opAt(l, ir.OpAvgPool, ir.Attrs{"kernel": []int{3, 3}, "pad": []int{1, 1}, "count_include_pad": false, "offset": 0}, bc2, wc3)
	// flatten reads a plain value (the op table's rule): reorder first.
	bg := b.op(ir.OpReorder, ir.Attrs{"layout": ""}, b.op(ir.OpGlobalAvgPool, nil, wa3))
	bout := b.op(ir.OpSoftmax, nil, b.op(ir.OpFlatten, nil, bg))
	back := b.op(ir.OpReorder, ir.Attrs{"layout": ""}, bm1)
	blocked = []int{bc1, bm1, bc2, wa3, bout, back}
	return b, plain, blocked
}

func TestBlockedGraph(t *testing.T) {
	b, plain, blocked := blockedNet(t)
	b.g.Outputs = []int{plain[len(plain)-1], blocked[4], blocked[5]}
	keep := append(append([]int(nil), plain...), blocked...)
	var first *Result
	for _, threads := range []int{1, 2, 3} {
		res, err := Run(b.g, b.params, b.inputs, Options{Threads: threads, Keep: keep})
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = res
		} else if diff := cmp.Diff(first, res); diff != "" {
			t.Fatalf("Threads=%d differs from Threads=1:\n%s", threads, diff)
		}
	}
	res := first
	sameBits(t, "softmax", res.Outputs[1], res.Outputs[0])
	sameBits(t, "reorder out of maxpool", res.Outputs[2], res.Values[plain[1]])
	for i, p := range plain[:4] {
		bv := res.Values[blocked[i]]
		typ := b.typ(blocked[i])
		want, _ := PhysicalShape(typ)
		if !ir.ShapeEqual(bv.Shape, want) {
			t.Fatalf("%%%d: shape %v, want physical %v", blocked[i], bv.Shape, want)
		}
		l, err := ToLogical(bv, typ)
		if err != nil {
			t.Fatal(err)
		}
		sameBits(t, fmt.Sprintf("%%%d vs %%%d", blocked[i], p), l, res.Values[p])
		// Padding lanes are zero.
		c := typ.Shape[1]
		for j, v := range bv.Data {
			idx := unravel(j, bv.Shape)
			if idx[1]*8+idx[4] >= c && math.Float32bits(v) != 0 {
				t.Fatalf("%%%d: padding lane %v = %v", blocked[i], idx, v)
			}
		}
	}
}

// TestBlockedFeed feeds an input and a param in physical layouts and returns
// a blocked output.
func TestBlockedFeed(t *testing.T) {
	b := newBuilder(t, 8)
	x := b.input("x", 1, 11, 6, 5)
	w := b.param("w", -1, 1, 9, 11, 3, 3)
	ref := b.op(ir.OpConv2D, ir.Attrs{"pad": []int{1, 1}}, x, w)

	xt := ir.Type{DType: ir.F32, Shape: []int{1, 11, 6, 5}, Layout: ir.NCHWc(16)}
	wt := ir.Type{DType: ir.F32, Shape: []int{9, 11, 3, 3}, Layout: ir.OIhwIiOo(16)}
	xb := b.g.MustAdd(&ir.Node{Op: ir.OpInput, Name: "xb", Type: xt})
	wb := b.g.MustAdd(&ir.Node{Op: ir.OpParam, Name: "wb", Type: wt})
	var err error
	if b.inputs["xb"], err = ToPhysical(b.val(x), xt); err != nil {
		t.Fatal(err)
	}
	if b.params["wb"], err = ToPhysical(b.val(w), wt); err != nil {
		t.Fatal(err)
	}
	y := b.opAt("NCHW16c", ir.OpConv2D, ir.Attrs{"pad": []int{1, 1}}, xb, wb)
	res := b.run(2, ref, y)
	got, err := ToLogical(res.Outputs[1], b.typ(y))
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "blocked conv", got, res.Outputs[0])
	if _, err := ToLogical(res.Outputs[0], b.typ(y)); err == nil {
		t.Errorf("ToLogical accepted a logical tensor as physical")
	}
	if _, err := ToPhysical(res.Outputs[1], b.typ(y)); err == nil {
		t.Errorf("ToPhysical accepted a physical tensor as logical")
	}
	if _, err := ToLogical(res.Outputs[0], ir.Type{DType: ir.F32, Shape: []int{1, 9, 6, 5}, Layout: ir.Layout{Kind: 7, Block: 1}}); err == nil {
		t.Errorf("ToLogical accepted layout NHWC")
	}
}
