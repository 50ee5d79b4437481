package lower

import (
	"math"
	"testing"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// groupedNets are grouped convolutions whose per-group channel counts are
// not multiples of the block 16 (the masked block-diagonal fallback of
// grouped.go), with the super-groups superGroups picks.
var groupedNets = []struct{ name, src string }{
	// 2 groups of 24: one super-group (a 48x48 block-diagonal weight).
	{"groups2_of_24", `network n(x: f32[N, 48, 6, 5]) { return conv2d(x, 48, 3, pad=1, groups=2) }`},
	// 3 groups of 8, bias and ReLU fused; channels not a multiple of 16.
	{"groups3_of_8_relu", `network n(x: f32[N, 24, 5, 5]) { return relu(conv2d(x, 24, 3, pad=1, groups=3)) }`},
	// 8 groups of 8 on 64 channels: 4 super-groups of 16, 1x1.
	{"groups8_of_8", `network n(x: f32[N, 64, 4, 4]) { return conv2d(x, 64, 1, groups=8) }`},
	// 4 groups of 20 in, 10 out, stride 2, dilation 2.
	{"groups4_strided_dilated", `network n(x: f32[N, 80, 9, 9]) { return conv2d(x, 40, 3, stride=2, pad=2, dilation=2, groups=4) }`},
	// Depthwise with channel multiplier 2 (1 input, 2 outputs per group).
	{"depthwise_x2", `network n(x: f32[N, 16, 6, 6]) { return conv2d(x, 32, 3, pad=1, groups=16) }`},
	// Residual add fused into the grouped conv.
	{"groups2_residual", `network n(x: f32[N, 48, 5, 5]) { return relu(x + conv2d(x, 48, 3, pad=1, groups=2)) }`},
	// The plain network input (6 channels, read as NCHW), 3 groups of 2.
	{"groups3_plain_input", `network n(x: f32[N, 6, 7, 7]) { return conv2d(x, 12, 3, pad=1, groups=3) }`},
}

// TestGroupedFallbackCompiled compiles each of groupedNets for AVX-512 and
// AVX2 and compares the result with the interpreter at compiledTol, first
// on a finite input (the unmasked path), then with one NaN and one +Inf in
// the first group's channels of the first image (the row segments reading
// them take the masked path, the others the unmasked one): the other
// groups' outputs must stay finite (the block-diagonal zeros alone would
// give 0·NaN = NaN) and the NaN/Inf pattern must equal the interpreter's.
func TestGroupedFallbackCompiled(t *testing.T) {
	for _, net := range groupedNets {
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
			finite, err := tensor.Generate("input", in.Type.Shape)
			if err != nil {
				t.Fatal(err)
			}
			special := tensor.New(in.Type.Shape...)
			copy(special.Data, finite.Data)
			hw := in.Type.Shape[2] * in.Type.Shape[3]
			special.Data[hw/2] = float32(math.NaN())     // channel 0 (group 0)
			special.Data[hw+hw/3] = float32(math.Inf(1)) // channel 1 (group 0)
			s, err := passes.Run(g, passes.Options{Target: passes.Targets[0], VerifyEach: true})
			if err != nil {
				t.Fatal(err)
			}
			a := build(t, s, params)
			for _, x := range []*tensor.Tensor{finite, special} {
				res, err := interp.Run(g, params, map[string]*tensor.Tensor{in.Name: x}, interp.Options{})
				if err != nil {
					t.Fatal(err)
				}
				want := res.Outputs[0]
				if x == special {
					finiteOut := 0
					for _, v := range want.Data {
						if !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) {
							finiteOut++
						}
					}
					if finiteOut == len(want.Data) {
						t.Fatalf("the special input gives no non-finite output")
					}
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
						t.Errorf("%s (special input: %v): %s", isa, x == special, msg)
					}
				}
			}
		})
	}
}

// TestSuperGroups checks the super-group choice and the block-diagonal
// weight expansion on small cases.
func TestSuperGroups(t *testing.T) {
	for _, tc := range []struct{ groups, c, o, b, want int }{
		{2, 48, 48, 16, 1},    // 24 per group
		{8, 64, 64, 16, 4},    // 8 per group: 4 super-groups of 16
		{32, 128, 128, 16, 8}, // ResNeXt 32x4d
		{3, 24, 24, 16, 1},
		{8, 48, 48, 4, 4}, // NEON's block 4: 6 per group, super-groups of 12
		{16, 16, 32, 16, 1},
	} {
		if got := superGroups(tc.groups, tc.c, tc.o, tc.b); got != tc.want {
			t.Errorf("superGroups(%d, %d, %d, %d) = %d, want %d", tc.groups, tc.c, tc.o, tc.b, got, tc.want)
		}
	}
	// 4 groups of 1 input and 1 output channel, 1x1, in 2 super-groups:
	// each super-group's 2x2 weight is diagonal.
	got := expandGroups([]float32{1, 2, 3, 4}, 4, 4, 1, 4, 2)
	want := []float32{1, 0, 0, 2, 3, 0, 0, 4}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("expandGroups = %v, want %v", got, want)
		}
	}
}
