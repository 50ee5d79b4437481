package ir

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// trainOps lists every op of ops_train.go.
var trainOps = []string{OpReLUGrad, OpConv2DGradInput, OpConv2DGradWeight, OpBiasGrad, OpBatchNormTrainGrad,
	OpMaxPoolGrad, OpAvgPoolGrad, OpGlobalAvgPoolGrad, OpDenseGradInput, OpDenseGradWeight, OpSlice, OpReshape,
	OpMul2, OpDropoutTrain, OpSoftmaxXent, OpSoftmaxXentGrad, OpRMSPropUpdate, OpRMSPropTFUpdate, OpSGDUpdate}

// trainGraph is a small hand-written training step (forward, loss, backward
// and optimizer updates) that uses every training op at least once.
func trainGraph(t testing.TB) *Graph {
	g := &Graph{Name: "train_step"}
	line := 0
	add := func(n *Node) int {
		line++
		n.Pos = Pos{File: "train.kiln", Line: line, Col: 3}
		id, err := g.Add(n)
		if err != nil {
			t.Fatalf("add %s: %v", n.Op, err)
		}
		return id
	}
	val := func(op, name string, shape ...int) int {
		return add(&Node{Op: op, Name: name, Type: Type{DType: F32, Shape: shape}})
	}
	res := func(n, k int) int { return add(&Node{Op: OpResult, Args: []int{n}, Attrs: Attrs{"index": k}}) }
	x := val(OpInput, "image", 2, 3, 9, 7)
	target := val(OpInput, "target", 2, 10)
	w := val(OpParam, "conv.weight", 8, 3, 3, 3)
	bnw, bnb := val(OpParam, "bn.weight", 8), val(OpParam, "bn.bias", 8)
	fcw, fcb := val(OpParam, "fc.weight", 10, 16), val(OpParam, "fc.bias", 10)
	sq, mom := val(OpParam, "opt.conv.weight.square_avg", 8, 3, 3, 3), val(OpParam, "opt.conv.weight.momentum", 8, 3, 3, 3)
	sq2, mom2 := val(OpParam, "opt.bn.weight.square_avg", 8), val(OpParam, "opt.bn.weight.momentum", 8)
	fcm := val(OpParam, "opt.fc.weight.momentum", 10, 16)
	conv := Attrs{"stride": []int{2, 1}, "pad": []int{1, 1}}
	c := add(&Node{Op: OpConv2D, Name: "conv", Args: []int{x, w}, Attrs: conv})
	bn := add(&Node{Op: OpBatchNormTrain, Name: "bn", Args: []int{c, bnw, bnb}, Attrs: Attrs{"eps": 1e-3}})
	y, mean, vr := res(bn, 0), res(bn, 1), res(bn, 2)
	r := add(&Node{Op: OpReLU, Args: []int{y}})
	mp := add(&Node{Op: OpMaxPool, Args: []int{r}, Attrs: Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}}})
	ap := add(&Node{Op: OpAvgPool, Args: []int{r}, Attrs: Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}, "count_include_pad": false}})
	cat := add(&Node{Op: OpConcat, Args: []int{mp, ap}})
	gp := add(&Node{Op: OpGlobalAvgPool, Args: []int{cat}})
	fl := add(&Node{Op: OpFlatten, Args: []int{gp}})
	dr := add(&Node{Op: OpDropoutTrain, Args: []int{fl}, Attrs: Attrs{"p": 0.2, "seed": 7}})
	drY, drMask := res(dr, 0), res(dr, 1)
	fc := add(&Node{Op: OpDense, Name: "fc", Args: []int{drY, fcw, fcb}})
	loss := add(&Node{Op: OpSoftmaxXent, Args: []int{fc, target}, Attrs: Attrs{"smoothing": 0.1}})
	// Backward.
	dfc := add(&Node{Op: OpSoftmaxXentGrad, Args: []int{fc, target}, Attrs: Attrs{"smoothing": 0.1}})
	dfcw := add(&Node{Op: OpDenseGradWeight, Args: []int{dfc, drY}})
	dfcb := add(&Node{Op: OpBiasGrad, Args: []int{dfc}})
	ddr := add(&Node{Op: OpDenseGradInput, Args: []int{dfc, fcw}})
	dfl := add(&Node{Op: OpMul, Args: []int{add(&Node{Op: OpMul2, Args: []int{ddr, drMask}})}, Attrs: Attrs{"c": 1.25}})
	dgp := add(&Node{Op: OpReshape, Args: []int{dfl}, Attrs: Attrs{"shape": []int{2, 16, 1, 1}}})
	dcat := add(&Node{Op: OpGlobalAvgPoolGrad, Args: []int{dgp}, Attrs: Attrs{"input_hw": []int{3, 4}}})
	dmp := add(&Node{Op: OpSlice, Args: []int{dcat}, Attrs: Attrs{"axis": 1, "offset": 0, "size": 8}})
	dap := add(&Node{Op: OpSlice, Args: []int{dcat}, Attrs: Attrs{"axis": 1, "offset": 8, "size": 8}})
	dr1 := add(&Node{Op: OpMaxPoolGrad, Args: []int{dmp, r}, Attrs: Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1}}})
	dr2 := add(&Node{Op: OpAvgPoolGrad, Args: []int{dap}, Attrs: Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "pad": []int{1, 1},
		"count_include_pad": false, "input_hw": []int{5, 7}}})
	dy := add(&Node{Op: OpReLUGrad, Args: []int{add(&Node{Op: OpAdd, Args: []int{dr1, dr2}}), r}})
	dbn := add(&Node{Op: OpBatchNormTrainGrad, Args: []int{dy, c, bnw, mean, vr}, Attrs: Attrs{"eps": 1e-3}})
	dc, dbnw := res(dbn, 0), res(dbn, 1)
	dw := add(&Node{Op: OpConv2DGradWeight, Args: []int{dc, x}, Attrs: Attrs{"stride": []int{2, 1}, "pad": []int{1, 1}, "kernel": []int{3, 3}}})
	dx := add(&Node{Op: OpConv2DGradInput, Args: []int{dc, w}, Attrs: Attrs{"stride": []int{2, 1}, "pad": []int{1, 1}, "input_hw": []int{9, 7}}})
	// Optimizer.
	rms := add(&Node{Op: OpRMSPropUpdate, Args: []int{w, dw, sq, mom}, Attrs: Attrs{"lr": 0.045, "alpha": 0.9, "eps": 1.0, "momentum": 0.9}})
	tf := add(&Node{Op: OpRMSPropTFUpdate, Args: []int{bnw, dbnw, sq2, mom2}, Attrs: Attrs{"lr": 0.045, "alpha": 0.9, "eps": 1.0, "momentum": 0.9}})
	sgd := add(&Node{Op: OpSGDUpdate, Args: []int{fcw, dfcw, fcm}, Attrs: Attrs{"lr": 0.1, "momentum": 0.9, "weight_decay": 4e-5}})
	g.Outputs = []int{loss, dx, dfcb}
	g.Updates = []Update{
		{Param: w, Value: res(rms, 0)}, {Param: sq, Value: res(rms, 1)}, {Param: mom, Value: res(rms, 2)},
		{Param: bnw, Value: res(tf, 0)}, {Param: sq2, Value: res(tf, 1)}, {Param: mom2, Value: res(tf, 2)},
		{Param: fcw, Value: res(sgd, 0)}, {Param: fcm, Value: res(sgd, 1)},
	}
	return g
}

