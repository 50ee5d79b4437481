package lower

import (
	"github.com/kiln-dev/kiln/internal/testenv"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// TestFusedClipCompiled checks relu6 and clip fused into a convolution's
// epilogue (MobileNet-v2's conv → BatchNorm → relu6; passes'
// fuse-epilogue): the clip disappears as a kernel when lo <= 0 <= hi and
// stays one otherwise, and the compiled network matches the interpreter on
// an input with NaN and ±Inf on both x86 ISAs, for the blocked conv, the
// depthwise kernel and the grouped conv, with partial channel blocks (21,
// 24 channels) whose padding lanes must stay zero.
func TestFusedClipCompiled(t *testing.T) {
	cases := []struct {
		name, src string
		clips     int // clip kernels left after the pipeline
	}{
		{"conv_relu6", `network n(x: f32[N, 16, 6, 6]) { return relu6(conv2d(x, 21, 3, pad=1)) }`, 0},
		{"conv_bn_relu6", "block cbr(x) {\n c = conv2d(x, 24, 1, bias=false)\n b = batchnorm(c)\n return relu6(b)\n}\n" +
			`network n(x: f32[N, 16, 5, 5]) { return cbr(x) }`, 0},
		{"depthwise_bn_relu6", "block dw(x) {\n c = conv2d(x, 24, 3, stride=2, pad=1, groups=24, bias=false)\n b = batchnorm(c)\n return relu6(b)\n}\n" +
			`network n(x: f32[N, 24, 7, 7]) { return dw(x) }`, 0},
		{"grouped_relu_clip", `network n(x: f32[N, 32, 5, 5]) { return clip(relu(conv2d(x, 32, 3, pad=1, groups=2)), -1, 0.5) }`, 0},
		{"residual_clip", `network n(x: f32[N, 16, 5, 5]) { return clip(x + conv2d(x, 16, 1), -0.25, 0.75) }`, 0},
		{"clip_above_zero", `network n(x: f32[N, 16, 5, 5]) { return clip(conv2d(x, 21, 1), 0.5, 1.5) }`, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, err := dsl.Load(c.name+".kiln", []byte(c.src), dsl.Options{Batch: 2})
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
			if n := passes.OpCounts(s.Graph)[ir.OpClip]; n != c.clips {
				t.Fatalf("%d clip kernels after the pipeline, want %d", n, c.clips)
			}
			a := build(t, s, params)
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
					t.Errorf("%s: %s", isa, msg)
				}
			}
		})
	}
}
