// Package passes holds Kiln's graph optimization pipeline: a declared, ordered
// list of named passes over ir.Graph, each in its own file, with hooks to print,
// time and verify after every pass (as LLVM's legacy pass manager offers with
// -print-after and -time-passes).
package passes

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/target"
)

// Target is what the passes need of a build target of the target table
// (package target): its name, for messages, and the channel block B of the
// NCHW{B}c activations its kernels expect. The layout pass blocks by Block and
// concat-in-place aligns channel offsets to it, so a plan made for a target
// is the plan its build uses.
type Target struct {
	// Name is the build target's name (x86-64, avx512, avx2, arm64-neon).
	Name string
	// Block is the channel block (16 on x86-64, 4 on NEON).
	Block int
}

// TargetFor returns the passes' view of build target b; a target that
// cannot be built yet (a GPU) is refused with the table's reason.
func TargetFor(b target.Build) (Target, error) {
	if why := b.NotImplemented(); why != "" {
		return Target{}, fmt.Errorf("%s", why)
	}
	return Target{Name: b.Name, Block: b.Block()}, nil
}

// Targets lists the buildable build targets of the target table, in table
// order (x86-64 first).
var Targets = func() []Target {
	var out []Target
	for _, b := range target.Builds() {
		if t, err := TargetFor(b); err == nil {
			out = append(out, t)
		}
	}
	return out
}()

// LookupTarget finds a build target of the table by name; an ISA name of
// the table (neon) names the build target made of that ISA alone.
func LookupTarget(name string) (Target, error) {
	b, err := target.LookupBuild(name)
	if err != nil {
		for _, c := range target.Builds() {
			if len(c.ISAs) == 1 && c.ISAs[0] == name {
				b, err = c, nil
				break
			}
		}
	}
	if err != nil {
		return Target{}, err
	}
	return TargetFor(b)
}

// State is what passes transform: the graph, plus results of analyses.
type State struct {
	Graph  *ir.Graph
	Target Target
	// Plan is set by plan-buffers.
	Plan *Plan
}

// Pass is one named transformation.
type Pass struct {
	// Name is stable kebab-case, used by --disable and --print-after.
	Name string
	// Doc is a one-line description.
	Doc string
	// After lists passes that, when enabled, must run before this one.
	After []string
	// Requires lists the graph properties (Prop* constants) this pass needs
	// of its input; Provides those it establishes (contracts.go). Run checks
	// them before running anything, so a disabled pass that a later pass or
	// the consumer needs fails at once, naming both.
	Requires, Provides []string
	Run                func(s *State) error
}

// Pipeline is the inference pipeline, in order.
func Pipeline() []*Pass {
	return []*Pass{
		foldBN,
		foldResidualScale,
		fuseEpilogue,
		concatInPlace,
		layoutPass,
		dcePass,
		schedulePass,
		planBuffers,
	}
}

