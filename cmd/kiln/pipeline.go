package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/kiln-dev/kiln/ir"
	"github.com/kiln-dev/kiln/passes"
	"github.com/kiln-dev/kiln/target"
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
	// consumer, when set, is who uses the pipeline's result; run refuses a
	// --disable/--stop-after that leaves out a pass it needs, before
	// running anything.
	consumer *passes.Consumer
}

func (p *pipeFlags) register(fs *flag.FlagSet, defaultOptimize bool) {
	if !defaultOptimize {
		fs.BoolVar(&p.optimize, "optimize", false, "run the inference pass pipeline (implied by the pass flags below)")
	}
	p.optimize = defaultOptimize
	p.registerPassFlags(fs)
	fs.StringVar(&p.target, "target", hostTarget(), "build `target` whose channel block the layout pass uses: "+buildTargetNames()+" (kiln targets)")
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
		if len(p.Requires) > 0 {
			fmt.Fprintf(w, "   %-20s requires %s\n", "", strings.Join(p.Requires, ", "))
		}
		if len(p.Provides) > 0 {
			fmt.Fprintf(w, "   %-20s provides %s\n", "", strings.Join(p.Provides, ", "))
		}
	}
	fmt.Fprintf(w, "%s requires %s\n", passes.Codegen.Name, strings.Join(passes.Codegen.Requires, ", "))
}

// options checks the pass-manager flags (names, target, requirements of
// p.consumer) and returns the pipeline options; nothing runs.
func (p *pipeFlags) options(w io.Writer) (passes.Options, error) {
	if p.target == "" {
		p.target = hostTarget()
	}
	b, err := target.LookupBuild(p.target)
	if err != nil {
		return passes.Options{}, usagef("--target: %v", err)
	}
	t, err := passes.TargetFor(b)
	if err != nil {
		return passes.Options{}, fmt.Errorf("--target %s: %v", p.target, err)
	}
	for _, names := range [][]string{p.printAfter, p.disable} {
		if err := passes.CheckNames(names...); err != nil {
			return passes.Options{}, usagef("%v", err)
		}
	}
	if p.stopAfter != "" {
		if err := passes.CheckNames(p.stopAfter); err != nil {
			return passes.Options{}, usagef("%v", err)
		}
	}
	opts := passes.Options{Target: t, Disabled: map[string]bool{}, PrintAfter: map[string]bool{},
		PrintAfterAll: p.printAfterAll, TimePasses: p.timePasses, VerifyEach: p.verifyEach, StopAfter: p.stopAfter, Out: w,
		Consumer: p.consumer}
	for _, d := range p.disable {
		opts.Disabled[d] = true
	}
	for _, d := range p.printAfter {
		opts.PrintAfter[d] = true
	}
	if err := passes.CheckRequirements(opts); err != nil {
		return passes.Options{}, err
	}
	return opts, nil
}

// checkFor sets the pipeline's consumer to c and checks the flags against
// what c requires, so that a command fails before loading or running
// anything when, say, --disable layout leaves code generation without the
// blocked layout.
func (p *pipeFlags) checkFor(c *passes.Consumer) error {
	p.consumer = c
	_, err := p.options(nil)
	return err
}

// run runs the pass pipeline if any pass flag asks for it; printed graphs
// and timings go to w.
func (p *pipeFlags) run(g *ir.Graph, w io.Writer) (*passes.State, error) {
	opts, err := p.options(w)
	if err != nil {
		return nil, err
	}
	if !p.active() {
		return &passes.State{Graph: g, Target: opts.Target}, nil
	}
	return passes.Run(g, opts)
}