// TestTrainOpsRoundTrip prints and parses a graph that uses every training op
// (and a rank-0 loss); the parsed graph must equal the original field for
// field and print identically.
func TestTrainOpsRoundTrip(t *testing.T) {
	g := trainGraph(t)
	if err := g.Verify(); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, n := range g.Nodes {
		used[n.Op] = true
	}
	for _, op := range trainOps {
		if !used[op] {
			t.Errorf("the test graph does not use %s", op)
		}
		if d := Lookup(op); d == nil || d.Doc == "" {
			t.Errorf("op %s is not registered with a Doc", op)
		}
	}
	text := g.String()
	for _, s := range []string{
		`%27 = softmax_xent (%26, %1) {smoothing=0.1} : f32[] loc("train.kiln":28:3)`,
		`%23 = dropout_train (%22) {p=0.2, seed=7} : (f32[2,16], f32[2,16])`,
		`%46 = conv2d_grad_input (%43, %2) {stride=[2,1], pad=[1,1], input_hw=[9,7]} : f32[2,3,9,7]`,
		`%45 = conv2d_grad_weight (%43, %0) {stride=[2,1], pad=[1,1], kernel=[3,3]} : f32[8,3,3,3]`,
		`%47 = rmsprop_update (%2, %45, %7, %8) {lr=0.045, alpha=0.9, eps=1.0, momentum=0.9} : (f32[8,3,3,3], f32[8,3,3,3], f32[8,3,3,3])`,
		`%36 = slice (%35) {size=8} : f32[2,8,3,4]`,
		`%49 = sgd_update (%5, %29, %11) {lr=0.1, momentum=0.9, weight_decay=4e-05} : (f32[10,16], f32[10,16])`,
	} {
		if !strings.Contains(text, s) {
			t.Errorf("printed graph lacks %q", s)
		}
	}
	back, err := Parse("train.ir", text)
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, text)
	}
	if d := cmp.Diff(g, back); d != "" {
		t.Fatalf("round trip differs (-want +got):\n%s", d)
	}
	if back.String() != text {
		t.Fatal("second print differs")
	}
	if t.Failed() {
		t.Log(text)
	}
}

