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
	lib   bool // kiln build --format lib: append to the runtime library, not the runner (build_lib.go)
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
			return nil, unknownTap(g, name)
		}
		if seen[name] {
			return nil, fmt.Errorf("--tap: %q given twice", name)
		}
		seen[name] = true
		out.Outputs = append(out.Outputs, id)
	}
	return out, nil
}

// unknownTap is the error for --tap NAME when g has no mark NAME: it lists
// the valid names (markNames) and suggests the closest one.
func unknownTap(g *ir.Graph, name string) error {
	// The closest by edit distance; on a tie, the longest common prefix.
	best, bestD, bestP := "", len(name)/2+2, 0 // farther is no likely typo
	for _, m := range g.Marks {
		d, p := levenshtein(name, m.Name), commonPrefix(name, m.Name)
		if d < bestD || best != "" && d == bestD && p > bestP {
			best, bestD, bestP = m.Name, d, p
		}
	}
	hint := ""
	if best != "" {
		hint = fmt.Sprintf("; did you mean %s?", best)
	}
	return fmt.Errorf("--tap: %s has no module %q (modules: %s)%s", g.Name, name, markNames(g, name), hint)
}

// markNames lists g's marks for messages. Past 40 it keeps those in the
// same module as query (the same first path segment: features.* for
// features.55), then abbreviates, pointing to kiln dump for the full list.
func markNames(g *ir.Graph, query string) string {
	const max = 40
	if len(g.Marks) <= max {
		var names []string
		for _, m := range g.Marks {
			names = append(names, m.Name)
		}
		return strings.Join(names, ", ")
	}
	first, _, _ := strings.Cut(query, ".")
	var same, other []string
	for _, m := range g.Marks {
		if f, _, _ := strings.Cut(m.Name, "."); f == first {
			same = append(same, m.Name)
		} else {
			other = append(other, m.Name)
		}
	}
	names := append(same, other...)
	return strings.Join(names[:max], ", ") + fmt.Sprintf(", ... %d more (kiln dump lists every mark)", len(names)-max)
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// levenshtein is the edit distance of a and b (Wagner–Fischer, two rows).
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// compiled is a network compiled to a shared object.
type compiled struct {
	prog  *lower.Program
	so    []byte
	stats string
	// imageFlags, when set, override the image path's labels and
	// preprocessing in writeStandalone (kiln build --labels, --mean, ...).
	imageFlags *imageFlags
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
