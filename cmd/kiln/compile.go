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
	"github.com/kiln-dev/kiln/target"
)

// buildTarget is a build target of the target table (package target), as
// --target names it for code generation: the pipeline's view of it (name and
// channel block) and the ISA variants compiled into the artifact. Both
// x86-64 ISAs use 16-channel blocks, so one artifact (one arena, one weights
// blob) carries AVX-512 and AVX2 kernels and the runtime picks one at load
// time.
type buildTarget struct {
	name  string
	build target.Build
	pass  passes.Target
	cg    []codegen.Target
}

func hostTarget() string { return target.Host(runtime.GOARCH) }

// buildTargetNames lists the build targets of the table, for flag help.
func buildTargetNames() string {
	var names []string
	for _, b := range target.Builds() {
		names = append(names, b.Name)
	}
	return strings.Join(names, ", ")
}

// lookupBuildTarget resolves --target through the target table. An unknown
// name is a usage error; a listed target that cannot be built yet (a GPU)
// is an error saying why, before anything is loaded or run.
func lookupBuildTarget(name string) (buildTarget, error) {
	b, err := target.LookupBuild(name)
	if err != nil {
		return buildTarget{}, usagef("unsupported --target %q (supported: %s)", name, buildTargetNames())
	}
	cg, err := codegen.TargetsOf(b)
	if err != nil {
		return buildTarget{}, err
	}
	pt, err := passes.TargetFor(b)
	if err != nil {
		return buildTarget{}, err
	}
	return buildTarget{name: b.Name, build: b, pass: pt, cg: cg}, nil
}

// planForCodegen runs the inference pipeline for build target bt, after
// checking that no pass code generation needs is disabled, and returns the
// planned state; printed graphs and timings go to w (nil: discarded).
func planForCodegen(g *ir.Graph, bt buildTarget, pf *pipeFlags, w io.Writer) (*passes.State, error) {
	pf.optimize = true
	pf.target = bt.name // the layout pass uses the build target's channel block
	if err := pf.checkFor(passes.Codegen); err != nil {
		return nil, err
	}
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
	return st, nil
}

// checkBuildable runs what kiln build runs before LLVM: the pipeline for bt
// and lower.Check, the legality check Lower itself starts with (no weights,
// no LLVM). A graph that passes builds for bt, or this says why not.
func checkBuildable(g *ir.Graph, bt buildTarget) error {
	var pf pipeFlags
	st, err := planForCodegen(g, bt, &pf, nil)
	if err != nil {
		return err
	}
	return lower.Check(st, bt.cg)
}

// withTaps returns a copy of g whose outputs are g's followed by the nodes
// of the marks named by taps. The pipeline keeps marked values observable
// (no fusion hides them) and keeps the order of outputs, so the artifact's
// extra outputs are the taps in order. An unknown name is an error listing
// the valid ones.
func withTaps(g *ir.Graph, taps []string) (*ir.Graph, error) {
	out := passes.Clone(g)
	seen := map[string]bool{}
	for _, name := range taps {
		id, ok := g.Mark(name)
		if !ok {
			return nil, fmt.Errorf("--tap: %s has no module %q (modules: %s)", g.Name, name, markNames(g))
		}
		if seen[name] {
			return nil, fmt.Errorf("--tap: %q given twice", name)
		}
		seen[name] = true
		out.Outputs = append(out.Outputs, id)
	}
	return out, nil
}

// markNames lists g's marks for messages, abbreviated past 40.
func markNames(g *ir.Graph) string {
	var names []string
	for i, m := range g.Marks {
		if i == 40 {
			names = append(names, fmt.Sprintf("... %d more", len(g.Marks)-40))
			break
		}
		names = append(names, m.Name)
	}
	return strings.Join(names, ", ")
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
	return compileNetTaps(g, params, bt, pf, w, nil)
}

// compileNetTaps is compileNet that also compiles the marked values named by
// taps as extra outputs of the artifact (Manifest.Taps, Model.RunTaps).
func compileNetTaps(g *ir.Graph, params map[string]*tensor.Tensor, bt buildTarget, pf *pipeFlags, w io.Writer, taps []string) (*compiled, error) {
	return compileNetCtx(context.Background(), g, params, bt, pf, w, taps)
}

// compileNetCtx is compileNetTaps stopped by cancelling ctx: the running
// compilers are killed and ctx's error returned. Its temporary directory
// (kiln-build-*) is removed on return and registered for removal on
// interrupt (interrupt.go) while it exists.
func compileNetCtx(ctx context.Context, g *ir.Graph, params map[string]*tensor.Tensor, bt buildTarget, pf *pipeFlags, w io.Writer, taps []string) (*compiled, error) {
	t0 := time.Now()
	if len(taps) > 0 {
		var err error
		if g, err = withTaps(g, taps); err != nil {
			return nil, err
		}
	}
	st, err := planForCodegen(g, bt, pf, w)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prog, err := lower.Lower(st, params, bt.cg)
	if err == nil && len(taps) > 0 {
		err = prog.NameTaps(taps)
	}
	if err != nil {
		return nil, err
	}
	tc, err := codegen.FindLLVM()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kiln-build-")
	if err != nil {
		return nil, err
	}
	addTemp(dir)
	defer dropTemp(dir)
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
	if err := prog.Compile(ctx, tc, so, progress); err != nil {
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
