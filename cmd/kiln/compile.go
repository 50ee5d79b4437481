package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/codegen"
	"github.com/kiln-dev/kiln/codegen/lower"
	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/ir/tensor"
	"github.com/kiln-dev/kiln/passes"
	rt "github.com/kiln-dev/kiln/runtime"
)

// buildTarget is what --target names for code generation: the pipeline's
// layout target and the ISA variants compiled into the artifact. Both x86-64
// ISAs use 16-channel blocks, so one artifact (one arena, one weights blob)
// carries AVX-512 and AVX2 kernels and the runtime picks one at load time.
type buildTarget struct {
	name string
	pass passes.Target
	cg   []codegen.Target
}

var buildTargets = []buildTarget{
	{"x86-64", passes.Target{Name: "avx512", Lanes: 16}, []codegen.Target{codegen.AVX512, codegen.AVX2}},
	{"avx512", passes.Target{Name: "avx512", Lanes: 16}, []codegen.Target{codegen.AVX512}},
	{"avx2", passes.Target{Name: "avx512", Lanes: 16}, []codegen.Target{codegen.AVX2}},
	{"arm64-neon", passes.Target{Name: "neon", Lanes: 4}, []codegen.Target{codegen.NEON}},
}

func hostTarget() string {
	if runtime.GOARCH == "arm64" {
		return "arm64-neon"
	}
	return "x86-64"
}

func lookupBuildTarget(name string) (buildTarget, error) {
	var names []string
	for _, t := range buildTargets {
		if t.name == name {
			return t, nil
		}
		names = append(names, t.name)
	}
	return buildTarget{}, usagef("unsupported --target %q (supported: %s)", name, strings.Join(names, ", "))
}

// compiled is a network compiled to a shared object.
type compiled struct {
	prog  *lower.Program
	so    []byte
	stats string
}

// compileNet runs the pass pipeline, lowers the graph and compiles it with
// LLVM; progress lines go to w (nil: silent).
func compileNet(g *ir.Graph, params map[string]*tensor.Tensor, bt buildTarget, pf *pipeFlags, w io.Writer) (*compiled, error) {
	t0 := time.Now()
	pf.optimize = true
	pf.target = bt.pass.Name // the layout pass uses the target's channel block
	var out io.Writer = io.Discard
	if w != nil {
		out = w
	}
	st, err := pf.run(g, out)
	if err != nil {
		return nil, err
	}
	if st.Plan == nil {
		return nil, fmt.Errorf("cannot compile: the pipeline stopped before plan-buffers")
	}
	prog, err := lower.Lower(st, params, bt.cg)
	if err != nil {
		return nil, err
	}
	tc, err := codegen.FindLLVM()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kiln-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	so := filepath.Join(dir, g.Name+".so")
	cachedN := 0
	progress := func(done, total int, cached bool) {
		if cached {
			cachedN++
		}
		if w != nil {
			fmt.Fprintf(w, "\rcompiling %s: %d/%d kernel modules (%d cached)", g.Name, done, total, cachedN)
			if done == total {
				fmt.Fprintln(w)
			}
		}
	}
	if err := prog.Compile(context.Background(), tc, so, progress); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(so)
	if err != nil {
		return nil, err
	}
	stats := fmt.Sprintf("%s: %d kernels, arena %.1f MiB, weights %.1f MiB, compiled in %.1f s",
		g.Name, len(prog.Manifest.Kernels), float64(prog.Manifest.ArenaBytes)/(1<<20), float64(len(prog.Weights))/(1<<20), time.Since(t0).Seconds())
	return &compiled{prog: prog, so: b, stats: stats}, nil
}

// open loads a compiled network in this process. The weights are copied into
// huge-page memory as the standalone executable does, so that kiln bench
// measures what the built binary runs.
func (c *compiled) open(opts rt.Options) (*rt.Model, error) {
	opts.CopyWeights = true
	return rt.Open(rt.Artifact{Manifest: c.prog.Manifest, SharedObject: c.so, Weights: c.prog.Weights}, opts)
}
