package cuda

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/target"
)

// convCase is one convolution of the three networks, as a small network:
// a 1x1 conv_bn to C channels (so the conv under test reads NCHW32c), then
// the conv under test (or the stem conv on the plain input, or a residual
// block or a concat of two convs).
type convCase struct {
	name string
	body string // DSL statements; x is the blocked C-channel input; returns y
	out  []int  // C, H, W of y
}

// Shapes: batch 2, 40 input channels (two channel blocks, the second padded),
// 7x7 (98 output pixels: two 64-pixel tiles, the second partial), 40 output
// channels (two output blocks, padding lanes).
const (
	cN, cC, cH = 2, 40, 7
	cO         = 40
)

var convCases = []convCase{
	{"1x1", "y = conv_bn(x, 40, 1)", []int{40, 7, 7}},
	{"3x3", "y = conv_bn(x, 40, 3)", []int{40, 5, 5}},
	{"3x3_same", "y = conv_bn(x, 40, 3, pad=1)", []int{40, 7, 7}},
	{"3x3_s2", "y = conv_bn(x, 40, 3, stride=2)", []int{40, 3, 3}},
	{"1x7", "y = conv_bn(x, 40, 1x7, pad=(0, 3))", []int{40, 7, 7}},
	{"7x1", "y = conv_bn(x, 40, 7x1, pad=(3, 0))", []int{40, 7, 7}},
	{"1x3", "y = conv_bn(x, 40, 1x3, pad=(0, 1))", []int{40, 7, 7}},
	{"3x1", "y = conv_bn(x, 40, 3x1, pad=(1, 0))", []int{40, 7, 7}},
	{"5x5_same", "y = conv_bn(x, 40, 5, pad=2)", []int{40, 7, 7}},
	{"stem_plain_3x3_s2", "y = conv_bn(image, 40, 3, stride=2)", []int{40, 7, 7}},
	{"residual_relu", "b = conv_bn(x, 24, 1)\n    y = residual(x, b, 0.17)", []int{40, 7, 7}},
	{"residual_linear", "b = conv_bn(x, 24, 1)\n    y = residual(x, b, 0.2, activate=false)", []int{40, 7, 7}},
	// Concats feeding a conv: in place (each producer writes its channel
	// slice: OutCOffset 32 and 64) and with unaligned offsets (copies).
	{"concat_in_place", "y = conv_bn(mixed(x, 32), 40, 1)", []int{40, 7, 7}},
	{"concat_unaligned", "y = conv_bn(mixed(x, 40), 40, 1)", []int{40, 7, 7}},
	{"concat_output", "a = conv_bn(x, 40, 1)\n    b = conv_bn(x, 24, 3, pad=1)\n    y = concat(a, b, maxpool(x, 3, stride=1, pad=1))", []int{104, 7, 7}},
	{"relu6_clip", "y = relu6(conv2d(x, 40, kernel=3, pad=1))", []int{40, 7, 7}},
	{"avgpool_excl_pad", "y = avgpool(x, 3, stride=1, pad=1, count_include_pad=false)", []int{40, 7, 7}},
	{"avgpool_incl_pad", "y = avgpool(x, 3, stride=1, pad=1, count_include_pad=true)", []int{40, 7, 7}},
	{"maxpool_s2", "y = maxpool(x, 3, stride=2)", []int{40, 3, 3}},
}

func (c convCase) graph(t *testing.T) *ir.Graph {
	t.Helper()
	h := cH
	if c.name == "stem_plain_3x3_s2" {
		h = 15
	}
	src := fmt.Sprintf(`import "blocks.kiln"
block mixed(x, c) {
    branch0 = conv_bn(x, c, 1)
    branch1 = conv_bn(x, 32, 3, pad=1)
    branch2 = maxpool(x, 3, stride=1, pad=1)
    return concat(branch0, branch1, branch2)
}
network t(image: f32[N, 3, %d, %d]) -> f32[N, %d, %d, %d] {
    x = conv_bn(image, %d, 1)
    %s
    return y
}
`, h, h, c.out[0], c.out[1], c.out[2], cC, c.body)
	g, err := dsl.Load("conv_case.kiln", []byte(src), dsl.Options{Batch: cN, FS: archs.FS})
	if err != nil {
		t.Fatalf("%s: %v\n%s", c.name, err, src)
	}
	return g
}

