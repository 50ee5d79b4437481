package interp

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// smallNet builds input → conv → batchnorm → relu → (maxpool, conv 1x1) →
// concat → global_avgpool → flatten → dense → softmax, and returns the builder
// and the node indices of conv, relu and softmax.
func smallNet(t testing.TB, h, w int) (b *builder, conv, relu, out int) {
	b = newBuilder(t, 42)
	x := b.input("image", 2, 16, h, w)
	cw := b.param("conv.weight", -0.2, 0.2, 48, 16, 3, 3)
	conv = b.op(ir.OpConv2D, ir.Attrs{"pad": []int{1, 1}}, x, cw)
	bn := b.op(ir.OpBatchNorm, ir.Attrs{"eps": 1e-3}, conv,
		b.param("bn.weight", 0.5, 1.5, 48), b.param("bn.bias", -0.1, 0.1, 48),
		b.param("bn.running_mean", -0.1, 0.1, 48), b.param("bn.running_var", 0.5, 1.5, 48))
	relu = b.op(ir.OpReLU, nil, bn)
	mp := b.op(ir.OpMaxPool, ir.Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}}, relu)
	c1 := b.op(ir.OpConv2D, ir.Attrs{"stride": []int{2, 2}}, relu, b.param("c1.weight", -0.2, 0.2, 40, 48, 3, 3), b.param("c1.bias", -0.1, 0.1, 40))
	cat := b.op(ir.OpConcat, ir.Attrs{"axis": 1}, mp, c1)
	gap := b.op(ir.OpGlobalAvgPool, nil, cat)
	fl := b.op(ir.OpFlatten, nil, gap)
	fc := b.op(ir.OpDense, nil, fl, b.param("fc.weight", -0.2, 0.2, 300, 88), b.param("fc.bias", -0.1, 0.1, 300))
	out = b.op(ir.OpSoftmax, nil, fc)
	b.g.Outputs = []int{out, fc}
	return b, conv, relu, out
}

func TestThreadsBitwiseIdentical(t *testing.T) {
	b, conv, relu, _ := smallNet(t, 37, 29)
	var first *Result
	for _, threads := range []int{1, 2, 3, 8} {
		res, err := Run(b.g, b.params, b.inputs, Options{Threads: threads, Keep: []int{conv, relu}})
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = res
			continue
		}
		if diff := cmp.Diff(first, res); diff != "" {
			t.Errorf("Threads=%d differs from Threads=1 (-1 +%d):\n%s", threads, threads, diff)
		}
	}
}

