package codegen

import (
	"flag"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/codegen/internal/ktest"
)

// benchConvs are typical Inception-v4 layers.
var benchConvs = []struct {
	name string
	s    ConvSpec
}{
	{"3x3_64to96_73x73", with(cv(1, 64, 73, 73, 96, 3, 3, 1, 1, 0, 0), biasRelu)},
	{"1x1_1024to384_17x17", with(cv(1, 1024, 17, 17, 384, 1, 1, 1, 1, 0, 0), biasRelu)},
	{"1x7_192to224_17x17", with(cv(1, 192, 17, 17, 224, 1, 7, 1, 1, 0, 3), biasRelu)},
	{"1x3_384to256_8x8", with(cv(1, 384, 8, 8, 256, 1, 3, 1, 1, 0, 1), biasRelu)},
	{"1x1_1024to128_17x17", with(cv(1, 1024, 17, 17, 128, 1, 1, 1, 1, 0, 0), biasRelu)},
	{"1x1_384to96_35x35", with(cv(1, 384, 35, 35, 96, 1, 1, 1, 1, 0, 0), biasRelu)},
	{"1x1_160to64_73x73", with(cv(1, 160, 73, 73, 64, 1, 1, 1, 1, 0, 0), biasRelu)},
	{"1x1_1024to192_17x17", with(cv(1, 1024, 17, 17, 192, 1, 1, 1, 1, 0, 0), biasRelu)},
	{"3x3s2_3to32_299_stem", with(cv(1, 3, 299, 299, 32, 3, 3, 2, 2, 0, 0), func(s *ConvSpec) { plain(s); biasRelu(s) })},
}

// benchPeak is the FMA-peak kernel of the benchmarks: one tile of 2^18
// iterations (a few milliseconds).
var benchPeak = PeakSpec{Tiles: 1, Iters: 1 << 18}

// measure returns the GFLOP/s of k's fastest run over [0, tiles), timing
// in C for at least about 60 ms in all.
func measure(k ktest.Kernel, arena, weights []float32, tiles int, flops int64) float64 {
	reps := 1
	for {
		start := time.Now()
		for i := 0; i < reps; i++ {
			k.Run(arena, weights, 0, tiles)
		}
		if time.Since(start) > 20*time.Millisecond {
			break
		}
		reps *= 2
	}
	best := k.Time(arena, weights, tiles, reps*3)
	return float64(flops) / best * 1e-9
}

// BenchmarkConv reports the single-threaded GFLOP/s of the conv kernels on
// typical Inception layers, for each x86 target the CPU has, next to the
// measured FMA peak of the same target (peak/TARGET; also measured again
// after every kernel). GFLOP/s are of the fastest run, which filters out
// interference on shared machines; ns/op is the usual mean.
func BenchmarkConv(b *testing.B) {
	const blk = 16
	lib := buildLib(b, func(m *Module) error {
		if _, _, err := m.Peak("peak", benchPeak); err != nil {
			return err
		}
		for i, c := range benchConvs {
			s := c.s
			s.InOff, s.OutOff = 0, 2<<20
			s.WeightOff, s.BiasOff = 0, 4<<20
			if _, _, err := m.Conv(fmt.Sprintf("bench%d", i), s); err != nil {
				return err
			}
		}
		return nil
	})
	r := rand.New(rand.NewSource(1))
	arena, weights := randomAligned(r, 4<<20, 0.01), randomAligned(r, 5<<20, 0.01)
	for _, tgt := range x86Targets(b) {
		pk := kernel(b, lib, "peak", tgt)
		peakFlops := benchPeak.TileFlops(tgt)
		b.Run("peak/"+tgt.Name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				pk.Run(arena, weights, 0, benchPeak.Tiles)
			}
			b.StopTimer()
			b.ReportMetric(measure(pk, arena, weights, benchPeak.Tiles, peakFlops), "GFLOP/s")
		})
		for i, c := range benchConvs {
			s := c.s
			p := planConv(s, blk, AVX512)
			k := kernel(b, lib, fmt.Sprintf("bench%d", i), tgt)
			// Nominal FLOPs, padding taps included (the kernels skip those:
			// about 10% of a 1x7 at width 17), as conv benchmarks usually count.
			flops := 2 * int64(s.N*s.O*s.OH*s.OW) * int64(s.C*s.KH*s.KW)
			b.Run(c.name+"/"+tgt.Name, func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					k.Run(arena, weights, 0, p.tiles)
				}
				b.StopTimer()
				// Best-of timings of the kernel and of the peak kernel right
				// after it, so that both see the same machine state.
				gf := measure(k, arena, weights, p.tiles, flops)
				peak := measure(pk, arena, weights, benchPeak.Tiles, peakFlops)
				b.ReportMetric(gf, "GFLOP/s")
				b.ReportMetric(peak, "peak-GFLOP/s")
				b.ReportMetric(100*gf/peak, "%peak")
			})
		}
	}
}