// TestRankZeroType checks that a rank-0 type prints as f32[] and parses back,
// and that a printed rank-0 type that is not the inferred one is rejected.
func TestRankZeroType(t *testing.T) {
	g := trainGraph(t)
	text := g.String()
	bad := strings.Replace(text, "{smoothing=0.1} : f32[] loc", "{smoothing=0.1} : f32[1] loc", 1)
	if bad == text {
		t.Fatal("no rank-0 type in the printed graph")
	}
	if _, err := Parse("train.ir", bad); err == nil || !strings.Contains(err.Error(), "printed type f32[1] differs from inferred f32[]") {
		t.Errorf("Parse with a rank-1 loss type = %v, want a type mismatch", err)
	}
}

// TestTrainOpErrors adds ill-formed training nodes and expects an error at the
// node's position naming the problem.
func TestTrainOpErrors(t *testing.T) {
	in := func(name string, shape ...int) *Node {
		return &Node{Op: OpInput, Name: name, Type: Type{DType: F32, Shape: shape}}
	}
	pos := Pos{File: "bad.kiln", Line: 4, Col: 9}
	cases := []struct {
		name  string
		args  []*Node
		op    string
		attrs Attrs
		want  string
	}{
		{"conv grad input: input_hw does not give dy's size", []*Node{in("dy", 1, 4, 5, 5), in("w", 4, 3, 3, 3)},
			OpConv2DGradInput, Attrs{"input_hw": []int{9, 9}},
			"conv2d_grad_input: input 9x9 with kernel 3x3, stride [1 1], pad [0 0] gives output 7x7, but dy is 5x5"},
		{"conv grad input: channels", []*Node{in("dy", 1, 5, 5, 5), in("w", 4, 3, 3, 3)},
			OpConv2DGradInput, Attrs{"input_hw": []int{7, 7}}, "dy has 5 channels, weight 4x3x3x3 has 4 output channels"},
		{"conv grad input: missing input_hw", []*Node{in("dy", 1, 4, 5, 5), in("w", 4, 3, 3, 3)},
			OpConv2DGradInput, nil, `conv2d_grad_input: missing attribute "input_hw"`},
		{"conv grad weight: batch", []*Node{in("dy", 2, 4, 5, 5), in("x", 1, 3, 7, 7)},
			OpConv2DGradWeight, Attrs{"kernel": []int{3, 3}}, "dy has batch 2, input has 1"},
		{"conv grad weight: groups", []*Node{in("dy", 1, 4, 5, 5), in("x", 1, 3, 7, 7)},
			OpConv2DGradWeight, Attrs{"kernel": []int{3, 3}, "groups": 2}, "groups 2 must divide input channels 3 and output channels 4"},
		{"conv grad weight: kernel length", []*Node{in("dy", 1, 4, 5, 5), in("x", 1, 3, 7, 7)},
			OpConv2DGradWeight, Attrs{"kernel": []int{3}}, "attribute kernel: want 2 values, got 1"},
		{"maxpool grad: dy shape", []*Node{in("dy", 1, 3, 5, 5), in("x", 1, 3, 9, 9)},
			OpMaxPoolGrad, Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}}, "maxpool of input 1x3x9x9 gives 1x3x4x4, but dy is 1x3x5x5"},
		{"avgpool grad: dy shape", []*Node{in("dy", 1, 3, 5, 5)},
			OpAvgPoolGrad, Attrs{"kernel": []int{3, 3}, "stride": []int{2, 2}, "input_hw": []int{9, 9}},
			"avgpool of input 1x3x9x9 gives 1x3x4x4, but dy is 1x3x5x5"},
		{"avgpool grad: pad", []*Node{in("dy", 1, 3, 5, 5)},
			OpAvgPoolGrad, Attrs{"kernel": []int{1, 1}, "pad": []int{1, 1}, "input_hw": []int{3, 3}}, "pad [1 1] must be at most half the kernel"},
		{"global avgpool grad: dy not pooled", []*Node{in("dy", 1, 3, 2, 2)},
			OpGlobalAvgPoolGrad, Attrs{"input_hw": []int{5, 5}}, "dy must be [N,C,1,1], got f32[1,3,2,2]"},
		{"batchnorm grad: vector", []*Node{in("dy", 2, 3, 4, 4), in("x", 2, 3, 4, 4), in("w", 3), in("m", 4), in("v", 3)},
			OpBatchNormTrainGrad, nil, "mean shape 4, want 3"},
		{"batchnorm grad: dy", []*Node{in("dy", 2, 3, 4, 5), in("x", 2, 3, 4, 4), in("w", 3), in("m", 3), in("v", 3)},
			OpBatchNormTrainGrad, nil, "x shape 2x3x4x4 differs from dy shape 2x3x4x5"},
		{"dense grad input", []*Node{in("dy", 2, 10), in("w", 9, 16)}, OpDenseGradInput, nil, "dy has 10 outputs, weight 9x16 has 9"},
		{"dense grad weight", []*Node{in("dy", 2, 10), in("x", 3, 16)}, OpDenseGradWeight, nil, "dy has batch 2, input has 3"},
		{"bias grad rank", []*Node{in("dy", 10)}, OpBiasGrad, nil, "dy must have rank >= 2"},
		{"relu grad", []*Node{in("dy", 2, 3), in("y", 3, 2)}, OpReLUGrad, nil, "y shape 3x2 differs from dy shape 2x3"},
		{"slice range", []*Node{in("x", 2, 8, 3, 3)}, OpSlice, Attrs{"offset": 6, "size": 3}, "range [6, 9) exceeds axis 1 of 2x8x3x3 (size 8)"},
		{"slice axis", []*Node{in("x", 2, 8)}, OpSlice, Attrs{"axis": 2, "size": 1}, "axis 2 out of range"},
		{"reshape numel", []*Node{in("x", 2, 8)}, OpReshape, Attrs{"shape": []int{2, 3, 3}}, "shape 2x3x3 has 18 elements, input 2x8 has 16"},
		{"mul2 shapes", []*Node{in("a", 2, 8), in("b", 2, 9)}, OpMul2, nil, "b shape 2x9 differs from a shape 2x8"},
		{"dropout p", []*Node{in("x", 2, 8)}, OpDropoutTrain, Attrs{"p": 1.0}, "attribute p: must be in [0, 1), got 1"},
		{"xent rank", []*Node{in("l", 2, 8, 1), in("t", 2, 8, 1)}, OpSoftmaxXent, nil, "logits must have rank 2"},
		{"xent target", []*Node{in("l", 2, 8), in("t", 2, 7)}, OpSoftmaxXentGrad, nil, "target shape 2x7 differs from logits shape 2x8"},
		{"xent smoothing", []*Node{in("l", 2, 8), in("t", 2, 8)}, OpSoftmaxXent, Attrs{"smoothing": 1.5}, "attribute smoothing: must be in [0, 1], got 1.5"},
		{"rmsprop state shape", []*Node{in("p", 3, 3), in("g", 3, 3), in("v", 3, 3), in("b", 3)},
			OpRMSPropUpdate, Attrs{"lr": 0.1}, "momentum_buf shape 3 differs from param shape 3x3"},
		{"rmsprop lr required", []*Node{in("p", 3), in("g", 3), in("v", 3), in("b", 3)},
			OpRMSPropTFUpdate, nil, `rmsprop_tf_update: missing attribute "lr"`},
		{"sgd negative momentum", []*Node{in("p", 3), in("g", 3), in("b", 3)},
			OpSGDUpdate, Attrs{"lr": 0.1, "momentum": -0.5}, "attribute momentum: must not be negative"},
		{"sgd arity", []*Node{in("p", 3), in("g", 3)}, OpSGDUpdate, Attrs{"lr": 0.1}, "want 3 operands (param, grad, momentum_buf), got 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := &Graph{Name: "bad"}
			var args []int
			for _, a := range c.args {
				id, err := g.Add(a)
				if err != nil {
					t.Fatal(err)
				}
				args = append(args, id)
			}
			_, err := g.Add(&Node{Op: c.op, Args: args, Attrs: c.attrs, Pos: pos})
			if err == nil {
				t.Fatalf("Add succeeded, want an error containing %q", c.want)
			}
			if !strings.HasPrefix(err.Error(), "bad.kiln:4:9: ") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Add = %q, want bad.kiln:4:9: ...%s", err, c.want)
			}
		})
	}
}

// TestTrainOpsPlainOnly checks that the training ops refuse a blocked
// operand: the layout pass never feeds them one.
func TestTrainOpsPlainOnly(t *testing.T) {
	g := &Graph{Name: "blocked"}
	dy := g.MustAdd(&Node{Op: OpInput, Name: "dy", Type: Type{DType: F32, Shape: []int{1, 16, 4, 4}, Layout: MustParseLayout("NCHW16c")}})
	_, err := g.Add(&Node{Op: OpBiasGrad, Args: []int{dy}})
	if err == nil || !strings.Contains(err.Error(), "dy (operand 0, %0) has layout NCHW16c, want plain") {
		t.Errorf("bias_grad of a blocked dy: %v", err)
	}
}
