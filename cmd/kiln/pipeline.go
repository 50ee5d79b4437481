package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
)

// listFlag is a repeatable string flag (--print-after=A --print-after=B or A,B).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// pipeFlags are the pass-manager flags of dump, plan and (later) build.
type pipeFlags struct {
	optimize      bool
	listPasses    bool
	printAfter    listFlag
	printAfterAll bool
	disable       listFlag
	timePasses    bool
	verifyEach    bool
	stopAfter     string
	target        string
}

func (p *pipeFlags) register(fs *flag.FlagSet, defaultOptimize bool) {
	if !defaultOptimize {
		fs.BoolVar(&p.optimize, "optimize", false, "run the inference pass pipeline (implied by the pass flags below)")
	}
	p.optimize = defaultOptimize
	p.registerPassFlags(fs)
	fs.StringVar(&p.target, "target", "avx512", "target `ISA` for the layout pass: avx512, avx2 or neon")
}

// registerPassFlags declares the pass-manager flags without --target (kiln
// build has its own code-generation --target).
func (p *pipeFlags) registerPassFlags(fs *flag.FlagSet) {
	fs.BoolVar(&p.listPasses, "list-passes", false, "list the pipeline's passes in order and exit")
	fs.Var(&p.printAfter, "print-after", "print the IR after pass `NAME` (repeatable)")
	fs.BoolVar(&p.printAfterAll, "print-after-all", false, "print the IR after every pass")
	fs.Var(&p.disable, "disable", "skip pass `NAME` (repeatable)")
	fs.BoolVar(&p.timePasses, "time-passes", false, "print the time each pass took")
	fs.BoolVar(&p.verifyEach, "verify-each", false, "verify the IR after every pass, naming the pass that breaks it")
	fs.StringVar(&p.stopAfter, "stop-after", "", "run the pipeline only up to and including pass `NAME`")
}

func (p *pipeFlags) active() bool {
	return p.optimize || len(p.printAfter) > 0 || p.printAfterAll || len(p.disable) > 0 || p.timePasses || p.verifyEach || p.stopAfter != ""
}

func listPasses(w io.Writer) {
	for i, p := range passes.Pipeline() {
		after := ""
		if len(p.After) > 0 {
			after = " (after " + strings.Join(p.After, ", ") + ")"
		}
		fmt.Fprintf(w, "%d. %-20s %s%s\n", i+1, p.Name, p.Doc, after)
	}
}

// runPipeline runs the pass pipeline if any pass flag asks for it; printed
// graphs and timings go to w.
func (p *pipeFlags) run(g *ir.Graph, w io.Writer) (*passes.State, error) {
	if p.target == "" {
		p.target = "avx512"
	}
	t, err := passes.LookupTarget(p.target)
	if err != nil {
		return nil, usagef("--target: %v", err)
	}
	for _, names := range [][]string{p.printAfter, p.disable} {
		if err := passes.CheckNames(names...); err != nil {
			return nil, usagef("%v", err)
		}
	}
	if p.stopAfter != "" {
		if err := passes.CheckNames(p.stopAfter); err != nil {
			return nil, usagef("%v", err)
		}
	}
	if !p.active() {
		return &passes.State{Graph: g, Target: t}, nil
	}
	opts := passes.Options{Target: t, Disabled: map[string]bool{}, PrintAfter: map[string]bool{},
		PrintAfterAll: p.printAfterAll, TimePasses: p.timePasses, VerifyEach: p.verifyEach, StopAfter: p.stopAfter, Out: w}
	for _, d := range p.disable {
		opts.Disabled[d] = true
	}
	for _, d := range p.printAfter {
		opts.PrintAfter[d] = true
	}
	return passes.Run(g, opts)
}
