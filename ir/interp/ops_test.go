package interp

import (
	"fmt"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// The references below are deliberately naive float64 loops that follow the
// op definitions literally.

func refConv(x, w *tensor.Tensor, bias *tensor.Tensor, stride, pad []int, groups int) *ref {
	n, c, h, wd := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	o, cg, kh, kw := w.Shape[0], w.Shape[1], w.Shape[2], w.Shape[3]
	ho := (h+2*pad[0]-kh)/stride[0] + 1
	wo := (wd+2*pad[1]-kw)/stride[1] + 1
	og := o / groups
	out := newRef(n, o, ho, wo)
	for b := 0; b < n; b++ {
		for oc := 0; oc < o; oc++ {
			g := oc / og
			for oy := 0; oy < ho; oy++ {
				for ox := 0; ox < wo; ox++ {
					s := 0.0
					if bias != nil {
						s = float64(bias.Data[oc])
					}
					for ic := 0; ic < cg; ic++ {
						for ky := 0; ky < kh; ky++ {
							for kx := 0; kx < kw; kx++ {
								iy, ix := oy*stride[0]-pad[0]+ky, ox*stride[1]-pad[1]+kx
								if iy < 0 || iy >= h || ix < 0 || ix >= wd {
									continue
								}
								xv := x.Data[((b*c+g*cg+ic)*h+iy)*wd+ix]
								wv := w.Data[((oc*cg+ic)*kh+ky)*kw+kx]
								s += float64(xv) * float64(wv)
							}
						}
					}
					out.data[((b*o+oc)*ho+oy)*wo+ox] = s
				}
			}
		}
	}
	return out
}

func TestConv2D(t *testing.T) {
	type tc struct {
		name        string
		n, c, h, w  int
		o, kh, kw   int
		stride, pad []int
		groups      int
		bias        bool
	}
	cases := []tc{
		{"1x1/direct", 1, 7, 5, 9, 11, 1, 1, []int{1, 1}, []int{0, 0}, 1, false},
		{"1x1/direct/bias/batch3", 3, 6, 4, 7, 9, 1, 1, []int{1, 1}, []int{0, 0}, 1, true},
		{"1x1/stride2", 1, 5, 9, 6, 4, 1, 1, []int{2, 2}, []int{0, 0}, 1, true},
		{"1x1/pad1", 1, 3, 5, 4, 6, 1, 1, []int{1, 1}, []int{1, 1}, 1, false},
		{"1x1/groups2", 3, 8, 5, 3, 6, 1, 1, []int{1, 1}, []int{0, 0}, 2, true},
		{"3x3/pad1", 1, 6, 11, 8, 10, 3, 3, []int{1, 1}, []int{1, 1}, 1, false},
		{"3x3/pad0", 3, 5, 9, 7, 8, 3, 3, []int{1, 1}, []int{0, 0}, 1, true},
		{"3x3/stride2/pad0", 1, 4, 13, 10, 7, 3, 3, []int{2, 2}, []int{0, 0}, 1, false},
		{"3x3/stride2/pad1/batch3", 3, 4, 10, 13, 5, 3, 3, []int{2, 2}, []int{1, 1}, 1, true},
		{"3x3/pad3", 1, 3, 4, 6, 5, 3, 3, []int{1, 1}, []int{3, 3}, 1, true},
		{"3x3/groups2/pad1", 3, 6, 9, 7, 10, 3, 3, []int{1, 1}, []int{1, 1}, 2, true},
		{"3x3/groups2/stride2", 1, 4, 9, 8, 6, 3, 3, []int{2, 2}, []int{0, 0}, 2, false},
		{"1x7/pad0,3", 1, 5, 9, 7, 6, 1, 7, []int{1, 1}, []int{0, 3}, 1, false},
		{"7x1/pad3,0", 3, 5, 9, 7, 6, 7, 1, []int{1, 1}, []int{3, 0}, 1, true},
		{"1x3/pad0,1", 1, 6, 5, 7, 9, 1, 3, []int{1, 1}, []int{0, 1}, 1, true},
		{"3x1/pad1,0", 3, 6, 5, 7, 9, 3, 1, []int{1, 1}, []int{1, 0}, 1, false},
		{"5x5/pad2", 1, 4, 9, 11, 5, 5, 5, []int{1, 1}, []int{2, 2}, 1, true},
		{"5x5/stride2/pad0", 3, 3, 12, 9, 4, 5, 5, []int{2, 2}, []int{0, 0}, 1, false},
		{"7x7/stride2/pad3", 1, 3, 15, 12, 8, 7, 7, []int{2, 2}, []int{3, 3}, 1, true},
		{"3x3/stride1,2/pad1,0", 1, 4, 8, 11, 5, 3, 3, []int{1, 2}, []int{1, 0}, 1, true},
		// Large enough for several K blocks (K = 576 > kcBlock), several M and
		// N tiles, and ragged edges in every dimension.
		{"3x3/big", 2, 64, 23, 19, 37, 3, 3, []int{1, 1}, []int{1, 1}, 1, true},
		{"1x1/big/direct", 1, 300, 17, 15, 131, 1, 1, []int{1, 1}, []int{0, 0}, 1, false},
		{"3x3/big/groups2/stride2", 1, 96, 17, 21, 34, 3, 3, []int{2, 2}, []int{0, 0}, 2, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := newBuilder(t, int64(len(c.name)*1000+c.c))
			x := b.input("x", c.n, c.c, c.h, c.w)
			w := b.param("w", -1, 1, c.o, c.c/c.groups, c.kh, c.kw)
			args := []int{x, w}
			var bias *tensor.Tensor
			if c.bias {
				args = append(args, b.param("b", -1, 1, c.o))
				bias = b.val(args[2])
			}
			y := b.op(ir.OpConv2D, ir.Attrs{"stride": c.stride, "pad": c.pad, "groups": c.groups}, args...)
			for _, threads := range []int{1, 2} {
				res := b.run(threads, y)
				checkClose(t, fmt.Sprintf("threads=%d", threads), res.Outputs[0],
					refConv(b.val(x), b.val(w), bias, c.stride, c.pad, c.groups), tol)
			}
		})
	}
}