// benchPools are the max pooling layers of Inception-v4 (stem and the two
// reductions) and its 3x3 average pooling (count_include_pad=False).
var benchPools = []struct {
	name string
	s    PoolSpec
}{
	{"max3x3s2_64_147", pool(true, false, 1, 64, 147, 147, 3, 3, 2, 2, 0, 0, 64, 0)},
	{"max3x3s2_384_35", pool(true, false, 1, 384, 35, 35, 3, 3, 2, 2, 0, 0, 384, 0)},
	{"max3x3s2_1024_17", pool(true, false, 1, 1024, 17, 17, 3, 3, 2, 2, 0, 0, 1024, 0)},
	{"avg3x3s1_384_35", pool(false, false, 1, 384, 35, 35, 3, 3, 1, 1, 1, 1, 384, 0)},
}

// BenchmarkPool reports the single-threaded time and input bandwidth of the
// pooling kernels on Inception-v4's pooling layers, for each x86 target the
// CPU has (the NaN-propagating max costs one more compare and blend per
// element; this shows whether that is measurable).
func BenchmarkPool(b *testing.B) {
	const blk = 16
	layout := func(s PoolSpec) PoolSpec {
		s.InOff = 0
		s.OutOff = s.N * ceilDiv(s.C, blk) * blk * s.H * s.W
		return s
	}
	lib := buildLib(b, func(m *Module) error {
		for i, c := range benchPools {
			if _, _, err := m.Pool(fmt.Sprintf("pool%d", i), layout(c.s)); err != nil {
				return err
			}
		}
		return nil
	})
	arena := randomAligned(rand.New(rand.NewSource(1)), 4<<20, 1)
	for _, tgt := range x86Targets(b) {
		for i, c := range benchPools {
			s := layout(c.s)
			k := kernel(b, lib, fmt.Sprintf("pool%d", i), tgt)
			tiles := s.N * ceilDiv(s.C, blk) * s.OH
			b.Run(c.name+"/"+tgt.Name, func(b *testing.B) {
				b.SetBytes(int64(4 * s.N * s.C * s.H * s.W))
				for i := 0; i < b.N; i++ {
					k.Run(arena, nil, 0, tiles)
				}
			})
		}
	}
}

// BenchmarkTrainPool reports the single-threaded time and input bandwidth
// of the training max pool and its gradient on Inception-v4's stem pools
// (3x3 stride 2, unpadded; the 64 planes of one image).
func BenchmarkTrainPool(b *testing.B) {
	pools := []struct {
		name string
		s    PoolGeom
	}{
		{"3x3s2_147x147", PoolGeom{Planes: 64, H: 147, W: 147, KH: 3, KW: 3, SH: 2, SW: 2, OH: 73, OW: 73, Max: true}},
		{"3x3s2_71x71", PoolGeom{Planes: 64, H: 71, W: 71, KH: 3, KW: 3, SH: 2, SW: 2, OH: 35, OW: 35, Max: true}},
		// The mini nets' reduction pool (padded, phased) at batch 128.
		{"3x3s2p1_14x14_n128", PoolGeom{Planes: 128 * 64, H: 14, W: 14, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1, OH: 7, OW: 7, Max: true}},
	}
	const X, DY, Y, DX = 0, 2 << 20, 3 << 20, 4 << 20
	tgt := x86Targets(b)[0]
	lib := buildLibFor(b, []Target{tgt}, func(m *Module) error {
		for i, c := range pools {
			if _, _, err := m.Train(fmt.Sprint("fwd", i), TrainPoolSpec{PoolGeom: c.s, X: X, Out: Y}); err != nil {
				return err
			}
			if _, _, err := m.Train(fmt.Sprint("grad", i), TrainPoolGradSpec{PoolGeom: c.s, DY: DY, X: X, DX: DX, Acc: -1}); err != nil {
				return err
			}
		}
		return nil
	})
	arena := randomAligned(rand.New(rand.NewSource(1)), 6<<20, 1)
	for i, c := range pools {
		for _, kind := range []string{"fwd", "grad"} {
			k := kernel(b, lib, fmt.Sprint(kind, i), tgt)
			b.Run(kind+"/"+tgt.Name+"/"+c.name, func(b *testing.B) {
				b.SetBytes(int64(4 * c.s.Planes * c.s.H * c.s.W))
				for n := 0; n < b.N; n++ {
					k.Run(arena, nil, 0, c.s.Planes)
				}
			})
		}
	}
}

