package main

import (
	"flag"
	"fmt"
	"sort"
	"time"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
)

func init() {
	register(&command{name: "demo", args: "[FILE]", summary: "run a network (default inception_v4) end to end on a built-in sample with procedural weights",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			threads := fs.Int("threads", 0, "worker threads (0: all cores)")
			return func(args []string) error {
				file := "inception_v4"
				if len(args) > 1 {
					return usagef("want at most one FILE")
				}
				if len(args) == 1 {
					file = args[0]
				}
				g, err := loadNet(file, dsl.Options{Batch: 1})
				if err != nil {
					return err
				}
				_, learnable := countParams(g)
				macs := totalMACs(g)
				in := g.Inputs()[0]
				fmt.Fprintf(e.stdout, "network     %s: %s parameters, %s MACs, input %s\n", g.Name, commas(learnable), commas(macs), in.Type)
				t0 := time.Now()
				params, err := loadWeights(g, "")
				if err != nil {
					return err
				}
				// The sample is the fixtures' procedural "input" tensor: uniform in [-1, 1).
				x, err := tensor.Generate("input", in.Type.Shape)
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "weights     procedural (tensor.Generate), %d tensors in %.2f s\n", len(params), time.Since(t0).Seconds())
				t1 := time.Now()
				res, err := interp.Run(g, params, map[string]*tensor.Tensor{in.Name: x}, interp.Options{Threads: *threads})
				if err != nil {
					return err
				}
				el := time.Since(t1)
				fmt.Fprintf(e.stdout, "interpreter %.2f s, %.2f GFLOP/s (reference backend)\n", el.Seconds(), 2*float64(macs)/el.Seconds()/1e9)
				y := res.Outputs[0]
				idx := make([]int, len(y.Data))
				for i := range idx {
					idx[i] = i
				}
				sort.SliceStable(idx, func(a, b int) bool { return y.Data[idx[a]] > y.Data[idx[b]] })
				fmt.Fprintf(e.stdout, "top-5       ")
				for _, i := range idx[:min(5, len(idx))] {
					fmt.Fprintf(e.stdout, "%d:%.4f ", i, y.Data[i])
				}
				fmt.Fprintln(e.stdout)
				return nil
			}
		}})
}