// Lookup returns the pipeline's pass called name.
func Lookup(name string) *Pass {
	for _, p := range append(Pipeline(), TrainingPipeline()...) {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Options control a pipeline run.
type Options struct {
	Target Target
	// Disabled passes are skipped.
	Disabled map[string]bool
	// PrintAfter prints the graph after the named passes; PrintAfterAll after all.
	PrintAfter    map[string]bool
	PrintAfterAll bool
	// TimePasses prints a timing table at the end.
	TimePasses bool
	// VerifyEach runs the IR verifier after every pass and names the pass that
	// broke it.
	VerifyEach bool
	// Stop after this pass (run the pipeline prefix up to and including it).
	StopAfter string
	// Out receives printed graphs and timings.
	Out io.Writer
	// Consumer, when set, is who will use the result (Codegen,
	// PlanReport); Run refuses, before running any pass, a configuration
	// that does not provide what it requires.
	Consumer *Consumer
}

// CheckNames reports names that are not passes of the pipeline.
func CheckNames(names ...string) error {
	for _, n := range names {
		if Lookup(n) == nil {
			var all []string
			for _, p := range Pipeline() {
				all = append(all, p.Name)
			}
			return fmt.Errorf("unknown pass %q (passes: %s)", n, strings.Join(all, ", "))
		}
	}
	return nil
}

// TrainingPipeline is the pipeline of a training-step graph (train.Step):
// no inference rewrites (BatchNorm is in training mode, and fusing would
// hide values the backward pass reads), blocked layouts not yet (the
// backward ops run on plain layouts), then DCE, the memory-aware schedule,
// group-siblings (sibling 1x1 convolutions made adjacent, siblings.go) and
// the arena plan.
func TrainingPipeline() []*Pass {
	return []*Pass{dcePass, schedulePass, groupSiblingsPass, planBuffers}
}

// RunTraining runs TrainingPipeline over g (which it does not modify).
func RunTraining(g *ir.Graph, opts Options) (*State, error) {
	return runPasses(g, TrainingPipeline(), opts)
}

// Run runs the pipeline over g (which it does not modify) and returns the
// final state.
func Run(g *ir.Graph, opts Options) (*State, error) { return runPasses(g, Pipeline(), opts) }

func runPasses(g *ir.Graph, pipeline []*Pass, opts Options) (*State, error) {
	for k := range opts.Disabled {
		if err := CheckNames(k); err != nil {
			return nil, err
		}
	}
	for k := range opts.PrintAfter {
		if err := CheckNames(k); err != nil {
			return nil, err
		}
	}
	if opts.StopAfter != "" {
		if err := CheckNames(opts.StopAfter); err != nil {
			return nil, err
		}
	}
	if err := checkRequirements(pipeline, opts); err != nil {
		return nil, err
	}
	if opts.Target.Block == 0 {
		opts.Target = Targets[0]
	}
	s := &State{Graph: Clone(g), Target: opts.Target}
	type timing struct {
		name string
		d    time.Duration
	}
	var times []timing
	for _, p := range pipeline {
		if opts.Disabled[p.Name] {
			continue
		}
		t0 := time.Now()
		if err := runPass(p, s); err != nil {
			return nil, fmt.Errorf("pass %s: %w", p.Name, err)
		}
		times = append(times, timing{p.Name, time.Since(t0)})
		if opts.VerifyEach {
			if err := s.Graph.Verify(); err != nil {
				return nil, fmt.Errorf("verifier failed after pass %s:\n%w", p.Name, err)
			}
		}
		if opts.Out != nil && (opts.PrintAfterAll || opts.PrintAfter[p.Name]) {
			fmt.Fprintf(opts.Out, "// ----- IR after %s -----\n", p.Name)
			if err := ir.Print(opts.Out, s.Graph); err != nil {
				return nil, err
			}
		}
		if p.Name == opts.StopAfter {
			break
		}
	}
	if opts.TimePasses && opts.Out != nil {
		var total time.Duration
		for _, t := range times {
			total += t.d
		}
		fmt.Fprintf(opts.Out, "// pass timings (total %.3f ms)\n", ms(total))
		for _, t := range times {
			fmt.Fprintf(opts.Out, "//   %-20s %9.3f ms\n", t.name, ms(t.d))
		}
	}
	return s, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// OpCounts counts nodes per op, for before/after reports.
func OpCounts(g *ir.Graph) map[string]int {
	c := map[string]int{}
	for _, n := range g.Nodes {
		c[n.Op]++
	}
	return c
}

// FormatOpCounts prints op counts of two graphs side by side.
func FormatOpCounts(before, after *ir.Graph) string {
	b, a := OpCounts(before), OpCounts(after)
	var ops []string
	for k := range b {
		ops = append(ops, k)
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			ops = append(ops, k)
		}
	}
	sort.Strings(ops)
	var sb strings.Builder
	fmt.Fprintf(&sb, "%-16s %7s %7s\n", "op", "before", "after")
	for _, o := range ops {
		fmt.Fprintf(&sb, "%-16s %7d %7d\n", o, b[o], a[o])
	}
	return sb.String()
}

// runPass runs one pass, turning an internal panic (a pass building an invalid
// node) into an error (the caller names the pass); a panic of the rewriter
// also names the node it was processing and its source position.
func runPass(p *Pass, s *State) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if re, ok := r.(*rewriteError); ok {
				err = fmt.Errorf("internal error: %w", re)
				return
			}
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	return p.Run(s)
}