// benchWgrads are weight gradients of the mini nets' training step (batch
// 128 and, to separate cache effects from the kernel's own speed, batch 8,
// whose operands fit in L2; 64→64 and 176→144 are what merged sibling 1x1
// convolutions would be), and one of Inception-v4's at batch 16.
var benchWgrads = []struct {
	name string
	s    ConvGeom
}{
	{"1x1_64to16_14x14_n128", ConvGeom{N: 128, C: 64, H: 14, W: 14, O: 16, KH: 1, KW: 1, SH: 1, SW: 1, OH: 14, OW: 14}},
	{"1x1_64to16_14x14_n8", ConvGeom{N: 8, C: 64, H: 14, W: 14, O: 16, KH: 1, KW: 1, SH: 1, SW: 1, OH: 14, OW: 14}},
	{"1x1_64to48_14x14_n128", ConvGeom{N: 128, C: 64, H: 14, W: 14, O: 48, KH: 1, KW: 1, SH: 1, SW: 1, OH: 14, OW: 14}},
	{"1x1_64to64_14x14_n128", ConvGeom{N: 128, C: 64, H: 14, W: 14, O: 64, KH: 1, KW: 1, SH: 1, SW: 1, OH: 14, OW: 14}},
	{"3x3_16to16_14x14_n128", ConvGeom{N: 128, C: 16, H: 14, W: 14, O: 16, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 14, OW: 14}},
	{"3x3_16to16_14x14_n8", ConvGeom{N: 8, C: 16, H: 14, W: 14, O: 16, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 14, OW: 14}},
	{"1x1_176to48_7x7_n128", ConvGeom{N: 128, C: 176, H: 7, W: 7, O: 48, KH: 1, KW: 1, SH: 1, SW: 1, OH: 7, OW: 7}},
	{"1x1_176to32_7x7_n128", ConvGeom{N: 128, C: 176, H: 7, W: 7, O: 32, KH: 1, KW: 1, SH: 1, SW: 1, OH: 7, OW: 7}},
	{"1x1_176to144_7x7_n128", ConvGeom{N: 128, C: 176, H: 7, W: 7, O: 144, KH: 1, KW: 1, SH: 1, SW: 1, OH: 7, OW: 7}},
	// mini_inception_resnet's up projection in its Inception-ResNet-B blocks.
	{"1x1_96to176_7x7_n128", ConvGeom{N: 128, C: 96, H: 7, W: 7, O: 176, KH: 1, KW: 1, SH: 1, SW: 1, OH: 7, OW: 7}},
	// The mini nets' first convolution, over the one input channel.
	{"3x3_1to32_28x28_n128", ConvGeom{N: 128, C: 1, H: 28, W: 28, O: 32, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 28, OW: 28}},
	{"3x3_32to48_14x14_n128", ConvGeom{N: 128, C: 32, H: 14, W: 14, O: 48, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 14, OW: 14}},
	{"1x7_32to32_7x7_n128", ConvGeom{N: 128, C: 32, H: 7, W: 7, O: 32, KH: 1, KW: 7, SH: 1, SW: 1, PW: 3, OH: 7, OW: 7}},
	{"1x1_1024to128_17x17_n16", ConvGeom{N: 16, C: 1024, H: 17, W: 17, O: 128, KH: 1, KW: 1, SH: 1, SW: 1, OH: 17, OW: 17}},
	{"1x1_128to1024_17x17_n16", ConvGeom{N: 16, C: 128, H: 17, W: 17, O: 1024, KH: 1, KW: 1, SH: 1, SW: 1, OH: 17, OW: 17}},
	{"1x1_384to1024_17x17_n16", ConvGeom{N: 16, C: 384, H: 17, W: 17, O: 1024, KH: 1, KW: 1, SH: 1, SW: 1, OH: 17, OW: 17}},
	{"1x1_1024to384_17x17_n16", ConvGeom{N: 16, C: 1024, H: 17, W: 17, O: 384, KH: 1, KW: 1, SH: 1, SW: 1, OH: 17, OW: 17}},
	{"3x3s2_32to64_28x28_n128", ConvGeom{N: 128, C: 32, H: 28, W: 28, O: 64, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1, OH: 14, OW: 14}},
	{"3x3s2_48to48_14x14_n128", ConvGeom{N: 128, C: 48, H: 14, W: 14, O: 48, KH: 3, KW: 3, SH: 2, SW: 2, PH: 1, PW: 1, OH: 7, OW: 7}},
	// Inception-v4's 1x1 160→64 at 73x73 (features.4), more pixels than wgMaxP.
	{"1x1_160to64_73x73_n8", ConvGeom{N: 8, C: 160, H: 73, W: 73, O: 64, KH: 1, KW: 1, SH: 1, SW: 1, OH: 73, OW: 73}},
	// Its stem's unpadded 3x3 32→32 at 149x149 and 64→96 at 73x73, whose
	// input gradients are the im2col kernel's (genGemm).
	{"3x3v_32to32_149x149_n4", ConvGeom{N: 4, C: 32, H: 149, W: 149, O: 32, KH: 3, KW: 3, SH: 1, SW: 1, OH: 147, OW: 147}},
	{"3x3v_64to96_73x73_n8", ConvGeom{N: 8, C: 64, H: 73, W: 73, O: 96, KH: 3, KW: 3, SH: 1, SW: 1, OH: 71, OW: 71}},
	// Its Reduction-A 3x3 192→224 and an Inception-A 1x1 384→96 at 35x35.
	{"3x3_192to224_35x35_n8", ConvGeom{N: 8, C: 192, H: 35, W: 35, O: 224, KH: 3, KW: 3, SH: 1, SW: 1, PH: 1, PW: 1, OH: 35, OW: 35}},
	{"1x1_384to96_35x35_n8", ConvGeom{N: 8, C: 384, H: 35, W: 35, O: 96, KH: 1, KW: 1, SH: 1, SW: 1, OH: 35, OW: 35}},
}

