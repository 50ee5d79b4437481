package main

import (
	"flag"
	"fmt"
	"time"

	"github.com/kiln-dev/kiln/dsl"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/interp"
	"github.com/kiln-dev/kiln/ir/tensor"
	rt "github.com/kiln-dev/kiln/runtime"
)

func init() {
	register(&command{name: "run", args: "FILE", summary: "run a network on an .npy input and write the output .npy (atomically)",
		setup: func(fs *flag.FlagSet, e *env) func([]string) error {
			weights := fs.String("weights", "", "safetensors `file` with the network's weights (timm names); default: procedural weights")
			stripPrefix := fs.String("strip-prefix", "", "remove `PREFIX` from every --weights name that starts with it (e.g. module. from a DataParallel state dict)")
			input := fs.String("input", "", "input tensor `X.npy` (float32, N x C x H x W); its shape sets the batch and image size")
			output := fs.String("output", "", "where to write the output `Y.npy`")
			backend := fs.String("backend", "interp", "execution `backend`: interp (reference interpreter) or cpu (compiled with LLVM for this machine)")
			isa := fs.String("isa", "", "with --backend cpu: force the instruction set `ISA` (avx512, avx2, neon); default $KILN_ISA or the best available")
			threads := fs.Int("threads", 0, "worker threads (0: all cores)")
			tap := fs.String("tap", "", "write the value of this marked module `NAME` (e.g. features.5) instead of the network output")
			return func(args []string) error {
				file, err := oneFile(args)
				if err != nil {
					return err
				}
				if *input == "" || *output == "" {
					return usagef("--input and --output are required")
				}
				if *backend != "interp" && *backend != "cpu" {
					return usagef("unknown --backend %q (available: interp, cpu)", *backend)
				}
				if *threads < 0 {
					return usagef("--threads must not be negative")
				}
				// The input may be at most one tensor of the default
				// per-tensor limit (1 GiB of float32; docs/LIMITS.md), so
				// --input /dev/zero or a huge file is refused unread.
				x, err := tensor.ReadNPYFileLimit(*input, tensor.NPYLimit(maxInputElems))
				if err != nil {
					return err
				}
				g, err := loadForInput(file, *input, x)
				if err != nil {
					return err
				}
				params, err := loadWeightsStrip(g, *weights, *stripPrefix)
				if err != nil {
					return err
				}
				var keep []int
				if *tap != "" {
					id, ok := g.Mark(*tap)
					if !ok {
						return unknownTap(g, *tap)
					}
					keep = []int{id}
				}
				if *backend == "cpu" {
					return runCompiled(e, g, params, x, *output, *isa, *threads, *tap)
				}
				start := time.Now()
				res, err := interp.Run(g, params, map[string]*tensor.Tensor{g.Inputs()[0].Name: x}, interp.Options{Threads: *threads, Keep: keep})
				if err != nil {
					return err
				}
				elapsed := time.Since(start)
				y := res.Outputs[0]
				if *tap != "" {
					y = res.Values[keep[0]]
				}
				if err := tensor.WriteNPYFile(*output, y); err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "wrote %s: %s (%s, %s backend, %.2f s)\n", *output, tensor.ShapeString(y.Shape), g.Name, *backend, elapsed.Seconds())
				return nil
			}
		}})
}

// maxInputElems bounds kiln run's --input: the elements of one tensor of
// the default per-tensor limit (dsl.Limits.MaxTensorBytes, 1 GiB) in float32.
const maxInputElems = (1 << 30) / 4

// loadForInput elaborates the network for the shape of input tensor x: the
// batch is x's first dimension and the other dimensions replace the declared
// ones. Rank and channel count must match the declaration.
func loadForInput(file, inputPath string, x *tensor.Tensor) (*ir.Graph, error) {
	decl, err := loadNet(file, dsl.Options{Batch: 1})
	if err != nil {
		return nil, err
	}
	ins := decl.Inputs()
	if len(ins) != 1 {
		return nil, fmt.Errorf("%s has %d inputs; kiln run supports one", decl.Name, len(ins))
	}
	want := ins[0].Type.Shape
	if len(x.Shape) != len(want) {
		return nil, fmt.Errorf("input %s: shape %s has rank %d, %s expects rank %d (N x %s)",
			inputPath, tensor.ShapeString(x.Shape), len(x.Shape), decl.Name, len(want), ir.ShapeString(want[1:]))
	}
	if len(want) > 1 && x.Shape[1] != want[1] {
		return nil, fmt.Errorf("input %s: shape %s has %d channels, %s expects %d (N x %s)",
			inputPath, tensor.ShapeString(x.Shape), x.Shape[1], decl.Name, want[1], ir.ShapeString(want[1:]))
	}
	g, err := loadNet(file, dsl.Options{Batch: x.Shape[0], InputShape: x.Shape[1:]})
	if err != nil {
		return nil, fmt.Errorf("input %s: shape %s: %w", inputPath, tensor.ShapeString(x.Shape), err)
	}
	return g, nil
}

// runCompiled compiles g for this machine, runs it on x and writes the
// output, or the value of the marked module tap when tap is not "".
func runCompiled(e *env, g *ir.Graph, params map[string]*tensor.Tensor, x *tensor.Tensor, output, isa string, threads int, tap string) error {
	bt, err := lookupBuildTarget(hostTarget())
	if err != nil {
		return err
	}
	var pf pipeFlags
	var taps []string
	if tap != "" {
		taps = []string{tap}
	}
	c, err := compileNetTaps(g, params, bt, &pf, e.stderr, taps)
	if err != nil {
		return err
	}
	m, err := c.open(rt.Options{ISA: isa, Threads: threads})
	if err != nil {
		return err
	}
	defer m.Close()
	y := tensor.New(c.prog.Manifest.Output.Shape...)
	tv := make([][]float32, len(taps))
	var tapT *tensor.Tensor
	if tap != "" {
		tapT = tensor.New(c.prog.Manifest.Taps[0].Shape...)
		tv[0] = tapT.Data
	}
	start := time.Now()
	if err := m.RunTaps(x.Data, y.Data, tv); err != nil {
		return err
	}
	elapsed := time.Since(start)
	if tapT != nil {
		y = tapT
	}
	if err := tensor.WriteNPYFile(output, y); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s: %s (%s, cpu backend, %s, %.3f s)\n", output, tensor.ShapeString(y.Shape), g.Name, m.ISA(), elapsed.Seconds())
	return nil
}
