package passes

import (
	"fmt"
	"strings"
)

// Properties are facts about the graph that passes provide and that later
// passes and consumers (code generation, kiln plan) require. A property holds
// once the pass providing it has run; nothing later in the pipeline undoes
// one.
const (
	// PropBNFolded: no inference BatchNorm is left (fold-bn).
	PropBNFolded = "bn-folded"
	// PropResidualScaleFolded: residual scales x + s*conv(y) are folded
	// into the conv's weights (fold-residual-scale).
	PropResidualScaleFolded = "residual-scale-folded"
	// PropEpiloguesFused: every conv is a fused_conv with its bias,
	// residual add and ReLU (fuse-epilogue).
	PropEpiloguesFused = "epilogues-fused"
	// PropConcatsInPlace: block-aligned concats became writes into one
	// destination (concat-in-place).
	PropConcatsInPlace = "concats-in-place"
	// PropBlockedLayout: activations are NCHW{B}c for the target's block and
	// conv weights are packed (layout).
	PropBlockedLayout = "blocked-layout"
	// PropDeadCodeFree: no node is unreachable from the outputs (dce).
	PropDeadCodeFree = "dead-code-free"
	// PropScheduled: nodes are in the memory-saving order (schedule).
	PropScheduled = "scheduled"
	// PropPlanned: State.Plan places every run-time value (plan-buffers).
	PropPlanned = "planned"
)

// The pipeline's contracts: what each pass requires of the graph it receives
// and what it provides. Requires lists only hard preconditions — a pass
// whose pattern merely does not match without an earlier pass (fuse-epilogue
// without fold-bn) still runs, so analysis (kiln dump/plan --disable X)
// keeps working; ordering among enabled passes is Pass.After. Today no pass
// strictly needs another: every pass accepts any verified graph.
func init() {
	foldBN.Provides = []string{PropBNFolded}
	foldResidualScale.Provides = []string{PropResidualScaleFolded}
	fuseEpilogue.Provides = []string{PropEpiloguesFused}
	concatInPlace.Provides = []string{PropConcatsInPlace}
	layoutPass.Provides = []string{PropBlockedLayout}
	dcePass.Provides = []string{PropDeadCodeFree}
	schedulePass.Provides = []string{PropScheduled}
	planBuffers.Provides = []string{PropPlanned}
}

// Consumer is a user of the pipeline's result that needs properties of it.
type Consumer struct {
	// Name says who needs them, in messages ("code generation").
	Name string
	// Requires lists the properties.
	Requires []string
}

var (
	// Codegen is code generation (codegen/lower and the kernel builders):
	// every op has a kernel, standalone where no fusion applied (conv2d
	// without epilogue, batchnorm as a per-channel scale and shift, relu,
	// add, scale mul, concat as strided copies), so the rewriting passes
	// (fold-bn, fold-residual-scale, fuse-epilogue, concat-in-place) are
	// optimizations it does not need, like dce and schedule. It needs
	// packed weights and NCHW{B}c activations (blocked-layout: the conv,
	// pooling and reorder kernels are written for them) and an arena plan
	// (planned).
	Codegen = &Consumer{Name: "code generation (kiln build, run --backend cpu, bench, demo)", Requires: []string{
		PropBlockedLayout, PropPlanned}}
	// PlanReport is kiln plan, which prints the arena plan.
	PlanReport = &Consumer{Name: "kiln plan", Requires: []string{PropPlanned}}
)

// providers returns the passes of pipeline that provide prop.
func providers(pipeline []*Pass, prop string) []string {
	var out []string
	for _, p := range pipeline {
		for _, q := range p.Provides {
			if q == prop {
				out = append(out, p.Name)
			}
		}
	}
	return out
}

// CheckRequirements checks, before any pass runs, that the pipeline as
// opts configures it (disabled passes, StopAfter) satisfies every enabled
// pass's Requires and opts.Consumer's. It walks the pipeline in order,
// collecting the properties of the passes that will run; a requirement not
// yet provided is an error naming the property, the consumer or pass that
// needs it and why its provider does not run (disabled, or after
// --stop-after).
func CheckRequirements(opts Options) error { return checkRequirements(Pipeline(), opts) }

func checkRequirements(pipeline []*Pass, opts Options) error {
	index := map[string]int{}
	for i, p := range pipeline {
		index[p.Name] = i
	}
	stop := len(pipeline)
	if i, ok := index[opts.StopAfter]; ok {
		stop = i
	}
	// why explains why prop is missing for a user at position at.
	why := func(prop string, at int) string {
		ps := providers(pipeline, prop)
		if len(ps) == 0 {
			return "no pass provides it"
		}
		var reasons []string
		for _, p := range ps {
			switch {
			case opts.Disabled[p]:
				reasons = append(reasons, fmt.Sprintf("pass %s, which provides it, is disabled (--disable %s)", p, p))
			case index[p] > stop:
				reasons = append(reasons, fmt.Sprintf("pass %s, which provides it, does not run (--stop-after %s)", p, opts.StopAfter))
			case index[p] >= at:
				reasons = append(reasons, fmt.Sprintf("pass %s, which provides it, runs later", p))
			}
		}
		return strings.Join(reasons, "; ")
	}
	have := map[string]bool{}
	for i, p := range pipeline {
		if i > stop {
			break
		}
		if opts.Disabled[p.Name] {
			continue
		}
		for _, r := range p.Requires {
			if !have[r] {
				return fmt.Errorf("pass %s requires %s: %s", p.Name, r, why(r, i))
			}
		}
		for _, q := range p.Provides {
			have[q] = true
		}
	}
	if c := opts.Consumer; c != nil {
		for _, r := range c.Requires {
			if !have[r] {
				return fmt.Errorf("%s requires %s: %s", c.Name, r, why(r, len(pipeline)))
			}
		}
	}
	return nil
}