// benchAVX2 makes the training-kernel benchmarks time the AVX2 kernels on
// a CPU that also has AVX-512.
var benchAVX2 = flag.Bool("bench-avx2", false, "time BenchmarkTrainConv and BenchmarkTrainConvGradWeight on AVX2 even where AVX-512 is present")

// benchTarget is the target of the training-kernel benchmarks: the CPU's
// best x86 one, or AVX2 with -bench-avx2.
func benchTarget(b *testing.B) Target {
	ts := x86Targets(b)
	if *benchAVX2 {
		if !ktest.HasAVX2() {
			b.Fatal("-bench-avx2: the CPU has no AVX2")
		}
		return AVX2
	}
	return ts[0]
}

// BenchmarkTrainConvGradWeight reports the single-threaded GFLOP/s of the
// weight-gradient kernels on the mini nets' shapes next to the FMA peak of
// the CPU's best x86 target (AVX-512, else AVX2), and their GFLOP/s on two
// threads splitting the tiles as the runtime does (GFLOP/s-2t), where both
// threads compete for memory bandwidth. Each kernel splits its batch as
// the lowering does (ConvGeom.WgradSplit; the partial sums' addition is
// not timed). The "siblings" entries are the mini nets' groups of 1x1
// weight gradients of one input (TrainConvGradWeightSpec.Siblings).
func BenchmarkTrainConvGradWeight(b *testing.B) {
	tgt := benchTarget(b)
	const X, DY, DW, Part = 0, 8 << 20, 12 << 20, 12<<20 + 65536
	type entry struct {
		name string
		s    TrainConvGradWeightSpec
	}
	var es []entry
	for _, c := range benchWgrads {
		es = append(es, entry{c.name, TrainConvGradWeightSpec{ConvGeom: c.s, DY: DY, X: X, DW: DW, Split: c.s.WgradSplit(), Partial: Part}})
	}
	for _, c := range []struct {
		name string
		g    ConvGeom
		os   []int
	}{
		{"siblings_1x1_64to16x4_14x14_n128", ConvGeom{N: 128, C: 64, H: 14, W: 14, KH: 1, KW: 1, SH: 1, SW: 1, OH: 14, OW: 14}, []int{16, 16, 16, 16}},
		{"siblings_1x1_176to48+32x3_7x7_n128", ConvGeom{N: 128, C: 176, H: 7, W: 7, KH: 1, KW: 1, SH: 1, SW: 1, OH: 7, OW: 7}, []int{48, 32, 32, 32}},
	} {
		g := c.g
		g.O = c.os[0]
		split := g
		for _, o := range c.os[1:] {
			split.O += o
		}
		s := TrainConvGradWeightSpec{ConvGeom: g, DY: DY, X: X, DW: DW, Split: split.WgradSplit(), Partial: Part}
		dy, part := DY+g.N*g.O*g.OH*g.OW, Part+s.SplitRuns()*g.O*g.C
		for j, o := range c.os[1:] {
			s.Siblings = append(s.Siblings, WgradSibling{O: o, DY: dy, DW: DW + 8192*(j+1), Partial: part})
			dy, part = dy+g.N*o*g.OH*g.OW, part+s.SplitRuns()*o*g.C
		}
		es = append(es, entry{c.name, s})
	}
	lib := buildLibFor(b, []Target{tgt}, func(m *Module) error {
		if _, _, err := m.Peak("peak", benchPeak); err != nil {
			return err
		}
		for i, e := range es {
			if _, _, err := m.Train(fmt.Sprintf("wg%d", i), e.s); err != nil {
				return err
			}
		}
		return nil
	})
	arena := randomAligned(rand.New(rand.NewSource(1)), 14<<20, 1)
	pk := kernel(b, lib, "peak", tgt)
	for i, e := range es {
		k := kernel(b, lib, fmt.Sprintf("wg%d", i), tgt)
		b.Run(tgt.Name+"/"+e.name, func(b *testing.B) { benchTrainKernel(b, k, pk, tgt, arena, e.s.tileCount(), e.s.flops()) })
	}
}

