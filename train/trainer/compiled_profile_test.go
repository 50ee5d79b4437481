package trainer

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/archs"
	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/train"
	"github.com/kiln-dev/kiln/train/data"
)

// BenchmarkCompiledStepProfile times one compiled RMSProp step of each mini
// network at batch 128 (2 threads, the best ISA of the CPU) and reports,
// per op kind, the time per step and GFLOP/s = 2·MACs / time, from the
// runtime's per-kernel timings (Model.Profile: thread 0's time including
// its barrier wait), plus images/s of the whole step. Run with
//
//	go test -run '^$' -bench CompiledStepProfile -benchtime 3x ./train/trainer/
func BenchmarkCompiledStepProfile(b *testing.B) {
	if _, err := codegen.FindLLVM(); err != nil {
		testenv.Check(b, err)
	}
	const batch = 128
	for _, net := range []string{"mini_inception", "mini_inception_resnet"} {
		b.Run(net, func(b *testing.B) {
			g, err := dsl.LoadFile(net+".kiln", dsl.Options{FS: archs.FS, Batch: batch})
			if err != nil {
				b.Fatal(err)
			}
			sg, err := train.Step(g, train.StepOptions{Smoothing: 0.1, Optimizer: train.PaperRMSProp})
			if err != nil {
				b.Fatal(err)
			}
			params := map[string]*tensor.Tensor{}
			for _, p := range g.Params() {
				v, err := tensor.Generate(p.Name, p.Type.Shape)
				if err != nil {
					b.Fatal(err)
				}
				params[p.Name] = v
			}
			for _, s := range sg.State {
				params[s.Name] = s.Initial()
			}
			input := g.Inputs()[0]
			x := tensor.New(input.Type.Shape...)
			for i := range x.Data {
				x.Data[i] = float32(data.Hash(7, 0, uint64(i))%2001)/1000 - 1
			}
			target := tensor.New(batch, 10)
			for i := 0; i < batch; i++ {
				target.Data[i*10+i%10] = 1
			}
			in := map[string]*tensor.Tensor{input.Name: x, sg.Target: target}
			ce := &Compiled{Threads: 2}
			defer ce.Close()
			if _, _, err := ce.Step(sg, params, in); err != nil { // compile, warm up
				b.Fatal(err)
			}
			man := ce.m.Manifest()
			byOp := map[string]time.Duration{}
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
			b.ReportMetric(float64(batch*b.N)/total.Seconds(), "img/s")
		})
	}
}
