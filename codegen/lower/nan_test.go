package lower

import (
	"fmt"
	"math"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// nanNets are one-op networks (the reorders to and from the blocked layout
// come with each) for TestNaNPropagationCompiled.
var nanNets = []struct{ name, src string }{
	{"maxpool", `network n(x: f32[N, 16, 9, 9]) { return maxpool(x, 3, stride=2) }`},
	{"maxpool_pad", `network n(x: f32[N, 20, 7, 7]) { return maxpool(x, 3, stride=1, pad=1) }`},
	{"avgpool", `network n(x: f32[N, 16, 7, 7]) { return avgpool(x, 3, stride=1, pad=1, count_include_pad=false) }`},
	{"conv_bn_relu", "block cbr(x) {\n c = conv2d(x, 16, 3, pad=1, bias=false)\n b = batchnorm(c)\n return relu(b)\n}\n" +
		`network n(x: f32[N, 16, 6, 6]) { return cbr(x) }`},
	{"conv_rgb_relu", `network n(x: f32[N, 3, 8, 8]) { return relu(conv2d(x, 16, 3, stride=2)) }`},
	{"conv_residual", `network n(x: f32[N, 16, 5, 5]) { return relu(x + conv2d(x, 16, 1)) }`},
	{"concat", `network n(x: f32[N, 16, 6, 6]) { return concat(maxpool(x, 3, stride=1, pad=1), avgpool(x, 3, stride=1, pad=1)) }`},
	{"global_avgpool", `network n(x: f32[N, 16, 4, 4]) { return flatten(global_avgpool(x)) }`},
	{"dense", `network n(x: f32[N, 40]) { return dense(x, 10) }`},
	{"softmax", `network n(x: f32[N, 37]) { return softmax(x) }`},
}

// specialInput is a deterministic input with NaN, +Inf and -Inf at a few
// scattered positions of the first sample (so that some outputs stay finite
// and the positions of the non-finite ones are tested); the other samples
// are finite.
func specialInput(shape []int) *tensor.Tensor {
	x := tensor.New(shape...)
	first := len(x.Data) / shape[0]
	specials := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))}
	for i := range x.Data {
		x.Data[i] = float32(math.Sin(float64(i)*0.7)) * 2
		if i < first && i%23 == 5 {
			x.Data[i] = specials[i/23%3]
		}
	}
	return x
}

// TestNaNPropagationCompiled runs every kind of compiled kernel (max and
// average pooling, fused conv with BatchNorm, ReLU and residual, the
// unpadded-RGB conv, in-place concat, global average pooling, dense,
// softmax, and the reorders around them) on inputs holding NaN and ±Inf,
// on each x86 ISA, and requires the interpreter's result NaN for NaN and
// Inf for Inf (finite values within compiledTol). Compiled max pooling used
// to drop a NaN that followed a finite value in its window (issue 11).
func TestNaNPropagationCompiled(t *testing.T) {
	for _, net := range append(nanNets, extNaNNets...) {
		t.Run(net.name, func(t *testing.T) {
			g, err := dsl.Load(net.name+".kiln", []byte(net.src), dsl.Options{Batch: 2})
			if err != nil {
				t.Fatal(err)
			}
			params, err := g.GeneratedParams()
			if err != nil {
				t.Fatal(err)
			}
			in := g.Inputs()[0]
			x := specialInput(in.Type.Shape)
			res, err := interp.Run(g, params, map[string]*tensor.Tensor{in.Name: x}, interp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			want := res.Outputs[0]
			s, err := passes.Run(g, passes.Options{Target: passes.Targets[0], VerifyEach: true})
			if err != nil {
				t.Fatal(err)
			}
			a := build(t, s, params)
			nonFinite := 0
			for _, v := range want.Data {
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					nonFinite++
				}
			}
			if nonFinite == 0 || nonFinite == len(want.Data) {
				t.Fatalf("test input gives %d of %d non-finite outputs; want some of each", nonFinite, len(want.Data))
			}
			for _, isa := range testenv.HostISAs(t, "avx512", "avx2") {
				m, err := rt.Open(a.Artifact, rt.Options{ISA: isa, Threads: 2})
				if err != nil {
					t.Fatal(err)
				}
				got := tensor.New(want.Shape...)
				err = m.Run(x.Data, got.Data)
				m.Close()
				if err != nil {
					t.Fatal(err)
				}
				if msg := compareSpecial(got, want); msg != "" {
					t.Errorf("%s %s: %s", net.name, isa, msg)
				}
			}
		})
	}
}

// compareSpecial checks got against the interpreter's want: NaN where want
// is NaN, the same infinity where want is infinite, finite values within
// compiledTol of the largest finite |want|. It returns "" or the first
// mismatches.
func compareSpecial(got, want *tensor.Tensor) string {
	m := 0.0
	for _, v := range want.Data {
		if f := float64(v); !math.IsNaN(f) && !math.IsInf(f, 0) {
			m = max(m, math.Abs(f))
		}
	}
	tol := compiledTol * max(m, 1e-30)
	var msg string
	bad := 0
	for i, w := range want.Data {
		g, wf := float64(got.Data[i]), float64(w)
		var ok bool
		switch {
		case math.IsNaN(wf):
			ok = math.IsNaN(g)
		case math.IsInf(wf, 0):
			ok = g == wf
		default:
			ok = math.Abs(g-wf) <= tol
		}
		if !ok {
			if bad < 3 {
				msg += fmt.Sprintf("element %d: got %v, want %v; ", i, got.Data[i], w)
			}
			bad++
		}
	}
	if bad > 0 {
		msg += fmt.Sprintf("%d of %d elements differ", bad, len(want.Data))
	}
	return msg
}