// benchTrainKernel times k over its tiles and reports its GFLOP/s on one
// thread, as % of the FMA peak kernel pk measured right after, and on two
// threads (measure2).
func benchTrainKernel(b *testing.B, k, pk ktest.Kernel, tgt Target, arena []float32, tiles int, flops int64) {
	for i := 0; i < b.N; i++ {
		k.Run(arena, nil, 0, tiles)
	}
	b.StopTimer()
	gf := measure(k, arena, nil, tiles, flops)
	peak := measure(pk, arena, nil, benchPeak.Tiles, benchPeak.TileFlops(tgt))
	b.ReportMetric(gf, "GFLOP/s")
	b.ReportMetric(100*gf/peak, "%peak")
	b.ReportMetric(measure2(k, arena, tiles, flops), "GFLOP/s-2t")
	if *benchCold {
		b.ReportMetric(measureCold2(k, arena, tiles, flops), "GFLOP/s-2t-cold")
	}
}

// benchCold makes the training-kernel benchmarks also report GFLOP/s on two
// threads with cold caches (measureCold2), as the kernels of a training
// step find them: every tensor of a batch-128 step is larger than the L2.
var benchCold = flag.Bool("bench-cold", false, "also time the training kernels on two threads after evicting the caches (GFLOP/s-2t-cold)")

