package trainer

import (
	"flag"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
)

// profileTop, when positive, makes BenchmarkCompiledStepProfile also list
// the slowest kernels one by one.
var profileTop = flag.Int("profile-top", 0, "list the `n` slowest kernels of BenchmarkCompiledStepProfile")

// profileNets and profileBatch choose BenchmarkCompiledStepProfile's
// networks (archs/ names) and batch.
var (
	profileNets  = flag.String("profile-nets", "mini_inception,mini_inception_resnet", "comma-separated `networks` of BenchmarkCompiledStepProfile")
	profileBatch = flag.Int("profile-batch", 128, "`batch` of BenchmarkCompiledStepProfile")
)

// profileSpecs makes the -profile-top list also print each kernel's
// codegen spec (its shapes and offsets), from a second lowering of the
// same step graph (lowering is deterministic: the names match).
var profileSpecs = flag.Bool("profile-specs", false, "print the codegen spec of each kernel -profile-top lists")

// profileThreads is the runtime threads of BenchmarkCompiledStepProfile.
var profileThreads = flag.Int("profile-threads", 2, "runtime threads of BenchmarkCompiledStepProfile")

// BenchmarkCompiledStepProfile times one compiled RMSProp step of each mini
// network at batch 128 (or -profile-nets at -profile-batch; 2 threads, the
// best ISA of the CPU) and reports,
// per op kind, the time per step and GFLOP/s = 2·MACs / time, from the
// runtime's per-kernel timings (Model.Profile: thread 0's time including
// its barrier wait), plus images/s of the whole step. Run with
//
//	go test -run '^$' -bench CompiledStepProfile -benchtime 3x ./train/trainer/
func BenchmarkCompiledStepProfile(b *testing.B) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(b, err)
	}
	batch := *profileBatch
	for _, net := range strings.Split(*profileNets, ",") {
		b.Run(net, func(b *testing.B) {
			g, err := dsl.LoadFile(net+".kiln", dsl.Options{FS: archs.FS, Batch: batch})
			if err != nil {
				b.Fatal(err)
			}
			sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
			if err != nil {
				b.Fatal(err)
			}
			params, err := g.GeneratedParams()
			if err != nil {
				b.Fatal(err)
			}
			for _, s := range sg.State {
				params[s.Name] = s.Initial()
			}
			input := g.Inputs()[0]
			x := tensor.New(input.Type.Shape...)
			for i := range x.Data {
				x.Data[i] = float32(data.Hash(7, 0, uint64(i))%2001)/1000 - 1
			}
			classes := g.Nodes[g.Outputs[0]].Type.Shape[1]
			target := tensor.New(batch, classes)
			for i := 0; i < batch; i++ {
				target.Data[i*classes+i%classes] = 1
			}
			in := map[string]*tensor.Tensor{input.Name: x, sg.Target: target}
			ce := &Compiled{Threads: *profileThreads}
			defer ce.Close()
			if _, _, err := ce.Step(sg, params, in); err != nil { // compile, warm up
				b.Fatal(err)
			}
			man := ce.m.Manifest()
			specs := map[string]any{}
			if *profileSpecs {
				st, err := passes.RunTraining(sg.Graph, passes.Options{})
				if err != nil {
					b.Fatal(err)
				}
				p, err := lower.LowerTraining(st, params, defaultTargets(), lower.TrainOptions{Input: input.Name, LR: 0.045})
				if err != nil {
					b.Fatal(err)
				}
				for _, k := range p.Kernels() {
					specs[k.Name] = k.Spec
				}
			}
			byOp := map[string]time.Duration{}
			byKernel := make([]time.Duration, len(man.Kernels))
			runs := make([][]time.Duration, len(man.Kernels))
			macs := map[string]int64{}
			var total time.Duration
			b.ResetTimer()
			for it := 0; it < b.N; it++ {
				start := time.Now()
				d, err := ce.m.Profile(x.Data, ce.out)
				if err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				for i, k := range man.Kernels {
					byOp[k.Op] += d[i]
					byKernel[i] += d[i]
					runs[i] = append(runs[i], d[i])
					macs[k.Op] += k.MACs
				}
			}
			ops := make([]string, 0, len(byOp))
			for op := range byOp {
				ops = append(ops, op)
			}
			sort.Slice(ops, func(i, j int) bool { return byOp[ops[i]] > byOp[ops[j]] })
			for _, op := range ops {
				per := byOp[op] / time.Duration(b.N)
				line := fmt.Sprintf("%-22s %8.1f ms/step", op, float64(per)/1e6)
				if macs[op] > 0 {
					line += fmt.Sprintf("  %6.1f GFLOP/s", 2*float64(macs[op])/byOp[op].Seconds()/1e9)
				}
				b.Log(line)
			}
			// The sum of each kernel's median over the steps is less
			// sensitive to a shared machine's noise than the mean. (Not the
			// minimum: thread 0's time for a kernel is near zero whenever
			// it arrived late and found the work done.)
			medOp := map[string]time.Duration{}
			var medSum time.Duration
			for i, k := range man.Kernels {
				d := runs[i]
				sort.Slice(d, func(a, b int) bool { return d[a] < d[b] })
				medOp[k.Op] += d[len(d)/2]
				medSum += d[len(d)/2]
			}
			for _, op := range ops[:min(3, len(ops))] {
				b.Logf("%-22s %8.1f ms/step, sum of medians", op, float64(medOp[op])/1e6)
			}
			b.Logf("%-22s %8.1f ms/step, sum of medians (%.1f img/s)", "all kernels", float64(medSum)/1e6, float64(batch)/medSum.Seconds())
			if *profileTop > 0 {
				idx := make([]int, len(man.Kernels))
				for i := range idx {
					idx[i] = i
				}
				sort.SliceStable(idx, func(i, j int) bool { return byKernel[idx[i]] > byKernel[idx[j]] })
				for _, i := range idx[:min(*profileTop, len(idx))] {
					k := man.Kernels[i]
					line := fmt.Sprintf("%-20s %-40s %7.2f ms  %4d tiles", k.Op, k.Label+k.Name, float64(byKernel[i]/time.Duration(b.N))/1e6, k.Tiles)
					if k.MACs > 0 {
						line += fmt.Sprintf("  %6.1f GFLOP/s  %5.1f MMACs", 2*float64(k.MACs)*float64(b.N)/byKernel[i].Seconds()/1e9, float64(k.MACs)/1e6)
					}
					b.Log(line)
					if sp, ok := specs[k.Name]; ok {
						b.Logf("    %+v", sp)
					}
				}
			}
			b.ReportMetric(float64(batch*b.N)/total.Seconds(), "img/s")
		})
	}
}