// TestEmulateConvShapes runs every convolution shape, stride and padding of
// the three networks, the epilogues (bias, ReLU, scaled residual with and
// without ReLU, concat slices) and the pooling variants through the
// generated kernels on the host emulator, in every precision, against the
// interpreter, with the 4-warp (64-pixel) conv tile forced (the test grids
// are small; TestEmulateNetworks covers the 1-warp tile).
func TestEmulateConvShapes(t *testing.T) {
	for _, c := range convCases {
		g := c.graph(t)
		precs := []Precision{FP32, BF16, TF32}
		if strings.Contains(c.name, "pool") {
			precs = precs[:1] // pooling is fp32 in every precision
		}
		for _, prec := range precs {
			rel, p := emulated(t, g, prec, 4)
			for _, l := range p.Launches {
				if l.Op == "conv" && l.Block[0] != 128 {
					t.Errorf("%s: conv %s has %d threads, want the forced 4-warp tile", c.name, l.Label, l.Block[0])
				}
			}
			t.Logf("%-20s %s: max|diff|/max|ref| = %.2e", c.name, prec, rel)
			if rel > tolerance[prec] {
				t.Errorf("%s %s: max|diff|/max|ref| = %.2e > %.0e", c.name, prec, rel, tolerance[prec])
			}
		}
	}
}

// TestConvCasesCover checks that the cases above exercise every distinct
// convolution (kernel, stride, padding, plain input, residual, ReLU) and
// pooling configuration that the three networks lower to.
func TestConvCasesCover(t *testing.T) {
	type key struct {
		kh, kw, sh, sw, ph, pw int
		plain, res, relu       bool
	}
	have := map[key]bool{}
	conf := func(s codegen.ConvSpec) key {
		return key{s.KH, s.KW, s.SH, s.SW, s.PH, s.PW, s.InPlain, s.HasResidual, s.Relu}
	}
	pools := map[string]bool{}
	poolKey := func(s codegen.PoolSpec) string {
		return fmt.Sprintf("max=%v %dx%d s%d p%d cip=%v", s.Max, s.KH, s.KW, s.SH, s.PH, s.CountIncludePad && !s.Max && s.PH > 0)
	}
	collect := func(g *ir.Graph, add func(any)) {
		s, err := passes.Run(g, passes.Options{Target: PassTarget(target.CUDASM90)})
		if err != nil {
			t.Fatal(err)
		}
		ks, err := lower.Specs(s, []codegen.Target{{Target: target.CUDASM90}})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			add(k.Spec)
		}
	}
	for _, c := range convCases {
		collect(c.graph(t), func(s any) {
			switch s := s.(type) {
			case codegen.ConvSpec:
				have[conf(s)] = true
			case codegen.PoolSpec:
				pools[poolKey(s)] = true
			}
		})
	}
	for _, net := range networks {
		g, err := dsl.LoadFile(net+".kiln", dsl.Options{Batch: 1, FS: archs.FS})
		if err != nil {
			t.Fatal(err)
		}
		collect(g, func(s any) {
			switch s := s.(type) {
			case codegen.ConvSpec:
				if !have[conf(s)] {
					t.Errorf("%s: conv %+v not covered by a case", net, conf(s))
				}
			case codegen.PoolSpec:
				if !pools[poolKey(s)] {
					t.Errorf("%s: pool %s not covered by a case", net, poolKey(s))
				}
			}
		})
	}
}

// TestUnsupportedNamesNode checks that a node without a GPU kernel yet (a
// standalone relu6, not fused into its conv because the conv's value is
// named) is refused at its source position, naming what is missing.
func TestUnsupportedNamesNode(t *testing.T) {
	g := convCase{name: "standalone_relu6", body: "c = conv2d(x, 40, kernel=3, pad=1)\n    y = relu6(c)", out: []int{40, 7, 7}}.graph(t)
	params := map[string]*tensor.Tensor{}
	for _, p := range g.Params() {
		params[p.Name] = tensor.New(p.Type.Shape...)
	}
	_, err := Lower(g, params, target.CUDASM90, BF16)
	if err == nil || !strings.Contains(err.Error(), "conv_case.kiln:") || !strings.Contains(err.Error(), "no GPU kernel for codegen.ElementwiseSpec") {
		t.Errorf("err = %v, want the node's position and the missing kernel", err)
	}
	if _, err := Lower(g, params, target.CUDASM90, "fp16"); err == nil || !strings.Contains(err.Error(), `unknown precision "fp16"`) {
		t.Errorf("precision fp16: err = %v", err)
	}
	if _, err := Lower(g, params, target.AVX2, FP32); err == nil || !strings.Contains(err.Error(), "not a GPU target") {
		t.Errorf("target avx2: err = %v", err)
	}
}
