package onnx

import (
	"math"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/tensor"
)

// TestImportActivations imports a squeeze-and-excitation model as PyTorch
// exports one (GlobalAveragePool, 1x1 Conv, Relu, Conv, Sigmoid, Mul by the
// [N,C,1,1] scale) followed by SiLU as Sigmoid·Mul, HardSwish, Clip as
// ReLU6 and as a clamp, Tanh, Sub and GlobalMaxPool, checks the statements
// and compares the imported graph's interpreter run with a direct float64
// computation.
func TestImportActivations(t *testing.T) {
	const c, mid, h = 4, 2, 3
	w1, w2 := seqData(mid*c, 0.5), seqData(c*mid, -0.4)
	m := &tmodel{}
	m.init("se.fc1.weight", []int{mid, c, 1, 1}, w1).init("se.fc2.weight", []int{c, mid, 1, 1}, w2)
	m.init("lo", nil, []float32{-0.5}).init("hi", nil, []float32{0.75})
	m.init("zero", nil, []float32{0}).init("six", nil, []float32{6})
	m.node("GlobalAveragePool", "gap", []string{"x"}, []string{"s0"})
	m.node("Conv", "/se/fc1/Conv", []string{"s0", "se.fc1.weight"}, []string{"s1"})
	m.node("Relu", "r", []string{"s1"}, []string{"s2"})
	m.node("Conv", "/se/fc2/Conv", []string{"s2", "se.fc2.weight"}, []string{"s3"})
	m.node("Sigmoid", "sig", []string{"s3"}, []string{"s4"})
	m.node("Mul", "scale", []string{"x", "s4"}, []string{"a"})
	m.node("Sigmoid", "sig2", []string{"a"}, []string{"b0"})
	m.node("Mul", "silu", []string{"b0", "a"}, []string{"b"})
	m.node("HardSwish", "hs", []string{"b"}, []string{"d"})
	m.node("Clip", "relu6", []string{"d", "zero", "six"}, []string{"e"})
	m.node("Clip", "clamp", []string{"e", "lo", "hi"}, []string{"f"})
	m.node("Tanh", "th", []string{"f"}, []string{"g"})
	m.node("Sub", "sub", []string{"g", "x"}, []string{"k"})
	m.node("GlobalMaxPool", "gmp", []string{"k"}, []string{"y"})
	m.inputs = [][]byte{valueInfo("x", []int{1, c, h, h})}
	m.outputs = [][]byte{valueInfo("y", []int{1, c, 1, 1})}
	imp, err := importBytes(m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	src := string(imp.Source)
	for _, want := range []string{"mul_1 = x * sigmoid_1", "silu_1 = silu(mul_1)", "hardswish_1 = hardswish(silu_1)",
		"relu6_1 = relu6(hardswish_1)", "clip_1 = clip(relu6_1, -0.5, 0.75)", "tanh_1 = tanh(clip_1)",
		"sub_1 = tanh_1 - x", "global_maxpool_1 = global_maxpool(sub_1)"} {
		if !strings.Contains(src, want) {
			t.Errorf("source lacks %q:\n%s", want, src)
		}
	}
	x := testInput(1, c, h, h)
	got := runOne(t, imp.Graph, imp.Weights, x)
	sig := func(v float64) float64 { return 1 / (1 + math.Exp(-v)) }
	for ch := 0; ch < c; ch++ {
		var sq [c]float64
		for k := 0; k < c; k++ {
			for p := 0; p < h*h; p++ {
				sq[k] += float64(x.Data[k*h*h+p]) / (h * h)
			}
		}
		var s3 float64
		for j := 0; j < mid; j++ {
			var s1 float64
			for k := 0; k < c; k++ {
				s1 += float64(w1[j*c+k]) * sq[k]
			}
			s3 += float64(w2[ch*mid+j]) * math.Max(s1, 0)
		}
		want := math.Inf(-1)
		for p := 0; p < h*h; p++ {
			xv := float64(x.Data[ch*h*h+p])
			a := xv * sig(s3)
			b := a * sig(a)
			d := b * math.Min(math.Max(b+3, 0), 6) / 6
			e := math.Min(math.Max(d, 0), 6)
			f := math.Min(math.Max(e, -0.5), 0.75)
			want = math.Max(want, math.Tanh(f)-xv)
		}
		if d := math.Abs(want - float64(got.Data[ch])); d > 1e-5 {
			t.Errorf("y[%d] = %v, want %v", ch, got.Data[ch], want)
		}
	}
}

// TestExtRoundTrip exports a network using every op of ir/ops_ext.go with
// Encode (opset 13: hard-swish as HardSigmoid·Mul, SiLU as Sigmoid·Mul,
// clip with min/max initializers), imports it back and requires the same
// interpreter output within 1e-5 × max|ref| and the ops recovered.
func TestExtRoundTrip(t *testing.T) {
	const src = `block se(x, out) {
    s = global_avgpool(x)
    fc1 = conv2d(s, 2, 1)
    fc2 = conv2d(relu(fc1), out, 1)
    return x * sigmoid(fc2)
}
network ext(x: f32[N, 4, 5, 5]) {
    a = se(hardswish(x), 4)
    b = clip(silu(a), -0.5, 2) - relu6(tanh(x))
    return flatten(global_maxpool(b))
}`
	g, err := dsl.Load("ext.kiln", []byte(src), dsl.Options{Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	params, err := g.GeneratedParams()
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(g, params, Options{})
	if err != nil {
		t.Fatal(err)
	}
	imp, err := importBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"hardswish(", "sigmoid(", " * ", "silu(", "clip(", ", -0.5, 2)", "relu6(", "tanh(", " - ", "global_maxpool("} {
		if !strings.Contains(string(imp.Source), want) {
			t.Errorf("imported source lacks %q:\n%s", want, imp.Source)
		}
	}
	ig, err := dsl.Load("ext_imported.kiln", imp.Source, dsl.Options{Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	x := testInput(g.Inputs()[0].Type.Shape...)
	ref, got := runOne(t, g, params, x), runOne(t, ig, imp.Weights, x)
	d, err := tensor.MaxAbsDiff(ref, got)
	if err != nil {
		t.Fatal(err)
	}
	if bound := 1e-5 * tensor.MaxAbs(ref); d > bound {
		t.Fatalf("max |imported - original| = %g > %g", d, bound)
	}
}