// measureCold2 is measure2 with the caches emptied before each run by
// writing and reading a 256 MiB buffer (larger than any L3 here), the
// median of 15 runs.
func measureCold2(k ktest.Kernel, arena []float32, tiles int, flops int64) float64 {
	evict := make([]float32, 64<<20)
	var sink float32
	ds := make([]time.Duration, 15)
	for rep := range ds {
		for i := range evict {
			evict[i] += 1
		}
		for i := 0; i < len(evict); i += 16 {
			sink += evict[i]
		}
		var wg sync.WaitGroup
		start := time.Now()
		for t := 0; t < 2; t++ {
			wg.Add(1)
			go func(t int) {
				defer wg.Done()
				k.Run(arena, nil, tiles*t/2, tiles*(t+1)/2)
			}(t)
		}
		wg.Wait()
		ds[rep] = time.Since(start)
	}
	if sink < 0 {
		panic("unreachable")
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return float64(flops) / ds[len(ds)/2].Seconds() * 1e-9
}

// BenchmarkTrainConv reports, like BenchmarkTrainConvGradWeight, the
// forward (fw) and input-gradient (dgrad) training convolutions on the same
// shapes: with it the three products of one layer compare on one machine.
func BenchmarkTrainConv(b *testing.B) {
	tgt := benchTarget(b)
	const X, Y, Wt, WtF = 0, 8 << 20, 12 << 20, 12<<20 + 512<<10
	kinds := []struct {
		name  string
		tiles func(s ConvGeom) int
	}{
		{"fw", func(s ConvGeom) int { return TrainConvSpec{ConvGeom: s}.tileCount() }},
		{"fwpack", func(s ConvGeom) int { return TrainConvSpec{ConvGeom: s}.tileCount() }},
		{"dgrad", func(s ConvGeom) int { return TrainConvGradInputSpec{ConvGeom: s}.tileCount() }},
		// The input gradient reading a packed weight (Packed), where
		// its kernel can.
		{"dgradpack", func(s ConvGeom) int { return TrainConvGradInputSpec{ConvGeom: s}.tileCount() }},
	}
	lib := buildLibFor(b, []Target{tgt}, func(m *Module) error {
		if _, _, err := m.Peak("peak", benchPeak); err != nil {
			return err
		}
		for i, c := range benchWgrads {
			if _, _, err := m.Train(fmt.Sprintf("fw%d", i), TrainConvSpec{ConvGeom: c.s, X: X, Wt: Wt, Bias: -1, Out: Y}); err != nil {
				return err
			}
			if _, _, err := m.Train(fmt.Sprintf("dgrad%d", i), TrainConvGradInputSpec{ConvGeom: c.s, DY: Y, Wt: Wt, DX: X, Acc: -1}); err != nil {
				return err
			}
			if fs := (TrainConvSpec{ConvGeom: c.s, X: X, Wt: WtF, Bias: -1, Out: Y, Packed: true}); fs.PackOK() {
				if _, _, err := m.Train(fmt.Sprintf("fwpack%d", i), fs); err != nil {
					return err
				}
			}
			if fs := (TrainConvGradInputSpec{ConvGeom: c.s, DY: Y, Wt: WtF, DX: X, Acc: -1, Packed: true}); fs.PackOK() {
				if _, _, err := m.Train(fmt.Sprintf("dgradpack%d", i), fs); err != nil {
					return err
				}
			}
		}
		return nil
	})
	arena := randomAligned(rand.New(rand.NewSource(1)), 13<<20, 1)
	pk := kernel(b, lib, "peak", tgt)
	for _, kd := range kinds {
		for i, c := range benchWgrads {
			s := c.s
			if kd.name == "dgradpack" && !(TrainConvGradInputSpec{ConvGeom: s}).PackOK() || kd.name == "fwpack" && !(TrainConvSpec{ConvGeom: s}).PackOK() {
				continue
			}
			k := kernel(b, lib, fmt.Sprintf("%s%d", kd.name, i), tgt)
			tiles := kd.tiles(s)
			flops := 2 * int64(s.N*s.O*s.OH*s.OW) * int64(s.C*s.KH*s.KW)
			b.Run(kd.name+"/"+tgt.Name+"/"+c.name, func(b *testing.B) { benchTrainKernel(b, k, pk, tgt, arena, tiles, flops) })
		}
	}
}

// randomAligned returns n aligned floats drawn from r, normal with
// standard deviation scale (the benchmarks' arenas and weights).
func randomAligned(r *rand.Rand, n int, scale float32) []float32 {
	a := ktest.Aligned(n)
	for i := range a {
		a[i] = float32(r.NormFloat64()) * scale
	}
	return a
}

// measure2 returns the GFLOP/s of the fastest of 20 runs of k on two
// goroutines, each calling it on its half of [0, tiles) as the runtime's
// threads do.
func measure2(k ktest.Kernel, arena []float32, tiles int, flops int64) float64 {
	best := time.Duration(1 << 62)
	for rep := 0; rep < 20; rep++ {
		var wg sync.WaitGroup
		start := time.Now()
		for t := 0; t < 2; t++ {
			wg.Add(1)
			go func(t int) {
				defer wg.Done()
				k.Run(arena, nil, tiles*t/2, tiles*(t+1)/2)
			}(t)
		}
		wg.Wait()
		best = min(best, time.Since(start))
	}
	return float64(flops) / best.Seconds() * 1e-9
}

// benchBNs are BatchNorm shapes of mini_inception's training step at batch
// 128: the stem's two (28x28, 14x14 after the strided conv), an
// Inception-A branch's and an Inception-B branch's.
var benchBNs = []struct {
	name            string
	outer, c, inner int
}{
	{"32ch_28x28_n128", 128, 32, 784},
	{"64ch_14x14_n128", 128, 64, 196},
	{"16ch_14x14_n128", 128, 16, 196},
	{"48ch_7x7_n128", 128, 48, 49},
}

// BenchmarkTrainBatchNorm reports the bandwidth (GB/s: the bytes of the
// arrays a kernel reads or writes, each counted once: x and y for the
// forward, dy, x and dx for the gradient; their second pass's reread of x
// and dy is not counted) of the training BatchNorm and its gradient, both
// with the fused ReLU, on one thread and on two (GB/s-2t). The arrays of
// the larger shapes outgrow L2, so this is mostly the machine's memory
// bandwidth: compare it with a copy's, measured on the spot.
func BenchmarkTrainBatchNorm(b *testing.B) {
	tgt := x86Targets(b)[0]
	const X, Y, DY, DX, P = 0, 4 << 20, 8 << 20, 12 << 20, 16 << 20
	lib := buildLibFor(b, []Target{tgt}, func(m *Module) error {
		for i, c := range benchBNs {
			if _, _, err := m.Train(fmt.Sprint("bn", i), BatchNormTrainSpec{Outer: c.outer, C: c.c, Inner: c.inner, Eps: 1e-3,
				X: X, Wt: P, B: P + 256, Y: Y, Mean: P + 512, Var: P + 768, ReLU: true}); err != nil {
				return err
			}
			if _, _, err := m.Train(fmt.Sprint("bngrad", i), BatchNormTrainGradSpec{Outer: c.outer, C: c.c, Inner: c.inner, Eps: 1e-3,
				DY: DY, X: X, Wt: P, Mean: P + 512, Var: P + 768, DX: DX, DW: P + 1024, DB: P + 1280, ReLU: true, R: -1, B: P + 256}); err != nil {
				return err
			}
		}
		return nil
	})
	arena := randomAligned(rand.New(rand.NewSource(1)), P+2048, 1)
	for i := P + 768; i < P+1024; i++ {
		arena[i] = 1 + arena[i]*arena[i] // variances
	}
	for i, c := range benchBNs {
		n := int64(c.outer * c.c * c.inner)
		for _, kd := range []struct {
			name   string
			arrays int64
		}{{"bn", 2}, {"bngrad", 3}} {
			k := kernel(b, lib, fmt.Sprint(kd.name, i), tgt)
			bytes := 4 * n * kd.arrays
			tiles := BatchNormTrainSpec{C: c.c, Inner: c.inner}.tileCount()
			b.Run(kd.name+"/"+tgt.Name+"/"+c.name, func(b *testing.B) {
				for j := 0; j < b.N; j++ {
					k.Run(arena, nil, 0, tiles)
				}
				b.StopTimer()
				b.ReportMetric(measure(k, arena, nil, tiles, bytes), "GB/s")
				b.ReportMetric(measure2(k, arena, tiles, bytes), "GB/s-2t")
			})
		}
	}
}