func TestDense(t *testing.T) {
	cases := []struct {
		n, i, o int
		bias    bool
	}{{1, 7, 3, true}, {3, 300, 37, true}, {2, 1536, 131, false}, {5, 16, 200, true}}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%dx%d->%d/bias=%v", c.n, c.i, c.o, c.bias), func(t *testing.T) {
			b := newBuilder(t, int64(c.i*7+c.o))
			x := b.input("x", c.n, c.i)
			w := b.param("w", -1, 1, c.o, c.i)
			args := []int{x, w}
			if c.bias {
				args = append(args, b.param("b", -1, 1, c.o))
			}
			y := b.op(ir.OpDense, nil, args...)
			want := newRef(c.n, c.o)
			xv, wv := b.val(x), b.val(w)
			for n := 0; n < c.n; n++ {
				for o := 0; o < c.o; o++ {
					s := 0.0
					if c.bias {
						s = float64(b.val(args[2]).Data[o])
					}
					for i := 0; i < c.i; i++ {
						s += float64(xv.Data[n*c.i+i]) * float64(wv.Data[o*c.i+i])
					}
					want.data[n*c.o+o] = s
				}
			}
			checkClose(t, "dense", b.run(2, y).Outputs[0], want, tol)
		})
	}
}

func TestBatchNorm(t *testing.T) {
	for _, shape := range [][]int{{3, 5, 7, 4}, {1, 6, 1, 9}, {4, 11}} {
		for _, eps := range []float64{1e-3, 1e-5} {
			t.Run(fmt.Sprintf("%s/eps=%g", ir.ShapeString(shape), eps), func(t *testing.T) {
				b := newBuilder(t, int64(len(shape)))
				c := shape[1]
				x := b.input("x", shape...)
				w := b.param("bn.weight", 0.5, 1.5, c)
				bi := b.param("bn.bias", -0.5, 0.5, c)
				m := b.param("bn.running_mean", -0.5, 0.5, c)
				v := b.param("bn.running_var", 0.001, 2, c)
				y := b.op(ir.OpBatchNorm, ir.Attrs{"eps": eps}, x, w, bi, m, v)
				xv := b.val(x)
				want := newRef(shape...)
				inner := len(xv.Data) / (shape[0] * c)
				for i, xi := range xv.Data {
					ch := i / inner % c
					want.data[i] = (float64(xi)-float64(b.val(m).Data[ch]))/
						math.Sqrt(float64(b.val(v).Data[ch])+eps)*float64(b.val(w).Data[ch]) +
						float64(b.val(bi).Data[ch])
				}
				checkClose(t, "batchnorm", b.run(2, y).Outputs[0], want, tol)
			})
		}
	}
}