func TestKeepAndOutputs(t *testing.T) {
	b, conv, relu, _ := smallNet(t, 9, 7)
	res, err := Run(b.g, b.params, b.inputs, Options{Keep: []int{conv, relu, 0}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Outputs) != 2 || !ir.ShapeEqual(res.Outputs[0].Shape, []int{2, 300}) || !ir.ShapeEqual(res.Outputs[1].Shape, []int{2, 300}) {
		t.Fatalf("outputs %v", res.Outputs)
	}
	if len(res.Values) != 3 {
		t.Errorf("Values has %d entries, want 3", len(res.Values))
	}
	if got := res.Values[0]; got != b.inputs["image"] {
		t.Errorf("Values[0] is not the input tensor")
	}
	want := refConv(b.inputs["image"], b.params["conv.weight"], nil, []int{1, 1}, []int{1, 1}, 1)
	checkClose(t, "kept conv", res.Values[conv], want, tol)
	for i, v := range res.Values[relu].Data {
		if v < 0 {
			t.Fatalf("kept relu[%d] = %v", i, v)
		}
	}
	// Softmax rows sum to 1.
	for r := 0; r < 2; r++ {
		s := 0.0
		for _, v := range res.Outputs[0].Data[r*300 : (r+1)*300] {
			s += float64(v)
		}
		if math.Abs(s-1) > 1e-5 {
			t.Errorf("softmax row %d sums to %v", r, s)
		}
	}
	// Run must not modify its inputs or params.
	b2, _, _, _ := smallNet(t, 9, 7)
	if diff := cmp.Diff(b2.inputs, b.inputs); diff != "" {
		t.Errorf("inputs modified:\n%s", diff)
	}
	if diff := cmp.Diff(b2.params, b.params); diff != "" {
		t.Errorf("params modified:\n%s", diff)
	}
}

// TestDeadNodesSkipped checks that a value nobody needs is not computed: its
// param may then be any tensor of the right shape, and an output that is a
// param is returned as is.
func TestDeadNodesSkipped(t *testing.T) {
	b := newBuilder(t, 5)
	x := b.input("x", 1, 2, 3, 3)
	p := b.param("p", 0, 1, 4)
	b.op(ir.OpConv2D, nil, x, b.param("w", -1, 1, 3, 2, 1, 1)) // dead
	r := b.op(ir.OpReLU, nil, x)
	res := b.run(1, r, p)
	if res.Outputs[1] != b.params["p"] {
		t.Errorf("param output is not the param tensor")
	}
}

func TestErrors(t *testing.T) {
	build := func(t *testing.T) *builder {
		b := newBuilder(t, 7)
		x := b.input("image", 1, 3, 8, 6)
		w := b.param("features.0.conv.weight", -1, 1, 4, 3, 3, 3)
		y := b.op(ir.OpConv2D, nil, x, w)
		b.g.Outputs = []int{b.op(ir.OpReLU, nil, y)}
		return b
	}
	cases := []struct {
		name   string
		mutate func(b *builder) Options
		want   []string
	}{
		{"missing param", func(b *builder) Options {
			delete(b.params, "features.0.conv.weight")
			return Options{}
		}, []string{`missing param "features.0.conv.weight" (shape 4x3x3x3)`}},
		{"missing input", func(b *builder) Options {
			b.inputs = nil
			return Options{}
		}, []string{`missing input "image" (shape 1x3x8x6)`}},
		{"wrong input shape", func(b *builder) Options {
			b.inputs["image"] = tensor.New(1, 3, 6, 8)
			return Options{}
		}, []string{`input "image": shape 1x3x6x8, want 1x3x8x6`}},
		{"wrong param shape", func(b *builder) Options {
			b.params["features.0.conv.weight"] = tensor.New(4, 3, 3)
			return Options{}
		}, []string{`param "features.0.conv.weight": shape 4x3x3, want 4x3x3x3`}},
		{"short data", func(b *builder) Options {
			b.inputs["image"] = &tensor.Tensor{Shape: []int{1, 3, 8, 6}, Data: make([]float32, 10)}
			return Options{}
		}, []string{`input "image": shape 1x3x8x6 needs 144 values, tensor holds 10`}},
		{"unknown op", func(b *builder) Options {
			b.g.Nodes = append(b.g.Nodes, &ir.Node{Op: "winograd_conv", Args: []int{0, 1}})
			return Options{}
		}, []string{"%4: op winograd_conv not supported by the interpreter"}},
		{"unknown layout", func(b *builder) Options {
			b.g.Nodes[3].Type.Layout = ir.Layout{Kind: 7, Block: 1}
			return Options{}
		}, []string{`%3 relu: invalid layout layout(7,1)`}},
		{"weight layout without a block", func(b *builder) Options {
			b.g.Nodes[1].Type.Layout = ir.Layout{Kind: ir.LayoutOIhwIiOo}
			return Options{}
		}, []string{`%1 param: invalid layout layout(2,0)`}},
		{"blocked layout on a vector", func(b *builder) Options {
			b.g.Nodes = append(b.g.Nodes, &ir.Node{Op: ir.OpParam, Name: "v", Type: ir.Type{DType: ir.F32, Shape: []int{4}, Layout: ir.NCHWc(8)}})
			return Options{}
		}, []string{`%4 param: layout NCHW8c does not apply to f32[4]@NCHW8c`}},
		{"reorder attribute differs from type", func(b *builder) Options {
			b.g.Nodes = append(b.g.Nodes, &ir.Node{Op: ir.OpReorder, Args: []int{3}, Attrs: ir.Attrs{"layout": "NCHW16c"},
				Type: ir.Type{DType: ir.F32, Shape: []int{1, 4, 6, 4}, Layout: ir.NCHWc(8)}})
			return Options{}
		}, []string{`reorder: recorded type f32[1,4,6,4]@NCHW8c differs from inferred f32[1,4,6,4]@NCHW16c`}},
		{"reorder to a weight layout", func(b *builder) Options {
			b.g.Nodes = append(b.g.Nodes, &ir.Node{Op: ir.OpReorder, Args: []int{3}, Attrs: ir.Attrs{"layout": "OIhw8i8o"},
				Type: ir.Type{DType: ir.F32, Shape: []int{1, 4, 6, 4}, Layout: ir.OIhwIiOo(8)}})
			return Options{}
		}, []string{`%4 reorder: layout OIhw8i8o is not an activation layout`}},
		{"pack_weight to an activation layout", func(b *builder) Options {
			b.g.Nodes = append(b.g.Nodes, &ir.Node{Op: ir.OpPackWeight, Args: []int{1}, Attrs: ir.Attrs{"layout": "NCHW8c"},
				Type: ir.Type{DType: ir.F32, Shape: []int{4, 3, 3, 3}, Layout: ir.NCHWc(8)}})
			return Options{}
		}, []string{`%4 pack_weight: layout NCHW8c is not a weight layout`}},
		{"blocked input fed logical", func(b *builder) Options {
			b.g.Nodes = append(b.g.Nodes, &ir.Node{Op: ir.OpInput, Name: "blocked", Type: ir.Type{DType: ir.F32, Shape: []int{1, 3, 8, 6}, Layout: ir.NCHWc(8)}})
			b.inputs["blocked"] = tensor.New(1, 3, 8, 6)
			return Options{}
		}, []string{`input "blocked": shape 1x3x8x6, want 1x1x8x6x8 (physical layout of f32[1,3,8,6]@NCHW8c)`}},
		{"bf16", func(b *builder) Options {
			b.g.Nodes[1].Type.DType = ir.BF16
			return Options{}
		}, []string{"%1 param: dtype bf16 not supported by the interpreter"}},
		{"nil node", func(b *builder) Options {
			b.g.Nodes = append(b.g.Nodes, nil)
			return Options{}
		}, []string{"node %4 is nil"}},
		{"invalid graph: forward reference", func(b *builder) Options {
			b.g.Nodes[3].Args = []int{3}
			return Options{}
		}, []string{"relu: operand 0 refers to %3, which is not an earlier node"}},
		{"invalid graph: bad type", func(b *builder) Options {
			b.g.Nodes[2].Type.Shape = []int{1, 4, 6, 6}
			return Options{}
		}, []string{"conv2d: recorded type f32[1,4,6,6] differs from inferred f32[1,4,6,4]"}},
		{"invalid graph: no outputs", func(b *builder) Options {
			b.g.Outputs = nil
			return Options{}
		}, []string{"has no outputs"}},
		{"invalid graph: output out of range", func(b *builder) Options {
			b.g.Outputs = []int{99}
			return Options{}
		}, []string{"output %99 out of range"}},
		{"keep out of range", func(b *builder) Options {
			return Options{Keep: []int{-1}}
		}, []string{"Options.Keep: node %-1 out of range"}},
		{"negative threads", func(b *builder) Options {
			return Options{Threads: -2}
		}, []string{"Options.Threads -2 is negative"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := build(t)
			opt := c.mutate(b)
			res, err := Run(b.g, b.params, b.inputs, opt)
			if err == nil {
				t.Fatalf("Run succeeded (%v), want error containing %q", res, c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	if _, err := Run(nil, nil, nil, Options{}); err == nil {
		t.Errorf("Run(nil graph) succeeded")
	}
}

func TestSupports(t *testing.T) {
	forward := []string{ir.OpInput, ir.OpParam, ir.OpConv2D, ir.OpBatchNorm, ir.OpReLU, ir.OpAdd, ir.OpMul,
		ir.OpConcat, ir.OpMaxPool, ir.OpAvgPool, ir.OpGlobalAvgPool, ir.OpFlatten, ir.OpDense, ir.OpDropout, ir.OpSoftmax}
	for _, op := range forward {
		if !Supports(op) {
			t.Errorf("forward op %s is not supported", op)
		}
	}
	passes := []string{ir.OpFusedConv, ir.OpFoldBNWeight, ir.OpFoldBNBias, ir.OpFoldScale, ir.OpPackWeight, ir.OpReorder, ir.OpEmpty}
	for _, op := range passes {
		if !Supports(op) {
			t.Errorf("pass op %s is not supported", op)
		}
	}
	if Supports("winograd_conv") {
		t.Errorf("Supports(winograd_conv) = true")
	}
}

// TestRelease checks that intermediate values are released right after their
// last user, and that outputs and kept values are not.
func TestRelease(t *testing.T) {
	b := newBuilder(t, 9)
	x := b.input("x", 1, 2, 3, 4)
	r1 := b.op(ir.OpReLU, nil, x)               // used by m and a2
	m := b.op(ir.OpMul, ir.Attrs{"c": 2.0}, r1) // used by a1
	a1 := b.op(ir.OpAdd, nil, m, m)             // used by a2 (kept)
	a2 := b.op(ir.OpAdd, nil, a1, r1)           // output
	r2 := b.op(ir.OpReLU, nil, a2)              // output
	b.g.Outputs = []int{a2, r2}
	var order []string
	releaseHook = func(i int) { order = append(order, fmt.Sprintf("%%%d", i)) }
	defer func() { releaseHook = nil }()
	if _, err := Run(b.g, b.params, b.inputs, Options{Keep: []int{a1}}); err != nil {
		t.Fatal(err)
	}
	// x is released after r1 (its only user), m after a1, r1 after a2.
	want := []string{fmt.Sprintf("%%%d", x), fmt.Sprintf("%%%d", m), fmt.Sprintf("%%%d", r1)}
	if diff := cmp.Diff(want, order); diff != "" {
		t.Errorf("release order (-want +got):\n%s", diff)
	}
}
