package interp

import (
	"testing"

	"github.com/kiln-dev/kiln/ir"
)

// benchConv times Run on a graph holding one convolution (layer shapes from
// Inception-v4 at 299×299, batch 1) and reports GFLOP/s = 2·MACs / time.
// The time includes packing the weights and allocating the output, as in a
// real run.
func benchConv(b *testing.B, c, h, w, o, kh, kw, stride, ph, pw int) {
	bl := newBuilder(b, 1)
	x := bl.input("x", 1, c, h, w)
	wt := bl.param("w", -0.1, 0.1, o, c, kh, kw)
	y := bl.op(ir.OpConv2D, ir.Attrs{"stride": []int{stride, stride}, "pad": []int{ph, pw}}, x, wt)
	bl.g.Outputs = []int{y}
	runBench(b, bl, bl.g.MACs(y))
}

func runBench(b *testing.B, bl *builder, macs int64) {
	b.Helper()
	for b.Loop() {
		if _, err := Run(bl.g, bl.params, bl.inputs, Options{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(2*float64(macs)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// Inception-B branch0: 1x1 1024→384 at 17×17 (direct GEMM path).
func BenchmarkConv1x1_1024to384_17x17(b *testing.B) { benchConv(b, 1024, 17, 17, 384, 1, 1, 1, 0, 0) }

// Mixed4a branch0.1: 3x3 64→96 on 73×73, no padding (im2col path).
func BenchmarkConv3x3_64to96_73x73(b *testing.B) { benchConv(b, 64, 73, 73, 96, 3, 3, 1, 0, 0) }

// Inception-B branch2.1: 7x1 192→192 at 17×17, padding (3,0).
func BenchmarkConv7x1_192to192_17x17(b *testing.B) { benchConv(b, 192, 17, 17, 192, 7, 1, 1, 3, 0) }

// Stem features.0: 3x3 stride 2, 3→32 on 299×299 (small K, large N).
func BenchmarkConv3x3s2_3to32_299x299(b *testing.B) { benchConv(b, 3, 299, 299, 32, 3, 3, 2, 0, 0) }

// Inception-C branch0: 1x1 1536→256 at 8×8 (small N).
func BenchmarkConv1x1_1536to256_8x8(b *testing.B) { benchConv(b, 1536, 8, 8, 256, 1, 1, 1, 0, 0) }

// BenchmarkDense is the classifier: 1536→1000, batch 1.
func BenchmarkDense1536to1000(b *testing.B) {
	bl := newBuilder(b, 1)
	x := bl.input("x", 1, 1536)
	y := bl.op(ir.OpDense, nil, x, bl.param("w", -0.1, 0.1, 1000, 1536), bl.param("b", -0.1, 0.1, 1000))
	bl.g.Outputs = []int{y}
	runBench(b, bl, bl.g.MACs(y))
}

// BenchmarkInceptionV4 runs the whole of timm inception_v4 at 299×299, batch
// 1 (12.25 G MACs), with procedural weights.
func BenchmarkInceptionV4(b *testing.B) {
	nb := inceptionV4(1, 299)
	bl := newBuilder(b, 1)
	bl.g = nb.g
	bl.params = nb.generate(b)
	bl.inputs["input"] = bl.random(-1, 1, 1, 3, 299, 299)
	b.ResetTimer()
	runBench(b, bl, nb.macs())
}