func TestElementwise(t *testing.T) {
	shape := []int{3, 4, 5, 7}
	b := newBuilder(t, 1)
	x := b.input("x", shape...)
	x2 := b.input("y", shape...)
	relu := b.op(ir.OpReLU, nil, x)
	add := b.op(ir.OpAdd, nil, x, x2)
	mul := b.op(ir.OpMul, ir.Attrs{"c": 0.17}, x)
	drop := b.op(ir.OpDropout, ir.Attrs{"p": 0.2}, x)
	self := b.op(ir.OpAdd, nil, relu, relu)
	res := b.run(2, relu, add, mul, drop, self)
	xv, yv := b.val(x).Data, b.val(x2).Data
	want := make([][]float32, 5)
	for i := range want {
		want[i] = make([]float32, len(xv))
	}
	for i, v := range xv {
		want[0][i] = float32(math.Max(float64(v), 0))
		want[1][i] = v + yv[i]
		want[2][i] = float32(0.17) * v
		want[3][i] = v
		want[4][i] = want[0][i] + want[0][i]
	}
	for i, name := range []string{"relu", "add", "mul", "dropout", "relu+relu"} {
		got := res.Outputs[i]
		if !ir.ShapeEqual(got.Shape, shape) {
			t.Errorf("%s: shape %v", name, got.Shape)
		}
		if diff := cmp.Diff(want[i], got.Data); diff != "" {
			t.Errorf("%s: (-want +got)\n%s", name, diff)
		}
	}
}

func TestFlatten(t *testing.T) {
	b := newBuilder(t, 2)
	x := b.input("x", 3, 4, 2, 5)
	y := b.op(ir.OpFlatten, nil, x)
	got := b.run(1, y).Outputs[0]
	if diff := cmp.Diff(&tensor.Tensor{Shape: []int{3, 40}, Data: b.val(x).Data}, got); diff != "" {
		t.Errorf("flatten (-want +got)\n%s", diff)
	}
}

func TestConcat(t *testing.T) {
	cases := []struct {
		axis   int
		shapes [][]int
	}{
		{1, [][]int{{2, 3, 5, 4}, {2, 1, 5, 4}, {2, 6, 5, 4}}},
		{0, [][]int{{1, 3, 5, 4}, {3, 3, 5, 4}}},
		{2, [][]int{{2, 3, 2, 4}, {2, 3, 5, 4}}},
		{3, [][]int{{2, 3, 5, 1}, {2, 3, 5, 3}, {2, 3, 5, 2}}},
		{1, [][]int{{3, 7}, {3, 2}}},
		{1, [][]int{{1, 4, 3, 3}}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("axis%d/%d", c.axis, len(c.shapes)), func(t *testing.T) {
			b := newBuilder(t, int64(c.axis))
			var args []int
			for i, s := range c.shapes {
				args = append(args, b.input(fmt.Sprintf("x%d", i), s...))
			}
			y := b.op(ir.OpConcat, ir.Attrs{"axis": c.axis}, args...)
			got := b.run(2, y).Outputs[0]
			// Reference: element-by-element index arithmetic.
			want := make([]float32, len(got.Data))
			outShape := got.Shape
			for j := range want {
				idx := unravel(j, outShape)
				k := idx[c.axis]
				for _, a := range args {
					xs := b.val(a)
					if k < xs.Shape[c.axis] {
						idx[c.axis] = k
						want[j] = xs.Data[ravel(idx, xs.Shape)]
						break
					}
					k -= xs.Shape[c.axis]
				}
			}
			if diff := cmp.Diff(want, got.Data); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func unravel(i int, shape []int) []int {
	idx := make([]int, len(shape))
	for d := len(shape) - 1; d >= 0; d-- {
		idx[d] = i % shape[d]
		i /= shape[d]
	}
	return idx
}

func ravel(idx, shape []int) int {
	i := 0
	for d := range shape {
		i = i*shape[d] + idx[d]
	}
	return i
}

func refPool(x *tensor.Tensor, k, s, p []int, max, includePad bool) *ref {
	n, c, h, w := x.Shape[0], x.Shape[1], x.Shape[2], x.Shape[3]
	ho, wo := (h+2*p[0]-k[0])/s[0]+1, (w+2*p[1]-k[1])/s[1]+1
	out := newRef(n, c, ho, wo)
	for pl := 0; pl < n*c; pl++ {
		for oy := 0; oy < ho; oy++ {
			for ox := 0; ox < wo; ox++ {
				m, sum, cnt := math.Inf(-1), 0.0, 0
				for ky := 0; ky < k[0]; ky++ {
					for kx := 0; kx < k[1]; kx++ {
						iy, ix := oy*s[0]-p[0]+ky, ox*s[1]-p[1]+kx
						if iy < 0 || iy >= h || ix < 0 || ix >= w {
							continue
						}
						v := float64(x.Data[(pl*h+iy)*w+ix])
						m = math.Max(m, v)
						sum += v
						cnt++
					}
				}
				r := m
				if !max {
					if includePad {
						cnt = k[0] * k[1]
					}
					r = sum / float64(cnt)
				}
				out.data[(pl*ho+oy)*wo+ox] = r
			}
		}
	}
	return out
}

func TestPool(t *testing.T) {
	cases := []struct {
		shape   []int
		k, s, p []int
	}{
		{[]int{1, 3, 9, 7}, []int{3, 3}, []int{2, 2}, []int{0, 0}},
		{[]int{3, 4, 9, 7}, []int{3, 3}, []int{1, 1}, []int{1, 1}},
		{[]int{2, 2, 8, 11}, []int{2, 2}, []int{2, 2}, []int{0, 0}},
		{[]int{1, 3, 7, 9}, []int{3, 1}, []int{1, 1}, []int{1, 0}},
		{[]int{1, 2, 6, 5}, []int{1, 3}, []int{1, 2}, []int{0, 1}},
		{[]int{3, 2, 11, 10}, []int{5, 5}, []int{2, 2}, []int{2, 2}},
		{[]int{1, 2, 13, 12}, []int{7, 7}, []int{3, 2}, []int{3, 3}},
	}
	for _, c := range cases {
		for _, kind := range []string{"max", "avg/include_pad", "avg/exclude_pad"} {
			name := fmt.Sprintf("%s/%s/k%s/s%s/p%s", kind, ir.ShapeString(c.shape), ir.ShapeString(c.k), ir.ShapeString(c.s), ir.ShapeString(c.p))
			t.Run(name, func(t *testing.T) {
				b := newBuilder(t, int64(len(name)))
				x := b.input("x", c.shape...)
				attrs := ir.Attrs{"kernel": c.k, "stride": c.s, "pad": c.p}
				op := ir.OpMaxPool
				if kind != "max" {
					op = ir.OpAvgPool
					attrs["count_include_pad"] = kind == "avg/include_pad"
				}
				y := b.op(op, attrs, x)
				want := refPool(b.val(x), c.k, c.s, c.p, kind == "max", kind == "avg/include_pad")
				checkClose(t, kind, b.run(2, y).Outputs[0], want, tol)
			})
		}
	}
}

func TestMaxPoolNaNAndNegative(t *testing.T) {
	// All-negative input: padding (which never wins) must not produce 0.
	b := newBuilder(t, 3)
	x := b.input("x", 1, 1, 3, 4)
	b.inputs["x"] = &tensor.Tensor{Shape: []int{1, 1, 3, 4}, Data: []float32{
		float32(math.NaN()), -4, -3, -2,
		-6, -5, -1, -7,
		-8, -9, -10, -11}}
	y := b.op(ir.OpMaxPool, ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}}, x)
	got := b.run(1, y).Outputs[0].Data
	if len(got) != 4 || got[0] == got[0] || got[1] != -1 || got[2] != -5 || got[3] != -1 {
		t.Errorf("maxpool = %v, want [NaN -1 -5 -1]", got)
	}
}

func TestGlobalAvgPool(t *testing.T) {
	for _, shape := range [][]int{{3, 5, 7, 9}, {1, 3, 1, 1}, {2, 2, 147, 149}, {1, 4, 3, 5}} {
		t.Run(ir.ShapeString(shape), func(t *testing.T) {
			b := newBuilder(t, int64(shape[2]))
			// Offset data so that the mean is far from zero and rounding
			// errors of the sum show.
			x := b.input("x", shape...)
			xs := b.val(x)
			for i := range xs.Data {
				xs.Data[i] += 3
			}
			y := b.op(ir.OpGlobalAvgPool, nil, x)
			hw := shape[2] * shape[3]
			want := newRef(shape[0], shape[1], 1, 1)
			for p := range want.data {
				s := 0.0
				for _, v := range xs.Data[p*hw : (p+1)*hw] {
					s += float64(v)
				}
				want.data[p] = s / float64(hw)
			}
			checkClose(t, "global_avgpool", b.run(2, y).Outputs[0], want, tol)
		})
	}
}

func TestSoftmax(t *testing.T) {
	cases := []struct {
		shape []int
		axis  int
		scale float64
	}{
		{[]int{3, 10}, 1, 1},
		{[]int{3, 1000}, 1, 30},     // large logits: needs the max shift
		{[]int{4, 6}, 0, 1},         // reduce over the batch axis
		{[]int{2, 5, 3, 4}, 1, 100}, // channel softmax of an image
		{[]int{2, 3, 7}, 2, 1},
		{[]int{5, 1}, 1, 1},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/axis%d/x%g", ir.ShapeString(c.shape), c.axis, c.scale), func(t *testing.T) {
			b := newBuilder(t, int64(c.axis))
			x := b.input("x", c.shape...)
			xs := b.val(x)
			for i := range xs.Data {
				xs.Data[i] = float32(float64(xs.Data[i])*c.scale + 1000)
			}
			y := b.op(ir.OpSoftmax, ir.Attrs{"axis": c.axis}, x)
			got := b.run(2, y).Outputs[0]
			want := newRef(c.shape...)
			size := c.shape[c.axis]
			inner := 1
			for _, d := range c.shape[c.axis+1:] {
				inner *= d
			}
			for j := range want.data {
				base := j/(size*inner)*size*inner + j%inner
				m := math.Inf(-1)
				for i := 0; i < size; i++ {
					m = math.Max(m, float64(xs.Data[base+i*inner]))
				}
				s := 0.0
				for i := 0; i < size; i++ {
					s += math.Exp(float64(xs.Data[base+i*inner]) - m)
				}
				want.data[j] = math.Exp(float64(xs.Data[j])-m) / s
			}
			checkClose(t, "softmax", got, want, tol)
		})
	}
}
